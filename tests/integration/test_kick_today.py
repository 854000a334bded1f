"""The API client, resolution and reconciliation against today's Kick (the simulator's default profile).

Web API behind Cloudflare, /public/v1/livestreams deprecated (and switched to 410 mid-run),
wrong and confused answers for big batches. Real HTTP on loopback; nothing is mocked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest

from kick_monitor.kick_api import CHANNELS, LIVESTREAMS, WEB_CHANNEL, KickApiClient, Resolution
from kick_monitor.messages import StreamerRef
from kick_monitor.ratelimit import RetryPolicy
from kick_monitor.reconcile import Reconciler
from kick_sim import SimConfig, SimStreamer, Simulator
from tests.integration.test_kick_api import api_clients

pytestmark = pytest.mark.timeout(120)

FAST = RetryPolicy(attempts=2, backoff_base=0.05, backoff_cap=0.1, rate_limited_retries=2, retry_after_cap=2.0)
ClientFactory = Callable[..., KickApiClient]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=21)) as simulator:  # profile "today" is the default
        yield simulator


@pytest.fixture(autouse=True)
def healthy(sim: Simulator) -> Iterator[None]:
    yield
    sim.set_livestreams_v1("deprecated")
    sim.set_wrong_data_over(None)


@pytest.fixture
def make_client(sim: Simulator) -> Iterator[ClientFactory]:
    with api_clients(sim, sim.config.client_id, sim.config.client_secret, (500.0, 100)) as make:
        yield make


@pytest.fixture(scope="module")
def thousand(sim: Simulator) -> list[SimStreamer]:
    return sim.create_streamers(1000, prefix="slugonly", live_fraction=0.3)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_a_thousand_slugs_resolve_in_one_round(
    sim: Simulator, make_client: ClientFactory, thousand: list[SimStreamer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = make_client()
    found = client.resolve_slugs([s.slug.upper() for s in thousand] + ["nobody_here"])
    assert found["nobody_here"] == Resolution("nobody_here", reason="not found on Kick", found=False, retryable=False)
    live = {s.slug for s in thousand if sim.is_live(s.slug)}
    for streamer in thousand:
        resolution = found[streamer.slug]
        assert resolution.user_id == streamer.user_id, resolution
        if streamer.slug in live:  # the deprecated v1 livestreams still tells live channel ids
            assert resolution.channel_id == streamer.channel_id and resolution.reason is None
        else:
            assert resolution.channel_id is None
            assert resolution.reason is not None and "web API is blocked by Cloudflare" in resolution.reason
    stats = client.stats.snapshot().requests
    assert stats[(CHANNELS, "200")] == 41 + 1  # 1,001 slugs at 25 a request, then the unknown one alone
    assert stats[(LIVESTREAMS, "200")] == 40
    assert client.stats.total(WEB_CHANNEL) == 1  # blocked once, then left alone
    assert len(lines(caplog, "deprecated")) == 1
    assert len(lines(caplog, "blocked by Cloudflare (normal for servers")) == 1
    again = client.resolve_slugs([s.slug for s in thousand[:50]])
    assert all(again[s.slug].user_id == s.user_id for s in thousand[:50])
    assert client.stats.total(WEB_CHANNEL) == 1 and len(lines(caplog, "deprecated")) == 1


def test_v1_livestreams_gone_mid_run_is_said_once_and_resolution_goes_on(
    sim: Simulator, make_client: ClientFactory, thousand: list[SimStreamer], caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    first = client.resolve_slugs([s.slug for s in thousand[:100]])
    assert any(r.channel_id for r in first.values())
    sim.set_livestreams_v1("410")
    caplog.set_level(logging.INFO)
    for chunk in (thousand[100:200], thousand[200:300], thousand[300:400]):
        found = client.resolve_slugs([s.slug for s in chunk])
        assert all(found[s.slug].user_id == s.user_id and found[s.slug].channel_id is None for s in chunk)
        assert all("is off: it answered HTTP 410" in (found[s.slug].reason or "") for s in chunk)
    assert len(lines(caplog, "switched off for this run")) == 1
    assert client.stats.snapshot().requests[(LIVESTREAMS, "410")] == 1  # never asked again
    assert client.livestreams([thousand[0].user_id]) == []
    reconciler = Reconciler(client)
    status = reconciler.fetch_live_status_by_user(s.user_id for s in thousand[:60])
    assert {uid: info.is_live for uid, info in status.items()} == {
        s.user_id: sim.is_live(s.slug) for s in thousand[:60]}


def test_reconcile_asks_confused_batches_again_in_smaller_pieces(
    sim: Simulator, make_client: ClientFactory, thousand: list[SimStreamer]
) -> None:
    client = make_client(batch_size=20)
    reconciler = Reconciler(client)
    asked = thousand[:60]
    truth = {s.user_id: sim.is_live(s.slug) for s in asked}
    sim.set_wrong_data_over(12, kind="ids")  # answers for more than 12 ids carry strangers and duplicates
    by_user = reconciler.fetch_live_status_by_user(s.user_id for s in asked)
    assert {uid: info.is_live for uid, info in by_user.items()} == truth
    assert reconciler.last_report is not None and reconciler.last_report.inconsistent == 3  # each batch of 20
    refs = [StreamerRef(streamer_id=i, username=s.slug, channel_id=s.channel_id, kick_user_id=s.user_id)
            for i, s in enumerate(asked)]
    by_channel = reconciler.fetch_live_status(refs)
    assert {cid: info.is_live for cid, info in by_channel.items()} == {s.channel_id: truth[s.user_id] for s in asked}


def test_default_batches_stay_below_the_wrong_data_threshold(
    sim: Simulator, make_client: ClientFactory, thousand: list[SimStreamer]
) -> None:
    """Kick's reported bug: 50-item batches get wrong live data. 25 (the default) does not."""
    asked = thousand[:100]
    truth = {s.user_id: sim.is_live(s.slug) for s in asked}
    sim.set_wrong_data_over(40)
    big = Reconciler(make_client(batch_size=50)).fetch_live_status_by_user(s.user_id for s in asked)
    assert {uid: i.is_live for uid, i in big.items()} != truth  # the fault is real
    default = Reconciler(make_client()).fetch_live_status_by_user(s.user_id for s in asked)
    assert {uid: i.is_live for uid, i in default.items()} == truth


def test_missing_items_are_unknown_never_offline(
    sim: Simulator, make_client: ClientFactory, thousand: list[SimStreamer]
) -> None:
    reconciler = Reconciler(make_client())
    status = reconciler.fetch_live_status_by_user([thousand[0].user_id, 4242])
    assert set(status) == {thousand[0].user_id}
    ghost = StreamerRef(streamer_id=1, username="no_such_slug", channel_id=99, kick_user_id=None)
    assert reconciler.fetch_live_status([ghost]) == {}


def test_answers_by_streamer_come_one_request_at_a_time(
    sim: Simulator, make_client: ClientFactory, thousand: list[SimStreamer]
) -> None:
    """What a worker reconciles with: each request's answer keyed by row id as soon as it is in."""
    client = make_client()
    reconciler = Reconciler(client)
    by_id = [StreamerRef(i, s.slug, s.channel_id, s.user_id) for i, s in enumerate(thousand[:60])]
    by_slug = [StreamerRef(100 + i, s.slug.upper(), None, None) for i, s in enumerate(thousand[60:70])]
    ghost = StreamerRef(999, "no_such_slug", None, 4242)
    answers = reconciler.answers_by_streamer([*by_id, ghost, *by_slug])
    before = time.monotonic()
    asked, first = next(answers)
    assert before <= asked <= time.monotonic()
    assert client.stats.total(CHANNELS) == 1  # handed over before the next request is sent
    pieces = [(asked, first), *answers]
    assert [len(piece) for _, piece in pieces] == [25, 25, 10, 10]  # 61 user ids (one unknown), then 10 slugs
    assert [asked for asked, _ in pieces] == sorted(asked for asked, _ in pieces)
    merged = {sid: info for _, piece in pieces for sid, info in piece.items()}
    truth = {ref.streamer_id: sim.is_live(ref.username.lower()) for ref in (*by_id, *by_slug)}
    assert {sid: info.is_live for sid, info in merged.items()} == truth  # the ghost: unknown, left out
    report = reconciler.last_report
    assert report is not None and (report.asked, report.answered, report.failed_batches) == (71, 70, 0)
