"""No database URL: the CLI starts its own PostgreSQL under the data dir and stops it again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kick_monitor.embedded_pg import EmbeddedPostgres
from kick_monitor.migrations import LATEST_VERSION
from tests.cli.test_cli_basics import assert_one_error
from tests.conftest import CliRunner

NO_URL = {"KICK_MONITOR_DATABASE_URL": None}


def processes_using(path: Path) -> list[int]:
    """Pids of processes whose command line mentions `path` (a running postmaster names its -D)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(int(proc.name))
    return found


@pytest.fixture
def data_dir(server_tmp_path: Path) -> Iterator[Path]:
    path = server_tmp_path / "var"
    yield path
    leftover = EmbeddedPostgres(path)
    if leftover.is_running():  # only if a test failed half-way: stop the server it started
        leftover.stop(force=True)


def test_embedded_server_is_started_and_stopped(cli: CliRunner, data_dir: Path) -> None:
    pgdata = (data_dir / "postgres").resolve()

    code, out, err = cli("--data-dir", str(data_dir), "db", "migrate", env=NO_URL)
    assert code == 0, err
    assert out.startswith("applied migration 1:")
    assert (pgdata / "PG_VERSION").exists()
    assert not (pgdata / "postmaster.pid").exists()
    assert processes_using(pgdata) == []

    code, out, err = cli("streamers", "add", "alice", "--channel-id", "5", "--data-dir", str(data_dir), env=NO_URL)
    assert (code, err) == (0, "")
    code, out, err = cli("--dry-run", env={**NO_URL, "KICK_MONITOR_DATA_DIR": str(data_dir)})
    assert code == 0, err
    assert f"database: embedded PostgreSQL in {pgdata}: reachable, schema version {LATEST_VERSION}" in out
    assert "shard 0: 1 streamer (alice)" in out
    assert processes_using(pgdata) == []


def test_a_running_embedded_server_is_used_and_left_running(cli: CliRunner, data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        code, _, err = cli("db", "migrate", "--data-dir", str(data_dir), env=NO_URL)
        assert code == 0, err
        assert server.is_running()  # the CLI did not start it, so it does not stop it
    finally:
        server.stop()
    assert processes_using(server.pgdata) == []


def test_dry_run_creates_nothing(cli: CliRunner, data_dir: Path) -> None:
    code, out, err = cli("--dry-run", "--data-dir", str(data_dir), env=NO_URL)
    assert code == 2 and out == ""
    assert_one_error(err, "no embedded database in", "run `kick-monitor db migrate`")
    assert not data_dir.exists()
