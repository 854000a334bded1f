"""Retention on the real PostgreSQL: old history goes in small batches, young history stays,
one pruner per deployment (advisory lock), and pruning never waits on the writer's locks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2.extras import execute_values

from kick_monitor.config import ConfigError, load_settings, parse_retention
from kick_monitor.database import connect
from kick_monitor.notify_outbox import Policy, discover
from kick_monitor.notify_targets import load_targets
from kick_monitor.retention import PRUNE_LOCK_KEY, Pruner, prune, prune_batch, rules_for

DAY = 86400


def add_history(conn: psycopg2.extensions.connection, ages_days: list[float], tag: str) -> None:
    """History rows recorded `age` days ago, inserted oldest first (ids grow with time, as the writer's do)."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO kick_monitor.streamers (username, channel_id) VALUES (%s, %s)"
                    " ON CONFLICT (username) DO NOTHING", ("retained", 1))
        rows = [
            (f"{tag}-{i}", 1, 1, "online" if i % 2 else "offline", "unknown", "pusher", "test", age)
            for i, age in enumerate(sorted(ages_days, reverse=True))
        ]
        execute_values(
            cur,
            "INSERT INTO kick_monitor.status_events (change_id, streamer_id, channel_id, status, previous_status,"
            " source, event, received_at, recorded_at) SELECT v.c, v.s, v.ch, v.st, v.p, v.src, v.e,"
            " now() - make_interval(secs => v.age * 86400), now() - make_interval(secs => v.age * 86400)"
            " FROM (VALUES %s) AS v(c, s, ch, st, p, src, e, age)",
            rows, template="(%s, %s::bigint, %s::bigint, %s, %s, %s, %s, %s::float8)", page_size=1000,
        )
    conn.commit()


def ages(conn: psycopg2.extensions.connection) -> list[float]:
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM now() - recorded_at) / 86400 FROM kick_monitor.status_events"
                    " ORDER BY id")
        found = [float(r[0]) for r in cur.fetchall()]
    conn.rollback()
    return found


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    connection = connect(database_url)
    yield connection
    connection.close()


def test_retention_setting_parses_durations_and_off() -> None:
    assert parse_retention("400d") == 400 * DAY
    assert parse_retention(" 12H ") == 12 * 3600
    assert parse_retention("2w") == 14 * DAY
    assert parse_retention("0") is None
    assert parse_retention("off") is None
    assert load_settings(environ={}).history_retention == "400d"
    assert load_settings(environ={"KICK_MONITOR_HISTORY_RETENTION": "OFF"}).history_retention == "off"
    assert [rule.name for rule in rules_for("off")] == ["notify deliveries", "notify broadcasts", "cluster nodes"]
    with pytest.raises(ConfigError, match=r"^KICK_MONITOR_HISTORY_RETENTION: must be a duration like 400d"):
        load_settings(environ={"KICK_MONITOR_HISTORY_RETENTION": "400"})


def test_prune_deletes_only_rows_past_retention_in_bounded_batches(conn: psycopg2.extensions.connection) -> None:
    add_history(conn, [500.0] * 250 + [401.0] * 50 + [399.0] * 30 + [1.0] * 20, "a")
    rules = [rule for rule in rules_for("400d") if rule.name == "history"]
    first = prune_batch(conn, rules[0], batch=100)
    assert first == 100  # one slice of the oldest, never more than the batch
    deleted = prune(conn, rules, batch=100, pause=0.0)
    assert deleted == {"history": 200}
    remaining = ages(conn)
    assert len(remaining) == 50
    assert all(age < 400 for age in remaining)
    assert prune(conn, rules, batch=100, pause=0.0) == {"history": 0}  # nothing expired: one probe, done


def test_forever_keeps_everything(conn: psycopg2.extensions.connection) -> None:
    add_history(conn, [5000.0] * 10, "f")
    assert "history" not in prune(conn, rules_for("0"), pause=0.0)
    assert len(ages(conn)) == 10


def test_one_pruner_per_deployment_and_it_does_not_wait_on_locks(database_url: str,
                                                                  conn: psycopg2.extensions.connection) -> None:
    add_history(conn, [30.0] * 40 + [1.0] * 5, "l")
    pruner = Pruner(lambda: connect(database_url), "7d", batch=10, pause=0.0)
    holder = connect(database_url)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (PRUNE_LOCK_KEY,))
        holder.commit()
        assert pruner.run_round() is None  # another process prunes: skip, do not wait
        assert len(ages(conn)) == 45
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK_KEY,))
            # a writer-like transaction holding a row lock on the oldest row: the batch gives up fast
            cur.execute("SELECT id FROM kick_monitor.status_events ORDER BY id LIMIT 1 FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(psycopg2.errors.LockNotAvailable):
            pruner.run_round()
        assert time.monotonic() - started < 2.0
        holder.rollback()
        assert pruner.run_round()["history"] == 40
        assert len(ages(conn)) == 5
    finally:
        holder.close()
        pruner.stop()


def test_the_pruner_thread_prunes_and_stops(database_url: str, conn: psycopg2.extensions.connection) -> None:
    add_history(conn, [3.0] * 25, "t")
    pruner = Pruner(lambda: connect(database_url), "1d", every=60.0, batch=10, pause=0.0)
    pruner.start()
    try:
        deadline = time.monotonic() + 10
        while pruner.deleted.get("history", 0) < 25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pruner.deleted["history"] == 25
        assert ages(conn) == []
    finally:
        pruner.stop()
    assert not any(t.name == "pruner" for t in threading.enumerate())


def test_old_outbox_rows_broadcasts_and_nodes_go_what_is_pending_open_or_current_stays(
    conn: psycopg2.extensions.connection,
) -> None:
    """Delivered outbox rows past DELIVERY_KEEP go (pending and sending ones stay whatever their age, and the
    notifier does not create them again); broadcasts past the history retention go unless open or a streamer's
    current one, their notifier rows with them; nodes silent past NODE_KEEP go."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO kick_monitor.streamers (username) VALUES ('kept') RETURNING id")
        streamer = cur.fetchone()[0]  # type: ignore[index]
        cur.execute("INSERT INTO kick_monitor.notify_targets (kind, url) VALUES ('json', 'http://127.0.0.1:9/h')"
                    " RETURNING id")
        target = cur.fetchone()[0]  # type: ignore[index]
        broadcasts = {}
        for name, started_days, ended_days in [("old", 500, 499), ("open", 600, None), ("current", 450, 449),
                                                ("young", 10, 9)]:
            cur.execute(
                "INSERT INTO kick_monitor.broadcasts (streamer_id, started_at, ended_at, start_source)"
                " VALUES (%s, now() - make_interval(days => %s), now() - make_interval(days => %s), 'pusher')"
                " RETURNING id", (streamer, started_days, ended_days))
            broadcasts[name] = cur.fetchone()[0]  # type: ignore[index]
            cur.execute("INSERT INTO kick_monitor.notify_broadcasts (broadcast_id, streamer_id, session_started_at,"
                        " ended_at, handled_at) VALUES (%s, %s, now(), now(), now() - interval '2 days')",
                        (broadcasts[name], streamer))
        cur.execute("UPDATE kick_monitor.streamers SET broadcast_id = %s WHERE id = %s",
                    (broadcasts["current"], streamer))
        deliveries = [("sent", 40), ("skipped", 40), ("failed", 40), ("uncertain", 40), ("pending", 40),
                      ("sending", 40), ("sent", 5)]
        for index, (state, age) in enumerate(deliveries):
            cur.execute(
                "INSERT INTO kick_monitor.notify_deliveries (broadcast_id, target_id, event, state, due_at, origin_at,"
                " updated_at) VALUES (%s, %s, 'live', %s, now(), now(), now() - make_interval(days => %s))",
                (broadcasts["open"] if index == 0 else broadcasts["young"] + 1000 + index, target, state, age))
        cur.execute("INSERT INTO kick_monitor.cluster_nodes (name, host, pid, version, shards, renewed_at) VALUES"
                    " ('gone:1', 'gone', 1, 'x', 'all', now() - interval '8 days'),"
                    " ('here:2', 'here', 2, 'x', 'all', now())")
    conn.commit()

    deleted = prune(conn, rules_for("400d"), batch=2, pause=0.0)
    assert deleted == {"history": 0, "broadcasts": 1, "notify deliveries": 4, "notify broadcasts": 1,
                       "cluster nodes": 1}
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM kick_monitor.broadcasts ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == [broadcasts["open"], broadcasts["current"], broadcasts["young"]]
        cur.execute("SELECT broadcast_id FROM kick_monitor.notify_broadcasts ORDER BY broadcast_id")
        assert [r[0] for r in cur.fetchall()] == [broadcasts["open"], broadcasts["current"], broadcasts["young"]]
        cur.execute("SELECT state, round(extract(epoch FROM now() - updated_at) / 86400)::int"
                    " FROM kick_monitor.notify_deliveries ORDER BY id")
        assert cur.fetchall() == [("pending", 40), ("sending", 40), ("sent", 5)]
        cur.execute("SELECT name FROM kick_monitor.cluster_nodes")
        assert cur.fetchall() == [("here:2",)]
    conn.rollback()
    assert prune(conn, rules_for("400d"), batch=2, pause=0.0) == dict.fromkeys(deleted, 0)
    # the open broadcast's go-live delivery is gone: the notifier does not make (and send) it again
    found = discover(conn, load_targets(conn), Policy(600.0, "was_live", 0.0), low=0, ids=[broadcasts["open"]],
                     all_ends=True)
    assert found.created is None
