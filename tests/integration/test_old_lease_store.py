"""Changes an earlier lease's owner spooled, replayed after the new owner wrote (issue 17), against
the real PostgreSQL: genuine observations, placed by their broadcast — the Pusher seen time is
recorded, no transition is written twice, and the row's (generation, seq) never moves back."""

from __future__ import annotations

import itertools
import time

import psycopg2.extensions
import pytest

from kick_monitor.messages import StatusChange
from kick_monitor.status_store import apply_changes, prepare

CHANNEL = 668
LIVESTREAM = 74000001
T0 = 1_790_000_000.0
_ids = itertools.count(1)


def change(status: str, source: str, *, generation: int, seq: int, at: float,
           livestream: int | None = LIVESTREAM, started: float | None = T0) -> StatusChange:
    online = status == "online"
    return StatusChange(
        f"old-lease:{next(_ids)}", CHANNEL, status, source,  # type: ignore[arg-type]
        "App\\Events\\StreamerIsLive" if online else "App\\Events\\StopStreamBroadcast",
        livestream, None, started if online else None, at, time.monotonic(), 0, generation, seq,
    )


@pytest.fixture
def store(conn: psycopg2.extensions.connection) -> psycopg2.extensions.connection:
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO kick_monitor.streamers (username, channel_id, kick_user_id)"
                    " VALUES ('xqc', %s, 676)", (CHANNEL,))
    prepare(conn)
    return conn


def read(conn: psycopg2.extensions.connection, statement: str) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(statement)
        rows = cur.fetchall()
    conn.rollback()
    return rows


def state(conn: psycopg2.extensions.connection) -> tuple[object, ...]:
    return read(conn, "SELECT status, order_generation, order_seq FROM kick_monitor.streamers")[0]


def transitions(conn: psycopg2.extensions.connection) -> list[tuple[object, ...]]:
    return read(conn, "SELECT previous_status, status, source FROM kick_monitor.status_events ORDER BY id")


def broadcasts(conn: psycopg2.extensions.connection) -> list[tuple[object, ...]]:
    return read(conn, """SELECT livestream_id, extract(epoch FROM pusher_start_seen_at)::float8,
                                extract(epoch FROM api_start_seen_at)::float8, ended_at IS NOT NULL,
                                extract(epoch FROM pusher_end_seen_at)::float8
                         FROM kick_monitor.broadcasts ORDER BY started_at""")


def test_an_old_owners_start_replayed_after_the_new_owner_wrote_records_its_pusher_seen_time(
    store: psycopg2.extensions.connection,
) -> None:
    spooled = change("online", "pusher", generation=5, seq=900, at=T0 + 1)  # PostgreSQL was down for it
    assert apply_changes(store, [change("online", "api", generation=6, seq=10, at=T0 + 30)]).transitions == 1
    assert apply_changes(store, [spooled]).transitions == 0  # the same broadcast: no second go-live
    assert state(store) == ("online", 6, 10)  # not moved back to the old generation
    assert transitions(store) == [("unknown", "online", "api")]
    assert broadcasts(store) == [(LIVESTREAM, T0 + 1, T0 + 30, False, None)]
    assert apply_changes(store, [spooled]).transitions == 0  # replayed twice: still nothing new
    assert broadcasts(store) == [(LIVESTREAM, T0 + 1, T0 + 30, False, None)]


def test_an_old_owners_end_replayed_after_the_new_owner_still_saw_the_broadcast_ends_it_once(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [change("online", "pusher", generation=5, seq=100, at=T0 + 1)])
    spooled_end = change("offline", "pusher", generation=5, seq=200, at=T0 + 20)
    apply_changes(store, [change("online", "api", generation=6, seq=10, at=T0 + 30)])  # the API lagging
    assert apply_changes(store, [spooled_end]).transitions == 1
    assert apply_changes(store, [change("offline", "api", generation=6, seq=11, at=T0 + 60,
                                        livestream=None)]).transitions == 0  # the new owner agrees later
    assert state(store) == ("offline", 6, 11)
    assert transitions(store) == [("unknown", "online", "pusher"), ("online", "offline", "pusher")]
    assert broadcasts(store) == [(LIVESTREAM, T0 + 1, T0 + 30, True, T0 + 20)]


def test_an_old_owners_whole_broadcast_the_new_owner_never_saw_is_recorded(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [change("online", "pusher", generation=5, seq=100, at=T0 + 1)])
    apply_changes(store, [change("offline", "pusher", generation=5, seq=200, at=T0 + 20)])
    later = LIVESTREAM + 1
    spooled = [change("online", "pusher", generation=5, seq=300, at=T0 + 400, livestream=later, started=T0 + 399),
               change("offline", "pusher", generation=5, seq=400, at=T0 + 500, livestream=later)]
    assert apply_changes(store, [change("offline", "api", generation=6, seq=10, at=T0 + 450,
                                        livestream=None)]).transitions == 0
    assert apply_changes(store, spooled).transitions == 2
    assert apply_changes(store, spooled).transitions == 0  # a second replay writes nothing twice
    assert state(store) == ("offline", 6, 11)  # one seq up: the replayed history follows the row's
    assert [s for _, s, _ in transitions(store)] == ["online", "offline", "online", "offline"]
    assert [(b[0], b[1], b[3], b[4]) for b in broadcasts(store)] == [
        (LIVESTREAM, T0 + 1, True, T0 + 20), (later, T0 + 400, True, T0 + 500)]


def in_writers_order(conn: psycopg2.extensions.connection) -> list[tuple[object, ...]]:
    return read(conn, "SELECT previous_status, status, inferred FROM kick_monitor.status_events"
                      " ORDER BY order_generation, order_seq, received_at, id")


def test_a_spool_replayed_after_the_outage_continues_the_chain_in_the_writers_order(
    store: psycopg2.extensions.connection,
) -> None:
    """The cluster's PostgreSQL-down run: the old owner committed a start, spooled the end and the next
    broadcast's start; the new owner's reconciliation recorded the offline first."""
    apply_changes(store, [change("online", "pusher", generation=5, seq=100, at=T0 + 1)])
    spooled = [change("offline", "pusher", generation=5, seq=200, at=T0 + 20),
               change("online", "pusher", generation=5, seq=300, at=T0 + 400, livestream=LIVESTREAM + 1,
                      started=T0 + 399)]
    assert apply_changes(store, [change("offline", "api", generation=6, seq=10, at=T0 + 450,
                                        livestream=None)]).transitions == 1
    assert apply_changes(store, spooled).transitions == 2  # the unseen broadcast: its start, its inferred end
    assert state(store) == ("offline", 6, 11)  # never left online: the new owner saw offline after that start
    assert in_writers_order(store) == [("unknown", "online", False), ("online", "offline", False),
                                       ("offline", "online", False), ("online", "offline", True)]
    assert apply_changes(store, [change("online", "pusher", generation=6, seq=20, at=T0 + 500,
                                        livestream=LIVESTREAM + 2, started=T0 + 499)]).transitions == 1
    assert state(store) == ("online", 6, 20)  # the new owner's next change compares as before
