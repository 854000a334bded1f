"""The one process harness of tests, benchmarks and the demo: start the real service and its
friends as subprocesses, watch them through /proc, and stop exactly what was started.

Every child runs in a session (process group) of its own, is remembered by its PID and
stopped by it: SIGTERM first (the service drains, the simulator writes its state), then,
after a bound, SIGKILL to *its own* process group only — a group id stays reserved while a
member lives, so the members found are ours. Nothing is ever found or killed by name.

    sim = SimProcess.start(work / "sim.log", work / "ready.json", ["--streamers", "100"])
    service = Process("service", service_argv(), work / "service.log",
                      service_env(sim.urls, database_url, work / "data")).start()
    wait_until(lambda: len(worker_pids(service.pid)) == 4, 20, what="4 workers")
    service.stop(40); sim.stop()

Each user keeps its own parts: the tests' `Service` and truth checks (tests/service.py), the
benchmark's `Stack` and agents (kick_tools/bench/harness.py), the demo's failure lines
(kick_tools/demo/processes.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self

import psycopg2
import psycopg2.extensions
import requests
from psycopg2 import sql
from psycopg2.extras import execute_values
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from kick_monitor.embedded_pg import EmbeddedPostgres
from kick_sim.config import TEST_CLIENT_ID, TEST_CLIENT_SECRET

REPO = Path(__file__).resolve().parents[1]  # holds kick_monitor/, workers/, kick_sim/, kick_tools/
POLL = 0.05
KILL_WAIT = 5.0  # after SIGKILL: for the process to be reaped and its group to empty
PR_SET_PDEATHSIG = 1
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # resolved before any fork (Linux only)


class HarnessError(AssertionError):
    """A process did not start, or did not become ready in time (a failed assertion in a test)."""


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = POLL, what: str = "") -> float:
    """Poll `predicate` until true; returns the seconds it took, raises HarnessError on timeout."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise HarnessError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


# -- environments -----------------------------------------------------------------------


def child_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This environment for a child: no KICK_MONITOR_* or metrics dir leaking in, this tree
    importable, unbuffered output; then `overrides` (None removes a variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICK_MONITOR_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def service_env(
    sim_urls: Mapping[str, str], database_url: str, data_dir: Path, *, client_id: str = TEST_CLIENT_ID,
    client_secret: str = TEST_CLIENT_SECRET, settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`child_env` for `kick-monitor run` against the simulator at `sim_urls` (its ready-file keys);
    `settings` by field name (`batch_size`), applied last."""
    env = child_env({
        "KICK_MONITOR_DATABASE_URL": database_url,
        "KICK_MONITOR_DATA_DIR": str(data_dir),
        "KICK_MONITOR_PUSHER_URL": sim_urls["pusher_url"],
        "KICK_MONITOR_API_BASE_URL": sim_urls["api_base_url"],
        "KICK_MONITOR_OAUTH_TOKEN_URL": sim_urls["oauth_token_url"],
        "KICK_MONITOR_WEB_API_BASE_URL": sim_urls["web_api_base_url"],
        "KICK_MONITOR_CLIENT_ID": client_id,
        "KICK_MONITOR_CLIENT_SECRET": client_secret,
        "KICK_MONITOR_LOG_FORMAT": "json",
    })
    env.update({f"KICK_MONITOR_{k.upper()}": v for k, v in (settings or {}).items()})
    return env


def service_argv(*args: str) -> list[str]:
    """`kick-monitor run ARGS` from this source tree."""
    return [sys.executable, "-m", "kick_monitor.cli.main", "run", *args]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at this moment (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- /proc ------------------------------------------------------------------------------


def proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    fields = proc_stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _live_processes() -> Iterable[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat_fields(int(entry.name))
            if fields is not None and len(fields) > 2 and fields[0] != "Z":
                yield int(entry.name), fields


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    return [pid for pid, fields in _live_processes() if int(fields[2]) == pgid]


def children_of(pid: int) -> dict[int, str]:
    """Live direct children of `pid` with their command lines (process titles for our roles)."""
    found: dict[int, str] = {}
    for child, fields in _live_processes():
        if int(fields[1]) == pid:
            with contextlib.suppress(OSError):
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return found


def worker_pids(service_pid: int) -> dict[int, int]:
    """shard -> PID of its worker, by the process titles (`kick-monitor: worker shard N`)."""
    return {
        int(title.rsplit(" ", 1)[1]): pid
        for pid, title in children_of(service_pid).items()
        if "worker shard" in title and title.rsplit(" ", 1)[1].isdigit()
    }


def writer_pid(service_pid: int) -> int | None:
    return next((pid for pid, title in children_of(service_pid).items() if "writer" in title), None)


# -- processes --------------------------------------------------------------------------


def _term_with_parent() -> None:
    """In the child before exec: SIGTERM it if its parent dies, even by SIGKILL (Linux)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Process:
    """One child in a session of its own, output to a log file; stopped by its PID.

    `die_with_parent`: the kernel sends it SIGTERM if we die without stopping it.
    `umask`: the child's umask (None: ours).
    """

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None, *,
        cwd: Path = REPO, umask: int | None = None, die_with_parent: bool = False, append: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else child_env()
        self.cwd = cwd
        self.umask = umask
        self.die_with_parent = die_with_parent
        self.append = append
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_mono = 0.0
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab" if self.append else "wb")
        self.started_mono = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.cwd, umask=-1 if self.umask is None else self.umask,
            preexec_fn=_term_with_parent if self.die_with_parent else None,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    @property
    def exit_code(self) -> int | None:
        """None while running (or never started)."""
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.running():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """Its exit code, or None if it is still running after `timeout`."""
        assert self.proc is not None, f"{self.name} not started"
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 20.0, hurry: Callable[[], bool] = lambda: False) -> int | None:
        """SIGTERM to the PID, wait up to `timeout` (or until `hurry()`), then clear its group.

        Returns the exit code (negative: killed by that signal); None if it was never started.
        """
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline and not hurry():
            time.sleep(POLL)
        self.kill_group()
        return self.proc.poll()

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the child's own process group, reap it, close the log."""
        if self.proc is None:
            return
        if self.proc.poll() is None or group_members(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(KILL_WAIT)
        deadline = time.monotonic() + KILL_WAIT
        while group_members(self.proc.pid) and time.monotonic() < deadline:  # orphans reparented to init
            time.sleep(POLL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# -- the simulator as a process -------------------------------------------------------------


def sim_argv(*args: str) -> list[str]:
    """`python -m kick_sim.cli ARGS` (what `kick-monitor sim` runs)."""
    return [sys.executable, "-m", "kick_sim.cli", *args]


class SimProcess:
    """The simulator as its own process, its URLs read from its ready file, driven over `/control/...`."""

    def __init__(self, process: Process, urls: dict[str, Any]) -> None:
        self.process = process
        self.urls = urls
        self.http = requests.Session()
        # The simulator closes a connection idle for 30 s (KEEP_ALIVE_SECONDS); a GET sent on it just then
        # fails with "Remote end closed connection" (S4 sleeps 30 s before its drop): GETs are retried on a
        # fresh connection. POSTs change the simulator and are not.
        retry = Retry(total=2, connect=2, read=2, status=0, allowed_methods=frozenset({"GET"}), backoff_factor=0)
        self.http.mount("http://", HTTPAdapter(max_retries=retry))

    @classmethod
    def start(
        cls, log_path: Path, ready: Path, args: Sequence[str], *, env: Mapping[str, str] | None = None,
        timeout: float = 120.0, die_with_parent: bool = False, waiting: Callable[[], object] = lambda: None,
    ) -> SimProcess:
        """Start it and wait for its ready file; `waiting()` is called while waiting (it may raise).

        HarnessError (with the end of its log) if it exits or is not ready within `timeout`.
        """
        ready.unlink(missing_ok=True)
        process = Process("the simulator", sim_argv(*args, "--ready-file", str(ready)), log_path, env,
                          die_with_parent=die_with_parent, append=False).start()
        try:
            wait_until(lambda: ready.exists() or not process.running() or bool(waiting()), timeout,
                       what="the simulator to listen")
            if not ready.exists():
                raise HarnessError(f"the simulator exited at start (code {process.exit_code}):\n{process.log_tail()}")
            urls = json.loads(ready.read_text())
        except BaseException:
            process.stop(10.0)
            raise
        return cls(process, urls)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 20.0, hurry: Callable[[], bool] = lambda: False) -> int | None:
        self.http.close()
        return self.process.stop(timeout, hurry)

    def get(self, path: str, timeout: float = 60.0) -> Any:
        response = self.http.get(f"{self.urls['control_url']}{path}", timeout=timeout)
        response.raise_for_status()
        return response.json()

    def get_lines(self, path: str, timeout: float = 60.0) -> list[Any]:
        """A JSON-lines answer (/control/truth, /control/webhooks/messages|attempts), one object per line."""
        response = self.http.get(f"{self.urls['control_url']}{path}", timeout=timeout)
        response.raise_for_status()
        return [json.loads(line) for line in response.content.splitlines() if line.strip()]

    def post(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        response = self.http.post(f"{self.urls['control_url']}{path}", json=body or {}, timeout=timeout)
        if response.status_code != 200:
            raise HarnessError(f"simulator {path}: {response.status_code} {response.text[:200]}")
        return response.json()


# -- PostgreSQL ---------------------------------------------------------------------------


def admin_connection(pg: EmbeddedPostgres) -> psycopg2.extensions.connection:
    """An autocommit connection to the server's `postgres` database (CREATE/DROP DATABASE)."""
    conn = psycopg2.connect(pg.url("postgres"))
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    return conn


def create_database(pg: EmbeddedPostgres, name: str, template: str | None = None, *, replace: bool = False) -> str:
    """CREATE DATABASE `name` (from `template`; dropped first if `replace`); returns its URL."""
    admin = admin_connection(pg)
    try:
        with admin.cursor() as cur:
            if replace:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template is not None:
                statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            cur.execute(statement)
    finally:
        admin.close()
    return pg.url(name)


def drop_databases(pg: EmbeddedPostgres, names: Iterable[str]) -> None:
    """DROP DATABASE each of `names` that exists, whoever is connected to it."""
    admin = admin_connection(pg)
    try:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        admin.close()


def insert_streamers(conn: psycopg2.extensions.connection, rows: Iterable[tuple[str, int, int, int]]) -> int:
    """Add streamers with their ids resolved (slug, channel_id, user_id, chatroom_id), as
    `streamers import` would; committed. Returns how many."""
    rows = list(rows)
    with conn, conn.cursor() as cur:
        execute_values(
            cur, "INSERT INTO kick_monitor.streamers (username, channel_id, kick_user_id, chatroom_id) VALUES %s",
            rows, page_size=2000,
        )
    return len(rows)


def serves(pid: int, pgdata: Path) -> bool:
    """True while `pid` is a live postgres process for `pgdata` (so a reused PID is never signalled)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return state != "Z" and b"-D" in cmdline and str(pgdata).encode() in cmdline and b"postgres" in cmdline[0]


def postmaster_pid(pgdata: Path) -> int | None:
    """The postmaster serving `pgdata`, from its postmaster.pid; None if there is none."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if serves(pid, pgdata) else None


def stop_postmaster(pid: int, pgdata: Path, timeout: float = 20.0) -> bool:
    """When pg_ctl cannot: SIGINT (fast shutdown), then SIGQUIT (immediate); True once it is gone."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        if not serves(pid, pgdata):
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout / 2
        while serves(pid, pgdata) and time.monotonic() < deadline:
            time.sleep(POLL)
    return not serves(pid, pgdata)
