"""sd_notify in a few dependency-free lines: READY=1, STOPPING=1, STATUS=..., WATCHDOG=1."""

from __future__ import annotations

import os
import socket


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
