"""Kick's Pusher frames and payloads, byte for byte as captured in 2025.

Lifecycle `data` is a JSON string inside the frame (double encoding), exactly like Kick.
Frames are encoded once per publish and the same bytes go to every subscriber.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from kick_sim.state import StreamerState

STREAMER_IS_LIVE = "App\\Events\\StreamerIsLive"
STOP_STREAM_BROADCAST = "App\\Events\\StopStreamBroadcast"
LIVESTREAM_UPDATED = "App\\Events\\LivestreamUpdated"
# Every name that announces a status change, including ones only seen in client handlers:
# noise replay must never carry these.
LIFECYCLE_EVENTS = frozenset(
    {
        STREAMER_IS_LIVE,
        STOP_STREAM_BROADCAST,
        LIVESTREAM_UPDATED,
        "App\\Events\\LivestreamEnded",
        "App\\Events\\LivestreamCancelled",
    }
)
CATEGORY = {"id": 15, "name": "Just Chatting", "thumbnail": ""}
LEGACY_CATEGORY = {
    "id": 15,
    "category_id": 2,
    "name": "Just Chatting",
    "tags": ["IRL"],
    "description": None,
    "deleted_at": None,
    "viewers": 0,
    "category": {"id": 2, "name": "IRL", "slug": "irl", "icon": "🎙️"},
}


def lifecycle_channels(channel_id: int, mode: str) -> tuple[str, ...]:
    """Channel names a lifecycle event goes out on for `mode` dot|underscore|both."""
    if mode == "dot":
        return (f"channel.{channel_id}",)
    if mode == "underscore":
        return (f"channel_{channel_id}",)
    return (f"channel.{channel_id}", f"channel_{channel_id}")


def encode_frame(event: str, data: str, channel: str) -> bytes:
    """A Kick event frame: `data` is already a JSON string and gets encoded once more."""
    return orjson.dumps({"event": event, "data": data, "channel": channel})


def encode_protocol(event: str, data: Any, channel: str | None = None) -> bytes:
    """A pusher:* frame; `data` goes in as given (object or pre-encoded string)."""
    frame: dict[str, Any] = {"event": event, "data": data}
    if channel is not None:
        frame["channel"] = channel
    return orjson.dumps(frame)


def kick_timestamp(wall: float) -> str:
    """Laravel's JSON timestamp, as in StreamerIsLive.created_at (whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(wall))


def rfc3339(wall: float) -> str:
    """The official API's timestamp form."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def sql_timestamp(wall: float) -> str:
    """The web API's (and LivestreamUpdated's) database-style timestamp."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(wall))


def streamer_is_live_data(state: StreamerState) -> str:
    """Decoded shape: {"livestream":{"id","channel_id","session_title","source","created_at"}}."""
    return orjson.dumps(
        {
            "livestream": {
                "id": state.livestream_id,
                "channel_id": state.streamer.channel_id,
                "session_title": state.title,
                "source": None,
                "created_at": kick_timestamp(state.started_wall),
            }
        }
    ).decode()


def stop_stream_data(state: StreamerState) -> str:
    """Decoded shape: {"livestream":{"id","channel":{"id","is_banned"}}}; no timestamp."""
    return orjson.dumps(
        {"livestream": {"id": state.livestream_id, "channel": {"id": state.streamer.channel_id, "is_banned": False}}}
    ).decode()


def livestream_slug(state: StreamerState) -> str:
    """Kick's per-stream slug: five hex digits and the title, lower-cased and dashed."""
    words = "".join(c if c.isalnum() else " " for c in state.title.lower()).split()
    digest = ((state.livestream_id or 0) * 2654435761) & 0xFFFFF
    return f"{digest:05x}-" + "-".join(words)[:60]


def livestream_updated_data(state: StreamerState) -> str:
    """Modelled on the captured LivestreamUpdated payload (lifecycle-samples.json)."""
    category = dict(LEGACY_CATEGORY, viewers=state.viewer_count * 30)
    return orjson.dumps(
        {
            "livestream": {
                "id": state.livestream_id,
                "slug": livestream_slug(state),
                "channel_id": state.streamer.channel_id,
                "created_at": sql_timestamp(state.started_wall),
                "session_title": state.title,
                "is_live": state.live,
                "risk_level_id": None,
                "source": None,
                "twitch_channel": None,
                "duration": 0,
                "language": "English",
                "is_mature": False,
                "viewer_count": state.viewer_count,
                "tags": [],
                "categories": [category],
            }
        }
    ).decode()
