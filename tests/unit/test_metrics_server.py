"""The scrape survives what our fault handling produces: children killed at any moment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from kick_monitor.metrics_server import TolerantMultiProcessCollector, mark_dead

WRITE_ONE_COUNTER = """
from prometheus_client import Counter
Counter("kick_monitor_test_events_total", "test").inc(3)
"""


def write_real_metrics(directory: Path) -> None:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(directory))
    subprocess.run([sys.executable, "-c", WRITE_ONE_COUNTER], env=env, check=True, timeout=30)


def test_an_empty_file_left_by_a_killed_child_does_not_break_the_scrape(tmp_path: Path) -> None:
    write_real_metrics(tmp_path)
    (tmp_path / "counter_4242.db").touch()  # created, never sized: the child was killed then

    plain = CollectorRegistry()
    MultiProcessCollector(plain, path=str(tmp_path))
    with pytest.raises(Exception):  # noqa: B017 - the library's own failure (client_python#1199)
        generate_latest(plain)

    tolerant = CollectorRegistry()
    tolerant.register(TolerantMultiProcessCollector(str(tmp_path)))
    assert b"kick_monitor_test_events_total 3.0" in generate_latest(tolerant)


def test_reaping_a_child_removes_its_empty_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    write_real_metrics(tmp_path)
    (tmp_path / "counter_4242.db").touch()
    (tmp_path / "gauge_livemax_4242.db").touch()
    mark_dead(4242)
    assert not list(tmp_path.glob("*_4242.db"))
    assert list(tmp_path.glob("counter_*.db")), "other processes' files stay"
