"""Kick's HTTP side on one port: OAuth token endpoint, official /public/v1 and v2 API, web /api/v2.

The official endpoints follow Kick as of its 2026-06-23 changelog (see the Kick facts,
section 2): `/public/v1/channels` (no channel id; `stream.start_time` with the streamer's
UTC offset), `/public/v1/livestreams` (deprecated: answers normally, with a Deprecation
header, or 404/410), `/public/v2/livestreams` (cursor pages, oldest first, a UUID per
broadcast) and `/public/v1/users/livestreams` (up to 100 user ids).

Answers reflect the REST truth (World state), which a "missed" event changes without any
frame, so a monitor that reconciles via REST can be graded on it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from kick_sim.api_faults import ApiFaults
from kick_sim.event_subscriptions import SUBSCRIPTIONS_PATH, EventSubscriptionsApi
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
V2_DEFAULT_LIMIT = 25
V2_MAX_LIMIT = 1000
USERS_LIVESTREAMS_MAX = 100
# RFC 9745 Deprecation header: "@" + the epoch seconds of Kick's changelog entry (2026-06-23).
DEPRECATION_HEADER = {"Deprecation": "@1782172800"}
PUBLIC_KEY_PATH = "/public/v1/public-key"
REQUEST_LOG_SIZE = 200_000  # arrival times kept for rate measurements


def rfc3339_offset(wall: float, offset_minutes: int) -> str:
    """A time as the official channels endpoint writes it: local time with the streamer's offset."""
    zone = UTC if offset_minutes == 0 else timezone(timedelta(minutes=offset_minutes))
    text = datetime.fromtimestamp(int(wall), zone).isoformat()
    return text.replace("+00:00", "Z") if offset_minutes == 0 else text


def encode_cursor(started_wall: float, user_id: int) -> str:
    return base64.urlsafe_b64encode(f"{started_wall!r}:{user_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int] | None:
    """The (start, user id) a v2 page ended at; None for a cursor we did not issue."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        started, _, user_id = text.partition(":")
        return float(started), int(user_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def surface_of(path: str) -> str | None:
    """Which Kick host a path belongs to: oauth (id.kick.com), official (api.kick.com), web (kick.com)."""
    if path == "/oauth/token":
        return "oauth"
    if path.startswith(("/public/v1/", "/public/v2/")):
        return "official"
    if path.startswith("/api/v2/"):
        return "web"
    return None


def _api_error(status: int, message: str) -> Response:
    return json_response(status, {"message": message, "data": None})


class KickApi:
    """The HTTP handler; runs on the event loop thread like the rest of the simulator."""

    def __init__(
        self, world: World, tokens: TokenStore, faults: ApiFaults, max_batch: int,
        livestreams_v1: str = "ok", wrong_data_over: int | None = None,
        events: EventSubscriptionsApi | None = None, public_key_pem: Callable[[], str] | None = None,
    ) -> None:
        self.world = world
        self.events = events  # the Events API subscriptions (None: 404 like any unknown path)
        self.public_key_pem = public_key_pem  # the webhook signing key's public half, PEM
        self.tokens = tokens
        self.faults = faults
        self.max_batch = max_batch
        self.livestreams_v1 = livestreams_v1
        self.wrong_data_over = wrong_data_over
        self.wrong_data_kind = "live"  # "live": wrong is_live; "ids": streamers not asked for, duplicates
        self.requests: Counter[str] = Counter()  # "surface status" -> count
        self.paths: Counter[str] = Counter()  # official/web path -> requests (any answer)
        # (monotonic arrival time, surface) of every request, for sliding-window rate checks
        self.arrivals: deque[tuple[float, str]] = deque(maxlen=REQUEST_LOG_SIZE)

    def set_livestreams_v1(self, mode: str) -> None:
        """"ok", "deprecated" (answers with a Deprecation header), "404" or "410"."""
        if mode not in ("ok", "deprecated", "404", "410"):
            raise ValueError(f"livestreams_v1 mode must be ok|deprecated|404|410, got {mode!r}")
        self.livestreams_v1 = mode

    def set_wrong_data_over(self, over: int | None, kind: str = "live") -> None:
        """Channels requests naming more than `over` streamers get wrong data (None = off).

        kind "live": every second item has its live data inverted; "ids": the answer also
        carries a streamer nobody asked for and one item twice.
        """
        if over is not None and over < 1:
            raise ValueError("over must be >= 1 or null")
        if kind not in ("live", "ids"):
            raise ValueError(f"kind must be live|ids, got {kind!r}")
        self.wrong_data_over, self.wrong_data_kind = over, kind

    async def handle(self, request: Request) -> Response:
        surface = surface_of(request.path)
        if surface is None:
            return _api_error(404, "Not Found")
        self.arrivals.append((time.monotonic(), surface))
        if surface != "oauth":
            self.paths["/api/v2/channels" if surface == "web" else request.path.rstrip("/")] += 1
        response = await self.faults.intercept(surface)
        if response is None and request.path.rstrip("/") == PUBLIC_KEY_PATH and self.public_key_pem is not None:
            response = await self._public_key(request)
        if response is None:
            response = self._route(surface, request)
        self.requests[f"{surface} {response.status}"] += 1
        return response

    def _route(self, surface: str, request: Request) -> Response:
        if surface == "oauth":
            if request.method != "POST":
                return _api_error(405, "Method Not Allowed")
            return self._token(request)
        path = request.path.rstrip("/")
        if surface == "official" and path == SUBSCRIPTIONS_PATH and self.events is not None:
            if not self._authorized(request):
                return json_response(401, UNAUTHORIZED)
            return self.events.handle(request)
        if request.method != "GET":
            return _api_error(405, "Method Not Allowed")
        if surface == "web":
            match = V2_CHANNEL_RE.fullmatch(request.path)
            return self._v2_channel(match.group(1)) if match else _api_error(404, "Not Found")
        if not self._authorized(request):
            return json_response(401, UNAUTHORIZED)
        if path == "/public/v1/channels":
            return self._channels(request)
        if path == "/public/v1/livestreams":
            return self._livestreams(request)
        if path == "/public/v2/livestreams":
            return self._livestreams_v2(request)
        if path == "/public/v1/users/livestreams":
            return self._users_livestreams(request)
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

    async def _public_key(self, request: Request) -> Response:
        """Kick's `GET /public/v1/public-key`: {"data": {"public_key": PEM}}; no token needed.

        Off the loop: the first call may generate the key pair (~0.1 s of CPU).
        """
        if request.method != "GET":
            return _api_error(405, "Method Not Allowed")
        assert self.public_key_pem is not None
        pem = await asyncio.to_thread(self.public_key_pem)
        return json_response(200, {"data": {"public_key": pem}, "message": "OK"})

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.tokens.is_valid(token.strip())

    def _states_by_query(self, request: Request) -> list[StreamerState] | Response:
        """Streamers named by repeated slug= / broadcaster_user_id=; unknown ones are left out."""
        slugs = request.query.get("slug", [])
        raw_ids = request.query.get("broadcaster_user_id", [])
        if slugs and raw_ids:
            return _api_error(400, "use either slug or broadcaster_user_id, not both")
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
        asked = len(request.query.get("slug", [])) + len(request.query.get("broadcaster_user_id", []))
        wrong = self.wrong_data_over is not None and asked > self.wrong_data_over
        if wrong and self.wrong_data_kind == "ids":
            stranger = next((st for st in reversed(self.world.states) if st not in states), None)
            states = states + states[:1] + ([stranger] if stranger is not None else [])
            wrong = False
        items = [official_channel(state, wrong=wrong and index % 2 == 1) for index, state in enumerate(states)]
        return json_response(200, {"data": items, "message": "OK"})

    def _livestreams(self, request: Request) -> Response:
        if self.livestreams_v1 in ("404", "410"):
            return _api_error(int(self.livestreams_v1), "Not Found" if self.livestreams_v1 == "404" else "Gone")
        response = self._livestreams_v1(request)
        if self.livestreams_v1 == "deprecated" and response.status == 200:
            response.headers.update(DEPRECATION_HEADER)
        return response

    def _livestreams_v2(self, request: Request) -> Response:
        """Every live stream, oldest first, in cursor pages (no broadcaster filter exists)."""
        raw_limit = request.query.get("limit", [str(V2_DEFAULT_LIMIT)])[0]
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= V2_MAX_LIMIT:
            return _api_error(400, f"limit must be 1..{V2_MAX_LIMIT}")
        after: tuple[float, int] | None = None
        cursor = request.query.get("cursor", [""])[0]
        if cursor:
            after = decode_cursor(cursor)
            if after is None:
                return _api_error(400, "invalid cursor")
        live = sorted(
            (state for state in self.world.states if state.live),
            key=lambda state: (state.started_wall, state.streamer.user_id),
        )
        if after is not None:
            live = [s for s in live if (s.started_wall, s.streamer.user_id) > after]
        page = live[: int(raw_limit)]
        next_cursor = None
        if len(live) > len(page):
            last = page[-1]
            next_cursor = encode_cursor(last.started_wall, last.streamer.user_id)
        return json_response(200, {
            "data": [livestream_v2(state) for state in page],
            "pagination": {"next_cursor": next_cursor},
            "message": "OK",
        })

    def _users_livestreams(self, request: Request) -> Response:
        """Live streams of up to 100 users (`user_id=` repeated); offline users are absent."""
        raw_ids = request.query.get("user_id", [])
        if not raw_ids:
            return _api_error(400, "user_id is required")
        if len(raw_ids) > USERS_LIVESTREAMS_MAX:
            return _api_error(400, f"at most {USERS_LIVESTREAMS_MAX} user_id values per request")
        if not all(value.isdigit() for value in raw_ids):
            return _api_error(400, "user_id must be an integer")
        states = {state.streamer.user_id: state for value in raw_ids
                  if (state := self.world.by_user_id.get(int(value))) is not None}
        live = [state for state in states.values() if state.live]
        return json_response(200, {"data": [livestream_v2(state) for state in live], "message": "OK"})

    def _livestreams_v1(self, request: Request) -> Response:
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


def official_channel(state: StreamerState, wrong: bool = False) -> dict[str, Any]:
    """One item of GET /public/v1/channels; `wrong` inverts its live data (the big-batch fault)."""
    live = state.live != wrong
    started = state.started_wall if state.live else time.time() - 3600
    offset = state.streamer.utc_offset_minutes
    return {
        "broadcaster_user_id": state.streamer.user_id,
        "slug": state.streamer.slug,
        "stream_title": state.title,
        "channel_description": "",
        "banner_picture": "",
        "category": CATEGORY,
        "stream": {
            "is_live": live,
            "start_time": rfc3339_offset(started, offset) if live else OFFLINE_START,
            "viewer_count": state.viewer_count if live else 0,
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


def livestream_v2(state: StreamerState) -> dict[str, Any]:
    """One item of GET /public/v2/livestreams and /public/v1/users/livestreams."""
    streamer = state.streamer
    return {
        "id": state.broadcast.stream_uuid if state.broadcast else "",
        "title": state.title,
        "started_at": rfc3339_offset(state.started_wall, streamer.utc_offset_minutes),
        "viewer_count": state.viewer_count,
        "broadcaster_user": {
            "id": streamer.user_id, "username": streamer.slug, "is_verified": False, "profile_picture": "",
        },
        "channel": {"slug": streamer.slug},
        "category": CATEGORY,
        "tags": [],
        "language_code": "en",
        "has_mature_content": False,
        "thumbnail": "",
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
