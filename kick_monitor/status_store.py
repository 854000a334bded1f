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
# Seconds within which two reported starts of one streamer are one broadcast: Pusher's
# `created_at`, the API's `start_time` and a webhook's `started_at` of one broadcast differ
# by their sources' delays (shared/kick/README.md section 5); a streamer cannot end and start
# again inside it and be told apart by start time alone (Pusher's livestream id still does).
BROADCAST_MATCH_TOLERANCE = 60.0

APPLY_SQL = """
PREPARE kick_monitor_apply_changes (json, float8) AS
WITH incoming AS (
    -- keyed by the streamer's row id; a change spooled by an older release (streamer id 0) by its channel
    SELECT u.i AS change_id,
           COALESCE(NULLIF(u.d, 0), (SELECT x.id FROM kick_monitor.streamers x WHERE x.channel_id = u.c)) AS sid,
           u.c AS channel_id, u.s AS status, u.o AS source, u.e AS event,
           u.l AS livestream_id, u.t AS title, u.k AS category,
           to_timestamp(u.a) AS occurred_at, to_timestamp(u.r) AS received_at, u.g AS generation, u.q AS seq
    FROM json_to_recordset($1)
         AS u (i text, d bigint, c bigint, s text, o text, e text, l bigint, t text, k text,
               a float8, r float8, g bigint, q bigint)
),
fresh AS (
    SELECT i.*, s.id AS streamer_id, s.username, s.status AS db_status,
           -- the broadcast we know last: the open one's id when online, the last one's when not
           CASE WHEN s.status = 'online' THEN s.livestream_id ELSE s.last_livestream_id END AS db_livestream_id,
           s.stream_started_at AS db_started_at, s.broadcast_id AS db_broadcast_id
    FROM incoming i
    CROSS JOIN LATERAL (
        SELECT st.id, st.username, st.status, st.last_event_at, st.order_generation, st.order_seq,
               st.livestream_id, st.last_livestream_id, st.stream_started_at, st.broadcast_id
        FROM kick_monitor.streamers st
        WHERE st.id = i.sid
        LIMIT 1  -- not pulled up into a hash join: one primary-key probe per change, however many streamers
    ) s
    WHERE (i.generation, i.seq, i.received_at)
          > (s.order_generation, s.order_seq, COALESCE(s.last_event_at, '-infinity'))
),
ordered AS (
    SELECT f.*,
           COALESCE(lag(f.status) OVER w, f.db_status) AS previous_status,
           CASE WHEN lag(f.change_id) OVER w IS NULL THEN f.db_livestream_id
                ELSE lag(f.livestream_id) OVER w END AS previous_livestream_id,
           -- the latest start known before this change (a confirmation carries none)
           GREATEST(f.db_started_at, max(f.occurred_at) FILTER (WHERE f.status = 'online')
                    OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS previous_started_at,
           row_number() OVER (PARTITION BY f.streamer_id
                              ORDER BY f.generation DESC, f.seq DESC, f.received_at DESC, f.change_id DESC) AS newest
    FROM fresh f
    WINDOW w AS (PARTITION BY f.streamer_id ORDER BY f.generation, f.seq, f.received_at, f.change_id)
),
transitions AS (
    SELECT o.*,
           o.status IS DISTINCT FROM o.previous_status AS is_transition,
           -- online while online, about a different broadcast: its end was never seen (S4)
           COALESCE(o.status = 'online' AND o.previous_status = 'online' AND
               CASE WHEN o.livestream_id IS NOT NULL AND o.previous_livestream_id IS NOT NULL
                    THEN o.livestream_id <> o.previous_livestream_id
                    ELSE o.occurred_at > o.previous_started_at + make_interval(secs => $2) END,
               false) AS new_broadcast,
           -- an end (Pusher's carries its livestream id) of a broadcast whose start nobody saw: another
           -- id than the one we know; or, knowing none, unless the last broadcast has no id either
           -- (the API saw it, without ids: this is likely its end, late)
           COALESCE(o.status = 'offline' AND o.livestream_id IS NOT NULL AND
               CASE WHEN o.previous_livestream_id IS NOT NULL THEN o.livestream_id <> o.previous_livestream_id
                    WHEN o.previous_status = 'online' THEN false
                    ELSE NOT COALESCE((SELECT b.livestream_id IS NULL FROM kick_monitor.broadcasts b
                                       WHERE b.streamer_id = o.streamer_id
                                       ORDER BY b.started_at DESC LIMIT 1), false) END,
               false) AS unseen_broadcast
    FROM ordered o
),
latest AS (
    SELECT t.*,
           max(t.received_at) FILTER (WHERE t.is_transition OR t.new_broadcast OR t.unseen_broadcast)
               OVER (PARTITION BY t.streamer_id) AS changed_at,
           max(t.received_at) FILTER (WHERE t.status = 'online') OVER (PARTITION BY t.streamer_id) AS online_at
    FROM transitions t
),
-- What each change does to broadcasts, in this order: the implied end of the open broadcast
-- (another broadcast showed up), a start (inferred: an end showed a broadcast whose start
-- nobody saw; its time is unknown, the end's arrival is used), a touch (online, same
-- broadcast: title, sources), an end.
marks AS (
    SELECT l.*, 1 AS ord, 'end' AS kind, true AS inferred, COALESCE(l.occurred_at, l.received_at) AS at
    FROM latest l WHERE l.new_broadcast OR (l.unseen_broadcast AND l.previous_status = 'online')
    UNION ALL
    SELECT l.*, 2, 'start', l.unseen_broadcast, COALESCE(l.occurred_at, l.received_at)
    FROM latest l WHERE (l.is_transition AND l.status = 'online') OR l.new_broadcast OR l.unseen_broadcast
    UNION ALL
    SELECT l.*, 3, 'touch', false, COALESCE(l.occurred_at, l.received_at)
    FROM latest l WHERE l.status = 'online' AND NOT l.is_transition AND NOT l.new_broadcast
    UNION ALL
    SELECT l.*, 4, 'end', false, COALESCE(l.occurred_at, l.received_at)
    FROM latest l WHERE (l.is_transition AND l.status = 'offline') OR l.unseen_broadcast
),
-- Segment 0 is the broadcast open in the row before this batch; segment k the k-th start.
segmented AS (
    SELECT m.*, count(*) FILTER (WHERE m.kind = 'start')
               OVER (PARTITION BY m.streamer_id ORDER BY m.generation, m.seq, m.ord, m.change_id) AS segment
    FROM marks m
),
spans AS (
    SELECT g.streamer_id, g.segment, min(g.db_broadcast_id) AS db_broadcast_id,
           (array_agg(g.at ORDER BY g.generation, g.seq, g.ord) FILTER (WHERE g.kind = 'start'))[1] AS started_at,
           (array_agg(g.source ORDER BY g.generation, g.seq, g.ord) FILTER (WHERE g.kind = 'start'))[1] AS start_source,
           (array_agg(g.title ORDER BY g.generation, g.seq, g.ord) FILTER (WHERE g.kind = 'start'))[1] AS start_title,
           (array_agg(g.title ORDER BY g.generation DESC, g.seq DESC, g.ord DESC)
               FILTER (WHERE g.kind <> 'end' AND g.title IS NOT NULL))[1] AS last_title,
           (array_agg(g.category ORDER BY g.generation DESC, g.seq DESC, g.ord DESC)
               FILTER (WHERE g.kind <> 'end' AND g.category IS NOT NULL))[1] AS category,
           -- an end seen over Pusher names the broadcast too (one the API saw start has no id yet)
           (array_agg(g.livestream_id ORDER BY g.generation, g.seq, g.ord)
               FILTER (WHERE NOT (g.kind = 'end' AND g.inferred) AND g.livestream_id IS NOT NULL))[1] AS livestream_id,
           (array_agg(g.at ORDER BY g.generation, g.seq, g.ord) FILTER (WHERE g.kind = 'end'))[1] AS ended_at,
           (array_agg(g.source ORDER BY g.generation, g.seq, g.ord) FILTER (WHERE g.kind = 'end'))[1] AS end_source,
           (array_agg(g.inferred ORDER BY g.generation, g.seq, g.ord) FILTER (WHERE g.kind = 'end'))[1] AS end_inferred,
           bool_or(g.inferred) FILTER (WHERE g.kind = 'start') AS start_inferred,
           min(g.received_at) FILTER (WHERE g.kind <> 'end' AND NOT g.inferred AND g.source = 'pusher')
               AS pusher_start_seen_at,
           min(g.received_at) FILTER (WHERE g.kind <> 'end' AND NOT g.inferred AND g.source = 'api')
               AS api_start_seen_at,
           min(g.received_at) FILTER (WHERE g.kind <> 'end' AND NOT g.inferred AND g.source = 'webhook')
               AS webhook_start_seen_at,
           min(g.received_at) FILTER (WHERE g.kind = 'end' AND g.source = 'pusher') AS pusher_end_seen_at,
           min(g.received_at) FILTER (WHERE g.kind = 'end' AND g.source = 'api') AS api_end_seen_at,
           min(g.received_at) FILTER (WHERE g.kind = 'end' AND g.source = 'webhook') AS webhook_end_seen_at
    FROM segmented g
    GROUP BY g.streamer_id, g.segment
),
-- A start matches a broadcast already recorded (another source saw it first) by Pusher's
-- livestream id when both have one, else by its start within the tolerance; else it gets a new row.
placed AS MATERIALIZED (
    SELECT sp.*, COALESCE(CASE WHEN sp.segment = 0 THEN sp.db_broadcast_id END, m.id) AS existing_id,
           CASE WHEN sp.segment > 0 AND m.id IS NULL THEN nextval('kick_monitor.broadcasts_id_seq') END AS new_id
    FROM spans sp
    LEFT JOIN LATERAL (
        SELECT b.id FROM kick_monitor.broadcasts b
        WHERE sp.segment > 0 AND b.streamer_id = sp.streamer_id
          -- two known livestream ids decide; only without them does the start time
          AND CASE WHEN sp.livestream_id IS NOT NULL AND b.livestream_id IS NOT NULL
                   THEN b.livestream_id = sp.livestream_id
                   ELSE b.started_at BETWEEN sp.started_at - make_interval(secs => $2)
                                         AND sp.started_at + make_interval(secs => $2) END
        ORDER BY b.started_at DESC  -- the index's order: no sort per change
        LIMIT 1
    ) m ON true
),
spans_placed AS (
    SELECT p.*, COALESCE(p.existing_id, p.new_id) AS bid FROM placed p
),
-- New broadcasts and changes to known ones in one upsert on the primary key: each row is
-- one index probe whatever the table's size or statistics (an UPDATE ... FROM would be
-- planned once, when the table was small, and could stay a hash join over all of it).
-- An ended broadcast stays ended (docs/architecture.md, ordering across sources).
recorded AS (
    INSERT INTO kick_monitor.broadcasts AS b
        (id, streamer_id, started_at, ended_at, start_title, last_title, category, livestream_id,
         start_source, end_source, start_inferred, end_inferred,
         pusher_start_seen_at, api_start_seen_at, webhook_start_seen_at,
         pusher_end_seen_at, api_end_seen_at, webhook_end_seen_at)
    SELECT DISTINCT ON (p.bid)
           p.bid, p.streamer_id,
           COALESCE(p.started_at, 'epoch'),  -- only a new row's is used, and a new row has its start
           p.ended_at, p.start_title, COALESCE(p.last_title, p.start_title), p.category, p.livestream_id,
           COALESCE(p.start_source, 'history'), p.end_source, COALESCE(p.start_inferred, false),
           COALESCE(p.end_inferred, false),
           p.pusher_start_seen_at, p.api_start_seen_at, p.webhook_start_seen_at,
           p.pusher_end_seen_at, p.api_end_seen_at, p.webhook_end_seen_at
    FROM spans_placed p WHERE p.bid IS NOT NULL
    ORDER BY p.bid, p.segment DESC
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
last_span AS (
    SELECT DISTINCT ON (streamer_id) streamer_id, segment, bid, started_at, livestream_id
    FROM spans_placed ORDER BY streamer_id, segment DESC
),
history AS (
    INSERT INTO kick_monitor.status_events
        (change_id, streamer_id, channel_id, status, previous_status, source, event,
         livestream_id, title, occurred_at, received_at, order_generation, order_seq, inferred, broadcast_id)
    SELECT CASE WHEN NOT g.inferred THEN g.change_id
                WHEN g.kind = 'end' THEN g.change_id || ':ended' ELSE g.change_id || ':started' END,
           g.streamer_id, g.channel_id,
           CASE g.kind WHEN 'end' THEN 'offline' ELSE 'online' END,
           CASE WHEN g.kind = 'end' AND (g.inferred OR g.unseen_broadcast) THEN 'online'
                WHEN g.kind = 'start' AND (g.inferred OR g.new_broadcast) THEN 'offline'
                ELSE g.previous_status END,
           g.source,
           CASE WHEN NOT g.inferred THEN g.event WHEN g.kind = 'end' THEN 'inferred_end' ELSE 'inferred_start' END,
           CASE WHEN g.inferred AND g.kind = 'end' THEN g.previous_livestream_id ELSE g.livestream_id END,
           CASE WHEN g.inferred THEN NULL ELSE g.title END,
           CASE WHEN NOT g.inferred THEN g.occurred_at WHEN g.kind = 'end' THEN g.at END,
           g.received_at, g.generation,
           g.seq - CASE WHEN NOT g.inferred THEN 0 WHEN g.kind = 'end' THEN 2 ELSE 1 END,
           g.inferred,
           sp.bid
    FROM segmented g
    LEFT JOIN spans_placed sp ON sp.streamer_id = g.streamer_id AND sp.segment = g.segment
    WHERE g.kind <> 'touch'
    ON CONFLICT (change_id) DO NOTHING
    RETURNING change_id, streamer_id, channel_id, status, previous_status, source, livestream_id,
              received_at, recorded_at, inferred, broadcast_id
),
current AS (
    UPDATE kick_monitor.streamers s
    SET status = l.status,
        livestream_id = CASE WHEN l.status <> 'online' THEN NULL
                             WHEN ls.segment > 0 THEN COALESCE(ls.livestream_id, l.livestream_id)
                             ELSE COALESCE(l.livestream_id, s.livestream_id) END,
        last_livestream_id = COALESCE(l.livestream_id, CASE WHEN ls.segment > 0 THEN ls.livestream_id END,
                                      s.last_livestream_id),
        stream_title = CASE WHEN l.status = 'online' THEN COALESCE(l.title, s.stream_title) ELSE s.stream_title END,
        broadcast_id = CASE WHEN l.status <> 'online' THEN NULL
                            WHEN ls.segment > 0 THEN ls.bid ELSE s.broadcast_id END,
        stream_started_at = CASE WHEN l.status <> 'online' THEN NULL
                                 WHEN ls.segment > 0 THEN ls.started_at ELSE s.stream_started_at END,
        last_status_change = COALESCE(l.changed_at, s.last_status_change),
        last_seen_online = GREATEST(l.online_at, s.last_seen_online),
        last_event_at = l.received_at,
        order_generation = l.generation,
        order_seq = l.seq,
        updated_at = now()
    FROM latest l LEFT JOIN last_span ls ON ls.streamer_id = l.streamer_id
    WHERE l.newest = 1 AND s.id = l.streamer_id
    RETURNING s.id
)
SELECT h.change_id, h.recorded_at,
       pg_notify('kick_monitor_status', json_build_object(
           'streamer_id', h.streamer_id,
           'username', u.username,
           'channel_id', h.channel_id,
           'status', h.status,
           'previous_status', h.previous_status,
           'source', h.source,
           'livestream_id', h.livestream_id,
           'broadcast_id', h.broadcast_id,
           'inferred', h.inferred,
           'at', h.received_at)::text)
FROM history h JOIN (SELECT DISTINCT streamer_id, username FROM fresh) u ON u.streamer_id = h.streamer_id
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
                "i": c.change_id, "d": c.streamer_id, "c": c.channel_id, "s": c.status, "o": c.source,
                "e": c.event, "l": c.livestream_id, "t": c.title, "k": c.category, "a": c.occurred_at,
                "r": c.received_at, "g": c.generation, "q": c.seq,
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


def apply_changes(
    conn: psycopg2.extensions.connection,
    changes: Sequence[StatusChange],
    *,
    tolerance: float = BROADCAST_MATCH_TOLERANCE,
) -> BatchResult:
    """Commit one batch in one transaction on a connection where `prepare()` ran.

    `tolerance` (seconds): two reports of a start this close are one broadcast.
    `transitions` counts history rows, inferred ones included.
    Raises psycopg2 errors for the caller to retry; the transaction is rolled back then.
    """
    unique = coalesce(changes)
    if not unique:
        return BatchResult(0, 0)
    with conn, conn.cursor() as cur:
        cur.execute(f"EXECUTE {PREPARED_NAME} (%s, %s)", (encode_batch(unique), tolerance))
        rows = cur.fetchall()
    return BatchResult(len(unique), len(rows))
