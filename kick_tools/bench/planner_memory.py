"""Where the planner's memory goes at 100,000 streamers: the real Planner role in one process (issue 18).

S3 measures the planner as one figure (PSS ~79 MB in round 4, 53 MB in round 2) and cannot say
why. This harness runs the product's `workers.planner.Planner` itself — its loop, its helper
threads (leases, id resolver, pruner, webhook sync) and their connections — against the bench's
embedded PostgreSQL seeded with `--streamers` rows, with `--shards` real `AssignmentClient`s
(in a small forked child, so their memory is not counted) that say Hello, take their Assign and
report themselves on Pusher, as workers do. At each checkpoint (imports only, role built and
booted, every shard assigned, after each further reload with `--flip` of the streamers changed
in between, after `malloc_trim`) it prints one JSON line: /proc/self/smaps_rollup (RSS,
private), glibc's arenas (`malloc_info`: one per thread that allocated), pymalloc's arenas, the
objects the planner holds, and with `--trace` tracemalloc's top allocations by line and by file
(run without `--trace` for the memory figures: tracing costs memory of its own).

    python -m kick_tools.bench.planner_memory [--streamers 100000] [--shards 20] [--reloads 3] [--trace]

The imports are the coordinator's (`workers.coordinator` and `kick_monitor.preload`), so the
`imported` checkpoint is what a forked planner starts from; everything after it is the planner's.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import re
import select
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

MB = 1 << 20


# -- what the process holds ---------------------------------------------------------------
def smaps() -> dict[str, float]:
    """RSS, PSS, private and anonymous memory of this process (MB), from /proc/self/smaps_rollup."""
    found: dict[str, float] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        found[key] = int(value.split()[0]) / 1024
    return {
        "rss": round(found["Rss"], 1), "pss": round(found["Pss"], 1),
        "private": round(found["Private_Clean"] + found["Private_Dirty"], 1),
        "anonymous": round(found["Anonymous"], 1),
    }


_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.fopen.restype = ctypes.c_void_p
_libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_libc.fclose.argtypes = [ctypes.c_void_p]
_libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]


def glibc_arenas(scratch: Path) -> list[dict[str, float]]:
    """Per glibc arena: memory taken from the system and how much of it is free (MB), via malloc_info()."""
    fp = _libc.fopen(str(scratch).encode(), b"w")
    _libc.malloc_info(0, fp)
    _libc.fclose(fp)
    text = scratch.read_text()
    arenas = []
    for nr, body in re.findall(r'<heap nr="(\d+)">(.*?)</heap>', text, re.S):
        system = re.search(r'<system type="current" size="(\d+)"', body)
        free = sum(int(size) for size in re.findall(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"', body))
        arenas.append({"nr": int(nr), "system": round(int(system.group(1)) / MB, 1) if system else 0.0,
                       "free": round(free / MB, 1)})
    mmapped = re.search(r'<total type="mmap" count="(\d+)" size="(\d+)"/>\s*<system type="current"', text)
    if mmapped:
        arenas.append({"nr": -1, "system": round(int(mmapped.group(2)) / MB, 1), "free": 0.0})  # big blocks
    return arenas


def pymalloc(scratch: Path) -> dict[str, float]:
    """pymalloc's arenas (MB): taken from the system, used by live objects, free inside (pinned: an arena
    goes back to the system only when every pool in it is empty)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(scratch, "w") as out:
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    text = scratch.read_text()

    def number(label: str) -> float:
        found = re.search(re.escape(label) + r"\s*=\s*([\d,]+)", text)
        return int(found.group(1).replace(",", "")) / MB if found else 0.0

    arenas = re.search(r"\d+ arenas \* \d+ bytes/arena\s*=\s*([\d,]+)", text)
    total = int(arenas.group(1).replace(",", "")) / MB if arenas else 0.0
    used = number("# bytes in allocated blocks")
    return {"arenas": round(total, 1), "used": round(used, 1), "free": round(total - used, 1)}


def planner_objects(planner: Any) -> dict[str, int]:
    """Counts of what the planner holds: refs per structure, distinct objects, queued bytes."""
    plan = {id(ref) for shard in planner.plan.values() for ref in shard.values()}
    planned = {id(ref) for shard in getattr(planner, "planned", {}).values() for ref in shard.values()}
    outbox = sum(len(ch._outbox) for ch in planner.server._channels.values())
    return {"plan_refs": len(plan), "planned_refs": len(planned), "distinct_refs": len(plan | planned),
            "outbox_bytes": outbox, "threads": threading.active_count(), "gc_objects": len(gc.get_objects())}


def top_allocations(limit: int) -> dict[str, Any]:
    """tracemalloc's view: total traced, top lines, top files, top tracebacks."""
    snap = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
    total = sum(stat.size for stat in snap.statistics("filename"))

    def short(name: str) -> str:
        for marker in ("site-packages/", "kick-monitor/", "planner-mem/", "lib/python3"):
            if marker in name:
                return name.split(marker, 1)[1]
        return name

    by_line = [f"{stat.size / MB:.2f} MB {stat.count} {short(stat.traceback[0].filename)}:{stat.traceback[0].lineno}"
               for stat in snap.statistics("lineno")[:limit]]
    by_file = [f"{stat.size / MB:.2f} MB {stat.count} {short(stat.traceback[0].filename)}"
               for stat in snap.statistics("filename")[:limit]]
    by_trace = []
    for stat in snap.statistics("traceback")[:5]:
        frames = " < ".join(f"{short(f.filename)}:{f.lineno}" for f in stat.traceback)
        by_trace.append(f"{stat.size / MB:.2f} MB {stat.count} {frames}")
    return {"traced_mb": round(total / MB, 1), "by_line": by_line, "by_file": by_file, "by_traceback": by_trace}


# -- the fake workers ---------------------------------------------------------------------
def run_workers(address: str, shards: int) -> None:
    """In a forked child: one real AssignmentClient per shard; report on Pusher, watching what was assigned."""
    from kick_monitor import messages
    from kick_monitor.assignment import AssignmentClient
    from kick_monitor.messages import Assign, Subscribe, Unsubscribe

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()
    clients = [AssignmentClient(address, shard) for shard in range(shards)]
    watching: list[set[int]] = [set() for _ in range(shards)]
    while os.getppid() == parent:
        now = time.monotonic()
        fds = [fd for fd in (c.fileno() for c in clients) if fd is not None]
        wfds = [fd for fd in (c.fileno() for c in clients if c.wants_write) if fd is not None]
        readable, _, _ = select.select(fds, wfds, [], 0.1)
        for i, client in enumerate(clients):
            for message in client.service(now, client.fileno() in readable):
                if isinstance(message, Assign):
                    watching[i] = {ref.streamer_id for ref in message.streamers}
                elif isinstance(message, Subscribe):
                    watching[i].update(ref.streamer_id for ref in message.streamers)
                elif isinstance(message, Unsubscribe):
                    watching[i].difference_update(message.streamer_ids)
            if client.connected and hasattr(client, "tell_state"):  # issue 17's WorkerState (not in round 2)
                client.tell_state(messages.WorkerState(i, True, len(watching[i])))
    os._exit(0)


# -- the database -------------------------------------------------------------------------
SEED = """
INSERT INTO kick_monitor.streamers (username, kick_user_id, channel_id, status, livestream_id)
SELECT 'streamer_' || i, 1000000 + i, 2000000 + i,
       CASE WHEN i %% 10 = 0 THEN 'online' ELSE 'offline' END,
       CASE WHEN i %% 10 = 0 THEN 5000000 + i END
FROM generate_series(1, %s) AS i
"""
FLIP = """
UPDATE kick_monitor.streamers SET
    status = CASE WHEN status = 'online' THEN 'offline' ELSE 'online' END,
    livestream_id = CASE WHEN status = 'online' THEN NULL ELSE 9000000 + id + %s END
WHERE (id * 7919 + %s) %% 1000 < %s
"""
STARTED = """
UPDATE kick_monitor.streamers SET stream_started_at = now() - interval '1 hour'
WHERE status = 'online' AND stream_started_at IS NULL
"""  # where the column exists (not in round 2): the open broadcast's start, as the writer keeps it


def sql(url: str, statement: str, args: tuple[Any, ...] = ()) -> None:
    import psycopg2

    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute(statement, args)
        cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = 'kick_monitor'"
                    " AND table_name = 'streamers' AND column_name = 'stream_started_at'")
        if cur.fetchone():
            cur.execute(STARTED)
        cur.execute("ANALYZE kick_monitor.streamers")
    conn.close()


def agree(url: str, shards: int, settings_ttl: float) -> None:
    """What the coordinator does before forking: the deployment's shard count and its lease rows."""
    import psycopg2

    import workers.planner
    from kick_monitor import __version__

    if not hasattr(workers.planner, "LeaseKeeper"):
        return  # before issue 17 (round 2): no shard leases
    from kick_monitor import leases

    conn = psycopg2.connect(url)
    try:
        leases.agree_shard_count(conn, shards, leases.Node.this("all", __version__), settings_ttl)
    finally:
        conn.close()


# -- the run ------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streamers", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--reloads", type=int, default=3, help="reloads after the first, each after a flip")
    parser.add_argument("--flip", type=float, default=0.05, help="share of streamers changed before each reload")
    parser.add_argument("--trace", action="store_true", help="tracemalloc's top allocations (costs memory)")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--fork", action="store_true",
                        help="run the planner in a child forked after gc.freeze(), as the coordinator does")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=os.environ.get("PLANNER_MEM_LOG", "WARNING"),
                        format="%(threadName)s %(name)s %(message)s")

    # the coordinator's imports: what a forked planner starts from
    import workers.coordinator  # noqa: F401
    from kick_monitor.preload import preload_role_modules

    preload_role_modules()
    from kick_monitor.config import load_settings
    from kick_monitor.framing import bind_listener
    from kick_monitor.preload import release_free_memory
    from kick_monitor.process import Heartbeats
    from kick_monitor.role import RoleContext
    from kick_tools.bench.harness import BenchDatabase
    from workers.planner import Planner

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kick-planner-mem-") as tmp:
        work = Path(tmp)
        scratch = work / "scratch.txt"
        db = BenchDatabase(work / "pg").start()
        worker_pid = 0
        planner: Any = None
        try:
            url = db.fresh("planner_mem")
            sql(url, SEED, (args.streamers,))
            agree(url, args.shards, settings_ttl=15.0)
            address = str(work / "planner.sock")
            listener = bind_listener(address)
            worker_pid = os.fork()
            if worker_pid == 0:
                try:
                    listener.close()
                    run_workers(address, args.shards)
                finally:
                    os._exit(1)
            settings = load_settings(environ={
                "KICK_MONITOR_DATABASE_URL": url, "KICK_MONITOR_DATA_DIR": str(work / "data"),
                "KICK_MONITOR_CLIENT_ID": "bench-client", "KICK_MONITOR_CLIENT_SECRET": "bench-secret",
                "KICK_MONITOR_API_BASE_URL": "http://127.0.0.1:9/public/v1",  # nothing listens: no request leaves
                "KICK_MONITOR_OAUTH_TOKEN_URL": "http://127.0.0.1:9/oauth/token",
                "KICK_MONITOR_WEB_API_BASE_URL": "http://127.0.0.1:9/api",
                "KICK_MONITOR_LOG_LEVEL": "WARNING",
            })
            ours, theirs = __import__("socket").socketpair()
            ctx = RoleContext(
                kind="planner", name="planner", tree="all", settings=settings, database_url=url, control=theirs,
                heartbeats=Heartbeats(1), slot=0, shard_count=args.shards, shards=tuple(range(args.shards)),
                listener=listener, data_dir=work / "data",
            )
            gc.collect()
            release_free_memory()

            def measure() -> None:
                nonlocal planner
                if args.trace:
                    tracemalloc.start(args.frames)

                def checkpoint(name: str, started: float) -> None:
                    row: dict[str, Any] = {"checkpoint": name, "seconds": round(time.monotonic() - started, 2),
                                           **smaps(), "glibc": glibc_arenas(scratch), "pymalloc": pymalloc(scratch)}
                    if planner is not None:
                        row.update(planner_objects(planner), reloads=reloads[0])
                    if args.trace:
                        row["tracemalloc"] = top_allocations(args.top)
                    print(json.dumps(row), flush=True)
                    results.append(row)

                t0 = time.monotonic()
                checkpoint("imported", t0)
                planner = Planner(ctx)
                reloads = [0]
                real_reload = planner.reload

                def counted_reload(now: float) -> None:
                    reloads[0] += 1
                    real_reload(now)

                planner.reload = counted_reload
                planner.boot()
                time.sleep(1.0)  # the helper threads' first rounds
                checkpoint("booted", t0)

                def all_assigned() -> bool:
                    if not hasattr(planner.server, "states"):  # round 2: no WorkerState; every Hello answered, sent
                        return (sum(len(planner.plan[s]) for s in planner.plan) == args.streamers and not planner.hellos
                                and len(planner.server.connected_shards() if hasattr(planner.server, "connected_shards")
                                        else set(planner.server._shard_of.values())) == args.shards
                                and not any(ch._outbox for ch in planner.server._channels.values()))
                    states = planner.server.states
                    held = sum(len(planner.plan[s]) for s in planner.plan)
                    return (held == args.streamers and len(states) == args.shards
                            and all(states[s].watching == len(planner.plan[s]) for s in planner.plan))

                def run_until(done: Any, limit: float) -> None:
                    deadline = time.monotonic() + limit
                    while not done() and time.monotonic() < deadline:
                        planner.beat()
                        planner.step()
                    if not done():
                        raise RuntimeError(
                            f"the planner did not get there in time: leased {sorted(getattr(planner, 'leased', []))},"
                            f" states {getattr(planner.server, 'states', None)}, hellos {planner.hellos},"
                            f" shards {planner.server._shard_of}, plan {[len(p) for p in planner.plan.values()]},"
                            f" loaded {planner.loaded_at}")

                run_until(all_assigned, float(os.environ.get('PLANNER_MEM_WAIT', '120')))
                settle = time.monotonic() + 2.0
                run_until(lambda: time.monotonic() > settle, 5.0)
                checkpoint("assigned", t0)
                for index in range(args.reloads):
                    sql(url, FLIP, (index * 1000, index, int(args.flip * 1000)))
                    loaded = planner.loaded_at
                    planner.schedule_reload(time.monotonic())
                    run_until(lambda: planner.loaded_at > loaded, 60.0)  # noqa: B023
                    settle = time.monotonic() + 1.0
                    run_until(lambda: time.monotonic() > settle, 5.0)  # noqa: B023
                    checkpoint(f"reload {index + 2}", t0)
                gc.collect()
                release_free_memory()
                checkpoint("gc + malloc_trim", t0)
                planner.stopping = True
                if hasattr(planner, "leases"):
                    planner.leases.stop(release=True)
                for duty in ("resolver", "pruner", "webhook_sync"):
                    if hasattr(planner, duty):
                        getattr(planner, duty).stop()
                planner.server.close()
                planner.close_database()
                ours.close()

            if args.fork:  # as the coordinator does: imports shared, gc.freeze(), then the planner forked
                gc.freeze()
                planner_pid = os.fork()
                if planner_pid == 0:
                    code = 1
                    try:
                        measure()
                        (work / "child.json").write_text(json.dumps(results))
                        code = 0
                    finally:
                        os._exit(code)
                os.waitpid(planner_pid, 0)
                results.extend(json.loads((work / "child.json").read_text()))
            else:
                measure()
        finally:
            if worker_pid:
                os.kill(worker_pid, signal.SIGTERM)
                os.waitpid(worker_pid, 0)
            db.stop()
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "checkpoints": results},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
