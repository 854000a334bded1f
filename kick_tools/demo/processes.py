"""The demo's view of its child processes (started and stopped by kick_tools.harness): ports
it may bind, and a dead child's failure as one line.

>>> service = Process("the service", service_argv(), log, env, die_with_parent=True, append=False).start()
>>> service.stop(timeout=10)   # SIGTERM to the PID, then SIGKILL to its own group if it lingers
>>> failure(service)            # 'the service exited with code 2: <its last error line>'
"""

from __future__ import annotations

import contextlib
import signal
import socket
from pathlib import Path

import orjson

from kick_tools.harness import Process


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


def failure(process: Process) -> str:
    """`<name> exited with code N: <its last error line>` for a child that died."""
    reason = last_error(process.log_path)
    return f"{process.name} {describe_exit(process.exit_code)}{': ' + reason if reason else ''}"
