"""`--dry-run`: validates config, database and schema, prints the plan; secrets never shown."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from kick_monitor.config import SECRET_MASK
from kick_monitor.migrations import LATEST_VERSION
from tests.cli.test_cli_basics import assert_one_error
from tests.conftest import CliRunner, DatabaseFactory

CLIENT_SECRET = "cs-4f9a1c0e7b2d-client-secret"
DB_PASSWORD = "dbpw-93e1b7c6a5f2"
FILE_SECRET = "file-secret-0d5e8a2b4c6f"


def seed(database_url: str, resolved: int, unresolved: int = 0) -> None:
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            for i in range(resolved):
                cur.execute(
                    "INSERT INTO kick_monitor.streamers (username, channel_id) VALUES (%s, %s)",
                    (f"s{i}", 1000 + i),
                )
            for i in range(unresolved):
                cur.execute(
                    "INSERT INTO kick_monitor.streamers (username, unresolved_reason) VALUES (%s, %s)",
                    (f"u{i}", "waiting for id resolution"),
                )
    finally:
        conn.close()


def test_dry_run_prints_config_database_and_plan(cli: CliRunner, database_url: str) -> None:
    seed(database_url, resolved=30, unresolved=2)
    code, out, err = cli("--dry-run", "--shard-count", "3")
    assert code == 0 and err == ""
    assert "nothing changed" in out.splitlines()[0]
    assert f"KICK_MONITOR_DATABASE_URL={SECRET_MASK}" in out
    assert "KICK_MONITOR_SHARD_COUNT=3" in out
    assert f"reachable, schema version {LATEST_VERSION} (current)" in out
    assert "streamers: 32 (30 resolved, 2 unresolved)" in out
    assert "shard plan: 3 shards (KICK_MONITOR_SHARD_COUNT)" in out
    shard_lines = [line for line in out.splitlines() if line.startswith("  shard ")]
    assert len(shard_lines) == 3
    assert sum(int(line.split(":")[1].split()[0]) for line in shard_lines) == 30
    assert "    u0: waiting for id resolution" in out and "    u1: waiting for id resolution" in out
    assert "`kick-monitor run` would run: all shards" in out


def test_run_dry_run_for_one_shard(cli: CliRunner, database_url: str) -> None:
    seed(database_url, resolved=4)
    code, out, err = cli("run", "--dry-run", "--shard-count", "2", "--shard-index", "1")
    assert code == 0 and err == ""
    assert "<- this process" in next(line for line in out.splitlines() if line.startswith("  shard 1:"))
    assert "would run: shard 1 of 2" in out


def test_automatic_shard_count(cli: CliRunner, database_url: str) -> None:
    seed(database_url, resolved=5)
    code, out, _ = cli("--dry-run", "--channels-per-connection", "4")
    assert code == 0
    assert "shard plan: 3 shards (auto: 10 Pusher channels, at most 4 per connection)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard-count", "2", "--shard-index", "2"], "KICK_MONITOR_SHARD_INDEX=2 is outside 0..1"),
        (["--shard-index", "0"], "KICK_MONITOR_SHARD_INDEX needs KICK_MONITOR_SHARD_COUNT"),
    ],
)
def test_bad_shard_selection(cli: CliRunner, args: list[str], message: str) -> None:
    code, out, err = cli("--dry-run", *args)
    assert code == 2 and out == ""
    assert_one_error(err, message)


@pytest.mark.parametrize("where", [["--dry-run"], ["run", "--dry-run"]])
def test_unreachable_database_is_one_line_and_exit_2(cli: CliRunner, where: list[str]) -> None:
    code, out, err = cli(*where, env={"KICK_MONITOR_DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/x"})
    assert code == 2 and out == ""
    assert_one_error(err, "cannot connect to postgresql://127.0.0.1:1/x")
    assert "pw" not in err.replace("postgresql", "")


def test_unmigrated_database(cli: CliRunner, make_database: DatabaseFactory) -> None:
    code, out, err = cli("--dry-run", env={"KICK_MONITOR_DATABASE_URL": make_database(migrated=False)})
    assert code == 2 and out == ""
    assert_one_error(err, "database has no kick-monitor schema")


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secrets_never_appear(cli: CliRunner, database_url: str, tmp_path: Path, log_format: str) -> None:
    with_password = database_url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    config = tmp_path / "km.env"
    config.write_text(f'KICK_MONITOR_CLIENT_ID=abc\nKICK_MONITOR_CLIENT_SECRET="{FILE_SECRET}"\n')
    config.chmod(0o640)  # readable by the group: warned about
    env = {"KICK_MONITOR_DATABASE_URL": with_password, "KICK_MONITOR_LOG_FORMAT": log_format}
    outputs = []

    result = cli("--dry-run", "--config", str(config), "--log-level", "DEBUG", env=env)  # secret from the file
    assert result.code == 0, result.stderr
    assert "readable by group or others" in result.stderr
    assert f"KICK_MONITOR_CLIENT_SECRET={SECRET_MASK}" in result.stdout
    outputs.append(result)

    env["KICK_MONITOR_CLIENT_SECRET"] = CLIENT_SECRET  # the environment's wins over the file's
    outputs.append(cli("--dry-run", "--config", str(config), "--log-level", "DEBUG", env=env))
    outputs.append(cli("status", "--log-level", "DEBUG", env=env))
    # error paths: unreachable server, refused schema, a rejected setting
    broken = dict(env, KICK_MONITOR_DATABASE_URL=f"postgresql://kick:{DB_PASSWORD}@127.0.0.1:1/kick")
    outputs.append(cli("--dry-run", "--log-level", "DEBUG", env=broken))
    outputs.append(cli("db", "migrate", "--log-level", "DEBUG", env=broken))
    bad_port = dict(env, KICK_MONITOR_DATABASE_URL=f"postgresql://kick:{DB_PASSWORD}@127.0.0.1:port/kick")
    outputs.append(cli("status", env=bad_port))
    assert [result.code for result in outputs] == [0, 0, 0, 2, 1, 2]
    for result in outputs:
        for secret in (CLIENT_SECRET, DB_PASSWORD, FILE_SECRET):
            assert secret not in result.stdout + result.stderr
