"""Start and stop what a benchmark run needs: PostgreSQL, the simulator, the service, agents.

Processes are started and stopped by the shared harness (kick_tools/harness.py: own session,
stopped by PID, SIGKILL to its own group only as a last resort). What is the benchmark's own:
a `Stack` stops everything it started, in reverse order, even when a run fails half-way — a
benchmark that leaves a simulator or a worker behind would skew every later run on a
2-core machine — and the helper agents, the simulator's seeded start, the run database.

The benchmark's PostgreSQL is its own embedded server in the work directory (never the
user's KICK_MONITOR_DATABASE_URL), with PostgreSQL's default durability (fsync on), like
the product's embedded database; each run gets a freshly created and migrated database.

    with Stack() as stack:
        sim = stack.push(SimProcess.seeded(work, streamers=1000, seed=1))
        service = stack.push(ServiceProcess.start(work, sim.urls, url, shards=4))
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg2
from psycopg2 import sql

from kick_monitor.embedded_pg import EmbeddedPostgres
from kick_monitor.migrations import migrate
from kick_tools import harness
from kick_tools.harness import HarnessError, Process, children_of, wait_until

__all__ = [
    "AgentProcess", "BenchDatabase", "HarnessError", "ServiceProcess", "SimProcess", "Stack", "children_of",
    "insert_streamers", "temporary_workdir", "wait_until",
]
STOP_TIMEOUT = 60.0  # the service drains its workers and writer before exiting


class Stack:
    """Stops everything pushed onto it, newest first, when the block ends (errors included)."""

    def __init__(self) -> None:
        self._items: list[Any] = []

    def push(self, item: Any) -> Any:
        self._items.append(item)
        return item

    def close(self) -> None:
        while self._items:
            item = self._items.pop()
            with contextlib.suppress(Exception):
                item.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# -- PostgreSQL -------------------------------------------------------------------------


class BenchDatabase:
    """The benchmark's own embedded PostgreSQL; a fresh migrated database per run."""

    def __init__(self, directory: Path) -> None:
        self.pg = EmbeddedPostgres(directory)
        self._created: list[str] = []

    def start(self) -> Self:
        self.pg.start()
        return self

    def stop(self, keep: bool = False) -> None:
        """Stop the server; its databases are dropped unless `keep` (--keep-work: they explain a verdict)."""
        if not keep:
            with contextlib.suppress(Exception):
                harness.drop_databases(self.pg, self._created)
        self.pg.stop(force=True)

    def fresh(self, name: str, template: str | None = None) -> str:
        """Drop and recreate database `name` (migrated, or cloned from `template`); return its URL.

        Old runs' data never leaks into a new run; cloning a prepared template (100,000
        streamers for the writer) takes a fraction of a second instead of re-inserting.
        """
        url = harness.create_database(self.pg, name, template, replace=True)
        if name not in self._created:
            self._created.append(name)
        if template is None:
            conn = psycopg2.connect(url)
            try:
                migrate(conn)
            finally:
                conn.close()
        return url

    def postmaster_pid(self) -> int | None:
        return harness.postmaster_pid(self.pg.pgdata)

    def info(self) -> dict[str, str]:
        """Server version and the durability settings the numbers depend on."""
        conn = psycopg2.connect(self.pg.url("postgres"))
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                row = cur.fetchone()
                found = {"version": str(row[0]) if row else "?"}
                for setting in ("fsync", "synchronous_commit", "shared_buffers"):
                    cur.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting)))
                    row = cur.fetchone()
                    found[setting] = str(row[0]) if row else "?"
            return found
        finally:
            conn.close()


def insert_streamers(url: str, streamers: Iterable[dict[str, Any]]) -> int:
    """Add the simulator's streamers (control API listing) with their ids resolved."""
    conn = psycopg2.connect(url)
    try:
        return harness.insert_streamers(
            conn, ((s["slug"], s["channel_id"], s["user_id"], s["chatroom_id"]) for s in streamers))
    finally:
        conn.close()


# -- the simulator ----------------------------------------------------------------------


class SimProcess(harness.SimProcess):
    """The shared simulator process, seeded, with the listings a benchmark reads."""

    @classmethod
    def seeded(
        cls, work: Path, *, streamers: int, seed: int, noise_file: Path | None = None,
        rate_limit: tuple[int, float] | None = None, extra: Sequence[str] = (), timeout: float = 120.0,
    ) -> SimProcess:
        args = ["--streamers", str(streamers), "--seed", str(seed), "--log-level", "WARNING", *extra]
        if noise_file is not None:
            args += ["--noise-file", str(noise_file)]
        if rate_limit is not None:
            args += ["--rate-limit", str(rate_limit[0]), "--rate-window", str(rate_limit[1])]
        ready = work / f"sim-ready-{seed}-{time.monotonic_ns()}.json"
        started = harness.SimProcess.start(work / "sim.log", ready, args, timeout=timeout)
        return cls(started.process, started.urls)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/control/stats", timeout=10)
        return result

    def streamers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/control/streamers")["streamers"]
        return result

    def truth(self, since: int = 0) -> list[dict[str, Any]]:
        """Every transition so far from the `since`-th on (sent_wall is the simulator's time.time() at publish)."""
        import orjson

        response = self.http.get(f"{self.urls['control_url']}/control/truth", params={"since": since}, timeout=120)
        response.raise_for_status()
        return [orjson.loads(line) for line in response.content.splitlines() if line]


# -- the service ------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    """`kick-monitor run` (coordinator → writer + shard workers) against the simulator."""

    process: Process

    @classmethod
    def start(
        cls, work: Path, sim_urls: dict[str, str], database_url: str, *, shards: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> ServiceProcess:
        given = {"shard_count": str(shards)} if shards else {}
        env = harness.service_env(sim_urls, database_url, work / "data", settings={**given, **(settings or {})})
        return cls(Process("service", harness.service_argv(), work / "service.log", env).start())

    @property
    def pid(self) -> int:
        return self.process.pid

    def roles(self) -> dict[str, list[int]]:
        """PIDs of every role (coordinator, writer, planner, exporter, worker), by parent PID and title."""
        from kick_tools.bench.footprint import role_of, service_slots

        found: dict[str, list[int]] = {"coordinator": [], "writer": [], "worker": []}
        for slot, pid in service_slots(self.pid).items():
            found.setdefault(role_of(slot), []).append(pid)
        return found

    def stop(self) -> int | None:
        return self.process.stop(STOP_TIMEOUT)


@dataclass
class AgentProcess:
    """A helper process of ours (`python -m kick_tools.bench.agents ROLE ...`)."""

    process: Process
    out: Path

    @classmethod
    def start(cls, work: Path, role: str, args: Sequence[str], name: str | None = None) -> AgentProcess:
        label = name or role
        out = work / f"{label}.json"
        argv = [sys.executable, "-m", "kick_tools.bench.agents", role, "--out", str(out), *args]
        return cls(Process(label, argv, work / f"{label}.log").start(), out)

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready_file(self) -> Path:
        return self.out.with_suffix(".ready")

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_until(lambda: self.ready_file().exists() or not self.process.running(), timeout,
                   what=f"{self.process.name} to be ready")
        if not self.ready_file().exists():
            raise HarnessError(f"{self.process.name} exited at start:\n{self.process.log_tail()}")

    def wait_exit(self, timeout: float) -> int | None:
        return self.process.wait(timeout)

    def result(self) -> dict[str, Any]:
        if not self.out.exists():
            raise HarnessError(f"{self.process.name} wrote no result:\n{self.process.log_tail()}")
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data

    def stop(self) -> None:
        self.process.stop()


@contextlib.contextmanager
def temporary_workdir(parent: Path | None, keep: bool) -> Iterator[Path]:
    """A work directory for logs, sockets and the database; removed afterwards unless `keep`."""
    import shutil
    import tempfile

    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)  # `--work-dir DIR` names a place, made if missing
    path = Path(tempfile.mkdtemp(prefix="kick-bench-", dir=parent))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
