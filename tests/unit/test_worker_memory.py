"""A shard worker's memory per streamer (issue 18, S3: 5,000 streamers a worker).

Budgets on the long-lived structures a worker builds for its shard, measured with tracemalloc the
way the worker builds them (docs/performance.md, "A worker's memory per streamer"), and the
properties that keep them small.
"""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc

import pytest

from kick_monitor.events import StatusTracker, channel_names
from kick_monitor.kick_api import ChannelInfo
from kick_monitor.messages import StreamerRef
from kick_monitor.pusher import PusherSession
from workers.shard_worker import ShardWorker, trim_after_burst

pytestmark = pytest.mark.timeout(30)

SHARD = 5000  # streamers a worker holds in S3 (100,000 on 20 workers)


def shard(count: int = SHARD) -> list[StreamerRef]:
    rng = random.Random(18)
    return [
        StreamerRef(100_000 + i, f"streamer_{rng.randrange(10**8)}", rng.randrange(10**7, 10**8),
                    rng.randrange(10**7, 10**8), "online" if i % 3 == 0 else "offline", rng.randrange(10**7, 10**8))
        for i in range(count)
    ]


def retained(build: object) -> int:
    """Bytes still allocated after `build()` (whose result is kept), by tracemalloc."""
    assert callable(build)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def test_tracker_and_subscriptions_cost_at_most_360_bytes_a_streamer() -> None:
    """Measured 525 B a streamer (these refs) when the tracker also kept both channel names as strings
    and the session a set; 328 B now."""
    refs = shard()

    def build() -> tuple[StatusTracker, PusherSession]:
        tracker = StatusTracker((), shard=0)
        tracker.add(refs)
        session = PusherSession("ws://127.0.0.1:9/app/key", shard=0)
        session.subscribe([name for ref in refs if ref.channel_id for name in channel_names(ref.channel_id)])
        return tracker, session

    per_streamer = retained(build) / SHARD
    assert per_streamer <= 360, f"{per_streamer:.0f} B a streamer"


def test_the_emptied_unconfirmed_set_gives_its_table_back() -> None:
    """Every streamer is confirmed by the first reconciliation; the emptied set kept 512 KB."""
    holder = type("Holder", (), {"unconfirmed": set(range(SHARD))})()
    empty_size = sys.getsizeof(set())
    for streamer_id in range(SHARD):
        holder.unconfirmed.discard(streamer_id)
    assert sys.getsizeof(holder.unconfirmed) > 100 * empty_size  # what the worker held before
    ShardWorker.release_unconfirmed(holder)
    assert sys.getsizeof(holder.unconfirmed) == empty_size


def test_api_answers_leave_no_cached_value_strings() -> None:
    """pydantic-core's default string cache kept up to 16,384 slugs and titles for good."""
    body = b'{"broadcaster_user_id": 5, "slug": "some_streamer", "stream": {"is_live": false}}'
    first, second = ChannelInfo.model_validate_json(body), ChannelInfo.model_validate_json(body)
    assert first.slug == second.slug and first.slug is not second.slug


def test_a_burst_trim_empties_the_tuple_free_list() -> None:
    """Pickling a batch of changes leaves one argument tuple per change in the free list (up to
    2,000); the worker's trim after a burst gives them back."""
    import pickle

    from kick_monitor.messages import StatusChange

    changes = tuple(
        StatusChange(f"a:{i}:online:5:{i}", i, "online", "api", "reconcile", 5, None, None, 1.0, 2.0, 0, 1, i, i)
        for i in range(3000)
    )
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pickle.dumps(changes, protocol=pickle.HIGHEST_PROTOCOL)
        kept = tracemalloc.get_traced_memory()[0] - before
        trim_after_burst()
        after_trim = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept > 300_000  # 2,000 tuples of 17 values
    assert after_trim < 20_000


def test_a_long_reconciliation_gives_back_freed_memory_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass spread over minutes by the API budget kept what the reconcile thread freed until its end
    (round 12's soak): every TRIM_AFTER answers applied, freed memory goes back, not at every batch."""
    from types import SimpleNamespace

    import workers.shard_worker as shard_worker
    from kick_monitor.messages import LiveAnswer, LiveInfo
    from workers.shard_worker import TRIM_AFTER

    trims: list[int] = []
    monkeypatch.setattr(shard_worker, "release_free_memory", lambda: trims.append(1))
    holder = SimpleNamespace(
        held_answers=[], answered_since_trim=0, answers_due=0.0, answers_applied_at=0.0,
        verdicts=lambda asked, live: [], send=lambda changes: None,
    )
    holder.trim_during_pass = lambda: ShardWorker.trim_during_pass(holder)  # type: ignore[arg-type]
    per_request = TRIM_AFTER // 2 - 10
    for request in range(1, 5):
        offline = LiveInfo(False, None, None, None)
        holder.held_answers.append(LiveAnswer(1, float(request), dict.fromkeys(range(per_request), offline)))
        ShardWorker.apply_held_answers(holder, float(request))  # type: ignore[arg-type]
        assert len(trims) == (1 if request >= 3 else 0), f"after request {request}"
    assert holder.answered_since_trim == per_request
