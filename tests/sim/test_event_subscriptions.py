"""Kick's Events API subscriptions on the simulator: GET/POST/DELETE, the limit, Kick's drops."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from kick_sim import SimConfig, SimStreamer, Simulator

CREDENTIALS = {"grant_type": "client_credentials", "client_id": "sim-client-id", "client_secret": "sim-client-secret"}
PATH = "/public/v1/events/subscriptions"
BOTH = [{"name": "livestream.status.updated", "version": 1}, {"name": "livestream.metadata.updated", "version": 1}]


@pytest.fixture()
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=7, event_subscription_limit=5)) as simulator:
        yield simulator


@pytest.fixture()
def streamers(sim: Simulator) -> list[SimStreamer]:
    return sim.create_streamers(4)


@pytest.fixture()
def api(sim: Simulator) -> requests.Session:
    session = requests.Session()
    token = requests.post(sim.oauth_token_url, data=CREDENTIALS, timeout=5).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def subscribe(sim: Simulator, api: requests.Session, user_id: int, events: list[dict[str, Any]]) -> requests.Response:
    body = {"broadcaster_user_id": user_id, "events": events, "method": "webhook"}
    return api.post(f"{sim.api_base_url}{PATH}", json=body, timeout=5)


def test_create_list_delete(sim: Simulator, api: requests.Session, streamers: list[SimStreamer]) -> None:
    user_id = streamers[0].user_id
    created = subscribe(sim, api, user_id, BOTH)
    assert created.status_code == 200, created.text
    results = created.json()["data"]
    assert [(r["name"], r["version"]) for r in results] == [(e["name"], e["version"]) for e in BOTH]
    ids = [r["subscription_id"] for r in results]
    assert len(set(ids)) == 2 and all(len(i) == 26 for i in ids)  # ULIDs
    again = subscribe(sim, api, user_id, BOTH[:1]).json()["data"]
    assert again[0]["subscription_id"] == ids[0]  # no duplicate subscription

    listed = api.get(f"{sim.api_base_url}{PATH}", timeout=5).json()
    assert listed["message"] == "OK"
    assert {item["id"] for item in listed["data"]} == set(ids)
    item = listed["data"][0]
    fields = {"app_id", "broadcaster_user_id", "created_at", "event", "id", "method", "updated_at", "version"}
    assert set(item) == fields
    assert item["broadcaster_user_id"] == user_id and item["method"] == "webhook" and item["version"] == 1
    other = api.get(f"{sim.api_base_url}{PATH}", params={"broadcaster_user_id": streamers[1].user_id}, timeout=5)
    assert other.json()["data"] == []

    deleted = api.delete(f"{sim.api_base_url}{PATH}", params=[("id", ids[0]), ("id", "01UNKNOWN")], timeout=5)
    assert deleted.status_code == 204 and deleted.content == b""
    assert [s.id for s in sim.event_subscriptions()] == [ids[1]]


def test_errors_as_kick_answers_them(sim: Simulator, api: requests.Session, streamers: list[SimStreamer]) -> None:
    for user in streamers[:2]:
        assert subscribe(sim, api, user.user_id, BOTH).status_code == 200
    over = subscribe(sim, api, streamers[2].user_id, BOTH)  # 4 held, limit 5, 2 more asked
    assert over.status_code == 400
    assert over.json() == {"data": "event subscription limit reached", "message": "Bad request"}
    assert len(sim.event_subscriptions()) == 4  # all or nothing
    assert subscribe(sim, api, streamers[2].user_id, BOTH[:1]).status_code == 200  # exactly at the limit

    unknown = subscribe(sim, api, 1, BOTH)
    assert unknown.status_code == 400 and unknown.json()["message"] == "Bad request"
    mixed = subscribe(sim, api, streamers[3].user_id, [{"name": "no.such.event", "version": 1}])
    assert mixed.status_code == 200 and "error" in mixed.json()["data"][0]
    for body in ({"broadcaster_user_id": "x", "events": BOTH}, {"broadcaster_user_id": 5, "events": []}, [1]):
        bad = api.post(f"{sim.api_base_url}{PATH}", json=body, timeout=5)
        assert bad.status_code == 400 and bad.json()["message"] == "Invalid request"
    assert api.delete(f"{sim.api_base_url}{PATH}", timeout=5).status_code == 400
    anonymous = requests.get(f"{sim.api_base_url}{PATH}", timeout=5)
    assert anonymous.status_code == 401


def test_kick_drops_subscriptions(sim: Simulator, api: requests.Session, streamers: list[SimStreamer]) -> None:
    sim.set_event_subscription_limit(100)
    for user in streamers:
        subscribe(sim, api, user.user_id, BOTH)
    dropped = sim.drop_event_subscriptions(3)
    remaining = {s.id for s in sim.event_subscriptions()}
    assert len(dropped) == 3 and len(remaining) == 5 and not remaining & set(dropped)
    control = requests.post(f"{sim.control_url}/control/event_subscriptions/drop", json={"count": 2}, timeout=5)
    assert len(control.json()["dropped"]) == 2
    listed = requests.get(f"{sim.control_url}/control/event_subscriptions", timeout=5).json()
    assert len(listed["subscriptions"]) == 3 and listed["limit"] == 100
    assert sim.stats()["event_subscriptions_dropped"] == 5
