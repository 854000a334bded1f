"""Pusher-side faults and noise: drops, errors, malformed frames, silence, refusal."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import websocket

from kick_sim import SimConfig, Simulator
from kick_sim.config import default_noise_file
from tests.sim import (
    assert_nothing_pending,
    connect,
    lifecycle_frames_until_pong,
    recv_close,
    recv_json,
    send_json,
    subscribe,
)


@pytest.fixture()
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=9)) as simulator:
        yield simulator


def test_drop_connections_aborts_tcp(sim: Simulator) -> None:
    sockets = [connect(sim.pusher_url) for _ in range(3)]
    subscribe(sockets[0], "channel.1")
    assert sim.connection_count() == 3
    assert sim.drop_connections(count=1) == 1
    assert sim.connection_count() == 2
    assert sim.drop_connections() == 2
    assert sim.connection_count() == 0 and sim.subscription_count() == 0
    for ws in sockets:
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            ws.recv_frame()  # EOF without any close frame
        ws.close()


@pytest.mark.parametrize("code", [4200, 4100, 4001])
def test_pusher_error_then_close_with_same_code(sim: Simulator, code: int) -> None:
    ws = connect(sim.pusher_url)
    try:
        assert sim.send_pusher_error(code=code, message="Please reconnect immediately") == 1
        frame = recv_json(ws)
        assert frame == {"event": "pusher:error", "data": {"code": code, "message": "Please reconnect immediately"}}
        assert recv_close(ws)[0] == code
    finally:
        ws.close()


def test_pusher_error_without_close_keeps_socket(sim: Simulator) -> None:
    ws = connect(sim.pusher_url)
    try:
        sim.send_pusher_error(code=4301, message="rate limited", close=False)
        assert recv_json(ws)["data"]["code"] == 4301
        assert_nothing_pending(ws)
    finally:
        ws.close()
    with pytest.raises(ValueError):
        sim.send_pusher_error(code=1000)


def test_malformed_kinds(sim: Simulator) -> None:
    (streamer,) = sim.create_streamers(1)
    ws = connect(sim.pusher_url, timeout=5)
    try:
        subscribe(ws, f"channel.{streamer.channel_id}")
        received: dict[str, list[bytes]] = {}
        for kind in ("bad_json", "bad_inner_json", "missing_fields", "wrong_types", "unknown_event", "huge",
                     "unsubscribed_channel"):
            count = sim.send_malformed(kind)
            received[kind] = [ws.recv_data()[1] for _ in range(count)]
            assert_nothing_pending(ws)  # still connected and answering
    finally:
        ws.close()
    for raw in received["bad_json"]:
        with pytest.raises(ValueError):
            json.loads(raw)
    (inner_bad,) = received["bad_inner_json"]
    with pytest.raises(ValueError):
        json.loads(json.loads(inner_bad)["data"])
    assert any("event" not in json.loads(raw) for raw in received["missing_fields"])
    assert any("data" not in json.loads(raw) for raw in received["missing_fields"])
    assert any(not isinstance(json.loads(raw), dict) for raw in received["wrong_types"])
    (unknown,) = received["unknown_event"]
    frame = json.loads(unknown)
    assert frame["event"].startswith("App\\Events\\") and frame["channel"].startswith("channel")
    (huge,) = received["huge"]
    assert len(huge) >= 1024 * 1024
    (stranger,) = received["unsubscribed_channel"]
    assert json.loads(stranger)["channel"] not in sim.subscribed_channels()
    assert json.loads(stranger)["event"] == "App\\Events\\StreamerIsLive"
    with pytest.raises(ValueError):
        sim.send_malformed("no_such_kind")
    assert sim.truth() == []  # malformed frames change nobody's status


def test_silent_sockets_get_nothing_new_sockets_work(sim: Simulator) -> None:
    (streamer,) = sim.create_streamers(1)
    muted = connect(sim.pusher_url, timeout=0.5)
    try:
        subscribe(muted, f"channel.{streamer.channel_id}")
        assert sim.set_silent(True) == 1
        fresh = connect(sim.pusher_url)
        subscribe(fresh, f"channel.{streamer.channel_id}")
        transition = sim.set_live(streamer.slug, True)
        assert [f["event"] for f in lifecycle_frames_until_pong(fresh)] == ["App\\Events\\StreamerIsLive"]
        fresh.close()
        send_json(muted, "pusher:ping", {})
        with pytest.raises(websocket.WebSocketTimeoutException):
            muted.recv_data()  # neither the lifecycle frame nor a pong
        assert transition.delivered
        sim.set_silent(False)
        assert_nothing_pending(muted)
    finally:
        muted.close()


def test_refuse_connections(sim: Simulator) -> None:
    sim.refuse_connections(True)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(sim.pusher_url, timeout=3)
    assert refused.value.status_code == 503
    sim.refuse_connections(False)
    connect(sim.pusher_url).close()
    assert sim.stats()["connections_refused"] == 1


@pytest.mark.skipif(not default_noise_file().exists(), reason="captured frames not available")
def test_noise_replays_captured_frames_onto_subscribed_channels() -> None:
    with Simulator(SimConfig(noise_rate=0.0, seed=2)) as sim:
        streamers = sim.create_streamers(3)
        target = streamers[0]
        ws = connect(sim.pusher_url)
        try:
            subscribe(ws, f"chatrooms.{target.chatroom_id}.v2")
            subscribe(ws, f"channel_{target.channel_id}")
            subscribe(ws, "chatrooms.999.v2")  # not a simulated streamer: never gets noise
            sim.set_noise_rate(800.0)
            time.sleep(0.5)
            sim.set_noise_rate(0.0)
            frames = lifecycle_frames_until_pong(ws)
        finally:
            ws.close()
    assert len(frames) > 150
    channels = {frame["channel"] for frame in frames}
    assert channels == {f"chatrooms.{target.chatroom_id}.v2", f"channel_{target.channel_id}"}
    events = {frame["event"] for frame in frames}
    assert "App\\Events\\ChatMessageEvent" in events and "GoalProgressUpdateEvent" in events
    assert not events & {"App\\Events\\StreamerIsLive", "App\\Events\\StopStreamBroadcast"}
    for frame in frames:
        assert isinstance(frame["data"], str)
        if frame["event"] == "App\\Events\\ChatMessageEvent":
            assert json.loads(frame["data"])["chatroom_id"] == target.chatroom_id
