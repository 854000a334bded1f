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
    assert rules_for("off") == []
    with pytest.raises(ConfigError, match=r"^KICK_MONITOR_HISTORY_RETENTION: must be a duration like 400d"):
        load_settings(environ={"KICK_MONITOR_HISTORY_RETENTION": "400"})


def test_prune_deletes_only_rows_past_retention_in_bounded_batches(conn: psycopg2.extensions.connection) -> None:
    add_history(conn, [500.0] * 250 + [401.0] * 50 + [399.0] * 30 + [1.0] * 20, "a")
    rules = rules_for("400d")
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
    assert prune(conn, rules_for("0"), pause=0.0) == {}
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
        assert pruner.run_round() == {"history": 40}
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
        assert pruner.deleted == {"history": 25}
        assert ages(conn) == []
    finally:
        pruner.stop()
    assert not any(t.name == "pruner" for t in threading.enumerate())
