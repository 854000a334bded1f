"""The floors' write for a frame and for a batch of frames (latency_floor, memory_floor): the rows'
update and their history in one statement, with no decisions (what the product's write is measured against)."""

FLOOR_SQL = """
WITH row AS (
    UPDATE kick_monitor.streamers SET status = %(status)s, last_status_change = to_timestamp(%(sent)s),
                                      order_generation = 1, order_seq = %(seq)s, updated_at = now()
    WHERE id = %(streamer)s
    RETURNING id, channel_id
)
INSERT INTO kick_monitor.status_events
    (change_id, streamer_id, channel_id, status, previous_status, source, event, occurred_at, received_at,
     order_generation, order_seq)
SELECT %(change_id)s, row.id, row.channel_id, %(status)s, 'unknown', 'pusher', 'floor', to_timestamp(%(sent)s),
       to_timestamp(%(sent)s), 1, %(seq)s
FROM row
"""
# The same write for several frames at once (a batch never holds one streamer twice: a streamer
# flips again only `streamers` frames later).
FLOOR_BATCH_SQL = """
WITH input AS (
    SELECT * FROM unnest(%(streamer)s::bigint[], %(status)s::text[], %(sent)s::float8[], %(seq)s::bigint[],
                         %(change_id)s::text[]) AS i (id, status, sent, seq, change_id)
),
row AS (
    UPDATE kick_monitor.streamers s SET status = i.status, last_status_change = to_timestamp(i.sent),
                                        order_generation = 1, order_seq = i.seq, updated_at = now()
    FROM input i WHERE s.id = i.id
    RETURNING s.id, s.channel_id
)
INSERT INTO kick_monitor.status_events
    (change_id, streamer_id, channel_id, status, previous_status, source, event, occurred_at, received_at,
     order_generation, order_seq)
SELECT i.change_id, row.id, row.channel_id, i.status, 'unknown', 'pusher', 'floor', to_timestamp(i.sent),
       to_timestamp(i.sent), 1, i.seq
FROM input i JOIN row ON row.id = i.id
"""
