"""Broadcast rows and inferred transitions, written by the writer's one statement (issue 13).

Every test feeds `apply_changes` what workers send (keyed by the streamer's row id, with or
without a channel id) and reads back `broadcasts`, `status_events` and the row. The
migration test builds a database at schema version 2 with history as that release wrote
it, then migrates.
"""

from __future__ import annotations

import itertools
import json
import select
import time

import psycopg2
import psycopg2.extensions
import pytest

from kick_monitor.messages import StatusChange
from kick_monitor.migrations import MIGRATIONS, backfill_broadcasts, migrate
from kick_monitor.status_store import apply_changes, prepare
from tests.conftest import DatabaseFactory

T0 = 1_790_000_000.0
LIVE = "App\\Events\\StreamerIsLive"
STOP = "App\\Events\\StopStreamBroadcast"
_ids = itertools.count(1)
_seq = itertools.count(1000, 10)


def change(
    streamer_id: int,
    status: str,
    *,
    source: str = "pusher",
    at: float = T0,
    started: float | None = None,
    livestream: int | None = None,
    title: str | None = None,
    channel: int | None = None,
    generation: int = 1,
    seq: int | None = None,
) -> StatusChange:
    """A change as a worker makes it; `started` is Kick's start time of an online one."""
    online = status == "online"
    return StatusChange(
        f"t:{next(_ids)}", channel, status, source,  # type: ignore[arg-type]
        (LIVE if online else STOP) if source == "pusher" else "reconcile",
        livestream, title, started, at, time.monotonic(), 0,
        generation, next(_seq) if seq is None else seq, streamer_id,
    )


@pytest.fixture
def store(conn: psycopg2.extensions.connection) -> psycopg2.extensions.connection:
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO kick_monitor.streamers (id, username, channel_id, kick_user_id)"
            " VALUES (1, 'xqc', 668, 676), (2, 'nochannel', NULL, 900)"
        )
    prepare(conn)
    return conn


def query(conn: psycopg2.extensions.connection, sql: str, *args: object) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        rows = cur.fetchall()
    conn.rollback()
    return rows


def broadcasts(conn: psycopg2.extensions.connection, streamer_id: int) -> list[tuple[object, ...]]:
    """(started, ended, start source, end source, end inferred, livestream id) in start order."""
    return query(
        conn,
        "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM ended_at)::float8,"
        " start_source, end_source, end_inferred, livestream_id"
        " FROM kick_monitor.broadcasts WHERE streamer_id = %s ORDER BY started_at, id",
        streamer_id,
    )


def history(conn: psycopg2.extensions.connection, streamer_id: int) -> list[tuple[object, ...]]:
    """(previous, status, inferred, has broadcast id) in clock-free order."""
    return query(
        conn,
        "SELECT previous_status, status, inferred, broadcast_id IS NOT NULL FROM kick_monitor.status_events"
        " WHERE streamer_id = %s ORDER BY order_generation, order_seq, received_at, id",
        streamer_id,
    )


def test_one_broadcast_per_online_offline_pair_with_both_sources_seen(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [change(1, "online", started=T0 - 3, livestream=11, title="a", channel=668)])
    # The API confirms the same broadcast with a start time a few seconds off: same row.
    apply_changes(store, [change(1, "online", source="api", at=T0 + 30, started=T0 + 2, title="b")])
    apply_changes(store, [change(1, "offline", at=T0 + 3600, channel=668)])
    assert broadcasts(store, 1) == [(T0 - 3, T0 + 3600, "pusher", "pusher", False, 11)]
    seen = query(
        store,
        "SELECT pusher_start_seen_at IS NOT NULL, api_start_seen_at IS NOT NULL, start_title, last_title"
        " FROM kick_monitor.broadcasts",
    )
    assert seen == [(True, True, "a", "b")]
    assert history(store, 1) == [("unknown", "online", False, True), ("online", "offline", False, True)]
    assert query(store, "SELECT status, broadcast_id FROM kick_monitor.streamers WHERE id = 1") == [("offline", None)]


def test_streamer_without_channel_id_is_keyed_by_its_row_id(store: psycopg2.extensions.connection) -> None:
    result = apply_changes(store, [change(2, "online", source="api", started=T0)])
    assert result.transitions == 1
    rows = query(store, "SELECT channel_id, source FROM kick_monitor.status_events WHERE streamer_id = 2")
    assert rows == [(None, "api")]
    open_id = query(store, "SELECT broadcast_id FROM kick_monitor.streamers WHERE id = 2")[0][0]
    assert open_id == query(store, "SELECT id FROM kick_monitor.broadcasts WHERE streamer_id = 2")[0][0]


def test_new_livestream_while_online_records_the_implied_end(store: psycopg2.extensions.connection) -> None:
    apply_changes(store, [change(1, "online", started=T0, livestream=11, channel=668)])
    # Every connection dropped; the stream ended and a new one began: the next frame shows it.
    apply_changes(store, [change(1, "online", at=T0 + 900, started=T0 + 850, livestream=12, channel=668)])
    assert broadcasts(store, 1) == [
        (T0, T0 + 850, "pusher", "pusher", True, 11),
        (T0 + 850, None, "pusher", None, False, 12),
    ]
    assert history(store, 1) == [
        ("unknown", "online", False, True),
        ("online", "offline", True, True),
        ("offline", "online", False, True),
    ]
    assert query(store, "SELECT livestream_id FROM kick_monitor.streamers WHERE id = 1") == [(12,)]


def test_later_api_start_time_while_online_is_a_new_broadcast(store: psycopg2.extensions.connection) -> None:
    apply_changes(store, [change(2, "online", source="api", started=T0)])
    apply_changes(store, [change(2, "online", source="api", at=T0 + 40, started=T0 + 20)])  # within tolerance
    assert len(broadcasts(store, 2)) == 1
    apply_changes(store, [change(2, "online", source="api", at=T0 + 900, started=T0 + 600)])
    assert [b[:5] for b in broadcasts(store, 2)] == [
        (T0, T0 + 600, "api", "api", True),
        (T0 + 600, None, "api", None, False),
    ]
    assert [h[:3] for h in history(store, 2)] == [
        ("unknown", "online", False), ("online", "offline", True), ("offline", "online", False),
    ]


def test_one_batch_with_two_broadcasts(store: psycopg2.extensions.connection) -> None:
    result = apply_changes(store, [
        change(1, "online", at=T0, started=T0, livestream=11, channel=668),
        change(1, "offline", at=T0 + 60, channel=668),
        change(1, "online", at=T0 + 120, started=T0 + 115, livestream=12, channel=668),
    ])
    assert result.transitions == 3
    assert broadcasts(store, 1) == [
        (T0, T0 + 60, "pusher", "pusher", False, 11),
        (T0 + 115, None, "pusher", None, False, 12),
    ]
    ids = query(store, "SELECT broadcast_id FROM kick_monitor.status_events ORDER BY order_seq")
    assert ids[0] == ids[1] != ids[2]


def test_resent_and_reordered_changes_never_move_back_nor_duplicate(store: psycopg2.extensions.connection) -> None:
    on = change(1, "online", at=T0, started=T0, livestream=11, channel=668, generation=5, seq=100)
    off = change(1, "offline", at=T0 + 60, channel=668, generation=5, seq=200)
    apply_changes(store, [on, off])
    apply_changes(store, [on, off])  # re-sent whole
    apply_changes(store, [on])  # the older one alone, after the newer
    # An earlier lease's observation of another broadcast (issue 17) is recorded, not dropped; a resend adds
    # nothing. Received after the row's last event (a paused node's buffered frame), it is news: the broadcast
    # opens (received before, a spool of the lease, an offline row would stay offline: test_old_lease_store).
    older_owner = change(1, "online", at=T0 + 90, started=T0 + 80, livestream=13, channel=668, generation=4, seq=999)
    apply_changes(store, [older_owner])
    apply_changes(store, [older_owner])
    assert broadcasts(store, 1) == [(T0, T0 + 60, "pusher", "pusher", False, 11),
                                    (T0 + 80, None, "pusher", None, False, 13)]
    assert query(store, "SELECT status, order_generation FROM kick_monitor.streamers WHERE id = 1") == [("online", 5)]
    assert [h[:3] for h in history(store, 1)][2:] == [("offline", "online", False)]


def test_notification_carries_the_broadcast_id(store: psycopg2.extensions.connection, database_url: str) -> None:
    listener = psycopg2.connect(database_url)
    listener.autocommit = True
    try:
        with listener.cursor() as cur:
            cur.execute("LISTEN kick_monitor_status")
        apply_changes(store, [change(1, "online", started=T0, livestream=11, channel=668)])
        select.select([listener], [], [], 5.0)
        listener.poll()
        payloads = [json.loads(n.payload) for n in listener.notifies]
    finally:
        listener.close()
    bid = query(store, "SELECT id FROM kick_monitor.broadcasts")[0][0]
    assert [(p["broadcast_id"], p["inferred"], p["status"]) for p in payloads] == [(bid, False, "online")]


# -- migration 4 on a database with history written by the release before it ---------------
OLD_HISTORY = [
    # (streamer, status, previous, source, livestream, occurred_at, received_at, generation, seq)
    (1, "online", "unknown", "pusher", 11, T0, T0 + 1, 1, 10),
    (1, "offline", "online", "pusher", None, None, T0 + 100, 1, 20),
    (1, "online", "offline", "api", None, T0 + 200, T0 + 210, 1, 30),
    (1, "online", "online", "pusher", 13, T0 + 300, T0 + 301, 2, 5),  # missed end: next start implies it
    (1, "offline", "online", "pusher", None, None, T0 + 400, 2, 6),
    (3, "online", "unknown", "pusher", 31, T0, T0 + 2, 1, 40),  # still live
]


def test_migration_backfills_one_broadcast_per_pair_and_is_idempotent(make_database: DatabaseFactory) -> None:
    conn = psycopg2.connect(make_database(migrated=False))
    try:
        with conn, conn.cursor() as cur:
            for migration in MIGRATIONS[:2]:
                cur.execute("CREATE SCHEMA IF NOT EXISTS kick_monitor")
                cur.execute(migration.sql)
            cur.execute(
                "CREATE TABLE kick_monitor.schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("INSERT INTO kick_monitor.schema_migrations (version, name) VALUES (1, 'a'), (2, 'b')")
            cur.execute(
                "INSERT INTO kick_monitor.streamers (id, username, channel_id, status)"
                " VALUES (1, 'a', 1001, 'offline'), (3, 'c', 1003, 'online')"
            )
            for n, (sid, st, prev, src, ls, occ, rec, gen, seq) in enumerate(OLD_HISTORY):
                cur.execute(
                    "INSERT INTO kick_monitor.status_events (change_id, streamer_id, channel_id, status,"
                    " previous_status, source, event, livestream_id, occurred_at, received_at,"
                    " order_generation, order_seq) VALUES (%s, %s, %s, %s, %s, %s, 'e', %s,"
                    " to_timestamp(%s), to_timestamp(%s), %s, %s)",
                    (f"old{n}", sid, 1000 + sid, st, prev, src, ls, occ, rec, gen, seq),
                )
        assert [m.version for m in migrate(conn)] == [m.version for m in MIGRATIONS[2:]]
        expected = [
            (T0, T0 + 100, "pusher", "pusher", False, 11),
            (T0 + 200, T0 + 300, "api", "history", True, None),
            (T0 + 300, T0 + 400, "pusher", "pusher", False, 13),
        ]
        assert broadcasts(conn, 1) == expected
        assert broadcasts(conn, 3) == [(T0, None, "pusher", None, False, 31)]
        assert query(conn, "SELECT count(*) FROM kick_monitor.status_events WHERE broadcast_id IS NULL") == [(0,)]
        live = query(conn, "SELECT broadcast_id IS NOT NULL, extract(epoch FROM stream_started_at)::float8"
                     " FROM kick_monitor.streamers WHERE id = 3")
        assert live == [(True, T0)]
        assert migrate(conn) == []
        backfill_broadcasts(conn)  # run again: nothing new
        assert broadcasts(conn, 1) == expected
        assert query(conn, "SELECT count(*) FROM kick_monitor.broadcasts") == [(4,)]
        # The new writer carries on from the backfilled open broadcast.
        prepare(conn)
        apply_changes(conn, [change(3, "offline", at=T0 + 500, channel=1003, generation=3, seq=1)])
        assert broadcasts(conn, 3) == [(T0, T0 + 500, "pusher", "pusher", False, 31)]
    finally:
        conn.close()


def test_an_end_naming_an_unseen_broadcast_records_its_inferred_start(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [change(1, "online", started=T0, livestream=11, channel=668)])
    # Connections were down; the next frame is the end of a broadcast whose start nobody saw.
    apply_changes(store, [change(1, "offline", at=T0 + 900, livestream=12, channel=668)])
    assert broadcasts(store, 1) == [
        (T0, T0 + 900, "pusher", "pusher", True, 11),
        (T0 + 900, T0 + 900, "pusher", "pusher", False, 12),
    ]
    assert query(store, "SELECT start_inferred FROM kick_monitor.broadcasts ORDER BY id") == [(False,), (True,)]
    assert history(store, 1) == [
        ("unknown", "online", False, True),
        ("online", "offline", True, True),
        ("offline", "online", True, True),
        ("online", "offline", False, True),
    ]
    # Offline already, another unseen one ends: its start is inferred, nothing else.
    apply_changes(store, [change(1, "offline", at=T0 + 1900, livestream=13, channel=668)])
    assert [h[:3] for h in history(store, 1)[4:]] == [("offline", "online", True), ("online", "offline", False)]
    assert len(broadcasts(store, 1)) == 3
    # The same end again (both Pusher channels): nothing new.
    apply_changes(store, [change(1, "offline", at=T0 + 1901, livestream=13, channel=668)])
    assert len(history(store, 1)) == 6


def test_two_short_broadcasts_with_their_own_livestream_ids_are_two_rows(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [change(1, "online", at=T0, started=T0, livestream=11, channel=668)])
    apply_changes(store, [change(1, "offline", at=T0 + 1, livestream=11, channel=668)])
    apply_changes(store, [change(1, "online", at=T0 + 2, started=T0 + 2, livestream=12, channel=668)])
    assert [b[5] for b in broadcasts(store, 1)] == [11, 12]  # starts 2 s apart: the ids decide


def test_an_end_over_pusher_names_a_broadcast_the_api_saw_start(store: psycopg2.extensions.connection) -> None:
    apply_changes(store, [change(1, "online", source="api", started=T0, channel=668)])
    apply_changes(store, [change(1, "offline", at=T0 + 60, livestream=21, channel=668)])
    assert broadcasts(store, 1) == [(T0, T0 + 60, "api", "pusher", False, 21)]
    assert query(store, "SELECT last_livestream_id FROM kick_monitor.streamers WHERE id = 1") == [(21,)]


def test_a_later_start_after_a_confirmation_in_the_same_batch_is_still_a_new_broadcast(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [change(1, "online", started=T0, livestream=11, channel=668)])
    apply_changes(store, [
        change(1, "online", source="api", at=T0 + 500, livestream=11, channel=668),  # a confirmation: no start
        change(1, "online", source="api", at=T0 + 501, started=T0 + 400, channel=668),
    ])
    assert [b[:2] for b in broadcasts(store, 1)] == [(T0, T0 + 400), (T0 + 400, None)]


def test_an_end_when_no_livestream_was_ever_known(store: psycopg2.extensions.connection) -> None:
    apply_changes(store, [change(1, "offline", source="api", at=T0, channel=668)])  # reconciliation at start
    apply_changes(store, [change(1, "offline", at=T0 + 60, livestream=31, channel=668)])  # began and ended unseen
    assert [(b[4], b[5]) for b in broadcasts(store, 1)] == [(False, 31)]
    assert [h[:3] for h in history(store, 1)] == [
        ("unknown", "offline", False), ("offline", "online", True), ("online", "offline", False),
    ]
    # A broadcast the API saw (no id), ended by the API; Pusher's end of it comes late: nothing new.
    apply_changes(store, [change(2, "online", source="api", at=T0, started=T0)])
    apply_changes(store, [change(2, "offline", source="api", at=T0 + 60)])
    apply_changes(store, [change(2, "offline", at=T0 + 61, livestream=41)])
    assert len(broadcasts(store, 2)) == 1 and len(history(store, 2)) == 2


def test_an_end_long_after_a_broadcast_only_the_api_saw_is_of_another_one(
    store: psycopg2.extensions.connection,
) -> None:
    """The soak's lost transition (issue 18): the previous broadcast was seen by the API alone
    (no livestream id), start and end; the next one's start frame was not delivered; its end
    over Pusher, minutes later, is not a late end of the old one."""
    apply_changes(store, [change(2, "online", source="api", at=T0, started=T0)])
    apply_changes(store, [change(2, "offline", source="api", at=T0 + 60)])
    apply_changes(store, [change(2, "offline", at=T0 + 660, livestream=42)])
    assert [(b[0], b[1], b[5]) for b in broadcasts(store, 2)] == [(T0, T0 + 60, None), (T0 + 660, T0 + 660, 42)]
    assert [h[:3] for h in history(store, 2)][2:] == [("offline", "online", True), ("online", "offline", False)]
