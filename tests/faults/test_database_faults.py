"""PostgreSQL faults during traffic: server down, sessions killed, statements timing out, spool disk full.

None of these loses a frame: the workers keep every change until the writer says it is
durable (committed or fsync'ed to the spool), so history must hold every transition
exactly once afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2.extensions
import pytest

from kick_monitor.database import connect
from kick_monitor.embedded_pg import EmbeddedPostgres
from kick_monitor.migrations import migrate
from kick_sim import Simulator
from tests.faults.conftest import ServiceFactory
from tests.faults.faultkit import (
    admin_connection,
    assert_no_duplicates,
    converge,
    database_name,
    database_unreachable,
    record,
    set_connections_allowed,
    start,
    terminate,
    wait_for,
)
from tests.service import insert_streamers, running, wait_until

pytestmark = pytest.mark.faults


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_postgres_stopped_30s_with_a_writer_kill_during_the_outage(
    sim: Simulator, services: ServiceFactory, tmp_path: Path, server_tmp_path: Path
) -> None:
    """30 s without a server; meanwhile the writer is SIGKILLed with a spool on disk and changes in memory.

    The spool outlives the writer, unacknowledged changes are re-sent by the workers, and
    once the server is back everything is committed exactly once, in order.
    """
    pg = EmbeddedPostgres(server_tmp_path / "own-pg")
    url = pg.start()
    conn = connect(url)
    try:
        migrate(conn)
        insert_streamers(conn, sim.create_streamers(300))
        service = services(database_url=url, shard_count="3", memory_buffer="200")
        with running(service):
            start(service, sim, 3, 600)
            sim.start_flipping(rate=150.0, duration=40.0)
            time.sleep(2.0)
            conn.close()
            pg.stop()
            down_at = time.monotonic()
            wait_until(lambda: bool(service.messages("spooled")), 15, what="the writer to spool")
            time.sleep(5.0)
            writer = service.writer_pid()
            os.kill(writer, signal.SIGKILL)  # type: ignore[arg-type]
            wait_until(lambda: service.writer_pid() not in (None, writer), 15, what="writer restarted")
            time.sleep(max(0.0, 30.0 - (time.monotonic() - down_at)))
            pg.restart_after_stop()
            up_at = time.monotonic()
            conn = connect(url)
            back = converge(sim, conn, 40, exact=False)  # current state first: the spool replays in order
            assert sim.wait_flipping_done(timeout=40)
            converge(sim, conn, 40, exact=True)
            record("PostgreSQL stopped 30 s (+ writer SIGKILL during the outage)", back,
                   "server back → DB == truth (then every transition exactly once)")
            assert service.messages("replayed")
            assert not list((tmp_path / "data" / "spool" / "all").glob("*.jsonl")), "spool emptied"
            assert time.monotonic() - up_at < 60
            assert service.stop() == 0
    finally:
        conn.close()
        pg.stop(force=True)


@pytest.mark.slow  # long end to end: make test-slow
@pytest.mark.timeout(120)
def test_sessions_killed_server_side(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory, database_url: str
) -> None:
    """pg_terminate_backend of the writer's, the planner's and the LISTEN sessions, three times.

    The writer reconnects and commits what it held; the planner reconnects and, having
    lost its LISTEN session (notifications are not stored), still picks up a streamer
    added meanwhile.
    """
    insert_streamers(conn, sim.create_streamers(200))
    service = services(shard_count="2", reload_interval="3")
    admin = admin_connection(database_url)
    dbname = database_name(conn)
    try:
        with running(service):
            start(service, sim, 2, 400)
            workers = service.worker_pids()
            sim.start_flipping(rate=200.0, duration=6.0)
            killed: list[str] = []
            for _ in range(3):
                time.sleep(1.5)
                killed += terminate(admin, dbname)
            assert {"kick-monitor writer", "kick-monitor listen"} <= set(killed), killed
            assert any(name.startswith("kick-monitor planner") for name in killed), killed
            assert sim.wait_flipping_done(timeout=30)
            done = time.monotonic()
            late = sim.create_streamers(5, prefix="late")  # created now: the flipper never touched them
            terminate(admin, dbname, "kick-monitor listen")
            insert_streamers(conn, late)  # its NOTIFY goes to a dead session
            added_at = time.monotonic()
            subscribed = wait_for(lambda: sim.subscription_count() >= 410, 15, what="the late streamers subscribed")
            sim.set_live(late[0].slug, True)
            converge(sim, conn, 30, exact=True)
            record("pg_terminate_backend (writer, planner, LISTEN) x3", time.monotonic() - done,
                   "end of traffic → every transition exactly once;"
                   f" a streamer added after: subscribed in {subscribed:.1f} s")
            assert time.monotonic() - added_at < 20
            assert service.worker_pids() == workers, "no worker restarted"
            assert service.stop() == 0
    finally:
        admin.close()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_statement_timeout_while_the_streamers_table_is_locked(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory, database_url: str
) -> None:
    """Another session holds ACCESS EXCLUSIVE on `streamers` for longer than the writer's statement timeout.

    The writer's statement is cancelled by its statement timeout (not the writer killed as
    hung: the timeout stays below the heartbeat timeout), it retries, and once the lock
    is gone every change is committed exactly once.
    """
    insert_streamers(conn, sim.create_streamers(150))
    service = services(shard_count="2", heartbeat_timeout="10", reload_interval="600")
    locker = connect(database_url, application_name="fault-locker")
    try:
        with running(service):
            start(service, sim, 2, 300)
            writer = service.writer_pid()
            sim.start_flipping(rate=100.0, duration=14.0)
            time.sleep(1.0)
            with locker.cursor() as cur:
                cur.execute("LOCK TABLE kick_monitor.streamers IN ACCESS EXCLUSIVE MODE")
            wait_until(lambda: bool(service.messages("statement timeout")), 20,
                       what="the writer's statement to time out")
            # The coordinator must not hang on the lock either: it still replaces a dead worker.
            victim = service.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            replaced = wait_for(lambda: service.worker_pids().get(0) not in (None, victim), 15,
                                what="a worker killed during the lock to be replaced")
            locker.rollback()
            released = time.monotonic()
            assert sim.wait_flipping_done(timeout=30)
            converge(sim, conn, 30, exact=False)
            assert_no_duplicates(conn)
            record("statement timeout (streamers locked past the writer's timeout)", time.monotonic() - released,
                   "lock released → DB == truth, no duplicates"
                   f" (a worker killed under the lock replaced in {replaced:.1f} s)")
            assert service.writer_pid() == writer, "the writer was not killed as hung"
            assert not service.messages("silent for")
            assert service.stop() == 0
    finally:
        locker.close()


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (the test needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow  # long end to end: make test-slow
@pytest.mark.timeout(150)
def test_spool_disk_full_keeps_changes_in_memory_and_recovers(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory, database_url: str,
    tmp_path: Path,
) -> None:
    """The database is unreachable and the spool's filesystem (64 KiB) fills up.

    The writer says so clearly, keeps what it cannot spool in memory (the workers keep
    it too, unacknowledged), does not crash or restart, and commits everything exactly
    once when the database returns.
    """
    insert_streamers(conn, sim.create_streamers(200))
    data_dir = tmp_path / "data"
    admin = admin_connection(database_url)
    dbname = database_name(conn)
    with tiny_filesystem(data_dir / "spool" / "all", "64k") as spool:
        service = services(data_dir=data_dir, shard_count="2", memory_buffer="100")
        try:
            with running(service):
                start(service, sim, 2, 400)
                writer = service.writer_pid()
                sim.start_flipping(rate=200.0, duration=6.0)
                time.sleep(1.0)
                database_unreachable(admin, dbname)
                wait_until(lambda: bool(service.messages("cannot write the spool")), 30,
                           what="the spool to fill up")
                errors = service.messages("cannot write the spool")
                assert "No space left on device" in errors[0]["msg"] or "short write" in errors[0]["msg"]
                assert sim.wait_flipping_done(timeout=30)
                time.sleep(2.0)
                assert service.writer_pid() == writer, "the writer neither crashed nor was restarted"
                assert len(service.messages("cannot write the spool")) <= 3, "the error is not a flood"
                set_connections_allowed(admin, dbname, True)
                back_at = time.monotonic()
                converge(sim, conn, 40, exact=True)
                record("spool disk full (64 KiB tmpfs) while the DB is unreachable", time.monotonic() - back_at,
                       "DB back → every transition exactly once")
                assert service.messages("replayed")
                assert not list(spool.glob("*.jsonl")), "spool emptied"
                assert service.writer_pid() == writer
                assert service.stop() == 0
        finally:
            set_connections_allowed(admin, dbname, True)
            admin.close()
