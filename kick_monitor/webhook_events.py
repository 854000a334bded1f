"""A verified webhook body → the `StatusChange` the writer merges (the contract in messages.py).

Only two event types matter to a status monitor: `livestream.status.updated` (start and end
of a broadcast, Kick's own `started_at`/`ended_at`) and `livestream.metadata.updated` (title
and category of the current broadcast, no transition). Everything else is ignored by the
caller, counted, and still answered 200: Kick unsubscribes an app that keeps failing an
event, so never fail what we merely ignore.

The `Kick-Event-Type` header is not covered by the signature, so the body must have the
shape of the type it claims (`is_live` for a status, `metadata` for metadata): a signed
body replayed under another type's header is `Invalid`, not misread.

>>> d = parse_delivery("livestream.status.updated", b'{"broadcaster":{"user_id":7},"is_live":true,'
...                    b'"title":"hi","started_at":"2026-11-30T10:00:00Z","ended_at":null}')
>>> d.user_id, d.status
(7, 'online')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .messages import Status, StatusChange
from .webhook_signature import parse_timestamp

STATUS_EVENT = "livestream.status.updated"
METADATA_EVENT = "livestream.metadata.updated"
KNOWN_EVENTS = frozenset({STATUS_EVENT, METADATA_EVENT})
MAX_TITLE_CHARS = 1000  # Kick's titles are short; a huge one is cut, not refused


class Invalid(Exception):
    """A signed body that is not what its event type says (not JSON, missing fields): ignored, counted."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """The fields of one delivery the monitor uses; times are epoch seconds (Kick's clock)."""

    event: str
    user_id: int
    status: Status
    title: str | None
    category: str | None
    started_at: float | None
    ended_at: float | None


def parse_delivery(event: str, body: bytes) -> Delivery:
    """Parse a verified body of a known `event`; raise Invalid with a one-line reason."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Invalid("body is not JSON") from None
    if not isinstance(data, dict):
        raise Invalid("body is not a JSON object")
    user_id = _user_id(data.get("broadcaster"))
    if event == STATUS_EVENT:
        is_live = data.get("is_live")
        if not isinstance(is_live, bool):
            raise Invalid("livestream.status.updated without a boolean is_live")
        return Delivery(
            event, user_id, "online" if is_live else "offline", _text(data.get("title")), None,
            _time(data.get("started_at"), "started_at"), _time(data.get("ended_at"), "ended_at"),
        )
    if event == METADATA_EVENT:
        metadata = data.get("metadata")
        if not isinstance(metadata, dict):
            raise Invalid("livestream.metadata.updated without a metadata object")
        category = metadata.get("category")
        name = _text(category.get("name")) if isinstance(category, dict) else None
        return Delivery(event, user_id, "unknown", _text(metadata.get("title")), name, None, None)
    raise Invalid(f"not an event type we parse: {event[:80]}")


def to_change(
    delivery: Delivery, message_id: str, streamer_id: int, channel_id: int | None,
    received_at: float, received_mono: float,
) -> StatusChange:
    """The writer's change for a delivery of streamer `streamer_id` (see StatusChange's docstring).

    `change_id` is `webhook:{message id}`: Kick's idempotency key, so a re-delivery is the same
    change and never a second history row. A status change's `occurred_at` is Kick's start
    (online) or end (offline); metadata has none (it is never a transition).
    """
    occurred_at = delivery.started_at if delivery.status == "online" else delivery.ended_at
    if delivery.status == "unknown":
        occurred_at = None
    return StatusChange(
        change_id=f"webhook:{message_id}", channel_id=channel_id, status=delivery.status, source="webhook",
        event=delivery.event, livestream_id=None, title=delivery.title, occurred_at=occurred_at,
        received_at=received_at, received_mono=received_mono, shard=-1, generation=0, seq=0,
        streamer_id=streamer_id, category=delivery.category, started_at=delivery.started_at,
    )


def _user_id(broadcaster: Any) -> int:
    if not isinstance(broadcaster, dict):
        raise Invalid("no broadcaster object")
    user_id = broadcaster.get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        raise Invalid("broadcaster.user_id is not a positive integer")
    return user_id


def _text(value: Any) -> str | None:
    return value[:MAX_TITLE_CHARS] if isinstance(value, str) else None


def _time(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} is not an RFC 3339 string")
    try:
        return parse_timestamp(value)
    except ValueError:
        raise Invalid(f"{name} is not an RFC 3339 time") from None
