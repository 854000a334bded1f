"""The planner's reconciliation for its workers (`kick_monitor.reconcile_service`), against the simulator.

A real `KickApiClient` asks the simulator's API; the passes are what workers ask over the
assignment channel. The last tests run the real service: workers hold no API client, the
planner reconciles every shard, and a planner killed mid-pass leaves no streamer unrepaired.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2.extensions
import pytest
from pydantic import SecretStr

from kick_monitor.kick_api import KickApiClient
from kick_monitor.messages import LiveAnswer, ReconcileDone, ReconcileRequest, StreamerRef
from kick_monitor.ratelimit import RetryPolicy
from kick_monitor.reconcile_service import THREADS, ReconcileService
from kick_sim import SimStreamer, Simulator
from tests.service import Service, insert_streamers, running, service_env, wait_until

pytestmark = pytest.mark.timeout(120)

FAST = RetryPolicy(attempts=2, backoff_base=0.05, backoff_cap=0.1, rate_limited_retries=3, retry_after_cap=5.0)
Reply = tuple[int, LiveAnswer | ReconcileDone]


def refs_of(streamers: list[SimStreamer], first_id: int) -> tuple[StreamerRef, ...]:
    return tuple(StreamerRef(first_id + i, s.slug, s.channel_id, s.user_id) for i, s in enumerate(streamers))


@pytest.fixture
def make_service(sim: Simulator) -> Iterator[Callable[..., ReconcileService]]:
    made: list[ReconcileService] = []

    def make(secret: str | None = None, batch_size: int = 25, threads: int = THREADS) -> ReconcileService:
        def client() -> KickApiClient:
            return KickApiClient(
                sim.api_base_url, sim.oauth_token_url, sim.web_api_base_url, sim.config.client_id,
                SecretStr(secret if secret is not None else sim.config.client_secret) if secret != "" else None,
                retry=FAST, batch_size=batch_size, rate=(1000.0, 1000),
            )

        service = ReconcileService(client)
        service.start(threads)
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop()


def collect(service: ReconcileService, until: Callable[[list[Reply]], bool], timeout: float = 20.0) -> list[Reply]:
    """Every reply the service hands over, read as the planner's loop reads them (its wake-up pipe)."""
    replies: list[Reply] = []
    deadline = time.monotonic() + timeout
    while not until(replies):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; replies so far: {[(c, type(r).__name__) for c, r in replies]}"
        select.select([service.wake_read], [], [], left)
        replies += service.take()
    return replies


def done_for(replies: list[Reply], *conn_ids: int) -> bool:
    ended = {conn_id for conn_id, reply in replies if isinstance(reply, ReconcileDone)}
    return ended >= set(conn_ids)


def test_passes_of_several_workers_take_turns_request_by_request(
    sim: Simulator, make_service: Callable[..., ReconcileService]
) -> None:
    streamers = sim.create_streamers(150, prefix="turns", live_fraction=0.4)
    first, second = refs_of(streamers[:100], 1), refs_of(streamers[100:], 1001)
    service = make_service(threads=1)  # the turns themselves: with more threads, requests overlap
    service.submit(1, ReconcileRequest(0, 7, tuple(r.streamer_id for r in first)), first)
    service.submit(2, ReconcileRequest(1, 3, tuple(r.streamer_id for r in second)), second)
    replies = collect(service, lambda got: done_for(got, 1, 2))
    answers = [(conn_id, reply) for conn_id, reply in replies if isinstance(reply, LiveAnswer)]
    # 100 streamers = 4 requests of 25, 50 = 2: the second worker's pass is not held behind the first's
    assert [conn_id for conn_id, _ in answers][:4] == [1, 2, 1, 2], [conn_id for conn_id, _ in answers]
    assert sorted(conn_id for conn_id, _ in answers) == [1] * 4 + [2] * 2
    assert {reply.pass_id for conn_id, reply in replies if conn_id == 1} == {7}
    assert {reply.pass_id for conn_id, reply in replies if conn_id == 2} == {3}
    by_id = {ref.streamer_id: ref for ref in (*first, *second)}
    answered: dict[int, bool] = {}
    for _, answer in answers:
        assert isinstance(answer, LiveAnswer) and answer.asked_mono <= time.monotonic()
        for streamer_id, info in answer.live.items():
            assert streamer_id not in answered, "each streamer answered once"
            answered[streamer_id] = info.is_live
    assert answered == {sid: sim.is_live(ref.username) for sid, ref in by_id.items()}
    outcomes = [reply.outcome for _, reply in replies if isinstance(reply, ReconcileDone)]
    assert outcomes == ["ok", "ok"]
    assert service.pending() == 0


def test_passes_of_several_workers_are_asked_at_once_not_one_round_trip_after_another(
    sim: Simulator, make_service: Callable[..., ReconcileService]
) -> None:
    """At Kick's 100–300 ms a request, one request at a time held a tree to a few requests a second,
    below the budget (round 15's regression against one thread per worker): up to THREADS passes now
    have a request in flight at once."""
    streamers = sim.create_streamers(200, prefix="overlap")
    passes = [refs_of(streamers[i * 50:(i + 1) * 50], 1000 * (i + 1)) for i in range(4)]  # 2 requests each
    sim.set_api_delay(0.3)
    sim.set_api_mode("slow", surface="official")

    def repair_all(threads: int) -> float:
        service = make_service(threads=threads)
        started = time.monotonic()
        for conn_id, refs in enumerate(passes, 1):
            service.submit(conn_id, ReconcileRequest(conn_id, 1, tuple(r.streamer_id for r in refs)), refs)
        replies = collect(service, lambda got: done_for(got, 1, 2, 3, 4))
        assert [r.outcome for _, r in replies if isinstance(r, ReconcileDone)] == ["ok"] * 4
        return time.monotonic() - started

    one, many = repair_all(1), repair_all(THREADS)
    print(f"\n8 requests of 0.3 s: one thread {one:.2f} s, {THREADS} threads {many:.2f} s")
    assert one >= 8 * 0.3, one  # 8 requests, one round trip after another
    assert many < 4 * 0.3, f"{THREADS} threads took {many:.2f}s for 8 requests of 0.3s (one thread: {one:.2f}s)"


def test_a_cancelled_pass_asks_nothing_more_and_a_new_pass_replaces_the_old(
    sim: Simulator, make_service: Callable[..., ReconcileService]
) -> None:
    streamers = sim.create_streamers(200, prefix="cancel")
    refs = refs_of(streamers, 1)
    sim.set_api_delay(0.2)
    sim.set_api_mode("slow", surface="official")
    service = make_service()
    before = sim.stats()["api_paths"].get("/public/v1/channels", 0)
    service.submit(5, ReconcileRequest(0, 1, tuple(r.streamer_id for r in refs)), refs)
    collect(service, lambda got: any(isinstance(reply, LiveAnswer) for _, reply in got))
    service.cancel(5)  # the worker's connection closed
    time.sleep(1.0)
    asked = sim.stats()["api_paths"]["/public/v1/channels"] - before
    assert asked <= 2, f"{asked} requests for a pass of 8: it went on after its worker left"
    late = service.take()
    assert len(late) <= 1 and all(isinstance(reply, LiveAnswer) for _, reply in late), "at most the one in flight"
    # a worker asking again (after a reconnection) replaces its pass: only the new one is answered
    sim.set_api_mode(None)
    service.submit(6, ReconcileRequest(0, 1, tuple(r.streamer_id for r in refs[:50])), refs[:50])
    service.submit(6, ReconcileRequest(0, 2, tuple(r.streamer_id for r in refs[50:100])), refs[50:100])
    replies = collect(service, lambda got: done_for(got, 6))
    replaced = [reply for _, reply in replies if reply.pass_id == 1]
    assert len(replaced) <= 1, "at most the request already in flight when the pass was replaced"
    answered = {sid for _, reply in replies if isinstance(reply, LiveAnswer) and reply.pass_id == 2
                for sid in reply.live}
    assert answered == {ref.streamer_id for ref in refs[50:100]}


def test_refused_credentials_turn_reconciliation_off_for_every_pass_until_new_settings(
    sim: Simulator, make_service: Callable[..., ReconcileService], caplog: pytest.LogCaptureFixture
) -> None:
    refs = refs_of(sim.create_streamers(60, prefix="refused"), 1)
    service = make_service()
    sim.revoke_secret(True)
    tokens = sim.stats()["api_requests"].get("oauth 401", 0)
    for conn_id in (1, 2, 3):
        service.submit(conn_id, ReconcileRequest(conn_id, 1, tuple(r.streamer_id for r in refs)), refs)
    replies = collect(service, lambda got: done_for(got, 1, 2, 3))
    assert [reply.outcome for _, reply in replies if isinstance(reply, ReconcileDone)] == ["off"] * 3
    assert sim.stats()["api_requests"].get("oauth 401", 0) - tokens == 1, "the refusal is not retried per worker"
    assert len([r for r in caplog.records if "reconciliation is off" in r.getMessage()]) == 1, "said once"
    service.submit(1, ReconcileRequest(1, 2, tuple(r.streamer_id for r in refs)), refs)
    again = collect(service, lambda got: done_for(got, 1))
    assert [reply.outcome for _, reply in again if isinstance(reply, ReconcileDone)] == ["off"], "until a SIGHUP"
    sim.revoke_secret(False)
    service.settings_changed()  # what the planner does on SIGHUP with new API settings
    service.submit(1, ReconcileRequest(1, 3, tuple(r.streamer_id for r in refs)), refs)
    after = collect(service, lambda got: done_for(got, 1))
    assert [reply.outcome for _, reply in after if isinstance(reply, ReconcileDone)] == ["ok"]
    assert sum(len(reply.live) for _, reply in after if isinstance(reply, LiveAnswer)) == len(refs)


def test_new_api_settings_mid_pass_finish_it_with_the_new_client(sim: Simulator) -> None:
    """A SIGHUP closes the old client (its budget waits end at once, so it must not go on asking)."""
    refs = refs_of(sim.create_streamers(200, prefix="rebuilt"), 1)
    clients: list[KickApiClient] = []

    def client() -> KickApiClient:
        clients.append(KickApiClient(sim.api_base_url, sim.oauth_token_url, sim.web_api_base_url,
                                     sim.config.client_id, SecretStr(sim.config.client_secret), retry=FAST))
        return clients[-1]

    sim.set_api_delay(0.1)
    sim.set_api_mode("slow", surface="official")
    service = ReconcileService(client)
    service.start()
    try:
        service.submit(1, ReconcileRequest(0, 1, tuple(r.streamer_id for r in refs)), refs)
        replies = collect(service, lambda got: len(got) >= 2)
        service.settings_changed()  # SIGHUP with new API settings
        asked_by_old = clients[0].stats.total("/public/v1/channels")
        sim.set_api_mode(None)
        replies += collect(service, lambda got: done_for(got, 1))
    finally:
        service.stop()
    outcomes = [reply.outcome for _, reply in replies if isinstance(reply, ReconcileDone)]
    assert outcomes == ["ok"], outcomes
    answered = {sid for _, reply in replies if isinstance(reply, LiveAnswer) for sid in reply.live}
    assert answered == {ref.streamer_id for ref in refs}
    assert len(clients) == 2
    assert clients[0].stats.total("/public/v1/channels") <= asked_by_old + 1, "the closed client went on asking"
    assert clients[1].stats.total("/public/v1/channels") >= 1, "the pass went on with the new client"


def test_without_credentials_a_pass_ends_off_at_once(
    sim: Simulator, make_service: Callable[..., ReconcileService]
) -> None:
    refs = refs_of(sim.create_streamers(10, prefix="nocreds"), 1)
    service = make_service(secret="")
    service.submit(1, ReconcileRequest(0, 1, tuple(r.streamer_id for r in refs)), refs)
    replies = collect(service, lambda got: done_for(got, 1), timeout=5)
    assert replies == [(1, ReconcileDone(1, "off", "no Kick API credentials"))]


# -- the real service ---------------------------------------------------------------------------
def statuses(conn: psycopg2.extensions.connection) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute("SELECT username, status FROM kick_monitor.streamers")
        rows = dict(cur.fetchall())
    conn.rollback()
    return rows


def hide_changes(sim: Simulator, streamers: list[SimStreamer]) -> dict[str, bool]:
    """Flip every streamer without a Pusher event: only reconciliation can see it."""
    for streamer in streamers:
        sim.set_live(streamer.slug, not sim.is_live(streamer.slug), send_event=False)
    return {s.slug: sim.is_live(s.slug) for s in streamers}


def repaired(conn: psycopg2.extensions.connection, truth: dict[str, bool]) -> int:
    rows = statuses(conn)
    return sum(1 for slug, live in truth.items() if rows.get(slug) == ("online" if live else "offline"))


def role_pid(service: Service, title: str) -> int:
    return next(pid for pid, name in service.children().items() if title in name)


@pytest.fixture
def tree(sim: Simulator, conn: psycopg2.extensions.connection, database_url: str,
         tmp_path: Path) -> Callable[..., tuple[Service, list[SimStreamer]]]:
    """The real service on `count` new streamers (API budget 50/s); run it with `running`."""

    def make(count: int, prefix: str, shards: int, **settings: str) -> tuple[Service, list[SimStreamer]]:
        streamers = sim.create_streamers(count, prefix=prefix, live_fraction=0.3)
        insert_streamers(conn, streamers)
        service = Service(service_env(sim, database_url, tmp_path / "data", shard_count=str(shards), api_rate="50",
                                      api_burst="20", **settings), tmp_path / "service.log")
        return service, streamers

    return make


def wait_reconciled(service: Service, sim: Simulator, conn: psycopg2.extensions.connection,
                    streamers: list[SimStreamer], shards: int) -> None:
    service.wait_children(shards)
    wait_until(lambda: sim.subscription_count() >= 2 * len(streamers), 30, what="subscriptions")
    wait_until(lambda: "unknown" not in statuses(conn).values(), 30, what="the first reconciliation")


@pytest.mark.timeout(150)
def test_the_planner_reconciles_every_shard_with_one_api_client(
    sim: Simulator, conn: psycopg2.extensions.connection, tree: Callable[..., tuple[Service, list[SimStreamer]]]
) -> None:
    service, streamers = tree(200, "oneclient", 4, reconcile_interval="3")
    tokens_before = sim.stats()["tokens_issued"]
    with running(service):
        wait_reconciled(service, sim, conn, streamers, 4)
        truth = hide_changes(sim, streamers)
        wait_until(lambda: repaired(conn, truth) == len(streamers), 30, what="every shard repaired by the API")
        workers = {pid for pid, name in service.children().items() if "worker shard" in name}
        assert len(workers) == 4
        tokens = sim.stats()["tokens_issued"] - tokens_before
        # the planner's reconciliation client and its resolver at most: one token each, not one per worker
        assert 1 <= tokens <= 2, f"{tokens} OAuth tokens for a tree of 4 workers"
        assert service.stop() == 0


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_planner_killed_mid_pass_leaves_no_streamer_unrepaired(
    sim: Simulator, conn: psycopg2.extensions.connection, tree: Callable[..., tuple[Service, list[SimStreamer]]]
) -> None:
    service, streamers = tree(300, "midpass", 1, reconcile_interval="0")
    with running(service):
        wait_reconciled(service, sim, conn, streamers, 1)
        worker = role_pid(service, "worker shard 0")
        sim.set_api_delay(0.25)  # a pass of 12 requests takes ~3 s
        sim.set_api_mode("slow", surface="official")
        truth = hide_changes(sim, streamers)
        sim.drop_connections()  # the worker reconnects and asks for a pass (reconcile_interval 0: only then)
        wait_until(lambda: repaired(conn, truth) > 0, 20, what="the pass's first answers applied")
        assert repaired(conn, truth) < len(streamers), "the pass ended before the planner could be killed"
        os.kill(role_pid(service, "planner"), signal.SIGKILL)
        wait_until(lambda: repaired(conn, truth) == len(streamers), 40,
                   what="the pass asked again of the new planner and finished")
        assert role_pid(service, "worker shard 0") == worker, "the worker was not restarted"
        assert service.stop() == 0

