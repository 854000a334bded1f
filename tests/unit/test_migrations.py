"""Migrations on a real PostgreSQL: fresh, re-run, next to foreign tables, two at once."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from kick_monitor.migrations import (
    LATEST_VERSION,
    MIGRATIONS,
    SchemaError,
    current_version,
    migrate,
    require_compatible,
    require_current,
)
from tests.conftest import DatabaseFactory


def query(url: str, text: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(text, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def kick_tables(url: str) -> list[str]:
    rows = query(
        url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
        ("kick_monitor",),
    )
    return [row[0] for row in rows]


def test_fresh_database_gets_every_migration(make_database: DatabaseFactory) -> None:
    url = make_database(migrated=False)
    conn = psycopg2.connect(url)
    try:
        assert current_version(conn) == 0
        with pytest.raises(SchemaError, match="no kick-monitor schema"):
            require_current(conn)
        applied = migrate(conn)
        assert [m.version for m in applied] == [m.version for m in MIGRATIONS]
        assert current_version(conn) == LATEST_VERSION
        assert require_current(conn) == LATEST_VERSION
    finally:
        conn.close()
    assert kick_tables(url) == [
        "api_budget", "broadcasts", "cluster_nodes", "duty_holders",  # issue 17 (cluster)
        "notify_broadcasts", "notify_cursor", "notify_deliveries", "notify_targets",  # notifier (issue 19)
        "schema_migrations", "shard_leases", "shard_plan", "status_events", "streamers",
        "webhook_subscriptions", "webhook_sync",  # issue 16
    ]


def test_rerun_is_a_no_op(database_url: str) -> None:
    before = query(database_url, "SELECT version, name, applied_at FROM kick_monitor.schema_migrations")
    conn = psycopg2.connect(database_url)
    try:
        assert migrate(conn) == []
        assert migrate(conn) == []
    finally:
        conn.close()
    assert query(database_url, "SELECT version, name, applied_at FROM kick_monitor.schema_migrations") == before


def test_foreign_tables_are_untouched(make_database: DatabaseFactory) -> None:
    url = make_database(migrated=False)
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE public.streamers (name varchar(20) PRIMARY KEY, followers int)")
        cur.execute("INSERT INTO public.streamers VALUES ('Not A Slug!', 5), ('x', NULL)")
        cur.execute("CREATE TABLE public.status_events (id int)")
        cur.execute("CREATE TABLE public.schema_migrations (version text)")
        cur.execute("INSERT INTO public.schema_migrations VALUES ('20240101_theirs')")
    columns_sql = (
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY 1, 2"
    )
    before = query(url, columns_sql)
    try:
        assert [m.version for m in migrate(conn)] == [m.version for m in MIGRATIONS]
    finally:
        conn.close()
    assert query(url, columns_sql) == before
    assert query(url, "SELECT name, followers FROM public.streamers ORDER BY name") == [
        ("Not A Slug!", 5),
        ("x", None),
    ]
    assert query(url, "SELECT version FROM public.schema_migrations") == [("20240101_theirs",)]
    assert kick_tables(url) == [
        "api_budget", "broadcasts", "cluster_nodes", "duty_holders",  # issue 17 (cluster)
        "notify_broadcasts", "notify_cursor", "notify_deliveries", "notify_targets",  # notifier (issue 19)
        "schema_migrations", "shard_leases", "shard_plan", "status_events", "streamers",
        "webhook_subscriptions", "webhook_sync",  # issue 16
    ]


def test_two_migrations_at_once_apply_each_version_once(make_database: DatabaseFactory) -> None:
    url = make_database(migrated=False)
    start = threading.Barrier(2)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        conn = psycopg2.connect(url)
        try:
            start.wait()
            results.append([m.version for m in migrate(conn)])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    versions = [m.version for m in MIGRATIONS]
    assert sorted(v for applied in results for v in applied) == versions  # each once, by either
    assert query(url, "SELECT version FROM kick_monitor.schema_migrations ORDER BY 1") == [(v,) for v in versions]


def test_newer_schema_is_refused(database_url: str) -> None:
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO kick_monitor.schema_migrations (version, name) VALUES (%s, 'future')",
                (LATEST_VERSION + 1,),
            )
        with pytest.raises(SchemaError, match="newer than this program"):
            require_current(conn)
    finally:
        conn.close()


def test_expand_only_newer_schema_keeps_older_code_running(database_url: str) -> None:
    """Rolling upgrade: a newer release applied an expand-only migration; the old node stays up."""
    conn = psycopg2.connect(database_url)
    try:
        # code of the release before the cluster migration (expand-only) runs on the schema after it
        cluster = next(m for m in MIGRATIONS if m.name.startswith("cluster:"))
        assert cluster.oldest_code is not None and cluster.oldest_code < cluster.version
        if all(m.oldest_code is not None and m.oldest_code <= cluster.oldest_code
               for m in MIGRATIONS if m.version > cluster.oldest_code):
            assert require_compatible(conn, known=cluster.oldest_code) == LATEST_VERSION
        with conn, conn.cursor() as cur:  # the next release adds an expand-only migration
            cur.execute(
                "INSERT INTO kick_monitor.schema_migrations (version, name, oldest_code) VALUES (%s, 'expand', %s)",
                (LATEST_VERSION + 1, LATEST_VERSION),
            )
        assert require_current(conn) == LATEST_VERSION + 1
        with conn, conn.cursor() as cur:  # a contracting migration names only itself
            cur.execute(
                "INSERT INTO kick_monitor.schema_migrations (version, name, oldest_code) VALUES (%s, 'contract', %s)",
                (LATEST_VERSION + 2, LATEST_VERSION + 2),
            )
        with pytest.raises(SchemaError, match=f"needs code of schema {LATEST_VERSION + 2}"):
            require_current(conn)
        with pytest.raises(SchemaError, match="older than"):
            require_compatible(conn, known=LATEST_VERSION + 3)
    finally:
        conn.close()


def test_every_migration_records_the_oldest_code_it_admits(database_url: str) -> None:
    rows = dict(query(database_url, "SELECT version, oldest_code FROM kick_monitor.schema_migrations"))
    assert rows == {m.version: m.version if m.oldest_code is None else m.oldest_code for m in MIGRATIONS}


def test_slug_constraint_is_the_last_line_of_defence(db_conn: psycopg2.extensions.connection) -> None:
    with pytest.raises(psycopg2.errors.CheckViolation), db_conn, db_conn.cursor() as cur:
        cur.execute("INSERT INTO kick_monitor.streamers (username) VALUES ('Upper Case')")
