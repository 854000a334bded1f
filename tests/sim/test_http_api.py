"""Kick's HTTP side: OAuth, official /public/v1, web /api/v2, and the HTTP fault modes."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from kick_sim import SimConfig, SimStreamer, Simulator

CREDENTIALS = {"grant_type": "client_credentials", "client_id": "sim-client-id", "client_secret": "sim-client-secret"}


@pytest.fixture()
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=4, profile="classic")) as simulator:  # the open web API of old
        yield simulator


@pytest.fixture()
def streamers(sim: Simulator) -> list[SimStreamer]:
    streamers = sim.create_streamers(60)
    sim.set_live(streamers[0].slug, True, title="first")
    sim.set_live(streamers[2].slug, True, title="third")
    sim.set_live(streamers[3].slug, True, send_event=False)  # missed event: REST still knows
    return streamers


def _token(sim: Simulator) -> str:
    response = requests.post(sim.oauth_token_url, data=CREDENTIALS, timeout=5)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _get(sim: Simulator, path: str, token: str | None, **params: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{sim.api_base_url}{path}", params=params, headers=headers, timeout=5)  # type: ignore[arg-type]


def test_token_endpoint(sim: Simulator) -> None:
    response = requests.post(sim.oauth_token_url, data=CREDENTIALS, timeout=5)
    body = response.json()
    assert response.status_code == 200
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    wrong = requests.post(sim.oauth_token_url, data={**CREDENTIALS, "client_secret": "nope"}, timeout=5)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    grant = requests.post(sim.oauth_token_url, data={**CREDENTIALS, "grant_type": "password"}, timeout=5)
    assert grant.status_code == 400
    assert requests.get(sim.oauth_token_url, timeout=5).status_code == 405


def test_tokens_expire_for_real(sim: Simulator, streamers: list[SimStreamer]) -> None:
    sim.set_token_ttl(0.4)
    token = _token(sim)
    assert _get(sim, "/public/v1/channels", token, slug=streamers[0].slug).status_code == 200
    time.sleep(0.5)
    expired = _get(sim, "/public/v1/channels", token, slug=streamers[0].slug)
    assert expired.status_code == 401
    assert expired.json() == {"message": "Unauthorized", "data": None}


def test_expire_tokens_and_revoke_secret(sim: Simulator, streamers: list[SimStreamer]) -> None:
    token = _token(sim)
    assert sim.expire_tokens() == 1
    assert _get(sim, "/public/v1/channels", token, slug=streamers[0].slug).status_code == 401
    sim.revoke_secret()
    assert requests.post(sim.oauth_token_url, data=CREDENTIALS, timeout=5).status_code == 401
    sim.revoke_secret(False)
    assert _token(sim)


def test_missing_or_bad_token_is_401(sim: Simulator, streamers: list[SimStreamer]) -> None:
    for token in (None, "made-up"):
        response = _get(sim, "/public/v1/channels", token, slug=streamers[0].slug)
        assert response.status_code == 401
        assert response.json() == {"message": "Unauthorized", "data": None}


def test_channels_by_slug_reflect_rest_truth(sim: Simulator, streamers: list[SimStreamer]) -> None:
    slugs = [s.slug for s in streamers[:5]] + ["nobody_here"]
    response = _get(sim, "/public/v1/channels", _token(sim), slug=slugs)
    body = response.json()
    assert response.status_code == 200 and body["message"] == "OK"
    by_slug = {item["slug"]: item for item in body["data"]}
    assert set(by_slug) == set(slugs[:5])  # unknown slugs are simply absent
    assert [by_slug[s]["stream"]["is_live"] for s in slugs[:5]] == [True, False, True, True, False]
    first = by_slug[streamers[0].slug]
    assert first["broadcaster_user_id"] == streamers[0].user_id
    assert first["stream_title"] == "first"
    assert {"channel_description", "category"} <= set(first)
    assert {"is_live", "start_time", "viewer_count", "url", "key", "is_mature", "language", "thumbnail"} == set(
        first["stream"]
    )


def test_channels_by_user_id(sim: Simulator, streamers: list[SimStreamer]) -> None:
    ids = [streamers[1].user_id, streamers[2].user_id]
    body = _get(sim, "/public/v1/channels", _token(sim), broadcaster_user_id=ids).json()
    live_by_user = {(d["broadcaster_user_id"], d["stream"]["is_live"]) for d in body["data"]}
    assert live_by_user == {(ids[0], False), (ids[1], True)}
    assert _get(sim, "/public/v1/channels", _token(sim), broadcaster_user_id="abc").status_code == 400


def test_more_than_50_is_400(sim: Simulator, streamers: list[SimStreamer]) -> None:
    token = _token(sim)
    assert _get(sim, "/public/v1/channels", token, slug=[s.slug for s in streamers[:50]]).status_code == 200
    response = _get(sim, "/public/v1/channels", token, slug=[s.slug for s in streamers[:51]])
    assert response.status_code == 400 and response.json()["data"] is None


def test_livestreams_lists_only_live(sim: Simulator, streamers: list[SimStreamer]) -> None:
    ids = [s.user_id for s in streamers[:4]]
    body = _get(sim, "/public/v1/livestreams", _token(sim), broadcaster_user_id=ids).json()
    items = {item["broadcaster_user_id"]: item for item in body["data"]}
    assert set(items) == {streamers[0].user_id, streamers[2].user_id, streamers[3].user_id}
    first = items[streamers[0].user_id]
    assert first["channel_id"] == streamers[0].channel_id
    assert first["slug"] == streamers[0].slug and first["stream_title"] == "first"
    assert {"started_at", "viewer_count"} <= set(first)


def test_web_v2_channel(sim: Simulator, streamers: list[SimStreamer]) -> None:
    live = requests.get(f"{sim.web_api_base_url}/api/v2/channels/{streamers[0].slug}", timeout=5).json()
    first = streamers[0]
    assert (live["id"], live["user_id"], live["slug"]) == (first.channel_id, first.user_id, first.slug)
    assert live["chatroom"]["id"] == streamers[0].chatroom_id
    assert live["livestream"]["is_live"] is True and live["livestream"]["session_title"] == "first"
    assert {"id", "viewer_count", "created_at"} <= set(live["livestream"])
    offline = requests.get(f"{sim.web_api_base_url}/api/v2/channels/{streamers[1].slug}", timeout=5).json()
    assert offline["livestream"] is None
    missing = requests.get(f"{sim.web_api_base_url}/api/v2/channels/nobody_here", timeout=5)
    assert missing.status_code == 404
    assert missing.json() == {"message": "No query results for model [App\\Models\\Channel]."}


def test_cloudflare_403_html_and_json(sim: Simulator, streamers: list[SimStreamer]) -> None:
    url = f"{sim.web_api_base_url}/api/v2/channels/{streamers[0].slug}"
    sim.set_api_mode("cloudflare_403", surface="web")
    html = requests.get(url, timeout=5)
    assert html.status_code == 403 and "Just a moment..." in html.text
    assert html.headers["Content-Type"].startswith("text/html")
    official = _get(sim, "/public/v1/channels", _token(sim), slug=streamers[0].slug)
    assert official.status_code == 200  # the official API is unaffected
    sim.set_api_mode("cloudflare_403", cloudflare_body="json")
    blocked = requests.get(url, timeout=5)
    assert blocked.status_code == 403
    assert blocked.json()["error"] == "Request blocked by security policy." and blocked.json()["reference"]
    sim.set_api_mode(None)
    assert requests.get(url, timeout=5).status_code == 200


def test_error_500_mode(sim: Simulator, streamers: list[SimStreamer]) -> None:
    token = _token(sim)
    sim.set_api_mode("error_500")
    assert _get(sim, "/public/v1/channels", token, slug=streamers[0].slug).status_code == 500
    assert requests.post(sim.oauth_token_url, data=CREDENTIALS, timeout=5).status_code == 500
    sim.set_api_mode("error_500", error_status=503)
    assert _get(sim, "/public/v1/channels", token, slug=streamers[0].slug).status_code == 503
    with pytest.raises(ValueError):
        sim.set_api_mode("error_500", error_status=404)
    with pytest.raises(ValueError):
        sim.set_api_mode("bogus")


def test_rate_limit_answers_429_with_retry_after(sim: Simulator, streamers: list[SimStreamer]) -> None:
    token = _token(sim)
    sim.set_rate_limit(3, per_seconds=30)
    statuses = [_get(sim, "/public/v1/channels", token, slug=streamers[0].slug) for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    assert 1 <= int(statuses[3].headers["Retry-After"]) <= 30
    assert statuses[3].json()["message"] == "Too Many Requests"
    sim.set_rate_limit(None)
    sim.set_api_mode("rate_limit", retry_after=7)
    storm = _get(sim, "/public/v1/channels", token, slug=streamers[0].slug)
    assert storm.status_code == 429 and storm.headers["Retry-After"] == "7"


def test_slow_mode(sim: Simulator, streamers: list[SimStreamer]) -> None:
    token = _token(sim)
    sim.set_api_delay(0.6)
    sim.set_api_mode("slow", surface="official")
    with pytest.raises(requests.Timeout):
        requests.get(f"{sim.api_base_url}/public/v1/channels", params={"slug": streamers[0].slug},
                     headers={"Authorization": f"Bearer {token}"}, timeout=0.2)
    started = time.monotonic()
    assert _get(sim, "/public/v1/channels", token, slug=streamers[0].slug).status_code == 200
    assert time.monotonic() - started >= 0.6


def test_keep_alive_serves_many_requests_on_one_connection(sim: Simulator, streamers: list[SimStreamer]) -> None:
    with requests.Session() as session:
        token = session.post(sim.oauth_token_url, data=CREDENTIALS, timeout=5).json()["access_token"]
        for streamer in streamers[:5]:
            response = session.get(
                f"{sim.api_base_url}/public/v1/channels", params={"slug": streamer.slug},
                headers={"Authorization": f"Bearer {token}"}, timeout=5,
            )
            assert response.status_code == 200
    assert sim.stats()["api_requests"]["official 200"] == 5


def _raw_http(url: str, payload: bytes) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=3) as conn:
        conn.sendall(payload)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_garbage_requests_get_http_errors(sim: Simulator) -> None:
    assert _raw_http(sim.api_base_url, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    chunked = b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert _raw_http(sim.api_base_url, chunked).startswith(b"HTTP/1.1 501 ")
    closed = _raw_http(sim.api_base_url, b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert closed.startswith(b"HTTP/1.1 404 ")
    # the server survived all of it
    assert requests.post(sim.oauth_token_url, data=CREDENTIALS, timeout=5).status_code == 200
