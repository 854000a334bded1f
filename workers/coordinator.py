"""The coordinator process: a supervisor that only supervises (gunicorn's arbiter shape).

It forks the roles of one process tree — the writer, the planner, the exporter (when
metrics are on) and one shard worker per shard — and keeps them alive: spawn, reap,
heartbeat, respawn with back-off, signals, shutdown. It does no SQL and no HTTP in its
loop (the planner reads the streamer list; workers and the planner talk to Kick), and
it never blocks on a child: its only links to them are signals, the shared heartbeat
memory and one non-blocking control channel each (`kick_monitor.framing`).

Signals (handlers only record; the loop dispatches `handle_<name>`):
- TERM/INT, first: warm stop — workers drain to the writer (bounded by `drain_timeout`),
  then the writer commits or spools what it holds, then the rest;
- TERM/INT, second: cold stop — every child SIGKILLed, exit within 2 s; nothing the writer
  acknowledged is lost (it acknowledges only what is committed or fsync'ed to the spool);
- HUP: re-read the configuration; each changed setting reaches the roles that read it,
  as its declared reload policy says (`kick_monitor.config.ReloadPolicy`).

What crosses a fork: each child gets its own control channel end, the heartbeat memory
(an anonymous mapping, no fd) and — for the writer and the planner — its own listening
socket (created here before the first fork so that children reconnect into its backlog
while it restarts). Everything else the coordinator holds is closed in the child.

When the coordinator is SIGKILLed, every child gets SIGTERM from the kernel
(PR_SET_PDEATHSIG) and also notices its parent changed: workers stop, the writer commits
(or spools) what it holds and exits. Nobody lingers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import importlib
import logging
import os
import pickle
import select
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kick_monitor import tls
from kick_monitor.config import COORDINATOR, Settings, changed_settings, reload_policy
from kick_monitor.credentials import for_role, scrub_environment
from kick_monitor.database import with_password
from kick_monitor.exitcodes import EX_CONFIG, EX_FAILURE, EX_OK, EX_USAGE
from kick_monitor.framing import FramedSocket, ProtocolError, bind_listener
from kick_monitor.logsetup import register_settings_secrets
from kick_monitor.messages import Reconfigure, RoleFailed
from kick_monitor.preload import freeze_before_fork, preload_role_modules
from kick_monitor.process import DUMP_STACKS_SIGNAL, Heartbeats, set_title
from kick_monitor.role import Role, RoleContext, run_role
from kick_monitor.systemd import Watchdog, sd_notify
from kick_monitor.telemetry import load_telemetry

from .exporter import Exporter
from .planner import Planner
from .shard_worker import ShardWorker
from .writer import BatchWriter

log = logging.getLogger("kick_monitor.coordinator")

BOOT_WINDOW = 10.0  # a child dying sooner than this after start is respawned with back-off
MAX_BOOT_FAILURES = 5  # deaths in a row before the first heartbeat: stop respawning, report it
RESPAWN_MIN, RESPAWN_MAX = 0.5, 30.0
COLD_STOP_SECONDS = 2.0
STACKS_GRACE = 0.5  # seconds a silent child gets to write its threads' stacks before the SIGKILL
LAST_ROLES_STOP_SECONDS = 5.0
SIGNALS = ("HUP", "TERM", "INT", "CHLD")
FATAL_EXIT_CODES = (EX_CONFIG, EX_USAGE)  # a restart cannot fix these: stop the service
# Roles every tree runs: imported here, before the first fork, so their modules are shared.
ROLE_CLASSES: dict[str, type[Role]] = {
    "writer": BatchWriter, "planner": Planner, "exporter": Exporter, "worker": ShardWorker,
}
# Roles a tree runs only when configured (plan_children): imported in their own child after fork.
# Measured (docs/performance.md, M): importing the webhook receiver here (waitress, cryptography)
# made every tree 8 MB larger, used or not; imported after fork it costs only the one child that runs it.
OPTIONAL_ROLES: dict[str, tuple[str, str]] = {
    "mirror": ("workers.mirror", "StatusMirror"),  # only with status_mirror set
    "webhook": ("workers.webhook_receiver", "WebhookReceiver"),  # issue 16: only with webhook_port set
    "notifier": ("workers.notifier", "Notifier"),  # issue 19: only when plan.notifier
}
ROLE_KINDS = (*ROLE_CLASSES, *OPTIONAL_ROLES)


def role_class(kind: str) -> type[Role]:
    """The class of a role; an optional role's module is imported on first use (in its child)."""
    if kind in ROLE_CLASSES:
        return ROLE_CLASSES[kind]
    module, name = OPTIONAL_ROLES[kind]
    found: type[Role] = getattr(importlib.import_module(module), name)
    return found
PRODUCERS = ("worker", "webhook")  # issue 16: roles that hand changes to the writer; they stop before it
ESSENTIAL = ("writer", "planner")  # the service cannot work without them


@dataclass(frozen=True)
class TreePlan:
    """What this process tree runs: all shards, or one (`--shard-index`), of `shard_count`."""

    tree: str
    shard_count: int
    shards: tuple[int, ...]
    notifier: bool = False  # notifier (issue 19): notify=on, or auto with a target at start

    @classmethod
    def for_settings(cls, settings: Settings, subscribable: int) -> TreePlan:
        """Raises ValueError for a shard selection that cannot work (exit 2)."""
        from kick_monitor.sharding import check_shard_selection, shard_count_for

        count = shard_count_for(settings, subscribable)
        check_shard_selection(settings, count)
        if settings.shard_index is None:
            return cls("all", count, tuple(range(count)))
        return cls(f"shard-{settings.shard_index}", count, (settings.shard_index,))


@dataclass
class Child:
    """One supervised slot: a role (and a shard, for workers) whose process comes and goes."""

    name: str
    kind: str
    slot: int
    shard: int | None = None
    pid: int | None = None
    started: float = 0.0
    spawn_beat: float = 0.0  # the heartbeat value set at fork: a later one means the child booted
    boot_failures: int = 0  # in a row, died before its first heartbeat
    quick_deaths: int = 0  # in a row, died within BOOT_WINDOW of its start (booted or not)
    murdered: bool = False  # SIGKILLed for silence, not reaped yet
    stacks_asked_at: float | None = None  # silent: DUMP_STACKS_SIGNAL sent then, the SIGKILL follows
    respawn_at: float = 0.0
    failed: bool = False
    restarts: int = 0
    planned_restart: bool = False
    control: FramedSocket | None = None
    listener: socket.socket | None = None  # the listening socket this role serves, if any
    failure: str = ""  # what the child said before a fatal exit (RoleFailed)


class Supervisor:
    """Runs one process tree; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        plan: TreePlan,
        reload_settings: Callable[[], Settings] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.plan = plan
        self.reload_settings = reload_settings
        self.clock = clock
        self.data_dir = Path(settings.data_dir)
        self.children: list[Child] = self.plan_children(settings, plan)
        self.heartbeats = Heartbeats(len(self.children))
        self.signals: list[int] = []
        self.stopping: str | None = None  # None, "warm" or "cold"
        self.stop_phase = ""
        self.phase_deadline = 0.0
        self.exit_code = EX_OK
        self.restart_queue: deque[Child] = deque()
        self.restarting: Child | None = None
        self.addresses: dict[str, str] = {}
        self.telemetry: Any = load_telemetry()
        self._wake_read, self._wake_write = os.pipe()
        self._lock_fd: int | None = None
        self._tmp_dirs: list[str] = []
        self.watchdog = Watchdog.from_environment()  # systemd WatchdogSec=: a hung loop stops pinging

    @staticmethod
    def plan_children(settings: Settings, plan: TreePlan) -> list[Child]:
        kinds: list[tuple[str, int | None]] = [("writer", None), ("planner", None)]
        if settings.metrics_port:
            kinds.append(("exporter", None))
        if settings.status_mirror:
            kinds.append(("mirror", None))
        if settings.webhook_port:  # issue 16
            kinds.append(("webhook", None))
        if plan.notifier:  # notifier (issue 19)
            kinds.append(("notifier", None))
        kinds += [("worker", shard) for shard in plan.shards]
        return [
            Child(kind if shard is None else f"worker-{shard}", kind, slot, shard)
            for slot, (kind, shard) in enumerate(kinds)
        ]

    # -- lifecycle -------------------------------------------------------------------
    def run(self) -> int:
        set_title(f"coordinator ({self.plan.tree})")
        self.acquire_lock()
        self.install_signals()
        self.bind_sockets()
        preload_role_modules()  # shared by every child: kick_monitor/preload.py
        # the one TLS context every HTTPS client uses (kick_monitor/tls.py), before the first fork
        tls.preload((self.settings.api_base_url, self.settings.oauth_token_url, self.settings.web_api_base_url))
        log.info(
            "starting %d of %d shards", len(self.plan.shards), self.plan.shard_count,
            extra={"tree": self.plan.tree},
        )
        for child in self.children:
            self.spawn(child)
        sd_notify("READY=1\nSTATUS=watching")
        try:
            while not self.finished():
                self.loop_once()
        finally:
            self.cleanup()
        return self.exit_code

    def loop_once(self) -> None:
        """Wait (signals, a child's control message, or a tick), then dispatch and supervise."""
        self.watchdog.ping(self.clock())
        timeout = 0.05 if self.stopping else 0.5
        rlist: list[int] = [self._wake_read]
        wlist: list[int] = []
        for child in self.children:
            if child.control is not None:
                rlist.append(child.control.fileno())
                if child.control.wants_write:
                    wlist.append(child.control.fileno())
        try:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
        except (InterruptedError, OSError, ValueError):
            readable, writable = [], []
        self.drain_wakeup()
        while self.signals:
            signame = signal.Signals(self.signals.pop(0)).name
            handler = getattr(self, f"handle_{signame[3:].lower()}", None)
            if handler is not None:
                handler()
        self.serve_controls(set(readable), set(writable))
        self.reap_children()
        if self.stopping:
            self.advance_shutdown()  # its phase deadlines bound a draining child, not its heartbeat
        else:
            self.murder_silent_children()
            self.manage_children()

    # -- signals (handlers only record) ------------------------------------------------
    def install_signals(self) -> None:
        os.set_blocking(self._wake_write, False)
        os.set_blocking(self._wake_read, False)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        for name in SIGNALS:
            signal.signal(getattr(signal, f"SIG{name}"), self._record_signal)

    def _record_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_read, 4096):
                pass

    def handle_term(self) -> None:
        self.begin_stop("SIGTERM")

    def handle_int(self) -> None:
        self.begin_stop("SIGINT")

    def handle_hup(self) -> None:
        log.info("SIGHUP: reloading the configuration")
        self.reload_configuration()

    def handle_chld(self) -> None:
        pass  # reaping happens in every loop turn

    # -- configuration reload ---------------------------------------------------------------
    def reload_configuration(self) -> None:
        """Apply a changed configuration as each setting's reload policy says."""
        if self.reload_settings is None:
            return
        try:
            new = self.reload_settings()
        except Exception as exc:  # ConfigError and friends: the running config stays
            log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", exc)
            return
        changed = changed_settings(self.settings, new)
        fixed = {name for name in changed if reload_policy(name).action == "service"}
        if fixed:
            log.warning(
                "SIGHUP: %s can only change with a restart of the service; keeping the running values",
                ", ".join(sorted(fixed)),
            )
            new = new.model_copy(update={name: getattr(self.settings, name) for name in fixed})
            changed -= fixed
        if not changed:
            log.info("SIGHUP: configuration unchanged")
            return
        log.info("SIGHUP: applying new %s", ", ".join(sorted(changed)))
        self.settings = new
        register_settings_secrets(new)
        if "database_password" in changed and new.database_url is not None:
            self.database_url = with_password(new.database_url.get_secret_value(), new.database_password)
        if any(COORDINATOR in reload_policy(name).roles for name in changed):
            logging.getLogger().setLevel(new.log_level)
        for child in self.children:
            policies = [reload_policy(name) for name in changed if child.kind in reload_policy(name).roles]
            if any(policy.action == "restart" for policy in policies):
                if child not in self.restart_queue:
                    self.restart_queue.append(child)
            elif policies and child.control is not None:
                child.control.queue(Reconfigure(for_role(new, child.kind), self.database_url))
                self.flush_control(child)

    # -- children ------------------------------------------------------------------------
    def spawn(self, child: Child) -> None:
        """Fork one child with its control channel; it gets the current settings."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.heartbeats.beat(child.slot, self.clock())
        child.spawn_beat = self.heartbeats.last(child.slot)
        child.murdered = False
        child.stacks_asked_at = None
        freeze_before_fork()  # keep the supervisor's pages shared
        pid = os.fork()
        if pid == 0:  # the child
            code = EX_FAILURE
            try:
                ours.close()
                self.close_inherited(keep=child)
                code = run_role(role_class(child.kind), self.context_for(child, theirs))
            except BaseException:
                log.exception("%s died at boot", child.name)
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        if child.control is not None:
            child.control.close()
        child.control = FramedSocket(ours)
        child.pid = pid
        child.started = self.clock()
        log.info("started %s", child.name, extra={"child_pid": pid, "shard": child.shard})

    def context_for(self, child: Child, control: socket.socket) -> RoleContext:
        return RoleContext(
            kind=child.kind, name=child.name, tree=self.plan.tree, settings=for_role(self.settings, child.kind),
            database_url=self.database_url, control=control, heartbeats=self.heartbeats, slot=child.slot,
            shard=child.shard, shard_count=self.plan.shard_count, shards=self.plan.shards,
            writer_address=self.addresses.get("writer", ""), planner_address=self.addresses.get("planner", ""),
            listener=child.listener, data_dir=self.data_dir,
        )

    def close_inherited(self, keep: Child) -> None:
        """In a fresh child: close what belongs to the coordinator or to sibling roles."""
        signal.set_wakeup_fd(-1)
        for other in self.children:
            if other.control is not None:
                other.control.close()
            if other.listener is not None and other is not keep:
                other.listener.close()
        for fd in (self._wake_read, self._wake_write, self._lock_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.telemetry.enabled:
                from kick_monitor.metrics_server import mark_dead

                with contextlib.suppress(Exception):
                    mark_dead(pid)
            child = next((c for c in self.children if c.pid == pid), None)
            if child is not None:
                self.on_child_exit(child, status)

    def on_child_exit(self, child: Child, status: int) -> None:
        """Decide what a child's death means: nothing, a respawn (with back-off), or the end."""
        code = os.waitstatus_to_exitcode(status)
        now = self.clock()
        child.pid = None
        if child.control is not None:
            self.read_control(child)  # its last words, if any, are in the socket buffer
        if child.control is not None:
            child.control.close()
            child.control = None
        # Booted = beat at least once after fork. Only a child that dies before that failed at
        # boot; one killed from outside (OOM killer, kill -9) after booting is respawned
        # however often it happens, with back-off if it dies young.
        booted = self.heartbeats.last(child.slot) > child.spawn_beat
        self.heartbeats.clear(child.slot)
        lived = now - child.started
        if self.stopping:
            return
        if child.planned_restart and code == EX_OK:
            child.planned_restart = False
            child.respawn_at = now
            log.info("%s stopped for a restart", child.name)
            return
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if code in FATAL_EXIT_CODES:
            log.error("%s hit a fatal configuration error (%s); stopping the service instead of restarting it",
                      child.name, child.failure or how, extra={"exit_code": code})
            child.failure = ""
            self.exit_code = code
            self.begin_stop("fatal configuration")
            return
        young = lived < BOOT_WINDOW
        child.quick_deaths = child.quick_deaths + 1 if young else 0
        child.boot_failures = child.boot_failures + 1 if young and not booted else 0
        if child.boot_failures >= MAX_BOOT_FAILURES:
            child.failed = True
            log.error("%s failed %d times in a row at boot (%s); not restarting it", child.name,
                      child.boot_failures, how)
            if child.kind in ESSENTIAL:
                self.exit_code = EX_FAILURE
                self.begin_stop(f"{child.name} cannot start")
            return
        delay = min(RESPAWN_MAX, RESPAWN_MIN * (2 ** max(0, child.quick_deaths - 1))) if child.quick_deaths else 0.0
        child.respawn_at = now + delay
        log.warning("%s exited (%s) after %.1fs; restarting in %.1fs", child.name, how, lived, delay)

    def murder_silent_children(self) -> None:
        """Kill a child whose heartbeat stopped (hung, or SIGSTOPped); reaping restarts it.

        First it is asked for its threads' stacks (DUMP_STACKS_SIGNAL: faulthandler writes them to
        its stderr, the service's log), so a hang says where it was; STACKS_GRACE later, the SIGKILL.
        A SIGSTOPped child cannot answer; the SIGKILL ends it all the same."""
        now = self.clock()
        for child in self.children:
            if child.pid is None or child.murdered:
                continue
            age = self.heartbeats.age(child.slot, now)
            if age <= self.settings.heartbeat_timeout:
                child.stacks_asked_at = None  # it beat again in the meantime: only slow
            elif child.stacks_asked_at is None:
                log.error("%s silent for %.0fs; its threads' stacks follow on stderr, then it is killed",
                          child.name, age)
                self.kill(child, DUMP_STACKS_SIGNAL)
                child.stacks_asked_at = now
            elif now - child.stacks_asked_at >= STACKS_GRACE:
                log.error("%s silent for %.0fs; killing it", child.name, age)
                self.kill(child, signal.SIGKILL)
                child.murdered = True  # one kill, not one per loop turn until it is reaped

    def manage_children(self) -> None:
        """Respawn children whose back-off has passed; move rolling restarts along."""
        now = self.clock()
        for child in self.children:
            if child.pid is None and not child.failed and now >= child.respawn_at:
                child.restarts += 1
                self.telemetry.WORKER_RESTARTS.labels(role=child.kind).inc()
                self.spawn(child)
        self.advance_restarts()

    def advance_restarts(self) -> None:
        """One child at a time: the next restarts once the previous one is back and beating."""
        current = self.restarting
        if current is not None:
            back = current.pid is not None and self.heartbeats.last(current.slot) > current.spawn_beat
            if not (back or current.failed):
                return
            self.restarting = None
        while self.restart_queue:
            child = self.restart_queue.popleft()
            if child.pid is None:
                continue  # it will start with the new settings anyway
            child.planned_restart = True
            self.kill(child, signal.SIGTERM)
            self.restarting = child
            return

    def serve_controls(self, readable: set[int], writable: set[int]) -> None:
        """Flush what waits for a child; read (and drop) anything a child sent. Never blocks."""
        for child in self.children:
            channel = child.control
            if channel is None:
                continue
            fd = channel.fileno()
            if fd in writable:
                self.flush_control(child)
            if fd in readable:
                self.read_control(child)

    def read_control(self, child: Child) -> None:
        """What a child sent: only `RoleFailed` matters (kept for the log line at its exit)."""
        assert child.control is not None
        try:
            messages = child.control.read()
        except (OSError, ConnectionError, ProtocolError, pickle.UnpicklingError, EOFError):
            child.control.close()  # the child is gone or going; reaping will tell
            child.control = None
            return
        for message in messages:
            if isinstance(message, RoleFailed):
                child.failure = message.detail

    def flush_control(self, child: Child) -> None:
        if child.control is None:
            return
        try:
            child.control.flush()
        except OSError:
            child.control.close()
            child.control = None

    def kill(self, child: Child, sig: int) -> None:
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)

    # -- stopping -------------------------------------------------------------------------
    def begin_stop(self, why: str) -> None:
        """First call: warm stop. A second TERM/INT during it: cold stop."""
        if self.stopping is None:
            log.info("%s: stopping gracefully (again to stop at once)", why)
            sd_notify("STOPPING=1")
            self.stopping = "warm"
            self.enter_phase("workers", self.settings.drain_timeout, (*PRODUCERS, "planner"), signal.SIGTERM)
        elif self.stopping == "warm" and why.startswith("SIG"):
            log.warning("%s again: stopping at once", why)
            self.stopping = "cold"
            self.enter_phase("cold", COLD_STOP_SECONDS, ROLE_KINDS, signal.SIGKILL)

    def enter_phase(self, phase: str, seconds: float, kinds: tuple[str, ...], sig: int) -> None:
        self.stop_phase = phase
        self.phase_deadline = self.clock() + seconds
        for child in self.children:
            if child.kind in kinds:
                self.kill(child, sig)

    def advance_shutdown(self) -> None:
        """Warm stop in order: workers drain to the writer, the writer commits, then the rest."""
        now = self.clock()
        phase_kinds = {"workers": PRODUCERS, "writer": ("writer",), "rest": ROLE_KINDS, "cold": ()}
        waiting = [c for c in self.children if c.pid is not None and c.kind in phase_kinds[self.stop_phase]]
        if self.stop_phase == "cold":
            waiting = [c for c in self.children if c.pid is not None]
        if waiting and now < self.phase_deadline:
            return
        for child in waiting:
            log.error("%s did not stop in time; killing it", child.name)
            self.kill(child, signal.SIGKILL)
        if self.stop_phase == "workers":
            self.enter_phase("writer", self.settings.drain_timeout, ("writer",), signal.SIGTERM)
        elif self.stop_phase == "writer":
            self.enter_phase("rest", LAST_ROLES_STOP_SECONDS, ("planner", "exporter", "mirror", "notifier"),
                             signal.SIGTERM)
        elif waiting:
            self.phase_deadline = now + 1.0  # SIGKILLed just now: give reaping a moment
        else:
            self.stop_phase = "done"

    def finished(self) -> bool:
        if self.stop_phase == "done":
            return True
        return self.stop_phase in ("rest", "cold") and all(c.pid is None for c in self.children)

    def cleanup(self) -> None:
        for child in self.children:
            if child.pid is not None:  # only after an exception in the loop
                self.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + COLD_STOP_SECONDS
        while any(c.pid is not None for c in self.children) and time.monotonic() < deadline:
            self.reap_children()
            time.sleep(0.01)
        for child in self.children:
            if child.control is not None:
                child.control.close()
            if child.listener is not None:
                child.listener.close()
        for path in self.addresses.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        for directory in self._tmp_dirs:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        log.info("stopped")

    # -- files and sockets ------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """One process tree per data dir and shard: a second one would double-subscribe."""
        run_dir = self.data_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(run_dir / f"coordinator-{self.plan.tree}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                message = f"another kick-monitor ({self.plan.tree}) is running with data dir {self.data_dir}"
                raise RuntimeError(message) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def bind_sockets(self) -> None:
        """The writer's and the planner's listening sockets, kept across their restarts."""
        for child in self.children:
            if child.kind not in ("writer", "planner"):
                continue
            path = self.data_dir.resolve() / "run" / f"{child.kind}-{self.plan.tree}.sock"
            if len(str(path)) > 100:  # AF_UNIX paths are limited to 108 bytes
                directory = tempfile.mkdtemp(prefix="kick-monitor-")
                self._tmp_dirs.append(directory)
                path = Path(directory) / f"{child.kind}.sock"
            self.addresses[child.kind] = str(path)
            child.listener = bind_listener(str(path))


def run_service(settings: Settings, reload_settings: Callable[[], Settings] | None = None) -> int:
    """`kick-monitor run`: the whole service in the foreground until SIGTERM/SIGINT.

    Start-up work happens here, before the supervisor's loop exists: the database (embedded
    or configured), the schema check, and the shard plan (which needs the streamer count).
    `reload_settings` re-reads the configuration sources on SIGHUP.
    """
    from kick_monitor import __version__
    from kick_monitor.database import DatabaseUnavailable, connect, database_url
    from kick_monitor.logsetup import configure_logging
    from kick_monitor.metrics_server import prepare_multiprocess_dir
    from kick_monitor.migrations import SchemaError, migrate, require_current
    from kick_monitor.streamers import count_subscribable

    scrub_environment()  # before anything forks (embedded PostgreSQL, children): see credentials.py
    configure_logging(settings, role="coordinator")
    tree = "all" if settings.shard_index is None else f"shard-{settings.shard_index}"
    log.info("kick-monitor %s starting (%s)", __version__, tree)
    if settings.metrics_port:
        prepare_multiprocess_dir(Path(settings.data_dir) / "metrics" / tree)
        load_telemetry().record_build_info()
    try:
        with database_url(settings) as url:
            conn = connect(url, application_name="kick-monitor startup")
            try:
                if settings.database_url is None:
                    migrate(conn)  # the embedded database is ours: keep it current
                require_current(conn)
                check_integration(settings, conn)  # source synced, mirror dry-run, or exit 2
                subscribable = count_subscribable(conn)
                notifier = wants_notifier(settings, conn)  # notifier (issue 19)
                plan = agree_cluster_plan(conn, settings, TreePlan.for_settings(settings, subscribable))  # issue 17
            finally:
                conn.close()
            plan = dataclasses.replace(plan, notifier=notifier)
            return Supervisor(settings, url, plan, reload_settings).run()
    except IntegrationError as exc:
        log.error("%s", exc)
        return EX_USAGE
    except (DatabaseUnavailable, SchemaError, ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return EX_USAGE if isinstance(exc, (SchemaError, ValueError)) else EX_FAILURE


# -- notifier (issue 19) ---------------------------------------------------------------------------
def wants_notifier(settings: Settings, conn: Any) -> bool:
    """notify=on: always; off: never; auto: when a target exists now (a first one added later: restart)."""
    if settings.notify != "auto":
        return settings.notify == "on"
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM kick_monitor.notify_targets)")
        row = cur.fetchone()
    conn.rollback()
    found = bool(row and row[0])
    if found:
        log.info("notify targets found: the notifier runs")
    return found


# --- issue 17 (cluster): the shard count every node of the deployment uses --------------
def agree_cluster_plan(conn: Any, settings: Settings, plan: TreePlan) -> TreePlan:
    """The plan's shard count as the deployment agreed it in PostgreSQL (`leases.agree_shard_count`).

    Alone, a node's own count becomes the plan (as before the cluster); beside running
    nodes it adopts theirs — a per-shard unit configured otherwise stops with exit 2.
    """
    from kick_monitor import __version__, leases

    node = leases.Node.this("all" if settings.shard_index is None else str(settings.shard_index), __version__)
    count = leases.agree_shard_count(conn, plan.shard_count, node, settings.lease_ttl)
    if count == plan.shard_count:
        return plan
    if settings.shard_index is not None:
        raise ValueError(
            f"the running nodes use {count} shards, this unit KICK_MONITOR_SHARD_COUNT={plan.shard_count}:"
            " configure the same count everywhere"
        )
    log.warning("running the deployment's %d shards (configured or computed here: %d)", count, plan.shard_count)
    return TreePlan(plan.tree, count, tuple(range(count)))
# --- end issue 17 ---


# -- the application's source and mirror are checked before anything forks --------------
class IntegrationError(RuntimeError):
    """A source query or mirror statement that cannot work: one line, exit 2."""


def check_integration(settings: Settings, conn: Any) -> None:
    """Sync the streamer source once (so the shard plan counts its streamers) and dry-run the mirror."""
    import psycopg2

    from kick_monitor.source_sync import SourceError, first_line, sync_source
    from kick_monitor.status_mirror import MirrorError, check_statement

    try:
        if settings.streamers_source is not None:
            result = sync_source(conn, settings.streamers_source)
            if result is not None:
                log.info("streamer source: %d rows, %s", result.rows, result.plan.summary())
        if settings.status_mirror is not None:
            check_statement(conn, settings.status_mirror)
    except (SourceError, MirrorError) as exc:
        raise IntegrationError(str(exc)) from None
    except psycopg2.Error as exc:  # e.g. no privilege on our own schema: one line, not a traceback
        conn.rollback()
        raise IntegrationError(f"streamer source or status mirror check failed: {first_line(exc)}") from None
