"""`kick-monitor bench --scenario S1` (the default; `make bench`) and friends.

    kick-monitor bench                       # S1, 3 runs of 60 s (about 4 minutes)
    kick-monitor bench --scenario S2,S4      # a comma list
    kick-monitor bench --scenario all        # everything (long: about an hour)
    kick-monitor bench --scenario W --runs 5 --out /tmp/results
    kick-monitor bench --scenario soak       # 30 min of faults (`make soak`; --duration 60: smoke)

Scenarios: S1 S2 S3 S4 (the product end to end), M (memory of every role at 2,000 streamers, or --streamers N),
W (the writer alone), and side by side
CW (our writer vs a naive one), CC (our Pusher client vs Pysher), CP (vs a REST poller).
Each writes `<out>/<date>-<scenario>.json`, `.md` and `.png`. Benchmarks report; they
never fail on a missed target (exit 1 only when a scenario could not run at all).
The benchmark always uses an embedded PostgreSQL of its own in a temporary work
directory — never the database in the settings, whose data it would disturb.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kick_monitor.config import Settings
from kick_tools.bench import measure, report, scenarios
from kick_tools.bench.harness import BenchDatabase, temporary_workdir

HELP = "run a benchmark scenario"
TAKES_SETTINGS = True
ALL = ("S1", "S2", "S3", "S4", "W", "CW", "CC", "CP", "M", "WH", "N")  # WH: webhooks (16), N: notifier (19)
EXTRA = ("SOAK",)  # not in `all`: it runs for half an hour or more
EXIT_OK, EXIT_FAILED = 0, 1


class SoakFailed(Exception):
    """The soak ran and its pass rule failed (the results are written): `make soak` exits 1."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default="S1", help=f"one of {', '.join(ALL)}, a comma list, or all")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default %(default)s)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load per run, overriding the scenario's (S1: 60)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder (%(default)s)")
    parser.add_argument("--work-dir", type=Path, default=None, help="parent of the temporary work directory")
    parser.add_argument("--keep-work", action="store_true", help="keep logs and the database afterwards")
    parser.add_argument("--quick", action="store_true", help="miniature sizes that run in seconds (smoke test)")
    parser.add_argument("--streamers", type=int, default=None,
                        help="M only: streamers (default 2,000; 5,000 is one worker at S3's load, one shard)")
    parser.add_argument("--pg-restarts", type=positive_count, default=1, metavar="N",
                        help="soak only: stop PostgreSQL N times, evenly spaced (default %(default)s: at the half)")
    parser.add_argument("--api-latency", type=non_negative_seconds, default=0.0, metavar="SECONDS",
                        help="S1, S2, S4: the simulator's official API answers this late (Kick's round trip is"
                             " 0.1–0.3 s; default 0: the simulator's 1–3 ms). Recorded in the result.")
    parser.add_argument("--service-setting", action="append", default=[], metavar="NAME=VALUE",
                        type=service_setting,
                        help="S1, S2, S4, N: run the service with this setting (a Settings field, e.g."
                             " batch_size=50), after the scenario's own; repeatable. Recorded in the result.")


def positive_count(text: str) -> int:
    """A whole number ≥ 1; argparse turns the ValueError into a usage error."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return value


def non_negative_seconds(text: str) -> float:
    """Seconds ≥ 0 (and finite); argparse turns the ValueError into a usage error."""
    value = float(text)
    if not 0.0 <= value < 60.0:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 60, got {text!r}")
    return value


def service_setting(text: str) -> tuple[str, str]:
    """`NAME=VALUE` naming a field of Settings; argparse turns the ValueError into a usage error."""
    name, sep, value = text.partition("=")
    name = name.strip().lower().replace("-", "_")
    if not sep or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if name not in Settings.model_fields:
        raise argparse.ArgumentTypeError(f"{name!r} is not a setting (see `kick-monitor run --help`)")
    return name, value.strip()


def selected(spec: str) -> list[str]:
    names = list(ALL) if spec.strip().lower() == "all" else [s.strip().upper() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ALL + EXTRA]
    if unknown or not names:
        raise SystemExit(f"kick-monitor bench: unknown scenario {', '.join(unknown) or spec!r}; choose from "
                         f"{', '.join(ALL + EXTRA)} or all")
    return names


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the chosen scenarios one after the other; a scenario that fails does not stop the rest."""
    names = selected(args.scenario)
    failed = 0
    unwind_on_sigterm()
    with temporary_workdir(args.work_dir, args.keep_work) as work:
        db = BenchDatabase(work / "pg").start()
        try:
            ctx = scenarios.BenchContext(work=work, db=db, runs=max(1, args.runs), quick=args.quick,
                                         duration=args.duration, say=say, streamers=args.streamers,
                                         keep_work=args.keep_work, pg_restarts=args.pg_restarts,
                                         service_settings=tuple(args.service_setting),
                                         api_latency=args.api_latency)
            machine = report.machine_info(db.info())
            speed = machine["host_speed"]
            say(f"host speed: {speed['python_ns_per_step']} ns a Python step, zlib {speed['zlib_mb_per_s']} MB/s"
                f" (load {measure.loadavg()[0]})")
            for name in names:
                say(f"== {name} ({ctx.runs} runs) — work dir {work}")
                try:
                    paths = run_scenario(name, ctx, machine, args.out)
                except SoakFailed as exc:
                    failed += 1
                    say(f"{name} FAILED its pass rule: {exc}")
                    continue
                except Exception as exc:
                    failed += 1
                    say(f"{name} could not run: {type(exc).__name__}: {exc}")
                    traceback.print_exc(file=sys.stderr)
                    continue
                say("wrote " + ", ".join(str(p) for p in paths))
        finally:
            db.stop(keep=args.keep_work)
        if args.keep_work:
            say(f"kept the work directory {work}")
    return EXIT_FAILED if failed == len(names) else EXIT_OK


def unwind_on_sigterm() -> None:
    """SIGTERM unwinds the run as Ctrl-C does, so the simulator, the service and the benchmark's
    PostgreSQL it started are stopped (found: a SIGTERMed bench left both running). A second
    SIGTERM during that clean-up is ignored rather than cutting it short."""
    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def repeat(ctx: scenarios.BenchContext, label: str, once: Callable[[int], dict[str, Any]]) -> tuple[
        list[dict[str, Any]], list[str]]:
    """`ctx.runs` runs of `once(index)`; a failed run is recorded and the others go on."""
    runs, errors = [], []
    for index in range(ctx.runs):
        started = time.monotonic()
        try:
            result = once(index)
        except Exception as exc:
            errors.append(f"{label} run {index + 1}: {type(exc).__name__}: {exc}")
            say(errors[-1])
            traceback.print_exc(file=sys.stderr)
            continue
        result["wall_s"] = round(time.monotonic() - started, 1)
        runs.append(result)
        say(f"{label} run {index + 1}: {headline(result)} (load {result.get('load_before')}, "
            f"{result['wall_s']} s)")
    if not runs:
        raise RuntimeError("; ".join(errors) or "no run completed")
    return runs, errors


def headline(run: dict[str, Any]) -> str:
    parts = []
    latency = run.get("latency_ms") or {}
    if latency.get("count"):
        parts.append(f"p50 {latency['p50']:.2f} ms p99 {latency['p99']:.2f} ms max {latency['max']:.1f} ms "
                      f"over {latency['count']}")
    if "verdict" in run:
        parts.append(f"lost {run['verdict']['lost_delivered']}")
    for key in ("throughput", "subscribed_s", "cpu_ratio_pysher_over_ours", "ratio_p50_at_60s"):
        if run.get(key) is not None:
            parts.append(f"{key} {run[key]}")
    if "drop" in run:
        parts.append(f"recovered {run['drop']['recovered_s']} s (half {run['drop'].get('half_recovered_s')} s)")
    return ", ".join(parts) or "done"


def base_result(name: str, title: str, machine: dict[str, Any], config: dict[str, Any],
                quick: bool = False) -> dict[str, Any]:
    if quick:
        title = f"{title} [--quick: miniature sizes, not the scenario's figures]"
    return {"scenario": name, "title": title, "date": dt.date.today().isoformat(),
            "started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine, "config": config}


def run_scenario(name: str, ctx: scenarios.BenchContext, machine: dict[str, Any], out: Path) -> list[Path]:
    builders: dict[str, Callable[[scenarios.BenchContext, dict[str, Any], Path], list[Path]]] = {
        "S1": lambda c, m, o: pipeline(scenarios.S1, c, m, o),
        "S2": lambda c, m, o: pipeline(scenarios.S2, c, m, o),
        "S4": lambda c, m, o: pipeline(scenarios.S4, c, m, o),
        "N": lambda c, m, o: pipeline(scenarios.N, c, m, o),  # notifier (issue 19)
        "S3": scale, "M": memory, "SOAK": soak, "W": writer, "CW": writer_compare, "CC": clients, "CP": polling,
        "WH": webhooks,  # issue 16
    }
    return builders[name](ctx, machine, out)


def finish(result: dict[str, Any], runs: list[dict[str, Any]], errors: list[str], summary: dict[str, Any],
           targets: tuple[scenarios.Target, ...], notes: list[str], out: Path, **plot: Any) -> list[Path]:
    result.update(runs=report.public_runs(runs), errors=errors, summary=summary,
                  targets=[t.check(summary) for t in targets], notes=notes)
    for target in result["targets"]:
        say(f"{result['scenario']} target {target['label']}: {target['value']} → {target['verdict']}")
    return report.write(result, out, **plot)


# -- the scenarios' reports -------------------------------------------------------------------


def pipeline(base: scenarios.PipelineScenario, ctx: scenarios.BenchContext, machine: dict[str, Any],
             out: Path) -> list[Path]:
    sc = scenarios.scaled(base, ctx)
    config = {k: v for k, v in vars(sc).items() if k not in ("targets", "name", "title")}
    result = base_result(sc.name, sc.title, machine, config, ctx.quick)
    runs, errors = repeat(ctx, sc.name, lambda i: scenarios.run_pipeline(sc, ctx, i))
    notes = [
        "Latency = status_events.recorded_at (clock_timestamp() at insert, inside the committing transaction)"
        " − the simulator's sent_wall for the frame; same host clock.",
        "lost = transitions the simulator delivered that are missing from the history (unknown→offline rows of"
        " the reconciliation at start are not transitions); cpu_per_1000_<role> = CPU seconds per 1,000"
        " committed transitions from flip start until the history was complete (noise included);"
        " wakeups_per_1000_<role> = voluntary context switches (sleeps ended by a wake-up) per 1,000 committed"
        " transitions over the same span: not seconds, so not scaled by the host's speed (it does move with how"
        " changes batch, which load changes).",
    ]
    if sc.noise_rate:
        notes.append(f"Noise: {sc.noise_rate:.0f} captured non-lifecycle frames/s on channel_{{id}}"
                     " (GoalProgressUpdate); chat frames travel on chatrooms.*, which the monitor never subscribes.")
    if sc.drop_at is not None:
        notes.append("Recovery = from the drop until every connection is back with all its subscriptions and the"
                     " last reconciliation repair (source api, event reconcile) is committed. Transitions sent"
                     " while disconnected cannot be in the history; their end state is repaired by"
                     " reconciliation (repairs, repair_p50_ms). Delivered transitions missing from the history"
                     " are split: in_flight = sent in the second before the drop (written to a socket that"
                     " was then aborted), after_missed = sent after the drop for a streamer whose previous"
                     " transition the worker never received (its state was stale until reconciliation"
                     " answered), other = anything else (a real loss). Latency figures are frame rows only.")
    return finish(result, runs, errors, scenarios.summarize_pipeline(runs), sc.targets, notes, out,
                  series={"frame→commit": [r["_latencies"] for r in runs],
                          "frame→read by worker": [r["_receive"] for r in runs],
                          "read→commit": [r["_read_to_commit"] for r in runs],
                          **({"reconciliation repair": [r["_repair"] for r in runs]} if sc.drop_at else {})},
                  bars={"p50": [r["latency_ms"].get("p50") for r in runs],
                        "p99": [r["latency_ms"].get("p99") for r in runs],
                        "max": [r["latency_ms"].get("max") for r in runs]}, bar_unit="ms")


def webhooks(ctx: scenarios.BenchContext, machine: dict[str, Any], out: Path) -> list[Path]:
    """Issue 16: the webhook receiver (kick_tools/bench/webhooks.py)."""
    from kick_tools.bench import webhooks as wh

    load = wh.WebhookLoad().scaled(ctx)
    result = base_result("WH", "webhook receiver: signed delivery → commit, deliveries/s of one receiver", machine,
                         vars(load), ctx.quick)
    runs, errors = repeat(ctx, "WH", lambda i: wh.run_webhooks(ctx, i))
    notes = [
        "`kick-monitor run` webhook-only (Pusher off); signed go-live deliveries on keep-alive loopback connections,"
        f" {load.rate:.0f}/s for {load.duration:.0f} s from 4 clients, then {load.burst:,} flat out from"
        f" {load.connections} clients. Every delivery is another streamer's transition (one history row).",
        "latency = status_events.recorded_at − the client's send time (signed delivery → commit); answer = send →"
        " 200 at the client (the 200 comes only after the writer's acknowledgement). max_rate = answered /"
        " elapsed in the flat-out phase; receiver CPU from /proc (HTTP, verify, parse, hand-off).",
        "verify_us = one RSA-2048 PKCS#1 v1.5 / SHA-256 verification plus the timestamp check, in the bench process.",
    ]
    return finish(result, runs, errors, wh.summarize_webhooks(runs), wh.WH_TARGETS, notes, out,
                  series={"delivery→commit": [r["_latencies"] for r in runs]},
                  bars={"deliveries/s": [r["max_rate"] for r in runs]}, bar_unit="deliveries/s")


def scale(ctx: scenarios.BenchContext, machine: dict[str, Any], out: Path) -> list[Path]:
    result = base_result("S3", "scale: 100,000 streamers (200,000 subscriptions)", machine,
                         {"streamers": 600 if ctx.quick else 100_000, "shards": "product default"}, ctx.quick)
    runs, errors = repeat(ctx, "S3", lambda i: scenarios.run_scale(ctx, i))
    notes = [
        "subscribed_s = from starting `kick-monitor run` until the simulator counts every subscription.",
        "Memory from /proc: RSS/VmHWM per process (forked workers share the coordinator's pages, which RSS"
        " counts in every one of them) and PSS (shared pages split among sharers).",
        "After subscribing, 20 s of flips at 200/s measure latency at this scale (no target).",
    ]
    return finish(result, runs, errors, scenarios.summarize_scale(runs), scenarios.S3_TARGETS, notes, out,
                  series={"frame→commit at 100k": [r["_latencies"] for r in runs]},
                  bars={"subscribed s": [r["subscribed_s"] for r in runs],
                        "worker peak RSS MB": [r["worker_peak_rss_mb"] for r in runs]}, bar_unit="s / MB")


def memory(ctx: scenarios.BenchContext, machine: dict[str, Any], out: Path) -> list[Path]:
    count = ctx.streamers or (200 if ctx.quick else scenarios.M_STREAMERS)
    result = base_result("M", f"memory: {count:,} streamers, product defaults, every role", machine,
                         {"streamers": count, "shards": "product default"}, ctx.quick)
    runs, errors = repeat(ctx, "M", lambda i: scenarios.run_memory(ctx, i))
    notes = [
        "service_pss_mb divides each page among the tree's own processes (/proc/PID/pagemap),"
        " service_pss_machine_mb among every process of the machine (smaps_rollup PSS; shrinks when other"
        " Python processes run). Read from /proc/PID/smaps_rollup of every process of the service tree after"
        " subscribing, reconciling"
        " and 20 s of flips with channel noise: RSS counts shared pages in full in each process, PSS splits"
        " them among sharers (the tree's real footprint is the PSS sum), private = clean + dirty private pages.",
        "PostgreSQL and the simulator are not counted.",
    ]
    targets = scenarios.M_TARGETS if count == scenarios.M_STREAMERS else ()  # the target is for 2,000
    return finish(result, runs, errors, scenarios.summarize_memory(runs), targets, notes, out,
                  series={}, bars={"service PSS MB": [r["service_pss_mb"] for r in runs]}, bar_unit="MB")


def soak(ctx: scenarios.BenchContext, machine: dict[str, Any], out: Path) -> list[Path]:
    from kick_tools.bench import soak as soaking

    plan = soaking.SoakPlan(pg_restarts=ctx.pg_restarts).fitted(ctx.duration, ctx.quick)
    result = base_result("soak", f"{plan.streamers:,} streamers for {plan.duration / 60:.0f} min with faults",
                         machine, {k: v for k, v in vars(plan).items()}, ctx.quick)
    once = dataclasses.replace(ctx, runs=1)  # one long run; --runs does not apply
    runs, errors = repeat(once, "soak", lambda i: soaking.run_soak(once, i))
    run = runs[-1]
    samples = run.pop("_samples")  # every 10 s reading, kept whole in the JSON (not a latency list)
    summary = {key: run.get(key) for key in ("soak_verdict", "max_slope_mb_per_h", "state_mismatches",
                                               "writer_backlog_max", "spool_bytes_max", "converge_s")}
    summary.update({f"history_{k}": v for k, v in run["history"].items() if not k.endswith("_examples")})
    summary.update({f"slope_mb_per_h {slot}": v for slot, v in sorted(run["slopes_mb_per_h"].items())})
    summary.update({f"within-pid slope_mb_per_h {slot}": v
                    for slot, v in sorted(run["within_pid_slopes_mb_per_h"].items())})
    summary.update({f"final_pss_mb {k}": v.get("pss_total_mb") for k, v in run["final_roles"].items()})
    notes = [
        "Pass rule (issue 18): per role slot, the least-squares slope of private memory after the warm-up,"
        " pooled over the slot's successive pids (one intercept each; a respawned pid's first 60 s left out),"
        f" ≤ {soaking.soak_rules.MAX_SLOPE_MB_PER_H} MB/h; fds and threads back at their median level after"
        " the faults; every exposed transition recorded exactly once except those inside a fault window"
        " (and a stale streamer's next ones), counted apart; state equal to truth at the end. The within-pid"
        " slopes (one intercept per pid) are reported, not judged: they include each respawned worker's climb.",
        "Duplicated and lost examples (t = seconds after the flips began; every row in the result JSON):",
        *soaking.describe_examples(run["history"]),
        "Faults: " + "; ".join(f"{e['t']:.0f}s {e['kind']}" for e in run["faults"]),
        "Tables at start: " + ", ".join(f"{k} {v['rows']} rows {v['bytes'] // 1024} kB"
                                         for k, v in run["tables_start"].items()),
        "Tables at end: " + ", ".join(f"{k} {v['rows']} rows {v['bytes'] // 1024} kB"
                                       for k, v in run["tables_end"].items()),
        *[f"FAILED: {failure}" for failure in run["failures"]],
    ]
    result["samples"] = samples
    paths = finish(result, runs, errors, summary, (), notes, out)
    png = out / f"{result['date']}-soak-memory.png"
    try:
        soaking.plot_memory(samples, png, result["title"] + f" · commit {machine.get('git')}", run["faults"])
        paths.append(png)
    except ImportError as exc:
        say(f"no memory plot: {exc}")
    say(f"soak verdict: {run['soak_verdict']}" + "".join(f"\n  {f}" for f in run["failures"]))
    if not run["soak_verdict"].startswith("PASS"):
        raise SoakFailed("; ".join(run["failures"]))
    return paths


def writer(ctx: scenarios.BenchContext, machine: dict[str, Any], out: Path) -> list[Path]:
    feed = scenarios.w_feed(ctx)
    result = base_result("W", "writer alone, fed as fast as it acknowledges", machine, vars(feed), ctx.quick)
    runs, errors = repeat(ctx, "W", lambda i: scenarios.run_writer(ctx, "batched", feed, i, "W"))
    summary = {
        "throughput": measure.spread(r["throughput"] for r in runs),
        "latency_p50_ms": measure.spread(r["latency_ms"].get("p50") for r in runs),
        "latency_p99_ms": measure.spread(r["latency_ms"].get("p99") for r in runs),
        "lost": measure.spread(r["sent"] - r["history_rows"] for r in runs),
        "cpu_per_1000_writer": measure.spread(r["cpu_per_1000_changes"].get("writer") for r in runs),
        "cpu_per_1000_postgres": measure.spread(r["cpu_per_1000_changes"].get("postgres") for r in runs),
        "cpu_per_1000_feeder": measure.spread(r["cpu_per_1000_changes"].get("feeder") for r in runs),
        "wakeups_per_1000_writer": measure.spread(r.get("wakeups_per_1000_changes", {}).get("writer") for r in runs),
    }
    notes = [
        f"The real workers.writer.BatchWriter in its own process on its own listening socket, fed by {feed.feeders}"
        " processes using handoff.ChangeSender (batches of 500, at most 20,000 unacknowledged each) with"
        f" {feed.count:,} transitions over 100,000 streamers; every change is a real transition (history row).",
        "throughput = committed changes / (last commit − first change handed over), from the writer's own clock;"
        " latency = commit time − hand-over time per change (queueing at full speed, not a latency figure).",
    ]
    return finish(result, runs, errors, summary, scenarios.W_TARGETS, notes, out,
                  bars={"changes/s": [r["throughput"] for r in runs]}, bar_unit="committed changes/s")


def writer_compare(ctx: scenarios.BenchContext, machine: dict[str, Any], out: Path) -> list[Path]:
    feeds = scenarios.cw_feeds(ctx)
    result = base_result("CW", "our batched writer vs a naive one-commit-per-change writer", machine,
                         {f"{pair[0].label}": f"{pair[0].count:,} (ours) / {pair[1].count:,} (naive) changes"
                          for pair in feeds}, ctx.quick)

    def once(index: int) -> dict[str, Any]:
        run: dict[str, Any] = {"run": index + 1, "load_before": measure.loadavg()}
        for ours_feed, naive_feed in feeds:
            ours = scenarios.run_writer(ctx, "batched", ours_feed, index, "CW")
            naive = scenarios.run_writer(ctx, "naive", naive_feed, index, "CW")
            run[ours_feed.label] = {
                "ours": {k: ours[k] for k in ("throughput", "latency_ms", "cpu_per_1000_changes", "sent",
                                              "history_rows")},
                "naive": {k: naive[k] for k in ("throughput", "latency_ms", "cpu_per_1000_changes", "sent",
                                                "history_rows")},
                "throughput_ratio": _ratio(ours["throughput"], naive["throughput"]),
                "p99_ratio_naive_over_ours": _ratio(naive["latency_ms"].get("p99"), ours["latency_ms"].get("p99")),
            }
            run[f"_ours {ours_feed.label}"] = ours["_latencies"]
            run[f"_naive {ours_feed.label}"] = naive["_latencies"]
        run["load_after"] = measure.loadavg()
        return run

    runs, errors = repeat(ctx, "CW", once)
    summary: dict[str, Any] = {}
    for feed, _ in feeds:
        label = feed.label
        summary[f"{label}: throughput ratio ours/naive"] = measure.spread(r[label]["throughput_ratio"] for r in runs)
        summary[f"{label}: p99 ratio naive/ours"] = measure.spread(r[label]["p99_ratio_naive_over_ours"] for r in runs)
        for who in ("ours", "naive"):
            summary[f"{label}: {who} changes/s"] = measure.spread(r[label][who]["throughput"] for r in runs)
            summary[f"{label}: {who} p50 ms"] = measure.spread(r[label][who]["latency_ms"].get("p50") for r in runs)
            summary[f"{label}: {who} p99 ms"] = measure.spread(r[label][who]["latency_ms"].get("p99") for r in runs)
    notes = [
        "Same feeders, same socket protocol, same SQL (status_store.apply_changes): the naive writer commits each"
        " change in its own transaction and acknowledges a batch once all its changes are committed; ours is"
        " workers.writer.BatchWriter (group commit). Latency = commit time − hand-over time, per change.",
        "At full speed each writer gets as many changes as it takes in about the same time (the naive one fewer);"
        " the fixed-rate streams are identical for both: 200/s one at a time (S1's rate) and 2,000/s in bursts"
        " of 100 sent as one batch each (S2's).",
    ]
    fixed = [f for f, _ in feeds if f.rate]
    series = {f"{who} {f.label}": [r[f"_{who} {f.label}"] for r in runs] for f in fixed for who in ("ours", "naive")}
    return finish(result, runs, errors, summary, (), notes, out, series=series,
                  bars={f"{f.label} throughput ratio": [r[f.label]["throughput_ratio"] for r in runs]
                        for f, _ in feeds[:1]} | {f"{f.label} p99 ratio": [r[f.label]["p99_ratio_naive_over_ours"]
                                                                           for r in runs] for f in fixed},
                  bar_unit="ratio (×)")


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def clients(ctx: scenarios.BenchContext, machine: dict[str, Any], out: Path) -> list[Path]:
    result = base_result("CC", "our Pusher client vs Pysher 1.0.8 on the same flood of captured frames", machine,
                         {"streamers": 100 if ctx.quick else 1000, "channels per client": "3 per streamer"}, ctx.quick)
    runs, errors = repeat(ctx, "CC", lambda i: scenarios.run_clients(ctx, i))
    notes = [
        "Both clients in their own process, subscribed to the same 3,000 channels (chatrooms.{id}.v2, channel.{id},"
        " channel_{id} of 1,000 streamers) of one simulator replaying the captured frames (chat, goals) at"
        f" {runs[0]['noise_rate']:.0f} frames/s for {runs[0]['flood_s']:.0f} s, plus 10 lifecycle flips/s.",
        "Ours = kick_monitor.pusher.PusherSession + events.StatusTracker (a worker's receive path). Pysher ="
        " pysher.Pusher as its README shows (subscribe in the connection_established handler), URL set to protocol"
        " 7, logging at WARNING; its callbacks json.loads the lifecycle data. CPU from os.times() of each process"
        " (all threads) over the flood plus 6 s to drain. lifecycle_missed = lifecycle transitions sent during"
        " the flood never detected (frames still unread in a socket when the server drops it are gone).",
        "Then the simulator drops every connection (TCP abort), and later drops them again while refusing"
        " handshakes (HTTP 503) for 15 s: attempts = connection attempts in that window.",
    ]
    bars = {"ours CPU s/100k frames": [r["ours"]["cpu_per_100k_frames"] for r in runs],
            "Pysher CPU s/100k frames": [r["pysher"]["cpu_per_100k_frames"] for r in runs]}
    return finish(result, runs, errors, scenarios.summarize_clients(runs), (), notes, out, bars=bars,
                  bar_unit="CPU seconds per 100k frames")


def polling(ctx: scenarios.BenchContext, machine: dict[str, Any], out: Path) -> list[Path]:
    result = base_result("CP", "detection latency: kick-monitor vs a REST poller (time scaled 10×)", machine,
                         {"streamers": 100 if ctx.quick else 1000, "shards": 4,
                          "poll": "every 6 s (= 60 s / 10), 50 slugs a request",
                          "simulator rate limit": "600 requests / 60 s"}, ctx.quick)
    runs, errors = repeat(ctx, "CP", lambda i: scenarios.run_polling(ctx, i))
    notes = [
        "Time is scaled down 10×: the poller polls every 6 s instead of 60 s and streams last ~500 s on average"
        " (2 flips/s over 1,000 streamers). A poller's detection latency is uniform over its interval, so its"
        " latencies ×10 are what a 60 s poller gets; ratio_*_at_60s uses that, ratio_*_measured the raw 6 s figures.",
        "Poller latency = when its answer arrived − sent_wall (it commits nothing); ours = recorded_at − sent_wall.",
        "Requests per hour for 1,000 streamers: the poller needs 20 a round, 60 rounds an hour; kick-monitor needs"
        " one reconciliation of 20 requests at start and every reconcile_interval (300 s), measured at start.",
    ]
    series = {"kick-monitor": [r["_latencies"] for r in runs],
              "REST poller (6 s)": [r["_poller_latencies"] for r in runs]}
    return finish(result, runs, errors, scenarios.summarize_polling(runs), (), notes, out, series=series,
                  bars={"p50 ratio at 60 s": [r.get("ratio_p50_at_60s") for r in runs],
                        "p99 ratio at 60 s": [r.get("ratio_p99_at_60s") for r in runs]}, bar_unit="poller / ours (×)")
