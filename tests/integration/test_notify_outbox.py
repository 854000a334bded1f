"""The notification outbox against a real PostgreSQL: deliveries once, late and flap rules, states.

Broadcasts are written here as the writer writes them (rows of kick_monitor.broadcasts);
the outbox's functions are the notifier's, called directly, without the role's loop.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.extensions
import pytest

from kick_monitor.notify_outbox import Policy, claim, discover, load_cursor, record, recover
from kick_monitor.notify_sender import Outcome
from kick_monitor.notify_targets import add_target, list_targets, load_targets
from tests.service import query

POLICY = Policy(max_age=600.0, late="skip", regrace=300.0)
URL = "https://discord.com/api/webhooks/1/token-abcdefghijklmnop"


def streamer(conn: psycopg2.extensions.connection, slug: str) -> int:
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO kick_monitor.streamers (username) VALUES (%s) RETURNING id", (slug,))
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def broadcast(conn: psycopg2.extensions.connection, streamer_id: int, started: datetime,
              ended: datetime | None = None) -> int:
    with conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO kick_monitor.broadcasts (streamer_id, started_at, ended_at, start_title, category,
                   start_source, end_source) VALUES (%s, %s, %s, 'hello', 'IRL', 'pusher', %s) RETURNING id""",
            (streamer_id, started, ended, None if ended is None else "pusher"),
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def end(conn: psycopg2.extensions.connection, broadcast_id: int, at: datetime) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE kick_monitor.broadcasts SET ended_at = %s, end_source = 'pusher', updated_at = now()"
                    " WHERE id = %s", (at, broadcast_id))


def deliveries(conn: psycopg2.extensions.connection) -> list[tuple[int, int, str, str]]:
    return [tuple(r) for r in query(conn, "SELECT broadcast_id, target_id, event, state"
                                           " FROM kick_monitor.notify_deliveries ORDER BY id")]


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def cursor(conn: psycopg2.extensions.connection) -> int:
    return load_cursor(conn)  # at the first start: after every broadcast so far


def test_a_new_broadcast_gets_one_delivery_per_wanting_target_however_often_it_is_found(
    conn: psycopg2.extensions.connection, cursor: int
) -> None:
    xqc, other = streamer(conn, "xqc"), streamer(conn, "other")
    everyone = add_target(conn, URL)
    only_xqc = add_target(conn, URL + "2", streamers=["xqc"], on="both")
    offline_only = add_target(conn, URL + "3", on="offline")
    targets = load_targets(conn)
    b1 = broadcast(conn, xqc, now())
    b2 = broadcast(conn, other, now())
    for _ in range(3):  # sweep, notification, sweep again: the same rows
        discover(conn, targets, POLICY, low=cursor, ids=[b1, b2], all_ends=True)
    assert sorted(deliveries(conn)) == sorted([
        (b1, everyone.id, "live", "pending"), (b1, only_xqc.id, "live", "pending"),
        (b2, everyone.id, "live", "pending"),
    ])
    assert offline_only.id not in {d[1] for d in deliveries(conn)}


def test_claim_marks_sending_in_its_own_commit_and_record_finishes(
    conn: psycopg2.extensions.connection, cursor: int, database_url: str
) -> None:
    target = add_target(conn, URL)
    broadcast(conn, streamer(conn, "xqc"), now())
    broadcast(conn, streamer(conn, "other"), now())
    discover(conn, load_targets(conn), POLICY, low=cursor)
    (claimed,), _ = claim(conn, [target.id])  # one per target at a time
    assert claimed.announcement.username == "xqc" and claimed.announcement.category == "IRL"
    other = psycopg2.connect(database_url)  # another session sees `sending` committed
    try:
        assert query(other, f"SELECT state FROM kick_monitor.notify_deliveries WHERE id = {claimed.id}") == [
            ("sending",)]
    finally:
        other.close()
    record(conn, [(claimed.id, target.id, Outcome("sent", 204))])
    assert query(conn, f"SELECT state, attempts, sent_at IS NOT NULL FROM kick_monitor.notify_deliveries"
                       f" WHERE id = {claimed.id}") == [("sent", 1, True)]
    (second,), _ = claim(conn, [target.id])
    assert second.announcement.username == "other"


def test_late_discoveries_are_skipped_or_sent_as_was_live(conn: psycopg2.extensions.connection, cursor: int) -> None:
    xqc = streamer(conn, "xqc")
    add_target(conn, URL, on="both")
    old = broadcast(conn, xqc, now() - timedelta(hours=1))  # live, started an hour ago
    ended = broadcast(conn, streamer(conn, "gone"), now() - timedelta(minutes=3), now() - timedelta(minutes=1))
    discover(conn, load_targets(conn), POLICY, low=cursor, all_ends=True)
    states = {(b, e): s for b, _, e, s in deliveries(conn)}
    assert states == {(old, "live"): "skipped", (ended, "live"): "skipped", (ended, "offline"): "skipped"}
    reasons = query(conn, "SELECT last_error FROM kick_monitor.notify_deliveries WHERE event = 'live' ORDER BY id")
    assert "after it started" in reasons[0][0] and "ended" in reasons[1][0]


def test_was_live_mode_sends_one_late_message(conn: psycopg2.extensions.connection, cursor: int) -> None:
    add_target(conn, URL, on="both")
    ended = broadcast(conn, streamer(conn, "gone"), now() - timedelta(minutes=3), now() - timedelta(minutes=1))
    discover(conn, load_targets(conn), Policy(600.0, "was_live", 300.0), low=cursor, all_ends=True)
    assert query(conn, "SELECT event, state, late FROM kick_monitor.notify_deliveries ORDER BY event") == [
        ("live", "pending", True), ("offline", "skipped", False)]
    (claimed,), _ = claim(conn, [1])
    assert claimed.announcement.late and claimed.announcement.ended_at is not None
    assert ended


def test_a_flap_within_the_grace_is_announced_once(conn: psycopg2.extensions.connection, cursor: int) -> None:
    xqc = streamer(conn, "xqc")
    target = add_target(conn, URL, on="both")
    targets = load_targets(conn)
    b1 = broadcast(conn, xqc, now() - timedelta(seconds=60))
    discover(conn, targets, POLICY, low=cursor, ids=[b1])
    end(conn, b1, now() - timedelta(seconds=30))
    discover(conn, targets, POLICY, low=cursor, ids=[b1])
    assert query(conn, "SELECT event, state, due_at > now() + interval '200 seconds'"
                       " FROM kick_monitor.notify_deliveries ORDER BY id") == [
        ("live", "pending", False), ("offline", "pending", True)]  # the offline waits the grace
    b2 = broadcast(conn, xqc, now())  # back 30 s later
    discover(conn, targets, POLICY, low=cursor, ids=[b2])
    assert deliveries(conn) == [(b1, target.id, "live", "pending"), (b1, target.id, "offline", "skipped"),
                                (b2, target.id, "live", "skipped")]
    assert query(conn, f"SELECT continues FROM kick_monitor.notify_broadcasts WHERE broadcast_id = {b2}") == [(b1,)]


def test_a_restart_after_the_grace_is_a_new_announcement(conn: psycopg2.extensions.connection, cursor: int) -> None:
    xqc = streamer(conn, "xqc")
    add_target(conn, URL, on="both")
    targets = load_targets(conn)
    broadcast(conn, xqc, now() - timedelta(seconds=500), now() - timedelta(seconds=400))
    discover(conn, targets, Policy(600.0, "was_live", 300.0), low=cursor, all_ends=True)
    b2 = broadcast(conn, xqc, now())
    discover(conn, targets, POLICY, low=cursor, ids=[b2])
    assert (b2, 1, "live", "pending") in deliveries(conn)


def test_sending_found_at_start_becomes_uncertain_and_is_never_claimed(
    conn: psycopg2.extensions.connection, cursor: int
) -> None:
    target = add_target(conn, URL)
    broadcast(conn, streamer(conn, "xqc"), now())
    discover(conn, load_targets(conn), POLICY, low=cursor)
    (claimed,), _ = claim(conn, [target.id])
    # the notifier is killed here, between marking and recording; the next one starts:
    assert recover(conn) == [(claimed.id, "discord")]
    assert claim(conn, [target.id]) == ([], [])
    assert deliveries(conn)[0][3] == "uncertain"
    assert dict(list_targets(conn)[0].counts) == {"uncertain": 1}
    record(conn, [(claimed.id, target.id, Outcome("sent", 204))])  # the dead one's answer, learnt later: the truth
    assert deliveries(conn)[0][3] == "sent"


def test_a_retry_waits_its_retry_after_and_a_404_disables_the_target(
    conn: psycopg2.extensions.connection, cursor: int
) -> None:
    target = add_target(conn, URL)
    xqc = streamer(conn, "xqc")
    broadcast(conn, xqc, now())
    discover(conn, load_targets(conn), POLICY, low=cursor)
    (first,), _ = claim(conn, [target.id])
    record(conn, [(first.id, target.id, Outcome("retry", 429, 30.0, "HTTP 429 (rate limited)", rate_limited=True))])
    assert claim(conn, [target.id]) == ([], [])  # not before its Retry-After
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE kick_monitor.notify_deliveries SET due_at = now()")
    (again,), _ = claim(conn, [target.id])
    assert again.id == first.id and again.attempts == 2
    with conn, conn.cursor() as cur:  # meanwhile the stream ended: a go-live is no longer news
        cur.execute("UPDATE kick_monitor.notify_deliveries SET state = 'pending', due_at = now()")
        cur.execute("UPDATE kick_monitor.broadcasts SET ended_at = now()")
    assert claim(conn, [target.id], POLICY) == ([], [target.id])
    assert query(conn, "SELECT state, last_error LIKE 'late:%' FROM kick_monitor.notify_deliveries") == [
        ("skipped", True)]
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE kick_monitor.notify_deliveries SET state = 'pending'")
    (again,), _ = claim(conn, [target.id], Policy(600.0, "was_live", 300.0))
    assert again.announcement.late and again.announcement.ended_at is not None
    record(conn, [(again.id, target.id, Outcome("gone", 404, 0.0, "HTTP 404: the webhook was deleted or revoked"))])
    (shown,) = list_targets(conn)
    assert not shown.enabled and "404" in (shown.disabled_reason or "") and "notify enable" in (shown.disabled_reason
                                                                                                or "")
    assert not shown.wants("live", "xqc")


def test_a_late_lower_id_is_found_by_the_sweep(conn: psycopg2.extensions.connection, cursor: int) -> None:
    """Ids come from a sequence: one taken first can commit later. The range above the cursor is re-read."""
    add_target(conn, URL)
    targets = load_targets(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT nextval('kick_monitor.broadcasts_id_seq')")
        row = cur.fetchone()
    conn.commit()
    assert row is not None
    early_id = int(row[0])
    later = broadcast(conn, streamer(conn, "later"), now())
    first = discover(conn, targets, POLICY, low=cursor, ids=[later])
    assert first.max_id == later
    early = streamer(conn, "early")
    with conn, conn.cursor() as cur:  # the lower id commits now
        cur.execute("""INSERT INTO kick_monitor.broadcasts (id, streamer_id, started_at, start_source)
                       VALUES (%s, %s, now(), 'pusher')""", (early_id, early))
    discover(conn, targets, POLICY, low=cursor)  # the sweep: from the cursor, not from the max seen
    assert {d[0] for d in deliveries(conn)} == {early_id, later}


def test_a_backlog_is_handled_in_bounded_rounds(conn: psycopg2.extensions.connection, cursor: int) -> None:
    """After a long outage thousands of broadcasts wait: each round takes a bounded share (heartbeats go on)."""
    from kick_monitor.notify_outbox import ROUND_STARTS

    add_target(conn, URL)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO kick_monitor.streamers (username) SELECT 'b' || g FROM generate_series(1, %s) g",
                    (ROUND_STARTS + 20,))
        cur.execute("INSERT INTO kick_monitor.broadcasts (streamer_id, started_at, start_source)"
                    " SELECT id, now(), 'pusher' FROM kick_monitor.streamers")
    targets = load_targets(conn)
    first = discover(conn, targets, POLICY, low=cursor, all_ends=True)
    assert first.more and len(deliveries(conn)) == ROUND_STARTS
    second = discover(conn, targets, POLICY, low=cursor, all_ends=True)
    assert not second.more and len(deliveries(conn)) == ROUND_STARTS + 20


def test_streamers_no_target_announces_are_not_followed(conn: psycopg2.extensions.connection, cursor: int) -> None:
    add_target(conn, URL, streamers=["xqc"], on="both")
    wanted, other = broadcast(conn, streamer(conn, "xqc"), now()), broadcast(conn, streamer(conn, "other"), now())
    discover(conn, load_targets(conn), POLICY, low=cursor, ids=[wanted, other], slugs=["xqc"])
    assert query(conn, "SELECT broadcast_id FROM kick_monitor.notify_broadcasts") == [(wanted,)]
    assert [d[0] for d in deliveries(conn)] == [wanted]
