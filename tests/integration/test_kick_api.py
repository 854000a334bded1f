"""KickApiClient, id resolution and reconciliation against the local Kick simulator.

Real HTTP on loopback throughout: the simulator for Kick's behaviour (tokens that expire,
429s, Cloudflare blocks, slowness), and a tiny canned server for malformed answers the
simulator does not produce. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from kick_monitor.kick_api import (
    CHANNELS,
    LIVESTREAMS,
    TOKEN_ENDPOINT,
    WEB_CHANNEL,
    KickApiClient,
    KickApiError,
    KickApiUnavailable,
    KickAuthError,
    KickBlockedError,
    KickNoCredentialsError,
    KickNotFoundError,
    ResolvedIds,
    Unresolved,
    parse_time,
)
from kick_monitor.messages import Status, StreamerRef
from kick_monitor.ratelimit import RetryPolicy
from kick_monitor.reconcile import LiveInfo, Reconciler, diff_live_status
from kick_sim import SimConfig, SimStreamer, Simulator

pytestmark = pytest.mark.timeout(60)

CLIENT_ID = "sim-client-id"
SECRET = "s3cret-" + secrets.token_hex(12)  # distinctive, so a leak is found by grep
FAST = RetryPolicy(attempts=3, backoff_base=0.05, backoff_cap=0.2,
                   rate_limited_retries=3, retry_after_cap=5.0)
ClientFactory = Callable[..., KickApiClient]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    # classic: these tests exercise the open web API too (tests/integration/test_kick_today.py: today's Kick)
    config = SimConfig(port=0, http_port=0, client_id=CLIENT_ID, client_secret=SECRET, seed=1, profile="classic")
    with Simulator(config) as simulator:
        simulator.create_streamers(120, live_fraction=0.3)
        yield simulator


@pytest.fixture(autouse=True)
def healthy(sim: Simulator) -> Iterator[None]:
    """Every test starts and ends with a well-behaved Kick."""
    yield
    sim.set_api_mode(None)
    sim.set_rate_limit(None)
    sim.set_api_delay(5.0)
    sim.set_token_ttl(3600)
    sim.revoke_secret(False)


@contextlib.contextmanager
def api_clients(
    sim: Simulator, client_id: str | None, secret: str | None, rate: tuple[float, int]
) -> Iterator[ClientFactory]:
    """A factory of real clients of `sim` (closed at the end): `make(secret=..., client_id=..., **options)`."""
    made: list[KickApiClient] = []

    def make(secret: str | None = secret, client_id: str | None = client_id, **options: Any) -> KickApiClient:
        options.setdefault("rate", rate)
        options.setdefault("retry", FAST)
        client = KickApiClient(
            sim.api_base_url, sim.oauth_token_url, sim.web_api_base_url, client_id,
            SecretStr(secret) if secret is not None else None, **options,
        )
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.close()


@pytest.fixture
def make_client(sim: Simulator) -> Iterator[ClientFactory]:
    with api_clients(sim, CLIENT_ID, SECRET, (200.0, 50)) as make:
        yield make


@pytest.fixture(scope="module")
def streamers(sim: Simulator) -> list[SimStreamer]:
    return sim.streamers()


def sim_requests(sim: Simulator, key: str) -> int:
    """How many answers the simulator gave, e.g. key="oauth 200" or "official 401"."""
    return int(sim.stats()["api_requests"].get(key, 0))


def ref(streamer: SimStreamer, status: Status = "unknown") -> StreamerRef:
    return StreamerRef(streamer_id=streamer.user_id, username=streamer.slug,
                       channel_id=streamer.channel_id, kick_user_id=streamer.user_id,
                       status=status)


# ---------------------------------------------------------------- tokens


def test_token_is_fetched_lazily_and_cached(sim: Simulator, make_client: ClientFactory,
                                            streamers: list[SimStreamer]) -> None:
    before = sim_requests(sim, "oauth 200")
    client = make_client()
    assert client.has_credentials
    assert sim_requests(sim, "oauth 200") == before  # nothing sent at construction
    for streamer in streamers[:3]:
        client.channels_by_slug([streamer.slug])
    assert sim_requests(sim, "oauth 200") == before + 1
    assert client.stats.snapshot().token_refreshes == 1


def test_token_is_renewed_before_it_expires(sim: Simulator, make_client: ClientFactory,
                                            streamers: list[SimStreamer]) -> None:
    sim.set_token_ttl(5)
    client = make_client()
    started = time.monotonic()
    renewed_at: float | None = None  # when (since before the first token) a call renewed it
    calls = 0
    while time.monotonic() - started < 7.0:
        call_started = time.monotonic() - started
        assert client.channels_by_slug([streamers[0].slug])
        calls += 1
        if renewed_at is None and client.stats.snapshot().token_refreshes == 2:
            renewed_at = call_started
        time.sleep(0.2)
    snap = client.stats.snapshot()
    assert snap.token_refreshes == 2
    # renewed ahead of time (margin 10 % = 0.5 s), not after the 5 s token had died
    assert renewed_at is not None and 4.4 <= renewed_at < 4.9, renewed_at
    assert (CHANNELS, "401") not in snap.requests  # never sent a dead token
    assert snap.requests[(CHANNELS, "200")] == calls


def test_expired_token_is_renewed_once_and_the_request_retried(
    sim: Simulator, make_client: ClientFactory, streamers: list[SimStreamer]
) -> None:
    client = make_client()
    client.channels_by_slug([streamers[0].slug])
    assert sim.expire_tokens() >= 1
    assert [c.slug for c in client.channels_by_slug([streamers[1].slug])] == [streamers[1].slug]
    snap = client.stats.snapshot()
    assert snap.requests[(CHANNELS, "401")] == 1
    assert snap.requests[(TOKEN_ENDPOINT, "200")] == 2
    assert snap.token_refreshes == 2


def test_wrong_secret_fails_fast_and_is_not_retried(sim: Simulator,
                                                    make_client: ClientFactory) -> None:
    before = sim_requests(sim, "oauth 401")
    client = make_client(secret="wrong-" + secrets.token_hex(8))
    started = time.monotonic()
    with pytest.raises(KickAuthError, match="rejected the client credentials"):
        client.channels_by_slug(["streamer_1"])
    with pytest.raises(KickAuthError):  # remembered: no second token request
        client.livestreams([1])
    assert time.monotonic() - started < 1.0
    assert sim_requests(sim, "oauth 401") == before + 1
    assert client.stats.total() == 1


def test_revoked_secret_after_expiry_is_a_clear_auth_error(
    sim: Simulator, make_client: ClientFactory, streamers: list[SimStreamer]
) -> None:
    client = make_client()
    client.channels_by_slug([streamers[0].slug])
    sim.revoke_secret()
    sim.expire_tokens()
    with pytest.raises(KickAuthError, match="check the client id and secret"):
        client.channels_by_slug([streamers[0].slug])
    # one 401 from the API, one refused token request, and nothing more
    assert client.stats.total() == 4


def test_without_credentials_official_calls_are_refused_locally(
    make_client: ClientFactory, streamers: list[SimStreamer]
) -> None:
    client = make_client(secret=None, client_id=None)
    assert not client.has_credentials
    with pytest.raises(KickNoCredentialsError):
        client.channels_by_slug([streamers[0].slug])
    reconciler = Reconciler(client)
    assert not reconciler.enabled
    assert reconciler.fetch_live_status([ref(streamers[0])]) == {}
    assert client.stats.total() == 0
    # the web API needs no credentials
    assert client.channel_v2(streamers[0].slug).id == streamers[0].channel_id


# ---------------------------------------------------------------- endpoints


def test_channels_by_slug_in_batches_match_the_truth(sim: Simulator, make_client: ClientFactory,
                                                     streamers: list[SimStreamer]) -> None:
    client = make_client()
    slugs = [s.slug for s in streamers]
    assert len(slugs) == 120
    channels = client.channels_by_slug([slug.upper() for slug in slugs] + ["nobody_here"])
    assert client.stats.snapshot().requests[(CHANNELS, "200")] == 5  # 25 a request by default: 4 × 25 + 21
    assert sorted(c.slug for c in channels) == sorted(slugs)  # unknown slug left out
    by_user = {s.user_id: s for s in streamers}
    live = 0
    for channel in channels:
        assert channel.is_live == sim.is_live(channel.slug)
        assert by_user[channel.broadcaster_user_id].slug == channel.slug
        live += channel.is_live
        assert (channel.started_at is not None) == channel.is_live
    assert 0 < live < 120

    small = make_client(batch_size=20)
    assert len(small.channels_by_user_id([s.user_id for s in streamers])) == 120
    assert small.stats.snapshot().requests[(CHANNELS, "200")] == 6
    with pytest.raises(ValueError):
        make_client(batch_size=51)


def test_livestreams_list_only_live_streams_with_channel_ids(
    sim: Simulator, make_client: ClientFactory, streamers: list[SimStreamer]
) -> None:
    client = make_client()
    assert client.livestreams([]) == []
    assert client.stats.total() == 0  # an empty filter would list all of Kick
    streams = client.livestreams([s.user_id for s in streamers])
    live = {s.user_id: s for s in streamers if sim.is_live(s.slug)}
    assert {st.broadcaster_user_id for st in streams} == set(live)
    for stream in streams:
        assert stream.channel_id == live[stream.broadcaster_user_id].channel_id
    assert client.stats.snapshot().requests[(LIVESTREAMS, "200")] == 5


def test_channel_v2_gives_all_ids_and_404_for_unknown(
    sim: Simulator, make_client: ClientFactory, streamers: list[SimStreamer]
) -> None:
    client = make_client(secret=None, client_id=None)
    streamer = streamers[5]
    web = client.channel_v2(streamer.slug)
    assert (web.id, web.user_id, web.chatroom.id) == (
        streamer.channel_id, streamer.user_id, streamer.chatroom_id)
    assert (web.livestream is not None) == sim.is_live(streamer.slug)
    with pytest.raises(KickNotFoundError, match="not found on Kick"):
        client.channel_v2("no_such_streamer")


@pytest.mark.parametrize("body", ["json", "html"])
def test_cloudflare_403_is_a_blocked_error(sim: Simulator, make_client: ClientFactory,
                                           streamers: list[SimStreamer], body: str) -> None:
    client = make_client()
    sim.set_api_mode("cloudflare_403", surface="web", cloudflare_body=body)
    with pytest.raises(KickBlockedError, match=r"blocked by Cloudflare on /api/v2/channels \(HTTP 403\)"):
        client.channel_v2(streamers[0].slug)
    sent = client.stats.total(WEB_CHANNEL)
    with pytest.raises(KickBlockedError, match="not asked again"):  # backed off: no traffic
        client.channel_v2(streamers[1].slug)
    assert client.stats.total(WEB_CHANNEL) == sent
    sim.set_api_mode("cloudflare_403", surface="official", cloudflare_body=body)
    with pytest.raises(KickBlockedError):
        client.channels_by_slug([streamers[0].slug])
    assert client.stats.snapshot().retries == 0  # a block is not retried


def test_429_honours_retry_after_then_succeeds(sim: Simulator, make_client: ClientFactory,
                                               streamers: list[SimStreamer]) -> None:
    client = make_client()
    sim.set_rate_limit(3, 2.0)  # fixed 2 s window: the 4th request gets Retry-After ≈ 2
    started = time.monotonic()
    for streamer in streamers[:6]:
        assert client.channel_v2(streamer.slug).id == streamer.channel_id
    waited = time.monotonic() - started
    snap = client.stats.snapshot()
    assert snap.rate_limited == 1
    assert snap.requests[(WEB_CHANNEL, "429")] == 1
    assert 1.0 <= waited < 4.0, waited


def test_persistent_429_gives_up_as_unavailable(sim: Simulator, make_client: ClientFactory,
                                                streamers: list[SimStreamer]) -> None:
    client = make_client(retry=RetryPolicy(rate_limited_retries=2, retry_after_cap=5.0))
    sim.set_api_mode("rate_limit", surface="web", retry_after=1)
    started = time.monotonic()
    with pytest.raises(KickApiUnavailable, match="still rate limited"):
        client.channel_v2(streamers[0].slug)
    assert 2.0 <= time.monotonic() - started < 4.0  # waited Retry-After twice
    assert client.stats.snapshot().requests[(WEB_CHANNEL, "429")] == 3


def test_5xx_is_retried_with_backoff_then_unavailable(
    sim: Simulator, make_client: ClientFactory, streamers: list[SimStreamer]
) -> None:
    client = make_client()
    client.channels_by_slug([streamers[0].slug])  # token in hand
    sim.set_api_mode("error_500", surface="official", error_status=503)
    with pytest.raises(KickApiUnavailable, match="HTTP 503 after 3 attempts"):
        client.channels_by_slug([streamers[0].slug])
    snap = client.stats.snapshot()
    assert snap.requests[(CHANNELS, "503")] == 3
    assert snap.retries == 2


def test_5xx_that_clears_up_is_ridden_out(sim: Simulator, make_client: ClientFactory,
                                          streamers: list[SimStreamer]) -> None:
    client = make_client(retry=RetryPolicy(attempts=6, backoff_base=0.2, backoff_cap=1.0))
    sim.set_api_mode("error_500", surface="web")
    healer = threading.Timer(0.5, sim.set_api_mode, args=(None,))
    healer.start()
    try:
        assert client.channel_v2(streamers[0].slug).id == streamers[0].channel_id
    finally:
        healer.join()
    assert client.stats.snapshot().requests[(WEB_CHANNEL, "500")] >= 1


def test_slow_answers_time_out_as_unavailable(sim: Simulator, make_client: ClientFactory,
                                              streamers: list[SimStreamer]) -> None:
    client = make_client(timeout=(0.5, 0.5), retry=RetryPolicy(attempts=2, backoff_base=0.05))
    sim.set_api_delay(3.0)
    sim.set_api_mode("slow", surface="web")
    started = time.monotonic()
    with pytest.raises(KickApiUnavailable, match=r"no answer within 0\.5 s after 2 attempts"):
        client.channel_v2(streamers[0].slug)
    assert time.monotonic() - started < 2.0
    assert client.stats.snapshot().requests[(WEB_CHANNEL, "timeout")] == 2


def test_client_side_bucket_holds_the_rate(make_client: ClientFactory,
                                           streamers: list[SimStreamer]) -> None:
    client = make_client(rate=(10.0, 2))
    done: list[float] = []
    started = time.monotonic()
    for streamer in streamers[:22]:
        client.channel_v2(streamer.slug)
        done.append(time.monotonic())
    elapsed = done[-1] - started
    assert elapsed >= (22 - 2) / 10.0 - 0.05  # burst of 2, then 10/s
    busiest = max(sum(1 for t in done if s <= t < s + 1.0) for s in done)
    assert busiest <= 10 + 2
    assert client.stats.snapshot().throttled_seconds > 1.5


def test_close_interrupts_a_long_wait(sim: Simulator, make_client: ClientFactory,
                                      streamers: list[SimStreamer]) -> None:
    client = make_client(retry=RetryPolicy(retry_after_cap=60.0))
    sim.set_api_mode("rate_limit", surface="web", retry_after=30)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.channel_v2(streamers[0].slug)
        except KickApiError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    client.close()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0
    assert isinstance(errors[0], KickApiUnavailable)


# ---------------------------------------------------------------- resolution


def test_resolve_streamer(sim: Simulator, make_client: ClientFactory,
                          streamers: list[SimStreamer]) -> None:
    client = make_client()
    live = next(s for s in streamers if sim.is_live(s.slug))
    offline = next(s for s in streamers if not sim.is_live(s.slug))

    # live: the official API alone gives user and channel ids
    assert client.resolve_streamer(live.slug.upper()) == ResolvedIds(
        live.slug, live.channel_id, live.user_id, None)
    # offline: the web API fills in the channel (and chatroom) id
    assert client.resolve_streamer(offline.slug) == ResolvedIds(
        offline.slug, offline.channel_id, offline.user_id, offline.chatroom_id)
    assert client.resolve_streamer("nobody_at_all") == Unresolved(
        "nobody_at_all", "not found on Kick")

    sim.set_api_mode("cloudflare_403", surface="web")
    assert client.resolve_streamer(live.slug) == ResolvedIds(
        live.slug, live.channel_id, live.user_id, None)
    blocked = client.resolve_streamer(offline.slug)
    assert isinstance(blocked, Unresolved)
    assert blocked.reason == (
        "no channel id yet (offline, and /public/v1/livestreams gives channel ids only while live;"
        " the web API is blocked by Cloudflare); monitored by reconciliation by user id, --channel-id adds Pusher"
    )
    assert blocked.retryable  # tried again later: the streamer may go live

    anonymous = make_client(secret=None, client_id=None)
    unresolved = anonymous.resolve_streamer(live.slug)
    assert isinstance(unresolved, Unresolved)
    assert unresolved.reason == "no API credentials, and the web API is blocked by Cloudflare"
    sim.set_api_mode(None)
    assert isinstance(anonymous.resolve_streamer(offline.slug), Unresolved)  # backed off for hours
    anonymous = make_client(secret=None, client_id=None)
    assert anonymous.resolve_streamer(offline.slug) == ResolvedIds(
        offline.slug, offline.channel_id, offline.user_id, offline.chatroom_id)

    sim.set_api_mode("error_500", surface="official")
    down = client.resolve_streamer(offline.slug)
    assert isinstance(down, Unresolved) and down.retryable

    sim.set_api_mode(None)
    with pytest.raises(KickAuthError):  # a bad secret concerns every streamer: raised
        make_client(secret="nope").resolve_streamer(live.slug)


# ---------------------------------------------------------------- reconciliation


def test_reconciler_finds_exactly_the_missed_changes(
    sim: Simulator, make_client: ClientFactory, streamers: list[SimStreamer]
) -> None:
    client = make_client()
    reconciler = Reconciler(client)
    refs = tuple(ref(s) for s in streamers)
    ghost = StreamerRef(streamer_id=0, username="gone_streamer", channel_id=1, kick_user_id=None)
    # a streamer we know under an old name: found again through its user id
    last = streamers[-1]
    renamed = StreamerRef(streamer_id=1, username="Old_Name", channel_id=last.channel_id,
                          kick_user_id=last.user_id)

    first = reconciler.fetch_live_status((*refs[:-1], renamed, ghost))
    assert set(first) == {s.channel_id for s in streamers}  # the ghost is unknown, not offline
    for s in streamers:
        assert first[s.channel_id].is_live == sim.is_live(s.slug)
    # by user id (5 × 25, the renamed one included), then the ghost without a user id by slug
    assert client.stats.snapshot().requests[(CHANNELS, "200")] == 5 + 1
    known: dict[int, tuple[Status, int | None]] = {
        cid: ("online" if info.is_live else "offline", None) for cid, info in first.items()
    }
    assert diff_live_status(known, first) == []

    flipped = streamers[3:60:8]  # events missed: REST truth changes, no frame
    for s in flipped:
        sim.set_live(s.slug, not sim.is_live(s.slug), send_event=False)
    second = reconciler.fetch_live_status(refs)
    changes = diff_live_status(known, second)
    assert [cid for cid, _ in changes] == sorted(s.channel_id for s in flipped)
    for cid, info in changes:
        slug = next(s.slug for s in flipped if s.channel_id == cid)
        assert info.is_live == sim.is_live(slug)
        assert (info.started_at is not None) == info.is_live
    report = reconciler.last_report
    assert report is not None and report.answered == 120 and report.failed_batches == 0


def test_reconciler_on_a_thread_while_the_client_is_used_elsewhere(
    sim: Simulator, make_client: ClientFactory, streamers: list[SimStreamer]
) -> None:
    client = make_client(rate=(100.0, 5))
    reconciler = Reconciler(client)
    refs = tuple(ref(s) for s in streamers)
    results: list[dict[int, LiveInfo]] = []

    def run() -> None:
        for _ in range(5):
            results.append(reconciler.fetch_live_status(refs))

    thread = threading.Thread(target=run)
    thread.start()
    for s in streamers[:20]:
        assert isinstance(client.resolve_streamer(s.slug), ResolvedIds)
    thread.join(30)
    assert len(results) == 5 and all(len(r) == 120 for r in results)
    assert client.stats.snapshot().token_refreshes == 1  # one token shared by both threads


def test_reconciler_skips_failed_batches_and_raises_on_blocks(
    sim: Simulator, make_client: ClientFactory, streamers: list[SimStreamer]
) -> None:
    client = make_client()
    reconciler = Reconciler(client)
    refs = tuple(ref(s) for s in streamers)
    client.channels_by_slug([streamers[0].slug])  # token in hand
    sim.set_api_mode("error_500", surface="official")
    assert reconciler.fetch_live_status(refs) == {}
    report = reconciler.last_report
    assert report is not None and report.failed_batches == 1 and report.error
    assert client.stats.snapshot().requests[(CHANNELS, "500")] == FAST.attempts  # not 3 × 3
    sim.set_api_mode("cloudflare_403", surface="official", cloudflare_body="json")
    with pytest.raises(KickBlockedError):
        reconciler.fetch_live_status(refs)


def info(is_live: bool, livestream_id: int | None = None) -> LiveInfo:
    return LiveInfo(is_live=is_live, title=None, livestream_id=livestream_id, started_at=None)


def test_diff_live_status_reports_only_disagreements() -> None:
    known: dict[int, tuple[Status, int | None]] = {
        1: ("online", 100),
        2: ("offline", 100),
        3: ("unknown", None),
        4: ("online", 100),
        5: ("online", 100),
        6: ("offline", None),
        7: ("online", None),
        8: ("unknown", None),
    }
    live = {
        1: info(True, 100),  # agrees
        2: info(True),  # missed going live
        3: info(False),  # first verdict
        4: info(False),  # missed going offline
        5: info(True, 101),  # missed a whole offline/online cycle
        6: info(False),  # agrees
        7: info(True, 55),  # ours has no id: cannot tell, agrees
        9: info(True),  # not ours: ignored
    }  # 8 is absent from the answer: unknown, not offline
    assert [cid for cid, _ in diff_live_status(known, live)] == [2, 3, 4, 5]
    assert diff_live_status({}, live) == []
    assert diff_live_status(known, {}) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-09-14T16:11:18Z", 1757866278.0),
        ("2025-09-14T16:11:18.000000Z", 1757866278.0),
        ("2025-09-15T03:11:18+11:00", 1757866278.0),
        ("2025-09-14 16:11:18", 1757866278.0),
        ("0001-01-01T00:00:00Z", None),
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_time(text: str | None, expected: float | None) -> None:
    assert parse_time(text) == expected


# ---------------------------------------------------------------- malformed answers


class CannedKick(http.server.ThreadingHTTPServer):
    """Loopback server answering every path from a dict of (status, body)."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {
            "/oauth/token": (200, b'{"access_token":"t0k","token_type":"Bearer","expires_in":3600}'),
        }
        super().__init__(("127.0.0.1", 0), CannedHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class CannedHandler(http.server.BaseHTTPRequestHandler):
    server: CannedKick

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.startswith("/api/v2/channels/"):
            path = "/api/v2/channels"
        status, body = self.server.answers.get(path, (404, b'{"message":"Not Found"}'))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass  # keep test output quiet


@pytest.fixture
def canned() -> Iterator[CannedKick]:
    server = CannedKick()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def canned_client(server: CannedKick) -> KickApiClient:
    return KickApiClient(server.url, server.url + "/oauth/token", server.url, CLIENT_ID,
                         SecretStr(SECRET), rate=(200.0, 50), retry=FAST)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data":[{"slug":"a","stream":{"is_live":true}}]}',  # no user id
        b'{"data":[{"broadcaster_user_id":"12","slug":"a","stream":{"is_live":true}}]}',
        b'{"data":[{"broadcaster_user_id":12,"slug":"a","stream":{"is_live":"yes"}}]}',
        b'{"data":[{"broadcaster_user_id":12,"slug":"a"}]}',  # no stream
        b'{"data":null,"message":"OK"}',
        b'{"data":{"broadcaster_user_id":12}}',
        b"[]",
        b"<html>oops</html>",
        b"",
    ],
)
def test_malformed_channels_answer_is_a_kick_api_error(canned: CannedKick, body: bytes) -> None:
    canned.answers[CHANNELS] = (200, body)
    with canned_client(canned) as client, pytest.raises(
        KickApiError, match=r"^malformed answer from /public/v1/channels: "
    ):
        client.channels_by_slug(["a"])


def test_malformed_token_and_web_answers(canned: CannedKick) -> None:
    canned.answers["/api/v2/channels"] = (200, b'{"id":1,"user_id":2,"slug":"a","chatroom":null}')
    with canned_client(canned) as client:
        with pytest.raises(KickApiError, match=r"^malformed answer from /api/v2/channels/a: chatroom"):
            client.channel_v2("a")
        assert isinstance(client.resolve_streamer("a"), Unresolved)
    canned.answers["/oauth/token"] = (200, b'{"access_token":"t","token_type":"Bearer"}')
    with canned_client(canned) as client, pytest.raises(
        KickApiError, match=r"^malformed answer from /oauth/token: expires_in"
    ):
        client.livestreams([1])


def test_unexpected_statuses_are_kick_api_errors(canned: CannedKick) -> None:
    canned.answers[CHANNELS] = (400, b'{"message":"slug is invalid","data":null}')
    canned.answers[LIVESTREAMS] = (403, b'{"message":"Forbidden","data":null}')
    with canned_client(canned) as client:
        with pytest.raises(KickApiError, match="unexpected HTTP 400: slug is invalid"):
            client.channels_by_slug(["a"])
        with pytest.raises(KickApiError, match="unexpected HTTP 403") as caught:
            client.livestreams([1])
        assert not isinstance(caught.value, KickBlockedError)  # Kick's own 403, not Cloudflare


# ---------------------------------------------------------------- secret hygiene


def test_secret_never_appears_in_logs_or_errors(
    sim: Simulator, make_client: ClientFactory, streamers: list[SimStreamer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-" + secrets.token_hex(12)
    texts: list[str] = []

    def record(exc: BaseException) -> None:
        texts.extend(traceback.format_exception(exc))

    client = make_client()
    client.channels_by_slug([streamers[0].slug])
    assert client.tokens is not None
    first_token = client.tokens.token()
    sim.expire_tokens()  # 401, renew, retry
    client.channels_by_slug([streamers[0].slug])
    for mode, surface in [("error_500", "official"), ("rate_limit", "oauth"),
                          ("cloudflare_403", "oauth"), ("slow", "oauth")]:
        sim.set_api_mode(mode, surface=surface)
        sim.set_api_delay(0.6)
        sim.expire_tokens()
        fresh = make_client(timeout=(0.3, 0.3), retry=RetryPolicy(
            attempts=2, backoff_base=0.05, rate_limited_retries=1, retry_after_cap=0.1))
        with pytest.raises(KickApiError) as caught:
            fresh.channels_by_slug([streamers[0].slug])
        record(caught.value)
        sim.set_api_mode(None)
    with pytest.raises(KickAuthError) as auth:
        make_client(secret=wrong).resolve_streamer(streamers[0].slug)
    record(auth.value)
    with pytest.raises(KickAuthError) as auth:
        Reconciler(make_client(secret=wrong)).fetch_live_status([ref(streamers[0])])
    record(auth.value)
    sim.revoke_secret()
    sim.expire_tokens()
    with pytest.raises(KickAuthError) as revoked:
        client.channels_by_slug([streamers[0].slug])
    record(revoked.value)

    texts += [caplog.text, repr(client), repr(client.tokens), str(client.stats.snapshot())]
    texts += [json.dumps(sim.stats(), default=str)]
    assert "token" in caplog.text.lower()  # the log did talk about tokens
    everything = "\n".join(texts)
    assert SECRET not in everything
    assert wrong not in everything
    assert first_token not in everything
