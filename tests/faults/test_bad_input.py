"""Bad input over the wire (malformed frames, a 1 MB frame, floods, strangers' channels) and from operators.

Over the wire: nothing crashes or reconnects, every good frame still counts (history is
exact), every bad one is counted in the metrics and logged once per kind.
Operators: bad settings, an unreachable or unmigrated database each give one clear line
and a documented exit code (0 ok, 1 runtime failure, 2 usage/configuration), and leave
nothing half-written. (Bad slugs, duplicates and ids of the wrong type in `streamers
add/import` are covered by tests/cli/test_cli_streamers.py and tests/unit/test_streamers.py.)
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest

from kick_sim import Simulator
from kick_sim.malformed import MALFORMED_KINDS
from tests.conftest import CliRunner, DatabaseFactory
from tests.faults.conftest import ServiceFactory
from tests.faults.faultkit import SECRET, assert_clean, assert_titles_clean, converge, metric_values, record, scrape
from tests.service import alive, insert_streamers, running, wait_until

pytestmark = pytest.mark.faults

SHARDS = 2
# What each simulator kind must be counted as (kick_monitor.events.EventStats kinds).
EXPECTED_KINDS = {
    "bad_json": {"bad_json"},
    "bad_inner_json": {"bad_data_json"},
    "missing_fields": {"missing_field", "bad_frame", "bad_type"},
    "wrong_types": {"bad_type", "bad_frame"},
    "huge": {"oversize"},
}


@pytest.mark.timeout(120)
def test_malformed_frames_floods_and_strangers_change_nothing_and_are_counted_once(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory,
    free_port: Callable[[], int],
) -> None:
    assert set(EXPECTED_KINDS) | {"unknown_event", "unsubscribed_channel"} == set(MALFORMED_KINDS)
    insert_streamers(conn, sim.create_streamers(150))
    port = free_port()
    service = services(shard_count=str(SHARDS), metrics_port=str(port))
    with running(service):
        service.wait_children(SHARDS)
        wait_until(lambda: sim.subscription_count() >= 300, 30, what="subscriptions")
        assert_titles_clean(service)
        workers = service.worker_pids()
        connections = sim.stats()["connections_total"]
        sim.start_flipping(rate=50.0, duration=6.0)
        started = time.monotonic()
        sent = Counter[str]()
        for kind in MALFORMED_KINDS:
            sent[kind] += sim.send_malformed(kind)
        for _ in range(300):  # a flood of events nobody knows
            sent["unknown_event"] += sim.send_malformed("unknown_event")
        for _ in range(30):  # lifecycle events for channels we never subscribed to
            sent["unsubscribed_channel"] += sim.send_malformed("unsubscribed_channel")
        for kind in MALFORMED_KINDS:  # and every kind once more, between good frames
            sent[kind] += sim.send_malformed(kind)
        assert sim.wait_flipping_done(timeout=20)
        converge(sim, conn, 20, exact=True)
        record("bad frames over the wire (every kind, 1 MB frame, 300x unknown events)", time.monotonic() - started,
               f"{sum(sent.values())} bad frames among the traffic; history exact, no reconnect")
        assert service.worker_pids() == workers, "no worker crashed"
        assert sim.stats()["connections_total"] == connections, "no socket was dropped over bad input"

        text = scrape(port)
        assert_clean(text, "the metrics scrape")
        errors = Counter[str]()
        for labels, value in metric_values(text, "kick_monitor_parse_errors_total").items():
            kind = labels.split('kind="', 1)[1].split('"', 1)[0]
            errors[kind] += int(value)
        for kind, counted_as in EXPECTED_KINDS.items():
            assert counted_as & set(errors), f"{kind} frames are not counted ({dict(errors)})"
        assert errors["unknown_channel"] >= 30, f"events for strangers' channels not counted ({dict(errors)})"
        frames = metric_values(text, "kick_monitor_frames_received_total")
        other = sum(v for k, v in frames.items() if 'event="other"' in k)
        assert other >= 300, f"the unknown-event flood is not counted ({frames})"

        logged = Counter(
            (int(r["pid"]), str(r["kind"]))
            for r in service.log_records()
            if r.get("kind") and ("malformed frame" in r["msg"] or "do not watch" in r["msg"])
        )
        kinds_logged = {kind for _, kind in logged}
        assert set(errors) <= kinds_logged, f"counted but never logged: {sorted(set(errors) - kinds_logged)}"
        assert all(n == 1 for n in logged.values()), f"a kind was logged more than once by a worker: {logged}"
        assert service.stop() == 0


# -- operator input -----------------------------------------------------------------------------


def one_line(stderr: str) -> str:
    """The one error line (`run` may say which version is starting before it; nothing else)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not STARTING.search(line)]
    assert len(lines) == 1, f"expected one line, got: {stderr!r}"
    return lines[0]


STARTING = re.compile(r"kick-monitor \d+\.\d+\.\d+ starting \(")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("KICK_MONITOR_BATCHSIZE=5\n", "unknown key KICK_MONITOR_BATCHSIZE"),
        ("KICK_MONITOR_BATCH_SIZE=lots\n", "KICK_MONITOR_BATCH_SIZE"),
        ("KICK_MONITOR_HEARTBEAT_TIMEOUT=-1\n", "KICK_MONITOR_HEARTBEAT_TIMEOUT"),
        ("KICK_MONITOR_PUSHER_URL=http://not-a-websocket\n", "KICK_MONITOR_PUSHER_URL"),
        ("just some words\n", "expected KEY=VALUE"),
    ],
)
def test_run_with_a_bad_config_file_exits_2_before_touching_anything(
    cli: CliRunner, tmp_path: Path, content: str, message: str, database_url: str
) -> None:
    config = tmp_path / "km.env"
    config.write_text(content + f"KICK_MONITOR_CLIENT_ID=abc\nKICK_MONITOR_CLIENT_SECRET={SECRET}\n")
    config.chmod(0o600)
    data_dir = tmp_path / "data"
    code, out, err = cli("run", "--config", str(config), env={"KICK_MONITOR_DATA_DIR": str(data_dir)}, timeout=30)
    assert code == 2 and out == ""
    assert message in one_line(err)
    assert_clean(out + err, "the error output")
    assert not data_dir.exists(), "nothing was created"


@pytest.mark.timeout(60)
def test_run_against_an_unreachable_database_exits_1_with_one_clear_line(cli: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    started = time.monotonic()
    code, out, err = cli(
        "run", env={"KICK_MONITOR_DATABASE_URL": f"postgresql://kick:{SECRET}@127.0.0.1:1/kick",
                    "KICK_MONITOR_DATA_DIR": str(data_dir), "KICK_MONITOR_LOG_FORMAT": "text"},
        timeout=30,
    )
    assert code == 1 and out == ""
    line = one_line(err)
    assert "cannot connect to postgresql://127.0.0.1:1/kick" in line
    assert_clean(out + err, "the error output")
    assert time.monotonic() - started < 15
    assert not (data_dir / "run").exists(), "no process tree was started"


@pytest.mark.timeout(60)
def test_run_against_an_unmigrated_database_exits_2_and_writes_nothing(
    cli: CliRunner, make_database: DatabaseFactory, tmp_path: Path
) -> None:
    empty = make_database(migrated=False)
    code, out, err = cli(
        "run", env={"KICK_MONITOR_DATABASE_URL": empty, "KICK_MONITOR_DATA_DIR": str(tmp_path / "data"),
                    "KICK_MONITOR_LOG_FORMAT": "text", "KICK_MONITOR_CLIENT_SECRET": SECRET},
        timeout=30,
    )
    assert code == 2 and out == ""
    assert "kick-monitor db migrate" in one_line(err)
    assert_clean(err, "the error output")
    with psycopg2.connect(empty) as check, check.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'kick_monitor'")
        assert cur.fetchone() == (0,), "run never migrates a configured database behind the operator's back"
    check.close()


@pytest.mark.timeout(120)
def test_a_second_run_on_the_same_data_dir_is_refused(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory, tmp_path: Path
) -> None:
    """Two trees on one data dir would subscribe and write everything twice: the second must exit 1 at once."""
    insert_streamers(conn, sim.create_streamers(10))
    first = services(shard_count="1")
    second = services(shard_count="1")
    with running(first):
        first.wait_children(1)
        assert_titles_clean(first)
        second.start()
        assert second.proc is not None
        assert second.proc.wait(20) == 1
        assert second.messages("another kick-monitor (all) is running")
        assert alive(first.pid) and len(first.worker_pids()) == 1
        assert first.stop() == 0
    assert os.path.exists(tmp_path / "data" / "run")
