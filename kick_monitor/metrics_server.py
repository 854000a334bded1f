"""The one scrape endpoint of a process tree, served by the coordinator (multiprocess mode).

`prepare_multiprocess_dir` must run before anything imports prometheus_client: the
client reads PROMETHEUS_MULTIPROC_DIR at import time.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def prepare_multiprocess_dir(directory: Path) -> None:
    """Wipe and point prometheus_client at the per-tree metrics directory (every full start)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


# A metrics file is created before it is sized: for a moment it is empty, and a process
# killed in that moment leaves it empty for good. prometheus_client's collector then fails
# every scrape (prometheus/client_python#1199). We kill children on purpose, so we skip them.
MIN_FILE_BYTES = 8


class TolerantMultiProcessCollector:
    """MultiProcessCollector over the files that hold something; one bad file spoils nothing."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        for attempt in range(3):
            files = [path for path in glob.glob(os.path.join(self.directory, "*.db")) if _sized(path)]
            try:
                merged: Iterable[Any] = MultiProcessCollector.merge(files, accumulate=True)
                return merged
            except (FileNotFoundError, struct.error, ValueError):
                if attempt == 2:  # a file vanished or shrank under us three times: give up this scrape
                    raise
        return []


def _sized(path: str) -> bool:
    try:
        return os.path.getsize(path) >= MIN_FILE_BYTES
    except OSError:
        return False


def start_metrics_server(host: str, port: int) -> Any:
    """Serve a fresh registry aggregating every process's files; returns the server."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(TolerantMultiProcessCollector(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def mark_dead(pid: int) -> None:
    """Drop a reaped child's live gauges (its counters stay) and any file it never sized."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for path in glob.glob(os.path.join(directory, f"*_{pid}.db")):
            if not _sized(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
