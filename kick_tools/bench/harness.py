"""Start and stop what a benchmark run needs: PostgreSQL, the simulator, the service, agents.

Every process is started in a session of its own (`start_new_session`), remembered by its
PID, and stopped by that PID: SIGTERM first (so the service drains and the simulator
writes its state), SIGKILL to *its own* process group only as a last resort. A `Stack`
stops everything it started, in reverse order, even when a run fails half-way — a
benchmark that leaves a simulator or a worker behind would skew every later run on a
2-core machine. Nothing is ever found or killed by name.

The benchmark's PostgreSQL is its own embedded server in the work directory (never the
user's KICK_MONITOR_DATABASE_URL), with PostgreSQL's default durability (fsync on), like
the product's embedded database; each run gets a freshly created and migrated database.

    with Stack() as stack:
        sim = stack.push(SimProcess.start(work, streamers=1000, seed=1))
        service = stack.push(ServiceProcess.start(work, sim.urls, url, shards=4))
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg2
import psycopg2.extensions
import requests
from psycopg2 import sql
from psycopg2.extras import execute_values

from kick_monitor.embedded_pg import EmbeddedPostgres
from kick_monitor.migrations import migrate
from kick_sim.config import TEST_CLIENT_ID, TEST_CLIENT_SECRET

REPO = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 60.0  # the service drains its workers and writer before exiting


class HarnessError(RuntimeError):
    """A process did not start, or did not become ready in time."""


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "") -> float:
    """Poll `predicate` until true; returns the seconds it took, raises HarnessError on timeout."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for our child processes: no KICK_MONITOR_* leaking in, this source tree importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICK_MONITOR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# -- /proc ------------------------------------------------------------------------------


def proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    fields = proc_stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found


def children_of(pid: int) -> dict[int, str]:
    """Direct children of `pid` with their command lines (process titles for our roles)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat_fields(int(entry.name))
        if fields is None or int(fields[1]) != pid:
            continue
        try:
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return found


# -- processes --------------------------------------------------------------------------


@dataclass
class ManagedProcess:
    """One child process in its own session; stopped by PID, its group killed only as a last resort."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_wall: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> ManagedProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                list(argv), env=env or python_env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO,
            )
        return cls(name, proc, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM by PID and wait; then SIGKILL to its own process group. Returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        # Whatever is left in its group (a child that ignored its parent's death) goes too.
        # A group id stays reserved while any member lives, so members found are ours.
        if code is None or group_members(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        return code

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


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

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            admin = self._admin()
            with admin.cursor() as cur:
                for name in self._created:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.close()
        self.pg.stop(force=True)

    def _admin(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(self.pg.url("postgres"))
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        return conn

    def fresh(self, name: str, template: str | None = None) -> str:
        """Drop and recreate database `name` (migrated, or cloned from `template`); return its URL.

        Old runs' data never leaks into a new run; cloning a prepared template (100,000
        streamers for the writer) takes a fraction of a second instead of re-inserting.
        """
        admin = self._admin()
        try:
            with admin.cursor() as cur:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                if template is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                else:
                    cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)))
        finally:
            admin.close()
        if name not in self._created:
            self._created.append(name)
        url = self.pg.url(name)
        if template is None:
            conn = psycopg2.connect(url)
            try:
                migrate(conn)
            finally:
                conn.close()
        return url

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.pg.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

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
    """Add the simulator's streamers with their ids resolved, as `streamers import` would."""
    rows = [(s["slug"], s["channel_id"], s["user_id"], s["chatroom_id"]) for s in streamers]
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            execute_values(
                cur,
                "INSERT INTO kick_monitor.streamers (username, channel_id, kick_user_id, chatroom_id) VALUES %s",
                rows, page_size=2000,
            )
    finally:
        conn.close()
    return len(rows)


# -- the simulator ----------------------------------------------------------------------


@dataclass
class SimProcess:
    """`python -m kick_sim.cli` driven over its loopback control API."""

    process: ManagedProcess
    urls: dict[str, str]
    http: requests.Session = field(default_factory=requests.Session)

    @classmethod
    def start(
        cls, work: Path, *, streamers: int, seed: int, noise_file: Path | None = None,
        rate_limit: tuple[int, float] | None = None, extra: Sequence[str] = (), timeout: float = 120.0,
    ) -> SimProcess:
        ready = work / f"sim-ready-{seed}-{time.monotonic_ns()}.json"
        argv = [
            sys.executable, "-m", "kick_sim.cli", "--streamers", str(streamers), "--seed", str(seed),
            "--ready-file", str(ready), "--log-level", "WARNING", *extra,
        ]
        if noise_file is not None:
            argv += ["--noise-file", str(noise_file)]
        if rate_limit is not None:
            argv += ["--rate-limit", str(rate_limit[0]), "--rate-window", str(rate_limit[1])]
        process = ManagedProcess.spawn("sim", argv, work / "sim.log")
        try:
            wait_until(lambda: ready.exists() or not process.running(), timeout, what="the simulator to listen")
        except HarnessError:
            process.stop()
            raise
        if not ready.exists():
            process.stop()
            raise HarnessError(f"the simulator exited at start:\n{process.log_tail()}")
        return cls(process, json.loads(ready.read_text()))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop()
        self.http.close()

    def get(self, path: str, timeout: float = 60.0) -> Any:
        response = self.http.get(f"{self.urls['control_url']}{path}", timeout=timeout)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        response = self.http.post(f"{self.urls['control_url']}{path}", json=body or {}, timeout=timeout)
        if response.status_code != 200:
            raise HarnessError(f"simulator {path}: {response.status_code} {response.text[:200]}")
        return response.json()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/control/stats", timeout=10)
        return result

    def streamers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/control/streamers")["streamers"]
        return result

    def truth(self) -> list[dict[str, Any]]:
        """Every transition so far (sent_wall is the simulator's time.time() at publish)."""
        import orjson

        response = self.http.get(f"{self.urls['control_url']}/control/truth", timeout=120)
        response.raise_for_status()
        return [orjson.loads(line) for line in response.content.splitlines() if line]


# -- the service ------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    """`kick-monitor run` (coordinator → writer + shard workers) against the simulator."""

    process: ManagedProcess

    @classmethod
    def start(
        cls, work: Path, sim_urls: dict[str, str], database_url: str, *, shards: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> ServiceProcess:
        env = python_env(
            {
                "KICK_MONITOR_DATABASE_URL": database_url,
                "KICK_MONITOR_DATA_DIR": str(work / "data"),
                "KICK_MONITOR_PUSHER_URL": sim_urls["pusher_url"],
                "KICK_MONITOR_API_BASE_URL": sim_urls["api_base_url"],
                "KICK_MONITOR_OAUTH_TOKEN_URL": sim_urls["oauth_token_url"],
                "KICK_MONITOR_WEB_API_BASE_URL": sim_urls["web_api_base_url"],
                "KICK_MONITOR_CLIENT_ID": TEST_CLIENT_ID,
                "KICK_MONITOR_CLIENT_SECRET": TEST_CLIENT_SECRET,
                "KICK_MONITOR_LOG_FORMAT": "json",
            }
        )
        if shards:
            env["KICK_MONITOR_SHARD_COUNT"] = str(shards)
        env.update({f"KICK_MONITOR_{k.upper()}": v for k, v in (settings or {}).items()})
        argv = [sys.executable, "-m", "kick_monitor.cli.main", "run"]
        return cls(ManagedProcess.spawn("service", argv, work / "service.log", env))

    @property
    def pid(self) -> int:
        return self.process.pid

    def roles(self) -> dict[str, list[int]]:
        """coordinator / writer / worker PIDs, found by parent PID and process title."""
        found: dict[str, list[int]] = {"coordinator": [self.pid], "writer": [], "worker": []}
        for pid, title in children_of(self.pid).items():
            if "worker shard" in title:
                found["worker"].append(pid)
            elif "writer" in title:
                found["writer"].append(pid)
        return found

    def stop(self) -> int | None:
        return self.process.stop(STOP_TIMEOUT)


@dataclass
class AgentProcess:
    """A helper process of ours (`python -m kick_tools.bench.agents ROLE ...`)."""

    process: ManagedProcess
    out: Path

    @classmethod
    def start(cls, work: Path, role: str, args: Sequence[str], name: str | None = None) -> AgentProcess:
        label = name or role
        out = work / f"{label}.json"
        argv = [sys.executable, "-m", "kick_tools.bench.agents", role, "--out", str(out), *args]
        return cls(ManagedProcess.spawn(label, argv, work / f"{label}.log"), out)

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
        try:
            return self.process.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

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

    path = Path(tempfile.mkdtemp(prefix="kick-bench-", dir=parent))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
