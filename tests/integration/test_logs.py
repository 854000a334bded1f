"""The service's logs: JSON lines with the fields operators filter on, and never a secret.

A real `kick-monitor run` at DEBUG level gets a known client secret (the simulator's
OAuth endpoint accepts exactly that one) and a database URL with a known password (the
test server trusts local connections, so the password is carried but not checked). The
test then walks the error paths — a worker SIGKILLed, malformed frames, dropped
connections, the secret revoked so that Kick refuses it — and checks every line of
output: each parses as JSON with `ts`, `level`, `process` and `shard`, and neither secret
appears in any form (as written, percent-decoded, or just its random core).
Short commands with the same secrets (`--dry-run`, a database that is down, a malformed
URL) are checked the same way.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2.extensions
import pytest

from kick_sim import SimConfig, Simulator
from tests.service import REPO, Service, insert_streamers, running, service_env, wait_until

pytestmark = pytest.mark.timeout(120)

CORE = secrets.token_hex(12)  # random: if it shows up anywhere, a secret leaked
CLIENT_SECRET = f"cs-{CORE[:12]}-secret"
DB_PASSWORD_RAW = f"pw-{CORE[12:]}%2Fp%40ss"  # as written in the URL (percent-encoded)
DB_PASSWORD = f"pw-{CORE[12:]}/p@ss"  # what the URL means
FORBIDDEN = (CLIENT_SECRET, DB_PASSWORD_RAW, DB_PASSWORD, CORE[:12], CORE[12:])


def with_password(url: str) -> str:
    """The test database URL with a password in it (`postgresql://postgres@/db?host=...`)."""
    assert url.startswith("postgresql://postgres@"), url
    return url.replace("postgres@", f"postgres:{DB_PASSWORD_RAW}@", 1)


def leaks(text: str) -> list[str]:
    return [secret for secret in FORBIDDEN if secret in text]


def check_json_lines(text: str) -> list[dict[str, object]]:
    """Every non-empty line is one JSON object with the operator's fields; return them."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line[:200]!r}") from None
        assert isinstance(record, dict), line
        missing = {"ts", "level", "process", "shard"} - record.keys()
        assert not missing, f"line {number} lacks {missing}: {line[:200]}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(record["ts"])), record["ts"]
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), record
        records.append(record)
    return records


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator's app secret is the known secret we grep for."""
    return SimConfig(port=0, http_port=0, control_port=0, seed=5, client_secret=CLIENT_SECRET)


def test_service_logs_are_json_lines_without_secrets(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    insert_streamers(conn, sim.create_streamers(30))
    env = service_env(
        sim, with_password(database_url), tmp_path / "data", shard_count="2", log_level="DEBUG",
        reconcile_interval="1",
    )
    assert env["KICK_MONITOR_CLIENT_SECRET"] == CLIENT_SECRET
    service = Service(env, tmp_path / "service.log")
    with running(service):
        service.wait_children(2)
        wait_until(lambda: sim.subscription_count() >= 60, 20, what="subscriptions")
        # the secret went over the wire (urllib3 logs each request at DEBUG): the token was fetched
        wait_until(lambda: "/oauth/token" in service.log_text(), 10, what="a token fetched with the secret")
        sim.start_flipping(rate=40.0, duration=1.0)
        assert sim.wait_flipping_done(timeout=10)
        sim.send_malformed("bad_json")
        sim.send_malformed("wrong_types")
        victim = service.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: service.worker_pids().get(0, victim) != victim, 15, what="worker 0 restarted")
        sim.revoke_secret(True)  # Kick refuses the secret from now on: the auth error path
        sim.expire_tokens()
        sim.drop_connections()
        wait_until(lambda: "check the client id and secret" in service.log_text(), 20,
                   what="the refused-secret error to be logged")
        assert service.stop() == 0
    text = service.log_text()
    records = check_json_lines(text)
    assert not leaks(text), f"secret in the service log: {leaks(text)}"
    processes = {(r["process"], r["shard"]) for r in records}
    assert {("coordinator", None), ("writer", None), ("worker", 0), ("worker", 1)} <= processes, processes
    assert any(r["level"] == "ERROR" and r["process"] == "planner" for r in records), "the refused secret (planner)"
    assert any("SIGKILL" in str(r.get("msg")) for r in records), "the killed worker is reported"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kick_monitor.cli.main", *args], env=env, capture_output=True, text=True,
        timeout=60, cwd=REPO, check=False,
    )


def cli_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICK_MONITOR_")}
    env.update(PYTHONPATH=str(REPO), KICK_MONITOR_LOG_FORMAT="json", KICK_MONITOR_CLIENT_ID="some-client",
               KICK_MONITOR_CLIENT_SECRET=CLIENT_SECRET, KICK_MONITOR_DATA_DIR=str(tmp_path / "data"))
    env.update({f"KICK_MONITOR_{k.upper()}": v for k, v in settings.items()})
    return env


def test_dry_run_shows_no_secret(database_url: str, tmp_path: Path) -> None:
    done = run_cli("--dry-run", env=cli_env(tmp_path, database_url=with_password(database_url), log_level="DEBUG"))
    assert done.returncode == 0, done.stderr
    assert "KICK_MONITOR_CLIENT_SECRET" in done.stdout and "**********" in done.stdout
    assert not leaks(done.stdout + done.stderr), leaks(done.stdout + done.stderr)
    check_json_lines(done.stderr)


def test_database_down_and_bad_url_show_no_secret(tmp_path: Path) -> None:
    down = f"postgresql://kick:{DB_PASSWORD_RAW}@/kick?host={tmp_path}/nowhere&connect_timeout=2"
    done = run_cli("run", env=cli_env(tmp_path, database_url=down, log_level="DEBUG"))
    assert done.returncode == 1, done.stderr
    assert not leaks(done.stdout + done.stderr), leaks(done.stdout + done.stderr)
    check_json_lines(done.stderr)
    assert "cannot connect" in done.stderr

    malformed = f"postgresql://kick:{DB_PASSWORD_RAW}@db.example:99999/kick"
    done = run_cli("run", env=cli_env(tmp_path, database_url=malformed))
    assert done.returncode == 2
    assert "KICK_MONITOR_DATABASE_URL" in done.stderr
    assert not leaks(done.stdout + done.stderr), leaks(done.stdout + done.stderr)
