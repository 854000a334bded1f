"""sd_notify in a few dependency-free lines: READY=1, STOPPING=1, STATUS=..., WATCHDOG=1.

`Watchdog` serves the units' `WatchdogSec=`: the supervisor's main loop pings it, so a hung
supervisor (deadlocked, stopped, spinning somewhere else) stops pinging and systemd kills
and restarts the whole service.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def sd_notify(state: str) -> bool:
    """Tell systemd about our state; a no-op (False) when not run by systemd Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


class Watchdog:
    """`WATCHDOG=1` at most every half of systemd's watchdog interval; a no-op without one.

    >>> watchdog = Watchdog.from_environment()    # WATCHDOG_USEC (and WATCHDOG_PID) from systemd
    >>> watchdog.ping(time.monotonic())           # every pass of the main loop; cheap when not due
    """

    def __init__(self, interval: float | None) -> None:
        self.interval = interval  # seconds; None: not under a systemd watchdog
        self._last_ping: float | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Watchdog:
        """The watchdog systemd asked for, if it asked this process (not a parent of ours)."""
        env = os.environ if environ is None else environ
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
            owner = int(env["WATCHDOG_PID"]) if env.get("WATCHDOG_PID") else None
        except ValueError:
            return cls(None)
        if usec <= 0 or (owner is not None and owner != (os.getpid() if pid is None else pid)):
            return cls(None)  # forked children inherit the variables: only the main process pings
        return cls(usec / 1_000_000)

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def ping(self, now: float) -> bool:
        """Send WATCHDOG=1 if half the interval has passed since the last one; True if sent."""
        if self.interval is None:
            return False
        if self._last_ping is not None and now - self._last_ping < self.interval / 2:
            return False
        self._last_ping = now
        return sd_notify("WATCHDOG=1")
