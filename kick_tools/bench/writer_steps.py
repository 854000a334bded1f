"""Where the writer's time goes, step by step, for W's batches (issue 18).

Runs the product's own batch steps (`kick_monitor.status_store`: the locking read, the plan, the
encoding, the write and its commit) on 500-change batches like W's feeders send (alternating
start/end per streamer, 100,000 streamers, a fresh migrated database on the bench's embedded
PostgreSQL) and reports, per change, the wall time of each step, the writer's CPU, and the
PostgreSQL backend's CPU of the read and of the write. `--explain` prints EXPLAIN ANALYZE of one
write statement. No processes of the product: this isolates the statements from the hand-off.

    python -m kick_tools.bench.writer_steps [--changes 100000] [--batch 500] [--runs 3] [--explain]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2

from kick_monitor import status_store
from kick_monitor.change_plan import plan_batch
from kick_monitor.messages import StatusChange
from kick_tools.bench.floor import backend_cpu, repeat_on_fresh_databases


def changes_like_w(streamers: int, batch: int, total: int) -> Iterator[list[StatusChange]]:
    """Batches of W's feed: each streamer in turn goes online (a new livestream) then offline."""
    online: set[int] = set()
    made = 0
    while made < total:
        out = []
        now, mono = time.time(), time.monotonic()
        for _ in range(min(batch, total - made)):
            channel = made % streamers + 1
            going = channel not in online
            if going:
                online.add(channel)
            else:
                online.discard(channel)
            out.append(StatusChange(
                f"steps:{made}", channel, "online" if going else "offline", "pusher",
                "App\\Events\\StreamerIsLive" if going else "App\\Events\\StopStreamBroadcast",
                100_000_000 + channel + (made // streamers) * streamers, None, now if going else None, now, mono, 0,
                1, made + 1, channel,
            ))
            made += 1
        yield out


def run(url: str, streamers: int, batch: int, total: int, explain: bool) -> dict[str, object]:
    conn = psycopg2.connect(url)
    status_store.prepare(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend = cur.fetchone()[0]  # type: ignore[index]
    conn.commit()
    conn.autocommit = True
    wall = dict.fromkeys(("read", "plan", "encode", "write"), 0.0)
    pg = dict.fromkeys(("read", "write"), 0.0)
    me0 = time.process_time()
    started = time.perf_counter()
    done = 0
    with conn.cursor() as cur:
        for changes in changes_like_w(streamers, batch, total):
            t0, c0 = time.perf_counter(), backend_cpu(backend)
            rows, keyed = status_store.read_rows(cur, changes, begin=True)
            t1, c1 = time.perf_counter(), backend_cpu(backend)
            plan = plan_batch(keyed, rows, status_store.BROADCAST_MATCH_TOLERANCE)
            t2 = time.perf_counter()
            params = status_store.encode_plan(plan, status_store.BROADCAST_MATCH_TOLERANCE)
            t3 = time.perf_counter()
            if explain and done >= total // 2:
                cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + status_store.WRITE_AND_COMMIT.removesuffix("; COMMIT"),
                            params)
                print("\n".join(r[0] for r in cur.fetchall()))
                cur.execute("ROLLBACK")
                explain = False
                continue
            cur.execute(status_store.WRITE_AND_COMMIT, params)
            t4, c4 = time.perf_counter(), backend_cpu(backend)
            wall["read"] += t1 - t0
            wall["plan"] += t2 - t1
            wall["encode"] += t3 - t2
            wall["write"] += t4 - t3
            pg["read"] += c1 - c0
            pg["write"] += c4 - c1
            done += len(changes)
    elapsed = time.perf_counter() - started
    me = time.process_time() - me0
    conn.close()
    per = 1e6 / done
    return {
        "changes": done, "changes_per_s": round(done / elapsed, 1),
        "wall_us_per_change": {k: round(v * per, 1) for k, v in wall.items()},
        "postgres_cpu_us_per_change": {k: round(v * per, 1) for k, v in pg.items()},
        "writer_cpu_us_per_change": round(me * per, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--streamers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of one write half way")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    repeat_on_fresh_databases(
        "writer_steps", args.runs, args.streamers,
        lambda url, index, _: run(url, args.streamers, args.batch, args.changes, args.explain and index == 0),
        args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
