"""Writing a scenario's result: `<date>-<scenario>.json`, `.md` and `.png` under the results folder.

The JSON holds everything measured (per run and median/min–max) except raw latency
lists, which become a log-binned histogram per run; the Markdown is the table a person
reads (targets with PASS/MISS, the machine, the load average of every run); the PNG shows
the latency histogram and CDF with per-run bars. The plot needs matplotlib (the `bench`
extra); without it the JSON and Markdown are still written and the report says why there
is no plot. Figures are kept small (well under 300 KB) so they can be committed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kick_tools.bench.measure import percentile

HIST_EDGES_MS = [round(10 ** (k / 10), 4) for k in range(-20, 51)]  # 0.01 ms .. 100 s, 10 bins a decade


def machine_info(postgres: dict[str, str] | None = None) -> dict[str, Any]:
    """Cores, RAM, CPU model, kernel, Python and PostgreSQL: every result records where it ran."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(), "python": sys.version.split()[0], "kernel": platform.release(),
        "platform": platform.platform(),
    }
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
        info["ram_gb"] = round(total_kb / 1024 / 1024, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info["postgres"] = postgres or {}
    info["git"] = git_describe()
    info["host_speed"] = host_speed()
    return info


_PYTHON_STEPS = 200_000
_ZLIB_INPUT = b"".join(b"kick-monitor status change %d online pusher\n" % i for i in range(25_000))


def _python_steps(count: int) -> int:
    table: dict[int, int] = {}
    for i in range(count):
        table[i & 1023] = table.get(i & 511, 0) + i
    return len(table)


def host_speed(repeats: int = 5) -> dict[str, float]:
    """How fast this host is now, by two fixed workloads (median of `repeats` short runs, ~0.1 s each):
    ns a step of a pure-Python loop (what our processes run) and MB/s of zlib over a fixed text (C code, as
    PostgreSQL's work is). The shared VMs here changed speed twofold within 15 minutes (docs/performance.md,
    rounds 16 and 17). A reading of the moment a run starts: it falls with whatever runs beside it, and the
    host may change during the run, so compare code side by side, interleaved, and keep this beside the figures."""
    python_ns, zlib_mb_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        _python_steps(_PYTHON_STEPS)
        python_ns.append((time.perf_counter() - started) * 1e9 / _PYTHON_STEPS)
        started = time.perf_counter()
        zlib.compress(_ZLIB_INPUT, 6)
        zlib_mb_s.append(len(_ZLIB_INPUT) / 1e6 / (time.perf_counter() - started))
    return {"python_ns_per_step": round(statistics.median(python_ns), 1),
            "zlib_mb_per_s": round(statistics.median(zlib_mb_s), 1)}


def git_describe() -> str | None:
    """The commit measured, `+dirty` when the tree has uncommitted changes (read-only git calls)."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def histogram(values_ms: Sequence[float]) -> dict[str, Any]:
    """Counts in log-spaced bins (10 a decade from 0.01 ms); values outside go to the end bins."""
    counts = [0] * (len(HIST_EDGES_MS) - 1)
    for value in values_ms:
        if value <= HIST_EDGES_MS[0]:
            counts[0] += 1
            continue
        index = min(len(counts) - 1, math.floor(10 * math.log10(value)) + 20)
        counts[max(0, index)] += 1
    return {"edges_ms": HIST_EDGES_MS, "counts": counts}


def public_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs without raw arrays (keys starting with `_`); latency lists become histograms."""
    cleaned = []
    for run in runs:
        item = {k: v for k, v in run.items() if not k.startswith("_")}
        for key, value in run.items():
            if key.startswith("_") and isinstance(value, list) and value:
                item[f"histogram{key}"] = histogram(value)
        cleaned.append(item)
    return cleaned


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fmt_spread(figure: Any) -> str:
    if isinstance(figure, dict) and "median" in figure:
        if figure["min"] == figure["max"]:
            return f"{fmt(figure['median'])}"
        return f"{fmt(figure['median'])} ({fmt(figure['min'])}–{fmt(figure['max'])})"
    return fmt(figure)


def markdown(result: dict[str, Any]) -> str:
    """The human-readable report of one scenario."""
    machine = result["machine"]
    pg = machine.get("postgres", {})
    speed = machine.get("host_speed") or {}
    loads = ", ".join(f"{fmt(r.get('load_before', [None])[0])}→{fmt(r.get('load_after', [None])[0])}"
                      for r in result["runs"])
    lines = [
        f"# {result['scenario']}: {result['title']}",
        "",
        f"{result['date']} · {machine.get('cores')} cores, {machine.get('ram_gb')} GB RAM"
        f" ({machine.get('cpu', '?')}) · Python {machine.get('python')} · PostgreSQL {pg.get('version', '?')}"
        f" (fsync {pg.get('fsync', '?')}, synchronous_commit {pg.get('synchronous_commit', '?')})"
        f" · commit {machine.get('git') or '?'}",
        "",
        f"Host speed at the start (`report.host_speed`): {fmt(speed.get('python_ns_per_step'))} ns a Python step,"
        f" zlib {fmt(speed.get('zlib_mb_per_s'))} MB/s (lower ns, higher MB/s: faster).",
        "",
        f"{len(result['runs'])} runs; figures are median (min–max) over runs. "
        f"Load average (1 min) before→after each run: {loads}.",
        "",
    ]
    if result.get("targets"):
        lines += ["| target | measured (median, min–max) | verdict |", "|---|---|---|"]
        for target in result["targets"]:
            figure = result["summary"].get(target["metric"])
            lines.append(f"| {target['label']} | {fmt_spread(figure)} | **{target['verdict']}** |")
        lines.append("")
    lines += ["| figure | median (min–max) |", "|---|---|"]
    for key, figure in result["summary"].items():
        if figure is not None:
            lines.append(f"| {key} | {fmt_spread(figure)} |")
    lines.append("")
    if result.get("config"):
        lines += ["Configuration: " + ", ".join(f"{k} = {fmt(v)}" for k, v in result["config"].items()), ""]
    if result.get("errors"):
        lines += ["Runs that failed:", *[f"- {e}" for e in result["errors"]], ""]
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    if result.get("plot"):
        lines += ["", f"![{result['scenario']}]({result['plot']})"]
    elif result.get("plot_error"):
        lines += ["", f"(no plot: {result['plot_error']})"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], series: dict[str, list[list[float]]], bars: dict[str, list[float | None]],
         bar_unit: str, path: Path) -> None:
    """Latency histogram + CDF of every series (runs pooled) and per-run bars."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (2 if series else 0) + (1 if bars else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5.0 * max(panels, 1), 3.6), dpi=80, squeeze=False)
    ax_iter = iter(axes[0])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if series:
        hist_ax, cdf_ax = next(ax_iter), next(ax_iter)
        for color, (label, per_run) in zip(colors, series.items(), strict=False):
            pooled = sorted(v for run in per_run for v in run if v > 0)
            if not pooled:
                continue
            low = max(min(pooled), 0.01)
            edges = [e for e in HIST_EDGES_MS if low / 1.3 <= e <= max(pooled) * 1.3] or [low, max(pooled)]
            hist_ax.hist(pooled, bins=edges, histtype="step", color=color, label=label)
            n = len(pooled)
            step = max(1, n // 2000)
            xs = [*pooled[::step], pooled[-1]]
            ys = [*(min(1.0, (i * step + 1) / n) for i in range(len(xs) - 1)), 1.0]
            cdf_ax.plot(xs, ys, color=color, label=f"{label} p99 {percentile(pooled, 0.99):.1f} ms")
        hist_ax.set_xscale("log")
        hist_ax.set_xlabel("latency, ms (log)")
        hist_ax.set_ylabel("transitions")
        hist_ax.set_title("latency histogram (runs pooled)", fontsize=9)
        cdf_ax.set_xscale("log")
        cdf_ax.set_xlabel("latency, ms (log)")
        cdf_ax.set_ylabel("fraction ≤ x")
        cdf_ax.set_title("CDF", fontsize=9)
        cdf_ax.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
        cdf_ax.legend(fontsize=7)
        hist_ax.legend(fontsize=7)
    if bars:
        bar_ax = next(ax_iter)
        labels = list(bars)
        run_count = max(len(v) for v in bars.values())
        width = 0.8 / max(1, len(labels))
        for k, (color, label) in enumerate(zip(colors, labels, strict=False)):
            values = [v if v is not None else 0.0 for v in bars[label]]
            xs = [i + k * width for i in range(len(values))]
            bar_ax.bar(xs, values, width=width, color=color, label=label)
        bar_ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(run_count)])
        bar_ax.set_xticklabels([f"run {i + 1}" for i in range(run_count)])
        bar_ax.set_ylabel(bar_unit)
        bar_ax.set_title("per run", fontsize=9)
        bar_ax.legend(fontsize=7)
        if all(v and v > 0 for vs in bars.values() for v in vs) and _spans_decades(bars):
            bar_ax.set_yscale("log")
    fig.suptitle(f"{result['scenario']}: {result['title']}  ({result['date']}, load "
                 f"{'/'.join(fmt(r.get('load_before', [None])[0]) for r in result['runs'])})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _spans_decades(bars: dict[str, list[float | None]]) -> bool:
    values = [v for vs in bars.values() for v in vs if v]
    return bool(values) and max(values) / min(values) > 30


def write(result: dict[str, Any], out_dir: Path, series: dict[str, list[list[float]]] | None = None,
          bars: dict[str, list[float | None]] | None = None, bar_unit: str = "") -> list[Path]:
    """Write JSON, Markdown and (matplotlib permitting) PNG; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['date']}-{result['scenario']}"
    png = out_dir / f"{stem}.png"
    written = []
    if series or bars:
        try:
            plot(result, series or {}, bars or {}, bar_unit, png)
            result["plot"] = png.name
            written.append(png)
        except ImportError as exc:
            result["plot_error"] = f"matplotlib is not installed ({exc}); pip install 'kick-monitor[bench]'"
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(markdown(result))
    return [json_path, md_path, *written]
