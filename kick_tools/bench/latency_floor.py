"""The floor under S1: a frame sent → read by websocket-client → handed to a writer process →
COMMIT returned, with nothing else in the way (issue 18; shared/PERFORMANCE.md measured p50 0.51 ms,
p99 0.68 ms on 2026-11-25).

One process serves frames over a loopback websocket at `--rate` a second, each stamped with its
send time; a receiver process reads them with websocket-client (`skip_utf8_validation`, as the
product) and puts them on a `multiprocessing.Queue`; a writer process commits each one and
records commit time − send time. `--write floor`: one autocommit statement (the row's update and
a history insert, the floor's write); `--write product`: the product's own batch
(`status_store.apply_changes`: lock and read, plan, write, notify — two round trips). Running both
on the same machine minutes apart says how much of S1 is the product's write and how much is the
machine (the rest of S1: Pusher parsing, the tracker, the framed hand-off, the simulator's noise).

    python -m kick_tools.bench.latency_floor [--write floor|product] [--rate 200] [--seconds 30]
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import websocket
from websockets.sync.server import ServerConnection, serve

from kick_monitor import status_store
from kick_monitor.messages import StatusChange
from kick_tools.bench import measure
from kick_tools.bench.floor import repeat_on_fresh_databases

STREAMERS = 1000
FLOOR_SQL = """
WITH row AS (
    UPDATE kick_monitor.streamers SET status = %(status)s, last_status_change = to_timestamp(%(sent)s),
                                      order_generation = 1, order_seq = %(seq)s, updated_at = now()
    WHERE id = %(streamer)s
    RETURNING id, channel_id
)
INSERT INTO kick_monitor.status_events
    (change_id, streamer_id, channel_id, status, previous_status, source, event, occurred_at, received_at,
     order_generation, order_seq)
SELECT %(change_id)s, row.id, row.channel_id, %(status)s, 'unknown', 'pusher', 'floor', to_timestamp(%(sent)s),
       to_timestamp(%(sent)s), 1, %(seq)s
FROM row
"""


def send_frames(rate: float, seconds: float) -> tuple[Any, int]:
    """A websocket server on loopback that sends `rate` stamped frames a second to its one client."""

    def handle(connection: ServerConnection) -> None:
        interval = 1.0 / rate
        start = time.monotonic()
        for index in range(int(rate * seconds)):
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            streamer = index % STREAMERS + 1
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


def write(url: str, mode: str, queue: Queue[dict[str, Any] | None], results: Queue[list[float]]) -> None:
    conn = psycopg2.connect(url)
    if mode == "product":
        status_store.prepare(conn)
    else:
        conn.autocommit = True
    online: set[int] = set()
    latencies: list[float] = []
    with conn.cursor() as cur:
        while (frame := queue.get()) is not None:
            streamer, index = frame["streamer"], frame["i"]
            going = streamer not in online
            (online.add if going else online.discard)(streamer)
            status = "online" if going else "offline"
            if mode == "product":
                change = StatusChange(
                    f"floor:{index}", streamer, status, "pusher",  # type: ignore[arg-type]
                    "App\\Events\\StreamerIsLive" if going else "App\\Events\\StopStreamBroadcast",
                    10_000_000 + streamer * 1000 + index // (2 * STREAMERS), None,
                    frame["sent"] if going else None, frame["sent"], time.monotonic(), 0, 1, index + 1, streamer,
                )
                status_store.apply_changes(conn, [change])
            else:
                cur.execute(FLOOR_SQL, {"status": status, "sent": frame["sent"], "seq": index + 1,
                                        "streamer": streamer, "change_id": f"floor:{index}"})
            latencies.append((time.time() - frame["sent"]) * 1000)
    conn.close()
    results.put(latencies)


def run(url: str, mode: str, rate: float, seconds: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    queue: Queue[dict[str, Any] | None] = ctx.Queue()
    results: Queue[list[float]] = ctx.Queue()
    writer = ctx.Process(target=write, args=(url, mode, queue, results), name="floor-writer")
    writer.start()
    server, port = send_frames(rate, seconds)
    receiver = ctx.Process(target=receive, args=(f"ws://127.0.0.1:{port}/", queue), name="floor-receiver")
    receiver.start()
    try:
        latencies = results.get(timeout=seconds + 60)
    finally:
        receiver.join(10)
        writer.join(10)
        for process in (receiver, writer):
            if process.is_alive():
                process.kill()
                process.join()
        server.shutdown()
    warm = latencies[int(rate):]  # the first second: connections and caches warming up
    return {"write": mode, "rate": rate, "seconds": seconds, "latency_ms": measure.latency_summary(warm)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", choices=("floor", "product"), default="floor")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    repeat_on_fresh_databases(
        "latency_floor", args.runs, STREAMERS, lambda url, _, __: run(url, args.write, args.rate, args.seconds),
        args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
