"""Lifecycle events: exact Kick shapes, channel routing, ids, and the truth log vs. the wire."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kick_sim import SimConfig, SimStreamer, Simulator
from tests.sim import connect, lifecycle_frames_until_pong, recv_json, subscribe

KICK_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000000Z")


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(lifecycle_channels="both", seed=3)) as simulator:
        yield simulator


def _subscribe_both(ws: object, streamer: SimStreamer) -> None:
    for channel in (f"channel.{streamer.channel_id}", f"channel_{streamer.channel_id}"):
        assert subscribe(ws, channel)["event"] == "pusher_internal:subscription_succeeded"  # type: ignore[arg-type]


def test_streamer_is_live_frame_shape(sim: Simulator) -> None:
    (streamer,) = sim.create_streamers(1, prefix="shape_live")
    ws = connect(sim.pusher_url)
    try:
        subscribe(ws, f"channel.{streamer.channel_id}")
        transition = sim.set_live(streamer.slug, True, title="4HEAD | NOPIXEL 4.0 | TTS")
        frame = recv_json(ws)
    finally:
        ws.close()
    assert list(frame) == ["event", "data", "channel"]
    assert frame["event"] == "App\\Events\\StreamerIsLive"
    assert frame["channel"] == f"channel.{streamer.channel_id}"
    assert isinstance(frame["data"], str)
    data = json.loads(frame["data"])
    assert list(data) == ["livestream"]
    livestream = data["livestream"]
    assert list(livestream) == ["id", "channel_id", "session_title", "source", "created_at"]
    assert livestream["id"] == transition.livestream_id
    assert livestream["channel_id"] == streamer.channel_id
    assert livestream["session_title"] == "4HEAD | NOPIXEL 4.0 | TTS"
    assert livestream["source"] is None
    assert KICK_TIME.fullmatch(livestream["created_at"])


def test_stop_stream_broadcast_frame_shape(sim: Simulator) -> None:
    (streamer,) = sim.create_streamers(1, prefix="shape_stop")
    live = sim.set_live(streamer.slug, True)
    ws = connect(sim.pusher_url)
    try:
        subscribe(ws, f"channel.{streamer.channel_id}")
        offline = sim.set_live(streamer.slug, False)
        frame = recv_json(ws)
    finally:
        ws.close()
    assert frame["event"] == "App\\Events\\StopStreamBroadcast"
    assert json.loads(frame["data"]) == {
        "livestream": {"id": live.livestream_id, "channel": {"id": streamer.channel_id, "is_banned": False}}
    }
    assert (offline.status, offline.previous_status, offline.livestream_id) == ("offline", "online", live.livestream_id)


def test_livestream_updated_frame_shape(sim: Simulator) -> None:
    (streamer,) = sim.create_streamers(1, prefix="shape_title")
    live = sim.set_live(streamer.slug, True, title="before")
    ws = connect(sim.pusher_url)
    try:
        subscribe(ws, f"channel.{streamer.channel_id}")
        update = sim.update_title(streamer.slug, "after 🌟")
        frame = recv_json(ws)
    finally:
        ws.close()
    assert frame["event"] == "App\\Events\\LivestreamUpdated"
    livestream = json.loads(frame["data"])["livestream"]
    assert livestream["id"] == live.livestream_id
    assert livestream["channel_id"] == streamer.channel_id
    assert livestream["session_title"] == "after 🌟"
    assert livestream["is_live"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", livestream["created_at"])
    assert {"slug", "viewer_count", "categories", "language", "is_mature"} <= set(livestream)
    assert (update.status, update.previous_status, update.title) == ("online", "online", "after 🌟")
    sim.set_live(streamer.slug, False)
    with pytest.raises(ValueError, match="offline"):
        sim.update_title(streamer.slug, "nobody is live")


@pytest.mark.parametrize(
    ("mode", "expected"), [("dot", ["channel."]), ("underscore", ["channel_"]), ("both", ["channel.", "channel_"])]
)
def test_lifecycle_channels_setting(mode: str, expected: list[str]) -> None:
    with Simulator(SimConfig(lifecycle_channels=mode)) as sim:  # type: ignore[arg-type]
        (streamer,) = sim.create_streamers(1)
        ws = connect(sim.pusher_url)
        try:
            _subscribe_both(ws, streamer)
            transition = sim.set_live(streamer.slug, True)
            frames = lifecycle_frames_until_pong(ws)
        finally:
            ws.close()
    wanted = [f"{prefix}{streamer.channel_id}" for prefix in expected]
    assert [frame["channel"] for frame in frames] == wanted  # once on each configured channel
    assert {frame["event"] for frame in frames} == {"App\\Events\\StreamerIsLive"}
    assert transition.channels == tuple(wanted)
    assert transition.delivered


def test_only_subscribers_receive(sim: Simulator) -> None:
    first, second = sim.create_streamers(2, prefix="only_subs")
    ws = connect(sim.pusher_url)
    try:
        _subscribe_both(ws, first)
        sim.set_live(second.slug, True)
        assert lifecycle_frames_until_pong(ws) == []
        sim.set_live(first.slug, True)
        assert len(lifecycle_frames_until_pong(ws)) == 2
    finally:
        ws.close()


def test_missed_event_changes_rest_truth_without_a_frame(sim: Simulator) -> None:
    (streamer,) = sim.create_streamers(1, prefix="missed")
    ws = connect(sim.pusher_url)
    try:
        _subscribe_both(ws, streamer)
        transition = sim.set_live(streamer.slug, True, send_event=False)
        assert lifecycle_frames_until_pong(ws) == []
    finally:
        ws.close()
    assert sim.is_live(streamer.slug)
    assert (transition.delivered, transition.channels, transition.status) == (False, (), "online")


def test_each_go_live_has_a_new_livestream_id(sim: Simulator) -> None:
    (streamer,) = sim.create_streamers(1, prefix="relive")
    ids = []
    for _ in range(3):
        ids.append(sim.set_live(streamer.slug, True).livestream_id)
        assert sim.set_live(streamer.slug, False).livestream_id == ids[-1]
    assert len(set(ids)) == 3


def test_set_live_rejects_no_change_and_unknown_slug(sim: Simulator) -> None:
    (streamer,) = sim.create_streamers(1, prefix="nochange")
    with pytest.raises(ValueError, match="already offline"):
        sim.set_live(streamer.slug, False)
    with pytest.raises(ValueError, match="unknown"):
        sim.set_live("no_such_streamer", True)


def test_ids_are_distinct_realistic_and_slugs_clean(sim: Simulator) -> None:
    streamers = sim.create_streamers(2000, prefix="ids")
    all_ids = [n for s in streamers for n in (s.channel_id, s.user_id, s.chatroom_id)]
    assert len(set(all_ids)) == len(all_ids)  # distinct within and across streamers
    assert all(1_000_000 <= n < 90_000_000 for n in all_ids)
    assert all(re.fullmatch(r"[a-z0-9_]+", s.slug) for s in streamers)
    assert len({s.slug for s in streamers}) == 2000


def test_initial_live_fraction_is_not_a_transition() -> None:
    with Simulator(SimConfig(seed=11)) as sim:
        streamers = sim.create_streamers(200, live_fraction=0.3)
        live = [s for s in streamers if sim.is_live(s.slug)]
        assert 30 < len(live) < 90
        assert sim.truth() == []


def test_truth_export_matches_frames_received(tmp_path: Path) -> None:
    with Simulator(SimConfig(seed=5)) as sim:
        streamers = sim.create_streamers(5)
        ws = connect(sim.pusher_url)
        try:
            for streamer in streamers:
                _subscribe_both(ws, streamer)
            sim.start_flipping(rate=300.0, duration=0.3, burst=3, missed_fraction=0.2)
            assert sim.wait_flipping_done(timeout=5)
            frames = lifecycle_frames_until_pong(ws)
        finally:
            ws.close()
        count = sim.export_truth(str(tmp_path / "truth.jsonl"))
        truth = sim.truth()
    rows = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert count == len(rows) == len(truth) > 20
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    assert rows == [t.to_json() for t in truth]
    assert any(not row["delivered"] for row in rows) and any(row["delivered"] for row in rows)
    expected = Counter(
        (row["event"], row["livestream_id"], channel) for row in rows if row["delivered"] for channel in row["channels"]
    )
    received = Counter(
        (f["event"], json.loads(f["data"])["livestream"]["id"], f["channel"]) for f in frames
    )
    assert received == expected
    # flips alternate per streamer: each streamer's statuses chain previous -> status
    for streamer in streamers:
        mine = [row for row in rows if row["slug"] == streamer.slug]
        for before, after in itertools.pairwise(mine):
            assert after["previous_status"] == before["status"] != after["status"]
    assert all(row["sent_mono"] <= later["sent_mono"] for row, later in itertools.pairwise(rows))
