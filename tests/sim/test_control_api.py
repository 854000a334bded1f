"""The control API: the same operations as the Python API, over loopback HTTP, JSON in/out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from kick_sim import SimConfig, Simulator
from tests.sim import (
    connect,
    lifecycle_frames_until_pong,
    recv_close,
    recv_json,
    subscribe,
)


@pytest.fixture()
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=6)) as simulator:
        yield simulator


def _post(sim: Simulator, path: str, body: Any = None) -> requests.Response:
    return requests.post(f"{sim.control_url}/control/{path}", json=body, timeout=10)


def _get(sim: Simulator, path: str) -> requests.Response:
    return requests.get(f"{sim.control_url}/control/{path}", timeout=10)


def test_control_refuses_non_loopback_host_unless_forced() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        SimConfig(host="0.0.0.0")
    assert SimConfig(host="0.0.0.0", force_public_control=True).host == "0.0.0.0"
    assert SimConfig(host="::1").host == "::1"


def test_info_and_streamers(sim: Simulator) -> None:
    assert _get(sim, "info").json()["pusher_url"] == sim.pusher_url
    created = _post(sim, "streamers", {"count": 10, "prefix": "ctl", "live_fraction": 0.0}).json()["created"]
    assert len(created) == 10
    assert set(created[0]) == {"slug", "channel_id", "user_id", "chatroom_id"}
    listed = _get(sim, "streamers").json()["streamers"]
    assert [s["slug"] for s in listed] == [s["slug"] for s in created]
    assert all(s["live"] is False for s in listed)


def test_live_title_and_truth(sim: Simulator) -> None:
    (streamer,) = sim.create_streamers(1)
    ws = connect(sim.pusher_url)
    try:
        subscribe(ws, f"channel.{streamer.channel_id}")
        live = _post(sim, "live", {"slug": streamer.slug, "live": True, "title": "hi"}).json()
        assert live["status"] == "online" and live["delivered"] is True
        assert recv_json(ws)["event"] == "App\\Events\\StreamerIsLive"
        title = _post(sim, "title", {"slug": streamer.slug, "title": "new"}).json()
        assert title["event"] == "App\\Events\\LivestreamUpdated"
        missed = _post(sim, "live", {"slug": streamer.slug, "live": False, "send_event": False}).json()
        assert missed["delivered"] is False
        assert [f["event"] for f in lifecycle_frames_until_pong(ws)] == ["App\\Events\\LivestreamUpdated"]
    finally:
        ws.close()
    truth = _get(sim, "truth")
    assert truth.headers["Content-Type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in truth.text.splitlines()]
    assert [row["seq"] for row in rows] == [1, 2, 3]
    assert rows == [t.to_json() for t in sim.truth()]
    assert [json.loads(line)["seq"] for line in requests.get(
        f"{sim.control_url}/control/truth", params={"since": 2}, timeout=5).text.splitlines()] == [3]


def test_flip_wait_and_stop(sim: Simulator) -> None:
    _post(sim, "streamers", {"count": 20})
    assert _post(sim, "flip", {"rate": 400, "duration": 0.2, "spacing": "even"}).json() == {"flipping": True}
    done = _post(sim, "flip/wait", {"timeout": 5}).json()
    assert done["done"] is True and 60 <= done["flips"] <= 100
    _post(sim, "flip", {"rate": 50})
    assert _post(sim, "flip/stop").json()["flipping"] is False
    stats = _get(sim, "stats").json()
    assert stats["transitions"] == len(sim.truth()) >= done["flips"]
    assert stats["flipping"] is False and stats["streamers"] == 20


def test_pusher_fault_endpoints(sim: Simulator) -> None:
    ws = connect(sim.pusher_url)
    try:
        assert _post(sim, "error", {"code": 4200, "message": "go away"}).json() == {"sent": 1}
        assert recv_json(ws)["data"] == {"code": 4200, "message": "go away"}
        assert recv_close(ws)[0] == 4200
    finally:
        ws.close()
    ws = connect(sim.pusher_url)
    try:
        assert _post(sim, "malformed", {"kind": "bad_json"}).json()["frames"] == 2
        assert _post(sim, "silent", {"silent": True}).json() == {"silenced": 1}
        assert _post(sim, "silent", {"silent": False}).json() == {"silenced": 0}
        assert _post(sim, "drop", {}).json() == {"dropped": 1}
    finally:
        ws.close()
    assert _post(sim, "refuse", {"refuse": True}).json() == {"refuse": True}
    assert _post(sim, "refuse", {"refuse": False}).json() == {"refuse": False}
    frames = _get(sim, "stats").json()["frames_sent"]
    assert frames["error"] == 1 and frames["malformed"] == 2


def test_api_fault_endpoints(sim: Simulator) -> None:
    modes = _post(sim, "api_mode", {"mode": "cloudflare_403", "surface": "web"}).json()["api_modes"]
    assert modes == {"oauth": None, "official": None, "web": "cloudflare_403"}
    assert requests.get(f"{sim.web_api_base_url}/api/v2/channels/x", timeout=5).status_code == 403
    assert _post(sim, "api_mode", {"mode": None}).json()["api_modes"]["web"] is None
    assert _post(sim, "api_delay", {"seconds": 0.1}).json() == {"api_delay": 0.1}
    assert _post(sim, "rate_limit", {"requests": 100, "per_seconds": 10}).json() == {"requests": 100}
    assert _post(sim, "token_ttl", {"seconds": 5}).json() == {"token_ttl": 5.0}
    assert _post(sim, "expire_tokens").json() == {"expired": 0}
    assert _post(sim, "revoke_secret", {"revoked": True}).json() == {"revoked": True}
    token = requests.post(sim.oauth_token_url, data={"grant_type": "client_credentials", "client_id": "sim-client-id",
                                                     "client_secret": "sim-client-secret"}, timeout=5)
    assert token.status_code == 401


def test_rotated_secret_refuses_the_old_one(sim: Simulator) -> None:
    def token(secret: str) -> int:
        form = {"grant_type": "client_credentials", "client_id": "sim-client-id", "client_secret": secret}
        return requests.post(sim.oauth_token_url, data=form, timeout=5).status_code

    assert token("sim-client-secret") == 200
    assert _post(sim, "rotate_secret", {"client_secret": "sim-rotated-secret"}).json() == {"rotated": True}
    assert token("sim-client-secret") == 401
    assert token("sim-rotated-secret") == 200
    assert _post(sim, "rotate_secret", {"client_secret": ""}).status_code == 400
    stats = _get(sim, "stats").json()
    assert (stats["tokens_issued"], stats["tokens_refused"]) == (2, 1)
    sim.rotate_secret("sim-client-secret")
    assert token("sim-client-secret") == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("live", {"slug": "no_such_streamer", "live": True}),
        ("live", {"slug": 5, "live": True}),
        ("live", {"live": True}),
        ("live", {"slug": "x", "live": "yes"}),
        ("streamers", {"count": -1}),
        ("streamers", {"count": 1, "prefix": "Bad-Prefix"}),
        ("streamers", {"count": True}),
        ("flip", {"rate": 0}),
        ("flip", {"rate": 10}),  # no streamers yet
        ("error", {"code": 200}),
        ("drop", {"count": -2}),
        ("malformed", {"kind": "nope"}),
        ("api_mode", {"mode": "sideways"}),
        ("api_mode", {"mode": None, "surface": "moon"}),
        ("token_ttl", {"seconds": 0}),
        ("noise", {"rate": -1}),
        ("streamers", [1, 2]),
    ],
)
def test_bad_input_is_400_json(sim: Simulator, path: str, body: Any) -> None:
    response = _post(sim, path, body)
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["error"], str)


def test_bad_json_unknown_path_and_method(sim: Simulator) -> None:
    bad = requests.post(f"{sim.control_url}/control/live", data=b"{nope", timeout=5)
    assert bad.status_code == 400 and "error" in bad.json()
    assert _get(sim, "nothing").status_code == 404
    assert _get(sim, "live").status_code == 405
    assert requests.get(f"{sim.control_url}/control/truth", params={"since": "x"}, timeout=5).status_code == 400
    assert _get(sim, "stats").status_code == 200  # still alive
