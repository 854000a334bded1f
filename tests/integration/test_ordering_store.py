"""The writer's ordering rule against the real PostgreSQL: (generation, seq), never the wall clock.

Every test feeds `apply_changes` what a worker would send and reads back the row and the
history; wall-clock `received_at` values are chosen to disagree with the real order, so a
rule that still looked at them would fail here.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest

from kick_monitor.messages import StatusChange
from kick_monitor.migrations import MIGRATIONS
from kick_monitor.ordering import allocate_generation, check_clock, read_offset
from kick_monitor.status_store import apply_changes, prepare
from tests.conftest import DatabaseFactory

CHANNEL = 668
T0 = 1_790_000_000.0
_ids = itertools.count(1)


def change(status: str, *, generation: int, seq: int, at: float, livestream: int | None = None) -> StatusChange:
    """A Pusher change as a worker makes it; `at` is its (possibly wrong) wall-clock time."""
    online = status == "online"
    return StatusChange(
        f"t:{next(_ids)}", CHANNEL, status, "pusher",  # type: ignore[arg-type]
        "App\\Events\\StreamerIsLive" if online else "App\\Events\\StopStreamBroadcast",
        (livestream or 74000001) if online else None, None, None, at, time.monotonic(), 0,
        generation, seq,
    )


@pytest.fixture
def store(conn: psycopg2.extensions.connection) -> psycopg2.extensions.connection:
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO kick_monitor.streamers (username, channel_id, kick_user_id) VALUES ('xqc', %s, 676)",
            (CHANNEL,),
        )
    prepare(conn)
    return conn


def row(conn: psycopg2.extensions.connection) -> tuple[str, int, int]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT status, order_generation, order_seq FROM kick_monitor.streamers WHERE channel_id = %s",
            (CHANNEL,),
        )
        found = cur.fetchone()
    conn.rollback()
    assert found is not None
    return found[0], found[1], found[2]


def history(conn: psycopg2.extensions.connection) -> list[tuple[str, str, int, int]]:
    """(previous, status, generation, seq) per recorded transition, in clock-free order."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT previous_status, status, order_generation, order_seq FROM kick_monitor.status_events"
            " ORDER BY order_generation, order_seq, received_at, id"
        )
        rows = [(r[0], r[1], r[2], r[3]) for r in cur.fetchall()]
    conn.rollback()
    return rows


def test_clock_stepped_back_within_one_generation_changes_still_apply(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [change("online", generation=5, seq=100, at=T0)])
    # The clock stepped back 30 s: the next changes carry older wall-clock times.
    apply_changes(store, [change("offline", generation=5, seq=200, at=T0 - 30)])
    apply_changes(store, [change("online", generation=5, seq=300, at=T0 - 29, livestream=74000002)])
    assert row(store) == ("online", 5, 300)
    assert history(store) == [
        ("unknown", "online", 5, 100), ("online", "offline", 5, 200), ("offline", "online", 5, 300),
    ]


def test_resent_and_reordered_changes_never_move_a_streamer_backwards(
    store: psycopg2.extensions.connection,
) -> None:
    online = change("online", generation=5, seq=100, at=T0)
    offline = change("offline", generation=5, seq=200, at=T0 - 5)
    assert apply_changes(store, [offline]).transitions == 1
    assert apply_changes(store, [online]).transitions == 0  # older, arriving late: dropped
    assert apply_changes(store, [offline]).transitions == 0  # re-sent: no-op
    assert apply_changes(store, [online, offline]).transitions == 0  # both again, one batch
    assert row(store) == ("offline", 5, 200)
    assert history(store) == [("unknown", "offline", 5, 200)]


def test_a_new_generation_outranks_the_old_owner_whatever_the_clocks_say(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [change("online", generation=5, seq=9_000, at=T0)])
    # A respawned worker (new generation) with its clock 10 s behind and a smaller seq.
    apply_changes(store, [change("offline", generation=6, seq=10, at=T0 - 10)])
    assert row(store) == ("offline", 6, 10)
    # The old owner's late change (its process died with it unacknowledged) loses.
    assert apply_changes(store, [change("online", generation=5, seq=9_500, at=T0 + 60)]).transitions == 0
    assert row(store) == ("offline", 6, 10)


def test_a_batch_is_ordered_by_generation_and_seq_not_by_received_at(
    store: psycopg2.extensions.connection,
) -> None:
    batch = [  # arrival order and wall-clock order both disagree with the real order
        change("offline", generation=7, seq=2, at=T0 - 100),
        change("online", generation=7, seq=3, at=T0 - 200, livestream=74000002),
        change("online", generation=7, seq=1, at=T0),
    ]
    result = apply_changes(store, batch)
    assert result.transitions == 3
    assert row(store) == ("online", 7, 3)
    assert history(store) == [
        ("unknown", "online", 7, 1), ("online", "offline", 7, 2), ("offline", "online", 7, 3),
    ]


def test_changes_without_an_order_fall_back_to_received_at(store: psycopg2.extensions.connection) -> None:
    """0/0: spooled by a release before migration 2; only received_at can order those."""
    apply_changes(store, [change("online", generation=0, seq=0, at=T0)])
    assert apply_changes(store, [change("offline", generation=0, seq=0, at=T0 - 1)]).transitions == 0
    assert apply_changes(store, [change("offline", generation=0, seq=0, at=T0 + 1)]).transitions == 1
    # Any generation outranks a row written without one, even with an older clock.
    assert apply_changes(store, [change("online", generation=1, seq=1, at=T0 - 3600)]).transitions == 1
    # ...and a change without an order never outranks a row written with one.
    assert apply_changes(store, [change("offline", generation=0, seq=0, at=T0 + 3600)]).transitions == 0
    assert row(store) == ("online", 1, 1)


def test_generations_only_grow_across_connections(
    conn: psycopg2.extensions.connection, database_url: str
) -> None:
    other = psycopg2.connect(database_url)
    try:
        taken = [allocate_generation(c) for c in (conn, other, conn, other)]
    finally:
        other.close()
    assert taken == sorted(taken) and len(set(taken)) == 4 and taken[0] >= 1


def test_migration_2_keeps_rows_and_history_written_before_it(make_database: DatabaseFactory) -> None:
    url = make_database(migrated=False)
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE SCHEMA kick_monitor")
            cur.execute(
                "CREATE TABLE kick_monitor.schema_migrations"
                " (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute(MIGRATIONS[0].sql)
            cur.execute("INSERT INTO kick_monitor.schema_migrations (version, name) VALUES (1, 'x')")
            cur.execute(
                "INSERT INTO kick_monitor.streamers (username, channel_id, status, last_event_at)"
                " VALUES ('xqc', %s, 'online', now() + interval '1 hour')", (CHANNEL,),
            )
            cur.execute(
                "INSERT INTO kick_monitor.status_events (change_id, streamer_id, channel_id, status,"
                " previous_status, source, event, received_at) VALUES ('old', 1, %s, 'online', 'unknown',"
                " 'pusher', 'x', now())", (CHANNEL,),
            )
        from kick_monitor.migrations import migrate

        applied = [m.version for m in migrate(conn)]
        assert applied == list(range(2, len(applied) + 2)), applied  # 2 and every later one
        assert migrate(conn) == []
        prepare(conn)
        assert row(conn) == ("online", 0, 0)
        # The row's last_event_at is an hour in the future (a clock that was ahead): the
        # first change of a generation still applies.
        assert apply_changes(conn, [change("offline", generation=1, seq=1, at=time.time())]).transitions == 1
        assert [h[:2] for h in history(conn)] == [("unknown", "online"), ("online", "offline")]
        # An older release's insert (no order columns) still works on the new schema.
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO kick_monitor.status_events (change_id, streamer_id, channel_id, status,"
                " previous_status, source, event, received_at) VALUES ('older-release', 1, %s, 'online',"
                " 'offline', 'api', 'x', now())", (CHANNEL,),
            )
    finally:
        conn.close()


def test_clock_check_warns_once_with_the_size_of_the_jump(
    store: psycopg2.extensions.connection, caplog: pytest.LogCaptureFixture
) -> None:
    assert abs(read_offset(store)) < 1.0  # same host, same clock
    caplog.set_level(logging.WARNING, logger="kick_monitor.ordering")
    assert check_clock(store).behind_newest < 1.0
    assert not caplog.records
    # An earlier run with its clock 10 s ahead left its times in the row.
    with store, store.cursor() as cur:
        cur.execute("UPDATE kick_monitor.streamers SET last_event_at = now() + interval '10 seconds'")
    reading = check_clock(store)
    assert 9.0 < reading.behind_newest < 11.0
    [record] = caplog.records
    assert "10." in record.getMessage() or "9.9" in record.getMessage()


def test_two_writers_on_one_streamer_keep_one_chain_of_transitions(
    store: psycopg2.extensions.connection, database_url: str
) -> None:
    """Two writers (a cluster's nodes, one database) commit changes of one streamer at once: the
    row lock orders their read-decide-write, so no transition is decided on a stale row."""
    other = psycopg2.connect(database_url)
    prepare(other)
    changes = [change("online" if n % 2 else "offline", generation=3, seq=n, at=T0 + n, livestream=74000000 + n)
               for n in range(1, 201)]
    errors: list[BaseException] = []

    def write(conn: psycopg2.extensions.connection, mine: list[StatusChange]) -> None:
        try:
            for one in mine:
                apply_changes(conn, [one])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(c, changes[k::2])) for k, c in enumerate((store, other))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        other.close()
    assert not errors
    rows = history(store)
    for before, after in itertools.pairwise(rows):
        assert after[0] == before[1], (before, after)  # each transition starts where the last ended
    assert row(store) == ("offline", 3, 200)  # the newest change always wins, whichever writer had it
