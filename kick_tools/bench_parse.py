"""Parse throughput on real Kick traffic: `python -m kick_tools.bench_parse`.

Replays the captured frames (shared/kick/captured-frames.jsonl), re-encoded to the bytes a
socket delivers, through the production path (`parse_frame` with the lifecycle filter a
worker's session uses, then `StatusTracker.apply`, receive timestamps included) in one
process and one thread, so the figure is frames per second per core. Prints the median of
`--repeats` runs of `--passes` passes each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson

from kick_monitor.events import LIFECYCLE_EVENTS, StatusTracker, parse_frame
from kick_monitor.messages import StreamerRef
from kick_sim.data import CAPTURED_FRAMES

DEFAULT_FILE = CAPTURED_FRAMES


def load_frames(path: Path) -> list[bytes]:
    """Each captured frame as the websocket payload bytes it arrived as."""
    with path.open("rb") as lines:
        return [
            orjson.dumps(orjson.loads(line)["frame"]) for line in lines if line.strip()
        ]


def tracked_refs(frames: list[bytes]) -> list[StreamerRef]:
    """Track every `channel.*`/`channel_*` channel in the capture, as a worker would."""
    ids: set[int] = set()
    for raw in frames:
        channel = orjson.loads(raw).get("channel") or ""
        for prefix in ("channel.", "channel_"):
            if channel.startswith(prefix) and channel[len(prefix) :].isdigit():
                ids.add(int(channel[len(prefix) :]))
    return [StreamerRef(i, f"s{i}", i, None) for i in sorted(ids)]


def run_once(frames: list[bytes], refs: list[StreamerRef], passes: int) -> float:
    """Frames per second for `passes` replays through a fresh tracker."""
    tracker = StatusTracker(refs)
    stats = tracker.stats
    apply = tracker.apply
    clock, mono = time.time, time.monotonic
    start = time.perf_counter()
    for _ in range(passes):
        for raw in frames:
            ev = parse_frame(
                raw,
                received_at=clock(),
                received_mono=mono(),
                stats=stats,
                wanted=LIFECYCLE_EVENTS,
            )
            if ev is not None:
                apply(ev)
    elapsed = time.perf_counter() - start
    return passes * len(frames) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--passes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    frames = load_frames(args.file)
    refs = tracked_refs(frames)
    run_once(frames, refs, 5)  # warm-up
    rates = [run_once(frames, refs, args.passes) for _ in range(args.repeats)]
    median = statistics.median(rates)
    print(
        f"{len(frames)} frames x {args.passes} passes, {args.repeats} runs: "
        f"median {median:,.0f} frames/s per core ({1e9 / median:,.0f} ns/frame); "
        f"min {min(rates):,.0f}, max {max(rates):,.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
