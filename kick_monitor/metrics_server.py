"""The one scrape endpoint of a process tree, served by the coordinator (multiprocess mode).

`prepare_multiprocess_dir` must run before anything imports prometheus_client: the
client reads PROMETHEUS_MULTIPROC_DIR at import time.
"""

from __future__ import annotations

import contextlib
import fcntl
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

# Every process writes its own counter_<pid>.db and histogram_<pid>.db, and those of a dead
# process stay (its counts are part of the totals). Children are respawned for ever (the soak
# kills a worker every 3 minutes), so the directory, and the work and the heap high-water mark
# of every scrape, grew with every respawn: the exporter's private memory rose ~36 kB per dead
# pid (2.3 MB/h in the 2-hour soak). `fold_dead` adds a reaped child's counts into one archive
# file per kind and removes its files: the totals are unchanged, the file count stays bounded.
ARCHIVE_PID = "archive"  # counter_archive.db, histogram_archive.db
FOLD_LOCK = ".fold.lock"  # a scrape reads under a shared lock; a fold writes under an exclusive one
FOLDED_KINDS = ("counter", "histogram")
_unfolded: set[int] = set()  # reaped pids whose fold found a scrape in progress: retried at the next reap


class TolerantMultiProcessCollector:
    """MultiProcessCollector over the files that hold something; one bad file spoils nothing."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Any]:
        with open(os.path.join(self.directory, FOLD_LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)  # never half a fold: a dead pid's counts once, not 0 or 2 times
            return self._merge()

    def _merge(self) -> Iterable[Any]:
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
        _unfolded.add(pid)
        fold_dead(directory, _unfolded)


def fold_dead(directory: str, pids: set[int]) -> None:
    """Add dead processes' counters and histograms into the archive files and remove theirs (see
    ARCHIVE_PID); the pids folded leave `pids`. Never waits: while a scrape reads, they stay for later."""
    from prometheus_client.mmap_dict import MmapedDict

    with open(os.path.join(directory, FOLD_LOCK), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        for pid in sorted(pids):
            for kind in FOLDED_KINDS:
                dead = os.path.join(directory, f"{kind}_{pid}.db")
                if not os.path.exists(dead):
                    continue
                try:
                    values = list(MmapedDict.read_all_values_from_file(dead))
                except (OSError, struct.error, ValueError):
                    continue  # unreadable (never sized): left to the collector, which skips it
                archive = MmapedDict(os.path.join(directory, f"{kind}_{ARCHIVE_PID}.db"))
                try:
                    for key, value, timestamp, _ in values:
                        total, _ = archive.read_value(key)
                        archive.write_value(key, total + value, timestamp)
                finally:
                    archive.close()
                os.unlink(dead)
            pids.discard(pid)
