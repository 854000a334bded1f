"""The one scrape endpoint of a process tree, served by the coordinator (multiprocess mode).

`prepare_multiprocess_dir` must run before anything imports prometheus_client: the
client reads PROMETHEUS_MULTIPROC_DIR at import time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def prepare_multiprocess_dir(directory: Path) -> None:
    """Wipe and point prometheus_client at the per-tree metrics directory (every full start)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def start_metrics_server(host: str, port: int) -> Any:
    """Serve a fresh registry aggregating every process's files; returns the server."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def mark_dead(pid: int) -> None:
    """Drop a reaped child's live gauges (its counters stay, as Prometheus expects)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
