"""The demo's child processes: each in its own process group, stopped by its PID, never by name.

>>> child = Child("simulator", [sys.executable, "-m", "kick_sim.cli"], env, Path("sim.log"))
>>> child.start()
>>> child.stop(timeout=10)    # SIGTERM to the PID, then SIGKILL to its own group if it lingers
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import orjson

POLL = 0.05
PR_SET_PDEATHSIG = 1
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # resolved before any fork (Linux only)


def _term_with_parent() -> None:
    """In the child before exec: SIGTERM it if the demo dies, even by SIGKILL (Linux)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def serves(pid: int, pgdata: Path) -> bool:
    """True while `pid` is a live postgres process for `pgdata` (so a reused PID is never signalled)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return state != "Z" and b"-D" in cmdline and str(pgdata).encode() in cmdline and b"postgres" in cmdline[0]


def postmaster_pid(pgdata: Path) -> int | None:
    """The postmaster serving `pgdata`, from its postmaster.pid; None if there is none."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if serves(pid, pgdata) else None


def stop_postmaster(pid: int, pgdata: Path, timeout: float = 20.0) -> bool:
    """When pg_ctl cannot: SIGINT (fast shutdown), then SIGQUIT (immediate); True once it is gone."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        if not serves(pid, pgdata):
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout / 2
        while serves(pid, pgdata) and time.monotonic() < deadline:
            time.sleep(POLL)
    return not serves(pid, pgdata)


def port_in_use(host: str, port: int) -> bool:
    """True if `port` cannot be bound on `host` right now (0 is never in use)."""
    if port == 0:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at this moment (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def last_error(log_path: Path, limit: int = 200) -> str:
    """The most telling line of a log: the last ERROR of JSON logs, else the last plain line."""
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    plain = ""
    for line in reversed(lines):
        try:
            entry = orjson.loads(line)
        except ValueError:
            plain = plain or line
            continue
        if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL"):
            return str(entry.get("msg", ""))[:limit]
    return plain[:limit]


def describe_exit(code: int | None) -> str:
    """`exited with code 2`, `was killed by SIGKILL`."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Child:
    """One subprocess in a new session (so Ctrl-C reaches only the demo), output to a log file.

    It is sent SIGTERM by the kernel if the demo dies without stopping it (PR_SET_PDEATHSIG).
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_term_with_parent,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    @property
    def exit_code(self) -> int | None:
        """None while running (or never started)."""
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def failure(self) -> str:
        """`<name> exited with code N: <its last error line>` for a child that died."""
        reason = last_error(self.log_path)
        return f"{self.name} {describe_exit(self.exit_code)}{': ' + reason if reason else ''}"

    def stop(self, timeout: float, hurry: Callable[[], bool] = lambda: False) -> int | None:
        """SIGTERM to the PID and wait (up to `timeout`, or until `hurry()`), then clear its group."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline and not hurry():
                time.sleep(POLL)
        self.kill_group()
        code = self.proc.poll()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the child's own process group (its session), then reap."""
        assert self.proc is not None
        if group_members(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        deadline = time.monotonic() + 5
        while group_members(self.proc.pid) and time.monotonic() < deadline:  # orphans reparented to init
            time.sleep(POLL)
