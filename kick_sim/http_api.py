"""Kick's HTTP side on one port: OAuth token endpoint, official /public/v1 API, web /api/v2.

Answers reflect the REST truth (World state), which a "missed" event changes without any
frame, so a monitor that reconciles via REST can be graded on it.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from kick_sim.api_faults import ApiFaults
from kick_sim.events import (
    CATEGORY,
    LEGACY_CATEGORY,
    livestream_slug,
    rfc3339,
    sql_timestamp,
)
from kick_sim.http_server import Request, Response, json_response
from kick_sim.state import StreamerState, World
from kick_sim.tokens import TokenStore

V2_CHANNEL_RE = re.compile(r"/api/v2/channels/([^/]+)/?")
OFFLINE_START = "0001-01-01T00:00:00Z"
UNAUTHORIZED = {"message": "Unauthorized", "data": None}
LIVESTREAMS_DEFAULT_LIMIT = 25
LIVESTREAMS_MAX_LIMIT = 100


def surface_of(path: str) -> str | None:
    """Which Kick host a path belongs to: oauth (id.kick.com), official (api.kick.com), web (kick.com)."""
    if path == "/oauth/token":
        return "oauth"
    if path.startswith("/public/v1/"):
        return "official"
    if path.startswith("/api/v2/"):
        return "web"
    return None


def _api_error(status: int, message: str) -> Response:
    return json_response(status, {"message": message, "data": None})


class KickApi:
    """The HTTP handler; runs on the event loop thread like the rest of the simulator."""

    def __init__(self, world: World, tokens: TokenStore, faults: ApiFaults, max_batch: int) -> None:
        self.world = world
        self.tokens = tokens
        self.faults = faults
        self.max_batch = max_batch
        self.requests: Counter[str] = Counter()  # "surface status" -> count

    async def handle(self, request: Request) -> Response:
        surface = surface_of(request.path)
        if surface is None:
            return _api_error(404, "Not Found")
        response = await self.faults.intercept(surface)
        if response is None:
            response = self._route(surface, request)
        self.requests[f"{surface} {response.status}"] += 1
        return response

    def _route(self, surface: str, request: Request) -> Response:
        if surface == "oauth":
            if request.method != "POST":
                return _api_error(405, "Method Not Allowed")
            return self._token(request)
        if request.method != "GET":
            return _api_error(405, "Method Not Allowed")
        if surface == "web":
            match = V2_CHANNEL_RE.fullmatch(request.path)
            return self._v2_channel(match.group(1)) if match else _api_error(404, "Not Found")
        if not self._authorized(request):
            return json_response(401, UNAUTHORIZED)
        if request.path.rstrip("/") == "/public/v1/channels":
            return self._channels(request)
        if request.path.rstrip("/") == "/public/v1/livestreams":
            return self._livestreams(request)
        return _api_error(404, "Not Found")

    def _token(self, request: Request) -> Response:
        form = request.form()
        if form.get("grant_type", [""])[0] != "client_credentials":
            return json_response(
                400, {"error": "unsupported_grant_type", "error_description": "grant_type must be client_credentials"}
            )
        issued = self.tokens.issue(form.get("client_id", [""])[0], form.get("client_secret", [""])[0])
        if issued is None:
            return json_response(401, {"error": "invalid_client", "error_description": "Client authentication failed"})
        token, expires_in = issued
        return json_response(200, {"access_token": token, "token_type": "Bearer", "expires_in": expires_in})

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.tokens.is_valid(token.strip())

    def _states_by_query(self, request: Request) -> list[StreamerState] | Response:
        """Streamers named by repeated slug= / broadcaster_user_id=; unknown ones are left out."""
        slugs = request.query.get("slug", [])
        raw_ids = request.query.get("broadcaster_user_id", [])
        if len(slugs) + len(raw_ids) > self.max_batch:
            return _api_error(400, f"at most {self.max_batch} slug/broadcaster_user_id values per request")
        if not all(value.isdigit() for value in raw_ids):
            return _api_error(400, "broadcaster_user_id must be an integer")
        found = [self.world.by_slug.get(slug.lower()) for slug in slugs]
        found += [self.world.by_user_id.get(int(value)) for value in raw_ids]
        unique: dict[int, StreamerState] = {}
        for state in found:
            if state is not None:
                unique.setdefault(state.streamer.user_id, state)
        return list(unique.values())

    def _channels(self, request: Request) -> Response:
        if "slug" not in request.query and "broadcaster_user_id" not in request.query:
            return _api_error(400, "slug or broadcaster_user_id is required")
        states = self._states_by_query(request)
        if isinstance(states, Response):
            return states
        return json_response(200, {"data": [official_channel(state) for state in states], "message": "OK"})

    def _livestreams(self, request: Request) -> Response:
        if "broadcaster_user_id" in request.query:
            states = self._states_by_query(request)
            if isinstance(states, Response):
                return states
            live = [state for state in states if state.live]
        else:
            raw_limit = request.query.get("limit", [str(LIVESTREAMS_DEFAULT_LIMIT)])[0]
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= LIVESTREAMS_MAX_LIMIT:
                return _api_error(400, f"limit must be 1..{LIVESTREAMS_MAX_LIMIT}")
            live = [state for state in self.world.states if state.live]
            live = sorted(live, key=lambda state: -state.viewer_count)[: int(raw_limit)]
        return json_response(200, {"data": [official_livestream(state) for state in live], "message": "OK"})

    def _v2_channel(self, slug: str) -> Response:
        state = self.world.by_slug.get(slug.lower())
        if state is None:
            return json_response(404, {"message": "No query results for model [App\\Models\\Channel]."})
        return json_response(200, web_channel(state))


def official_channel(state: StreamerState) -> dict[str, Any]:
    """One item of GET /public/v1/channels."""
    return {
        "broadcaster_user_id": state.streamer.user_id,
        "slug": state.streamer.slug,
        "stream_title": state.title,
        "channel_description": "",
        "banner_picture": "",
        "category": CATEGORY,
        "stream": {
            "is_live": state.live,
            "start_time": rfc3339(state.started_wall) if state.live else OFFLINE_START,
            "viewer_count": state.viewer_count,
            "url": "",
            "key": "",
            "is_mature": False,
            "language": "en",
            "thumbnail": "",
        },
    }


def official_livestream(state: StreamerState) -> dict[str, Any]:
    """One item of GET /public/v1/livestreams (only live streamers appear there)."""
    return {
        "broadcaster_user_id": state.streamer.user_id,
        "channel_id": state.streamer.channel_id,
        "slug": state.streamer.slug,
        "stream_title": state.title,
        "started_at": rfc3339(state.started_wall),
        "viewer_count": state.viewer_count,
        "category": CATEGORY,
        "language": "en",
        "has_mature_content": False,
        "thumbnail": "",
        "profile_picture": "",
    }


def web_channel(state: StreamerState) -> dict[str, Any]:
    """GET kick.com/api/v2/channels/{slug}: the unofficial shape with all three ids."""
    streamer = state.streamer
    livestream = None
    if state.live:
        livestream = {
            "id": state.livestream_id,
            "slug": livestream_slug(state),
            "channel_id": streamer.channel_id,
            "created_at": sql_timestamp(state.started_wall),
            "session_title": state.title,
            "is_live": True,
            "risk_level_id": None,
            "start_time": sql_timestamp(state.started_wall),
            "source": None,
            "twitch_channel": None,
            "duration": 0,
            "language": "English",
            "is_mature": False,
            "viewer_count": state.viewer_count,
            "thumbnail": {"url": ""},
            "categories": [LEGACY_CATEGORY],
            "tags": [],
        }
    return {
        "id": streamer.channel_id,
        "user_id": streamer.user_id,
        "slug": streamer.slug,
        "is_banned": False,
        "playback_url": "",
        "vod_enabled": True,
        "subscription_enabled": True,
        "followers_count": streamer.user_id % 100_000,
        "verified": False,
        "user": {"id": streamer.user_id, "username": streamer.slug, "bio": None, "profile_pic": None},
        "chatroom": {
            "id": streamer.chatroom_id,
            "chatable_type": "App\\Models\\Channel",
            "channel_id": streamer.channel_id,
            "chat_mode": "public",
            "slow_mode": False,
        },
        "livestream": livestream,
    }
