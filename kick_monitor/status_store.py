"""Committing status changes: current state, broadcasts, history and notifications, one transaction a batch.

Two prepared statements, two round trips (issue 18; docs/architecture.md, "Where each step runs"):
1. READ_SQL locks the rows the batch touches (`FOR NO KEY UPDATE`, in id order: several writers —
   one per node of a cluster — serialise per streamer and never deadlock) and returns them as
   one JSON text (orjson reads 500 rows in ~0.3 ms; psycopg2 converting 16 columns a row cost
   ~4 µs a row), with the latest broadcast of the rows that may need it — read once more, after
   the locks, when one was (REREAD_SQL: what a writer this one waited for committed).
2. kick_monitor.change_plan decides, in Python, everything the one-statement design did with
   window functions: newer-wins by `(generation, seq)`, the order within the batch, each
   change's previous state, transitions, inferred ends/starts, broadcast spans, history rows,
   the row's final state; webhook changes by the broadcast their `started_at` names.
3. APPLY_SQL writes the plan, given as four JSON parameters without NULL keys (each key is
   parsing work) and the rows' ids as a bigint[]: spans placed on broadcast rows (a fixed id,
   or the streamer's latest with the same livestream id / a start within the tolerance: the one
   step that needs rows not locked, one index probe each), an upsert of `broadcasts` on its primary key, the history
   insert `ON CONFLICT (change_id) DO NOTHING` (re-delivery is a no-op), the rows' update,
   and `pg_notify('kick_monitor_status', …)` per history row inserted, delivered at commit.
Every table access is a primary-key or unique-index probe: a generic plan made while a table
was small can never become a scan of it (an UPDATE … FROM or an anti-join on `broadcasts` /
`status_events` did, measured: a hash join over all 50,000 rows, 3× slower).
Measured (docs/performance.md): PostgreSQL's CPU per change −6 to −26 % against the one statement;
the writer's own +10–14 µs (planning 6–9, encoding ~3, reading ~2 at load 5): W −8 to −16 % on a quiet
machine (serial path longer), equal to +47 % under load 4–7;
S1 (one change a batch) equal: two round trips, see `apply_changes`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import orjson
import psycopg2.extensions

from .change_plan import (
    LastBroadcastNeeded,
    Plan,
    StreamerRow,
    affected_ids,
    last_broadcast_wanted,
    plan_batch,
)
from .messages import StatusChange

PREPARED_NAME = "kick_monitor_apply_changes"
# Seconds within which two reported starts of one streamer are one broadcast: Pusher's
# `created_at`, the API's `start_time` and a webhook's `started_at` of one broadcast differ
# by their sources' delays (shared/kick/README.md section 5); a streamer cannot end and start
# again inside it and be told apart by start time alone (Pusher's livestream id still does).
BROADCAST_MATCH_TOLERANCE = 60.0

READ_NAME = "kick_monitor_read_streamers"
REREAD_NAME = "kick_monitor_reread_streamers"
# Constant texts (no SQL is ever formatted): with `BEGIN` in the same round trip, or inside one.
READ_IN_NEW_TRANSACTION = "BEGIN; EXECUTE kick_monitor_read_streamers (%s, %s, %s, %s)"
REREAD = "EXECUTE kick_monitor_reread_streamers (%s, %s, %s, %s)"
# The rows a batch touches, locked until its commit (several writers — one per node of a cluster, or
# the writer's two pipelined connections — never interleave their read-decide-write on one streamer;
# id order: no deadlock between them), with the latest broadcast of those that may need it ($3:
# asked for; one backward probe of broadcasts_streamer_started each): an end naming a livestream when
# none is known, a webhook, an API verdict with its asking time (last: when a webhook first reported
# the start or end, change_plan.is_stale). A statement that waited for a row lock reads the locked row
# again after the other commit, but every other table as of its own start (READ COMMITTED: a snapshot
# per statement): the rows whose latest broadcast was read are read again by REREAD_SQL, the same
# without the lock, in a snapshot taken after the locks (`read_rows`).
READ_SQL = """
PREPARE kick_monitor_read_streamers (bigint[], bigint[], bigint[], bigint[]) AS
WITH locked AS (
    SELECT s.id, s.username, s.channel_id, s.status, s.order_generation, s.order_seq,
           (extract(epoch FROM s.last_event_at) * 1000000)::bigint AS event_us, s.livestream_id,
           s.last_livestream_id, extract(epoch FROM s.stream_started_at)::float8 AS started_at, s.broadcast_id,
           s.id = ANY($4) OR (s.id = ANY($3) AND
                              CASE WHEN s.status = 'online' THEN s.livestream_id ELSE s.last_livestream_id END IS NULL)
               AS want
    FROM kick_monitor.streamers s
    WHERE s.id = ANY($1) OR s.channel_id = ANY($2)
    ORDER BY s.id
    FOR NO KEY UPDATE  -- what an UPDATE takes: never waits on an application's foreign-key (KEY SHARE) locks
)
-- one JSON text for the batch: orjson reads it ~10x faster than psycopg2 converts 16 columns a row
SELECT json_agg(json_build_array(
           l.id, l.username, l.channel_id, l.status, l.order_generation, l.order_seq, l.event_us,
           l.livestream_id, l.last_livestream_id, l.started_at, l.broadcast_id,
           lb.id, extract(epoch FROM lb.started_at)::float8, lb.ended_at IS NOT NULL, lb.livestream_id IS NOT NULL,
           l.want, extract(epoch FROM lb.ended_at)::float8,
           extract(epoch FROM GREATEST(CASE WHEN lb.start_source = 'webhook' THEN lb.webhook_start_seen_at END,
                                       CASE WHEN lb.end_source = 'webhook' THEN lb.webhook_end_seen_at END))::float8
       ))::text
FROM locked l
LEFT JOIN LATERAL (
    SELECT b.id, b.started_at, b.ended_at, b.livestream_id, b.start_source, b.end_source,
           b.webhook_start_seen_at, b.webhook_end_seen_at
    FROM kick_monitor.broadcasts b
    WHERE l.want AND b.streamer_id = l.id  -- inside: not even probed unless wanted
    ORDER BY b.started_at DESC LIMIT 1
) lb ON true
"""

REREAD_SQL = READ_SQL.replace(READ_NAME, REREAD_NAME).replace(
    "    ORDER BY s.id\n    FOR NO KEY UPDATE  -- what an UPDATE takes: never waits on an application's foreign-key"
    " (KEY SHARE) locks\n", "")
assert "FOR NO KEY UPDATE" not in REREAD_SQL

APPLY_SQL = """
PREPARE kick_monitor_apply_changes (json, json, json, json, float8, bigint[]) AS
WITH spans AS (
    SELECT * FROM json_to_recordset($1) AS x (
        k int, d bigint, f bigint, m boolean, n boolean, st float8, ss text, stt text, si boolean,
        lt text, cat text, l bigint, en float8, es text, ei boolean,
        ps float8, aps float8, ws float8, pe float8, ae float8, we float8)
),
-- A span without a fixed row matches a broadcast already recorded (another source saw it first)
-- by Pusher's livestream id when both have one, else by its start within the tolerance;
-- else it gets a new row (when it may).
placed AS MATERIALIZED (
    SELECT sp.*, COALESCE(sp.f, m.id, CASE WHEN sp.n THEN nextval('kick_monitor.broadcasts_id_seq') END) AS bid
    FROM spans sp
    LEFT JOIN LATERAL (
        SELECT b.id FROM kick_monitor.broadcasts b
        WHERE sp.m AND b.streamer_id = sp.d
          AND CASE WHEN sp.l IS NOT NULL AND b.livestream_id IS NOT NULL THEN b.livestream_id = sp.l
                   ELSE b.started_at BETWEEN to_timestamp(sp.st) - make_interval(secs => $5)
                                         AND to_timestamp(sp.st) + make_interval(secs => $5) END
        ORDER BY b.started_at DESC  -- the index's order: no sort per span
        LIMIT 1
    ) m ON true
),
-- New broadcasts and changes to known ones in one upsert on the primary key: each row is one
-- index probe whatever the table's size or statistics (an UPDATE ... FROM or an anti-join would
-- be planned once, maybe while the table was small, and could stay a hash join over all of it).
-- An ended broadcast stays ended (docs/architecture.md, ordering across sources).
recorded AS (
    INSERT INTO kick_monitor.broadcasts AS b
        (id, streamer_id, started_at, ended_at, start_title, last_title, category, livestream_id,
         start_source, end_source, start_inferred, end_inferred,
         pusher_start_seen_at, api_start_seen_at, webhook_start_seen_at,
         pusher_end_seen_at, api_end_seen_at, webhook_end_seen_at)
    SELECT DISTINCT ON (p.bid)
           p.bid, p.d, COALESCE(to_timestamp(p.st), 'epoch'), to_timestamp(p.en), p.stt,
           COALESCE(p.lt, p.stt), p.cat, p.l, COALESCE(p.ss, 'history'), p.es, COALESCE(p.si, false),
           COALESCE(p.ei, false), to_timestamp(p.ps), to_timestamp(p.aps), to_timestamp(p.ws),
           to_timestamp(p.pe), to_timestamp(p.ae), to_timestamp(p.we)
    FROM placed p WHERE p.bid IS NOT NULL
    ORDER BY p.bid, p.k DESC
    ON CONFLICT (id) DO UPDATE
    SET ended_at = COALESCE(b.ended_at, EXCLUDED.ended_at),
        end_source = CASE WHEN b.ended_at IS NULL THEN EXCLUDED.end_source ELSE b.end_source END,
        end_inferred = CASE WHEN b.ended_at IS NULL THEN EXCLUDED.end_inferred ELSE b.end_inferred END,
        last_title = COALESCE(EXCLUDED.last_title, b.last_title),
        category = COALESCE(EXCLUDED.category, b.category),
        livestream_id = COALESCE(b.livestream_id, EXCLUDED.livestream_id),
        pusher_start_seen_at = LEAST(b.pusher_start_seen_at, EXCLUDED.pusher_start_seen_at),
        api_start_seen_at = LEAST(b.api_start_seen_at, EXCLUDED.api_start_seen_at),
        webhook_start_seen_at = LEAST(b.webhook_start_seen_at, EXCLUDED.webhook_start_seen_at),
        pusher_end_seen_at = LEAST(b.pusher_end_seen_at, EXCLUDED.pusher_end_seen_at),
        api_end_seen_at = LEAST(b.api_end_seen_at, EXCLUDED.api_end_seen_at),
        webhook_end_seen_at = LEAST(b.webhook_end_seen_at, EXCLUDED.webhook_end_seen_at),
        updated_at = now()
    RETURNING b.id
),
history AS (
    INSERT INTO kick_monitor.status_events
        (change_id, streamer_id, channel_id, status, previous_status, source, event,
         livestream_id, title, occurred_at, received_at, order_generation, order_seq, inferred, broadcast_id)
    SELECT h.i, h.d, h.c, h.s, h.p, h.o, h.e, h.l, h.t, to_timestamp(h.a), to_timestamp(h.r), h.g, h.q,
           COALESCE(h.f, false), p.bid
    FROM ROWS FROM (json_to_recordset($2) AS (i text, d bigint, c bigint, s text, p text, o text, e text,
                                              l bigint, t text, a float8, r float8, g bigint, q bigint,
                                              f boolean, k int))
         WITH ORDINALITY AS h (i, d, c, s, p, o, e, l, t, a, r, g, q, f, k, n)
    LEFT JOIN placed p ON p.k = h.k
    ORDER BY h.n  -- ids in the plan's order: rows of one (generation, seq, received_at) read in it
    ON CONFLICT (change_id) DO NOTHING  -- a change recorded before (re-sent) is not recorded again
    RETURNING change_id, streamer_id, channel_id, status, previous_status, source, livestream_id,
              received_at, inferred, broadcast_id
),
current AS (
    UPDATE kick_monitor.streamers s
    SET status = r.s,
        livestream_id = r.l,
        last_livestream_id = r.ll,
        stream_title = CASE WHEN r.s = 'online' THEN COALESCE(r.t, s.stream_title) ELSE s.stream_title END,
        broadcast_id = CASE WHEN COALESCE(r.kb, false) THEN s.broadcast_id ELSE p.bid END,
        stream_started_at = CASE WHEN COALESCE(r.ks, false) THEN s.stream_started_at ELSE to_timestamp(r.st) END,
        last_status_change = COALESCE(to_timestamp(r.ch), s.last_status_change),
        last_seen_online = GREATEST(to_timestamp(r.so), s.last_seen_online),
        last_event_at = COALESCE(to_timestamp(r.ev), s.last_event_at),
        order_generation = r.g,
        order_seq = r.q,
        updated_at = now()
    FROM json_to_recordset($3) AS r (d bigint, s text, l bigint, ll bigint, t text, k int, kb boolean,
                                     st float8, ks boolean, ch float8, so float8, ev float8, g bigint, q bigint)
    LEFT JOIN placed p ON p.k = r.k
    WHERE s.id = r.d
      -- the rows' ids as an array too ($6): a key probe per row at any table size (joined to the JSON
      -- alone, guessed at 100 rows, the generic plan scanned every streamer: measured at 1,000 and 10,000)
      AND s.id = ANY($6)
    RETURNING s.id
)
SELECT h.change_id,
       pg_notify('kick_monitor_status', json_build_object(
           'streamer_id', h.streamer_id,
           'username', u.u,
           'channel_id', h.channel_id,
           'status', h.status,
           'previous_status', h.previous_status,
           'source', h.source,
           'livestream_id', h.livestream_id,
           'broadcast_id', h.broadcast_id,
           'inferred', h.inferred,
           'at', h.received_at)::text)
FROM history h JOIN json_to_recordset($4) AS u (d bigint, u text) ON u.d = h.streamer_id
"""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed batch did: `transitions` history rows written, `inferred` of them
    transitions no source reported (an end or start the writer inferred: one change can write two
    rows, so `transitions` may exceed `submitted`)."""

    submitted: int
    transitions: int
    inferred: int = 0

    @property
    def recorded(self) -> int:
        """Submitted changes that were recorded as a transition (each writes at most one row of its own)."""
        return self.transitions - self.inferred


WriteParams = tuple[str, str, str, str, float, str]
# The write and its COMMIT in one round trip; the parameters are `encode_plan`'s.
WRITE_AND_COMMIT = f"EXECUTE {PREPARED_NAME} (%s, %s, %s, %s, %s, %s); COMMIT"


def encode_plan(plan: Plan, tolerance: float) -> WriteParams:
    """The write statement's parameters: the plan as the JSON it reads (see change_plan.Record),
    the match tolerance, and the rows' ids as a bigint[] literal (the UPDATE's key probe; read out
    of the rows' JSON again, it was a second parse of the biggest parameter)."""
    spans = orjson.dumps([s.record() for s in plan.spans if s.fixed_id is not None or s.match])
    names = orjson.dumps([{"d": d, "u": u} for d, u in plan.usernames.items()])
    return (spans.decode(), orjson.dumps(plan.history).decode(), orjson.dumps(plan.rows).decode(), names.decode(),
            tolerance, int_array([row["d"] for row in plan.rows]))


def is_prepared(conn: psycopg2.extensions.connection) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_prepared_statements WHERE name = %s", (PREPARED_NAME,))
        found = cur.fetchone() is not None
    conn.rollback()
    return found


def prepare(conn: psycopg2.extensions.connection) -> None:
    """Prepare the batch's two statements on this connection (once per connection)."""
    with conn.cursor() as cur:
        # One plan for every batch size: json_to_recordset() inputs make the generic plan the right one.
        cur.execute("SET plan_cache_mode = force_generic_plan")
        cur.execute(READ_SQL)
        cur.execute(REREAD_SQL)
        cur.execute(APPLY_SQL)
    conn.commit()


def coalesce(changes: Sequence[StatusChange]) -> list[StatusChange]:
    """Drop repeated change ids (a re-send that met its original in one batch), keep order."""
    seen: dict[str, StatusChange] = {}
    for change in changes:
        seen.setdefault(change.change_id, change)
    return list(seen.values())


def int_array(values: Iterable[object]) -> str:
    """A bigint[] literal: one string, not a list psycopg2 adapts value by value."""
    return "{" + ",".join(map(str, values)) + "}"


def parse_rows(found: tuple[str | None] | None) -> dict[int, StreamerRow]:
    return {r[0]: StreamerRow(*r) for r in orjson.loads(found[0] if found and found[0] else "[]")}


def read_rows(
    cur: psycopg2.extensions.cursor, changes: Sequence[StatusChange], forced: frozenset[int] = frozenset(),
    *, begin: bool = False,
) -> tuple[dict[int, StreamerRow], Sequence[StatusChange]]:
    """Read the rows `changes` touch; the changes keyed by row id (a change spooled by an older
    release, streamer id 0, by its channel). `forced`: row ids whose latest broadcast is read
    whatever they hold (the planner asked for it). `begin`: open the transaction and lock the rows
    in the same round trip — and when a latest broadcast was read, read the rows once more after
    the locks (one more round trip: only batches with an end naming a livestream the row does not
    know, a webhook or an API verdict; only those rows: a locked row itself is read as the writer
    it waited for left it, its latest broadcast is not); without it, the rows must be locked already."""
    ids, channels = affected_ids(changes)
    ends, webhooks = last_broadcast_wanted(changes)
    wanted, always = int_array(sorted(ends | forced)), int_array(webhooks)
    cur.execute(READ_IN_NEW_TRANSACTION if begin else REREAD, (int_array(ids), int_array(channels), wanted, always))
    rows = parse_rows(cur.fetchone())
    if begin and (again := sorted(row.id for row in rows.values() if row.last_read)):
        cur.execute(REREAD, (int_array(again), int_array([]), wanted, always))  # after the locks: what a
        rows.update(parse_rows(cur.fetchone()))  # writer this one waited for committed, broadcasts included
    if channels:
        by_channel = {row.channel_id: row.id for row in rows.values() if row.channel_id is not None}
        changes = [
            c if c.streamer_id else replace(c, streamer_id=by_channel.get(c.channel_id or 0, 0)) for c in changes
        ]
    return rows, changes


@dataclass(slots=True)
class StagedBatch:
    """A batch read, planned and encoded in a transaction left open on its connection, holding
    its rows' locks until `finish_changes` writes and commits it (or `abort` rolls it back)."""

    submitted: int
    transitions: int
    params: WriteParams | None  # None: nothing to write, only the COMMIT
    open: bool  # a transaction is open (False: the batch was empty)
    inferred: int = 0  # of `transitions`: rows the plan inferred


def stage_changes(
    conn: psycopg2.extensions.connection,
    changes: Sequence[StatusChange],
    *,
    tolerance: float = BROADCAST_MATCH_TOLERANCE,
) -> StagedBatch:
    """The first round trip of a batch and its plan: `BEGIN; EXECUTE read`, then the decisions
    in Python. The connection is left in autocommit mode with the transaction open (psycopg2
    sends no BEGIN or COMMIT of its own); `finish_changes` ends it. Raises psycopg2 errors for
    the caller to retry, the transaction rolled back."""
    unique = coalesce(changes)
    if not unique:
        return StagedBatch(0, 0, None, open=False)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            rows, keyed = read_rows(cur, unique, begin=True)
            try:
                plan = plan_batch(keyed, rows, tolerance)
            except LastBroadcastNeeded as needed:  # rare: an end naming a livestream after one naming none
                rows, keyed = read_rows(cur, unique, needed.streamer_ids)
                plan = plan_batch(keyed, rows, tolerance)
    except BaseException:
        abort(conn)
        raise
    if not plan.rows:
        return StagedBatch(len(unique), 0, None, open=True)
    inferred = sum(1 for record in plan.history if record.get("f"))
    return StagedBatch(len(unique), len(plan.history), encode_plan(plan, tolerance), open=True, inferred=inferred)


def finish_changes(conn: psycopg2.extensions.connection, staged: StagedBatch) -> BatchResult:
    """The second round trip: `EXECUTE write; COMMIT` of a staged batch (on the connection that
    staged it). Raises psycopg2 errors for the caller to retry; the transaction is rolled back then."""
    if not staged.open:
        return BatchResult(staged.submitted, 0)
    try:
        with conn.cursor() as cur:
            if staged.params is None:
                cur.execute("COMMIT")
            else:
                cur.execute(WRITE_AND_COMMIT, staged.params)
    except BaseException:
        abort(conn)
        raise
    finally:
        with contextlib.suppress(psycopg2.Error):
            conn.autocommit = False
    return BatchResult(staged.submitted, staged.transitions, staged.inferred)


def apply_changes(
    conn: psycopg2.extensions.connection,
    changes: Sequence[StatusChange],
    *,
    tolerance: float = BROADCAST_MATCH_TOLERANCE,
) -> BatchResult:
    """Commit one batch in one transaction on a connection where `prepare()` ran (idle, not in
    a transaction).

    Two round trips: `BEGIN; EXECUTE read`, then `EXECUTE write; COMMIT` — the connection is
    switched to autocommit for the call so that psycopg2 sends no BEGIN and COMMIT of its own
    (four round trips; at one change a batch, S1, each costs a wake-up of both processes).
    `tolerance` (seconds): two reports of a start this close are one broadcast.
    `transitions` counts the history rows written, inferred ones included: the plan's (the
    statement's own count is not returned with its COMMIT; under the row locks a planned row's
    change id can only already exist if something else rewrote the row's order).
    Raises psycopg2 errors for the caller to retry; the transaction is rolled back then.
    """
    return finish_changes(conn, stage_changes(conn, changes, tolerance=tolerance))


def abort(conn: psycopg2.extensions.connection) -> None:
    """Roll back a batch that failed half way or was staged and not finished (a lost connection
    has nothing to roll back); the connection is back out of autocommit mode."""
    if conn.closed:
        return
    with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
        cur.execute("ROLLBACK")
    with contextlib.suppress(psycopg2.Error):
        conn.autocommit = False
