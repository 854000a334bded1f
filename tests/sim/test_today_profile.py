"""Today's Kick (the simulator's default profile): the official API as of 2026-06-23.

Shapes follow the Kick facts, section 2; the web API is behind Cloudflare; v1 livestreams
is deprecated and can be switched to 404/410 at runtime; v2 livestreams pages by cursor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import pytest
import requests

from kick_sim import SimConfig, SimStreamer, Simulator

CREDENTIALS = {"grant_type": "client_credentials", "client_id": "sim-client-id", "client_secret": "sim-client-secret"}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=12)) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def streamers(sim: Simulator) -> list[SimStreamer]:
    return sim.create_streamers(40, prefix="today")


@pytest.fixture(scope="module")
def token(sim: Simulator) -> str:
    return str(requests.post(sim.oauth_token_url, data=CREDENTIALS, timeout=5).json()["access_token"])


Params = Sequence[tuple[str, str | int]]


def get(sim: Simulator, token: str, path: str, params: Params) -> requests.Response:
    return requests.get(f"{sim.api_base_url}{path}", params=list(params),
                        headers={"Authorization": f"Bearer {token}"}, timeout=5)


def test_channels_item_is_shaped_as_kick_documents_it(sim: Simulator, streamers: list[SimStreamer],
                                                       token: str) -> None:
    eleven = next(s for s in streamers if s.utc_offset_minutes == 660)
    sim.set_live(eleven.slug, True, title="t")
    started = sim.broadcasts()[-1].started_wall
    body = get(sim, token, "/public/v1/channels", [("slug", eleven.slug)]).json()
    assert body["message"] == "OK" and len(body["data"]) == 1
    item = body["data"][0]
    assert "channel_id" not in item and "id" not in item  # Kick's channels answer has no channel id
    assert {"broadcaster_user_id", "slug", "stream_title", "category", "stream"} <= set(item)
    assert (item["broadcaster_user_id"], item["slug"], item["stream_title"]) == (eleven.user_id, eleven.slug, "t")
    stream = item["stream"]
    assert stream["is_live"] is True and stream["viewer_count"] > 0
    assert stream["start_time"].endswith("+11:00")
    assert datetime.fromisoformat(stream["start_time"]).timestamp() == int(started)
    sim.set_live(eleven.slug, False)
    offline = get(sim, token, "/public/v1/channels", [("broadcaster_user_id", eleven.user_id)]).json()["data"][0]
    assert offline["stream"]["is_live"] is False


def test_slug_and_user_id_together_is_400(sim: Simulator, streamers: list[SimStreamer], token: str) -> None:
    mixed = get(sim, token, "/public/v1/channels", [("slug", streamers[0].slug),
                                                    ("broadcaster_user_id", streamers[1].user_id)])
    assert mixed.status_code == 400 and "not both" in mixed.json()["message"]


def test_web_api_is_blocked_by_cloudflare_both_ways(sim: Simulator, streamers: list[SimStreamer]) -> None:
    answers = [requests.get(f"{sim.web_api_base_url}/api/v2/channels/{streamers[0].slug}", timeout=5)
               for _ in range(2)]
    assert [a.status_code for a in answers] == [403, 403]
    kinds = {a.headers["Content-Type"].split(";")[0] for a in answers}
    assert kinds == {"application/json", "text/html"}
    assert any(a.headers.get("Content-Type", "").startswith("application/json")
               and a.json()["error"] == "Request blocked by security policy." for a in answers)
    assert any("Just a moment" in a.text for a in answers)


def test_v1_livestreams_deprecated_then_gone(sim: Simulator, streamers: list[SimStreamer], token: str) -> None:
    live = streamers[5]
    sim.set_live(live.slug, True)
    answer = get(sim, token, "/public/v1/livestreams", [("broadcaster_user_id", live.user_id)])
    assert answer.status_code == 200 and answer.headers["Deprecation"].startswith("@")
    assert answer.json()["data"][0]["channel_id"] == live.channel_id
    for mode, status in (("410", 410), ("404", 404)):
        sim.set_livestreams_v1(mode)
        gone = get(sim, token, "/public/v1/livestreams", [("broadcaster_user_id", live.user_id)])
        assert gone.status_code == status and gone.json()["data"] is None
    sim.set_livestreams_v1("ok")
    assert "Deprecation" not in get(sim, token, "/public/v1/livestreams", [("broadcaster_user_id", 1)]).headers
    sim.set_livestreams_v1("deprecated")
    sim.set_live(live.slug, False)


def test_v2_livestreams_pages_oldest_first_with_a_uuid_per_broadcast(
    sim: Simulator, streamers: list[SimStreamer], token: str
) -> None:
    going = streamers[10:17]
    for streamer in going:
        sim.set_live(streamer.slug, True)
    by_user = {b.user_id: b for b in sim.broadcasts() if b.ended_wall is None}
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: list[tuple[str, str | int]] = [("limit", 3)] + ([("cursor", cursor)] if cursor else [])
        body = get(sim, token, "/public/v2/livestreams", params).json()
        pages += 1
        seen.extend(body["data"])
        cursor = body["pagination"]["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and len(seen) == len(by_user) == 7
    starts = [(by_user[item["broadcaster_user"]["id"]].started_wall, item["broadcaster_user"]["id"]) for item in seen]
    assert starts == sorted(starts)  # oldest first
    for item in seen:
        broadcast = by_user[item["broadcaster_user"]["id"]]
        assert item["id"] == broadcast.stream_uuid and len(item["id"]) == 36
        assert item["channel"] == {"slug": broadcast.slug}
    assert get(sim, token, "/public/v2/livestreams", [("cursor", "%%%")]).status_code == 400
    assert get(sim, token, "/public/v2/livestreams", [("limit", 1001)]).status_code == 400
    # a new broadcast of the same streamer gets a new UUID
    sim.set_live(going[0].slug, False)
    sim.set_live(going[0].slug, True)
    uuids = [b.stream_uuid for b in sim.broadcasts() if b.user_id == going[0].user_id]
    assert len(uuids) == 2 and uuids[0] != uuids[1]
    # users/livestreams: only the live ones of the ids asked, at most 100 ids
    users = get(sim, token, "/public/v1/users/livestreams",
                [("user_id", s.user_id) for s in streamers[8:12]]).json()["data"]
    assert {item["broadcaster_user"]["id"] for item in users} == {s.user_id for s in streamers[10:12]}
    assert get(sim, token, "/public/v1/users/livestreams", [("user_id", 1)] * 101).status_code == 400
    for streamer in going:
        sim.set_live(streamer.slug, False)


def test_wrong_data_in_big_batches(sim: Simulator, streamers: list[SimStreamer], token: str) -> None:
    for streamer in streamers[20:30]:
        sim.set_live(streamer.slug, True)
    asked = [("broadcaster_user_id", s.user_id) for s in streamers[20:30]]
    sim.set_wrong_data_over(5)
    try:
        wrong = get(sim, token, "/public/v1/channels", asked).json()["data"]
        assert sum(not item["stream"]["is_live"] for item in wrong) == 5  # every second one
        small = get(sim, token, "/public/v1/channels", asked[:5]).json()["data"]
        assert all(item["stream"]["is_live"] for item in small)
        sim.set_wrong_data_over(5, kind="ids")
        answer = get(sim, token, "/public/v1/channels", asked).json()["data"]
        confused = [item["broadcaster_user_id"] for item in answer]
        assert len(confused) == 12 and len(set(confused)) == 11  # a duplicate and a stranger
    finally:
        sim.set_wrong_data_over(None)
        for streamer in streamers[20:30]:
            sim.set_live(streamer.slug, False)


def test_classic_profile_keeps_the_web_api_open() -> None:
    with Simulator(SimConfig(profile="classic")) as classic:
        (streamer,) = classic.create_streamers(1)
        answer = requests.get(f"{classic.web_api_base_url}/api/v2/channels/{streamer.slug}", timeout=5)
        assert answer.status_code == 200 and answer.json()["id"] == streamer.channel_id
        assert classic.stats()["livestreams_v1"] == "ok"
    with pytest.raises(ValueError, match="profile"):
        SimConfig(profile="tomorrow")  # type: ignore[arg-type]
