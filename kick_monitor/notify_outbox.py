"""The notification outbox: delivery rows derived from committed broadcasts, and their states.

The notifier follows what the writer already commits — `kick_monitor.broadcasts` and its
`pg_notify('kick_monitor_status', …)` per history row — instead of adding an outbox insert to
the writer's statement: the writer pays nothing (docs/performance.md, "Notifications").

Following the broadcasts table, with a cursor of its own:
- **starts**: broadcasts whose id is above `notify_cursor` (or named by a notification) and
  not yet in `notify_broadcasts`. Ids come from a sequence, so a lower id can commit after a
  higher one; the cursor therefore only moves to the highest id seen `CURSOR_LAG` seconds
  ago (longer than the writer's longest statement), and the range above it is re-read each
  sweep (a primary-key range: a few rows);
- **ends**: rows of `notify_broadcasts` still open whose broadcast has an `ended_at` (at most
  one open row per live streamer).
Each start or end is handled once — its `notify_broadcasts` row and its delivery rows in one
transaction, deliveries `ON CONFLICT DO NOTHING` on (broadcast, target, event) — so a
re-read, a restart or a duplicate notification can never create a second delivery.

Decisions made when a start is handled (`Policy`):
- **late**: already ended, or started more than `max_age` ago → not "live now": `skip`
  (a `skipped` row saying why) or `was_live` (one message saying it was live);
- **flap guard**: the streamer's previous broadcast ended at most `regrace` before this one
  started (and its end was seen, not inferred) → one session: this start is skipped, and
  the previous broadcast's offline announcement (which waits `regrace`) is skipped too;
  a target that had already announced that offline gets this start announced.

State machine of a delivery: pending → sending (committed before the HTTP call) → sent |
failed | uncertain, or back to pending with a later `due_at` (429, 5xx); skipped at creation
or by the flap guard. A row found `sending` when a notifier takes over (its predecessor died
mid-send) becomes `uncertain`: never sent again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg2.extensions
from psycopg2.extras import execute_values

from .notify_format import Announcement
from .notify_sender import Outcome
from .notify_targets import Target

NOTIFIER_LOCK_KEY = 0x4B4D4E54  # advisory lock "KMNT": held by the one dispatching notifier of a deployment
CURSOR_LAG = 35.0  # seconds; longer than the writer's longest statement (30 s statement_timeout)
ROUND_STARTS = 500  # new broadcasts handled per round: a backlog after a long outage never makes one long step
ROUND_ENDS = 1000
NO_RANGE = 1 << 62  # `low` for a round driven by notifications alone: only the ids named, no range scan


@dataclass(frozen=True, slots=True)
class Policy:
    max_age: float  # seconds
    late: str  # "skip" or "was_live"
    regrace: float  # seconds


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery marked `sending`, with what it takes to render it."""

    id: int
    target_id: int
    event: str
    attempts: int
    origin_at: datetime
    announcement: Announcement


# -- recovery and the cursor -------------------------------------------------------------------
def recover(conn: psycopg2.extensions.connection) -> list[tuple[int, str]]:
    """Rows left `sending` by a notifier that died mid-send become `uncertain`; returns (id, kind)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """UPDATE kick_monitor.notify_deliveries d
               SET state = 'uncertain', updated_at = now(),
                   last_error = 'the notifier stopped while sending: maybe delivered, never sent again'
               FROM kick_monitor.notify_targets t
               WHERE d.state = 'sending' AND t.id = d.target_id
               RETURNING d.id, t.kind"""
        )
        return [(row[0], row[1]) for row in cur.fetchall()]


def load_cursor(conn: psycopg2.extensions.connection) -> int:
    """Where the scan of new broadcasts starts; at the very first start, after every broadcast so far."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO kick_monitor.notify_cursor (broadcast_id)
               SELECT COALESCE(max(id), 0) FROM kick_monitor.broadcasts
               ON CONFLICT (one) DO NOTHING"""
        )
        cur.execute("SELECT broadcast_id FROM kick_monitor.notify_cursor")
        row = cur.fetchone()
    return int(row[0]) if row else 0


def save_cursor(conn: psycopg2.extensions.connection, broadcast_id: int) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE kick_monitor.notify_cursor SET broadcast_id = GREATEST(broadcast_id, %s)", (broadcast_id,)
        )


# -- starts and ends ---------------------------------------------------------------------------
NEW_BROADCASTS = """
SELECT b.id, b.streamer_id, s.username, b.started_at, b.ended_at, b.updated_at, now(),
       p.id, p.ended_at, p.end_inferred, COALESCE(pn.session_started_at, p.started_at)
FROM kick_monitor.broadcasts b
LEFT JOIN kick_monitor.streamers s ON s.id = b.streamer_id
LEFT JOIN LATERAL (
    SELECT x.id, x.started_at, x.ended_at, x.end_inferred FROM kick_monitor.broadcasts x
    WHERE x.streamer_id = b.streamer_id AND x.started_at <= b.started_at AND x.id <> b.id
    ORDER BY x.started_at DESC LIMIT 1
) p ON true
LEFT JOIN kick_monitor.notify_broadcasts pn ON pn.broadcast_id = p.id
WHERE (b.id > %(low)s OR b.id = ANY(%(ids)s))
  AND (%(every)s OR s.username = ANY(%(slugs)s))  -- only streamers some target announces
  AND NOT EXISTS (SELECT 1 FROM kick_monitor.notify_broadcasts n WHERE n.broadcast_id = b.id)
ORDER BY b.id
LIMIT %(limit)s
"""

ENDED_BROADCASTS = """
SELECT n.broadcast_id, b.streamer_id, s.username, b.ended_at, b.updated_at, now(), b.end_inferred
FROM kick_monitor.notify_broadcasts n
JOIN kick_monitor.broadcasts b ON b.id = n.broadcast_id
LEFT JOIN kick_monitor.streamers s ON s.id = b.streamer_id
WHERE n.ended_at IS NULL AND b.ended_at IS NOT NULL AND (%(all)s OR n.broadcast_id = ANY(%(ids)s))
ORDER BY b.ended_at
LIMIT %(limit)s
"""


@dataclass
class Found:
    """What one discovery round did: the highest broadcast id seen, deliveries created by state."""

    max_id: int = 0
    created: dict[tuple[str, str], int] | None = None  # (kind, state) -> deliveries
    more: bool = False  # a round limit was reached: run another round at once

    def count(self, kind: str, state: str) -> None:
        if self.created is None:
            self.created = {}
        self.created[(kind, state)] = self.created.get((kind, state), 0) + 1


def discover(
    conn: psycopg2.extensions.connection,
    targets: Sequence[Target],
    policy: Policy,
    *,
    low: int,
    ids: Iterable[int] = (),
    all_ends: bool = False,
    slugs: Sequence[str] | None = None,
) -> Found:
    """Handle new starts (above `low` or in `ids`) and ends (of `ids`, or every open one), one transaction.

    `slugs`: the streamers some target announces (None: every streamer); broadcasts of others are
    not followed at all (a target added later announces what starts after it was added)."""
    wanted = sorted(set(ids))
    found = Found()
    with conn, conn.cursor() as cur:
        # ends first: a start in the same round may be the flap guard's restart of one of them
        if all_ends or wanted:
            cur.execute(ENDED_BROADCASTS, {"all": all_ends, "ids": wanted, "limit": ROUND_ENDS})
            ended = cur.fetchall()
            for row in ended:
                handle_end(cur, row, targets, policy, found)
            found.more = len(ended) >= ROUND_ENDS
        cur.execute(NEW_BROADCASTS, {"low": low, "ids": wanted, "limit": ROUND_STARTS, "every": slugs is None,
                                     "slugs": list(slugs or ())})
        started = cur.fetchall()
        for row in started:
            handle_start(cur, row, targets, policy, found)
            found.max_id = max(found.max_id, row[0])
        found.more = found.more or len(started) >= ROUND_STARTS
    return found


def handle_start(cur: Any, row: tuple[Any, ...], targets: Sequence[Target], policy: Policy, found: Found) -> None:
    bid, streamer_id, slug, started_at, ended_at, committed_at, now = row[:7]
    prev_id, prev_end, prev_inferred, prev_session = row[7:]
    continues = (
        prev_id is not None and prev_end is not None and not prev_inferred
        and (started_at - prev_end).total_seconds() <= policy.regrace
    )
    session_started_at = prev_session if continues else started_at
    cur.execute(
        """INSERT INTO kick_monitor.notify_broadcasts (broadcast_id, streamer_id, session_started_at, continues)
           VALUES (%s, %s, %s, %s) ON CONFLICT (broadcast_id) DO NOTHING""",
        (bid, streamer_id, session_started_at, prev_id if continues else None),
    )
    announced_offline: set[int] = set()
    if continues:
        # one session: the previous broadcast's offline, still waiting its grace, is not sent
        cur.execute(
            """UPDATE kick_monitor.notify_deliveries SET state = 'skipped', updated_at = now(),
                   last_error = %s
               WHERE broadcast_id = %s AND event = 'offline' AND state = 'pending'""",
            (f"flap guard: live again within the grace (broadcast {bid})", prev_id),
        )
        cur.execute(
            """SELECT target_id FROM kick_monitor.notify_deliveries
               WHERE broadcast_id = %s AND event = 'offline' AND state IN ('sending', 'sent', 'uncertain', 'failed')""",
            (prev_id,),
        )
        announced_offline = {r[0] for r in cur.fetchall()}
    age = (now - started_at).total_seconds()
    late = ended_at is not None or age > policy.max_age
    values = []
    for target in targets:
        if not target.wants("live", slug):
            continue
        state, error, is_late = "pending", None, False
        if continues and target.id not in announced_offline:
            state, error = "skipped", f"flap guard: continues broadcast {prev_id} (ended {_ago(started_at, prev_end)})"
        elif late and policy.late == "skip":
            state, error = "skipped", _late_reason(ended_at, age)
        elif late:
            is_late = True
        values.append((bid, target.id, "live", state, is_late, now, committed_at, error))
        found.count(target.kind, state)
    _insert(cur, values)
    if ended_at is not None:  # found after it ended: its end is handled now too
        handle_end(cur, (bid, streamer_id, slug, ended_at, committed_at, now, False), targets, policy, found,
                   covered=late)


def handle_end(
    cur: Any, row: tuple[Any, ...], targets: Sequence[Target], policy: Policy, found: Found, *, covered: bool = False
) -> None:
    """The end of a handled broadcast: offline deliveries due after the grace (or skipped if late)."""
    bid, _streamer_id, slug, ended_at, committed_at, now, _inferred = row
    cur.execute(
        "UPDATE kick_monitor.notify_broadcasts SET ended_at = %s WHERE broadcast_id = %s AND ended_at IS NULL",
        (ended_at, bid),
    )
    if cur.rowcount == 0:
        return  # handled already
    age = (now - ended_at).total_seconds()
    late = covered or age > policy.max_age
    due = ended_at + timedelta(seconds=policy.regrace)
    values = []
    for target in targets:
        if not target.wants("offline", slug):
            continue
        state, error, is_late = "pending", None, False
        if late and (covered or policy.late == "skip"):
            state = "skipped"
            error = "found after it ended: the late live message covers it" if covered and policy.late == "was_live" \
                else _late_reason(ended_at, age, offline=True)
        elif late:
            is_late = True
        values.append((bid, target.id, "offline", state, is_late, max(due, now) if state == "pending" else now,
                       max(due, committed_at), error))
        found.count(target.kind, state)
    _insert(cur, values)


def _insert(cur: Any, values: list[tuple[Any, ...]]) -> None:
    if values:
        execute_values(
            cur,
            """INSERT INTO kick_monitor.notify_deliveries
                   (broadcast_id, target_id, event, state, late, due_at, origin_at, last_error)
               VALUES %s ON CONFLICT (broadcast_id, target_id, event) DO NOTHING""",
            values,
        )


def _late_reason(ended_at: datetime | None, age: float, offline: bool = False) -> str:
    if offline:
        return f"late: found {int(age)} s after it ended (notify_max_age)"
    if ended_at is not None:
        return "late: found after the broadcast had ended (notify_late = skip)"
    return f"late: found {int(age)} s after it started (notify_max_age; notify_late = skip)"


def _ago(later: datetime, earlier: datetime) -> str:
    return f"{int((later - earlier).total_seconds())} s before"


# -- claiming and recording -------------------------------------------------------------------
# One index probe per target (notify_deliveries_next), whatever the backlog.
CLAIM = """
SELECT d.id, d.target_id, d.event, d.attempts, d.origin_at, d.late,
       b.id, COALESCE(s.username, 'streamer-' || b.streamer_id), COALESCE(b.last_title, b.start_title), b.category,
       CASE WHEN d.event = 'offline' THEN COALESCE(n.session_started_at, b.started_at) ELSE b.started_at END,
       b.ended_at, now()
FROM unnest(%s::integer[]) AS t(id)
CROSS JOIN LATERAL (
    SELECT x.* FROM kick_monitor.notify_deliveries x
    WHERE x.target_id = t.id AND x.state = 'pending' AND x.due_at <= now()
    ORDER BY x.due_at, x.id LIMIT 1
) d
JOIN kick_monitor.broadcasts b ON b.id = d.broadcast_id
LEFT JOIN kick_monitor.streamers s ON s.id = b.streamer_id
LEFT JOIN kick_monitor.notify_broadcasts n ON n.broadcast_id = b.id
"""


STALE_REASON = "late: the broadcast ended or aged past notify_max_age before it could be sent"


def claim(
    conn: psycopg2.extensions.connection, target_ids: Sequence[int], policy: Policy | None = None
) -> tuple[list[Claimed], list[int]]:
    """The next due delivery of each of these targets, marked `sending` and committed; see `claim_in`."""
    with conn, conn.cursor() as cur:
        return claim_in(cur, target_ids, policy)


def record(conn: psycopg2.extensions.connection, results: Sequence[tuple[int, int, Outcome]]) -> None:
    """Write what each post did: (delivery id, target id, outcome); one transaction."""
    if results:
        with conn, conn.cursor() as cur:
            record_in(cur, results)


def record_and_claim(
    conn: psycopg2.extensions.connection, results: Sequence[tuple[int, int, Outcome]], target_ids: Sequence[int],
    policy: Policy | None = None,
) -> tuple[list[Claimed], list[int]]:
    """Both in one commit: a target's outcome and its next delivery cost one round of commits, not two."""
    with conn, conn.cursor() as cur:
        record_in(cur, results)
        return claim_in(cur, target_ids, policy)


def claim_in(cur: Any, target_ids: Sequence[int], policy: Policy | None) -> tuple[list[Claimed], list[int]]:
    """The next due delivery of each target, marked `sending` (committed by the caller before any request);
    and one target id per delivery that went stale while it waited — a go-live whose broadcast ended or
    aged past `max_age` (long retries, a disabled target enabled again): skipped (the next one is taken
    in its place), or sent as "was live", as `policy.late` says."""
    claimed: list[Claimed] = []
    stale_targets: list[int] = []
    wanted = list(target_ids)
    for _ in range(50):  # a backlog of stale ones is skipped in the same transaction, up to a bound
        if not wanted:
            break
        cur.execute(CLAIM, (wanted,))
        stale: list[int] = []
        again: list[int] = []
        for did, target_id, event, attempts, origin_at, late, bid, slug, title, category, started_at, ended_at, \
                now in cur.fetchall():
            if event == "live" and not late and policy is not None and (
                    ended_at is not None or (now - started_at).total_seconds() > policy.max_age):
                if policy.late == "skip":
                    stale.append(did)
                    again.append(target_id)
                    continue
                late = True
            announcement = Announcement(event, slug, title, category, started_at,
                                        ended_at if event == "offline" or late else None, late, bid)
            claimed.append(Claimed(did, target_id, event, attempts + 1, origin_at, announcement))
        if stale:
            cur.execute(
                """UPDATE kick_monitor.notify_deliveries SET state = 'skipped', updated_at = now(), last_error = %s
                   WHERE id = ANY(%s) AND state = 'pending'""",
                (STALE_REASON, stale),
            )
        stale_targets += again
        wanted = again
    if claimed:
        cur.execute(
            """UPDATE kick_monitor.notify_deliveries
               SET state = 'sending', attempts = attempts + 1, updated_at = now(), late = late OR id = ANY(%s)
               WHERE id = ANY(%s) AND state = 'pending'""",
            ([c.id for c in claimed if c.announcement.late], [c.id for c in claimed]),
        )
    return claimed, stale_targets


def record_in(cur: Any, results: Sequence[tuple[int, int, Outcome]]) -> None:
    for delivery_id, target_id, outcome in results:
        if outcome.verdict == "retry":
            cur.execute(
                """UPDATE kick_monitor.notify_deliveries
                   SET state = 'pending', due_at = now() + make_interval(secs => %s), last_error = %s,
                       updated_at = now()
                   WHERE id = %s AND state IN ('sending', 'uncertain')""",
                (outcome.retry_after, outcome.detail, delivery_id),
            )
            continue
        state = {"sent": "sent", "gone": "failed", "failed": "failed"}.get(outcome.verdict, "uncertain")
        cur.execute(
            """UPDATE kick_monitor.notify_deliveries
               SET state = %s, sent_at = CASE WHEN %s = 'sent' THEN now() END, last_error = %s, updated_at = now()
               WHERE id = %s AND state IN ('sending', 'uncertain')""",
            (state, state, None if state == "sent" else outcome.detail, delivery_id),
        )
        if outcome.verdict == "gone":
            cur.execute(
                """UPDATE kick_monitor.notify_targets SET enabled = false,
                       disabled_reason = %s || ' at ' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
                           || ' UTC; `kick-monitor notify enable ' || id || '` after fixing it'
                   WHERE id = %s AND enabled""",
                (outcome.detail, target_id),
            )


def outbox_depth(conn: psycopg2.extensions.connection) -> tuple[int, int, float | None]:
    """(pending and due, pending and waiting, seconds until the next one is due), of enabled targets
    (a disabled target's deliveries wait for `notify enable`; its own alert says so)."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT count(*) FILTER (WHERE d.due_at <= now()), count(*) FILTER (WHERE d.due_at > now()),
                      EXTRACT(EPOCH FROM min(d.due_at) - now())::float8
               FROM kick_monitor.notify_deliveries d
               JOIN kick_monitor.notify_targets t ON t.id = d.target_id AND t.enabled
               WHERE d.state = 'pending'"""
        )
        row = cur.fetchone()
    conn.rollback()
    assert row is not None
    return int(row[0]), int(row[1]), row[2]


def next_due_in(conn: psycopg2.extensions.connection) -> float | None:
    """Seconds until the earliest pending delivery is due (negative: overdue), None if none."""
    with conn.cursor() as cur:
        cur.execute("SELECT EXTRACT(EPOCH FROM min(due_at) - now())::float8 FROM kick_monitor.notify_deliveries"
                    " WHERE state = 'pending'")
        row = cur.fetchone()
    conn.rollback()
    return None if row is None or row[0] is None else float(row[0])


def count_states(conn: psycopg2.extensions.connection) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT state, count(*) FROM kick_monitor.notify_deliveries GROUP BY state")
        rows = cur.fetchall()
    conn.rollback()
    return {state: int(count) for state, count in rows}
