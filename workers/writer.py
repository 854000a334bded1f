"""The batched writer: the only process that writes status to PostgreSQL.

Group commit: it drains everything the workers have sent, commits it in one statement,
acknowledges it, and goes back to waiting — so at low rates a change is committed
within a millisecond (no waiting to fill a batch) and at high rates batches grow by
themselves while the previous commit runs (up to `batch_size`). `flush_interval` > 0
makes it keep gathering while input keeps coming, for bigger batches at the cost of
up to that much latency; the default 0 never waits (shared/PERFORMANCE.md: batching is
CPU-bound, so waiting to fill a batch buys no throughput at the rates we see).

A backlog bigger than `batch_size` is committed in slices on two connections: while one slice's
write and COMMIT run (on a helper thread that only waits on PostgreSQL; two, started for the backlog
and ended with it), the next slice is locked,
read and planned on the other connection and its write sent too, so the writer's Python is off the
serial path and two writes can run at once in PostgreSQL (issue 18, W). A slice sharing a streamer
with one in flight is staged only after that one committed (its changes apply in order); slices of
different streamers may commit in any order — the backlog is acknowledged once all have. The second
connection is opened on the first backlog that needs it and closed after 10 s without one (and the
heap the burst freed given back: `after_burst`); without it, slices commit one after the other. 10 s
after the last batch of more than `BURST_BATCH` changes the main connection is swapped for a fresh
one (`renew_connection`): libpq keeps the buffers a burst grew for as long as a connection lives.

When PostgreSQL is down, changes wait in memory (unacknowledged, so the workers still
hold them too); past `memory_buffer` changes or `SPOOL_AFTER` seconds they go to the
durable spool and are acknowledged. When the database returns, the spool is replayed
first, in order, then the memory backlog — older changes never land after newer ones; a
replay commits `REPLAY_SLICE` changes at a time on the one connection, in this thread.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import select
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extensions

from kick_monitor.database import DatabaseUnavailable, connect, first_line
from kick_monitor.exitcodes import EX_OK
from kick_monitor.handoff import ChangeReceiver
from kick_monitor.messages import StatusChange
from kick_monitor.ordering import check_clock, read_offset
from kick_monitor.preload import release_free_memory
from kick_monitor.role import Role, RoleContext
from kick_monitor.spool import Spool
from kick_monitor.status_store import (
    BatchResult,
    apply_changes,
    finish_changes,
    prepare,
    stage_changes,
)

log = logging.getLogger("kick_monitor.writer")

SPOOL_AFTER = 2.0  # seconds of outage before memory-held changes go to disk
RETRY_MIN, RETRY_MAX = 0.25, 5.0
STOP_GRACE = 1.0  # after SIGTERM, seconds to keep reading from workers still connected
MAX_STATEMENT_SECONDS = 30.0
CLOCK_EVERY = 30.0  # seconds between measurements of the clock offset (a metric only)
SECOND_CONNECTION_RETRY = 60.0  # seconds before trying again to open the second connection
SECOND_CONNECTION_IDLE = 10.0  # seconds without a backlog of several slices before it is closed again
# Changes a replay commits at a time (at most batch_size): an outage's replay is the one large batch a
# writer at low rates ever sees, and the Python objects of a 500-change slice (decoded changes, the
# statement's parameters) left ~1 MB of emptied pymalloc pools resident after it; 100 fit in the pools
# the live path uses, at the same serial rate (docs/performance.md, round 12).
REPLAY_SLICE = 100
# A live batch of more than this many changes is a burst (a reconciliation's answers, a backlog): libpq
# grows a connection's input and output buffers to the biggest result and statement it has seen and never
# shrinks them, so BURST_OVER seconds after the last one the writer swaps its main connection for a fresh
# one (`renew_connection`). Measured in M (docs/performance.md, round 14): the start's reconciliation left
# the writer 1.6 MB of new memory for good, 0.1 MB when no burst came.
BURST_BATCH = REPLAY_SLICE
BURST_OVER = 10.0


def statement_timeout(heartbeat_timeout: float) -> float:
    """Seconds one statement may take: well below the heartbeat timeout, so a statement stuck
    on a lock is cancelled by PostgreSQL (and retried) before the coordinator takes the
    silent writer for hung and kills it."""
    return min(MAX_STATEMENT_SECONDS, heartbeat_timeout / 2)


@dataclass(frozen=True, slots=True)
class InFlight:
    """A slice whose write and COMMIT a helper thread is running."""

    index: int
    part: list[StatusChange]
    started: float
    future: Future[BatchResult]


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

    def merge(self, other: Backlog, *, front: bool = False) -> None:
        """Take over `other`'s changes and acks; `front=True` when they are older than ours
        (a failed commit of what was held), so older changes still commit before newer ones."""
        if front:
            self.changes[:0] = other.changes
        else:
            self.changes.extend(other.changes)
        for conn_id, seq in other.acks.items():
            self.acks[conn_id] = max(seq, self.acks.get(conn_id, 0))
        if other.since is not None:
            self.since = other.since if self.since is None else min(self.since, other.since)

    def __len__(self) -> int:
        return len(self.changes)


class BatchWriter(Role):
    """Runs in the forked writer process; see the module docstring."""

    kind = "writer"

    def __init__(
        self, ctx: RoleContext, on_commit: Callable[[Sequence[StatusChange], float], None] | None = None
    ) -> None:
        super().__init__(ctx)
        assert ctx.listener is not None, "the supervisor binds the writer's socket"
        self.on_commit = on_commit  # called after each committed slice with its commit wall time (benchmarks)
        self.database_url = ctx.database_url
        self.receiver = ChangeReceiver(ctx.listener)
        self.spool = Spool(ctx.data_dir / "spool" / ctx.tree, self.settings.spool_max_bytes)
        self.conn: psycopg2.extensions.connection | None = None
        self.second: psycopg2.extensions.connection | None = None  # stages a slice while one commits
        self.second_retry_at = 0.0
        self.second_used_at = 0.0
        self.pending = Backlog()   # received, to commit at the next flush
        self.held = Backlog()      # could not be committed: DB down
        self.retry_at = 0.0
        self.retry_delay = RETRY_MIN
        self.committed = 0
        self.stop_deadline: float | None = None
        self.clock_checked = False
        self.next_clock = 0.0
        self.burst_at: float | None = None  # when the last batch of more than BURST_BATCH changes came

    # -- the role ------------------------------------------------------------------
    def boot(self) -> None:
        self.connect_database()

    def running(self) -> bool:
        """After SIGTERM, keep reading for STOP_GRACE while workers are still connected."""
        if not self.stopping:
            return True
        now = time.monotonic()
        if self.stop_deadline is None:
            self.stop_deadline = now + STOP_GRACE
        return now < self.stop_deadline and bool(self.receiver.channels)

    def finish(self) -> int:
        self.drain()
        return EX_OK

    def reconfigure(self, changed: set[str]) -> None:
        self.database_url = self.ctx.database_url  # a rotated password: used by the next connection
        self.close_second()  # reopened with the new settings when next needed
        if "heartbeat_timeout" in changed and self.conn is not None:
            try:
                self.set_statement_timeout(self.conn)
                self.conn.commit()
            except psycopg2.Error as exc:
                self._database_lost(exc)

    def step(self) -> None:
        """One turn: wait for input, read it, flush when idle or full, retry the DB when due."""
        now = time.monotonic()
        timeout = 0.5
        if self.held or self.spool:
            timeout = min(timeout, max(0.0, self.retry_at - now))
        if self.pending:
            timeout = 0.0
        readable, writable = self.wait(self.receiver.filenos(), self.receiver.writers(), timeout)
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
        if self.burst_at is not None and now - self.burst_at >= BURST_OVER and not self.pending:
            self.renew_connection()  # the second one too, if it is still open
        elif self.second is not None and now - self.second_used_at >= SECOND_CONNECTION_IDLE:
            self.close_second()  # bursts are rare at low rates: no connection kept for them
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
        batch, self.pending = self.pending, Backlog()
        if self.commit(batch.changes):
            self.receiver.acknowledge(batch.acks)
        else:
            self.held.merge(batch)

    def commit(self, changes: list[StatusChange]) -> bool:
        """Commit in slices of batch_size; False (and the DB marked down) on a connection error.
        Several slices are pipelined on two connections when the second one is open."""
        if len(changes) > BURST_BATCH:
            self.burst_at = time.monotonic()
        slices = list(slices_of(changes, self.settings.batch_size))
        if len(slices) > 1 and self.open_second():
            return self._commit_pipelined(slices)
        return all(self._commit_slice(part) for part in slices)

    def _commit_pipelined(self, slices: list[list[StatusChange]]) -> bool:
        """Each connection in turn: stage a slice (lock, read, plan), then send its write and
        COMMIT to a helper thread and stage the next slice on the other connection — so two
        slices' writes can run at once in PostgreSQL (two backends, two cores) while the writer
        plans. A slice sharing a streamer with one in flight waits for it; acknowledgements wait
        for the whole backlog, so slices of different streamers may commit in any order.

        Any error: every slice in flight is waited for, a staged one rolled back; a lost
        connection marks the database down (the whole backlog is held and committed again later:
        committed slices are then no-ops, history is keyed by change id); on a rejected slice
        those not committed go through the one-at-a-time path, which finds the bad changes."""
        assert self.conn is not None and self.second is not None
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="commit") as committer:  # threads only meanwhile
            failure, committed = self._run_slices(slices, (self.conn, self.second), committer)
        if failure is None:
            return True
        if isinstance(failure, (psycopg2.OperationalError, psycopg2.InterfaceError)):
            self._database_lost(failure)
            return False
        if not isinstance(failure, psycopg2.Error):
            raise failure
        log.warning("pipelined commit failed (%s); committing the rest slice by slice", str(failure).strip())
        return all(self._commit_slice(part) for index, part in enumerate(slices) if index not in committed)

    def _run_slices(
        self, slices: list[list[StatusChange]], connections: tuple[psycopg2.extensions.connection, ...],
        committer: ThreadPoolExecutor,
    ) -> tuple[BaseException | None, set[int]]:
        """The pipeline itself; returns the first error (after every slice in flight settled) and
        the indexes of the slices committed."""
        tolerance = self.settings.broadcast_match_tolerance
        in_flight: dict[int, InFlight] = {}  # by connection: the slice whose write it runs
        committed: set[int] = set()
        failure: BaseException | None = None
        for index, part in enumerate(slices):
            slot = index % 2
            for other in [k for k, flight in in_flight.items() if k == slot or streamers_shared(flight.part, part)]:
                failure = self._settle(in_flight.pop(other), committed) or failure
            if failure is not None:
                break
            self.beat()
            started = time.perf_counter()
            try:
                staged = stage_changes(connections[slot], part, tolerance=tolerance)
            except BaseException as exc:  # what is in flight is waited for first
                failure = exc
                break
            future = committer.submit(finish_changes, connections[slot], staged)
            in_flight[slot] = InFlight(index, part, started, future)
        for flight in in_flight.values():
            failure = self._settle(flight, committed) or failure
        return failure, committed

    def _settle(self, flight: InFlight, committed: set[int]) -> BaseException | None:
        """Wait for a slice's write and COMMIT; record it if it committed, else return its error."""
        try:
            result = flight.future.result()
        except BaseException as exc:  # re-raised by the caller unless a database error
            return exc
        committed.add(flight.index)
        committed_at = time.time()
        self._observe(flight.part, result, time.perf_counter() - flight.started, committed_at)
        if self.on_commit is not None:
            self.on_commit(flight.part, committed_at)
        return None

    def _commit_slice(self, changes: list[StatusChange]) -> bool:
        assert self.conn is not None
        self.beat()  # alive as long as statements complete, however many a replay takes
        started = time.perf_counter()
        result: BatchResult | None
        try:
            result = apply_changes(self.conn, changes, tolerance=self.settings.broadcast_match_tolerance)
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            self._database_lost(exc)
            return False
        except psycopg2.DatabaseError as exc:
            result = self._commit_one_by_one(changes, exc)
        if result is None:
            return False
        committed_at = time.time()
        self._observe(changes, result, time.perf_counter() - started, committed_at)
        if self.on_commit is not None:
            self.on_commit(changes, committed_at)
        return True

    def _commit_one_by_one(self, changes: list[StatusChange], exc: Exception) -> BatchResult | None:
        """A batch the database rejects (not a connection problem): find and drop the bad changes."""
        log.error("batch of %d rejected (%s); retrying change by change", len(changes), str(exc).strip())
        assert self.conn is not None
        transitions = inferred = 0
        for change in changes:
            try:
                result = apply_changes(self.conn, [change], tolerance=self.settings.broadcast_match_tolerance)
                transitions, inferred = transitions + result.transitions, inferred + result.inferred
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as lost:
                self._database_lost(lost)
                return None
            except psycopg2.DatabaseError as bad:
                log.error(
                    "dropping a change the database rejects: %s",
                    str(bad).strip(),
                    extra={"channel_id": change.channel_id, "change_id": change.change_id},
                )
                self.telemetry.COMMIT_ERRORS.labels(kind="rejected").inc()
        return BatchResult(len(changes), transitions, inferred)

    def spool_held(self) -> None:
        """Make held changes durable on disk and acknowledge them; on failure keep them in memory."""
        if not self.held:
            return
        try:
            self.spool.append(self.held.changes)
        except OSError as exc:
            log.error("cannot write the spool (%s); keeping %d changes in memory", exc, len(self.held))
            self.telemetry.COMMIT_ERRORS.labels(kind="spool").inc()
            self.held.since = time.monotonic()  # try again after another SPOOL_AFTER
            return
        log.warning("database unavailable: spooled %d changes to %s", len(self.held), self.spool.directory)
        self.telemetry.SPOOLED.inc(len(self.held))
        _, acks = self.held.take()
        self.receiver.acknowledge(acks)

    def recover(self, now: float) -> None:
        """Reconnect if needed, then replay the spool (oldest first), then the held backlog."""
        if self.conn is None and not self.connect_database():
            return
        while (path := self.spool.oldest_path()) is not None:
            replayed = 0
            for part in self.spool.read_slices(path, self.replay_slice):
                if not self._commit_slice(part):
                    return  # the whole segment again later: its committed slices are no-ops
                replayed += len(part)
            self.spool.remove(path)
            log.info("replayed %d spooled changes from %s", replayed, path.name)
        if self.held:
            batch, self.held = self.held, Backlog()
            if self.replay(batch.changes):
                self.receiver.acknowledge(batch.acks)
            else:
                self.held.merge(batch, front=True)
                return
        after_burst()  # the outage's backlog and spool were the burst

    @property
    def replay_slice(self) -> int:
        return max(1, min(self.settings.batch_size, REPLAY_SLICE))

    def replay(self, changes: list[StatusChange]) -> bool:
        """Commit an outage's backlog slice after slice on the one connection, in this thread.

        Not pipelined (`commit`): a replay is rare and bounded (2 s of traffic in memory, then the
        spool), and the commit threads' malloc arena, the buffers libpq grows in them and the second
        connection stayed resident after it. Measured on the soak (6 minutes, one 5-s outage): the
        writer's private memory stepped +1,776 kB at the outage with the pipelined replay, +980 and
        +992 kB with this serial one in 500-change slices, +180 kB in slices of `REPLAY_SLICE`."""
        return all(self._commit_slice(part) for part in slices_of(changes, self.replay_slice))

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
        self.close_second()
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
        self.telemetry.CLOCK_OFFSET.set(offset)

    def connect_database(self) -> bool:
        try:
            conn = self.open_connection()
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            self._schedule_retry(first_line(exc))
            return False
        if self.retry_delay > RETRY_MIN:
            log.info("database is back")
        self.conn = conn
        self.retry_delay = RETRY_MIN
        self.telemetry.DB_UP.set(1)
        return True

    def open_connection(self) -> psycopg2.extensions.connection:
        """A connection ready for batches: statement timeout set, the batch statements prepared."""
        conn = connect(self.database_url, application_name="kick-monitor writer")
        try:
            self.set_statement_timeout(conn)
            conn.commit()
            prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def open_second(self) -> bool:
        """The second connection for pipelined slices: opened when first needed, retried a minute
        after a failure (the writer then commits slice after slice on one connection)."""
        now = time.monotonic()
        if self.second is not None:
            self.second_used_at = now
            return True
        if now < self.second_retry_at:
            return False
        try:
            self.second = self.open_connection()
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            self.second_retry_at = now + SECOND_CONNECTION_RETRY
            log.warning("cannot open a second database connection (%s); committing slices one after the other",
                        first_line(exc))
            return False
        self.second_used_at = now
        return True

    def renew_connection(self) -> None:
        """A burst is over: swap the main connection for a fresh one (statements prepared), close the
        second, and give back the heap (`after_burst`). Closing a connection is the only way to free the
        buffers libpq grew for the burst's slices (BURST_BATCH). If no new connection can be opened now,
        the current one is kept (a database going down is noticed by the next commit, as always)."""
        self.burst_at = None
        if self.conn is not None:
            try:
                fresh = self.open_connection()
            except (DatabaseUnavailable, psycopg2.Error) as exc:
                log.warning("cannot open a fresh database connection after a burst (%s); keeping the current one",
                            first_line(exc))
            else:
                old, self.conn = self.conn, fresh
                with contextlib.suppress(psycopg2.Error):
                    old.close()
        if self.second is not None:
            self.close_second()  # gives back the heap too
        else:
            after_burst()

    def close_second(self) -> None:
        """Close the second connection, and give back what its burst left behind (`after_burst`)."""
        if self.second is not None:
            with contextlib.suppress(psycopg2.Error):
                self.second.close()
            self.second = None
            after_burst()

    def set_statement_timeout(self, conn: psycopg2.extensions.connection) -> None:
        timeout_ms = max(1, int(statement_timeout(self.settings.heartbeat_timeout) * 1000))
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (timeout_ms,))

    def _database_lost(self, exc: Exception) -> None:
        message = first_line(exc)
        if self.conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self.conn.close()
        self.conn = None
        self.close_second()
        self.telemetry.COMMIT_ERRORS.labels(kind="connection").inc()
        self._schedule_retry(message)

    def _schedule_retry(self, reason: str) -> None:
        log.warning("database unavailable (%s); retrying in %.2fs", reason, self.retry_delay)
        self.retry_at = time.monotonic() + self.retry_delay
        self.retry_delay = min(RETRY_MAX, self.retry_delay * 2)
        self.telemetry.DB_UP.set(0)

    # -- reporting ------------------------------------------------------------------
    def _observe(self, changes: list[StatusChange], result: BatchResult, seconds: float, now: float) -> None:
        self.committed += len(changes)
        m = self.telemetry
        m.BATCH_SIZE.observe(len(changes))
        m.COMMIT_SECONDS.observe(seconds)
        # By change: recorded, or not (known already, older than the row); the writer's inferred rows
        # apart. Was `submitted - transitions`, negative when an inferred row came with its change: a
        # ValueError from prometheus_client that crashed the writer (41 times in an hour of the round-8 soak).
        m.COMMITTED.labels(outcome="transition").inc(result.recorded)
        m.COMMITTED.labels(outcome="no_change").inc(max(0, result.submitted - result.recorded))
        if result.inferred:
            m.COMMITTED.labels(outcome="inferred").inc(result.inferred)
        if m.enabled:  # one histogram increment per bucket and source, not per change (metrics.observe_many)
            m.observe_latencies(changes, now)

    def _report(self) -> None:
        self.telemetry.QUEUE_DEPTH.set(len(self.pending) + len(self.held))
        self.telemetry.SPOOL_BYTES.set(self.spool.size_bytes)


def after_burst() -> None:
    """A full collection, then freed heap back to the kernel (`release_free_memory`).

    Measured (1-hour soak, bench/results/2026-12-01-r9-soak-1h): the writer's private memory stepped
    from 8.7 to 12.8 MB at the PostgreSQL restart and stayed there. The replayed backlog was bigger
    than one slice, so it went through the two commit threads, and glibc gives each thread its own
    malloc arena whose freed pages stay resident; `malloc_trim(0)` trims every arena. Called when a
    burst is over (an outage replayed, the second connection closed after 10 s idle): a few ms, rarely."""
    gc.collect()
    release_free_memory()


def slices_of(changes: list[StatusChange], size: int) -> Iterator[list[StatusChange]]:
    """`changes` in order, `size` at a time (a live backlog at batch_size, a replay at REPLAY_SLICE)."""
    for start in range(0, len(changes), size):
        yield changes[start : start + size]


def streamers_shared(first: Sequence[StatusChange], second: Sequence[StatusChange]) -> bool:
    """Whether two slices may touch one streamer row (a change keyed by its channel alone,
    streamer id 0, may be any row: counted as shared)."""
    ids = {change.streamer_id for change in first}
    return 0 in ids or any(change.streamer_id in ids or not change.streamer_id for change in second)
