"""A shard worker's long-lived structures per streamer, by tracemalloc (issue 18; S3: 5,000 a worker).

    python -m kick_tools.bench.worker_memory --streamers 5000

Builds them the way the worker does: the planner's `Assign` unpickled from its wire bytes, the
worker's refs and `unconfirmed`, `StatusTracker.add`, the Pusher session's subscriptions (both
channel names a streamer), the first reconciliation emptying `unconfirmed`, then one lifecycle
frame for every streamer. Prints the bytes each step leaves allocated. The whole worker (heap
fragmentation, inherited pages) is `kick-monitor bench --scenario M --streamers 5000`.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import time
import tracemalloc
from collections.abc import Callable

import orjson

from kick_monitor.events import STREAMER_IS_LIVE, StatusTracker, channel_names, parse_frame
from kick_monitor.messages import Assign, StreamerRef
from kick_monitor.pusher import PusherSession
from workers.shard_worker import ShardWorker


def assign_bytes(count: int, seed: int = 18) -> bytes:
    """The planner's Assign for `count` streamers, pickled as it crosses the socket."""
    rng = random.Random(seed)
    refs = tuple(
        StreamerRef(100_000 + i, f"streamer_{rng.randrange(10**8)}", 10**7 + i, rng.randrange(10**7, 10**8),
                    "online" if i % 3 == 0 else "offline", rng.randrange(10**7, 10**8), generation=1,
                    started_at=1.7e9 + i if i % 3 == 0 else None)
        for i in range(count)
    )
    return pickle.dumps(Assign(refs), protocol=pickle.HIGHEST_PROTOCOL)


def measure(count: int) -> list[tuple[str, int]]:
    """(step, bytes it left allocated) for a shard of `count` streamers."""
    wire = assign_bytes(count)
    frames = [  # one lifecycle frame a streamer, built before tracing starts
        orjson.dumps({"event": STREAMER_IS_LIVE, "channel": f"channel.{10**7 + i}", "data": orjson.dumps(
            {"livestream": {"id": 9 * 10**7 + i, "channel_id": 10**7 + i, "session_title": "t",
                            "created_at": "2026-11-30T16:11:18.000000Z"}}).decode()})
        for i in range(count)
    ]
    steps: list[tuple[str, int]] = []
    gc.collect()
    tracemalloc.start()
    last = tracemalloc.get_traced_memory()[0]

    def step(name: str, run: Callable[[], object]) -> None:
        nonlocal last
        run()  # what it returns is dropped: only what the structures keep counts
        gc.collect()
        now = tracemalloc.get_traced_memory()[0]
        steps.append((name, now - last))
        last = now

    try:
        holder = type("Worker", (), {})()  # what ShardWorker keeps, without its sockets

        def receive() -> None:
            message = pickle.loads(wire)
            holder.refs = {ref.streamer_id: ref for ref in message.streamers}
            holder.unconfirmed = set()
            for streamer_id in holder.refs:  # one by one, as ShardWorker.subscribe adds them
                holder.unconfirmed.add(streamer_id)

        step("Assign: StreamerRefs, refs, unconfirmed", receive)
        tracker = StatusTracker((), shard=0)
        step("StatusTracker.add", lambda: tracker.add(holder.refs.values()))
        session = PusherSession("ws://127.0.0.1:9/app/key", shard=0)
        step("PusherSession.subscribe", lambda: session.subscribe(
            [name for ref in holder.refs.values() for name in channel_names(ref.channel_id)]))

        def confirm_all() -> None:
            for streamer_id in list(holder.unconfirmed):
                holder.unconfirmed.discard(streamer_id)
            release = getattr(ShardWorker, "release_unconfirmed", None)  # absent before round 5 (kept the table)
            if release is not None:
                release(holder)

        step("first reconciliation confirms all", confirm_all)
        def events() -> None:
            for raw in frames:
                ev = parse_frame(raw, received_at=time.time(), received_mono=time.monotonic(), stats=tracker.stats)
                if ev is not None:
                    tracker.apply(ev)

        step("a lifecycle frame each (tracker state)", events)
    finally:
        tracemalloc.stop()
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streamers", type=int, default=5000)
    count = parser.parse_args().streamers
    steps = measure(count)
    for name, size in steps:
        print(f"{size / 1024:9.1f} KB  {name}")
    total = sum(size for _, size in steps)
    print(f"{total / 1024:9.1f} KB  in all: {total / count:.0f} B a streamer")


if __name__ == "__main__":
    main()
