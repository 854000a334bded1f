"""Bodies of Kick's `livestream.status.updated` and `livestream.metadata.updated` webhooks.

Shapes as in KickDevDocs events/event-types.md: a `broadcaster` object keyed by user id (no
channel id, no stream id), `started_at`/`ended_at` in RFC 3339 with the streamer's UTC offset
(Kick's example: "2025-01-01T11:00:00+11:00"), `ended_at` null while live.
"""

from __future__ import annotations

from typing import Any

import orjson

from kick_sim.events import CATEGORY
from kick_sim.http_api import rfc3339_offset
from kick_sim.state import StreamerState


def broadcaster(state: StreamerState) -> dict[str, Any]:
    streamer = state.streamer
    return {
        "is_anonymous": False, "user_id": streamer.user_id, "username": streamer.slug, "is_verified": False,
        "profile_picture": "", "channel_slug": streamer.slug, "identity": None,
    }


def status_updated_body(state: StreamerState) -> bytes:
    """Stream started (is_live true, ended_at null) or ended (is_live false, ended_at set)."""
    offset = state.streamer.utc_offset_minutes
    started = state.broadcast.started_wall if state.broadcast else state.started_wall
    ended = state.broadcast.ended_wall if state.broadcast and not state.live else None
    return orjson.dumps({
        "broadcaster": broadcaster(state),
        "is_live": state.live,
        "title": state.title,
        "started_at": rfc3339_offset(started, offset),
        "ended_at": rfc3339_offset(ended, offset) if ended is not None else None,
    })


def metadata_updated_body(state: StreamerState) -> bytes:
    """Title (and category) of the current stream; no status."""
    return orjson.dumps({
        "broadcaster": broadcaster(state),
        "metadata": {"title": state.title, "language": "en", "has_mature_content": False, "category": CATEGORY},
    })
