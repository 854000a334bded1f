"""Rendezvous sharding: stable per streamer, balanced, and only the necessary moves on resize."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from kick_monitor.config import load_settings
from kick_monitor.messages import StreamerRef
from kick_monitor.sharding import (
    check_shard_selection,
    plan_shards,
    shard_count_for,
    shard_for,
    subscriptions_per_streamer,
    unresolved,
)


@dataclass(frozen=True)
class S:
    name: str
    channel_id: int | None
    kick_user_id: int | None = None
    row_id: int | None = None

    @property
    def streamer_id(self) -> int:
        return self.row_id if self.row_id is not None else self.channel_id or 0


def streamers(count: int, seed: int = 1) -> list[S]:
    ids = random.Random(seed).sample(range(1, 50_000_000), count)
    return [S(f"s{channel_id}", channel_id) for channel_id in ids]


def owner(plan: dict[int, list[S]]) -> dict[str, int]:
    return {s.name: shard for shard, members in plan.items() for s in members}


def test_same_input_same_plan_in_any_order() -> None:
    group = streamers(500)
    shuffled = group[:]
    random.Random(7).shuffle(shuffled)
    assert owner(plan_shards(group, 6)) == owner(plan_shards(shuffled, 6))


def test_known_values_never_change() -> None:
    """The hash is part of the contract: every host, process and release must agree on it."""
    assert [shard_for(channel_id, 8) for channel_id in (1, 2, 3, 668, 4_000_000)] == [6, 6, 2, 4, 3]
    assert [shard_for(channel_id, 4) for channel_id in range(1, 9)] == [0, 2, 2, 3, 3, 3, 0, 1]


def test_streamer_keeps_its_shard_when_others_come_and_go() -> None:
    everyone = streamers(3000)
    before = owner(plan_shards(everyone[:2000], 8))
    rng = random.Random(3)
    survivors = rng.sample(everyone[:2000], 1500)
    after = owner(plan_shards(survivors + everyone[2000:], 8))
    for s in survivors:
        assert after[s.name] == before[s.name]


def test_adding_a_shard_moves_only_what_the_new_shard_takes() -> None:
    group = streamers(4000)
    before = owner(plan_shards(group, 4))
    after = owner(plan_shards(group, 5))
    moved = [name for name in before if before[name] != after[name]]
    assert all(after[name] == 4 for name in moved)  # nobody shuffles between old shards
    assert 0.15 < len(moved) / len(group) < 0.25  # ~1/5 of them


def test_spread_is_balanced() -> None:
    group = streamers(10_000)
    for count in (2, 3, 8, 16):
        sizes = [len(members) for members in plan_shards(group, count).values()]
        mean = len(group) / count
        assert len(sizes) == count
        assert max(sizes) < mean * 1.12 and min(sizes) > mean * 0.88, (count, sizes)


def test_every_shard_is_listed_even_empty() -> None:
    assert plan_shards([], 3) == {0: [], 1: [], 2: []}
    assert plan_shards([S("one", 5)], 1) == {0: [S("one", 5)]}


def test_unresolved_streamers_are_left_out_and_listed() -> None:
    group = [S("a", 1), S("b", None), S("c", 3), S("d", None), S("e", None, 77, row_id=5)]
    plan = plan_shards(group, 2)
    assert sorted(s.name for members in plan.values() for s in members) == ["a", "c", "e"]
    assert [s.name for s in unresolved(group)] == ["b", "d"]


def test_a_channel_id_learned_later_does_not_move_the_streamer() -> None:
    for row_id in range(1, 200):
        before = S("x", None, 900 + row_id, row_id=row_id)
        after = S("x", 50_000 + row_id, 900 + row_id, row_id=row_id)
        assert owner(plan_shards([before], 7)) == owner(plan_shards([after], 7))


def test_works_with_the_message_type_workers_get() -> None:
    refs = [StreamerRef(streamer_id=i, username=f"u{i}", channel_id=1000 + i, kick_user_id=None) for i in range(10)]
    plan = plan_shards(refs, 3)
    assert sum(len(members) for members in plan.values()) == 10


def test_shard_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        shard_for(1, 0)


def test_shard_count_for_counts_pusher_channels() -> None:
    both = load_settings(environ={"KICK_MONITOR_CHANNELS_PER_CONNECTION": "100"})
    dot = load_settings(
        environ={"KICK_MONITOR_CHANNELS_PER_CONNECTION": "100", "KICK_MONITOR_LIFECYCLE_CHANNELS": "dot"}
    )
    assert subscriptions_per_streamer(both) == 2 and subscriptions_per_streamer(dot) == 1
    assert shard_count_for(both, 120) == 3  # 240 channels
    assert shard_count_for(dot, 120) == 2
    assert shard_count_for(both, 0) == 1


def test_shard_selection_checks() -> None:
    check_shard_selection(load_settings(environ={}), 3)
    fixed = load_settings(environ={"KICK_MONITOR_SHARD_COUNT": "3", "KICK_MONITOR_SHARD_INDEX": "2"})
    check_shard_selection(fixed, 3)
    outside = load_settings(environ={"KICK_MONITOR_SHARD_COUNT": "3", "KICK_MONITOR_SHARD_INDEX": "3"})
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        check_shard_selection(outside, 3)
    auto = load_settings(environ={"KICK_MONITOR_SHARD_INDEX": "0"})
    with pytest.raises(ValueError, match="needs KICK_MONITOR_SHARD_COUNT"):
        check_shard_selection(auto, 1)
