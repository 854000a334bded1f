"""The subscription sync's pure parts: the plan (what to create, keep, delete), fingerprints, results."""

from __future__ import annotations

import requests

from kick_monitor.config import Settings, load_settings
from kick_monitor.kick_api import EventSubscription, _refusal, is_limit_message
from kick_monitor.webhook_plan import (
    FAILED,
    METADATA_EVENT,
    STATUS_EVENT,
    SUBSCRIBED,
    Recorded,
    SyncResult,
    error_kinds,
    fingerprint,
    plan_sync,
)
from kick_monitor.webhook_sync import receiver_address, sync_wanted

BOTH = [STATUS_EVENT, METADATA_EVENT]


def sub(sub_id: str, user_id: int | None, event: str = STATUS_EVENT, version: int = 1,
        method: str | None = "webhook") -> EventSubscription:
    return EventSubscription(id=sub_id, event=event, version=version, broadcaster_user_id=user_id, method=method)


def test_nothing_on_kick_creates_both_events_for_every_streamer_in_id_order() -> None:
    plan = plan_sync({3: 300, 1: 100, 2: 200}, [])
    assert list(plan.create) == [1, 2, 3]
    assert all(events == BOTH for events in plan.create.values())
    assert plan.delete == [] and plan.present == {} and plan.dropped == frozenset()


def test_what_exists_is_kept_and_only_the_missing_event_is_created() -> None:
    plan = plan_sync({1: 100, 2: 200}, [sub("a", 100), sub("b", 100, METADATA_EVENT), sub("c", 200)])
    assert plan.present == {(1, STATUS_EVENT): "a", (1, METADATA_EVENT): "b", (2, STATUS_EVENT): "c"}
    assert plan.create == {2: [METADATA_EVENT]}
    assert plan.delete == []


def test_removed_streamers_duplicates_and_other_versions_are_deleted() -> None:
    remote = [
        sub("keep", 100),
        sub("dup", 100),  # a second subscription of the same pair (a retried POST)
        sub("gone", 999),  # a user id nobody monitors any more
        sub("gone-meta", 999, METADATA_EVENT),
        sub("v2", 100, METADATA_EVENT, version=2),  # our event, another version
        sub("nobody", None),
    ]
    plan = plan_sync({1: 100}, remote)
    assert plan.present == {(1, STATUS_EVENT): "keep"}
    assert sorted(plan.delete) == sorted(["dup", "gone", "gone-meta", "v2", "nobody"])
    assert plan.create == {1: [METADATA_EVENT]}


def test_events_we_do_not_manage_are_never_touched() -> None:
    remote = [sub("chat", 999, "chat.message.sent"), sub("follow", 100, "channel.followed"),
              sub("other-method", 999, STATUS_EVENT, method="websocket")]
    plan = plan_sync({1: 100}, remote)
    assert plan.delete == []
    assert plan.create == {1: BOTH}


def test_recorded_subscriptions_missing_from_kick_were_dropped_by_kick() -> None:
    recorded = {
        (1, STATUS_EVENT): Recorded("a", SUBSCRIBED),
        (1, METADATA_EVENT): Recorded("b", SUBSCRIBED),
        (2, STATUS_EVENT): Recorded(None, FAILED, "limit"),  # never made: not "dropped"
        (3, STATUS_EVENT): Recorded("z", SUBSCRIBED),  # streamer removed: not wanted, not "dropped"
    }
    plan = plan_sync({1: 100, 2: 200}, [sub("a", 100)], recorded)
    assert plan.dropped == frozenset({(1, METADATA_EVENT)})
    assert plan.create == {1: [METADATA_EVENT], 2: BOTH}


def test_a_user_id_that_changed_moves_the_subscription() -> None:
    plan = plan_sync({1: 101}, [sub("old", 100), sub("old-meta", 100, METADATA_EVENT)])
    assert sorted(plan.delete) == ["old", "old-meta"]
    assert plan.create == {1: BOTH}


def test_fingerprint_changes_with_the_list_only() -> None:
    assert fingerprint({1: 100, 2: 200}) == fingerprint({2: 200, 1: 100})
    assert fingerprint({1: 100}) != fingerprint({1: 101})
    assert fingerprint({1: 100}) != fingerprint({1: 100, 2: 200})
    assert len(fingerprint({})) == 32


def test_limit_message_and_result_texts() -> None:
    result = SyncResult(subscribed=1900, created=100, recreated=40, deleted=7, failed=60, streamers=1000,
                        left_without=30, limit_reached=True)
    assert result.outcome == "limit_reached"
    assert result.summary() == "1900 subscribed (100 created, 40 of them re-created), 7 deleted, 60 failed"
    message = result.limit_message()
    assert "limit is reached: 30 of 1000 streamers are left without webhooks" in message
    assert "Pusher and reconciliation" in message and "\n" not in message
    assert error_kinds(result) == ["limit"]
    assert SyncResult(subscribed=4).outcome == "ok" and error_kinds(SyncResult()) == []
    assert SyncResult(complete=False, missing=2).outcome == "partial"
    assert error_kinds(SyncResult(complete=False, missing=2, refused=1)) == ["refused", "incomplete"]


def test_limit_messages_are_told_from_rate_limits() -> None:
    assert is_limit_message("event subscription limit reached; Bad request")
    assert is_limit_message("Event Subscription Limit Reached")
    assert not is_limit_message("broadcaster not found; Bad request")
    assert not is_limit_message("still rate limited after 4 tries")
    assert not is_limit_message("Too Many Requests (limit 690/min)")


def test_the_switch_follows_the_receiver_when_auto() -> None:
    settings = load_settings(environ={})
    assert settings.webhook_subscribe == "auto"
    assert receiver_address(settings) == ("127.0.0.1", 0, "/webhooks/kick")
    assert sync_wanted(settings) == (False, "auto: no webhook receiver on this host (KICK_MONITOR_WEBHOOK_PORT=0)")
    on = load_settings(environ={"KICK_MONITOR_WEBHOOK_SUBSCRIBE": "on"})
    assert sync_wanted(on) == (True, "KICK_MONITOR_WEBHOOK_SUBSCRIBE=on")
    assert sync_wanted(load_settings(environ={"KICK_MONITOR_WEBHOOK_SUBSCRIBE": "off"}))[0] is False
    if "webhook_port" in Settings.model_fields:  # the receiver's settings, once merged
        with_receiver = load_settings(environ={"KICK_MONITOR_WEBHOOK_PORT": "8443"})
        assert sync_wanted(with_receiver)[0] is True and receiver_address(with_receiver)[1] == 8443


def answer(status: int, body: bytes) -> requests.Response:
    resp = requests.Response()
    resp.status_code, resp._content = status, body
    return resp


def test_the_reason_of_a_refusal_is_read_from_data_or_message() -> None:
    limit = answer(400, b'{"data": "event subscription limit reached", "message": "Bad request"}')
    assert _refusal(limit) == "event subscription limit reached; Bad request"
    assert is_limit_message(_refusal(limit))
    assert _refusal(answer(400, b'{"data": {}, "message": "Invalid request"}')) == "Invalid request"
    assert _refusal(answer(400, b"<html>nope</html>")) == "no reason given"
    assert _refusal(answer(403, rb'{"message": "bad\u001b[31m"}')) == "no reason given"
    assert len(_refusal(answer(400, b'{"message": "' + b"x" * 500 + b'"}'))) == 200
