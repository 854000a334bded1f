"""Webhook bodies → the writer's StatusChange (the contract in messages.py), and bodies we refuse."""

from __future__ import annotations

import pytest

from kick_monitor.webhook_events import METADATA_EVENT, STATUS_EVENT, Invalid, parse_delivery, to_change
from tests.webhooks import metadata_body, status_body

START, END = 1_800_000_000.0, 1_800_003_600.0


def test_a_start_becomes_an_online_change_at_kicks_start() -> None:
    delivery = parse_delivery(STATUS_EVENT, status_body(42, True, START, title="hello"))
    change = to_change(delivery, "01ABC", streamer_id=5, channel_id=None, received_at=START + 3, received_mono=1.0)
    assert (change.change_id, change.source, change.status, change.event) == (
        "webhook:01ABC", "webhook", "online", STATUS_EVENT)
    assert (change.streamer_id, change.channel_id, change.generation, change.seq, change.shard) == (5, None, 0, 0, -1)
    assert (change.occurred_at, change.started_at, change.title, change.livestream_id) == (START, START, "hello", None)
    assert change.received_at == START + 3


def test_an_end_carries_its_end_and_its_start() -> None:
    delivery = parse_delivery(STATUS_EVENT, status_body(42, False, START, END))
    change = to_change(delivery, "01DEF", streamer_id=5, channel_id=99, received_at=END, received_mono=1.0)
    assert (change.status, change.occurred_at, change.started_at, change.channel_id) == ("offline", END, START, 99)


def test_metadata_is_never_a_transition() -> None:
    delivery = parse_delivery(METADATA_EVENT, metadata_body(42, "new title", "Just Chatting"))
    change = to_change(delivery, "01GHI", streamer_id=5, channel_id=None, received_at=END, received_mono=1.0)
    assert (change.status, change.occurred_at, change.title, change.category, change.event) == (
        "unknown", None, "new title", "Just Chatting", METADATA_EVENT)


@pytest.mark.parametrize(("event", "body", "why"), [
    (STATUS_EVENT, b"not json", "not JSON"),
    (STATUS_EVENT, b"[1, 2]", "not a JSON object"),
    (STATUS_EVENT, b'{"is_live": true}', "broadcaster"),
    (STATUS_EVENT, b'{"broadcaster": {"user_id": "7"}, "is_live": true}', "user_id"),
    (STATUS_EVENT, b'{"broadcaster": {"user_id": 7}, "is_live": "yes"}', "is_live"),
    (STATUS_EVENT, b'{"broadcaster": {"user_id": 7}, "is_live": true, "started_at": "yesterday"}', "started_at"),
    # a signed metadata body replayed under the status type's (unsigned) header
    (STATUS_EVENT, metadata_body(7, "t", "c"), "is_live"),
    (METADATA_EVENT, status_body(7, True, START), "metadata"),
])
def test_bodies_that_are_not_what_their_type_says_are_invalid(event: str, body: bytes, why: str) -> None:
    with pytest.raises(Invalid, match=why):
        parse_delivery(event, body)
