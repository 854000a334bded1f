"""`kick-monitor db migrate`, and commands refusing a database without the current schema."""

from __future__ import annotations

from kick_monitor.migrations import LATEST_VERSION, MIGRATIONS
from tests.cli.test_cli_basics import assert_one_error
from tests.conftest import CliRunner, DatabaseFactory


def test_migrate_fresh_then_up_to_date(cli: CliRunner, make_database: DatabaseFactory) -> None:
    empty = make_database(migrated=False)
    code, out, err = cli("db", "migrate", env={"KICK_MONITOR_DATABASE_URL": empty})
    assert (code, err) == (0, "")
    applied = "".join(f"applied migration {m.version}: {m.name}\n" for m in MIGRATIONS)
    assert out == applied + f"schema now at version {LATEST_VERSION}\n"
    assert out.startswith("applied migration 1: streamers, status history, notify triggers\n")
    code, out, err = cli("db", "migrate", "--database-url", empty)
    assert (code, out, err) == (0, f"schema up to date (version {LATEST_VERSION})\n", "")


def test_commands_refuse_an_unmigrated_database(cli: CliRunner, make_database: DatabaseFactory) -> None:
    empty = make_database(migrated=False)
    for args in (["status"], ["streamers", "list"], ["streamers", "add", "alice"]):
        code, out, err = cli(*args, env={"KICK_MONITOR_DATABASE_URL": empty})
        assert code == 1 and out == ""
        assert_one_error(err, "database has no kick-monitor schema; run `kick-monitor db migrate`")


def test_unreachable_database_is_a_runtime_failure(cli: CliRunner) -> None:
    code, out, err = cli(
        "db", "migrate", env={"KICK_MONITOR_DATABASE_URL": "postgresql://u:pw-not-shown@127.0.0.1:1/x"}
    )
    assert code == 1 and out == ""
    assert_one_error(err, "cannot connect to postgresql://127.0.0.1:1/x")
    assert "pw-not-shown" not in err
