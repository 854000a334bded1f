"""The floor under S1 and S2: a frame sent → read by websocket-client → handed to a writer process →
COMMIT returned, with nothing else in the way (issue 18; shared/PERFORMANCE.md measured p50 0.51 ms,
p99 0.68 ms on 2026-11-25 for S1's shape).

One process serves frames over loopback websockets at `--rate` a second (in bursts of `--burst`
spread over `--connections` connections: S2's shape is `--streamers 10000 --connections 8
--rate 2000 --burst 100`), each stamped with its send time; a receiver process per connection
reads them with websocket-client (`skip_utf8_validation`, as the product) and puts them on one
`multiprocessing.Queue`; a writer process commits what is queued (group commit: everything
waiting, in one transaction) and records commit time − send time per frame. `--write floor`: one
autocommit statement (the rows' update and a history insert, the floor's write); `--write product`:
the product's own batch (`status_store.apply_changes`: lock and read, plan, write, notify — two
round trips). Running both
on the same machine minutes apart says how much of S1 is the product's write and how much is the
machine (the rest of S1: Pusher parsing, the tracker, the framed hand-off, the simulator's noise).

    python -m kick_tools.bench.latency_floor [--write floor|product] [--rate 200] [--seconds 30]
        [--streamers 1000] [--connections 1] [--burst 1]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.queues import Queue
from pathlib import Path
from queue import Empty
from typing import Any

import orjson
import psycopg2
import websocket
from websockets.sync.server import ServerConnection, serve

from kick_monitor import status_store
from kick_monitor.messages import StatusChange
from kick_tools.bench import measure
from kick_tools.bench.floor import repeat_on_fresh_databases
from kick_tools.bench.floor_statements import FLOOR_BATCH_SQL, FLOOR_SQL


@dataclass(frozen=True)
class Shape:
    """What the server sends: `rate` frames a second for `seconds`, `burst` at a time (every
    burst / rate seconds), spread over `connections` connections, to `streamers` streamers in turn."""

    rate: float = 200.0
    seconds: float = 30.0
    streamers: int = 1000
    connections: int = 1
    burst: int = 1


def send_frames(shape: Shape) -> tuple[Any, int]:
    """A websocket server on loopback: the k-th connection sends the frames whose index is k
    modulo `connections`, each burst at its time, then an end marker."""
    joined = itertools.count()

    def handle(connection: ServerConnection) -> None:
        lane = next(joined)
        interval = shape.burst / shape.rate
        start = time.monotonic() + 0.5  # every receiver connected before the first burst
        for first in range(0, int(shape.rate * shape.seconds), shape.burst):
            delay = start + first // shape.burst * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for index in range(first, first + shape.burst):
                if index % shape.connections == lane:
                    streamer = index % shape.streamers + 1
                    connection.send(orjson.dumps({"i": index, "streamer": streamer, "sent": time.time()}).decode())
        connection.send("{\"end\": true}")

    server = serve(handle, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.socket.getsockname()[1]


def receive(url: str, queue: Queue[dict[str, Any] | None]) -> None:
    ws = websocket.create_connection(url, skip_utf8_validation=True)
    try:
        while True:
            frame = orjson.loads(ws.recv())
            if frame.get("end"):
                break
            queue.put(frame)
    finally:
        ws.close()
        queue.put(None)


def queued(queue: Queue[dict[str, Any] | None], first: dict[str, Any] | None) -> tuple[list[dict[str, Any]], int]:
    """`first` and every frame already waiting behind it; the end markers met."""
    frames, ends = [], 0
    item = first
    while True:
        if item is None:
            ends += 1
        else:
            frames.append(item)
        try:
            item = queue.get_nowait()
        except Empty:
            return frames, ends


def write(url: str, mode: str, receivers: int, streamers: int, queue: Queue[dict[str, Any] | None],
          results: Queue[list[float]]) -> None:
    conn = psycopg2.connect(url)
    if mode == "product":
        status_store.prepare(conn)
    else:
        conn.autocommit = True
    online: set[int] = set()
    latencies: list[float] = []
    ended = 0
    with conn.cursor() as cur:
        while ended < receivers:
            frames, ends = queued(queue, queue.get())
            ended += ends
            if not frames:
                continue
            statuses = []
            for frame in frames:
                going = frame["streamer"] not in online
                (online.add if going else online.discard)(frame["streamer"])
                statuses.append("online" if going else "offline")
            if mode == "product":
                changes = [product_change(f, s, streamers) for f, s in zip(frames, statuses, strict=True)]
                status_store.apply_changes(conn, changes)
            elif len(frames) == 1:
                frame = frames[0]
                cur.execute(FLOOR_SQL, {"status": statuses[0], "sent": frame["sent"], "seq": frame["i"] + 1,
                                        "streamer": frame["streamer"], "change_id": f"floor:{frame['i']}"})
            else:
                cur.execute(FLOOR_BATCH_SQL, {
                    "streamer": [f["streamer"] for f in frames], "status": statuses,
                    "sent": [f["sent"] for f in frames], "seq": [f["i"] + 1 for f in frames],
                    "change_id": [f"floor:{f['i']}" for f in frames]})
            committed = time.time()
            latencies.extend((committed - f["sent"]) * 1000 for f in frames)
    conn.close()
    results.put(latencies)


def product_change(frame: dict[str, Any], status: str, streamers: int) -> StatusChange:
    """A frame as the worker would report it: a new livestream id for each online/offline pair."""
    streamer, index = frame["streamer"], frame["i"]
    going = status == "online"
    return StatusChange(
        f"floor:{index}", streamer, status, "pusher",  # type: ignore[arg-type]
        "App\\Events\\StreamerIsLive" if going else "App\\Events\\StopStreamBroadcast",
        10_000_000 + streamer * 1000 + index // (2 * streamers), None,
        frame["sent"] if going else None, frame["sent"], time.monotonic(), 0, 1, index + 1, streamer,
    )


def run(url: str, mode: str, shape: Shape) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    queue: Queue[dict[str, Any] | None] = ctx.Queue()
    results: Queue[list[float]] = ctx.Queue()
    writer = ctx.Process(target=write, args=(url, mode, shape.connections, shape.streamers, queue, results),
                         name="floor-writer")
    writer.start()
    server, port = send_frames(shape)
    receivers = [ctx.Process(target=receive, args=(f"ws://127.0.0.1:{port}/", queue), name=f"floor-receiver-{k}")
                 for k in range(shape.connections)]
    for receiver in receivers:
        receiver.start()
    try:
        latencies = results.get(timeout=shape.seconds + 60)
    finally:
        for process in (*receivers, writer):
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        server.shutdown()
    warm = latencies[int(shape.rate):]  # the first second: connections and caches warming up
    return {"write": mode, **asdict(shape), "latency_ms": measure.latency_summary(warm)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", choices=("floor", "product"), default="floor")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--streamers", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--burst", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if min(args.rate, args.seconds, args.streamers, args.connections, args.burst) <= 0:
        parser.error("--rate, --seconds, --streamers, --connections and --burst must be positive")
    if args.streamers < args.burst:
        parser.error("--streamers must be at least --burst (a burst never flips one streamer twice)")
    shape = Shape(args.rate, args.seconds, args.streamers, args.connections, args.burst)
    repeat_on_fresh_databases(
        "latency_floor", args.runs, args.streamers, lambda url, _, __: run(url, args.write, shape), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
