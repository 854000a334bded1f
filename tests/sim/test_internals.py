"""Pieces the end-to-end tests lean on: the subscription index, pacing, rate limiting, threads."""

from __future__ import annotations

import itertools
import random
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kick_sim import SimConfig, Simulator
from kick_sim.api_faults import RateLimiter
from kick_sim.subscriptions import SubscriptionIndex, channel_form


def test_channel_form() -> None:
    assert channel_form("chatrooms.875062.v2") == ("chatrooms", 875062)
    assert channel_form("channel.668") == ("channel.", 668)
    assert channel_form("channel_668") == ("channel_", 668)
    for name in ("channel.668x", "chatrooms.1", "private-livestream.1", "channel.", "xchannel.1"):
        assert channel_form(name) is None


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 2)), max_size=80))
def test_subscription_index_matches_a_plain_model(ops: list[tuple[bool, int, int]]) -> None:
    index: SubscriptionIndex[int] = SubscriptionIndex()
    model: set[tuple[str, int]] = set()
    rng = random.Random(0)
    for add, channel_id, conn in ops:
        channel = f"channel.{channel_id}" if channel_id % 2 else f"chatrooms.{channel_id}.v2"
        if add:
            assert index.add(channel, conn) == ((channel, conn) not in model)
            model.add((channel, conn))
        else:
            assert index.remove(channel, conn) == ((channel, conn) in model)
            model.discard((channel, conn))
        assert index.total == len(model)
        assert set(index.channels) == {c for c, _ in model}
        for form in ("channel.", "chatrooms"):
            sampled = index.sample(form, rng)
            expected = {c for c, _ in model if channel_form(c)[0] == form}  # type: ignore[index]
            assert (sampled in expected) if expected else sampled is None


def test_rate_limiter_fixed_window() -> None:
    limiter = RateLimiter(2, 60)
    assert limiter.retry_after() is None
    assert limiter.retry_after() is None
    wait = limiter.retry_after()
    assert wait is not None and 59 < wait <= 60


def test_bursts_come_in_groups_at_the_average_rate() -> None:
    with Simulator(SimConfig(seed=8)) as sim:
        sim.create_streamers(50)
        sim.start_flipping(rate=200.0, duration=0.3, burst=10, spacing="even")
        assert sim.wait_flipping_done(timeout=5)
        truth = sim.truth()
    assert len(truth) % 10 == 0 and 50 <= len(truth) <= 70
    groups = [truth[i : i + 10] for i in range(0, len(truth), 10)]
    for group in groups:
        assert group[-1].sent_mono - group[0].sent_mono < 0.01
    gaps = [b[0].sent_mono - a[0].sent_mono for a, b in itertools.pairwise(groups)]
    assert 0.03 < sorted(gaps)[len(gaps) // 2] < 0.07  # 10 flips per 50 ms = 200/s


def test_stop_leaves_no_thread_behind() -> None:
    sim = Simulator(SimConfig())
    sim.start()
    assert any(t.name == "kick-sim" for t in threading.enumerate())
    sim.stop()
    sim.stop()  # idempotent
    assert not any(t.name == "kick-sim" for t in threading.enumerate())


def test_start_failures_raise_and_leave_no_thread(tmp_path: Path) -> None:
    with Simulator(SimConfig()) as running:
        port = int(running.pusher_url.split(":")[2].split("/")[0])
        with pytest.raises(OSError):
            Simulator(SimConfig(port=port)).start()
    with pytest.raises(ValueError, match="noise"):
        Simulator(SimConfig(noise_rate=10.0, noise_file=f"{tmp_path}/missing.jsonl")).start()
    assert not any(t.name == "kick-sim" for t in threading.enumerate())
