"""Dead children's metrics files are folded into one archive per kind: the totals a scrape shows are
unchanged, and the number of files a scrape reads (the exporter's work and memory) stays bounded
however many children die and are respawned (the soak's exporter grew ~36 kB per dead pid)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kick_monitor import metrics_server

CHILD = """
from prometheus_client import Counter, Histogram
Counter("fold_test_total", "x", ["kind"]).labels(kind="a").inc(3)
Histogram("fold_test_seconds", "x").observe(0.2)
"""


def run_child(directory: Path) -> int:
    """A real process that counts and exits: its files stay behind, as a killed worker's do."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env)
    assert child.wait(30) == 0
    return child.pid


def totals(directory: Path) -> dict[str, float]:
    found = {}
    for metric in metrics_server.TolerantMultiProcessCollector(str(directory)).collect():
        for sample in metric.samples:
            if sample.name in ("fold_test_total", "fold_test_seconds_count", "fold_test_seconds_sum"):
                found[sample.name] = round(sample.value, 6)
    return found


def test_dead_children_are_folded_totals_kept_files_bounded(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(metrics_server, "_unfolded", set())
    for dead in range(1, 7):
        pid = run_child(tmp_path)
        if dead == 4:  # a scrape is reading: the fold waits for the next reap instead of blocking
            with open(tmp_path / metrics_server.FOLD_LOCK, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_SH)
                metrics_server.mark_dead(pid)
            assert metrics_server._unfolded == {pid}
            assert (tmp_path / f"counter_{pid}.db").exists()
            assert totals(tmp_path) == {"fold_test_total": 3.0 * dead, "fold_test_seconds_count": dead,
                                        "fold_test_seconds_sum": 0.2 * dead}
            continue
        metrics_server.mark_dead(pid)
        assert metrics_server._unfolded == set()
        assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]
        assert totals(tmp_path) == {"fold_test_total": 3.0 * dead, "fold_test_seconds_count": dead,
                                    "fold_test_seconds_sum": round(0.2 * dead, 6)}
