"""The notifier role: go-live (and offline) announcements to Discord, Slack and plain webhooks.

Forked when `notify` is on, or `auto` with at least one target at start. It follows what the
writer committed (kick_monitor/notify_outbox.py: the broadcasts table with a cursor of its
own), never the writer itself: `LISTEN kick_monitor_status` wakes it within milliseconds of a
commit (the payload names the broadcast), a sweep every `SWEEP_EVERY` catches whatever a lost
notification or a reconnect missed, `LISTEN kick_monitor_notify_targets` re-reads the targets.

One notifier dispatches per deployment: it holds a session advisory lock while it works;
the others (per-shard trees, other hosts) stand by and take over when its session ends — also
when the holder is paused: its session has the duties' idle limit (`take_lock`). On
taking over it first turns rows left `sending` into `uncertain` (their sender died between
marking and recording: maybe posted, so never posted again).

Sending happens on a few threads (kick_monitor/notify_sender.py), at most one request in
flight per target; this thread alone touches the database: it marks a delivery `sending` in
its own commit before handing it to a thread, and records the outcome when it comes back.
A result it could not record (database gone) is kept and written when the database returns.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from kick_monitor.config import ConfigError
from kick_monitor.database import DatabaseUnavailable, connect, take_notifications
from kick_monitor.duty import limit_idle
from kick_monitor.logsetup import register_secret
from kick_monitor.migrations import NOTIFY_TARGETS_CHANNEL, STATUS_CHANNEL
from kick_monitor.notify_format import render_body
from kick_monitor.notify_outbox import (
    CURSOR_LAG,
    NO_RANGE,
    NOTIFIER_LOCK_KEY,
    Policy,
    discover,
    load_cursor,
    next_due_in,
    outbox_depth,
    record,
    record_and_claim,
    recover,
    save_cursor,
)
from kick_monitor.notify_sender import Job, Outcome, SenderPool
from kick_monitor.notify_targets import Target, load_targets, url_secrets
from kick_monitor.role import Role, RoleContext

log = logging.getLogger("kick_monitor.notifier")

LOCK_IDLE_LIMIT_MS: int | None = None  # the holder's idle limit; None: the duties' (kick_monitor.duty)
SWEEP_EVERY = 1.0  # seconds: new broadcasts above the cursor, due retries, the outbox gauge
ENDS_EVERY = 5.0  # seconds: every open broadcast checked for its end
STANDBY_RETRY = 2.0
RETRY_MIN, RETRY_MAX = 0.5, 30.0
STOP_WAIT = 5.0  # seconds a warm stop waits for requests in flight
STATEMENT_TIMEOUT_MS = 10_000  # well under the heartbeat timeout: a stuck query costs a reconnect, not a kill
GATHER = 0.05  # seconds: notifications arriving this close together are handled in one round


class Notifier(Role):
    """Runs in the forked notifier process; see the module docstring."""

    kind = "notifier"

    def __init__(self, ctx: RoleContext) -> None:
        super().__init__(ctx)
        self.conn: psycopg2.extensions.connection | None = None
        self.listen_conn: psycopg2.extensions.connection | None = None
        self.pool = SenderPool(ctx.settings.notify_concurrency, lambda: self.settings.notify_timeout)
        self.targets: dict[int, Target] = {}
        self.urls: dict[int, str] = {}
        self.unreadable: set[int] = set()
        self.paused: dict[int, float] = {}  # target id -> monotonic time its bucket allows again
        self.unrecorded: list[tuple[Any, int, Outcome]] = []  # (token, target, outcome): not recorded yet
        self.hot: set[int] = set()  # broadcast ids named by notifications
        self.slugs: set[str] | None = None  # streamers some target announces; None: every streamer
        self.targets_changed = True
        self.cursor = 0
        self.seen: list[tuple[float, int]] = []  # (monotonic, max id seen): the cursor lags CURSOR_LAG
        self.max_seen = 0
        self.next_sweep = 0.0
        self.next_ends = 0.0
        self.next_round = 0.0  # notified broadcasts wait at most GATHER to be handled together
        self.next_due: float | None = None
        self.retry_database_at = 0.0
        self.delay = RETRY_MIN
        self.standby = False
        self.wanted = False  # something to dispatch: new pending deliveries, or lanes came free

    @property
    def policy(self) -> Policy:
        s = self.settings
        return Policy(s.notify_max_age, s.notify_late, s.notify_regrace)

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> None:
        now = time.monotonic()
        if self.conn is None and now >= self.retry_database_at:
            self.open_database(now)
        readable, _ = self.wait(self.waitables(), [], self.timeout(now))
        if self.listen_conn is not None and self.listen_conn in readable:
            self.read_notifications()
        finished = self.pool.collect()
        if finished:
            self.unrecorded.extend((job.token, job.target_id, outcome) for job, outcome in finished)
            self.wanted = True  # lanes are free again
        if self.conn is None:
            return
        try:
            self.work(time.monotonic())
        except psycopg2.Error as exc:
            self.database_lost(exc)

    def waitables(self) -> list[Any]:
        found: list[Any] = [self.pool.wake_read]
        if self.listen_conn is not None:
            found.append(self.listen_conn)
        return found

    def timeout(self, now: float) -> float:
        due = [self.next_sweep, self.retry_database_at if self.conn is None else now + SWEEP_EVERY]
        if self.hot:
            due.append(self.next_round)
        if self.next_due is not None and self.next_due > now:
            due.append(self.next_due)  # one already due waits for its target's lane, pause or the sweep
        due += [at for target_id, at in self.paused.items() if target_id not in self.pool.busy and at > now]
        return max(0.0, min(0.5, min(due) - now))

    def work(self, now: float) -> None:
        assert self.conn is not None
        if self.targets_changed:
            self.reload_targets()
        sweep = now >= self.next_sweep
        ends = now >= self.next_ends
        if (self.hot and now >= self.next_round) or sweep:
            ids, self.hot = self.hot, set()
            self.next_round = now + GATHER
            # the range above the cursor (commits of lower ids that came late) only in the sweep
            found = discover(self.conn, list(self.targets.values()), self.policy,
                             low=self.cursor if sweep else NO_RANGE, ids=ids, all_ends=ends,
                             slugs=None if self.slugs is None else sorted(self.slugs))
            self.advance_cursor(now, found.max_id)
            for (kind, state), count in (found.created or {}).items():
                if state == "skipped":
                    self.telemetry.NOTIFY_DELIVERIES.labels(kind=kind, outcome="skipped").inc(count)
                else:
                    self.wanted = True
            if ends:
                self.next_ends = now + ENDS_EVERY
            if found.more:  # a backlog: the next round at once (the heartbeat beats in between)
                self.next_sweep = self.next_ends = now
                sweep = False
        for target_id, until in list(self.paused.items()):
            if until <= now:  # its bucket allows again
                del self.paused[target_id]
                self.wanted = True
        if self.wanted or self.unrecorded or sweep or (self.next_due is not None and now >= self.next_due):
            self.wanted = False
            self.dispatch(now)
        if sweep:
            self.next_sweep = now + SWEEP_EVERY
            self.measure()

    def finish(self) -> int:
        self.pool.wait_idle(STOP_WAIT)
        self.unrecorded.extend((job.token, job.target_id, outcome) for job, outcome in self.pool.collect())
        if self.conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self.write_outcomes()
        if self.pool.busy:
            log.warning("stopping with %d webhook requests unanswered: they will show as uncertain",
                        len(self.pool.busy))
        self.pool.close()
        self.close_database()
        return 0

    # -- notifications and targets ------------------------------------------------------------
    def read_notifications(self) -> None:
        assert self.listen_conn is not None
        try:
            received = take_notifications(self.listen_conn)
        except psycopg2.Error as exc:
            self.database_lost(exc)
            return
        for notify in received:
            if notify.channel == NOTIFY_TARGETS_CHANNEL:
                self.targets_changed = True
                continue
            broadcast_id, slug = _broadcast(notify.payload)
            if broadcast_id is not None and (self.slugs is None or slug in self.slugs):
                self.hot.add(broadcast_id)

    def reload_targets(self) -> None:
        assert self.conn is not None
        self.targets = {t.id: t for t in load_targets(self.conn)}
        self.targets_changed = False
        self.urls.clear()
        for target in self.targets.values():
            if not target.enabled:
                continue
            try:
                url = target.resolve_url()
            except ConfigError as exc:
                if target.id not in self.unreadable:
                    log.error("notify target %d: %s; its deliveries wait", target.id, exc)
                self.unreadable.add(target.id)
                continue
            self.unreadable.discard(target.id)
            for secret in url_secrets(url):
                register_secret(secret)
            self.urls[target.id] = url
        wanting = [t for t in self.targets.values() if t.enabled]
        self.slugs = None if any(t.streamers is None for t in wanting) else {
            slug for t in wanting for slug in t.streamers or ()}
        enabled = len(wanting)
        self.telemetry.NOTIFY_TARGETS.labels(state="enabled").set(enabled)
        self.telemetry.NOTIFY_TARGETS.labels(state="disabled").set(len(self.targets) - enabled)

    def reconfigure(self, changed: set[str]) -> None:
        self.next_sweep = 0.0  # apply new ages and graces at once

    # -- sending ------------------------------------------------------------------------------
    def idle_targets(self, now: float) -> list[int]:
        return [
            target_id for target_id in self.urls
            if target_id not in self.pool.busy and self.paused.get(target_id, 0.0) <= now
        ]

    def dispatch(self, now: float) -> None:
        """Record what came back and hand each idle target its next due delivery, in one commit that
        lands before any of those requests starts (`sending` is durable first)."""
        assert self.conn is not None
        results = self.unrecorded
        for _, target_id, outcome in results:
            self.pause(target_id, outcome, now)  # before choosing who is idle
            if outcome.verdict == "gone":
                self.urls.pop(target_id, None)
        claimed_now, stale = record_and_claim(
            self.conn, [(token[0], target_id, outcome) for token, target_id, outcome in results],
            self.idle_targets(now), self.policy,
        )
        self.unrecorded = []
        for token, target_id, outcome in results:
            self.account(token, target_id, outcome)
        for target_id in stale:
            self.telemetry.NOTIFY_DELIVERIES.labels(kind=self.targets[target_id].kind, outcome="skipped").inc()
        for claimed in claimed_now:
            target = self.targets[claimed.target_id]
            template = target.template if claimed.event == "live" else target.offline_template
            body = render_body(target.kind, claimed.announcement, template)
            self.pool.submit(Job(claimed.target_id, self.urls[claimed.target_id], body, claimed.attempts,
                                 (claimed.id, claimed.event, claimed.origin_at)))

    def write_outcomes(self) -> None:
        """Record what came back (no new claims); on a database error they stay for the next attempt."""
        if not self.unrecorded:
            return
        assert self.conn is not None
        record(self.conn, [(token[0], target_id, outcome) for token, target_id, outcome in self.unrecorded])
        now = time.monotonic()
        for token, target_id, outcome in self.unrecorded:
            self.pause(target_id, outcome, now)
            self.account(token, target_id, outcome)
        self.unrecorded = []

    def pause(self, target_id: int, outcome: Outcome, now: float) -> None:
        """A 429's Retry-After, or an empty Discord bucket: that webhook waits, the others do not."""
        if outcome.retry_after > 0 and (outcome.rate_limited or outcome.verdict == "sent"):
            self.paused[target_id] = now + outcome.retry_after

    def account(self, token: tuple[int, str, datetime], target_id: int, outcome: Outcome) -> None:
        """Metrics and log lines for one recorded outcome."""
        _delivery_id, event, origin_at = token
        target = self.targets.get(target_id)
        kind = target.kind if target is not None else "unknown"
        label = "rate_limited" if outcome.rate_limited else {"retry": "retried", "gone": "failed"}.get(
            outcome.verdict, outcome.verdict)
        self.telemetry.NOTIFY_DELIVERIES.labels(kind=kind, outcome=label).inc()
        if outcome.verdict == "sent":
            latency = max(0.0, outcome.sent_at - origin_at.astimezone(UTC).timestamp())
            self.telemetry.NOTIFY_LATENCY.labels(kind=kind, event=event).observe(latency)
        elif outcome.verdict == "gone":
            log.error("notify target %d disabled: %s", target_id, outcome.detail)
            self.targets_changed = True
        elif outcome.verdict in ("failed", "uncertain"):
            log.warning("notify target %d: %s delivery %s: %s", target_id, event, outcome.verdict, outcome.detail)

    def measure(self) -> None:
        """The outbox gauges, and when the next deferred delivery (retry, offline after its grace) is due."""
        assert self.conn is not None
        next_in = next_due_in(self.conn)
        self.next_due = None if next_in is None else time.monotonic() + max(0.0, next_in)
        due, waiting, _ = outbox_depth(self.conn)
        self.telemetry.NOTIFY_OUTBOX.labels(state="due").set(due)
        self.telemetry.NOTIFY_OUTBOX.labels(state="waiting").set(waiting)
        self.telemetry.NOTIFY_OUTBOX.labels(state="sending").set(self.pool.in_flight())

    # -- the cursor --------------------------------------------------------------------------
    def advance_cursor(self, now: float, max_id: int) -> None:
        """Move the durable cursor to the highest id seen CURSOR_LAG ago (lower ids may commit late)."""
        if max_id > self.max_seen:
            self.max_seen = max_id
            self.seen.append((now, max_id))
        settled = [seen for at, seen in self.seen if at <= now - CURSOR_LAG]
        if settled and settled[-1] > self.cursor:
            assert self.conn is not None
            save_cursor(self.conn, settled[-1])
            self.cursor = settled[-1]
            self.seen = [(at, seen) for at, seen in self.seen if seen > self.cursor]

    # -- database ----------------------------------------------------------------------------
    def open_database(self, now: float) -> None:
        try:
            conn = connect(self.ctx.database_url, application_name=f"kick-monitor notifier {self.ctx.tree}",
                           statement_timeout_ms=STATEMENT_TIMEOUT_MS)
            if not take_lock(conn):
                conn.close()
                if not self.standby:
                    log.info("notifier: another process tree dispatches; standing by to take over")
                self.standby = True
                self.retry_database_at = now + STANDBY_RETRY
                return
            listen = connect(self.ctx.database_url, application_name="kick-monitor notifier listen", autocommit=True)
            with listen.cursor() as cur:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(STATUS_CHANNEL)))
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_TARGETS_CHANNEL)))
            self.conn, self.listen_conn = conn, listen
            self.write_outcomes()  # what this process learnt while the database was away: the truth
            uncertain = recover(conn)
            self.cursor = load_cursor(conn)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            self.close_database()
            self.retry_database_at = now + self.next_delay()
            log.warning("notifier: database unavailable (%s); retrying", _first_line(exc))
            return
        for _, kind in uncertain:
            self.telemetry.NOTIFY_DELIVERIES.labels(kind=kind, outcome="uncertain").inc()
        if uncertain:
            log.warning("notifier: %d deliveries were being sent when the previous notifier stopped: marked"
                        " uncertain (maybe delivered; never sent twice)", len(uncertain))
        if self.standby:
            log.info("notifier: taking over")
        self.standby = False
        self.delay = RETRY_MIN
        self.targets_changed = True
        self.seen, self.max_seen = [], self.cursor
        self.next_sweep = self.next_ends = now
        self.telemetry.NOTIFY_ACTIVE.set(1)

    def next_delay(self) -> float:
        delay, self.delay = self.delay, min(RETRY_MAX, self.delay * 2)
        return delay

    def database_lost(self, exc: BaseException) -> None:
        log.warning("notifier: lost the database (%s); reconnecting", _first_line(exc))
        self.close_database()
        self.retry_database_at = time.monotonic() + self.next_delay()

    def close_database(self) -> None:
        for conn in (self.conn, self.listen_conn):
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
        self.conn = self.listen_conn = None
        self.telemetry.NOTIFY_ACTIVE.set(0)


def take_lock(conn: psycopg2.extensions.connection) -> bool:
    """The deployment's dispatch lock, held by this session until it ends. The holder's session gets
    the duties' idle limits: a paused (SIGSTOPped, frozen) holder falls silent — the sweep talks every
    SWEEP_EVERY — so PostgreSQL ends its session, the lock goes free and a standby takes over; the woken
    holder's next statement fails, so it sends nothing more (what it marked `sending` turns `uncertain`)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (NOTIFIER_LOCK_KEY,))
        row = cur.fetchone()
    taken = bool(row and row[0])
    if taken:
        limit_idle(conn, LOCK_IDLE_LIMIT_MS)
    conn.commit()
    return taken


def _broadcast(payload: str) -> tuple[int | None, str | None]:
    """The broadcast id and slug of a kick_monitor_status notification (JSON); None if absent or unreadable."""
    import orjson

    try:
        found = orjson.loads(payload)
        value, slug = found.get("broadcast_id"), found.get("username")
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    return (value if isinstance(value, int) else None), (slug if isinstance(slug, str) else None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
