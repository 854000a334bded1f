"""Kick API faults during traffic, and lifecycle events the socket never delivers.

Whatever the API does, Pusher updates keep flowing (the planner asks the API for its
workers, on a helper thread) and the service stays up; once the API answers again, reconciliation repairs
what the socket missed within about one `reconcile_interval`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg2.extensions
import pytest

from kick_sim import Simulator
from tests.faults.conftest import ServiceFactory
from tests.faults.faultkit import (
    FaultService,
    assert_no_duplicates,
    assert_titles_clean,
    converge,
    delivered_latencies,
    missed_transitions,
    record,
)
from tests.service import insert_streamers, mismatches, running, wait_until

pytestmark = pytest.mark.faults

SHARDS = 2
STREAMERS = 100
INTERVAL = 2.0  # reconcile_interval of these tests


def start(service: FaultService, sim: Simulator, conn: psycopg2.extensions.connection) -> None:
    service.wait_children(SHARDS)
    wait_until(lambda: sim.subscription_count() >= 2 * STREAMERS, 30, what="subscriptions")
    wait_until(lambda: not unknown(conn), 20, what="the first reconciliation to tell every status")
    assert_titles_clean(service)


def unknown(conn: psycopg2.extensions.connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM kick_monitor.streamers WHERE status = 'unknown'")
        (count,) = cur.fetchone()  # type: ignore[misc]
    conn.rollback()
    return int(count)


def assert_pusher_flows(sim: Simulator, conn: psycopg2.extensions.connection, since: float) -> float:
    """Every transition the socket delivered since `since` is committed, promptly (p99 < 1 s); returns p99."""
    latencies = delivered_latencies(sim, conn, since)
    assert latencies, "no traffic during the fault"
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    assert p99 < 1.0, f"Pusher updates stalled during the API fault: p99 {p99:.2f} s, max {latencies[-1]:.2f} s"
    return p99


def miss_some(sim: Simulator, count: int) -> list[str]:
    """`count` streamers change their REST status without a frame (the socket misses it)."""
    slugs = [s.slug for s in sim.streamers()[:count]]
    for slug in slugs:
        sim.set_live(slug, not sim.is_live(slug), send_event=False)
    return slugs


def slow_api(sim: Simulator) -> None:
    sim.set_api_delay(3.0)
    sim.set_api_mode("slow", surface="all")


FAULTS: dict[str, tuple[Callable[[Simulator], None], str]] = {
    "429-storm": (lambda sim: sim.set_api_mode("rate_limit", surface="official", retry_after=1),
                  "429 with Retry-After: 1 on every official API call"),
    "5xx": (lambda sim: sim.set_api_mode("error_500", surface="all", error_status=503), "HTTP 503 everywhere"),
    "cloudflare-403": (lambda sim: sim.set_api_mode("cloudflare_403", surface="all"), "Cloudflare HTML 403 everywhere"),
    "slow": (slow_api, "every answer 3 s late (client timeout 1 s)"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("429-storm", marks=pytest.mark.slow),
        pytest.param("5xx", marks=pytest.mark.slow),
        pytest.param("cloudflare-403", marks=pytest.mark.slow),
        pytest.param("slow", marks=pytest.mark.slow),
    ],
)
def test_api_failure_keeps_pusher_flowing_and_is_repaired_after(
    fault: str, sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    inject, description = FAULTS[fault]
    insert_streamers(conn, sim.create_streamers(STREAMERS))
    service = services(shard_count=str(SHARDS), reconcile_interval=str(INTERVAL), api_timeout="1")
    with running(service):
        start(service, sim, conn)
        workers = service.worker_pids()
        inject(sim)
        fault_start = time.time()
        requests_before = sum(sim.stats()["api_requests"].values())
        sim.start_flipping(rate=30.0, duration=5.0)
        assert sim.wait_flipping_done(timeout=20)
        missed = miss_some(sim, 5)
        time.sleep(2 * INTERVAL + 1.0)  # reconciliation tries (and fails) at least twice
        p99 = assert_pusher_flows(sim, conn, fault_start)
        assert len(mismatches(sim, conn)) == len(missed), "the missed changes cannot be repaired while the API fails"
        requests = sum(sim.stats()["api_requests"].values()) - requests_before
        elapsed = time.time() - fault_start
        # bounded: Retry-After and back-off keep it near one request per worker per second
        assert requests <= SHARDS * 3 * elapsed, f"{requests} API requests in {elapsed:.0f} s: hammering a failing API"
        sim.set_api_mode(None)
        cleared = time.monotonic()
        converge(sim, conn, 30, exact=False)
        repaired = time.monotonic() - cleared
        record(f"Kick API: {description}", repaired,
               f"API healthy again → {len(missed)} missed changes repaired"
               f" (Pusher p99 during the fault {p99 * 1000:.0f} ms)")
        assert_no_duplicates(conn)
        assert service.worker_pids() == workers, "no worker died"
        assert service.stop() == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_token_expiring_every_few_seconds(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    """Tokens live 3 s and are also revoked server-side every 2 s: reconciliation keeps working throughout."""
    sim.set_token_ttl(3)
    insert_streamers(conn, sim.create_streamers(STREAMERS))
    service = services(shard_count=str(SHARDS), reconcile_interval=str(INTERVAL))
    with running(service):
        start(service, sim, conn)
        issued = sim.stats()["tokens_issued"]
        repairs = []
        for _ in range(4):
            sim.expire_tokens()
            missed_at = time.monotonic()
            miss_some(sim, 3)
            converge(sim, conn, 3 * INTERVAL + 3, exact=False)
            repairs.append(time.monotonic() - missed_at)
            time.sleep(1.5)
        assert sim.stats()["tokens_issued"] >= issued + 4, "expired tokens were renewed"
        record("Kick API: token TTL 3 s + all tokens revoked every ~2 s", max(repairs),
               f"missed change → repaired (worst of {len(repairs)};"
               f" {sim.stats()['tokens_issued'] - issued} tokens issued)")
        assert_no_duplicates(conn)
        assert service.stop() == 0


@pytest.mark.timeout(90)
def test_revoked_secret_runs_pusher_only_without_a_loop(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    insert_streamers(conn, sim.create_streamers(STREAMERS))
    service = services(shard_count=str(SHARDS), reconcile_interval="1")
    with running(service):
        start(service, sim, conn)
        workers = service.worker_pids()
        sim.revoke_secret(True)
        sim.expire_tokens()  # the next call needs a new token, which the token endpoint refuses
        revoked = time.monotonic()
        fault_start = time.time()
        sim.start_flipping(rate=40.0, duration=4.0)
        wait_until(lambda: len(service.messages("reconciliation is off")) >= 1, 10,
                   what="the planner to say the tree runs Pusher-only")
        said = time.monotonic() - revoked
        assert sim.wait_flipping_done(timeout=20)
        time.sleep(2.0)  # two more reconcile intervals: nobody asks again
        p99 = assert_pusher_flows(sim, conn, fault_start)
        refused = sim.stats()["api_requests"].get("oauth 401", 0)
        assert refused == 1, f"{refused} refused token requests: one API client per tree, the refusal not retried"
        assert len(service.messages("reconciliation is off")) == 1, "said once, by the planner"
        converge(sim, conn, 10, exact=True)  # Pusher-only still records every transition exactly once
        assert service.worker_pids() == workers
        record("Kick API: 401 revoked secret", said,
               f"revoked → the planner says 'Pusher-only' (Pusher p99 {p99 * 1000:.0f} ms, {refused} token requests)")
        assert service.stop() == 0


@pytest.mark.slow  # long end to end: make test-slow
@pytest.mark.timeout(90)
def test_missed_lifecycle_events_are_repaired_within_one_interval(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    interval = 3.0
    insert_streamers(conn, sim.create_streamers(STREAMERS))
    service = services(shard_count=str(SHARDS), reconcile_interval=str(interval))
    with running(service):
        start(service, sim, conn)
        sim.start_flipping(rate=40.0, duration=3.0, missed_fraction=0.2)
        assert sim.wait_flipping_done(timeout=20)
        done = time.monotonic()
        assert missed_transitions(sim.truth()), "some flips went without a frame"
        converge(sim, conn, interval + 3, exact=False)
        burst = time.monotonic() - done
        singles = []
        for _ in range(2):
            time.sleep(0.7)
            missed_at = time.monotonic()
            miss_some(sim, 1)
            converge(sim, conn, interval + 3, exact=False)
            singles.append(time.monotonic() - missed_at)
        worst = max(burst, *singles)
        record(f"missed lifecycle events (reconcile_interval {interval:.0f} s)", worst,
               f"missed → repaired (burst with 20% missed: {burst:.1f} s; single misses: "
               + ", ".join(f"{s:.1f}" for s in singles) + " s)")
        assert worst <= interval + 1.5, f"repair took {worst:.1f} s, more than one interval ({interval} s)"
        assert_no_duplicates(conn)
        assert service.stop() == 0


@pytest.mark.timeout(120)
def test_reconnect_while_a_slow_reconciliation_runs_is_reconciled_too(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    """A reconnect whose reconciliation would start while the previous one still runs.

    The running one asked about the first streamers before the socket went down again and
    events were lost; unless a reconciliation follows the second reconnect too, nothing
    repairs them (reconcile_interval is long here, as in production).
    """
    count = 60
    insert_streamers(conn, sim.create_streamers(count))
    service = services(shard_count="1", reconcile_interval="600", api_batch_size="5", api_rate="20",
                       api_burst="20", api_timeout="5")
    with running(service):
        service.wait_children(1)
        wait_until(lambda: sim.subscription_count() >= 2 * count, 30, what="subscriptions")
        wait_until(lambda: not unknown(conn), 20, what="the first reconciliation")
        sim.set_api_delay(0.6)
        sim.set_api_mode("slow", surface="official")  # 12 batches: a reconciliation now takes ~7 s
        sim.drop_connections()
        wait_until(lambda: sim.connection_count() == 1, 10, what="reconnect 1")
        time.sleep(1.5)  # its reconciliation has answered for the first batches and goes on
        sim.refuse_connections(True)
        sim.drop_connections()
        first = [s.slug for s in sim.streamers()[:5]]
        for slug in first:  # sent, but nobody is subscribed: lost
            sim.set_live(slug, not sim.is_live(slug))
        sim.refuse_connections(False)
        lost_at = time.monotonic()
        wait_until(lambda: sim.connection_count() == 1, 15, what="reconnect 2")
        sim.set_api_mode(None)
        converge(sim, conn, 20, exact=False)
        record("reconnect during a running reconciliation", time.monotonic() - lost_at,
               "events lost in the second outage → repaired")
        assert_no_duplicates(conn)
        assert service.stop() == 0
