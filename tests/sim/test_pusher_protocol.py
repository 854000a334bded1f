"""Pusher protocol 7 as the simulator speaks it, checked frame by frame with raw sockets."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
import websocket

from kick_sim import SimConfig, Simulator
from tests.sim import (
    assert_nothing_pending,
    connect,
    recv_close,
    recv_json,
    send_json,
    subscribe,
)

KEY = "32cbd69e4b950bf97679"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(activity_timeout=120, seed=7)) as simulator:
        yield simulator


def _url(sim: Simulator, key: str = KEY, query: str = "protocol=7&client=js&version=8.4.0&flash=false") -> str:
    base = sim.pusher_url.split("/app/")[0]
    return f"{base}/app/{key}?{query}" if query else f"{base}/app/{key}"


def _refused(url: str) -> tuple[dict[str, object], int]:
    ws = websocket.create_connection(url, timeout=3)
    try:
        frame = recv_json(ws)
        code, _ = recv_close(ws)
    finally:
        ws.close()
    return frame, code


def test_pusher_url_has_the_kick_shape(sim: Simulator) -> None:
    assert re.fullmatch(
        rf"ws://127\.0\.0\.1:\d+/app/{KEY}\?protocol=7&client=js&version=8\.4\.0&flash=false", sim.pusher_url
    )


def test_wrong_key_gets_4001_error_then_close_4001(sim: Simulator) -> None:
    frame, code = _refused(_url(sim, key="eb1d5f283081a78b932c"))
    assert frame["event"] == "pusher:error"
    assert frame["data"]["code"] == 4001  # type: ignore[index]
    assert code == 4001


@pytest.mark.parametrize(
    ("query", "expected"),
    [("protocol=6&client=js", 4007), ("protocol=abc", 4007), ("client=js&version=8.4.0", 4008), ("", 4008)],
)
def test_unsupported_or_missing_protocol(sim: Simulator, query: str, expected: int) -> None:
    frame, code = _refused(_url(sim, query=query))
    assert frame["event"] == "pusher:error"
    assert frame["data"]["code"] == expected  # type: ignore[index]
    assert code == expected


def test_unknown_path_gets_4005(sim: Simulator) -> None:
    base = sim.pusher_url.split("/app/")[0]
    frame, code = _refused(f"{base}/nothing/here?protocol=7")
    assert (frame["data"]["code"], code) == (4005, 4005)  # type: ignore[index]


def test_connection_established_is_double_encoded(sim: Simulator) -> None:
    ws = websocket.create_connection(sim.pusher_url, timeout=3)
    try:
        frame = recv_json(ws)
    finally:
        ws.close()
    assert frame["event"] == "pusher:connection_established"
    assert isinstance(frame["data"], str)
    data = json.loads(frame["data"])
    assert re.fullmatch(r"\d+\.\d+", data["socket_id"])
    assert data["activity_timeout"] == 120


def test_socket_ids_are_unique(sim: Simulator) -> None:
    ids = set()
    for _ in range(5):
        ws = websocket.create_connection(sim.pusher_url, timeout=3)
        ids.add(json.loads(recv_json(ws)["data"])["socket_id"])
        ws.close()
    assert len(ids) == 5


def test_ping_gets_pong(sim: Simulator) -> None:
    ws = connect(sim.pusher_url)
    try:
        send_json(ws, "pusher:ping", {})
        assert recv_json(ws) == {"event": "pusher:pong", "data": {}}
        ws.send(json.dumps({"event": "pusher:ping", "data": "{}"}))  # string data is accepted too
        assert recv_json(ws)["event"] == "pusher:pong"
    finally:
        ws.close()


def test_public_channels_subscribe(sim: Simulator) -> None:
    ws = connect(sim.pusher_url)
    try:
        for channel in ("channel.2587387", "channel_2587387", "chatrooms.2579856.v2"):
            ack = subscribe(ws, channel)
            assert ack["event"] == "pusher_internal:subscription_succeeded"
            assert ack["channel"] == channel
        # data sent as a JSON string, the way some clients do it
        ws.send(json.dumps({"event": "pusher:subscribe", "data": json.dumps({"auth": "", "channel": "channel.1"})}))
        assert recv_json(ws)["channel"] == "channel.1"
        assert {"channel.2587387", "channel_2587387", "chatrooms.2579856.v2"} <= sim.subscribed_channels()
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("channel", "kind", "status"),
    [
        ("c" * 165, "InvalidChannelName", 400),
        ("channel.12 34", "InvalidChannelName", 400),
        ("channel/668", "InvalidChannelName", 400),
        ("private-livestream.74265904", "AuthError", 401),
        ("presence-chatroom.1", "AuthError", 401),
    ],
)
def test_subscription_errors(sim: Simulator, channel: str, kind: str, status: int) -> None:
    ws = connect(sim.pusher_url)
    try:
        answer = subscribe(ws, channel)
        assert answer["event"] == "pusher:subscription_error"
        assert answer["channel"] == channel
        assert answer["data"]["type"] == kind
        assert answer["data"]["status"] == status
        assert isinstance(answer["data"]["error"], str)
        assert subscribe(ws, "c" * 164)["event"] == "pusher_internal:subscription_succeeded"  # socket still fine
    finally:
        ws.close()


def test_private_channel_with_auth_still_fails(sim: Simulator) -> None:
    ws = connect(sim.pusher_url)
    try:
        answer = subscribe(ws, "private-livestream.1", auth=f"{KEY}:deadbeef")
        assert answer["event"] == "pusher:subscription_error"
        assert answer["data"]["type"] == "AuthError"
    finally:
        ws.close()


def test_subscription_error_as_pusher_error_code_null() -> None:
    with Simulator(SimConfig(subscription_error_style="pusher_error")) as sim:
        ws = connect(sim.pusher_url)
        try:
            answer = subscribe(ws, "private-x")
            assert answer["event"] == "pusher:error"
            assert answer["data"]["code"] is None
            assert "private-x" in answer["data"]["message"]
        finally:
            ws.close()


def test_unsubscribe_stops_delivery(sim: Simulator) -> None:
    (streamer,) = sim.create_streamers(1, prefix="unsub")
    ws = connect(sim.pusher_url)
    try:
        subscribe(ws, f"channel.{streamer.channel_id}")
        send_json(ws, "pusher:unsubscribe", {"channel": f"channel.{streamer.channel_id}"})
        assert_nothing_pending(ws)  # unsubscribe has no acknowledgement
        transition = sim.set_live(streamer.slug, True)
        assert transition.delivered is False
        assert_nothing_pending(ws)
    finally:
        ws.close()


def test_bad_client_frames_get_error_and_keep_socket(sim: Simulator) -> None:
    ws = connect(sim.pusher_url)
    try:
        ws.send("{not json")
        frame = recv_json(ws)
        assert frame["event"] == "pusher:error" and frame["data"]["code"] is None
        send_json(ws, "client-hello", {})
        assert recv_json(ws)["event"] == "pusher:error"
        assert_nothing_pending(ws)
    finally:
        ws.close()


def test_many_thousands_of_subscriptions_on_one_socket_are_fast(sim: Simulator) -> None:
    channels = [f"channel.{n}" for n in range(10_000, 15_000)]
    ws = connect(sim.pusher_url, timeout=10)
    try:
        started = time.monotonic()
        for channel in channels:
            send_json(ws, "pusher:subscribe", {"auth": "", "channel": channel})
        acked = [recv_json(ws)["channel"] for _ in channels]
        elapsed = time.monotonic() - started
        assert acked == channels
        assert elapsed < 5.0, elapsed
        assert set(channels) <= sim.subscribed_channels()
    finally:
        ws.close()


def test_silent_client_is_closed_with_4201() -> None:
    with Simulator(SimConfig(idle_timeout=0.5)) as sim:
        ws = connect(sim.pusher_url)
        try:
            started = time.monotonic()
            code, reason = recv_close(ws)
            assert code == 4201
            assert reason
            assert 0.4 < time.monotonic() - started < 2.0
        finally:
            ws.close()


def test_server_pings_after_activity_timeout_and_pong_keeps_socket_open() -> None:
    with Simulator(SimConfig(activity_timeout=1, idle_timeout=1.8)) as sim:
        ws = connect(sim.pusher_url)
        try:
            for _ in range(2):  # answered pings keep it alive past the idle timeout
                assert recv_json(ws) == {"event": "pusher:ping", "data": {}}
                send_json(ws, "pusher:pong", {})
            assert recv_json(ws)["event"] == "pusher:ping"  # now stay silent
            assert recv_close(ws)[0] == 4201
        finally:
            ws.close()
