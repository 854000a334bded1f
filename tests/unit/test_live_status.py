"""Streamers without a channel id in the tracker, and the API diff that sees a missed broadcast."""

from __future__ import annotations

from typing import Any

from kick_monitor.events import StatusTracker
from kick_monitor.live_status import diff_by_streamer
from kick_monitor.messages import StreamerRef
from kick_monitor.reconcile import LiveInfo

T0 = 1_790_000_000.0


def live(started: float | None, livestream: int | None = None) -> LiveInfo:
    return LiveInfo(True, "t", livestream, started)


def test_a_streamer_without_channel_id_is_tracked_and_gets_names_later() -> None:
    tracker = StatusTracker([StreamerRef(5, "nochan", None, 77)])
    assert tracker.channel_names() == [] and 5 in tracker
    change = tracker.set_status(5, "online", None, occurred_at=T0, received_at=T0, received_mono=1.0)
    assert change is not None
    assert (change.streamer_id, change.channel_id, change.source) == (5, None, "api")
    assert change.change_id.startswith("a:5:online:-:")
    assert tracker.started_at(5) == T0
    # The resolver stored its channel id; the planner sends the streamer again.
    assert tracker.add([StreamerRef(5, "nochan", 668, 77)]) == ["channel.668", "channel_668"]
    assert tracker.status(5) == ("online", None)  # the state is kept
    assert tracker.add([StreamerRef(5, "nochan", 668, 77)]) == []
    assert tracker.remove([5]) == ["channel.668", "channel_668"]


def test_api_start_later_than_ours_is_a_new_broadcast_in_the_tracker() -> None:
    tracker = StatusTracker([StreamerRef(5, "s", None, 77, "online", None, started_at=T0)])
    again = tracker.set_status(5, "online", None, occurred_at=T0 + 600, received_at=T0 + 700, received_mono=2.0)
    assert again is not None and again.occurred_at == T0 + 600
    assert tracker.started_at(5) == T0 + 600


def test_diff_by_streamer() -> None:
    known: dict[int, Any] = {
        1: ("online", None, T0),        # same broadcast, start a little off
        2: ("online", None, T0),        # a later start: missed end + new start
        3: ("online", 11, T0),          # new livestream id
        4: ("offline", None, None),     # went live
        5: ("online", None, None),      # went offline
        6: ("online", None, None),      # no start known: cannot tell, no change
        7: ("offline", None, None),     # not in the answer: unknown, never offline
    }
    answer = {
        1: live(T0 + 20), 2: live(T0 + 500), 3: live(T0, 12), 4: live(T0),
        5: LiveInfo(False, None, None, None), 6: live(T0 + 999),
    }
    assert [sid for sid, _ in diff_by_streamer(known, answer, 60.0)] == [2, 3, 4, 5]


def test_an_end_with_another_livestream_id_when_offline_is_a_change() -> None:
    tracker = StatusTracker([StreamerRef(5, "s", None, 77, "offline", 11)])
    again = tracker.set_status(5, "offline", 11, received_at=T0, received_mono=1.0)
    assert again is None  # the end we know
    unseen = tracker.set_status(5, "offline", 12, received_at=T0, received_mono=1.0)
    assert unseen is not None and unseen.livestream_id == 12
    assert tracker.set_status(5, "offline", 12, received_at=T0, received_mono=1.0) is None
