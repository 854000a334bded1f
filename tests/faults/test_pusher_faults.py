"""Pusher faults during traffic: dropped sockets, 4200 storms, 4100 over capacity, silence, refusals, 4001.

Frames published while a socket is down are lost by nature; every reconnect is followed
by a reconciliation, so state converges and history never holds a duplicate. Reconnects
must be bounded (no storm): counted on the simulator's side.
"""

from __future__ import annotations

import re
import time

import psycopg2.extensions
import pytest

from kick_sim import Simulator
from tests.faults.conftest import ServiceFactory
from tests.faults.faultkit import (
    FaultService,
    assert_no_duplicates,
    assert_titles_clean,
    converge,
    record,
    wait_for,
)
from tests.service import insert_streamers, running, wait_until

pytestmark = pytest.mark.faults

SHARDS = 2
STREAMERS = 150
DELAY_RE = re.compile(r"\(code (\d+|None), .*\): reconnecting in ([0-9.]+)s")


def start(service: FaultService, sim: Simulator) -> None:
    service.wait_children(SHARDS)
    wait_until(lambda: sim.subscription_count() >= 2 * STREAMERS, 30, what="subscriptions")
    assert_titles_clean(service)


def reconnect_delays(service: FaultService, code: int) -> list[float]:
    """Every back-off the workers logged after a close with `code`."""
    delays = []
    for record_ in service.messages("reconnecting in"):
        match = DELAY_RE.search(record_["msg"])
        if match and match.group(1) == str(code):
            delays.append(float(match.group(2)))
    return delays


def finish(service: FaultService, sim: Simulator, conn: psycopg2.extensions.connection, since: float,
           fault: str, detail: str) -> None:
    """Stop the traffic, wait for DB == truth, check history, record the recovery time."""
    sim.stop_flipping()
    converge(sim, conn, 45, exact=False)
    record(fault, time.monotonic() - since, detail)
    assert_no_duplicates(conn)
    assert service.stop() == 0


@pytest.mark.slow  # long end to end: make test-slow
@pytest.mark.timeout(120)
def test_all_connections_dropped_repeatedly(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    insert_streamers(conn, sim.create_streamers(STREAMERS))
    service = services(shard_count=str(SHARDS))
    with running(service):
        start(service, sim)
        workers = service.worker_pids()
        sim.start_flipping(rate=100.0)
        for _ in range(3):
            time.sleep(1.0)
            wait_until(lambda: sim.connection_count() == SHARDS, 15, what="every shard connected")
            assert sim.drop_connections() == SHARDS
        dropped_at = time.monotonic()
        wait_for(lambda: sim.connection_count() == SHARDS and sim.subscription_count() >= 2 * STREAMERS, 15,
                 what="every shard reconnected and resubscribed")
        assert service.worker_pids() == workers, "a dropped socket costs a reconnect, not a worker"
        finish(service, sim, conn, dropped_at, "Pusher: all connections dropped (x3)", "last drop → DB == truth")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_4200_storm_is_met_with_bounded_reconnects(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    """For 5 s every socket, old or new, is told 4200 "reconnect immediately" (a server shutting down)."""
    insert_streamers(conn, sim.create_streamers(STREAMERS))
    service = services(shard_count=str(SHARDS))
    with running(service):
        start(service, sim)
        sim.start_flipping(rate=100.0)
        before = sim.stats()["connections_total"]
        storm_end = time.monotonic() + 5.0
        while time.monotonic() < storm_end:
            sim.send_pusher_error(4200, "Please reconnect immediately")
            time.sleep(0.05)
        attempts = sim.stats()["connections_total"] - before
        # equal-jitter back-off from 0.1-0.2 s, doubling: at most ~6 attempts fit in 5 s per shard
        assert attempts <= 8 * SHARDS, f"{attempts} connections in a 5 s storm: a reconnect storm"
        wait_for(lambda: sim.connection_count() == SHARDS, 15, what="every shard reconnected")
        finish(service, sim, conn, storm_end, "Pusher: 4200 storm (every socket, 5 s)",
               f"storm end → DB == truth; {attempts} connections during the storm for {SHARDS} shards")


@pytest.mark.timeout(180)
@pytest.mark.slow
@pytest.mark.parametrize("window", [pytest.param(8.0, id="8s"), pytest.param(30.0, id="30s")])
def test_4100_over_capacity_backs_off_at_least_a_second(
    window: float, sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    insert_streamers(conn, sim.create_streamers(STREAMERS))
    service = services(shard_count=str(SHARDS))
    with running(service):
        start(service, sim)
        sim.start_flipping(rate=50.0)
        before = sim.stats()["connections_total"]
        end = time.monotonic() + window
        while time.monotonic() < end:
            sim.send_pusher_error(4100, "Over capacity")
            time.sleep(0.05)
        attempts = sim.stats()["connections_total"] - before
        delays = reconnect_delays(service, 4100)
        assert delays and min(delays) >= 1.0, f"4100 back-off below 1 s: {delays}"
        # >= 1 s, doubling from 2 s: 3 attempts fit in 8 s, 5 in 30 s (per shard)
        assert attempts <= (4 if window < 10 else 6) * SHARDS, f"{attempts} connections while over capacity"
        wait_for(lambda: sim.connection_count() == SHARDS, 40, what="every shard reconnected")
        finish(service, sim, conn, end, f"Pusher: 4100 over capacity for {window:.0f} s",
               f"end of window → DB == truth; {attempts} connections in the window,"
               f" back-offs {min(delays):.1f}-{max(delays):.1f} s")


@pytest.mark.timeout(120)
def test_silent_server_is_detected_by_the_pong_timeout(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    """Sockets stay open but nothing comes back, not even pongs: a half-open link."""
    insert_streamers(conn, sim.create_streamers(STREAMERS))
    service = services(shard_count=str(SHARDS), activity_timeout="2", pong_timeout="2")
    with running(service):
        start(service, sim)
        workers = service.worker_pids()
        sim.start_flipping(rate=50.0)
        time.sleep(1.0)
        before = sim.stats()["connections_total"]
        assert sim.set_silent(True) == SHARDS
        silenced = time.monotonic()
        detected = wait_for(lambda: sim.stats()["connections_total"] >= before + SHARDS, 15,
                            what="every shard to notice the silence and reconnect")
        # activity timeout + pong timeout + one reconnect back-off (0.5-1 s), with room for a busy host
        assert detected < 2 + 2 + 1 + 3, f"silence noticed after {detected:.1f} s"
        assert any(r.get("reason") == "pong_timeout" for r in service.messages("reconnecting in"))
        assert service.worker_pids() == workers
        finish(service, sim, conn, silenced, "Pusher: server silent (no pongs), activity 2 s + pong 2 s",
               f"silence → DB == truth (reconnected after {detected:.1f} s)")


@pytest.mark.timeout(200)
@pytest.mark.slow
@pytest.mark.parametrize("window", [pytest.param(10.0, id="10s"), pytest.param(60.0, id="60s")])
def test_refused_connections_are_retried_with_bounded_attempts(
    window: float, sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    insert_streamers(conn, sim.create_streamers(STREAMERS))
    service = services(shard_count=str(SHARDS))
    with running(service):
        start(service, sim)
        workers = service.worker_pids()
        sim.start_flipping(rate=50.0)
        time.sleep(1.0)
        sim.refuse_connections(True)
        sim.drop_connections()
        time.sleep(window)
        refused = sim.stats()["connections_refused"]
        sim.refuse_connections(False)
        reopened = time.monotonic()
        # 0.5-1 s doubling, capped at 15-30 s: 4 attempts fit in 10 s, 7 in 60 s (per shard)
        assert 1 <= refused <= (5 if window < 30 else 8) * SHARDS, f"{refused} refused attempts in {window:.0f} s"
        back = wait_for(lambda: sim.connection_count() == SHARDS, 35, what="every shard reconnected")
        assert service.worker_pids() == workers
        finish(service, sim, conn, reopened, f"Pusher: connections refused (HTTP 503) for {window:.0f} s",
               f"refusal over → DB == truth (reconnected after {back:.1f} s; {refused} refused attempts)")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("when", ["at-connect", "while-running"])
def test_4001_wrong_app_key_stops_the_service_with_78(
    when: str, sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    insert_streamers(conn, sim.create_streamers(20))
    url = sim.pusher_url
    if when == "at-connect":
        url = url.replace(f"/app/{sim.config.app_key}", "/app/wrongkey0000")
    service = services(shard_count=str(SHARDS), pusher_url=url)
    with running(service):
        if when == "while-running":
            service.wait_children(SHARDS)
            wait_until(lambda: sim.connection_count() == SHARDS, 20, what="connections")
            sim.send_pusher_error(4001, "App key wrongkey not in cache")
        started = time.monotonic() if when == "while-running" else service.started_at
        assert service.proc is not None
        code = service.proc.wait(20)
        took = time.monotonic() - started
        assert code == 78, f"exit code {code}"
        fatal = service.messages("fatal configuration error")
        assert fatal and "4001" in fatal[0]["msg"], "one clear fatal line naming the code"
        assert len(service.messages("started worker-")) == SHARDS, "no worker was restarted"
        assert sim.stats()["connections_total"] <= SHARDS * (2 if when == "while-running" else 1) + SHARDS
        record(f"Pusher: 4001 wrong app key ({when})", took, "→ service exited 78, no restart loop")
