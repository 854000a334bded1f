"""The supervisor supervises and nothing else: it is never held up by I/O or by a child.

Real `kick-monitor run` trees against the simulator and PostgreSQL; faults are real
(a slow Kick API, a table locked by another session, SIGSTOP, SIGKILL, SIGHUP, SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest

from kick_sim import Simulator
from tests.service import (
    Service,
    alive,
    children_of,
    insert_streamers,
    make_service,
    mismatches,
    running,
    wait_until,
)

# Long end-to-end supervision scenarios (SIGSTOP, a 30 s API, a locked table): `make test-slow`.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def replaced(service: Service, shard: int, old_pid: int) -> bool:
    pid = service.worker_pids().get(shard)
    return pid is not None and pid != old_pid


def respawn_seconds(service: Service, shard: int) -> float:
    """SIGKILL the shard's worker; seconds until a new worker process for that shard exists."""
    old = service.worker_pids()[shard]
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: replaced(service, shard, old), 10, interval=0.01, what=f"worker {shard} respawned")
    return time.monotonic() - killed


def lock_streamers(url: str) -> psycopg2.extensions.connection:
    """Another session takes the streamers table (reads and writes wait): a database that hangs."""
    locker = psycopg2.connect(url)
    with locker.cursor() as cur:
        cur.execute("LOCK TABLE kick_monitor.streamers IN ACCESS EXCLUSIVE MODE")
    return locker  # the transaction stays open until the caller rolls it back


@contextlib.contextmanager
def two_shards(
    sim: Simulator, conn: psycopg2.extensions.connection, url: str, tmp_path: Path, streamers: int, **settings: str
) -> Iterator[Service]:
    """`streamers` new streamers, and a running two-shard tree with both workers up."""
    insert_streamers(conn, sim.create_streamers(streamers))
    service = make_service(sim, url, tmp_path, shard_count="2", **settings)
    with running(service):
        service.wait_children(2)
        yield service


def test_respawn_is_not_held_up_by_a_slow_api_or_a_hanging_database(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    with two_shards(sim, conn, database_url, tmp_path, 100, heartbeat_timeout="60") as service:
        wait_until(lambda: sim.subscription_count() >= 200, 30, what="200 subscriptions")
        sim.set_api_delay(30.0)
        sim.set_api_mode("slow")
        locker = lock_streamers(database_url)
        try:
            sim.drop_connections()  # workers reconnect and reconcile: the API now answers in 30 s
            time.sleep(1.0)
            seconds = [respawn_seconds(service, shard) for shard in (0, 1, 0)]
        finally:
            locker.rollback()
            locker.close()
            sim.set_api_mode(None)
        assert max(seconds) < 2.0, seconds


def test_a_stopped_worker_with_a_huge_subscribe_blocks_nobody_and_is_killed_at_the_heartbeat_timeout(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    with two_shards(sim, conn, database_url, tmp_path, 20, heartbeat_timeout="6") as service:
        stopped = service.worker_pids()[0]
        os.kill(stopped, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            many = sim.create_streamers(20_000, prefix="bulk")
            with conn, conn.cursor() as cur:
                psycopg2.extras.execute_values(
                    cur,
                    "INSERT INTO kick_monitor.streamers (username, channel_id, kick_user_id, chatroom_id) VALUES %s",
                    [(s.slug, s.channel_id, s.user_id, s.chatroom_id) for s in many],
                    page_size=2000,
                )
            time.sleep(1.0)  # the planner queues ~10,000 streamers to the stopped worker
            assert respawn_seconds(service, 1) < 2.0  # the supervisor and the planner are not blocked
            wait_until(lambda: replaced(service, 0, stopped), 15, interval=0.05, what="the stopped worker replaced")
            killed_after = time.monotonic() - stopped_at
        finally:
            if alive(stopped):
                os.kill(stopped, signal.SIGCONT)
        assert 6.0 <= killed_after < 10.0, killed_after
        assert not alive(stopped)
        # the replacement gets the whole shard from the planner
        wait_until(lambda: sim.subscription_count() >= 2 * 20_020, 60, what="every streamer subscribed")


def json_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def reconfigured(log: Path) -> dict[tuple[str, object], set[str]]:
    """(role, shard) → the settings each role said it applied."""
    found: dict[tuple[str, object], set[str]] = {}
    for entry in json_lines(log):
        message = str(entry.get("msg", ""))
        if message.startswith("reconfigured: "):
            key = (str(entry.get("process")), entry.get("shard"))
            found.setdefault(key, set()).update(message.removeprefix("reconfigured: ").split(", "))
    return found


def test_sighup_reaches_every_role_that_reads_a_setting(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    insert_streamers(conn, sim.create_streamers(20))
    config = tmp_path / "kick-monitor.env"
    config.write_text("KICK_MONITOR_HEARTBEAT_TIMEOUT=30\nKICK_MONITOR_RELOAD_INTERVAL=600\n"
                      "KICK_MONITOR_DRAIN_TIMEOUT=20\n")
    service = make_service(sim, database_url, tmp_path, shard_count="2")
    for key in ("KICK_MONITOR_HEARTBEAT_TIMEOUT", "KICK_MONITOR_RELOAD_INTERVAL"):
        service.env.pop(key)
    service.args = ["--config", str(config)]
    with running(service):
        service.wait_children(2)
        wait_until(lambda: sim.subscription_count() >= 40, 30, what="40 subscriptions")
        workers = service.worker_pids()
        config.write_text("KICK_MONITOR_HEARTBEAT_TIMEOUT=3\nKICK_MONITOR_RELOAD_INTERVAL=2\n"
                          "KICK_MONITOR_DRAIN_TIMEOUT=7\n")
        os.kill(service.pid, signal.SIGHUP)
        wait_until(lambda: len(reconfigured(service.log_path)) >= 4, 15, what="every role to apply the settings")
        applied = reconfigured(service.log_path)
        assert applied[("writer", None)] == {"heartbeat_timeout"}
        assert applied[("planner", None)] == {"reload_interval"}
        assert applied[("worker", 0)] == applied[("worker", 1)] == {"drain_timeout"}
        assert service.worker_pids() == workers, "live settings restart nobody"

        # reload_interval, in the planner: a streamer added behind the trigger's back (no NOTIFY)
        # is picked up by the next periodic reload, now every 2 s instead of every 10 minutes.
        hidden = sim.create_streamers(1, prefix="hidden")[0]
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL session_replication_role = replica")  # triggers do not fire
            cur.execute(
                "INSERT INTO kick_monitor.streamers (username, channel_id, kick_user_id) VALUES (%s, %s, %s)",
                (hidden.slug, hidden.channel_id, hidden.user_id),
            )
        wait_until(lambda: sim.subscription_count() >= 42, 8, what="the hidden streamer subscribed")

        # heartbeat_timeout, in the supervisor: a stopped worker is now killed after 3 s, not 30.
        stopped = workers[1]
        os.kill(stopped, signal.SIGSTOP)
        try:
            wait_until(lambda: not alive(stopped), 8, what="the stopped worker killed at the new timeout")
        finally:
            if alive(stopped):
                os.kill(stopped, signal.SIGCONT)


def test_second_sigterm_during_a_drain_stops_within_two_seconds_and_loses_nothing_acknowledged(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    streamers = sim.create_streamers(50)
    insert_streamers(conn, streamers)
    service = make_service(sim, database_url, tmp_path, shard_count="2", drain_timeout="60")
    with running(service):
        service.wait_children(2)
        wait_until(lambda: sim.subscription_count() >= 100, 30, what="100 subscriptions")
        for s in streamers[:10]:
            sim.set_live(s.slug, True)
        wait_until(lambda: not mismatches(sim, conn), 20, what="the first go-lives committed")
        with conn.cursor() as cur:
            cur.execute("SELECT change_id FROM kick_monitor.status_events")
            committed_before = {row[0] for row in cur.fetchall()}
        conn.rollback()
        children = list(children_of(service.pid))
        locker = psycopg2.connect(database_url)
        try:
            with locker.cursor() as cur:  # the writer's commits now wait: workers cannot drain
                cur.execute("LOCK TABLE kick_monitor.streamers IN EXCLUSIVE MODE")
            for s in streamers[10:20]:
                sim.set_live(s.slug, True)
            time.sleep(1.0)
            os.kill(service.pid, signal.SIGTERM)
            time.sleep(1.0)
            assert service.proc is not None and service.proc.poll() is None, "still draining (60 s bound)"
            os.kill(service.pid, signal.SIGTERM)
            second = time.monotonic()
            code = service.proc.wait(10)
            took = time.monotonic() - second
        finally:
            locker.rollback()
            locker.close()
        assert took < 2.0, took
        assert code == 0
        assert not [pid for pid in children if alive(pid)], "every child is gone"
    with conn.cursor() as cur:
        cur.execute("SELECT change_id FROM kick_monitor.status_events")
        committed_after = {row[0] for row in cur.fetchall()}
    conn.rollback()
    assert committed_before <= committed_after, "nothing committed before the stop is gone"
    # A new run repairs what was never acknowledged (it was in flight, not durable).
    again = Service(service.env, tmp_path / "service-2.log")
    with running(again):
        again.wait_children(2)
        wait_until(lambda: not mismatches(sim, conn), 30, what="the new run to match the simulator")
