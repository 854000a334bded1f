"""What the writer's latency histogram costs a change with metrics on (issue 18): one
`labels().observe()` per change, as before, against `metrics.observe_many` per batch and source.

Multiprocess mode (the service's: every role writes mmap files the exporter reads), in a temporary
directory of its own; 500-change batches, 10 % of them from the API; the median of `--rounds`
rounds of `--batches` batches, microseconds a change, each way twice, interleaved.

    python -m kick_tools.bench.observe_cost [--rounds 5] [--batches 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any


def measure(rounds: int, batches: int) -> dict[str, Any]:
    from kick_monitor import metrics as m  # after PROMETHEUS_MULTIPROC_DIR is set: mmap-backed values
    from kick_monitor.messages import StatusChange

    now = time.time()
    changes = [StatusChange(change_id=f"c{i}", channel_id=i, status="online", source="pusher" if i % 10 else "api",
                            event="StreamerIsLive", livestream_id=i, title=None, occurred_at=None,
                            received_at=now - (i % 50) / 1000, received_mono=0.0, shard=0, generation=1)
               for i in range(500)]

    def per_change() -> None:
        for change in changes:
            m.LATENCY.labels(source=change.source).observe(max(0.0, now - change.received_at))

    def per_batch() -> None:  # what workers/writer.py `_observe` calls
        m.observe_latencies(changes, now)

    found: dict[str, list[float]] = {"per_change": [], "observe_many": []}
    ways: list[tuple[str, Callable[[], None]]] = [("per_change", per_change), ("observe_many", per_batch)]
    for name, fn in ways * 2:
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(batches):
                fn()
            found[name].append((time.perf_counter() - started) / batches / len(changes) * 1e6)
    return {name: {"us_per_change_median": round(statistics.median(v), 3), "rounds": [round(x, 3) for x in v]}
            for name, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kick-observe-cost-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        result = measure(max(1, args.rounds), max(1, args.batches))
    result["load"] = list(os.getloadavg())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
