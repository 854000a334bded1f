"""The floor under W: the writer's writes per change with the simplest SQL and no decisions (issue 18).

Per change, exactly the rows the product writes for a Pusher start or end, in batches of 500, one
autocommit statement a batch (arrays in, `unnest`): a broadcast inserted (start) or updated on its
primary key (end), a history row (heap, primary key, `change_id` unique, `(streamer_id,
received_at)` index), the streamer row's update, one `pg_notify` per history row — on the bench's
own embedded PostgreSQL with the same settings and a fresh migrated database of 100,000 streamers.
No ordering, no newer-wins, no matching: what is left is PostgreSQL's (and psycopg2's) cost of
the writes themselves, the number issue 18 lets us quote when 45,000/s is above it.
`--connections 2`: as many processes, each with its own connection and its own half of the
streamers, writing at once (the writer commits a backlog on two connections).

    python -m kick_tools.bench.floor [--changes 300000] [--batch 500] [--streamers 100000]
        [--connections 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.queues
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2.extras import execute_values

from kick_tools.bench import measure
from kick_tools.bench.harness import BenchDatabase

FLOOR_SQL = """
WITH c AS (
    SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bool[], %s::float8[], %s::bigint[])
        AS c (d, b, online, at, g)
),
recorded AS (
    INSERT INTO kick_monitor.broadcasts AS b (id, streamer_id, started_at, livestream_id, start_source,
                                             pusher_start_seen_at)
    SELECT c.b, c.d, to_timestamp(c.at), c.b, 'pusher', to_timestamp(c.at) FROM c
    ON CONFLICT (id) DO UPDATE SET ended_at = EXCLUDED.started_at, end_source = 'pusher',
                                   pusher_end_seen_at = EXCLUDED.started_at, updated_at = now()
),
history AS (
    INSERT INTO kick_monitor.status_events
        (change_id, streamer_id, channel_id, status, previous_status, source, event, livestream_id,
         occurred_at, received_at, order_generation, order_seq, broadcast_id)
    SELECT 'floor:' || c.d || ':' || c.g, c.d, c.d,
           CASE WHEN c.online THEN 'online' ELSE 'offline' END,
           CASE WHEN c.online THEN 'offline' ELSE 'online' END, 'pusher',
           CASE WHEN c.online THEN 'StreamerIsLive' ELSE 'StopStreamBroadcast' END,
           c.b, to_timestamp(c.at), to_timestamp(c.at), 1, c.g, c.b
    FROM c
    RETURNING streamer_id, channel_id, status, previous_status, source, livestream_id, received_at, broadcast_id
),
current AS (
    UPDATE kick_monitor.streamers s
    SET status = CASE WHEN c.online THEN 'online' ELSE 'offline' END,
        livestream_id = CASE WHEN c.online THEN c.b END, last_livestream_id = c.b, broadcast_id = c.b,
        stream_started_at = CASE WHEN c.online THEN to_timestamp(c.at) ELSE s.stream_started_at END,
        last_status_change = to_timestamp(c.at), last_event_at = to_timestamp(c.at),
        order_generation = 1, order_seq = c.g, updated_at = now()
    FROM c WHERE s.id = c.d
    RETURNING s.id, s.username
)
SELECT count(pg_notify('kick_monitor_status', json_build_object(
    'streamer_id', h.streamer_id, 'username', u.username, 'channel_id', h.channel_id, 'status', h.status,
    'previous_status', h.previous_status, 'source', h.source, 'livestream_id', h.livestream_id,
    'broadcast_id', h.broadcast_id, 'inferred', false, 'at', h.received_at)::text))
FROM history h JOIN current u ON u.id = h.streamer_id
"""


def array(values: Sequence[object]) -> str:
    """A PostgreSQL array literal (one parameter, not a list adapted value by value)."""
    return "{" + ",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values) + "}"


def backend_cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu(postmaster: int | None) -> float:
    """utime + stime of the postmaster and all its children (backends, WAL writer, checkpointer,
    autovacuum): what the bench's W counts as PostgreSQL's CPU."""
    if postmaster is None:
        return 0.0
    total = backend_cpu(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run(
    url: str, changes: int, batch: int, streamers: int, postmaster: int | None = None, part: int = 0, parts: int = 1,
) -> dict[str, Any]:
    """`changes` writes in batches of `batch` over streamers `part + 1`, `part + 1 + parts`, … (the
    `part`-th of `parts` writers at once: no row and no broadcast id shared between them)."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    found = cur.fetchone()
    assert found is not None
    backend = found[0]
    state: dict[int, int] = {}  # streamer -> its open broadcast id (0: offline)
    next_broadcast = part + 1
    own = max(1, streamers // parts)
    times: list[float] = []
    cpu_db, cpu_all, cpu_me = backend_cpu(backend), postgres_cpu(postmaster), time.process_time()
    started = time.perf_counter()
    sent = 0
    cursor = 0
    while sent < changes:
        ids, bids, online, at, seqs = [], [], [], [], []
        for _ in range(min(batch, changes - sent)):
            d = cursor % own * parts + part + 1
            cursor += 1
            open_id = state.get(d, 0)
            if open_id:
                bids.append(open_id)
                online.append(False)
                state[d] = 0
            else:
                bids.append(next_broadcast)
                online.append(True)
                state[d] = next_broadcast
                next_broadcast += parts
            ids.append(d)
            at.append(round(time.time(), 6))
            seqs.append(cursor)
        t0 = time.perf_counter()
        cur.execute(FLOOR_SQL, (array(ids), array(bids), array(online), array(at), array(seqs)))
        cur.fetchone()
        times.append(time.perf_counter() - t0)
        sent += len(ids)
    elapsed = time.perf_counter() - started
    cpu_db, cpu_me = backend_cpu(backend) - cpu_db, time.process_time() - cpu_me
    cpu_all = postgres_cpu(postmaster) - cpu_all
    conn.close()
    times.sort()
    return {
        "changes": sent, "batch": batch, "streamers": streamers,
        "changes_per_s": round(sent / elapsed, 1), "elapsed_s": elapsed,
        "statement_ms_p50": round(times[len(times) // 2] * 1000, 2),
        "postgres_cpu_us_per_change": round(cpu_db / sent * 1e6, 1),  # the backend alone
        "postgres_all_cpu_us_per_change": round(cpu_all / sent * 1e6, 1),  # every PostgreSQL process
        "client_cpu_us_per_change": round(cpu_me / sent * 1e6, 1),
    }


def run_at_once(url: str, changes: int, batch: int, streamers: int, connections: int,
                postmaster: int | None) -> dict[str, Any]:
    """`connections` processes running `run` at once on disjoint streamers; changes a second over
    the longest of them, each backend's CPU weighted by its changes (PostgreSQL's other processes
    are not counted: a backend has exited, its CPU gone from /proc, before the totals could be read)."""
    if connections == 1:
        return run(url, changes, batch, streamers, postmaster)
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.queues.Queue[dict[str, Any]] = ctx.Queue()
    share = changes // connections
    workers = [ctx.Process(target=lambda k=k: results.put(run(url, share, batch, streamers, None, k, connections)))
               for k in range(connections)]
    for worker in workers:
        worker.start()
    parts = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    sent: int = sum(p["changes"] for p in parts)

    def weighted(key: str) -> float:
        return round(sum(float(p[key]) * int(p["changes"]) for p in parts) / sent, 1)

    return {
        "changes": sent, "batch": batch, "streamers": streamers, "connections": connections,
        "changes_per_s": round(sent / max(p["elapsed_s"] for p in parts), 1),
        "statement_ms_p50": [p["statement_ms_p50"] for p in parts],
        "postgres_cpu_us_per_change": weighted("postgres_cpu_us_per_change"),
        "client_cpu_us_per_change": weighted("client_cpu_us_per_change"),
    }


def seed(url: str, streamers: int) -> None:
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        execute_values(cur, "INSERT INTO kick_monitor.streamers (username, channel_id) VALUES %s",
                       [(f"w{i}", i) for i in range(1, streamers + 1)], page_size=5000)
        cur.execute("ANALYZE kick_monitor.streamers")
    conn.close()


def repeat_on_fresh_databases(
    name: str, runs: int, streamers: int, measure_one: Callable[[str, int, BenchDatabase], dict[str, Any]],
    out: Path | None,
) -> list[dict[str, Any]]:
    """`runs` times: a fresh migrated database with `streamers` rows on the bench's embedded
    PostgreSQL, `measure_one(url, index, db)`, the load before and after; each run printed as a
    JSON line, all of them written to `out` (with PostgreSQL's settings) when given."""
    results = []
    with tempfile.TemporaryDirectory(prefix=f"kick-{name}-") as tmp:
        db = BenchDatabase(Path(tmp)).start()
        try:
            for index in range(runs):
                url = db.fresh(f"{name}_{index}")
                seed(url, streamers)
                result: dict[str, Any] = {"run": index + 1, "load_before": measure.loadavg()}
                result.update(measure_one(url, index, db))
                result["load_after"] = measure.loadavg()
                print(json.dumps(result), flush=True)
                results.append(result)
            info = db.info()
        finally:
            db.stop()
    if out:
        out.write_text(json.dumps({"scenario": f"{name} (kick_tools.bench)", "postgres": info, "runs": results},
                                  indent=2) + "\n")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--streamers", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if min(args.changes, args.batch, args.streamers, args.connections, args.runs) <= 0:
        parser.error("--changes, --batch, --streamers, --connections and --runs must be positive")
    repeat_on_fresh_databases(
        "floor", args.runs, args.streamers,
        lambda url, _, db: run_at_once(url, args.changes, args.batch, args.streamers, args.connections,
                                       db.postmaster_pid()), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
