"""The status mirror role: the application's own table follows what our writer committed.

Forked only when `status_mirror` is set. It never sees a change before it is committed and
never touches the writer: it LISTENs on `kick_monitor_status` (one notification per committed
transition: low latency) and catches up every `CATCH_UP_EVERY` from `kick_monitor.streamers`
(notifications missed while its connection was down, title updates, everything at start).

One tree mirrors at a time (a session advisory lock); with per-shard trees the others stand by
and take over, mirroring everything once, when the active one's session ends.

Latest status per streamer wins: what it applies is the streamer's *current* row, read just
before the statement runs, so a retry can only write the newest value; a state already
mirrored is not applied again. Each application is its own transaction under a short
`lock_timeout`/`statement_timeout` (`kick_monitor.status_mirror`); a failure (the application's
lock, constraint, privilege) is counted, reported and retried for that streamer with back-off,
while the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from kick_monitor.database import DatabaseUnavailable, connect, take_notifications
from kick_monitor.migrations import STATUS_CHANNEL
from kick_monitor.role import Role, RoleContext
from kick_monitor.status_mirror import (
    MirrorError,
    MirrorRow,
    apply_row,
    changed_since,
    check_statement,
    failure_kind,
    fetch_rows,
    first_line,
    set_timeouts,
)

log = logging.getLogger("kick_monitor.mirror")

CATCH_UP_EVERY = 1.0  # seconds between catch-up reads of kick_monitor.streamers
CATCH_UP_OVERLAP = timedelta(seconds=35)  # longer than the writer's longest statement (30 s)
ROUND_SIZE = 500  # streamers read and applied per round (the heartbeat beats between rounds)
COLD_PER_ROUND = 25  # catch-up rows per round (~20 ms): a big backlog never delays a fresh notification long
MIRROR_LOCK_KEY = 0x4B4D4D52  # advisory lock "KMMR": one active mirror per deployment (per-shard trees)
STANDBY_RETRY = 2.0  # seconds between attempts of a standby mirror to take over
RETRY_MIN, RETRY_MAX = 0.5, 30.0


class Backoff:
    """Doubling delays between `low` and `high`; reset after a success."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.delay = low

    def next_delay(self) -> float:
        delay, self.delay = self.delay, min(self.high, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.low


class StatusMirror(Role):
    """Runs in the forked mirror process; see the module docstring."""

    kind = "mirror"

    def __init__(self, ctx: RoleContext) -> None:
        super().__init__(ctx)
        assert ctx.settings.status_mirror is not None, "forked only with status_mirror set"
        self.statement = ctx.settings.status_mirror
        self.conn: psycopg2.extensions.connection | None = None
        self.listen_conn: psycopg2.extensions.connection | None = None
        self.mirrored: dict[int, tuple[Any, ...]] = {}  # streamer id -> the state last applied
        self.hot: dict[int, None] = {}  # notified: applied first, in order
        self.cold: dict[int, None] = {}  # found by catch-up
        self.failing: dict[int, tuple[float, Backoff, str]] = {}  # id -> (retry at, back-off, kind)
        self.watermark: datetime | None = None  # database time of the last catch-up
        self.next_catch_up = 0.0
        self.retry_database_at = 0.0
        self.database_backoff = Backoff(RETRY_MIN, RETRY_MAX)
        self.started_wall = time.time()
        self.checked = False
        self.standby = False  # another tree holds the mirror lock

    # -- the loop ---------------------------------------------------------------------
    def step(self) -> None:
        now = time.monotonic()
        if self.conn is None and now >= self.retry_database_at:
            self.open_database(now)
        timeout = 0.0 if self.hot or self.cold else self.idle_timeout(now)
        readable, _ = self.wait([] if self.listen_conn is None else [self.listen_conn], [], timeout)
        if self.listen_conn is not None and self.listen_conn in readable:
            self.read_notifications()
        if self.conn is None:
            return
        now = time.monotonic()
        if now >= self.next_catch_up:
            self.catch_up(now)
        self.apply_round(now)
        self.telemetry.MIRROR_PENDING.set(len(self.hot) + len(self.cold) + len(self.failing))

    def idle_timeout(self, now: float) -> float:
        due = [self.next_catch_up, *(at for at, _, _ in self.failing.values())]
        if self.conn is None:
            due.append(self.retry_database_at)
        return max(0.0, min(0.5, min(due) - now))

    def finish(self) -> int:
        self.close_database()
        return 0

    # -- what to mirror -----------------------------------------------------------------
    def read_notifications(self) -> None:
        assert self.listen_conn is not None
        try:
            received = take_notifications(self.listen_conn)
        except psycopg2.Error as exc:
            self.database_lost(exc)
            return
        for notify in received:
            streamer_id = _streamer_id(notify.payload)
            if streamer_id is not None:
                self.hot[streamer_id] = None

    def catch_up(self, now: float) -> None:
        """Everything updated since the last catch-up (minus an overlap) that is not mirrored as it is."""
        assert self.conn is not None
        self.next_catch_up = now + CATCH_UP_EVERY
        since = None if self.watermark is None else self.watermark - CATCH_UP_OVERLAP
        try:
            rows, self.watermark = changed_since(self.conn, since)
        except psycopg2.Error as exc:
            self.database_lost(exc)
            return
        for row in rows:
            if self.mirrored.get(row.streamer_id) != row.state and row.streamer_id not in self.hot:
                self.cold[row.streamer_id] = None

    def due_ids(self, now: float) -> list[int]:
        """Streamers to apply now: notified ones first (up to ROUND_SIZE), a few of the catch-up backlog,
        then the retries that are due."""
        chosen: list[int] = []
        for queue, limit in ((self.hot, ROUND_SIZE), (self.cold, COLD_PER_ROUND)):
            taken = 0
            for streamer_id in list(queue):
                if taken >= limit:
                    break
                failing = self.failing.get(streamer_id)
                if failing is not None and failing[0] > now:
                    continue  # in back-off: tried again when due, with whatever is current then
                del queue[streamer_id]
                chosen.append(streamer_id)
                taken += 1
        for streamer_id, (at, _, _) in list(self.failing.items()):
            if len(chosen) >= ROUND_SIZE:
                break
            if at <= now and streamer_id not in chosen:
                self.hot.pop(streamer_id, None)
                self.cold.pop(streamer_id, None)
                chosen.append(streamer_id)
        return chosen

    # -- applying ------------------------------------------------------------------------
    def apply_round(self, now: float) -> None:
        ids = self.due_ids(now)
        if not ids:
            return
        assert self.conn is not None
        started = time.perf_counter()
        try:
            rows = fetch_rows(self.conn, ids)
        except psycopg2.Error as exc:
            self.hot.update(dict.fromkeys(ids))
            self.database_lost(exc)
            return
        found = {row.streamer_id for row in rows}
        for streamer_id in ids:
            if streamer_id not in found:  # removed, or unknown: nothing to mirror
                self.failing.pop(streamer_id, None)
                self.mirrored.pop(streamer_id, None)
        new_failures: list[tuple[MirrorRow, str, str]] = []
        recovered = 0
        for index, row in enumerate(rows):
            self.beat()  # alive however many applications fail on the application's locks
            if self.stopping:
                self.hot.update(dict.fromkeys(r.streamer_id for r in rows[index:]))
                break
            if self.mirrored.get(row.streamer_id) == row.state and row.streamer_id not in self.failing:
                continue
            try:
                apply_row(self.conn, self.statement, row)
            except psycopg2.Error as exc:
                kind = failure_kind(exc, self.conn)
                self.telemetry.MIRROR_FAILURES.labels(kind=kind).inc()
                if kind == "connection":
                    self.hot.update(dict.fromkeys(r.streamer_id for r in rows[index:]))
                    self.database_lost(exc)
                    return
                if self.record_failure(row, kind, time.monotonic()):
                    new_failures.append((row, kind, first_line(exc)))
                continue
            mirrored_at = time.time()
            self.mirrored[row.streamer_id] = row.state
            self.telemetry.MIRROR_APPLIED.inc()
            committed = row.updated_at.timestamp()
            if committed >= self.started_wall:  # not the backlog mirrored at start
                self.telemetry.MIRROR_LAG.observe(max(0.0, mirrored_at - committed))
            if self.failing.pop(row.streamer_id, None) is not None:
                recovered += 1
        self.telemetry.MIRROR_BATCH_SECONDS.observe(time.perf_counter() - started)
        self.report(new_failures, recovered)

    def record_failure(self, row: MirrorRow, kind: str, now: float) -> bool:
        """Schedule this streamer's retry; True if it was not failing this way already (to report)."""
        previous = self.failing.get(row.streamer_id)
        backoff = previous[1] if previous is not None else Backoff(RETRY_MIN, RETRY_MAX)
        self.failing[row.streamer_id] = (now + backoff.next_delay(), backoff, kind)
        return previous is None or previous[2] != kind

    def report(self, failures: list[tuple[MirrorRow, str, str]], recovered: int) -> None:
        if failures:
            row, kind, message = failures[0]
            more = f" (and {len(failures) - 1} more streamers)" if len(failures) > 1 else ""
            # one template per kind: the log's rate limit (per template) still lets each kind through
            log.warning(
                f"status mirror failed ({kind}) for %s: %s%s; our own status is committed, retrying with back-off",
                row.slug, message, more, extra={"streamer": row.slug, "kind": kind},
            )
        if recovered:
            log.info("status mirror applied again for %d streamers that had failed", recovered)

    # -- database ------------------------------------------------------------------------
    def open_database(self, now: float) -> None:
        try:
            conn = connect(self.ctx.database_url, application_name=f"kick-monitor mirror {self.ctx.tree}")
            set_timeouts(conn)
            if not take_lock(conn):
                conn.close()
                if not self.standby:
                    log.info("status mirror: another process tree mirrors; standing by to take over")
                self.standby = True
                self.retry_database_at = now + STANDBY_RETRY
                return
            listen = connect(self.ctx.database_url, application_name="kick-monitor mirror listen", autocommit=True)
            with listen.cursor() as cur:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(STATUS_CHANNEL)))
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            self.retry_database_at = now + self.database_backoff.next_delay()
            log.warning("status mirror: database unavailable (%s); retrying", first_line(exc))
            return
        self.conn, self.listen_conn = conn, listen
        self.database_backoff.reset()
        if self.standby:
            log.info("status mirror: taking over")
        self.standby = False
        # Another tree may have mirrored while we were away: forget what we applied, mirror everything once.
        self.mirrored.clear()
        self.watermark = None
        self.next_catch_up = now
        if not self.checked:
            try:
                check_statement(conn, self.statement)
                self.checked = True
            except MirrorError as exc:
                log.error("%s", exc)  # applications report each failure from here on

    def database_lost(self, exc: BaseException) -> None:
        log.warning("status mirror: lost the database (%s); reconnecting", first_line(exc))
        self.close_database()
        self.retry_database_at = time.monotonic() + self.database_backoff.next_delay()

    def close_database(self) -> None:
        for conn in (self.conn, self.listen_conn):
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
        self.conn = self.listen_conn = None


def take_lock(conn: psycopg2.extensions.connection) -> bool:
    """The deployment's mirror lock, held by this session until it ends."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (MIRROR_LOCK_KEY,))
        row = cur.fetchone()
    conn.commit()
    return bool(row and row[0])


def _streamer_id(payload: str) -> int | None:
    """The streamer id of a kick_monitor_status notification (JSON), None if unreadable."""
    import orjson

    try:
        value = orjson.loads(payload).get("streamer_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) else None

