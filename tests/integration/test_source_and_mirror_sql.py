"""The streamer source and the mirror statement against a real PostgreSQL (no service running)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from kick_monitor.config import load_settings
from kick_monitor.role import standalone_context
from kick_monitor.source_sync import SourceError, sync_source
from kick_monitor.status_mirror import MirrorError, check_statement
from tests.conftest import CliRunner
from tests.service import query
from workers.mirror import StatusMirror

pytestmark = pytest.mark.timeout(60)

SOURCE = "SELECT kick_username AS slug, kick_channel AS channel_id, kick_user AS user_id FROM app.creators WHERE active"
MIRROR = "UPDATE app.creators SET is_live = %(is_live)s, live_title = %(title)s WHERE kick_username = %(slug)s"


def execute(conn: psycopg2.extensions.connection, statement: str, params: tuple[Any, ...] | None = None) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(statement, params)


@pytest.fixture
def app(conn: psycopg2.extensions.connection) -> psycopg2.extensions.connection:
    execute(conn, """
        CREATE SCHEMA app;
        CREATE TABLE app.creators (kick_username text PRIMARY KEY, kick_channel bigint, kick_user bigint,
                                   active boolean NOT NULL DEFAULT true, is_live boolean NOT NULL DEFAULT false,
                                   live_title text);
        INSERT INTO app.creators (kick_username, kick_channel, kick_user)
        SELECT 'creator' || n, 1000 + n, 2000 + n FROM generate_series(1, 50) n;
        INSERT INTO app.creators (kick_username, active) VALUES ('slugonly', true), ('inactive', false);
    """)
    return conn


def listed(conn: psycopg2.extensions.connection) -> dict[str, tuple[int | None, int | None]]:
    rows = query(conn, "SELECT username, channel_id, kick_user_id FROM kick_monitor.streamers")
    return {u: (c, k) for u, c, k in rows}


def test_sync_makes_our_list_equal_to_the_source_and_keeps_history(app: psycopg2.extensions.connection) -> None:
    execute(app, "INSERT INTO kick_monitor.streamers (username, channel_id) VALUES ('byhand', 5)")
    result = sync_source(app, SOURCE)
    assert result is not None and result.rows == 51
    assert result.plan.summary() == "+51 -1 ids 0"
    got = listed(app)
    assert set(got) == {f"creator{n}" for n in range(1, 51)} | {"slugonly"}
    assert got["creator7"] == (1007, 2007) and got["slugonly"] == (None, None)
    # a removal keeps history
    execute(app, "INSERT INTO kick_monitor.status_events (change_id, streamer_id, channel_id, status, previous_status,"
                 " source, event, received_at) SELECT 'c1', id, 1001, 'online', 'offline', 'pusher', 'e', now()"
                 " FROM kick_monitor.streamers WHERE username = 'creator1'")
    execute(app, "DELETE FROM app.creators WHERE kick_username = 'creator1'")
    execute(app, "UPDATE app.creators SET kick_channel = 77, kick_user = 78 WHERE kick_username = 'slugonly'")
    result = sync_source(app, SOURCE)
    assert result is not None and result.plan.summary() == "+0 -1 ids 1"
    got = listed(app)
    assert "creator1" not in got and got["slugonly"] == (77, 78)
    assert query(app, "SELECT count(*) FROM kick_monitor.status_events WHERE change_id = 'c1'") == [(1,)]
    assert sync_source(app, SOURCE) is not None and not sync_source(app, SOURCE).plan  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("ALTER TABLE app.creators RENAME COLUMN kick_username TO username",
         'STREAMERS_SOURCE failed: column "kick_username" does not exist'),
        ("INSERT INTO app.creators (kick_username) VALUES ('Not A Slug!')",
         "1 of 51 rows are bad, the list is left as it was: row .* \\(slug='Not A Slug!', channel_id=None,"
         " user_id=None\\): slug 'Not A Slug!' may only contain"),
        ("INSERT INTO app.creators (kick_username, kick_channel) VALUES ('dup', 1003)",
         "channel id 1003 repeats row"),
    ],
)
def test_a_broken_source_changes_nothing_and_says_which_row(
    app: psycopg2.extensions.connection, breakage: str, message: str
) -> None:
    sync_source(app, SOURCE)
    before = listed(app)
    execute(app, "DELETE FROM app.creators WHERE kick_username = 'creator2'")
    execute(app, breakage)
    with pytest.raises(SourceError, match=message) as caught:
        sync_source(app, SOURCE)
    assert "\n" not in str(caught.value)
    assert listed(app) == before, "the previous list stays in force (creator2 is not removed either)"


def test_a_source_cannot_write(app: psycopg2.extensions.connection) -> None:
    writing = "WITH gone AS (DELETE FROM app.creators RETURNING kick_username AS slug) SELECT slug FROM gone"
    with pytest.raises(SourceError, match="read-only transaction"):
        sync_source(app, writing)
    assert query(app, "SELECT count(*) FROM app.creators") == [(52,)]


def test_one_process_syncs_at_a_time(app: psycopg2.extensions.connection, database_url: str) -> None:
    other = psycopg2.connect(database_url)
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(x'4B4D5353'::int)")
        assert sync_source(app, SOURCE) is None
        assert listed(app) == {}
        with other.cursor() as cur:  # released now, not whenever the server notices the close
            cur.execute("SELECT pg_advisory_unlock(x'4B4D5353'::int)")
    finally:
        other.close()
    assert sync_source(app, SOURCE) is not None


def test_the_mirror_statement_is_dry_run_and_rolled_back(app: psycopg2.extensions.connection) -> None:
    check_statement(app, MIRROR)
    check_statement(app, "UPDATE app.creators SET is_live = %(is_live)s WHERE kick_username = 'creator1'")
    assert query(app, "SELECT count(*) FROM app.creators WHERE is_live") == [(0,)], "rolled back"
    with pytest.raises(MirrorError, match=r"unknown parameter %\(live\)s; known: slug, user_id"):
        check_statement(app, "UPDATE app.creators SET is_live = %(live)s")
    with pytest.raises(MirrorError, match='failed its dry run \\(rolled back\\): column "nope" of relation'):
        check_statement(app, "UPDATE app.creators SET nope = %(is_live)s")


def test_cli_refuses_list_changes_and_dry_run_shows_the_source(
    app: psycopg2.extensions.connection, run_main: CliRunner, tmp_path: object
) -> None:
    env = {"KICK_MONITOR_STREAMERS_SOURCE": SOURCE, "KICK_MONITOR_STATUS_MIRROR": MIRROR}
    for args in (("streamers", "add", "xqc"), ("streamers", "remove", "xqc"), ("streamers", "import", "-")):
        result = run_main(*args, env=env)
        assert result.code == 2
        assert result.stderr.strip().count("\n") == 0
        assert "the list comes from KICK_MONITOR_STREAMERS_SOURCE" in result.stderr
    result = run_main("--dry-run", env=env)
    assert result.code == 0, result.stderr
    assert "streamer source (KICK_MONITOR_STREAMERS_SOURCE): 51 rows, all valid; first rows:" in result.stdout
    assert "slug | channel_id | user_id" in result.stdout
    assert "status mirror (KICK_MONITOR_STATUS_MIRROR): dry run executed and rolled back: ok" in result.stdout
    bad = run_main("--dry-run", env={**env, "KICK_MONITOR_STREAMERS_SOURCE": "SELECT kick_username FROM app.creators"})
    assert bad.code == 2 and "must return a column named slug (it returned: kick_username)" in bad.stderr


def step_until(role: StatusMirror, done: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the mirror did not get there"
        role.step()


def test_the_mirror_role_stands_by_takes_over_and_applies_the_latest_state(
    app: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    """The role in this process, stepped by hand, against the real database: one active mirror per
    deployment (the lock), the current row applied (latest wins), our table never waits for it."""
    from tests.integration.test_integration_recipes import commit_status

    sync_source(app, SOURCE)
    settings = load_settings(cli={"status_mirror": MIRROR, "data_dir": tmp_path}, environ={})
    ctx, supervisor_end = standalone_context("mirror", settings, database_url)
    other = psycopg2.connect(database_url)
    role = StatusMirror(ctx)
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(x'4B4D4D52'::int)")  # another tree's mirror is active
        commit_status(app, 1001, "online", "first")
        step_until(role, lambda: role.standby)
        for _ in range(5):
            role.step()
        assert query(app, "SELECT count(*) FROM app.creators WHERE is_live") == [(0,)], "a standby applies nothing"
        other.close()  # the active one's session ends: the standby takes over
        role.retry_database_at = 0.0
        step_until(role, lambda: query(app, "SELECT is_live, live_title FROM app.creators"
                                            " WHERE kick_username = 'creator1'") == [(True, "first")])
        commit_status(app, 1001, "offline")
        commit_status(app, 1002, "online", "second")
        step_until(role, lambda: query(app, "SELECT kick_username, live_title FROM app.creators WHERE is_live")
                   == [("creator2", "second")])
    finally:
        role.finish()
        other.close()
        supervisor_end.close()
        ctx.control.close()


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("KICK_MONITOR_STREAMERS_SOURCE", "SELECT nope AS slug FROM app.creators", "STREAMERS_SOURCE failed: column"),
        ("KICK_MONITOR_STATUS_MIRROR", "UPDATE app.creators SET nope = %(is_live)s", "failed its dry run"),
    ],
)
def test_run_refuses_to_start_with_a_source_or_mirror_that_cannot_work(
    app: psycopg2.extensions.connection, cli: CliRunner, tmp_path: Path, setting: str, value: str, expected: str
) -> None:
    result = cli("run", env={setting: value, "KICK_MONITOR_DATA_DIR": str(tmp_path / "data")}, timeout=30)
    assert result.code == 2
    assert expected in result.stderr and "nope" in result.stderr
    assert "Traceback" not in result.stderr
