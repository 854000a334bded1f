"""`kick-monitor bench` end to end in miniature, so the benchmark harness cannot rot unnoticed.

A quick S1 (the whole product: simulator, `kick-monitor run`, embedded PostgreSQL) and a
quick W (the writer alone, fed by hand-off senders) run through the real CLI in a
subprocess and must write their JSON and Markdown (and the PNG when matplotlib, from the
`bench` extra, is installed), leaving no process of theirs behind. Figures are not
checked: a benchmark reports, it does not assert.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kick_tools.harness import child_env
from tests.faults.faultkit import cmdline


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line or environment names `text` (the run's work directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(text.encode() in (entry / name).read_bytes() for name in ("cmdline", "environ")):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow  # ~20 s: an end-to-end run of three scenarios (keeps `make test` under 8 minutes)
@pytest.mark.timeout(180)
def test_quick_s1_w_and_s4_write_their_reports(tmp_path: Path, server_tmp_path: Path) -> None:
    work = server_tmp_path  # the benchmark's PostgreSQL lives there: not under tmp_path (conftest.make_server_dir)
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "kick_monitor.cli.main", "bench", "--scenario", "S1,W,S4", "--quick", "--runs", "1",
         "--out", str(out), "--work-dir", str(work)],
        env=child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=170, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for scenario in ("S1", "W", "S4"):
        (result_file,) = out.glob(f"*-{scenario}.json")
        result = json.loads(result_file.read_text())
        assert result["scenario"] == scenario and len(result["runs"]) == 1, result.get("errors")
        assert result["machine"]["cores"] and result["runs"][0]["load_before"]
        assert all(target["verdict"] in ("PASS", "MISS") for target in result["targets"])
        assert result_file.with_suffix(".md").read_text().startswith(f"# {scenario}:")
        if importlib.util.find_spec("matplotlib") is not None:
            assert result_file.with_suffix(".png").stat().st_size > 1000
    s1 = json.loads(next(out.glob("*-S1.json")).read_text())
    assert s1["runs"][0]["verdict"]["expected"] > 0 and s1["runs"][0]["latency_ms"]["count"] > 0
    drop = json.loads(next(out.glob("*-S4.json")).read_text())["runs"][0]["drop"]
    assert drop["recovered"] is True and drop["recovered_s"] >= drop["resubscribed_s"] > 0, drop
    per_commit = s1["runs"][0]["history_per_commit"]  # rows grouped by their writer transaction
    assert per_commit["commits"] > 0 and per_commit["mean"] >= 1 and per_commit["max"] >= per_commit["p50"]
    assert not [p for p in work.iterdir() if p.name.startswith("kick-bench-")], "work directory removed"
    assert not processes_mentioning(str(work)), "no simulator, service or PostgreSQL left behind"


@pytest.mark.timeout(120)
def test_a_sigtermed_bench_stops_everything_it_started(tmp_path: Path, server_tmp_path: Path) -> None:
    """SIGTERM mid-run (a service manager, a CI timeout) stops the simulator, the service tree and the
    benchmark's PostgreSQL. Before the fix the service's coordinator, in its own process group, was
    left running with its workers."""
    work = server_tmp_path
    bench = subprocess.Popen(
        [sys.executable, "-m", "kick_monitor.cli.main", "bench", "--scenario", "S1", "--runs", "1",
         "--duration", "60", "--out", str(tmp_path / "results"), "--work-dir", str(work)],
        env=child_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not any("kick-monitor: worker" in cmdline(pid) for pid in processes_mentioning(str(work))):
            assert bench.poll() is None and time.monotonic() < deadline, "the service's workers did not start"
            time.sleep(0.2)
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    deadline = time.monotonic() + 10
    while processes_mentioning(str(work)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(work)), "no simulator, service or PostgreSQL left behind"
