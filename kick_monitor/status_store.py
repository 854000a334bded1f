"""Committing status changes: current state, history and notifications in one statement.

One round trip per batch: the batch travels as one JSON parameter (orjson encodes 500
changes in ~0.1 ms; psycopg2's own adaptation costs ~5 µs a value) into a statement
prepared once per connection (a VALUES list of a new length each time cost ~11 ms of
planning per batch, and a hash join over every streamer). Inside it:
- changes not newer than what the row already holds are dropped ("newer wins" by
  `(generation, seq)`, kick_monitor.ordering — never by a wall clock), so re-sent or
  reordered changes can never move a streamer backwards; `received_at` only breaks the
  tie between two changes without an order (0/0: spooled by an older release);
- within the batch each change's previous status is the one before it in that order
  (window `lag`), so online→offline in one batch is two history rows and the row is
  updated once, with the order of the newest change;
- a history row is written only for a real transition, `ON CONFLICT (change_id) DO
  NOTHING`, which makes re-delivery of the same change a no-op;
- `pg_notify('kick_monitor_status', …)` for every history row, delivered at commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import psycopg2.extensions

from .messages import StatusChange

PREPARED_NAME = "kick_monitor_apply_changes"

APPLY_SQL = """
PREPARE kick_monitor_apply_changes (json) AS
WITH incoming AS (
    SELECT u.i AS change_id, u.c AS channel_id, u.s AS status, u.o AS source, u.e AS event,
           u.l AS livestream_id, u.t AS title, to_timestamp(u.a) AS occurred_at, to_timestamp(u.r) AS received_at,
           u.g AS generation, u.q AS seq
    FROM json_to_recordset($1)
         AS u (i text, c bigint, s text, o text, e text, l bigint, t text, a float8, r float8, g bigint, q bigint)
),
fresh AS (
    SELECT i.*, s.id AS streamer_id, s.username, s.status AS db_status
    FROM incoming i
    CROSS JOIN LATERAL (
        SELECT st.id, st.username, st.status, st.last_event_at, st.order_generation, st.order_seq
        FROM kick_monitor.streamers st WHERE st.channel_id = i.channel_id
    ) s
    WHERE (i.generation, i.seq, i.received_at)
          > (s.order_generation, s.order_seq, COALESCE(s.last_event_at, '-infinity'))
),
ordered AS (
    SELECT f.*,
           COALESCE(lag(f.status) OVER w, f.db_status) AS previous_status,
           row_number() OVER (PARTITION BY f.channel_id
                              ORDER BY f.generation DESC, f.seq DESC, f.received_at DESC, f.change_id DESC) AS newest
    FROM fresh f
    WINDOW w AS (PARTITION BY f.channel_id ORDER BY f.generation, f.seq, f.received_at, f.change_id)
),
transitions AS (
    SELECT o.*, o.status IS DISTINCT FROM o.previous_status AS is_transition
    FROM ordered o
),
latest AS (
    SELECT t.*,
           max(t.received_at) FILTER (WHERE t.is_transition) OVER (PARTITION BY t.channel_id) AS changed_at,
           max(t.received_at) FILTER (WHERE t.status = 'online') OVER (PARTITION BY t.channel_id) AS online_at
    FROM transitions t
),
history AS (
    INSERT INTO kick_monitor.status_events
        (change_id, streamer_id, channel_id, status, previous_status, source, event,
         livestream_id, title, occurred_at, received_at, order_generation, order_seq)
    SELECT change_id, streamer_id, channel_id, status, previous_status, source, event,
           livestream_id, title, occurred_at, received_at, generation, seq
    FROM latest WHERE is_transition
    ON CONFLICT (change_id) DO NOTHING
    RETURNING change_id, streamer_id, channel_id, status, previous_status, source, livestream_id,
              received_at, recorded_at
),
current AS (
    UPDATE kick_monitor.streamers s
    SET status = l.status,
        livestream_id = CASE WHEN l.status = 'online' THEN COALESCE(l.livestream_id, s.livestream_id) END,
        stream_title = CASE WHEN l.status = 'online' THEN COALESCE(l.title, s.stream_title) ELSE s.stream_title END,
        last_status_change = COALESCE(l.changed_at, s.last_status_change),
        last_seen_online = GREATEST(l.online_at, s.last_seen_online),
        last_event_at = l.received_at,
        order_generation = l.generation,
        order_seq = l.seq,
        updated_at = now()
    FROM latest l
    WHERE l.newest = 1 AND s.id = l.streamer_id
    RETURNING s.id
)
SELECT h.change_id, h.recorded_at,
       pg_notify('kick_monitor_status', json_build_object(
           'streamer_id', h.streamer_id,
           'username', l.username,
           'channel_id', h.channel_id,
           'status', h.status,
           'previous_status', h.previous_status,
           'source', h.source,
           'livestream_id', h.livestream_id,
           'at', h.received_at)::text)
FROM history h JOIN latest l ON l.change_id = h.change_id
"""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed batch did."""

    submitted: int
    transitions: int


def encode_batch(changes: Sequence[StatusChange]) -> str:
    """The batch as the JSON the prepared statement reads (short keys: less to parse)."""
    return orjson.dumps(
        [
            {
                "i": c.change_id, "c": c.channel_id, "s": c.status, "o": c.source, "e": c.event,
                "l": c.livestream_id, "t": c.title, "a": c.occurred_at, "r": c.received_at,
                "g": c.generation, "q": c.seq,
            }
            for c in changes
        ]
    ).decode()


def is_prepared(conn: psycopg2.extensions.connection) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_prepared_statements WHERE name = %s", (PREPARED_NAME,))
        found = cur.fetchone() is not None
    conn.rollback()
    return found


def prepare(conn: psycopg2.extensions.connection) -> None:
    """Prepare the batch statement on this connection (once per connection)."""
    with conn.cursor() as cur:
        # One plan for every batch size: unnest() inputs make the generic plan the right one.
        cur.execute("SET plan_cache_mode = force_generic_plan")
        cur.execute(APPLY_SQL)
    conn.commit()


def coalesce(changes: Sequence[StatusChange]) -> list[StatusChange]:
    """Drop repeated change ids (a re-send that met its original in one batch), keep order."""
    seen: dict[str, StatusChange] = {}
    for change in changes:
        seen.setdefault(change.change_id, change)
    return list(seen.values())


def apply_changes(conn: psycopg2.extensions.connection, changes: Sequence[StatusChange]) -> BatchResult:
    """Commit one batch in one transaction on a connection where `prepare()` ran.

    Raises psycopg2 errors for the caller to retry; the transaction is rolled back then.
    """
    unique = coalesce(changes)
    if not unique:
        return BatchResult(0, 0)
    with conn, conn.cursor() as cur:
        cur.execute(f"EXECUTE {PREPARED_NAME} (%s)", (encode_batch(unique),))
        rows = cur.fetchall()
    return BatchResult(len(unique), len(rows))
