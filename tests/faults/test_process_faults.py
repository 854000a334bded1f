"""Process faults during traffic: SIGKILL of workers, the writer and the coordinator; SIGSTOP of a worker.

A killed worker loses the frames that were on its socket (and any it had not handed to the
writer); its restarted successor reconciles on connect, so state converges, and history
must never hold a duplicate. The writer holds nothing the workers do not still hold
(acknowledged = durable), so killing it loses nothing at all: history is exact.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import time
from pathlib import Path

import psycopg2.extensions
import pytest

from kick_monitor.process import DUMP_STACKS_SIGNAL
from kick_sim import Simulator
from tests.faults.conftest import ServiceFactory
from tests.faults.faultkit import (
    admin_connection,
    assert_no_duplicates,
    backends,
    converge,
    database_name,
    database_unreachable,
    record,
    set_connections_allowed,
    start,
    wait_for,
)
from tests.service import alive, insert_streamers, running, wait_until

pytestmark = pytest.mark.faults


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "kills", [pytest.param(5, id="5-kills"), pytest.param(20, id="20-kills", marks=pytest.mark.slow)]
)
def test_worker_sigkill_at_random_moments(
    kills: int, sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    insert_streamers(conn, sim.create_streamers(200))
    service = services(shard_count="4", reconcile_interval="5")
    rng = random.Random(kills)
    with running(service):
        start(service, sim, 4, 400)
        writer = service.writer_pid()
        sim.start_flipping(rate=100.0)
        victims: list[int] = []
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 1.2))
            wait_until(lambda: bool(service.worker_pids()), 60, what="a worker to kill")
            workers = service.worker_pids()
            shard = rng.choice(sorted(workers))
            os.kill(workers[shard], signal.SIGKILL)
            victims.append(workers[shard])
        last_kill = time.monotonic()
        time.sleep(1.0)
        sim.stop_flipping()
        wait_until(lambda: len(service.worker_pids()) == 4 and not set(service.worker_pids().values()) & set(victims),
                   45, what="every killed worker replaced")
        converge(sim, conn, 30, exact=False)
        record(f"worker SIGKILL x{kills} (random worker, random moment)", time.monotonic() - last_kill,
               "last kill → DB == truth")
        assert_no_duplicates(conn)
        assert service.writer_pid() == writer, "the writer was not disturbed"
        assert not service.messages("not restarting"), "a killed worker was given up on"
        assert service.stop() == 0


@pytest.mark.slow  # long end to end: make test-slow
@pytest.mark.timeout(150)
def test_writer_sigkill_mid_batch_at_1000_per_second(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory, database_url: str
) -> None:
    insert_streamers(conn, sim.create_streamers(500))
    service = services(shard_count="2")
    admin = admin_connection(database_url)
    dbname = database_name(conn)
    try:
        with running(service):
            start(service, sim, 2, 1000)
            sim.start_flipping(rate=1000.0, duration=8.0)
            mid_statement = 0
            for _ in range(3):
                time.sleep(1.5)
                writer = service.writer_pid()
                assert writer is not None
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:  # catch it inside a statement if we can
                    sessions = backends(admin, dbname)
                    if any(name == "kick-monitor writer" and state != "idle" for _, name, state in sessions):
                        mid_statement += 1
                        break
                os.kill(writer, signal.SIGKILL)

                def replaced(old: int = writer) -> bool:
                    return service.writer_pid() not in (None, old)

                wait_until(replaced, 15, what="writer restarted")
            assert sim.wait_flipping_done(timeout=30)
            flipping_done = time.monotonic()
            converge(sim, conn, 40, exact=True)
            record("writer SIGKILL x3 mid-batch at 1,000 flips/s", time.monotonic() - flipping_done,
                   "end of burst → every transition committed exactly once"
                   f" ({mid_statement}/3 kills inside a statement)")
            assert service.stop() == 0
    finally:
        admin.close()


@pytest.mark.slow  # ~7 s; the fault suite's long cases run in `make test-slow`
@pytest.mark.timeout(150)
def test_coordinator_sigkill_children_exit_and_a_new_run_recovers(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory, database_url: str,
    tmp_path: Path, free_port: object,
) -> None:
    """The database becomes unreachable (so the writer spools), then the coordinator is SIGKILLed.

    Its children must all be gone within seconds (PR_SET_PDEATHSIG + parent checks), the
    writer spooling what it held; a new `run` on the same data dir must replay the spool
    and reconcile, with no history row written twice.
    """
    insert_streamers(conn, sim.create_streamers(150))
    data_dir = tmp_path / "data"
    first = services(data_dir=data_dir, shard_count="2", reconcile_interval="5")
    admin = admin_connection(database_url)
    dbname = database_name(conn)
    try:
        with running(first):
            start(first, sim, 2, 300)
            sim.start_flipping(rate=100.0)
            time.sleep(1.5)
            database_unreachable(admin, dbname)
            wait_until(lambda: bool(first.messages("spooled")), 20, what="the writer to spool")
            time.sleep(1.0)
            children = list(first.children())
            os.kill(first.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            first.proc.wait(5)  # type: ignore[union-attr]
            gone = wait_for(lambda: not any(alive(pid) for pid in children), 5,
                            what="every child of the killed coordinator to exit")
            record("coordinator SIGKILL: all children gone", gone, f"{len(children)} children")
            spool = data_dir / "spool" / "all"
            segments = sorted(spool.glob("*.jsonl"))
            assert segments, "the writer spooled what it held"
            assert stat.S_IMODE(spool.stat().st_mode) == 0o700
            assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in segments)
        sim.stop_flipping()
        set_connections_allowed(admin, dbname, True)
        second = services(data_dir=data_dir, shard_count="2", reconcile_interval="5")
        with running(second):
            converge(sim, conn, 40, exact=False)
            record("coordinator SIGKILL (DB unreachable) → new run", time.monotonic() - killed_at,
                   "kill → new run replayed the spool and reconciled")
            assert second.messages("replayed"), "the new run replayed the spool"
            assert not list((data_dir / "spool" / "all").glob("*.jsonl")), "spool emptied"
            assert_no_duplicates(conn)
            assert second.stop() == 0
    finally:
        set_connections_allowed(admin, dbname, True)
        admin.close()


@pytest.mark.timeout(60)
def test_a_worker_asked_for_its_stacks_writes_them_and_goes_on(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory,
) -> None:
    """DUMP_STACKS_SIGNAL (what the coordinator sends a silent child before the SIGKILL): every
    thread's stack in the service's log, names and lines only, and the worker keeps working."""
    insert_streamers(conn, sim.create_streamers(20))
    service = services(shard_count="1")
    with running(service):
        start(service, sim, 1, 40)
        worker = service.worker_pids()[0]
        os.kill(worker, DUMP_STACKS_SIGNAL)
        # the dump is written frame by frame: wait for the main thread's loop, not only for its first line
        wait_until(lambda: "most recent call first" in service.log_text() and "in step" in service.log_text(), 10,
                   what="the worker's stacks down to its loop")
        text = service.log_text()
        assert "shard_worker.py" in text and "in step" in text  # the main thread, in its loop
        streamer = sim.streamers()[0]
        sim.set_live(streamer.slug, not sim.is_live(streamer.slug))
        converge(sim, conn, 20, exact=True)  # still watching
        assert service.worker_pids()[0] == worker and alive(worker)


@pytest.mark.slow  # 8 s and more: the fault suite's long cases run in `make test-slow`
@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("stop_for", "heartbeat_timeout"),
    [pytest.param(10.0, 5.0, id="10s-stop"), pytest.param(60.0, 30.0, id="60s-stop")],
)
def test_sigstopped_worker_is_killed_and_replaced(
    stop_for: float, heartbeat_timeout: float, sim: Simulator, conn: psycopg2.extensions.connection,
    services: ServiceFactory,
) -> None:
    insert_streamers(conn, sim.create_streamers(200))
    service = services(shard_count="3", heartbeat_timeout=str(heartbeat_timeout), reconcile_interval="5")
    with running(service):
        start(service, sim, 3, 400)
        before = service.worker_pids()
        writer = service.writer_pid()
        sim.start_flipping(rate=50.0)
        time.sleep(1.0)
        victim = before[1]
        os.kill(victim, signal.SIGSTOP)
        try:
            # The stop would last `stop_for` seconds; the heartbeat must end it well before.
            replaced = wait_for(lambda: service.worker_pids().get(1) not in (None, victim),
                                min(stop_for, heartbeat_timeout + 10),
                                what="the stopped worker to be killed and replaced")
        finally:
            if alive(victim):
                os.kill(victim, signal.SIGCONT)
        sim.stop_flipping()
        converge(sim, conn, 30, exact=False)
        record(f"worker SIGSTOP ({heartbeat_timeout:.0f} s heartbeat timeout)", replaced,
               "STOP → killed and replaced")
        assert_no_duplicates(conn)
        assert replaced < heartbeat_timeout + 4
        assert not alive(victim)
        # asked for its stacks first (a stopped process cannot write them; a hung one does)
        assert "worker-1 silent for" in service.log_text()
        assert "stacks follow on stderr" in service.log_text()
        after = service.worker_pids()
        assert {s: p for s, p in after.items() if s != 1} == {s: p for s, p in before.items() if s != 1}
        assert service.writer_pid() == writer
        assert service.messages("silent for")
        assert service.stop() == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_coordinator_sigkill_and_an_immediate_new_run_overlap_without_double_writes(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory, tmp_path: Path,
) -> None:
    """A supervisor restarting at once: the new tree starts while the old children still drain.

    The data dir lock is the coordinator's alone, so the two trees overlap for a moment;
    the old workers stop reading at the SIGTERM, the old writer commits and exits, and the
    result must still be the truth with no history row twice.
    """
    insert_streamers(conn, sim.create_streamers(150))
    data_dir = tmp_path / "data"
    first = services(data_dir=data_dir, shard_count="2", reconcile_interval="5")
    second = services(data_dir=data_dir, shard_count="2", reconcile_interval="5")
    with running(first):
        start(first, sim, 2, 300)
        sim.start_flipping(rate=300.0)
        time.sleep(2.0)
        children = list(first.children())
        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first.proc.wait(5)  # type: ignore[union-attr]
        with running(second):
            overlapping = [pid for pid in children if alive(pid)]
            second.wait_children(2)
            time.sleep(3.0)
            sim.stop_flipping()
            converge(sim, conn, 30, exact=False)
            record("coordinator SIGKILL + immediate new run (trees overlap)", time.monotonic() - killed_at,
                   f"kill → DB == truth; {len(overlapping)} old children still alive when the new run started")
            assert_no_duplicates(conn)
            assert not any(alive(pid) for pid in children)
            assert second.stop() == 0
