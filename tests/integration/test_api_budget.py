"""One Kick API rate budget per app, shared through PostgreSQL, measured at the simulator.

Several `SharedBudget`s (each with its own connection, as separate processes have) against
the tests' real PostgreSQL and the simulator; the slow test runs the real service with 20
workers. Rates are measured where Kick would see them: request arrivals at the simulator,
in sliding 1 s windows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
from pydantic import SecretStr

from kick_monitor.api_budget import SharedBudget
from kick_monitor.kick_api import KickApiClient
from kick_monitor.ratelimit import RetryPolicy
from kick_sim import SimConfig, SimStreamer, Simulator
from tests.service import Service, insert_streamers, running, service_env, wait_until

# Rate measurements over tens of seconds at the simulator: `make test-slow`.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RATE, BURST = 5.0, 2
FAST = RetryPolicy(attempts=2, backoff_base=0.05, backoff_cap=0.1, rate_limited_retries=3, retry_after_cap=5.0)


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=31)) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def streamers(sim: Simulator) -> list[SimStreamer]:
    return sim.create_streamers(100, prefix="budget", live_fraction=0.2)


@pytest.fixture
def make_client(sim: Simulator, database_url: str) -> Iterator[Callable[..., KickApiClient]]:
    made: list[KickApiClient] = []

    def make(url: str | None = None, **budget_options: Any) -> KickApiClient:
        budget = SharedBudget(url or database_url, sim.config.client_id, RATE, BURST, **budget_options)
        client = KickApiClient(sim.api_base_url, sim.oauth_token_url, sim.web_api_base_url, sim.config.client_id,
                               SecretStr(sim.config.client_secret), retry=FAST, budget=budget)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def busiest_second(arrivals: list[float]) -> int:
    """Most requests in any sliding 1 s window."""
    most, start = 0, 0
    for end, moment in enumerate(arrivals):
        while moment - arrivals[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def hammer(clients: list[KickApiClient], user_ids: list[int], seconds: float) -> int:
    """Every client asks as fast as it may, each on its own thread, for `seconds`."""
    stop = time.monotonic() + seconds
    sent = [0] * len(clients)

    def run(index: int) -> None:
        while time.monotonic() < stop:
            clients[index].channels_by_user_id(user_ids[index % len(user_ids):][:1] or user_ids[:1])
            sent[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(sent)


def budget_row(conn: psycopg2.extensions.connection) -> tuple[float, float, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT rate, base_rate, rate_limited_total FROM kick_monitor.api_budget")
        row = cur.fetchone()
    conn.rollback()
    assert row is not None
    return float(row[0]), float(row[1]), int(row[2])


def test_four_processes_share_one_rate(
    sim: Simulator, streamers: list[SimStreamer], make_client: Callable[..., KickApiClient]
) -> None:
    clients = [make_client() for _ in range(4)]
    for client in clients:
        client.tokens.token() if client.tokens else None  # the OAuth request is not part of the measure
    since = time.monotonic()
    sent = hammer(clients, [s.user_id for s in streamers], 3.0)
    arrivals = [t for t in sim.api_arrivals("official") if t >= since]
    assert len(arrivals) == sent
    assert busiest_second(arrivals) <= RATE + BURST, arrivals
    span = arrivals[-1] - arrivals[0]
    assert sent <= RATE * span + BURST + 1
    assert sent >= RATE * 2  # and the budget is used, not starved
    assert all(c.stats.snapshot().current_rate == RATE for c in clients)


def test_a_429_seen_by_one_slows_every_caller(
    sim: Simulator, streamers: list[SimStreamer], conn: psycopg2.extensions.connection,
    make_client: Callable[..., KickApiClient], caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = make_client(), make_client()
    first.channels_by_user_id([streamers[0].user_id])
    second.channels_by_user_id([streamers[1].user_id])
    sim.set_api_mode("rate_limit", surface="official", retry_after=2)
    caplog.set_level(logging.WARNING)
    before = len(sim.api_arrivals("official"))
    limited = threading.Thread(target=first.channels_by_user_id, args=([streamers[2].user_id],))
    limited.start()  # gets a 429, waits Retry-After, then succeeds
    wait_until(lambda: len(sim.api_arrivals("official")) > before, 5, what="the 429")
    sim.set_api_mode(None)
    first_429 = sim.api_arrivals("official")[before]
    second.channels_by_user_id([streamers[3].user_id])  # never saw a 429, yet waits out the pause
    limited.join()
    late = sim.api_arrivals("official")[before + 1:]
    assert len(late) == 2 and all(t - first_429 >= 1.9 for t in late), "nobody asks Kick during Retry-After"
    rate, base, count = budget_row(conn)
    assert count == 1 and rate == pytest.approx(base / 2, rel=0.05)
    assert second.stats.snapshot().current_rate < RATE
    assert second.stats.snapshot().rate_limited == 0
    assert any("shared rate now" in r.getMessage() for r in caplog.records)


def test_without_the_database_each_process_paces_itself(
    sim: Simulator, streamers: list[SimStreamer], make_client: Callable[..., KickApiClient],
    caplog: pytest.LogCaptureFixture, free_port: Callable[[], int],
) -> None:
    caplog.set_level(logging.WARNING)
    client = make_client(f"postgresql://nobody@127.0.0.1:{free_port()}/none", fallback_share=5)
    since = time.monotonic()
    for streamer in streamers[:3]:
        client.channels_by_user_id([streamer.user_id])
    elapsed = time.monotonic() - since
    assert elapsed >= 2 * 0.9 / (RATE / 5)  # 1 request/s: its share if all five processes fell back
    assert len([r for r in caplog.records if "budget unavailable" in r.getMessage()]) == 1


@pytest.mark.slow
def test_twenty_workers_stay_within_five_requests_per_second(
    sim: Simulator, streamers: list[SimStreamer], conn: psycopg2.extensions.connection, database_url: str,
    tmp_path: Path,
) -> None:
    insert_streamers(conn, streamers)  # five streamers per worker
    service = Service(
        service_env(sim, database_url, tmp_path / "data", shard_count="20", reconcile_interval="1",
                    api_rate=str(RATE), api_burst=str(BURST), api_batch_size="2"),
        tmp_path / "service.log",
    )
    with running(service):
        service.wait_children(20, timeout=60)
        wait_until(lambda: sim.subscription_count() >= 200, 60, what="every streamer subscribed")
        since = time.monotonic()
        time.sleep(12)
        arrivals = [t for t in sim.api_arrivals("official") if t >= since]
        # 20 workers × 3 requests a second wanted; the budget lets 5 through
        assert len(arrivals) >= RATE * 12 * 0.8, len(arrivals)
        assert busiest_second(arrivals) <= RATE + BURST, arrivals
        sim.set_rate_limit(3, 1.0)  # Kick's real limit turns out lower: 429s
        wait_until(lambda: budget_row(conn)[2] >= 1, 20, what="a 429")
        time.sleep(3)
        rate, base, _ = budget_row(conn)
        assert rate <= base / 2 + 0.5, "one 429 halved the rate of every caller"
        sim.set_rate_limit(None)
        assert service.stop() == 0
