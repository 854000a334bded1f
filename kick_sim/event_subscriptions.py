"""Kick's Events API subscriptions: `GET/POST/DELETE /public/v1/events/subscriptions`.

Shapes follow Kick's OpenAPI spec (docs.kick.com/events/subscribe-to-events, as typed by
public SDKs): GET lists `{app_id, broadcaster_user_id, created_at, event, id, method,
updated_at, version}`; POST takes `{broadcaster_user_id, events: [{name, version}], method:
"webhook"}` and answers one result per event (`{name, version, subscription_id}` or `{name,
version, error}`); DELETE `?id=..&id=..` answers 204. Over the per-app limit Kick answers
400 `{"data": "event subscription limit reached", "message": "Bad request"}` (KickDevDocs
issues #100, #227).

The store is shared with the webhook sender threads (Kick drops a subscription whose
deliveries keep failing), so every method takes one lock; each is O(1) or O(result).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kick_sim.events import rfc3339
from kick_sim.http_server import Request, Response, json_response
from kick_sim.state import World

SUBSCRIPTIONS_PATH = "/public/v1/events/subscriptions"
STATUS_UPDATED = "livestream.status.updated"
METADATA_UPDATED = "livestream.metadata.updated"
# Every event name Kick documents (events/event-types.md); the simulator only ever sends the
# two livestream ones, but subscribing to the others works as it does on Kick.
KNOWN_EVENTS = frozenset({
    "chat.message.sent", "channel.followed", "channel.subscription.renewal", "channel.subscription.gifts",
    "channel.subscription.new", "channel.reward.redemption.updated", STATUS_UPDATED, METADATA_UPDATED,
    "moderation.banned", "kicks.gifted",
})
DEFAULT_LIMIT = 10_000
SIM_APP_ID = "01JSIMAPP0000000000000000K"
LIMIT_REACHED = "event subscription limit reached"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(rng: random.Random, wall: float | None = None) -> str:
    """A ULID (Kick's id format): 48-bit milliseconds + 80 random bits, Crockford base32."""
    value = (int((time.time() if wall is None else wall) * 1000) << 80) | rng.getrandbits(80)
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


@dataclass(frozen=True, slots=True)
class EventSubscription:
    """One subscription of the (single) simulated app to one event of one broadcaster."""

    id: str
    broadcaster_user_id: int
    event: str
    version: int
    created_wall: float
    method: str = "webhook"

    def to_json(self) -> dict[str, Any]:
        """The item shape of GET /public/v1/events/subscriptions."""
        created = rfc3339(self.created_wall)
        return {
            "app_id": SIM_APP_ID, "broadcaster_user_id": self.broadcaster_user_id, "created_at": created,
            "event": self.event, "id": self.id, "method": self.method, "updated_at": created,
            "version": self.version,
        }


class EventSubscriptionStore:
    """The app's subscriptions, by id and by (broadcaster, event); thread-safe."""

    def __init__(self, rng: random.Random, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 0:
            raise ValueError("the event subscription limit must be >= 0")
        self.limit = limit
        self._rng = rng
        self._lock = threading.Lock()
        self._by_id: dict[str, EventSubscription] = {}
        self._by_key: dict[tuple[int, str], EventSubscription] = {}
        self.created_total = 0
        self.deleted_total = 0
        self.dropped_total = 0  # removed by Kick itself (failed deliveries, or a test's drop)

    def __len__(self) -> int:
        return len(self._by_id)

    def set_limit(self, limit: int) -> None:
        """Change the per-app limit; existing subscriptions over it stay (as on Kick)."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit

    def subscribe(self, user_id: int, events: list[tuple[str, int]]) -> list[dict[str, Any]] | None:
        """Create what is missing; one result per event. None when the limit forbids the new ones.

        Subscribing twice to the same event returns the existing id (no duplicate deliveries).
        """
        with self._lock:
            new = {(name, version) for name, version in events if (user_id, name) not in self._by_key}
            if len(self._by_id) + len(new) > self.limit:
                return None
            results: list[dict[str, Any]] = []
            for name, version in events:
                existing = self._by_key.get((user_id, name))
                if existing is None:
                    existing = EventSubscription(new_ulid(self._rng), user_id, name, version, time.time())
                    self._by_id[existing.id] = existing
                    self._by_key[(user_id, name)] = existing
                    self.created_total += 1
                results.append({"name": name, "version": version, "subscription_id": existing.id})
            return results

    def list_all(self, user_id: int | None = None) -> list[EventSubscription]:
        """Every subscription (or one broadcaster's), oldest first."""
        with self._lock:
            items = list(self._by_id.values())
        if user_id is not None:
            items = [item for item in items if item.broadcaster_user_id == user_id]
        return items

    def find(self, user_id: int, event: str) -> EventSubscription | None:
        """The subscription that makes `event` of `user_id` be delivered, if any."""
        return self._by_key.get((user_id, event))  # one dict read: atomic under the GIL

    def is_active(self, subscription_id: str) -> bool:
        return subscription_id in self._by_id

    def delete(self, ids: Iterable[str]) -> int:
        """Remove by id (the app's DELETE); unknown ids are ignored. Returns how many went."""
        removed = self._remove(ids)
        self.deleted_total += removed
        return removed

    def drop(self, ids: Iterable[str]) -> int:
        """Remove by id on Kick's own initiative (auto-unsubscribe)."""
        removed = self._remove(ids)
        self.dropped_total += removed
        return removed

    def drop_random(self, count: int, rng: random.Random) -> list[str]:
        """Kick dropping `count` random subscriptions; returns their ids."""
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            ids = sorted(self._by_id)
        chosen = rng.sample(ids, min(count, len(ids)))
        self.drop(chosen)
        return chosen

    def _remove(self, ids: Iterable[str]) -> int:
        removed = 0
        with self._lock:
            for subscription_id in ids:
                item = self._by_id.pop(subscription_id, None)
                if item is not None:
                    self._by_key.pop((item.broadcaster_user_id, item.event), None)
                    removed += 1
        return removed


def _bad_request(data: Any, message: str = "Bad request") -> Response:
    return json_response(400, {"data": data, "message": message})


class EventSubscriptionsApi:
    """The three HTTP verbs on SUBSCRIPTIONS_PATH; called after the bearer token was checked."""

    def __init__(self, store: EventSubscriptionStore, world: World) -> None:
        self.store = store
        self.world = world

    def handle(self, request: Request) -> Response:
        if request.method == "GET":
            return self._list(request)
        if request.method == "POST":
            return self._create(request)
        if request.method == "DELETE":
            return self._delete(request)
        return json_response(405, {"message": "Method Not Allowed", "data": None})

    def _list(self, request: Request) -> Response:
        raw = request.query.get("broadcaster_user_id", [])
        if raw and not raw[0].isdigit():
            return _bad_request({}, "Invalid request")
        items = self.store.list_all(int(raw[0]) if raw else None)
        return json_response(200, {"data": [item.to_json() for item in items], "message": "OK"})

    def _create(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            return _bad_request({}, "Invalid request")
        parsed = _parse_create(body)
        if parsed is None:
            return _bad_request({}, "Invalid request")
        user_id, events = parsed
        if user_id not in self.world.by_user_id:
            return _bad_request("broadcaster not found")
        known = [(name, version) for name, version in events if name in KNOWN_EVENTS and version == 1]
        results = self.store.subscribe(user_id, known)
        if results is None:
            return _bad_request(LIMIT_REACHED)
        by_name = {result["name"]: result for result in results}
        answer = [
            by_name.get(name) or {"name": name, "version": version, "error": "unknown event or version"}
            for name, version in events
        ]
        return json_response(200, {"data": answer, "message": "OK"})

    def _delete(self, request: Request) -> Response:
        ids = request.query.get("id", [])
        if not ids:
            return _bad_request({}, "Invalid request")
        self.store.delete(ids)
        return Response(204, b"", "application/json")


def _parse_create(body: Any) -> tuple[int, list[tuple[str, int]]] | None:
    """(broadcaster user id, [(name, version)]) from a POST body, or None when malformed."""
    if not isinstance(body, dict) or body.get("method", "webhook") != "webhook":
        return None
    user_id, events = body.get("broadcaster_user_id"), body.get("events")
    if isinstance(user_id, bool) or not isinstance(user_id, int) or not isinstance(events, list) or not events:
        return None
    parsed: list[tuple[str, int]] = []
    for event in events:
        if not isinstance(event, dict):
            return None
        name, version = event.get("name"), event.get("version")
        if not isinstance(name, str) or isinstance(version, bool) or not isinstance(version, int):
            return None
        parsed.append((name, version))
    return user_id, parsed
