"""End-to-end harness: the real `kick-monitor run` as a subprocess against the simulator.

The service runs in its own process group (start_new_session) and is stopped by its PID
or that group only — never by name. Children are found through /proc by parent pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extensions

from kick_monitor.sim import SimStreamer, Simulator, Transition

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def children_of(pid: int) -> dict[int, str]:
    """Direct children of `pid` with their process titles."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Service:
    """One `kick-monitor run` process tree."""

    env: dict[str, str]
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kick_monitor.cli.main", "run", *self.args],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> dict[int, str]:
        return children_of(self.pid)

    def worker_pids(self) -> dict[int, int]:
        """shard -> pid of its worker."""
        result: dict[int, int] = {}
        for pid, title in self.children().items():
            if "worker shard" in title:
                result[int(title.rsplit(" ", 1)[1])] = pid
        return result

    def writer_pid(self) -> int | None:
        return next((pid for pid, title in self.children().items() if "writer" in title), None)

    def wait_children(self, workers: int, timeout: float = 20.0) -> None:
        wait_until(lambda: len(self.worker_pids()) == workers and self.writer_pid() is not None,
                   timeout, what=f"{workers} workers and a writer")

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM to the coordinator only; it stops its children. Returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """Last resort for a failed test: SIGKILL our own process group, nothing else."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def service_env(sim: Simulator, database_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICK_MONITOR_")}
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
        KICK_MONITOR_DATABASE_URL=database_url,
        KICK_MONITOR_DATA_DIR=str(data_dir),
        KICK_MONITOR_PUSHER_URL=sim.pusher_url,
        KICK_MONITOR_API_BASE_URL=sim.api_base_url,
        KICK_MONITOR_OAUTH_TOKEN_URL=sim.oauth_token_url,
        KICK_MONITOR_WEB_API_BASE_URL=sim.web_api_base_url,
        KICK_MONITOR_CLIENT_ID=sim.config.client_id,
        KICK_MONITOR_CLIENT_SECRET=sim.config.client_secret,
        KICK_MONITOR_LOG_FORMAT="json",
        KICK_MONITOR_HEARTBEAT_TIMEOUT="10",
        KICK_MONITOR_RELOAD_INTERVAL="5",
    )
    env.update({f"KICK_MONITOR_{k.upper()}": v for k, v in settings.items()})
    return env


def insert_streamers(conn: psycopg2.extensions.connection, streamers: Iterable[SimStreamer]) -> None:
    with conn, conn.cursor() as cur:
        for s in streamers:
            cur.execute(
                "INSERT INTO kick_monitor.streamers (username, channel_id, kick_user_id, chatroom_id)"
                " VALUES (%s, %s, %s, %s)",
                (s.slug, s.channel_id, s.user_id, s.chatroom_id),
            )


def status_transitions(truth: Iterable[Transition]) -> list[Transition]:
    """The simulator's status changes (title updates are not transitions)."""
    return [t for t in truth if t.status != t.previous_status]


def current_state(conn: psycopg2.extensions.connection) -> dict[int, str]:
    with conn.cursor() as cur:
        cur.execute("SELECT channel_id, status FROM kick_monitor.streamers WHERE channel_id IS NOT NULL")
        rows = dict(cur.fetchall())
    conn.rollback()
    return rows


def history(conn: psycopg2.extensions.connection) -> dict[int, list[str]]:
    """Every recorded transition per channel, oldest first.

    unknown→offline is left out: the simulator's streamers start offline, so learning that
    (reconciliation at connect does) is knowledge gained, not a transition of its truth.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT channel_id, status FROM kick_monitor.status_events"
            " WHERE NOT (previous_status = 'unknown' AND status = 'offline')"
            " ORDER BY order_generation, order_seq, received_at, id"  # the writer's order, not a clock
        )
        rows = cur.fetchall()
    conn.rollback()
    result: dict[int, list[str]] = {}
    for channel_id, status in rows:
        result.setdefault(channel_id, []).append(status)
    return result


def mismatches(sim: Simulator, conn: psycopg2.extensions.connection) -> list[tuple[int, str, str | None]]:
    """Watched streamers whose DB status differs from the simulator's truth.

    "unknown" counts as agreeing with offline: the simulator's streamers start offline, and
    without a frame or a reconciliation there is nothing to learn it from.
    """
    state = current_state(conn)
    return [
        (s.channel_id, truth, state[s.channel_id])
        for s in sim.streamers()
        if s.channel_id in state
        and (truth := ("online" if sim.is_live(s.slug) else "offline")) != state[s.channel_id]
        and not (truth == "offline" and state[s.channel_id] == "unknown")
    ]


def history_errors(sim: Simulator, conn: psycopg2.extensions.connection) -> list[str]:
    """Channels whose recorded history is not exactly the simulator's sequence of transitions."""
    expected: dict[int, list[str]] = {}
    for t in status_transitions(sim.truth()):
        expected.setdefault(t.channel_id, []).append(t.status)
    recorded = history(conn)
    errors = []
    for channel_id in expected.keys() | recorded.keys():
        want, got = expected.get(channel_id, []), recorded.get(channel_id, [])
        if want != got:
            errors.append(f"channel {channel_id}: truth {want} recorded {got}")
    return errors


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    service.start()
    try:
        yield service
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.stop()
        else:
            service.kill_leftovers()
