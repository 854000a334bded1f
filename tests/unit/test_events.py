"""Frame parsing and status tracking on real Kick payloads, malformed input and dedup."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from kick_monitor.events import (
    LIFECYCLE_EVENTS,
    LIVESTREAM_ENDED,
    LIVESTREAM_UPDATED,
    MAX_COUNTED_NAMES,
    MAX_ID,
    OTHER,
    STOP_STREAM_BROADCAST,
    STREAMER_IS_LIVE,
    AppEvent,
    EventStats,
    StatusTracker,
    TitleUpdate,
    channel_id_of,
    channel_names,
    parse_frame,
)
from kick_monitor.messages import Status, StatusChange, StreamerRef
from kick_sim.data import DATA_DIR

pytestmark = pytest.mark.timeout(30)

SHARED = DATA_DIR  # real captured Kick traffic, shipped with the package
CHAT = "App\\Events\\ChatMessageEvent"
T0 = 1_757_866_279.385  # 2025-09-14T16:11:19.385Z, when the capture received the live event


def ref(
    channel_id: int, status: Status = "unknown", livestream: int | None = None
) -> StreamerRef:
    return StreamerRef(
        channel_id, f"s{channel_id}", channel_id, None, status, livestream
    )


def frame(event: str, channel: str | None, data: object) -> bytes:
    """A frame as Kick sends it: `data` JSON-encoded a second time unless already a str."""
    payload = data if isinstance(data, str) else orjson.dumps(data).decode()
    body: dict[str, Any] = {"event": event, "data": payload}
    if channel is not None:
        body["channel"] = channel
    return orjson.dumps(body)


def feed(
    tracker: StatusTracker, raw: bytes | str, at: float = T0
) -> StatusChange | TitleUpdate | None:
    """The worker's path: parse the outer frame, then apply it."""
    ev = parse_frame(raw, received_at=at, received_mono=at - T0, stats=tracker.stats)
    return None if ev is None else tracker.apply(ev)


def live_data(livestream: int, channel_id: int, title: str = "t") -> dict[str, Any]:
    return {
        "livestream": {
            "id": livestream,
            "channel_id": channel_id,
            "session_title": title,
            "source": None,
            "created_at": "2025-09-14T16:11:18.000000Z",
        }
    }


def stop_data(livestream: int, channel_id: int) -> dict[str, Any]:
    return {
        "livestream": {
            "id": livestream,
            "channel": {"id": channel_id, "is_banned": False},
        }
    }


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- real payloads -----------------------------------------------------------------------

SAMPLES = json.loads((SHARED / "lifecycle-samples.json").read_text())


@pytest.mark.parametrize(
    "sample", SAMPLES[STREAMER_IS_LIVE], ids=lambda s: s["channel"]
)
def test_streamer_is_live_samples(sample: dict[str, Any]) -> None:
    stream = sample["data"]["livestream"]
    tracker = StatusTracker([ref(stream["channel_id"], "offline")], shard=3)
    change = feed(tracker, frame(STREAMER_IS_LIVE, sample["channel"], sample["data"]))
    assert isinstance(change, StatusChange)
    assert (change.channel_id, change.status, change.livestream_id) == (
        stream["channel_id"],
        "online",
        stream["id"],
    )
    assert change.title == stream["session_title"]
    assert change.occurred_at == epoch(stream["created_at"].replace("Z", ""))
    assert (change.source, change.event, change.shard) == (
        "pusher",
        STREAMER_IS_LIVE,
        3,
    )
    assert (change.received_at, change.received_mono) == (T0, 0.0)


@pytest.mark.parametrize(
    "sample", SAMPLES[STOP_STREAM_BROADCAST], ids=lambda s: s["channel"]
)
def test_stop_stream_broadcast_samples(sample: dict[str, Any]) -> None:
    stream = sample["data"]["livestream"]
    channel_id = stream["channel"]["id"]
    tracker = StatusTracker([ref(channel_id, "online", stream["id"])])
    change = feed(
        tracker, frame(STOP_STREAM_BROADCAST, sample["channel"], sample["data"])
    )
    assert isinstance(change, StatusChange)
    assert (change.channel_id, change.status, change.livestream_id) == (
        channel_id,
        "offline",
        stream["id"],
    )
    assert change.occurred_at is None and change.title is None


def test_livestream_updated_sample() -> None:
    (sample,) = SAMPLES[LIVESTREAM_UPDATED]
    stream = sample["data"]["livestream"]
    tracker = StatusTracker([ref(stream["channel_id"], "offline")])
    # Captured on a private channel a service cannot subscribe to: not ours.
    assert (
        feed(tracker, frame(LIVESTREAM_UPDATED, sample["channel"], sample["data"]))
        is None
    )
    assert tracker.stats.unknown_channel == 1
    # The same payload on the public channel is an online change with its naive-UTC time.
    change = feed(tracker, frame(LIVESTREAM_UPDATED, "channel.92723", sample["data"]))
    assert isinstance(change, StatusChange)
    assert (change.status, change.livestream_id, change.title) == (
        "online",
        6348948,
        stream["session_title"],
    )
    assert change.occurred_at == epoch("2023-06-28T20:48:51")


def test_data_as_object_is_accepted() -> None:
    tracker = StatusTracker([ref(668, "offline")])
    raw = orjson.dumps(
        {"event": STREAMER_IS_LIVE, "channel": "channel.668", "data": live_data(5, 668)}
    )
    change = feed(tracker, raw)
    assert isinstance(change, StatusChange) and change.livestream_id == 5


def captured() -> list[bytes]:
    with (SHARED / "captured-frames.jsonl").open("rb") as lines:
        return [orjson.dumps(orjson.loads(line)["frame"]) for line in lines]


@pytest.mark.parametrize("wanted", [None, LIFECYCLE_EVENTS])
def test_replay_capture_yields_exactly_the_real_live_event(
    wanted: frozenset[str] | None,
) -> None:
    frames = captured()
    assert len(frames) == 742
    goal_channels = {
        int(f["channel"][len("channel_") :])
        for f in map(orjson.loads, frames)
        if f["channel"].startswith("channel_")
    }
    tracker = StatusTracker([ref(2587387), *map(ref, goal_channels)])
    changes = []
    for raw in frames:
        ev = parse_frame(
            raw,
            received_at=T0,
            received_mono=0.0,
            stats=tracker.stats,
            wanted=wanted,
        )
        result = tracker.apply(ev) if ev is not None else None
        if result is not None:
            changes.append(result)
    assert len(changes) == 1
    (change,) = changes
    assert isinstance(change, StatusChange)
    assert (change.channel_id, change.livestream_id, change.status) == (
        2587387,
        74265904,
        "online",
    )
    assert change.title == "4HEAD | NOPIXEL 4.0 | TTS"
    assert change.occurred_at == epoch("2025-09-14T16:11:18")
    stats = tracker.stats
    assert stats.malformed == {} and stats.unknown_channel == 0
    assert stats.ignored == {
        CHAT: 722,
        "GoalProgressUpdateEvent": 16,
        "App\\Events\\MessageDeletedEvent": 2,
        "App\\Events\\UserUnbannedEvent": 1,
    }


def test_replay_with_no_known_channel_counts_unknown() -> None:
    tracker = StatusTracker([])
    assert all(feed(tracker, raw) is None for raw in captured())
    assert tracker.stats.unknown_channel == 1


# -- de-duplication ----------------------------------------------------------------------


def test_dot_and_underscore_channels_yield_one_change() -> None:
    tracker = StatusTracker([ref(7, "offline")])
    first = feed(tracker, frame(STREAMER_IS_LIVE, "channel.7", live_data(100, 7)))
    second = feed(
        tracker, frame(STREAMER_IS_LIVE, "channel_7", live_data(100, 7)), T0 + 0.001
    )
    assert isinstance(first, StatusChange) and second is None
    off1 = feed(tracker, frame(STOP_STREAM_BROADCAST, "channel_7", stop_data(100, 7)))
    off2 = feed(tracker, frame(STOP_STREAM_BROADCAST, "channel.7", stop_data(100, 7)))
    assert isinstance(off1, StatusChange) and off1.status == "offline" and off2 is None
    assert tracker.stats.duplicates == 2 and tracker.stats.changes == 2


def test_ended_livestream_does_not_come_back() -> None:
    tracker = StatusTracker([ref(7, "online", 100)])
    assert feed(tracker, frame(STOP_STREAM_BROADCAST, "channel.7", stop_data(100, 7)))
    # A late duplicate of the go-live for the stream that just ended is stale.
    assert (
        feed(tracker, frame(STREAMER_IS_LIVE, "channel_7", live_data(100, 7))) is None
    )
    assert tracker.stats.stale == 1
    assert tracker.status(7) == ("offline", 100)
    # The next broadcast has a new livestream id and is a change.
    change = feed(tracker, frame(STREAMER_IS_LIVE, "channel.7", live_data(101, 7)))
    assert isinstance(change, StatusChange) and change.livestream_id == 101


def test_new_livestream_while_online_is_a_change() -> None:
    """We missed the offline of 100: 101 is a new broadcast, recorded as such."""
    tracker = StatusTracker([ref(7, "online", 100)])
    change = feed(tracker, frame(STREAMER_IS_LIVE, "channel.7", live_data(101, 7)))
    assert isinstance(change, StatusChange) and change.livestream_id == 101
    assert tracker.status(7) == ("online", 101)


def test_online_with_unknown_livestream_learns_the_id() -> None:
    tracker = StatusTracker([ref(7, "online", None)])
    change = feed(tracker, frame(STREAMER_IS_LIVE, "channel.7", live_data(100, 7)))
    assert isinstance(change, StatusChange) and tracker.status(7) == ("online", 100)


def test_livestream_updated_is_a_title_update_when_already_online() -> None:
    tracker = StatusTracker([ref(7, "offline")])
    assert isinstance(
        feed(tracker, frame(STREAMER_IS_LIVE, "channel.7", live_data(100, 7, "old"))),
        StatusChange,
    )
    update = feed(
        tracker, frame(LIVESTREAM_UPDATED, "channel.7", live_data(100, 7, "new"))
    )
    assert isinstance(update, TitleUpdate)
    assert (update.change.status, update.change.title, update.change.event) == (
        "online",
        "new",
        LIVESTREAM_UPDATED,
    )
    # Same title again (e.g. on channel_7): nothing new.
    assert (
        feed(tracker, frame(LIVESTREAM_UPDATED, "channel_7", live_data(100, 7, "new")))
        is None
    )
    assert tracker.stats.title_updates == 1


def test_livestream_updated_when_not_known_online_is_a_change() -> None:
    tracker = StatusTracker([ref(7, "unknown")])
    data = live_data(100, 7)
    change = feed(tracker, frame(LIVESTREAM_UPDATED, "channel.7", data))
    assert isinstance(change, StatusChange) and change.status == "online"
    data["livestream"]["is_live"] = False
    tracker2 = StatusTracker([ref(7, "offline")])
    assert feed(tracker2, frame(LIVESTREAM_UPDATED, "channel.7", data)) is None
    assert tracker2.status(7) == ("offline", None)


@pytest.mark.parametrize(
    "data",
    [
        {"livestream": {"id": 100, "channel_id": 7}},
        {"livestream": {"id": 100, "channel": {"id": 7}}},
        {"livestream": {"id": 100}},
        {},
    ],
)
def test_unverified_offline_events_take_ids_from_payload_or_channel(
    data: dict[str, Any],
) -> None:
    tracker = StatusTracker([ref(7, "online", 100)])
    change = feed(tracker, frame(LIVESTREAM_ENDED, "channel_7", data))
    assert isinstance(change, StatusChange)
    assert (change.channel_id, change.status) == (7, "offline")
    assert change.livestream_id == data.get("livestream", {}).get("id")


def test_change_ids_are_unique_and_fixed() -> None:
    tracker = StatusTracker([ref(1, "offline"), ref(2, "offline")], shard=5)
    changes = [
        feed(tracker, frame(STREAMER_IS_LIVE, f"channel.{c}", live_data(10 + c, c)))
        for c in (1, 2)
    ]
    changes += [
        feed(tracker, frame(STOP_STREAM_BROADCAST, "channel.1", stop_data(11, 1)))
    ]
    ids = [c.change_id for c in changes if isinstance(c, StatusChange)]
    assert len(set(ids)) == 3  # same received_at for all three, still unique
    ns = int(T0 * 1e9)
    assert ids == [
        f"p:1:online:11:{ns}",
        f"p:2:online:12:{ns + 1}",
        f"p:1:offline:11:{ns + 2}",
    ]


def test_changes_carry_their_assignment_generation_and_a_growing_seq() -> None:
    """The writer orders by (generation, seq): a wall clock stepped back must not reorder them."""
    tracker = StatusTracker([ref(1, "offline"), replace(ref(2, "offline"), generation=41)])
    tracker.add([replace(ref(3, "offline"), generation=42)])
    changes = [
        feed(tracker, frame(STREAMER_IS_LIVE, "channel.1", live_data(11, 1)), at=T0),
        feed(tracker, frame(STREAMER_IS_LIVE, "channel.2", live_data(12, 2)), at=T0 - 30),
        feed(tracker, frame(STOP_STREAM_BROADCAST, "channel.2", stop_data(12, 2)), at=T0 - 60),
        tracker.set_status(3, "online", 13, received_at=T0 - 90, received_mono=1.0),
        tracker.confirm(2, received_at=T0 - 120, received_mono=1.0),
    ]
    made = [c for c in changes if isinstance(c, StatusChange)]
    assert [c.generation for c in made] == [0, 41, 41, 42, 41]
    seqs = [c.seq for c in made]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > 0


def test_set_status_for_the_reconciler() -> None:
    tracker = StatusTracker([ref(7, "offline")], shard=2)
    change = tracker.set_status(
        7, "online", 100, title="x", received_at=T0, received_mono=1.0
    )
    assert change is not None
    assert (change.source, change.status, change.livestream_id, change.shard) == (
        "api",
        "online",
        100,
        2,
    )
    assert change.change_id.startswith("a:7:online:100:")
    # The socket's event for the same stream is then a duplicate; so is the API repeating.
    assert (
        feed(tracker, frame(STREAMER_IS_LIVE, "channel.7", live_data(100, 7))) is None
    )
    assert (
        tracker.set_status(7, "online", 100, received_at=T0, received_mono=1.0) is None
    )
    assert (
        tracker.set_status(99, "online", 1, received_at=T0, received_mono=1.0) is None
    )
    off = tracker.set_status(7, "offline", None, received_at=T0, received_mono=1.0)
    assert off is not None and off.change_id.startswith("a:7:offline:-:")
    # An API answer still showing the ended stream live is stale.
    assert (
        tracker.set_status(7, "online", 100, received_at=T0, received_mono=1.0) is None
    )


def test_api_verdicts_carry_when_the_question_was_asked_and_frames_do_not() -> None:
    """The writer drops a verdict asked before a webhook changed the row (change_plan.is_stale)."""
    tracker = StatusTracker([ref(7, "offline"), ref(8, "online", 80)])
    verdict = tracker.set_status(7, "online", 100, received_at=T0, received_mono=1.0, asked_at=T0 - 0.4)
    confirmation = tracker.confirm(8, received_at=T0, received_mono=1.0, asked_at=T0 - 0.4)
    assert verdict is not None and confirmation is not None
    assert (verdict.asked_at, confirmation.asked_at) == (T0 - 0.4, T0 - 0.4)
    frame_change = feed(tracker, frame(STOP_STREAM_BROADCAST, "channel.7", stop_data(100, 7)), at=T0)
    assert isinstance(frame_change, StatusChange) and frame_change.asked_at is None


def test_add_and_remove_at_runtime() -> None:
    tracker = StatusTracker([ref(1)])
    assert tracker.add([ref(2, "online", 5), ref(1, "online", 9)]) == [
        "channel.2",
        "channel_2",
    ]
    assert tracker.status(1) == ("unknown", None)  # known channels keep their state
    assert tracker.status(2) == ("online", 5)
    assert sorted(tracker.channel_names()) == [
        "channel.1",
        "channel.2",
        "channel_1",
        "channel_2",
    ]
    assert tracker.remove([1, 3]) == ["channel.1", "channel_1"]
    assert 1 not in tracker and len(tracker) == 1
    assert feed(tracker, frame(STREAMER_IS_LIVE, "channel.1", live_data(1, 1))) is None
    assert tracker.stats.unknown_channel == 1


# -- noise, unknown channels, malformed input ----------------------------------------------


def test_noise_is_ignored_without_decoding_data() -> None:
    tracker = StatusTracker([ref(7)])
    assert feed(tracker, frame(CHAT, "channel.7", "{not json")) is None
    assert feed(tracker, frame("pusher:pong", None, "{not json")) is None
    assert tracker.stats.malformed == {}
    assert tracker.stats.ignored == {CHAT: 1, "pusher:pong": 1}


def test_wanted_filter_drops_noise_before_building_events() -> None:
    stats = EventStats()
    kwargs: dict[str, Any] = {"received_at": T0, "received_mono": 0.0, "stats": stats}
    assert parse_frame(frame(CHAT, "c", "x"), wanted=LIFECYCLE_EVENTS, **kwargs) is None
    ev = parse_frame(
        frame("pusher:ping", None, "{}"), wanted=LIFECYCLE_EVENTS, **kwargs
    )
    assert isinstance(ev, AppEvent) and ev.event == "pusher:ping"
    ev = parse_frame(
        frame(STREAMER_IS_LIVE, "c", "x"), wanted=LIFECYCLE_EVENTS, **kwargs
    )
    assert isinstance(ev, AppEvent) and ev.data == "x" and ev.raw_size > 0
    assert stats.ignored == {CHAT: 1}


def test_unknown_channel_is_counted_before_decoding() -> None:
    tracker = StatusTracker([ref(7)])
    for channel in ("channel.8", "channel_8", "chatrooms.7.v2", None):
        assert feed(tracker, frame(STREAMER_IS_LIVE, channel, "{garbage")) is None
    assert tracker.stats.unknown_channel == 4 and tracker.stats.malformed == {}


def test_only_the_exact_names_of_a_tracked_channel_reach_it() -> None:
    """The tracker maps an event's channel name back to the channel id (it keeps no name strings):
    every other spelling of the same number is a stranger, as when names were looked up verbatim."""
    tracker = StatusTracker([ref(7)])
    for channel in ("channel.07", "channel.+7", "channel. 7", "channel.7 ", "channel.\u0667", "channel.7_",
                    "channel-7", "Channel.7", "channel.", "channel_", "channel.7.v2", "channel." + "7" * 5000):
        assert feed(tracker, frame(STREAMER_IS_LIVE, channel, live_data(1, 7))) is None, channel
    assert tracker.stats.unknown_channel == 12 and tracker.stats.changes == 0
    assert isinstance(feed(tracker, frame(STREAMER_IS_LIVE, "channel_7", live_data(1, 7))), StatusChange)


def test_channel_id_of_inverts_channel_names() -> None:
    for channel_id in (1, 7, 10, 60211040, MAX_ID):
        assert [channel_id_of(name) for name in channel_names(channel_id)] == [channel_id, channel_id]
    for name in ("channel.0", "channel.012", "channel.1e3", "channel.-1", "channel.1_000", "chatrooms.7.v2",
                 "channel.\u0661", "channel." + str(MAX_ID) + "0", ""):
        assert channel_id_of(name) is None, name


def test_a_new_channel_id_moves_both_names() -> None:
    tracker = StatusTracker([ref(7)])
    assert tracker.add([StreamerRef(7, "s7", 70, None)]) == ["channel.70", "channel_70"]
    assert sorted(tracker.channel_names()) == ["channel.70", "channel_70"]
    assert feed(tracker, frame(STREAMER_IS_LIVE, "channel.7", live_data(1, 7))) is None
    change = feed(tracker, frame(STREAMER_IS_LIVE, "channel_70", live_data(1, 70)))
    assert isinstance(change, StatusChange) and (change.streamer_id, change.channel_id) == (7, 70)


LIVE = STREAMER_IS_LIVE
MALFORMED: list[tuple[str, bytes | str]] = [
    ("bad_json", b"not json"),
    ("bad_json", b'{"event":"x","data":"'),
    ("invalid_utf8", b'{"event":"\xff\xfe","data":"{}"}'),
    ("invalid_utf8", '{"event":"\ud800","data":"{}"}'),
    ("invalid_utf8", b'{"event":"x\\ud800","data":"{}"}'),
    ("bad_frame", b'["an","array"]'),
    ("bad_frame", b'{"data":"{}","channel":"channel.7"}'),
    ("bad_frame", b'{"event":42,"channel":"channel.7"}'),
    ("bad_frame", b'{"event":"x","channel":["channel.7"]}'),
    ("bad_json", b"[" * 5000),  # deeper than orjson nests
    ("bad_data_json", frame(LIVE, "channel.7", '{"livestream":{"id":1')),
    ("invalid_utf8", frame(LIVE, "channel.7", '"\\udc80"')),
    ("bad_type", frame(LIVE, "channel.7", "[1,2]")),
    (
        "bad_type",
        b'{"event":"'
        + LIVE.replace("\\", "\\\\").encode()
        + b'","channel":"channel.7","data":5}',
    ),
    ("bad_type", frame(LIVE, "channel.7", {"livestream": "74265904"})),
    (
        "bad_type",
        frame(LIVE, "channel.7", {"livestream": {"id": True, "channel_id": 7}}),
    ),
    (
        "bad_type",
        frame(LIVE, "channel.7", {"livestream": {"id": 1.0, "channel_id": 7}}),
    ),
    (
        "bad_type",
        frame(LIVE, "channel.7", {"livestream": {"id": "1", "channel_id": 7}}),
    ),
    ("bad_type", frame(LIVE, "channel.7", {"livestream": {"id": -1, "channel_id": 7}})),
    (
        "bad_type",
        frame(LIVE, "channel.7", {"livestream": {"id": 1 << 63, "channel_id": 7}}),
    ),
    (
        "bad_type",
        frame(LIVE, "channel.7", {"livestream": {"id": 1, "channel_id": True}}),
    ),
    (
        "bad_type",
        frame(
            STOP_STREAM_BROADCAST,
            "channel.7",
            {"livestream": {"id": 1, "channel": "7"}},
        ),
    ),
    ("missing_field", frame(LIVE, "channel.7", {})),
    ("missing_field", frame(LIVE, "channel.7", {"livestream": {"channel_id": 7}})),
    ("missing_field", frame(LIVE, "channel.7", {"livestream": {"id": 1}})),
    (
        "missing_field",
        frame(
            STOP_STREAM_BROADCAST, "channel.7", {"livestream": {"id": 1, "channel": {}}}
        ),
    ),
    ("channel_mismatch", frame(LIVE, "channel.7", live_data(1, 8))),
    ("channel_mismatch", frame(STOP_STREAM_BROADCAST, "channel_7", stop_data(1, 8))),
    (
        "channel_mismatch",
        frame(
            LIVE,
            "channel.7",
            {"livestream": {"id": 1, "channel_id": 7, "channel": {"id": 8}}},
        ),
    ),
]


@pytest.mark.parametrize(("kind", "raw"), MALFORMED)
def test_malformed_frames_are_counted_by_kind_and_never_raise(
    kind: str, raw: bytes | str
) -> None:
    tracker = StatusTracker([ref(7, "offline")])
    assert feed(tracker, raw) is None
    assert tracker.stats.malformed == {kind: 1}
    assert tracker.status(7) == ("offline", None)


def test_oversize_frame_is_counted_before_parsing() -> None:
    stats = EventStats()
    raw = frame(CHAT, "channel.7", "x" * 2000)
    kwargs: dict[str, Any] = {"received_at": T0, "received_mono": 0.0, "stats": stats}
    assert parse_frame(raw, max_bytes=1000, **kwargs) is None
    assert parse_frame(raw, max_bytes=len(raw), **kwargs) is not None
    assert stats.malformed == {"oversize": 1}


def test_inner_lone_surrogate_in_str_data() -> None:
    tracker = StatusTracker([ref(7)])
    ev = AppEvent(LIVE, "channel.7", '{"livestream":"\ud800"}', 10, T0, 0.0)
    assert tracker.apply(ev) is None
    assert tracker.stats.malformed == {"invalid_utf8": 1}


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("session_title", 42, "bad_title"),
        ("created_at", "yesterday", "bad_timestamp"),
        ("created_at", 7, "bad_timestamp"),
    ],
)
def test_bad_optional_fields_still_give_the_change(
    field: str, value: object, kind: str
) -> None:
    tracker = StatusTracker([ref(7, "offline")])
    data = live_data(1, 7)
    data["livestream"][field] = value
    change = feed(tracker, frame(LIVE, "channel.7", data))
    assert isinstance(change, StatusChange) and change.status == "online"
    assert (
        getattr(change, "title" if field == "session_title" else "occurred_at") is None
    )
    assert tracker.stats.malformed == {kind: 1}


def test_each_malformed_kind_is_logged_once_with_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = StatusTracker([ref(7)], shard=4)
    with caplog.at_level(logging.WARNING, logger="kick_monitor.events"):
        for _ in range(3):
            feed(tracker, b"not json")
            feed(tracker, frame(LIVE, "channel.7", live_data(1, 8)))
    records = [r for r in caplog.records if r.name == "kick_monitor.events"]
    assert len(records) == 2
    by_kind = {r.__dict__["kind"]: r.__dict__ for r in records}  # `extra` fields
    assert set(by_kind) == {"bad_json", "channel_mismatch"}
    mismatch = by_kind["channel_mismatch"]
    assert (mismatch["shard"], mismatch["channel"], mismatch["event"]) == (
        4,
        "channel.7",
        LIVE,
    )
    assert tracker.stats.malformed == {"bad_json": 3, "channel_mismatch": 3}


def test_log_context_is_clipped(caplog: pytest.LogCaptureFixture) -> None:
    stats = EventStats()
    huge = "x" * 100_000
    with caplog.at_level(logging.WARNING, logger="kick_monitor.events"):
        stats.malformed_frame("k", channel=huge, event=huge, detail=huge)
    (record,) = caplog.records
    for name in ("channel", "event", "detail"):
        assert len(record.__dict__[name]) < 400


def test_ignored_names_are_bounded() -> None:
    tracker = StatusTracker([])
    for n in range(1000):
        feed(tracker, frame(f"App\\Events\\Noise{n}", "chatrooms.1.v2", "{}"))
    feed(tracker, frame("N" * 10_000, "chatrooms.1.v2", "{}"))
    ignored = tracker.stats.ignored
    assert len(ignored) == MAX_COUNTED_NAMES + 1
    assert sum(ignored.values()) == 1001
    assert ignored[OTHER] == 1001 - MAX_COUNTED_NAMES
    assert all(len(name) <= 120 for name in ignored)


def test_an_api_start_without_a_livestream_id_forgets_the_ended_broadcasts_id() -> None:
    """Soak r4: an offline(L) recorded, then the API (no livestream ids) reports a new broadcast. The
    tracker kept L as the open broadcast's id, so the next reconciliation's `confirm` sent online(L):
    the writer named the new broadcast L and recorded its end as an inferred end of L — L's end twice."""
    tracker = StatusTracker([ref(7, "online", 100)])
    end = feed(tracker, frame(STOP_STREAM_BROADCAST, "channel.7", stop_data(100, 7)))
    assert isinstance(end, StatusChange) and end.livestream_id == 100
    start = tracker.set_status(7, "online", None, received_at=T0 + 60, received_mono=60.0)
    assert start is not None and start.livestream_id is None
    assert tracker.status(7) == ("online", None)
    confirmation = tracker.confirm(7, received_at=T0 + 120, received_mono=120.0)
    assert confirmation is not None and confirmation.livestream_id is None
    late = live_data(100, 7)  # a late frame of the ended broadcast: still stale
    assert feed(tracker, frame(STREAMER_IS_LIVE, "channel.7", late), at=T0 + 130) is None
    assert tracker.status(7) == ("online", None)
    # the new broadcast's own frames still name it; the ended one's stay stale
    named = feed(tracker, frame(STOP_STREAM_BROADCAST, "channel.7", stop_data(101, 7)), at=T0 + 180)
    assert isinstance(named, StatusChange) and named.livestream_id == 101
    assert tracker.set_status(7, "online", 101, received_at=T0 + 190, received_mono=190.0) is None


def test_last_event_mono_is_each_streamers_last_valid_lifecycle_frame() -> None:
    """What the worker compares an API answer's question time with; duplicates count, noise and
    strangers do not, and a streamer removed and added again starts from none."""
    tracker = StatusTracker([ref(7), ref(8)])
    assert tracker.last_event_mono(7) == 0.0 and tracker.last_event_mono(99) == 0.0
    feed(tracker, frame(STREAMER_IS_LIVE, "channel.7", live_data(1, 7)), at=T0 + 1)
    feed(tracker, frame(STREAMER_IS_LIVE, "channel_7", live_data(1, 7)), at=T0 + 2)  # the duplicate
    feed(tracker, frame(CHAT, "channel.7", "{}"), at=T0 + 3)
    assert (tracker.last_event_mono(7), tracker.last_event_mono(8)) == (2.0, 0.0)
    tracker.remove([7])
    assert tracker.last_event_mono(7) == 0.0
    tracker.add([ref(7)])
    assert tracker.last_event_mono(7) == 0.0
