"""`kick-monitor bench --scenario soak` (`make soak`, `DURATION=7200` for hours): 24/7 in miniature.

10,000 streamers with steady flips and channel noise for `duration` (30 min by default), while
faults come on a schedule: a worker SIGKILLed every `kill_every` (round robin over the shards),
every connection dropped every `drop_every`, the Kick API rate-limited for a minute every
`rate_limit_every`, and PostgreSQL stopped (for `pg_down` s) and started once, half-way
(`--pg-restarts N`: N times, evenly spaced). Every
`sample_every` s: RSS/PSS/private, fds and threads of every process of the service tree by
role slot (`footprint.take_sample`), the writer's backlog and each worker's unacknowledged
changes (the metrics endpoint), the spool's size on disk. Table sizes at start and end. Then the
flips stop, reconciliation settles, and the run is judged by `soak_rules` (the issue's rule).

Results: `<date>-soak.json`, `.md` and `<date>-soak-memory.png` (private and PSS over time,
one panel per role). `--duration 60` is the smoke version (faults compressed to fit).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psycopg2
import requests
from psycopg2 import sql

from kick_tools.bench import footprint, measure, soak_rules
from kick_tools.bench.harness import Stack, wait_until
from kick_tools.bench.scenarios import BenchContext, start_pipeline
from kick_tools.harness import free_port


@dataclass(frozen=True)
class SoakPlan:
    duration: float = 1800.0
    streamers: int = 10_000
    flip_rate: float = 20.0  # transitions/s, Poisson
    noise_rate: float = 200.0  # non-lifecycle frames/s on the subscribed channels
    sample_every: float = 10.0
    warmup: float = 300.0
    kill_every: float = 180.0
    drop_every: float = 600.0
    rate_limit_every: float = 420.0
    rate_limit_for: float = 60.0
    pg_restarts: int = 1  # PostgreSQL stopped for `pg_down` this many times, evenly spaced (one: at the half)
    pg_down: float = 10.0
    fault_window: float = 15.0  # seconds after a fault in which missed frames are expected
    reconcile_interval: float = 60.0

    def pg_stop_times(self) -> list[float]:
        """Seconds after the start at which PostgreSQL is stopped: the duration cut into `pg_restarts + 1`
        equal parts (more than one outage tells a one-off step of memory at a restart from growth per outage)."""
        return [self.duration * k / (self.pg_restarts + 1) for k in range(1, self.pg_restarts + 1)]

    def fitted(self, duration: float | None, quick: bool) -> SoakPlan:
        """The plan for `duration`: a short run compresses warm-up and fault spacing to fit."""
        total = duration or (60.0 if quick else self.duration)
        plan = replace(self, duration=total, streamers=300 if quick else self.streamers)
        if total >= 2 * self.warmup + self.drop_every:
            return plan
        return replace(plan, warmup=total / 4, kill_every=total / 3, drop_every=total / 2,
                       rate_limit_every=total / 2.5, rate_limit_for=min(self.rate_limit_for, total / 10),
                       sample_every=min(self.sample_every, max(2.0, total / 30)), pg_down=min(self.pg_down, 5.0),
                       reconcile_interval=min(self.reconcile_interval, 30.0))


class Faults:
    """The fault schedule, applied from the sampling loop; each fault's window is recorded."""

    def __init__(self, plan: SoakPlan, sim: Any, service_pid: int, ctx: BenchContext, t0: float) -> None:
        self.plan, self.sim, self.service_pid, self.ctx, self.t0 = plan, sim, service_pid, ctx, t0
        self.events: list[dict[str, Any]] = []
        self.windows: list[tuple[float, float]] = []
        self.next_kill = plan.kill_every
        self.next_drop = plan.drop_every
        self.next_limit = plan.rate_limit_every
        self.limit_until: float | None = None
        self.pg_stops = plan.pg_stop_times()
        self.pg_back_at: float | None = None
        self.kills = 0

    def record(self, kind: str, at: float, **detail: Any) -> None:
        self.events.append({"kind": kind, "t": round(at, 1), "wall": time.time(), **detail})
        self.ctx.say(f"soak t={at:.0f}s: {kind} {detail or ''}".rstrip())

    def window(self, seconds: float) -> None:
        now = time.time()
        self.windows.append((now - measure.IN_FLIGHT, now + seconds))

    def apply(self, at: float) -> None:
        plan = self.plan
        if at >= self.next_kill:
            self.next_kill += plan.kill_every
            workers = sorted(slot for slot in footprint.service_slots(self.service_pid) if slot.startswith("worker"))
            if workers:
                slot = workers[self.kills % len(workers)]
                pid = footprint.service_slots(self.service_pid).get(slot)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                    self.kills += 1
                    self.window(plan.fault_window)
                    self.record("sigkill", at, slot=slot, pid=pid)
        if at >= self.next_drop:
            self.next_drop += plan.drop_every
            dropped = self.sim.post("/control/drop", {})
            self.window(plan.fault_window)
            self.record("drop_all", at, dropped=dropped.get("dropped"))
        if self.limit_until is None and at >= self.next_limit:
            self.next_limit += plan.rate_limit_every
            self.sim.post("/control/rate_limit", {"requests": 2, "per_seconds": 10.0})
            self.limit_until = at + plan.rate_limit_for
            self.record("api_rate_limited", at, seconds=plan.rate_limit_for)
        elif self.limit_until is not None and at >= self.limit_until:
            self.sim.post("/control/rate_limit", {"requests": None})
            self.limit_until = None
            self.record("api_rate_limit_lifted", at)
        if self.pg_stops and self.pg_back_at is None and at >= self.pg_stops[0]:
            self.pg_stops.pop(0)
            self.ctx.db.pg.stop(force=True)
            self.pg_back_at = at + plan.pg_down
            self.record("postgres_stopped", at)
        elif self.pg_back_at is not None and at >= self.pg_back_at:
            self.pg_back_at = None
            self.ctx.db.pg.restart_after_stop()
            self.window(plan.fault_window)
            self.record("postgres_started", at)

    def finish(self) -> None:
        """Undo what is still on (a run cut short must leave the database up)."""
        if self.limit_until is not None:
            with contextlib.suppress(Exception):
                self.sim.post("/control/rate_limit", {"requests": None})
        if self.pg_back_at is not None or not self.ctx.db.pg.is_running():
            self.ctx.db.pg.restart_after_stop()


METRICS = {"kick_monitor_writer_queue_depth": "writer_backlog", "kick_monitor_worker_unacked_changes": "unacked",
           "kick_monitor_spool_bytes": "spool_bytes_metric"}


def scrape(port: int) -> dict[str, float]:
    """Writer backlog, unacknowledged changes (summed over shards) and spool bytes from /metrics."""
    found: dict[str, float] = defaultdict(float)
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.RequestException:
        return {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in METRICS:
            with contextlib.suppress(ValueError, IndexError):
                found[METRICS[name]] += float(line.rsplit(" ", 1)[1])
    return dict(found)


def directory_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def table_sizes(url: str) -> dict[str, dict[str, int]]:
    """Rows and bytes (table + indexes + toast) of every kick_monitor table."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
                        " JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname = 'kick_monitor' AND c.relkind = 'r' ORDER BY 1")
            sizes = {name: {"bytes": int(size)} for name, size in cur.fetchall()}
            for name in sizes:
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("kick_monitor", name)))
                row = cur.fetchone()
                sizes[name]["rows"] = int(row[0]) if row else 0
        conn.rollback()
        return sizes
    finally:
        conn.close()


def run_soak(ctx: BenchContext, index: int = 0) -> dict[str, Any]:
    """One soak run; see the module docstring."""
    plan = SoakPlan(pg_restarts=ctx.pg_restarts).fitted(ctx.duration, ctx.quick)
    run_dir = ctx.run_dir("soak", index)
    url = ctx.db.fresh(f"bench_soak_{index}")
    port = free_port()
    settings = {"metrics_port": str(port), "reconcile_interval": str(plan.reconcile_interval)}
    result: dict[str, Any] = {"run": index + 1, "load_before": measure.loadavg(), "plan": asdict(plan)}
    samples: list[dict[str, Any]] = []
    random.seed(index)
    with Stack() as stack:
        sim, service, start = start_pipeline(ctx, stack, run_dir, url, streamers=plan.streamers, shards=None,
                                              seed=index + 1, noise=True, settings=settings)
        result.update(start)
        result["tables_start"] = table_sizes(url)
        sim.post("/control/noise", {"rate": plan.noise_rate})
        sim.post("/control/flip", {"rate": plan.flip_rate, "duration": plan.duration})
        t0, started_wall = time.monotonic(), time.time()
        faults = Faults(plan, sim, service.pid, ctx, t0)
        spool = run_dir / "data" / "spool"
        try:
            next_sample = 0.0
            while (at := time.monotonic() - t0) < plan.duration:
                if not service.process.running():
                    raise RuntimeError(f"kick-monitor run exited:\n{service.process.log_tail()}")
                faults.apply(at)
                if at >= next_sample:
                    next_sample += plan.sample_every
                    samples.append(sample_now(at, service.pid, port, spool))
                time.sleep(0.2)
        finally:
            faults.finish()
        sim.post("/control/flip/wait", {"timeout": 120}, timeout=150)
        sim.post("/control/noise", {"rate": 0.0})
        flips_ended = time.monotonic() - t0
        converge_s = converge(url, sim, timeout=2 * plan.reconcile_interval + 60)
        for _ in range(3):  # the levels after everything settled
            time.sleep(plan.sample_every)
            samples.append(sample_now(time.monotonic() - t0, service.pid, port, spool))
        truth = sim.truth()
        rows = measure.fetch_history(url)
        explained = (url, truth, started_wall)
        mismatches = measure.state_mismatches(url, sim.streamers())
        result["tables_end"] = table_sizes(url)
        result["service_exit"] = service.stop()
    with service.process.log_path.open(errors="replace") as log_file:
        crashes = soak_rules.role_crashes(log_file)
    result.update(judge(samples, plan, truth, rows, faults.windows, flips_ended, mismatches, started_wall, crashes))
    try:  # an explanation that fails must not cost the run's result
        explain_history(result["history"], *explained)
    except Exception as exc:  # recorded in the result; the counts stand
        result["history"]["explain_error"] = repr(exc)
    result.update(faults=faults.events, converge_s=round(converge_s, 1), load_after=measure.loadavg(),
                  _samples=samples)
    return result


HISTORY_COLUMNS = ("id", "change_id", "source", "event", "status", "previous_status", "livestream_id",
                   "occurred_at", "received_at", "order_generation", "order_seq", "inferred", "broadcast_id",
                   "recorded_at")
AROUND = 120.0  # seconds of a lost transition's channel history shown on either side


def channel_history(url: str, channel_id: int, since: float | None = None,
                    until: float | None = None) -> list[dict[str, Any]]:
    """A channel's history rows (every column that tells how a row got there), in history order; times
    as epoch seconds. `since`/`until` bound received_at."""
    rows = measure.fetch_rows(
        url,
        "SELECT id, change_id, source, event, status, previous_status, livestream_id,"
        " extract(epoch FROM occurred_at)::float8, extract(epoch FROM received_at)::float8,"
        " order_generation, order_seq, inferred, broadcast_id, extract(epoch FROM recorded_at)::float8"
        " FROM kick_monitor.status_events WHERE channel_id = %s"
        " AND (%s::float8 IS NULL OR received_at >= to_timestamp(%s::float8))"
        " AND (%s::float8 IS NULL OR received_at <= to_timestamp(%s::float8))"
        " ORDER BY order_generation, order_seq, received_at, id",
        (channel_id, since, since, until, until))
    return [dict(zip(HISTORY_COLUMNS, row, strict=True)) for row in rows]


def explain_history(history: dict[str, Any], url: str, truth: Sequence[dict[str, Any]], started_wall: float) -> None:
    """Attach to each duplicated example all its history rows, and to each lost one the channel's history
    and the simulator's transitions within AROUND s of it: the counts alone cannot say which path wrote
    a row twice or dropped one."""
    for example in history.get("duplicated_examples", []):
        rows = channel_history(url, example["channel_id"])
        for row in rows:
            row["t"] = round(row["received_at"] - started_wall, 3)
        example["history"] = [r for r in rows
                              if r["status"] == example["status"] and r["livestream_id"] == example["livestream_id"]]
        times = [r["received_at"] for r in example["history"]]
        example["around"] = [r for r in rows if any(abs(r["received_at"] - at) <= AROUND for at in times)]
        example["truth"] = _truth_near(truth, example["channel_id"], times, started_wall)
    for example in history.get("lost_examples", []):
        sent = example["sent_wall"]
        example["history"] = channel_history(url, example["channel_id"], sent - AROUND, sent + AROUND)
        for row in example["history"]:
            row["t"] = round(row["received_at"] - started_wall, 3)
        example["truth"] = _truth_near(truth, example["channel_id"], [sent], started_wall)


def _truth_near(truth: Sequence[dict[str, Any]], channel_id: int, times: Sequence[float],
                started_wall: float) -> list[dict[str, Any]]:
    """The simulator's transitions of a channel within AROUND s of any of `times`."""
    return [{k: t.get(k) for k in ("seq", "status", "previous_status", "livestream_id", "event", "sent_wall",
                                    "delivered")} | {"t": round(t["sent_wall"] - started_wall, 3)}
            for t in truth
            if t["channel_id"] == channel_id and any(abs(t["sent_wall"] - at) <= AROUND for at in times)]


def describe_examples(history: dict[str, Any]) -> list[str]:
    """One Markdown note per example: the key, then its rows in short form."""
    def short(row: dict[str, Any]) -> str:
        return (f"t={row.get('t')} {row['source']}/{row['event']} {row['previous_status']}→{row['status']}"
                f" ls={row['livestream_id']} gen/seq={row['order_generation']}/{row['order_seq']}"
                f"{' inferred' if row['inferred'] else ''} bc={row['broadcast_id']} change_id={row['change_id']}"
                f" recorded+{(row['recorded_at'] - row['received_at']) * 1000:.0f}ms")

    notes = []
    for kind in ("duplicated", "lost"):
        for example in history.get(f"{kind}_examples", []):
            head = (f"{kind.upper()} channel {example['channel_id']} {example['status']}"
                    f" ls={example['livestream_id']} sent t={example.get('t')}")
            rows = "; ".join(short(r) for r in example.get("around", example.get("history", []))) or "no rows"
            truth = "; ".join(f"t={t['t']} {t['previous_status']}→{t['status']} ls={t['livestream_id']}"
                              f"{'' if t['delivered'] else ' (not delivered)'}" for t in example.get("truth", []))
            notes.append(f"{head}: rows: {rows}" + (f" | truth: {truth}" if truth else ""))
    return notes


def sample_now(at: float, service_pid: int, port: int, spool: Path) -> dict[str, Any]:
    slots = footprint.take_sample(footprint.service_slots(service_pid))
    return {"t": round(at, 1), "slots": slots, **scrape(port), "spool_bytes": directory_bytes(spool)}


def converge(url: str, sim: Any, timeout: float) -> float:
    """Seconds until the database's state equals the simulator's (reconciliation repairs the rest)."""
    started = time.monotonic()
    streamers = sim.streamers()
    with contextlib.suppress(Exception):
        wait_until(lambda: measure.state_mismatches(url, streamers) == 0, timeout, interval=2.0,
                   what="state equal to truth")
    return time.monotonic() - started


def judge(samples: list[dict[str, Any]], plan: SoakPlan, truth: list[dict[str, Any]], rows: list[measure.Row],
          windows: list[tuple[float, float]], flips_ended: float, mismatches: int,
          started_wall: float = 0.0, crashes: dict[str, Any] | None = None) -> dict[str, Any]:
    slopes = soak_rules.memory_slopes(samples, plan.warmup)
    within = soak_rules.memory_slopes(samples, plan.warmup, within_pids=True)
    fds = soak_rules.returned_to_level(samples, "fds", plan.warmup, flips_ended, soak_rules.FD_TOLERANCE)
    threads = soak_rules.returned_to_level(samples, "threads", plan.warmup, flips_ended, soak_rules.THREAD_TOLERANCE)
    recorded: dict[tuple[int, str, int | None], int] = defaultdict(int)
    for row in rows:
        if not measure.is_start_reconciliation(row):
            recorded[(row.channel_id, row.status, row.livestream_id)] += 1
    exposed = [t for t in measure.status_transitions(truth) if t["delivered"]]
    history = soak_rules.classify_history(sorted(exposed, key=lambda t: t["sent_wall"]), recorded, windows)
    for example in history.get("lost_examples", []) + history.get("duplicated_examples", []):
        example["t"] = round(example["sent_wall"] - started_wall, 1)  # where it happened, next to the faults
    history["not_delivered"] = len(measure.status_transitions(truth)) - len(exposed)
    span = (samples[-1]["t"] if samples else 0.0) - plan.warmup
    outcome = soak_rules.verdict(slopes, fds, threads, history, mismatches, span, crashes)
    last = samples[-1]["slots"] if samples else {}
    return {
        "slopes_mb_per_h": slopes, "within_pid_slopes_mb_per_h": within, "fds": fds, "threads": threads,
        "history": history,
        "state_mismatches": mismatches, "crashes": crashes, **outcome,
        "max_slope_mb_per_h": max((s for s in slopes.values() if s is not None), default=None),
        "final_service": footprint.totals(last), "final_roles": footprint.by_role(last),
        "writer_backlog_max": max((s.get("writer_backlog", 0) for s in samples), default=0),
        "spool_bytes_max": max((s.get("spool_bytes", 0) for s in samples), default=0),
    }


def plot_memory(samples: list[dict[str, Any]], path: Path, title: str,
                faults: Sequence[dict[str, Any]] = ()) -> None:
    """Private (solid) and PSS (dotted) MB over time, one panel per role, one line per slot; faults as grey lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = sorted({footprint.role_of(slot) for s in samples for slot in s["slots"]})
    fig, axes = plt.subplots(len(roles), 1, figsize=(9, 2.2 * max(1, len(roles))), sharex=True, squeeze=False)
    for ax, role in zip(axes[:, 0], roles, strict=True):
        slots = sorted({slot for s in samples for slot in s["slots"] if footprint.role_of(slot) == role})
        for slot in slots:
            points = [(s["t"] / 60, s["slots"][slot]) for s in samples if slot in s["slots"]]
            line, = ax.plot([t for t, _ in points], [r["private_kb"] / 1024 for _, r in points], lw=1, label=slot)
            ax.plot([t for t, _ in points], [r["pss_kb"] / 1024 for _, r in points], lw=0.8, ls=":",
                    color=line.get_color())
        for fault in faults:
            ax.axvline(fault["t"] / 60, color="grey", lw=0.5, alpha=0.4)
        ax.set_ylabel(f"{role}\nMB")
        ax.grid(alpha=0.3)
        if len(slots) > 1:
            ax.legend(fontsize=6, ncol=4, loc="upper left")
    axes[-1, 0].set_xlabel("minutes (solid: private, dotted: PSS)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
