"""Webhook changes merged with Pusher's in the writer (issue 16), against the real PostgreSQL.

A webhook carries no generation: it is placed by the broadcast its `started_at` names
(docs/architecture.md, "Across sources"). Every test feeds `apply_changes` what the workers
and the webhook receiver send and reads back the row, `broadcasts` and `status_events`.
"""

from __future__ import annotations

import itertools
import time

import psycopg2.extensions
import pytest

from kick_monitor.messages import StatusChange
from kick_monitor.status_store import apply_changes, prepare

T0 = 1_790_000_000.0
SID = 1
_seq = itertools.count(1000, 10)


def pusher(
    status: str, at: float, *, livestream: int | None = 11, generation: int = 1, seq: int | None = None
) -> StatusChange:
    """Pusher's frame; `at` is created_at for a start (its arrival too), the arrival for an end."""
    online = status == "online"
    n = next(_seq) if seq is None else seq
    return StatusChange(
        f"p:{n}", 668, status, "pusher",  # type: ignore[arg-type]
        "App\\Events\\StreamerIsLive" if online else "App\\Events\\StopStreamBroadcast",
        livestream, None, at if online else None, at, time.monotonic(), 0, generation, n, SID,
    )


def webhook(
    message: str, status: str, started: float, *, ended: float | None = None, received: float,
    title: str | None = None, category: str | None = None,
) -> StatusChange:
    """As the receiver makes it: generation 0, the message id as the key, Kick's times."""
    if status == "unknown":
        event, occurred = "livestream.metadata.updated", None
    else:
        event, occurred = "livestream.status.updated", started if status == "online" else ended
    return StatusChange(
        f"webhook:{message}", None, status, "webhook",  # type: ignore[arg-type]
        event, None, title, occurred, received, time.monotonic(), 0, 0, 0, SID, category,
        None if status == "unknown" else started,
    )


@pytest.fixture
def store(conn: psycopg2.extensions.connection) -> psycopg2.extensions.connection:
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO kick_monitor.streamers (id, username, channel_id, kick_user_id)"
                    " VALUES (1, 'xqc', 668, 676)")
    prepare(conn)
    return conn


def query(conn: psycopg2.extensions.connection, sql: str) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    conn.rollback()
    return rows


def epoch(column: str) -> str:
    return f"extract(epoch FROM {column})::float8"


def broadcasts(conn: psycopg2.extensions.connection) -> list[tuple[object, ...]]:
    """(started, ended, start source, end source, livestream id) in start order."""
    return query(conn, f"SELECT {epoch('started_at')}, {epoch('ended_at')}, start_source, end_source, livestream_id"
                       " FROM kick_monitor.broadcasts ORDER BY started_at, id")


def seen(conn: psycopg2.extensions.connection) -> list[tuple[object, ...]]:
    """Per broadcast: (pusher start, webhook start, pusher end, webhook end) seen times."""
    return query(conn, f"SELECT {epoch('pusher_start_seen_at')}, {epoch('webhook_start_seen_at')},"
                       f" {epoch('pusher_end_seen_at')}, {epoch('webhook_end_seen_at')}"
                       " FROM kick_monitor.broadcasts ORDER BY started_at, id")


def history(conn: psycopg2.extensions.connection) -> list[tuple[object, ...]]:
    """(previous, status, source, inferred) in the documented clock-free order."""
    return query(conn, "SELECT previous_status, status, source, inferred FROM kick_monitor.status_events"
                       " ORDER BY order_generation, order_seq, received_at, id")


def row(conn: psycopg2.extensions.connection) -> tuple[object, ...]:
    [found] = query(conn, "SELECT status, order_generation, order_seq, stream_title FROM kick_monitor.streamers")
    return found


def test_pusher_first_then_late_webhooks_make_no_second_transition(store: psycopg2.extensions.connection) -> None:
    apply_changes(store, [pusher("online", T0, seq=100)])
    assert apply_changes(store, [webhook("a", "online", T0 + 1, received=T0 + 30)]).transitions == 0
    apply_changes(store, [pusher("offline", T0 + 3600, seq=200)])
    late_end = webhook("b", "offline", T0 + 1, ended=T0 + 3599, received=T0 + 3650)
    assert apply_changes(store, [late_end]).transitions == 0
    assert broadcasts(store) == [(T0, T0 + 3600, "pusher", "pusher", 11)]  # Pusher's end came first: it stays
    assert seen(store) == [(T0, T0 + 30, T0 + 3600, T0 + 3650)]  # the webhook's delay: 30 s, 50 s
    assert history(store) == [("unknown", "online", "pusher", False), ("online", "offline", "pusher", False)]
    assert row(store)[:3] == ("offline", 1, 200)


def test_webhook_first_then_pusher_keeps_one_broadcast_and_the_workers_order(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [pusher("offline", T0 - 100, livestream=None, seq=50)])
    assert apply_changes(store, [webhook("a", "online", T0, received=T0 + 0.2)]).transitions == 1
    assert row(store)[:3] == ("online", 1, 50)  # the row's (generation, seq) did not move
    # Pusher's frame of the same broadcast, late (its created_at within the tolerance): a touch.
    assert apply_changes(store, [pusher("online", T0 + 0.5, seq=100)]).transitions == 0
    assert broadcasts(store) == [(T0, None, "webhook", None, 11)]
    # The end over the webhook first: the transition, with Kick's ended_at.
    assert apply_changes(store, [webhook("b", "offline", T0, ended=T0 + 600, received=T0 + 601)]).transitions == 1
    assert apply_changes(store, [pusher("offline", T0 + 602, seq=200)]).transitions == 0
    assert broadcasts(store) == [(T0, T0 + 600, "webhook", "webhook", 11)]
    assert seen(store) == [(T0 + 0.5, T0 + 0.2, T0 + 602, T0 + 601)]  # both sources, each one's delay
    assert history(store) == [
        ("unknown", "offline", "pusher", False), ("offline", "online", "webhook", False),
        ("online", "offline", "webhook", False),
    ]
    assert row(store)[:3] == ("offline", 1, 200)
    # A worker's next start still compares as before: newer (generation, seq) wins.
    assert apply_changes(store, [pusher("online", T0 + 900, livestream=12, seq=300)]).transitions == 1


def test_a_late_webhook_about_an_old_broadcast_never_moves_the_streamer_back(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [pusher("online", T0, seq=100)])
    apply_changes(store, [pusher("offline", T0 + 100, seq=200)])
    apply_changes(store, [pusher("online", T0 + 1000, livestream=12, seq=300)])
    old_start = webhook("a", "online", T0 + 2, received=T0 + 1100)
    old_end = webhook("b", "offline", T0 + 2, ended=T0 + 99, received=T0 + 1101)
    assert apply_changes(store, [old_start, old_end]).transitions == 0
    assert row(store)[:3] == ("online", 1, 300)
    assert broadcasts(store) == [(T0, T0 + 100, "pusher", "pusher", 11), (T0 + 1000, None, "pusher", None, 12)]
    assert seen(store) == [(T0, T0 + 1100, T0 + 100, T0 + 1101), (T0 + 1000, None, None, None)]
    assert len(history(store)) == 3


def test_a_redelivered_webhook_is_recorded_once(store: psycopg2.extensions.connection) -> None:
    first = webhook("a", "online", T0, received=T0 + 1)
    again = webhook("a", "online", T0, received=T0 + 20)  # Kick re-sent it: same message id, later
    assert apply_changes(store, [first, again]).transitions == 1
    assert apply_changes(store, [again]).transitions == 0
    end = webhook("b", "offline", T0, ended=T0 + 50, received=T0 + 51)
    assert apply_changes(store, [end]).transitions == 1
    assert apply_changes(store, [webhook("b", "offline", T0, ended=T0 + 50, received=T0 + 90)]).transitions == 0
    assert history(store) == [("unknown", "online", "webhook", False), ("online", "offline", "webhook", False)]
    assert seen(store) == [(None, T0 + 1, None, T0 + 51)]
    assert broadcasts(store) == [(T0, T0 + 50, "webhook", "webhook", None)]


def test_metadata_update_changes_the_open_broadcasts_title_only(store: psycopg2.extensions.connection) -> None:
    apply_changes(store, [pusher("online", T0, seq=100)])
    update = webhook("m1", "unknown", T0, received=T0 + 60, title="new title", category="Just Chatting")
    assert apply_changes(store, [update]).transitions == 0
    assert row(store) == ("online", 1, 100, "new title")
    assert query(store, "SELECT last_title, category FROM kick_monitor.broadcasts") == [("new title", "Just Chatting")]
    assert seen(store) == [(T0, None, None, None)]  # not a report of the start
    apply_changes(store, [pusher("offline", T0 + 100, seq=200)])
    late = webhook("m2", "unknown", T0, received=T0 + 200, title="after the end")
    assert apply_changes(store, [late]).transitions == 0
    assert row(store) == ("offline", 1, 200, "new title")
    assert query(store, "SELECT last_title FROM kick_monitor.broadcasts") == [("new title",)]
    assert len(history(store)) == 2


def test_a_webhook_about_a_later_broadcast_ends_the_open_one(store: psycopg2.extensions.connection) -> None:
    apply_changes(store, [pusher("online", T0, seq=100)])
    # Pusher missed the end and the next start; the webhook names a start 1,000 s later.
    assert apply_changes(store, [webhook("a", "online", T0 + 1000, received=T0 + 1001)]).transitions == 2
    assert broadcasts(store) == [(T0, T0 + 1000, "pusher", "webhook", 11), (T0 + 1000, None, "webhook", None, None)]
    assert history(store) == [
        ("unknown", "online", "pusher", False), ("online", "offline", "webhook", True),
        ("offline", "online", "webhook", False),
    ]
    assert row(store)[:3] == ("online", 1, 100)
    # Pusher's frame of that broadcast arrives: the same one (start within the tolerance), named now.
    assert apply_changes(store, [pusher("online", T0 + 1000.3, livestream=12, seq=200)]).transitions == 0
    assert [b[4] for b in broadcasts(store)] == [11, 12]


def test_an_end_of_a_broadcast_nobody_saw_start_is_recorded_with_its_inferred_start(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [pusher("online", T0, seq=100)])
    apply_changes(store, [pusher("offline", T0 + 100, seq=200)])
    unseen = webhook("a", "offline", T0 + 500, ended=T0 + 600, received=T0 + 601)
    assert apply_changes(store, [unseen]).transitions == 2
    assert broadcasts(store) == [
        (T0, T0 + 100, "pusher", "pusher", 11), (T0 + 500, T0 + 600, "webhook", "webhook", None),
    ]
    assert history(store)[2:] == [("offline", "online", "webhook", True), ("online", "offline", "webhook", False)]
    assert row(store)[:3] == ("offline", 1, 200)


def api(status: str, *, asked: float, received: float, seq: int, started: float | None = None) -> StatusChange:
    """A worker's reconciliation verdict: `asked`, when its question went to the API."""
    return StatusChange(
        f"a:{seq}", 668, status, "api", "reconcile",  # type: ignore[arg-type]
        None, None, started, received, time.monotonic(), 0, 1, seq, SID, None, started, asked,
    )


def test_a_verdict_asked_before_a_webhook_started_the_broadcast_is_dropped_one_after_it_applies(
    store: psycopg2.extensions.connection,
) -> None:
    apply_changes(store, [pusher("offline", T0 - 100, livestream=None, seq=50)])
    assert apply_changes(store, [webhook("a", "online", T0, received=T0 + 0.2)]).transitions == 1
    assert apply_changes(store, [api("offline", asked=T0 - 0.1, received=T0 + 0.4, seq=100)]).transitions == 0
    assert row(store)[:3] == ("online", 1, 50)  # dropped whole: not even the row's order moved
    assert apply_changes(store, [api("offline", asked=T0 + 5, received=T0 + 5.3, seq=200)]).transitions == 1
    assert history(store)[-1] == ("online", "offline", "api", False)
    assert row(store)[:3] == ("offline", 1, 200)


def test_a_late_webhook_repeating_pusher_does_not_make_a_verdict_stale(
    store: psycopg2.extensions.connection,
) -> None:
    """Only a webhook that was first to report the start or end can have been undone by a verdict."""
    apply_changes(store, [pusher("online", T0, seq=100)])
    assert apply_changes(store, [webhook("a", "online", T0 + 1, received=T0 + 30)]).transitions == 0
    # Pusher missed the end; the API, asked before that late webhook arrived, saw it.
    assert apply_changes(store, [api("offline", asked=T0 + 20, received=T0 + 35, seq=200)]).transitions == 1
    assert row(store)[:3] == ("offline", 1, 200)
