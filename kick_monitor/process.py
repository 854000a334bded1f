"""Small process helpers every role uses after fork: titles, parent death, signals, heartbeats."""

from __future__ import annotations

import ctypes
import faulthandler
import mmap
import os
import signal
import time

PR_SET_PDEATHSIG = 1


def set_title(title: str) -> None:
    """`ps` shows the role and shard — never the command line, which may hold secrets."""
    try:
        import setproctitle

        setproctitle.setproctitle(f"kick-monitor: {title}")
    except ImportError:  # pragma: no cover - a declared dependency
        pass


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` when the coordinator dies, so no child outlives it.

    `prctl` is found among the symbols already loaded (libc is): `ctypes.util.find_library`
    ran `ldconfig -p` in a subprocess from every freshly forked child and parsed its output
    (2.4 ms and an exec per spawn; +0.85 MB private at that point, docs/performance.md round 13).
    """
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


# The coordinator sends it to a child whose heartbeat stopped, just before the SIGKILL: the child's
# faulthandler writes every thread's stack to stderr (from C, so also while a thread hangs in a call).
DUMP_STACKS_SIGNAL = signal.SIGUSR2


def reset_signals() -> None:
    """Children start from default handlers: the coordinator's must not run in them. A child
    answers DUMP_STACKS_SIGNAL with its threads' stacks on stderr and goes on."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    # Ctrl-C goes to the whole foreground group; only the coordinator decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.register(DUMP_STACKS_SIGNAL, all_threads=True)


class Heartbeats:
    """One monotonic timestamp per child slot in memory shared across fork (gunicorn's idea, no files).

    An anonymous shared mapping made before the children are forked: no file descriptor,
    so nothing to leak into children or to close. Children write their slot; the supervisor
    reads all of them. A double is written atomically on every platform we run on, so no
    lock is needed.
    """

    def __init__(self, slots: int) -> None:
        self._map = mmap.mmap(-1, max(1, slots) * ctypes.sizeof(ctypes.c_double))
        self._array = (ctypes.c_double * max(1, slots)).from_buffer(self._map)

    def beat(self, slot: int, now: float | None = None) -> None:
        self._array[slot] = time.monotonic() if now is None else now

    def age(self, slot: int, now: float | None = None) -> float:
        last = float(self._array[slot])
        if not last:
            return 0.0
        return (time.monotonic() if now is None else now) - last

    def last(self, slot: int) -> float:
        """The slot's last beat (monotonic seconds; 0.0 when cleared)."""
        return float(self._array[slot])

    def clear(self, slot: int) -> None:
        self._array[slot] = 0.0


def parent_changed(original_ppid: int) -> bool:
    return os.getppid() != original_ppid
