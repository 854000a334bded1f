"""The planner's private memory under many reconciliation passes: does it grow with API requests?

The 2-hour soak runs ~5 API requests a second, so growth per request shows as a slope of under
1 MB/h, within the soak's pass rule and hard to tell from noise. This runs the whole product
(`kick-monitor run`) against the simulator with the same 10,000 streamers, channel noise and flips,
but reconciles every `--reconcile-interval` s at `--api-rate` requests/s (default 100: ~80/s on this
machine), so hours of requests pass in minutes. Every 5 s it records the planner's private memory
(smaps_rollup), its glibc thread arenas (`footprint.malloc_thread_arenas`) and the simulator's count of
official API requests; at the end, the least-squares slope after `--warmup` s, in MB/h and in bytes
per request. `--kill-every` SIGKILLs a worker (round robin) that often: each respawn is a new
connection, an Assign and a pass of its whole shard.

    python -m kick_tools.bench.planner_churn [--minutes 10] [--kill-every 0] [--out churn.json]

A benchmark: it reports, it does not judge. Round 18 (docs/performance.md) measured with it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from kick_tools.bench import measure
from kick_tools.bench.footprint import malloc_thread_arenas, rollup, service_slots
from kick_tools.bench.harness import BenchDatabase, Stack, temporary_workdir
from kick_tools.bench.scenarios import BenchContext, official_requests, start_pipeline

SAMPLE_EVERY = 5.0


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB an hour."""
    if len(points) < 3:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / spread * 3600


def sample(service_pid: int, sim: Any, t: float, kills: int) -> dict[str, Any]:
    slots = service_slots(service_pid)
    planner = slots.get("planner")
    memory = rollup(planner) if planner else None
    try:
        arenas = malloc_thread_arenas(planner) if planner else None
    except OSError:
        arenas = None
    private = round(memory["private_kb"] / 1024, 2) if memory else None
    return {"t": round(t, 1), "planner_pid": planner, "private_mb": private, "thread_arenas": arenas,
            "api_requests": official_requests(sim.stats()["api_requests"]), "kills": kills}


def churn(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    db = BenchDatabase(work / "pg").start()
    try:
        ctx = BenchContext(work=work, db=db, say=lambda _: None)
        url = db.fresh("planner_churn")
        settings = {"reconcile_interval": str(args.reconcile_interval), "api_rate": str(args.api_rate),
                    "api_burst": "100"}
        samples: list[dict[str, Any]] = []
        with Stack() as stack:
            sim, service, start = start_pipeline(ctx, stack, work / "run", url, streamers=args.streamers, shards=None,
                                                  seed=1, noise=True, settings=settings)
            sim.post("/control/noise", {"rate": 200.0})
            sim.post("/control/flip", {"rate": 20.0, "duration": args.minutes * 60 + 30})
            t0, kills, victim = time.monotonic(), 0, 0
            next_kill = args.kill_every or float("inf")
            while (t := time.monotonic() - t0) < args.minutes * 60:
                row = sample(service.pid, sim, t, kills)
                samples.append(row)
                print(json.dumps(row), flush=True)
                if t >= next_kill:
                    workers = sorted(slot for slot in service_slots(service.pid) if slot.startswith("worker"))
                    if workers:
                        os.kill(service_slots(service.pid)[workers[victim % len(workers)]], signal.SIGKILL)
                        victim, kills = victim + 1, kills + 1
                    next_kill += args.kill_every
                time.sleep(SAMPLE_EVERY)
            samples.append(sample(service.pid, sim, time.monotonic() - t0, kills))
    finally:
        db.stop()
    after = [s for s in samples if s["t"] >= args.warmup and s["private_mb"] is not None]
    slope = slope_per_hour([(s["t"], s["private_mb"]) for s in after])
    requests = after[-1]["api_requests"] - after[0]["api_requests"] if len(after) > 1 else 0
    hours = (after[-1]["t"] - after[0]["t"]) / 3600 if len(after) > 1 else 0.0
    per_request = slope * hours * (1 << 20) / requests if slope is not None and requests else None
    return {
        "config": {key: str(value) for key, value in vars(args).items()}, "start": start,
        "summary": {
            "private_mb_after_warmup": after[0]["private_mb"] if after else None,
            "private_mb_end": after[-1]["private_mb"] if after else None,
            "slope_mb_per_h": round(slope, 2) if slope is not None else None,
            "requests_after_warmup": requests,
            "bytes_per_request": round(per_request, 1) if per_request is not None else None,
            "thread_arenas_end": after[-1]["thread_arenas"] if after else None,
        },
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds left out of the slope")
    parser.add_argument("--kill-every", type=float, default=0.0, help="seconds between worker SIGKILLs (0: none)")
    parser.add_argument("--reconcile-interval", type=float, default=5.0)
    parser.add_argument("--api-rate", type=float, default=100.0)
    parser.add_argument("--streamers", type=int, default=10_000)
    parser.add_argument("--out", type=Path, help="the result as JSON (samples and summary)")
    args = parser.parse_args(argv)
    if args.minutes * 60 <= args.warmup + 3 * SAMPLE_EVERY:
        parser.error("--minutes must leave a few samples after --warmup")
    load = measure.loadavg()
    with temporary_workdir(None, keep=False) as work:
        result = churn(args, work)
    result["load_before"] = load
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
