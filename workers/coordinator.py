"""The coordinator: reads the streamer list, forks the writer and one worker per shard, keeps them alive.

Shaped after gunicorn's arbiter: signal handlers only record the signal; the main loop
wakes on it (or on a streamer-list notification, a worker report, or a 1 s tick), then
handles it by name (`handle_term`, `handle_hup`, ...), reaps, kills silent children and
respawns dead ones with back-off. No DB connection crosses a fork: the coordinator
closes its own before forking and reopens after (then reloads fully, since LISTEN
notifications sent meanwhile are gone).

What happens to the children when the coordinator is SIGKILLed: every child asked the
kernel for SIGTERM on parent death (PR_SET_PDEATHSIG) and also checks its parent pid.
Workers stop; the writer reads what is left on its sockets, commits (or spools) it and
exits. Nobody lingers, nobody double-writes; changes a worker had not handed over are
repaired by reconciliation when the service starts again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from kick_monitor.config import Settings
from kick_monitor.database import DatabaseUnavailable, connect
from kick_monitor.exitcodes import EX_BOOT, EX_CONFIG, EX_FAILURE, EX_OK, EX_USAGE
from kick_monitor.handoff import bind_listener
from kick_monitor.logsetup import register_settings_secrets
from kick_monitor.messages import Stop, StreamerRef, Subscribe, Unsubscribe, WorkerState
from kick_monitor.metric_deltas import CounterDeltas
from kick_monitor.migrations import STREAMERS_CHANNEL
from kick_monitor.ordering import allocate_generation
from kick_monitor.process import Heartbeats, set_title
from kick_monitor.resolver import resolve_pending
from kick_monitor.sharding import shard_for, subscriptions_per_streamer
from kick_monitor.systemd import sd_notify

from .shard_worker import run_worker
from .writer import run_writer

log = logging.getLogger("kick_monitor.coordinator")

BOOT_WINDOW = 10.0  # a child dying sooner than this after start is respawned with back-off
MAX_BOOT_FAILURES = 5  # deaths in a row before the first heartbeat: stop respawning, report it
RESPAWN_MIN, RESPAWN_MAX = 0.5, 30.0
RELOAD_DEBOUNCE = 0.2  # coalesce a burst of streamer notifications into one reload
RESOLVE_BUDGET = 2.0  # seconds of Kick API id lookups per reload, at most
STATEMENT_TIMEOUT_MS = 5000  # our queries are tiny: one stuck on a lock must not freeze the main loop
SIGNALS = ("HUP", "TERM", "INT", "CHLD")

# What a SIGHUP may change, and what it takes (see `reload_configuration`).
RESTART_ONLY = frozenset({
    "data_dir", "database_url", "shard_count", "shard_index", "channels_per_connection",
    "metrics_host", "metrics_port", "log_format",
})
WRITER_SETTINGS = frozenset({"batch_size", "flush_interval", "memory_buffer", "spool_max_bytes", "log_level"})
WORKER_SETTINGS = frozenset({
    "pusher_url", "api_base_url", "oauth_token_url", "web_api_base_url", "client_id", "client_secret",
    "lifecycle_channels", "activity_timeout", "pong_timeout", "connect_timeout", "reconcile_interval",
    "api_batch_size", "api_rate", "api_burst", "api_timeout", "log_level",
})


@dataclass
class Child:
    """One supervised process slot: a shard's worker, or the writer (shard None)."""

    name: str
    slot: int
    shard: int | None
    pid: int | None = None
    started: float = 0.0
    spawn_beat: float = 0.0  # the heartbeat value set at fork: a later one means the child booted
    boot_failures: int = 0  # in a row, died before its first heartbeat
    quick_deaths: int = 0  # in a row, died within BOOT_WINDOW of its start (booted or not)
    murdered: bool = False  # SIGKILLed for silence, not reaped yet
    respawn_at: float = 0.0
    failed: bool = False
    control: Connection | None = None
    streamers: dict[int, StreamerRef] = field(default_factory=dict)
    state: WorkerState | None = None
    restarts: int = 0
    planned_restart: bool = False


def load_streamers(conn: psycopg2.extensions.connection) -> list[StreamerRef]:
    """Every streamer with a resolved channel id, with its last committed status."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, username, channel_id, kick_user_id, status, livestream_id"
            " FROM kick_monitor.streamers WHERE channel_id IS NOT NULL ORDER BY id"
        )
        rows = cur.fetchall()
    conn.rollback()
    return [StreamerRef(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


class Coordinator:
    """Runs the process tree for all shards, or for one (`shard_index`)."""

    def __init__(
        self, settings: Settings, database_url: str, reload_settings: Callable[[], Settings] | None = None
    ) -> None:
        self.settings = settings
        self.reload_settings = reload_settings
        self.database_url = database_url
        self.data_dir = Path(settings.data_dir)
        self.tree = "all" if settings.shard_index is None else f"shard-{settings.shard_index}"
        self.shard_count = 1
        self.children: dict[int, Child] = {}
        self.writer: Child | None = None
        self.conn: psycopg2.extensions.connection | None = None
        self.listen_conn: psycopg2.extensions.connection | None = None
        self.signals: list[int] = []
        self.stopping = False
        self.exit_code = EX_OK
        self.reload_at: float | None = None
        self.next_full_reload = 0.0
        self.heartbeats: Heartbeats | None = None
        self.listener: socket.socket | None = None
        self.writer_address = ""
        self._wake_read, self._wake_write = os.pipe()
        self._lock_fd: int | None = None
        self._metrics: Any = None
        self._deltas = CounterDeltas()
        self.api_client: Any = None

    # -- lifecycle -------------------------------------------------------------------
    def run(self) -> int:
        set_title(f"coordinator ({self.tree})")
        self.acquire_lock()
        self.install_signals()
        self._load_metrics()
        self.open_database()
        streamers = self.reload_plan_source()
        self.shard_count = self.plan_shard_count(len(streamers))
        shards = self.my_shards()
        log.info(
            "starting %d of %d shards for %d streamers", len(shards), self.shard_count,
            sum(1 for s in streamers if shard_for(s.channel_id, self.shard_count) in shards),
        )
        self.heartbeats = Heartbeats(len(shards) + 1)
        self.bind_writer_socket()
        self.writer = Child("writer", slot=len(shards), shard=None)
        for slot, shard in enumerate(shards):
            self.children[shard] = Child(f"worker-{shard}", slot=slot, shard=shard)
        self.assign(streamers)
        self.stamp_children(list(self.children.values()))  # issue 14
        with self.database_closed_for_fork():
            self.spawn(self.writer)
            for child in self.children.values():
                self.spawn(child)
        sd_notify("READY=1\nSTATUS=watching")
        self.next_full_reload = time.monotonic() + self.settings.reload_interval
        try:
            while not self.stopping:
                self.loop_once()
        finally:
            self.shutdown()
        return self.exit_code

    def loop_once(self) -> None:
        """Wait, then: signals, reports, notifications, reaping, liveness, respawns, reloads."""
        now = time.monotonic()
        timeout = 1.0
        if self.reload_at is not None:
            timeout = max(0.0, min(timeout, self.reload_at - now))
        rlist: list[Any] = [self._wake_read]
        rlist += [c.control for c in self.children.values() if c.control is not None]
        if self.listen_conn is not None:
            rlist.append(self.listen_conn)
        try:
            readable, _, _ = select.select(rlist, [], [], timeout)
        except (InterruptedError, OSError, ValueError):
            readable = []
        self.drain_wakeup()
        while self.signals:
            signame = signal.Signals(self.signals.pop(0)).name
            handler = getattr(self, f"handle_{signame[3:].lower()}", None)
            if handler is not None:
                handler()
        for child in self.children.values():
            if child.control is not None and child.control in readable:
                self.read_reports(child)
        if self.listen_conn is not None and self.listen_conn in readable:
            self.read_notifications()
        self.reap_children()
        self.murder_silent_children()
        self.manage_children()
        now = time.monotonic()
        if (self.reload_at is not None and now >= self.reload_at) or now >= self.next_full_reload:
            self.reload_streamers()
        self._report_metrics()

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
        log.info("SIGTERM: stopping gracefully")
        self.stopping = True

    def handle_int(self) -> None:
        log.info("SIGINT: stopping gracefully")
        self.stopping = True

    def handle_hup(self) -> None:
        log.info("SIGHUP: reloading the configuration and the streamer list")
        self.reload_configuration()
        self.reload_streamers()

    def reload_configuration(self) -> None:
        """Apply a changed config: children that use a changed setting restart one by one.

        A restart is safe at any time (unacknowledged changes are re-sent, reconciliation
        runs on reconnect). Settings that shape the process tree itself need a full restart.
        """
        if self.reload_settings is None:
            return
        try:
            new = self.reload_settings()
        except Exception as exc:  # ConfigError and friends: the running config stays
            log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", exc)
            return
        changed = {name for name in Settings.model_fields if getattr(new, name) != getattr(self.settings, name)}
        fixed = changed & RESTART_ONLY
        if fixed:
            names = ", ".join(sorted(fixed))
            log.warning("SIGHUP: %s can only change with a restart; keeping the running values", names)
            new = new.model_copy(update={name: getattr(self.settings, name) for name in fixed})
            changed -= fixed
        if not changed:
            log.info("SIGHUP: configuration unchanged")
            return
        log.info("SIGHUP: applying new %s", ", ".join(sorted(changed)))
        self.settings = new
        register_settings_secrets(new)
        logging.getLogger().setLevel(new.log_level)
        restart = []
        if changed & WRITER_SETTINGS and self.writer is not None:
            restart.append(self.writer)
        if changed & WORKER_SETTINGS:
            restart.extend(self.children.values())
        for child in restart:
            self.restart_child(child)

    def restart_child(self, child: Child) -> None:
        """Ask a child to stop gracefully; reaping respawns it with the current settings."""
        if child.pid is None:
            return
        child.planned_restart = True
        if child.shard is not None and child.control is not None:
            with contextlib.suppress(OSError, ValueError):
                child.control.send(Stop("restart"))
                return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)

    def handle_chld(self) -> None:
        pass  # reaping happens in every loop turn

    # -- children ------------------------------------------------------------------------
    def spawn(self, child: Child) -> None:
        """Fork one child; the caller has closed the coordinator's DB connections."""
        assert self.heartbeats is not None and self.listener is not None
        parent_end: Connection | None = None
        child_end: Connection | None = None
        if child.shard is not None:
            parent_end, child_end = Pipe(duplex=True)
        self.heartbeats.beat(child.slot)
        child.spawn_beat = self.heartbeats.last(child.slot)
        child.murdered = False
        pid = os.fork()
        if pid == 0:  # child
            code = EX_FAILURE
            try:
                self.close_inherited(keep=child_end)
                if child.shard is None:
                    code = run_writer(
                        self.settings, self.database_url, self.listener, self.spool_dir(),
                        self.heartbeats, child.slot, title=f"writer ({self.tree})",
                    )
                else:
                    assert child_end is not None
                    code = run_worker(
                        self.settings, child.shard, list(child.streamers.values()), child_end,
                        self.writer_address, self.heartbeats, child.slot,
                    )
            except BaseException:
                log.exception("%s died at boot", child.name)
                code = EX_BOOT
            finally:
                logging.shutdown()
                os._exit(code)
        if child_end is not None:
            child_end.close()
        if child.control is not None:
            child.control.close()
        child.control = parent_end
        child.pid = pid
        child.started = time.monotonic()
        log.info("started %s", child.name, extra={"child_pid": pid, "shard": child.shard})

    def close_inherited(self, keep: Connection | None) -> None:
        """In a fresh child: drop what belongs to the coordinator or to sibling processes."""
        for other in self.children.values():
            if other.control is not None and other.control is not keep:
                with contextlib.suppress(OSError):
                    other.control.close()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.set_wakeup_fd(-1)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.child_by_pid(pid)
            if self._metrics is not None:
                with contextlib.suppress(Exception):
                    from kick_monitor.metrics_server import mark_dead

                    mark_dead(pid)
            if child is None:
                continue
            self.on_child_exit(child, status)

    def on_child_exit(self, child: Child, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        child.pid = None
        # Booted = reached its main loop (beat at least once). Only a child that dies before
        # that failed at boot; one killed from outside (OOM killer, kill -9) after booting
        # is respawned however often it happens, with back-off if it dies young.
        booted = self.heartbeats is not None and self.heartbeats.last(child.slot) > child.spawn_beat
        if self.heartbeats is not None:
            self.heartbeats.clear(child.slot)
        lived = time.monotonic() - child.started
        if self.stopping and code == 0:
            return
        if child.planned_restart and code == 0:
            child.planned_restart = False
            child.respawn_at = time.monotonic()
            log.info("%s stopped for a restart", child.name)
            return
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if code == EX_CONFIG:
            detail = child.state.detail if child.state is not None else ""
            log.error(
                "%s hit a fatal configuration error (%s); stopping the service instead of restarting it",
                child.name, detail or how,
            )
            self.exit_code = EX_CONFIG
            self.stopping = True
            return
        young = lived < BOOT_WINDOW
        child.quick_deaths = child.quick_deaths + 1 if young else 0
        child.boot_failures = child.boot_failures + 1 if young and not booted else 0
        if child.boot_failures >= MAX_BOOT_FAILURES:
            child.failed = True
            log.error("%s failed %d times in a row at boot (%s); not restarting it", child.name,
                      child.boot_failures, how)
            if child.shard is None:  # nothing works without the writer
                self.exit_code = EX_FAILURE
                self.stopping = True
            return
        delay = min(RESPAWN_MAX, RESPAWN_MIN * (2 ** max(0, child.quick_deaths - 1))) if child.quick_deaths else 0.0
        child.respawn_at = time.monotonic() + delay
        log.warning("%s exited (%s) after %.1fs; restarting in %.1fs", child.name, how, lived, delay)

    def murder_silent_children(self) -> None:
        """Kill a child whose heartbeat stopped (hung, or SIGSTOPped); reaping restarts it."""
        if self.heartbeats is None:
            return
        now = time.monotonic()
        for child in self.all_children():
            if child.pid is None:
                continue
            age = self.heartbeats.age(child.slot, now)
            if age > self.settings.heartbeat_timeout and not child.murdered:
                log.error("%s silent for %.0fs; killing it", child.name, age)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                child.murdered = True  # one kill, not one per loop turn until it is reaped

    def manage_children(self) -> None:
        """Respawn children whose back-off has passed."""
        now = time.monotonic()
        due = [c for c in self.all_children() if c.pid is None and not c.failed and now >= c.respawn_at]
        if not due or self.stopping:
            return
        # issue 14: stamp a new generation only if the database answered the refresh
        if any(c.shard is not None for c in due) and self.refresh_streamer_status():
            self.stamp_children([c for c in due if c.shard is not None])
        with self.database_closed_for_fork():
            for child in due:
                child.restarts += 1
                if self._metrics is not None:
                    role = "writer" if child.shard is None else "worker"
                    self._metrics.WORKER_RESTARTS.labels(role=role).inc()
                self.spawn(child)

    def all_children(self) -> list[Child]:
        return [*( [self.writer] if self.writer else []), *self.children.values()]

    def child_by_pid(self, pid: int) -> Child | None:
        return next((c for c in self.all_children() if c.pid == pid), None)

    def read_reports(self, child: Child) -> None:
        assert child.control is not None
        try:
            while child.control.poll():
                message = child.control.recv()
                if isinstance(message, WorkerState):
                    child.state = message
        except (EOFError, OSError):
            child.control.close()
            child.control = None

    # -- shutdown -----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Workers first (they wait for the writer's acks), then the writer drains and commits."""
        sd_notify("STOPPING=1")
        deadline = time.monotonic() + self.settings.drain_timeout
        for child in self.children.values():
            if child.pid is not None and child.control is not None:
                with contextlib.suppress(OSError, ValueError):
                    child.control.send(Stop("shutdown"))
            elif child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        self.wait_for(list(self.children.values()), deadline)
        if self.writer is not None and self.writer.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.writer.pid, signal.SIGTERM)
            self.wait_for([self.writer], time.monotonic() + self.settings.drain_timeout)
        for child in self.all_children():
            if child.pid is not None:
                log.error("%s did not stop in time; killing it", child.name)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
        self.wait_for(self.all_children(), time.monotonic() + 5)
        for conn in (self.conn, self.listen_conn):
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.writer_address)
        log.info("stopped")

    def wait_for(self, children: list[Child], deadline: float) -> None:
        while any(c.pid is not None for c in children) and time.monotonic() < deadline:
            self.reap_children()
            time.sleep(0.02)

    # -- streamers and the shard plan ------------------------------------------------------
    def plan_shard_count(self, streamers: int) -> int:
        if self.settings.shard_index is not None and not self.settings.shard_count:
            raise ValueError("--shard-index needs --shard-count")
        count = self.settings.resolve_shard_count(streamers * subscriptions_per_streamer(self.settings))
        if self.settings.shard_index is not None and self.settings.shard_index >= count:
            raise ValueError(f"--shard-index {self.settings.shard_index} is not below --shard-count {count}")
        return count

    def my_shards(self) -> list[int]:
        if self.settings.shard_index is not None:
            return [self.settings.shard_index]
        return list(range(self.shard_count))

    def assign(self, streamers: list[StreamerRef]) -> dict[int, tuple[list[StreamerRef], list[int]]]:
        """Update each child's streamers; returns per shard what was added and removed."""
        wanted: dict[int, dict[int, StreamerRef]] = {shard: {} for shard in self.children}
        for ref in streamers:
            shard = shard_for(ref.channel_id, self.shard_count)
            if shard in wanted:
                wanted[shard][ref.channel_id] = ref
        changes: dict[int, tuple[list[StreamerRef], list[int]]] = {}
        for shard, child in self.children.items():
            new = wanted[shard]
            for cid, held in child.streamers.items():  # issue 14: a kept streamer keeps its generation
                if cid in new:
                    new[cid] = replace(new[cid], generation=held.generation)
            added = [ref for cid, ref in new.items() if cid not in child.streamers]
            removed = [cid for cid in child.streamers if cid not in new]
            child.streamers = new
            if added or removed:
                changes[shard] = (added, removed)
        return changes

    def reload_streamers(self) -> None:
        """Re-read the list and tell only the affected workers (no restarts)."""
        self.reload_at = None
        self.next_full_reload = time.monotonic() + self.settings.reload_interval
        try:
            streamers = self.reload_plan_source()
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            log.warning("cannot reload streamers: %s", str(exc).strip().splitlines()[0])
            self.close_database()
            return
        changes = self.assign(streamers)
        stamped = self.stamp_added(changes)  # issue 14
        for shard, (added, removed) in changes.items():
            child = self.children[shard]
            added = added if stamped else []
            if child.control is None or child.pid is None:
                continue  # it gets the new list when it is respawned
            with contextlib.suppress(OSError, ValueError):
                if removed:
                    child.control.send(Unsubscribe(tuple(removed)))
                if added:
                    child.control.send(Subscribe(tuple(added)))
            if added or removed:
                log.info("shard %d: +%d -%d streamers", shard, len(added), len(removed))

    # -- issue 14: assignment generations (the planner will call allocate_generation) ----------
    def new_generation(self) -> int | None:
        """A fresh assignment generation from the database, None if it cannot give one."""
        try:
            if self.conn is None or self.conn.closed:
                self.open_database()
            assert self.conn is not None
            return allocate_generation(self.conn)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            log.warning("no new assignment generation: %s", str(exc).strip().splitlines()[0])
            self.close_database()
            return None

    def stamp_children(self, children: Iterable[Child]) -> None:
        """Before (re)spawning workers: one new generation for everything they are handed.

        Without a database the previous generations stay: safe on this host, where `seq`
        (monotonic clock) still ranks the new process's changes after the old one's.
        """
        children = [c for c in children if c.streamers]
        generation = self.new_generation() if children else None
        if generation is None:
            return
        for child in children:
            child.streamers = {cid: replace(ref, generation=generation) for cid, ref in child.streamers.items()}

    def stamp_added(self, changes: dict[int, tuple[list[StreamerRef], list[int]]]) -> bool:
        """Give streamers newly assigned by a reload one new generation; False (and their
        assignment undone, so the next reload retries it) if the database cannot give one."""
        if not any(added for added, _ in changes.values()):
            return True
        generation = self.new_generation()
        for shard, (added, removed) in changes.items():
            child = self.children[shard]
            if generation is None:
                for ref in added:
                    child.streamers.pop(ref.channel_id, None)
                continue
            stamped = [replace(ref, generation=generation) for ref in added]
            child.streamers.update((ref.channel_id, ref) for ref in stamped)
            changes[shard] = (stamped, removed)
        return generation is not None

    def reload_plan_source(self) -> list[StreamerRef]:
        if self.conn is None or self.conn.closed:
            self.open_database()
        assert self.conn is not None
        self.resolve_ids()
        streamers = load_streamers(self.conn)
        self._count_streamers()
        return streamers

    def resolve_ids(self) -> None:
        """Give streamers added by slug their ids (time-boxed: the loop must stay responsive)."""
        assert self.conn is not None
        if self.api_client is None:
            from kick_monitor.kick_api import KickApiClient

            s = self.settings
            self.api_client = KickApiClient(
                s.api_base_url, s.oauth_token_url, s.web_api_base_url, s.client_id, s.client_secret,
                timeout=(min(3.05, s.api_timeout), s.api_timeout), batch_size=s.api_batch_size,
                rate=(s.api_rate, s.api_burst),
            )
        try:
            resolved = resolve_pending(self.conn, self.api_client, budget=RESOLVE_BUDGET)
        except psycopg2.Error as exc:
            log.warning("id resolution skipped: %s", str(exc).strip().splitlines()[0])
            self.conn.rollback()
            return
        if resolved:
            log.info("resolved ids of %d streamers", resolved)

    def refresh_streamer_status(self) -> bool:
        """Before respawning workers: their starting view of each streamer's last status."""
        try:
            streamers = self.reload_plan_source()
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            log.warning("respawning with the last known streamer list: %s", str(exc).strip().splitlines()[0])
            return False
        self.assign(streamers)
        return True

    # -- database -------------------------------------------------------------------------
    def open_database(self) -> None:
        conn = connect(self.database_url, application_name=f"kick-monitor coordinator {self.tree}")
        try:
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (STATEMENT_TIMEOUT_MS,))
            conn.commit()
        except psycopg2.Error as exc:
            conn.close()
            raise DatabaseUnavailable(f"database session lost at once: {str(exc).strip()}") from None
        self.conn = conn
        try:
            listen = connect(self.database_url, application_name="kick-monitor listen", autocommit=True)
            with listen.cursor() as cur:
                cur.execute(f"LISTEN {STREAMERS_CHANNEL}")
            self.listen_conn = listen
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            log.warning("cannot LISTEN for streamer changes (%s); relying on periodic reloads", exc)

    def close_database(self) -> None:
        for conn in (self.conn, self.listen_conn):
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
        self.conn = None
        self.listen_conn = None

    @contextlib.contextmanager
    def database_closed_for_fork(self) -> Any:
        """No DB connection crosses a fork; notifications missed meanwhile → full reload after."""
        had = self.conn is not None
        self.close_database()
        try:
            yield
        finally:
            if had:
                try:
                    self.open_database()
                    self.reload_at = time.monotonic()
                except DatabaseUnavailable as exc:
                    log.warning("database unavailable after fork: %s", exc)

    def read_notifications(self) -> None:
        assert self.listen_conn is not None
        try:
            self.listen_conn.poll()
        except psycopg2.Error as exc:
            log.warning("lost the LISTEN connection: %s", str(exc).strip().splitlines()[0])
            self.close_database()
            self.reload_at = time.monotonic() + 1.0
            return
        if self.listen_conn.notifies:
            self.listen_conn.notifies.clear()
            if self.reload_at is None:
                self.reload_at = time.monotonic() + RELOAD_DEBOUNCE

    # -- files -------------------------------------------------------------------------------
    def spool_dir(self) -> Path:
        return self.data_dir / "spool" / self.tree

    def acquire_lock(self) -> None:
        """One process tree per data dir and shard: a second one would double-subscribe."""
        run_dir = self.data_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(run_dir / f"coordinator-{self.tree}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                message = f"another kick-monitor ({self.tree}) is running with data dir {self.data_dir}"
                raise RuntimeError(message) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def bind_writer_socket(self) -> None:
        path = self.data_dir.resolve() / "run" / f"writer-{self.tree}.sock"
        if len(str(path)) > 100:  # AF_UNIX paths are limited to 108 bytes
            path = Path(tempfile.mkdtemp(prefix="kick-monitor-")) / "writer.sock"
        self.writer_address = str(path)
        self.listener = bind_listener(self.writer_address)

    # -- metrics --------------------------------------------------------------------------------
    def _load_metrics(self) -> None:
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return
        from kick_monitor import metrics

        metrics.record_build_info()
        self._metrics = metrics

    def _count_streamers(self) -> None:
        if self._metrics is None or self.conn is None:
            return
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT CASE WHEN channel_id IS NULL THEN 'unresolved' ELSE status END, count(*)"
                " FROM kick_monitor.streamers GROUP BY 1"
            )
            counts = dict(cur.fetchall())
        self.conn.rollback()
        for status in ("online", "offline", "unknown", "unresolved"):
            self._metrics.STREAMERS.labels(status=status).set(counts.get(status, 0))

    def _report_metrics(self) -> None:
        """The id resolver's Kick API counters (the workers export their own)."""
        if self._metrics is None or self.api_client is None:
            return
        api = self.api_client.stats.snapshot()
        for (endpoint, status), total in api.requests.items():
            self._deltas.advance(self._metrics.API_REQUESTS, total, endpoint=endpoint, status=status)
        self._deltas.advance(self._metrics.TOKEN_REFRESHES, api.token_refreshes)


def run_service(settings: Settings, reload_settings: Callable[[], Settings] | None = None) -> int:
    """`kick-monitor run`: the whole service in the foreground until SIGTERM/SIGINT.

    `reload_settings` re-reads the configuration sources on SIGHUP.
    """
    from kick_monitor.database import database_url
    from kick_monitor.logsetup import configure_logging
    from kick_monitor.metrics_server import prepare_multiprocess_dir, start_metrics_server
    from kick_monitor.migrations import SchemaError, migrate, require_current

    configure_logging(settings, role="coordinator")
    tree = "all" if settings.shard_index is None else f"shard-{settings.shard_index}"
    metrics_server = None
    if settings.metrics_port:
        prepare_multiprocess_dir(Path(settings.data_dir) / "metrics" / tree)
        try:
            metrics_server = start_metrics_server(settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", settings.metrics_host, settings.metrics_port, exc)
            return EX_USAGE
    try:
        with database_url(settings) as url:
            conn = connect(url, application_name="kick-monitor startup")
            try:
                if settings.database_url is None:
                    migrate(conn)  # the embedded database is ours: keep it current
                require_current(conn)
            finally:
                conn.close()
            return Coordinator(settings, url, reload_settings).run()
    except (DatabaseUnavailable, SchemaError, ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return EX_USAGE if isinstance(exc, (SchemaError, ValueError)) else EX_FAILURE
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
