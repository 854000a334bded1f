"""The batched writer: the only process that writes status to PostgreSQL.

Group commit: it drains everything the workers have sent, commits it in one statement,
acknowledges it, and goes back to waiting — so at low rates a change is committed
within a millisecond (no waiting to fill a batch) and at high rates batches grow by
themselves while the previous commit runs (up to `batch_size`). `flush_interval` > 0
makes it keep gathering while input keeps coming, for bigger batches at the cost of
up to that much latency; the default 0 never waits (shared/PERFORMANCE.md: batching is
CPU-bound, so waiting to fill a batch buys no throughput at the rates we see).

When PostgreSQL is down, changes wait in memory (unacknowledged, so the workers still
hold them too); past `memory_buffer` changes or `SPOOL_AFTER` seconds they go to the
durable spool and are acknowledged. When the database returns, the spool is replayed
first, in order, then the memory backlog — older changes never land after newer ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from kick_monitor.config import Settings
from kick_monitor.database import DatabaseUnavailable, connect
from kick_monitor.exitcodes import EX_FAILURE, EX_OK
from kick_monitor.handoff import ChangeReceiver
from kick_monitor.logsetup import configure_logging
from kick_monitor.messages import StatusChange
from kick_monitor.ordering import check_clock, read_offset
from kick_monitor.process import Heartbeats, die_with_parent, parent_changed, reset_signals, set_title
from kick_monitor.spool import Spool
from kick_monitor.status_store import BatchResult, apply_changes, prepare

log = logging.getLogger("kick_monitor.writer")

SPOOL_AFTER = 2.0  # seconds of outage before memory-held changes go to disk
RETRY_MIN, RETRY_MAX = 0.25, 5.0
STOP_GRACE = 1.0  # after SIGTERM, seconds to keep reading from workers still connected
MAX_STATEMENT_SECONDS = 30.0
CLOCK_EVERY = 30.0  # seconds between measurements of the clock offset (a metric only)


def statement_timeout(heartbeat_timeout: float) -> float:
    """Seconds one statement may take: well below the heartbeat timeout, so a statement stuck
    on a lock is cancelled by PostgreSQL (and retried) before the coordinator takes the
    silent writer for hung and kills it."""
    return min(MAX_STATEMENT_SECONDS, heartbeat_timeout / 2)


@dataclass
class Backlog:
    """Received changes not yet durable, and the highest seq per connection id they cover."""

    changes: list[StatusChange] = field(default_factory=list)
    acks: dict[int, int] = field(default_factory=dict)
    since: float | None = None

    def add(self, conn_id: int, seq: int, changes: tuple[StatusChange, ...], now: float) -> None:
        self.changes.extend(changes)
        self.acks[conn_id] = max(seq, self.acks.get(conn_id, 0))
        if self.since is None:
            self.since = now

    def take(self) -> tuple[list[StatusChange], dict[int, int]]:
        changes, acks = self.changes, self.acks
        self.changes, self.acks, self.since = [], {}, None
        return changes, acks

    def merge(self, other: Backlog) -> None:
        self.changes.extend(other.changes)
        for conn_id, seq in other.acks.items():
            self.acks[conn_id] = max(seq, self.acks.get(conn_id, 0))
        if other.since is not None:
            self.since = other.since if self.since is None else min(self.since, other.since)

    def __len__(self) -> int:
        return len(self.changes)


class BatchWriter:
    """Runs in the forked writer process; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        listener: socket.socket,
        spool_dir: Path,
        heartbeats: Heartbeats | None = None,
        heartbeat_slot: int = 0,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.receiver = ChangeReceiver(listener)
        self.spool = Spool(spool_dir, settings.spool_max_bytes)
        self.heartbeats = heartbeats
        self.heartbeat_slot = heartbeat_slot
        self.conn: psycopg2.extensions.connection | None = None
        self.pending = Backlog()   # received, to commit at the next flush
        self.held = Backlog()      # could not be committed: DB down
        self.stopping = False
        self.retry_at = 0.0
        self.retry_delay = RETRY_MIN
        self.committed = 0
        self.clock_checked = False
        self.next_clock = 0.0
        self.ppid = os.getppid()
        self._metrics: Any = None

    # -- process entry -------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._record_stop)
        self._load_metrics()
        self.connect_database()
        stop_deadline: float | None = None
        while True:
            now = time.monotonic()
            self._beat()
            if self.stopping and stop_deadline is None:
                stop_deadline = now + STOP_GRACE
            if stop_deadline is not None and (now >= stop_deadline or not self.receiver.channels):
                break
            if parent_changed(self.ppid):
                log.warning("coordinator is gone; draining and exiting")
                self.stopping = True
            self.step(now)
        self.drain()
        return EX_OK

    def step(self, now: float) -> None:
        """One turn: wait for input, read it, flush when idle or full, retry the DB when due."""
        timeout = 0.5
        if self.held or self.spool:
            timeout = min(timeout, max(0.0, self.retry_at - now))
        if self.pending:
            timeout = 0.0
        readable, writable, _ = select.select(self.receiver.filenos(), self.receiver.writers(), [], timeout)
        for fd in writable:
            self.receiver.flush(fd)
        now = time.monotonic()
        for conn_id, batch in self.receiver.read(readable):
            self.pending.add(conn_id, batch.seq, batch.changes, now)
        if self.pending and self._should_flush(now):
            self.flush(now)
        if (self.held or self.spool) and now >= self.retry_at:
            self.recover(now)
        elif self.held and self.held.since is not None and now - self.held.since >= SPOOL_AFTER:
            self.spool_held()
        if self.conn is not None and now >= self.next_clock and not self.pending:
            self.measure_clock(now)
        self._report()

    def _should_flush(self, now: float) -> bool:
        if len(self.pending) >= self.settings.batch_size:
            return True
        since = self.pending.since or now
        if now - since >= self.settings.flush_interval:
            return True
        more, _, _ = select.select(self.receiver.filenos(), [], [], 0)
        return not more  # idle: nothing else is waiting, commit now

    # -- committing ----------------------------------------------------------------
    def flush(self, now: float) -> None:
        """Commit what is pending, or hold it if the database is down or the spool is not empty."""
        if self.conn is None or self.held or self.spool:
            self.held.merge(self.pending)
            self.pending = Backlog()
            if len(self.held) >= self.settings.memory_buffer:
                self.spool_held()
            return
        changes, acks = self.pending.take()
        if self.commit(changes):
            self.receiver.acknowledge(acks)
        else:
            self._hold(changes, acks, now, front=False)

    def _hold(self, changes: list[StatusChange], acks: dict[int, int], now: float, *, front: bool) -> None:
        """Keep changes that could not be committed, in order, with the acks they cover."""
        if front:
            self.held.changes[:0] = changes
        else:
            self.held.changes.extend(changes)
        for conn_id, seq in acks.items():
            self.held.acks[conn_id] = max(seq, self.held.acks.get(conn_id, 0))
        self.held.since = self.held.since or now

    def commit(self, changes: list[StatusChange]) -> bool:
        """Commit in slices of batch_size; False (and the DB marked down) on a connection error."""
        size = self.settings.batch_size
        return all(self._commit_slice(changes[start : start + size]) for start in range(0, len(changes), size))

    def _commit_slice(self, changes: list[StatusChange]) -> bool:
        assert self.conn is not None
        self._beat()  # alive as long as statements complete, however many a replay takes
        started = time.perf_counter()
        result: BatchResult | None
        try:
            result = apply_changes(self.conn, changes)
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            self._database_lost(exc)
            return False
        except psycopg2.DatabaseError as exc:
            result = self._commit_one_by_one(changes, exc)
        if result is None:
            return False
        committed_at = time.time()
        self._observe(changes, result, time.perf_counter() - started, committed_at)
        return True

    def _commit_one_by_one(self, changes: list[StatusChange], exc: Exception) -> BatchResult | None:
        """A batch the database rejects (not a connection problem): find and drop the bad changes."""
        log.error("batch of %d rejected (%s); retrying change by change", len(changes), str(exc).strip())
        assert self.conn is not None
        transitions = 0
        for change in changes:
            try:
                transitions += apply_changes(self.conn, [change]).transitions
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as lost:
                self._database_lost(lost)
                return None
            except psycopg2.DatabaseError as bad:
                log.error(
                    "dropping a change the database rejects: %s",
                    str(bad).strip(),
                    extra={"channel_id": change.channel_id, "change_id": change.change_id},
                )
                if self._metrics:
                    self._metrics.COMMIT_ERRORS.labels(kind="rejected").inc()
        return BatchResult(len(changes), transitions)

    def spool_held(self) -> None:
        """Make held changes durable on disk and acknowledge them; on failure keep them in memory."""
        if not self.held:
            return
        try:
            self.spool.append(self.held.changes)
        except OSError as exc:
            log.error("cannot write the spool (%s); keeping %d changes in memory", exc, len(self.held))
            if self._metrics:
                self._metrics.COMMIT_ERRORS.labels(kind="spool").inc()
            self.held.since = time.monotonic()  # try again after another SPOOL_AFTER
            return
        log.warning("database unavailable: spooled %d changes to %s", len(self.held), self.spool.directory)
        if self._metrics:
            self._metrics.SPOOLED.inc(len(self.held))
        _, acks = self.held.take()
        self.receiver.acknowledge(acks)

    def recover(self, now: float) -> None:
        """Reconnect if needed, then replay the spool (oldest first), then the held backlog."""
        if self.conn is None and not self.connect_database():
            return
        while self.spool:
            oldest = self.spool.oldest()
            if oldest is None:
                break
            path, changes = oldest
            if not self.commit(changes):
                return
            self.spool.remove(path)
            log.info("replayed %d spooled changes from %s", len(changes), path.name)
        if self.held:
            changes, acks = self.held.take()
            if self.commit(changes):
                self.receiver.acknowledge(acks)
            else:
                self._hold(changes, acks, now, front=True)

    def drain(self) -> None:
        """Shutdown: commit everything received; what cannot be committed goes to the spool."""
        now = time.monotonic()
        for conn_id, batch in self.receiver.read(list(self.receiver.channels)):
            self.pending.add(conn_id, batch.seq, batch.changes, now)
        if self.pending:
            self.flush(now)
        if self.held or self.spool:
            self.recover(now)
        if self.held:
            self.spool_held()
        self.receiver.close()
        if self.conn is not None:
            self.conn.close()
        log.info("writer stopped after committing %d changes", self.committed)

    # -- database connection --------------------------------------------------------
    def measure_clock(self, now: float) -> None:
        """Export the clock offset; the first time, also warn if our clock is behind.

        Only for the operator: changes are ordered by (generation, seq), not by any clock.
        """
        assert self.conn is not None
        self.next_clock = now + CLOCK_EVERY
        try:
            offset = read_offset(self.conn) if self.clock_checked else check_clock(self.conn).offset
        except psycopg2.Error as exc:  # a lost connection shows at the next commit
            log.debug("clock offset not measured: %s", str(exc).strip())
            with contextlib.suppress(psycopg2.Error):
                self.conn.rollback()
            return
        self.clock_checked = True
        if self._metrics:
            self._metrics.CLOCK_OFFSET.set(offset)

    def connect_database(self) -> bool:
        try:
            conn = connect(self.database_url, application_name="kick-monitor writer")
            timeout_ms = max(1, int(statement_timeout(self.settings.heartbeat_timeout) * 1000))
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (timeout_ms,))
            conn.commit()
            prepare(conn)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            self._schedule_retry(str(exc).strip().splitlines()[0])
            return False
        if self.retry_delay > RETRY_MIN:
            log.info("database is back")
        self.conn = conn
        self.retry_delay = RETRY_MIN
        if self._metrics:
            self._metrics.DB_UP.set(1)
        return True

    def _database_lost(self, exc: Exception) -> None:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self.conn.close()
        self.conn = None
        if self._metrics:
            self._metrics.COMMIT_ERRORS.labels(kind="connection").inc()
        self._schedule_retry(message)

    def _schedule_retry(self, reason: str) -> None:
        log.warning("database unavailable (%s); retrying in %.2fs", reason, self.retry_delay)
        self.retry_at = time.monotonic() + self.retry_delay
        self.retry_delay = min(RETRY_MAX, self.retry_delay * 2)
        if self._metrics:
            self._metrics.DB_UP.set(0)

    # -- reporting ------------------------------------------------------------------
    def _record_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _beat(self) -> None:
        if self.heartbeats is not None:
            self.heartbeats.beat(self.heartbeat_slot)

    def _load_metrics(self) -> None:
        try:
            from kick_monitor import metrics
        except ImportError:  # pragma: no cover
            return
        self._metrics = metrics

    def _observe(self, changes: list[StatusChange], result: BatchResult, seconds: float, now: float) -> None:
        self.committed += len(changes)
        m = self._metrics
        if m is None:
            return
        m.BATCH_SIZE.observe(len(changes))
        m.COMMIT_SECONDS.observe(seconds)
        m.COMMITTED.labels(outcome="transition").inc(result.transitions)
        m.COMMITTED.labels(outcome="no_change").inc(result.submitted - result.transitions)
        for change in changes:
            m.LATENCY.labels(source=change.source).observe(max(0.0, now - change.received_at))

    def _report(self) -> None:
        m = self._metrics
        if m is not None:
            m.QUEUE_DEPTH.set(len(self.pending) + len(self.held))
            m.SPOOL_BYTES.set(self.spool.size_bytes)


def run_writer(
    settings: Settings,
    database_url: str,
    listener: socket.socket,
    spool_dir: Path,
    heartbeats: Heartbeats | None,
    heartbeat_slot: int,
    title: str = "writer",
) -> int:
    """Entry point in the forked child: fresh signal handlers, own DB connection, then run."""
    reset_signals()
    die_with_parent(signal.SIGTERM)
    set_title(title)
    configure_logging(settings, role="writer")
    writer = BatchWriter(settings, database_url, listener, spool_dir, heartbeats, heartbeat_slot)
    try:
        return writer.run()
    except Exception:
        log.exception("writer crashed")
        return EX_FAILURE
