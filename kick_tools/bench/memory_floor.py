"""The floor under M: the product's process shape, with bare library loops instead of our roles.

Issue 18 lets a target stand unmet only where the floor itself is above it. For M (service
PSS ≤ 60 MB at 2,000 streamers, divided among the tree's own processes) the floor is what the
fixed shape costs on CPython 3.11 before any of our code runs: a supervisor that imported the
libraries once and forked, after `gc.freeze()`, a writer (psycopg2: batch UPDATE + history
INSERT + one `pg_notify` a change, one COMMIT a batch, an acknowledgement back), a shard worker
(websocket-client reading Pusher-shaped frames, two orjson parses a lifecycle frame, a dict of
statuses, each change pickled over a Unix socket to the writer and acknowledged) and, with
`--processes 4`, a planner (psycopg2: LISTEN, the streamer list re-read into a dict every 5 s).
None of them has our tracker, plan, hand-off framing, API client, telemetry or helper threads.

Two images: `--image product` imports what the product's coordinator imports before its first
fork (`workers.coordinator` + `kick_monitor.preload`), so the loops run in the same shared pages
as the product; `--image libraries` imports only psycopg2, websocket-client and orjson. The
frames come from a loopback websockets server in this process (not measured): `--rate` flips
a second and `--noise` chat-sized frames a second for `--seconds` (M's 50 and 200 for 20 s).
Each run reads every process after the worker connected (idle) and after the frames
(running): RSS, machine PSS, private, and tree PSS (`footprint.tree_pss`, the figure M is judged on).

    python -m kick_tools.bench.memory_floor [--processes 4|3] [--image product|libraries] [--runs 3]
        [--streamers 2000] [--seconds 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

import orjson
import psycopg2
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from kick_tools.bench import footprint, measure
from kick_tools.bench.floor import repeat_on_fresh_databases
from kick_tools.bench.floor_tree import LIVE, OFFLINE

NOISE_TEXT = "x" * 180  # a chat message's size on the wire (../shared/kick/captured-frames.jsonl: 300-600 bytes)


# -- the frames (this process, not measured) ---------------------------------------------


def serve_frames(streamers: int, rate: float, noise: float, seconds: float) -> tuple[Any, int, threading.Event]:
    """A loopback websocket server: once `go` is set, `rate` lifecycle frames a second (each
    streamer in turn, live then offline) and `noise` chat frames a second for `seconds`."""
    go = threading.Event()

    def handle(connection: ServerConnection) -> None:
        go.wait()
        sends = int((rate + noise) * seconds)
        interval = 1.0 / (rate + noise)
        start = time.monotonic()
        flips = itertools.count()
        data: dict[str, object]
        for index in range(sends):
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if index * rate // (rate + noise) != (index + 1) * rate // (rate + noise):
                flip = next(flips)
                streamer = flip % streamers + 1
                event = LIVE if flip // streamers % 2 == 0 else OFFLINE
                data = {"livestream": {"id": 10_000_000 + flip, "channel_id": streamer,
                                       "session_title": "floor", "created_at": time.time()}}
                channel = f"channel.{streamer}"
            else:
                event, channel = "App\\Events\\ChatMessageEvent", f"chatrooms.{index % streamers + 1}.v2"
                data = {"id": str(index), "content": NOISE_TEXT, "type": "message"}
            connection.send(orjson.dumps({"event": event, "data": orjson.dumps(data).decode(),
                                          "channel": channel}).decode())
        connection.send('{"event":"floor:end","data":"{}"}')
        with contextlib.suppress(ConnectionClosed):
            for _ in connection:  # stay connected, as Pusher does, until the worker goes
                pass

    server = serve(handle, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.socket.getsockname()[1], go


# -- one run (this process) -----------------------------------------------------------------


def read_tree(pids: dict[str, int]) -> dict[str, Any]:
    sample = footprint.take_sample(pids)
    tree = footprint.tree_pss(pids)
    return {"slots": sample, "service": footprint.totals(sample), "tree_pss_mb": tree,
            "service_pss_mb": round(sum(tree.values()), 1) if tree else None}


def measure_once(url: str, args: argparse.Namespace) -> dict[str, Any]:
    server, port, go = serve_frames(args.streamers, args.rate, args.noise, args.seconds)
    tree = subprocess.Popen(
        [sys.executable, "-m", "kick_tools.bench.floor_tree", url, f"ws://127.0.0.1:{port}/",
         str(args.processes), args.image],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert tree.stdout is not None
        pids = json.loads(tree.stdout.readline())
        time.sleep(2.0)  # connected, first list read
        idle = read_tree(pids)
        go.set()
        wait_for_history(url, int(args.rate * args.seconds), timeout=args.seconds + 30)
        time.sleep(1.0)
        running = read_tree(pids)
        gone = [slot for slot in pids if slot not in running["slots"]]
        if gone:
            raise RuntimeError(f"floor roles exited during the run: {gone}")
    finally:
        tree.terminate()
        tree.wait(10)
        server.shutdown()
    return {"processes": args.processes, "image": args.image, "streamers": args.streamers, "idle": idle,
            "running": running, "history_rows": count_history(url)}


def count_history(url: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM kick_monitor.status_events WHERE event = 'floor'")
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


def wait_for_history(url: str, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while count_history(url) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the floor's writer recorded {count_history(url)} of {expected} changes")
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, choices=(3, 4), default=4,
                        help="4: coordinator, writer, worker, planner (the product's M tree); 3: no planner")
    parser.add_argument("--image", choices=("product", "libraries"), default="product")
    parser.add_argument("--streamers", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--noise", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if min(args.streamers, args.rate, args.seconds, args.runs) <= 0 or args.noise < 0:
        parser.error("--streamers, --rate, --seconds and --runs must be positive, --noise not negative")
    if os.geteuid() != 0:
        print("note: not root, so no tree PSS (page frame numbers are hidden); machine PSS only", file=sys.stderr)
    runs = repeat_on_fresh_databases("memory_floor", args.runs, args.streamers,
                                     lambda url, _, __: measure_once(url, args), None)
    summary = {phase: median(r[phase]["service_pss_mb"] or r[phase]["service"]["pss_mb"] for r in runs)
               for phase in ("idle", "running")}
    print(json.dumps({"service_pss_mb_median": summary, "load": measure.loadavg()}))
    if args.out:
        args.out.write_text(json.dumps({"scenario": "memory_floor (kick_tools.bench)", "args": vars(args) | {
            "out": str(args.out)}, "summary": summary, "runs": runs}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
