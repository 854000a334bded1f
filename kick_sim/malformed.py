"""Frames a robust client must survive without crashing or changing any status.

Each kind aims at one parser path; frames go out on a channel the receiving socket is
subscribed to, so they reach the client's event handling rather than being ignored early.
"""

from __future__ import annotations

import orjson

from kick_sim.events import (
    STOP_STREAM_BROADCAST,
    STREAMER_IS_LIVE,
    encode_frame,
)

MALFORMED_KINDS = (
    "bad_json",
    "bad_inner_json",
    "missing_fields",
    "wrong_types",
    "unknown_event",
    "huge",
    "unsubscribed_channel",
)
HUGE_BYTES = 1024 * 1024


def pick_channel(channels: set[str], fallback: str) -> str:
    """A lifecycle-type channel the socket listens on, else any of its channels, else fallback."""
    any_channel = None
    for name in channels:
        if name.startswith("channel"):
            return name
        any_channel = any_channel or name
    return any_channel or fallback


def malformed_frames(kind: str, channel: str, stranger_channel_id: int) -> list[bytes]:
    """The frames for `kind`; `stranger_channel_id` belongs to no simulated streamer."""
    if kind == "bad_json":
        return [b'{"event":"App\\\\Events\\\\StreamerIsLive","data":"{\\"livestream\\":{\\"id\\":1', b"not json at all"]
    if kind == "bad_inner_json":
        return [encode_frame(STREAMER_IS_LIVE, '{"livestream":{"id":74000001,"channel_id":', channel)]
    if kind == "missing_fields":
        return [
            encode_frame(STREAMER_IS_LIVE, '{"livestream":{}}', channel),
            encode_frame(STOP_STREAM_BROADCAST, "{}", channel),
            orjson.dumps({"data": '{"livestream":{"id":1}}', "channel": channel}),
            orjson.dumps({"event": STREAMER_IS_LIVE, "channel": channel}),
        ]
    if kind == "wrong_types":
        bad_inner = {"livestream": {"id": "74000001x", "channel_id": [1], "session_title": 42, "created_at": 7}}
        return [
            encode_frame(STREAMER_IS_LIVE, orjson.dumps(bad_inner).decode(), channel),
            encode_frame(STOP_STREAM_BROADCAST, '{"livestream":{"id":null,"channel":"668"}}', channel),
            orjson.dumps({"event": STREAMER_IS_LIVE, "data": 12345, "channel": channel}),
            orjson.dumps({"event": 42, "data": "{}", "channel": ["x"]}),
            b'["an","array","frame"]',
        ]
    if kind == "unknown_event":
        return [encode_frame("App\\Events\\StreamerIsTeleporting", '{"livestream":{"id":74000001}}', channel)]
    if kind == "huge":
        chat = {"id": "huge", "chatroom_id": 0, "content": "A" * HUGE_BYTES, "type": "message"}
        return [encode_frame("App\\Events\\ChatMessageEvent", orjson.dumps(chat).decode(), channel)]
    if kind == "unsubscribed_channel":
        inner = {
            "livestream": {
                "id": 74000001,
                "channel_id": stranger_channel_id,
                "session_title": "nobody subscribed to this",
                "source": None,
                "created_at": "2025-09-14T16:11:18.000000Z",
            }
        }
        return [encode_frame(STREAMER_IS_LIVE, orjson.dumps(inner).decode(), f"channel.{stranger_channel_id}")]
    raise ValueError(f"unknown malformed kind {kind!r}; expected one of {MALFORMED_KINDS}")
