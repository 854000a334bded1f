"""The skeleton every forked role runs on: writer, planner, shard worker, exporter, and the next ones.

What it gives a role, so no role writes it again:
- a fresh process after fork: default signal handlers, SIGTERM on parent death
  (`PR_SET_PDEATHSIG`), a process title without arguments, its own log handler;
- record-only signal handlers: SIGTERM sets `stopping` (warm stop: finish, drain, exit 0);
  SIGINT is ignored (Ctrl-C reaches the whole group; the supervisor decides what it means);
- the heartbeat the supervisor watches (one beat per loop turn, at most `HEARTBEAT_EVERY`);
- a parent watch: if the supervisor is gone, stop;
- the control channel from the supervisor (`Reconfigure` after SIGHUP), non-blocking;
- telemetry that is a no-op when metrics are off (`kick_monitor.telemetry`);
- exit codes from `kick_monitor.exitcodes`: `EX_BOOT` when `boot()` fails (the supervisor
  counts boot failures and stops respawning), `RoleFatal(code)` for "restarting cannot help".

A role implements `boot()`, `step()` (one turn of its own loop, waiting through
`self.wait(...)`, which also serves the control channel) and `finish()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings, changed_settings, reload_policy
from .exitcodes import EX_BOOT, EX_FAILURE
from .framing import FramedSocket, ProtocolError
from .logsetup import configure_logging, register_settings_secrets
from .messages import Reconfigure, RoleFailed
from .process import Heartbeats, die_with_parent, reset_signals, set_title
from .telemetry import load_telemetry

log = logging.getLogger("kick_monitor.role")

HEARTBEAT_EVERY = 0.25  # seconds; the supervisor's timeout is seconds to minutes


class RoleFatal(Exception):
    """End the role with `code`: a failure that a restart cannot fix (the supervisor stops)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class RoleContext:
    """What the supervisor hands a role at fork; the role builds everything else itself."""

    kind: str  # "writer", "planner", "worker", "exporter"
    name: str  # "writer", "worker-3": logs, titles
    tree: str  # "all" or "shard-3"
    settings: Settings
    database_url: str
    control: socket.socket  # this role's end of its control channel to the supervisor
    heartbeats: Heartbeats
    slot: int
    shard: int | None = None
    shard_count: int = 1
    shards: tuple[int, ...] = ()
    writer_address: str = ""
    planner_address: str = ""
    listener: socket.socket | None = None  # the one listening socket this role serves, if any
    data_dir: Path = field(default_factory=lambda: Path("."))


class Role:
    """Base class of every forked role; see the module docstring."""

    kind = "role"

    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.stopping = False
        self.ppid = os.getppid()
        self.control = FramedSocket(ctx.control)
        self.telemetry: Any = load_telemetry()
        self._next_beat = 0.0
        # SIGTERM wakes `wait` at once (select() is restarted after a signal, PEP 475): a stopping
        # worker leaves Pusher, and its planner frees the leases, without waiting out a timeout.
        self._stop_read, self._stop_write = os.pipe()
        os.set_blocking(self._stop_read, False)
        os.set_blocking(self._stop_write, False)

    # -- the process --------------------------------------------------------------------
    def main(self) -> int:
        """Run the role to its end and return its exit code (the caller `os._exit`s with it)."""
        signal.signal(signal.SIGTERM, self._record_stop)
        try:
            self.boot()
        except RoleFatal as exc:
            log.error("%s cannot start: %s", self.ctx.name, exc)
            return self.report_fatal(exc)
        except Exception:
            log.exception("%s failed to boot", self.ctx.name)
            return EX_BOOT
        try:
            while self.running():
                self.beat()
                if os.getppid() != self.ppid:
                    log.warning("the supervisor is gone; stopping")
                    self.stopping = True
                self.step()
            return self.finish()
        except RoleFatal as exc:
            log.error("%s: %s", self.ctx.name, exc)
            return self.report_fatal(exc)
        except Exception:
            log.exception("%s crashed", self.ctx.name)
            return EX_FAILURE

    def _record_stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self._stop_write, b"x")

    def report_fatal(self, exc: RoleFatal) -> int:
        """Tell the supervisor why, before exiting with a code that stops the service."""
        self.control.queue(RoleFailed(str(exc)))
        with contextlib.suppress(OSError):
            self.control.flush()
        return exc.code

    # -- what each role implements --------------------------------------------------------
    def boot(self) -> None:
        """Open connections, bind what needs binding: runs once, after fork."""

    def running(self) -> bool:
        return not self.stopping

    def step(self) -> None:
        """One turn of the role's loop (wait on its sockets, serve them)."""
        raise NotImplementedError

    def finish(self) -> int:
        """Warm stop: drain, close, return the exit code."""
        return 0

    def reconfigure(self, changed: set[str]) -> None:
        """Apply new values of `changed` settings (already in `self.settings`)."""

    # -- shared services -----------------------------------------------------------------
    def beat(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now >= self._next_beat:
            self._next_beat = now + HEARTBEAT_EVERY
            self.ctx.heartbeats.beat(self.ctx.slot, now)

    def wait(self, rlist: list[Any], wlist: list[Any], timeout: float) -> tuple[set[Any], set[Any]]:
        """select() over the role's own sockets and its control channel, which it serves here.

        Returns what is readable and writable among the role's own; an interrupted wait
        returns nothing (the loop simply turns again).
        """
        control = self.control.fileno()
        writers = [*wlist, control] if self.control.wants_write else wlist
        try:
            readable, writable, _ = select.select([*rlist, control, self._stop_read], writers, [], max(0.0, timeout))
        except InterruptedError:
            return set(), set()
        if self._stop_read in readable:
            with contextlib.suppress(OSError):
                os.read(self._stop_read, 64)
        if control in readable or control in writable:
            self.read_control()
        return set(readable) - {control, self._stop_read}, set(writable) - {control}

    def read_control(self) -> None:
        """Serve the supervisor's channel; EOF means the supervisor is gone: stop."""
        try:
            messages = self.control.read()
            self.control.flush()
        except (OSError, ConnectionError, ProtocolError, pickle.UnpicklingError, EOFError):
            log.warning("lost the supervisor's control channel; stopping")
            self.stopping = True
            return
        for message in messages:
            if isinstance(message, Reconfigure):
                self.apply_settings(message.settings, message.database_url)

    def apply_settings(self, new: Settings, database_url: str | None = None) -> None:
        """Take the new settings; tell the role which of the ones it reads changed."""
        changed = {
            name for name in changed_settings(self.settings, new) if self.kind in reload_policy(name).roles
        }
        if database_url is not None and database_url != self.ctx.database_url:
            self.ctx.database_url = database_url  # the next connection uses it (a rotated password)
            changed.add("database_password")
        self.settings = new
        register_settings_secrets(new)
        if not changed:
            return
        if "log_level" in changed:
            logging.getLogger().setLevel(new.log_level)
        self.reconfigure(changed)
        shown = {name: _shown(getattr(new, name)) for name in sorted(changed)}
        log.info("reconfigured: %s", ", ".join(sorted(changed)), extra={"settings": shown})


def run_role(role_class: type[Role], ctx: RoleContext) -> int:
    """In a freshly forked child: fresh handlers, parent-death signal, title, logging; then the role.

    A role whose constructor fails has failed at boot (`EX_BOOT`), like one whose `boot()` fails.
    """
    reset_signals()
    die_with_parent(signal.SIGTERM)
    set_title(f"worker shard {ctx.shard}" if ctx.kind == "worker" else f"{ctx.kind} ({ctx.tree})")
    configure_logging(ctx.settings, role=role_class.kind, shard=ctx.shard)
    try:
        role = role_class(ctx)
    except Exception:
        log.exception("%s failed to boot", ctx.name)
        return EX_BOOT
    return role.main()


def standalone_context(
    kind: str, settings: Settings, database_url: str = "", *, listener: socket.socket | None = None,
    data_dir: Path | None = None, shard: int | None = None, writer_address: str = "", planner_address: str = "",
) -> tuple[RoleContext, socket.socket]:
    """A context for running one role outside the supervisor (benchmarks, tests).

    Returns the context and the supervisor's end of its control channel, which the caller
    keeps open (closing it tells the role its supervisor is gone).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ctx = RoleContext(
        kind=kind, name=kind if shard is None else f"{kind}-{shard}", tree="all", settings=settings,
        database_url=database_url, control=theirs, heartbeats=Heartbeats(1), slot=0, shard=shard,
        shards=(0,) if shard is None else (shard,), writer_address=writer_address,
        planner_address=planner_address, listener=listener, data_dir=data_dir or Path(settings.data_dir),
    )
    return ctx, ours


def _shown(value: object) -> object:
    """A setting's value for a log line: secrets never, everything else as text or number."""
    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return "**********"
    return value if isinstance(value, (int, float, str)) or value is None else str(value)
