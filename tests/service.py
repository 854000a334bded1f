"""End-to-end tests' view of the real `kick-monitor run` against the in-process simulator.

Processes are started and stopped by the shared harness (kick_tools/harness.py): in a process
group of their own, stopped by PID or that group only — never by name; children found through
/proc by parent pid. Here: `Service` (one process tree, as the tests drive it) and the truth
checks (database vs the simulator).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from kick_sim import SimStreamer, Simulator, Transition
from kick_tools import harness
from kick_tools.harness import REPO, alive, children_of, wait_until

__all__ = [
    "PUSHER_COMMITS", "REPO", "Service", "alive", "children_of", "current_state", "history", "history_errors",
    "insert_streamers", "mismatches", "query", "rows_by_channel", "running", "service_env", "status_transitions",
    "wait_until",
]


@dataclass
class Service:
    """One `kick-monitor run` process tree (`umask`: its umask, None: ours)."""

    env: dict[str, str]
    log_path: Path
    args: list[str] = field(default_factory=list)
    umask: int | None = None
    process: harness.Process | None = None

    def start(self) -> Service:
        self.process = harness.Process(
            "service", harness.service_argv(*self.args), self.log_path, self.env, umask=self.umask
        ).start()
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.process is None else self.process.proc

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> dict[int, str]:
        return children_of(self.pid)

    def worker_pids(self) -> dict[int, int]:
        """shard -> pid of its worker."""
        return harness.worker_pids(self.pid)

    def writer_pid(self) -> int | None:
        return harness.writer_pid(self.pid)

    def wait_children(self, workers: int, timeout: float = 20.0) -> None:
        wait_until(lambda: len(self.worker_pids()) == workers and self.writer_pid() is not None,
                   timeout, what=f"{workers} workers and a writer")

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM to the coordinator only (it stops its children); SIGKILL to its group after `timeout`.
        Returns its exit code (negative if it had to be killed)."""
        assert self.process is not None
        return self.process.stop(timeout)

    def kill_leftovers(self) -> None:
        """Last resort for a failed test: SIGKILL our own process group, nothing else."""
        assert self.process is not None
        self.process.kill_group()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def service_env(sim: Simulator, database_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """The service's environment against `sim`, with the tests' short heartbeat and reload."""
    urls = {"pusher_url": sim.pusher_url, "api_base_url": sim.api_base_url,
            "oauth_token_url": sim.oauth_token_url, "web_api_base_url": sim.web_api_base_url}
    return harness.service_env(
        urls, database_url, data_dir, client_id=sim.config.client_id, client_secret=sim.config.client_secret,
        settings={"heartbeat_timeout": "10", "reload_interval": "5", **settings},
    )


def insert_streamers(conn: psycopg2.extensions.connection, streamers: Iterable[SimStreamer]) -> None:
    harness.insert_streamers(conn, ((s.slug, s.channel_id, s.user_id, s.chatroom_id) for s in streamers))


def status_transitions(truth: Iterable[Transition]) -> list[Transition]:
    """The simulator's status changes (title updates are not transitions)."""
    return [t for t in truth if t.status != t.previous_status]


def current_state(conn: psycopg2.extensions.connection) -> dict[int, str]:
    return dict(query(conn, "SELECT channel_id, status FROM kick_monitor.streamers WHERE channel_id IS NOT NULL"))


# (channel_id, status, commit time in epoch seconds) of every change that came over Pusher
PUSHER_COMMITS = (
    "SELECT channel_id, status, extract(epoch FROM recorded_at)::float8 FROM kick_monitor.status_events"
    " WHERE source = 'pusher' ORDER BY received_at"
)


def query(conn: psycopg2.extensions.connection, statement: str) -> list[tuple[Any, ...]]:
    """All rows of a read-only query; the transaction is ended, so the next call sees later commits."""
    with conn.cursor() as cur:
        cur.execute(statement)
        rows = cur.fetchall()
    conn.rollback()
    return rows


def rows_by_channel(conn: psycopg2.extensions.connection, statement: str) -> dict[int, list[tuple[Any, ...]]]:
    """The rows of `statement` grouped by its first column (a channel id), the rest in query order."""
    result: dict[int, list[tuple[Any, ...]]] = {}
    for channel_id, *rest in query(conn, statement):
        result.setdefault(channel_id, []).append(tuple(rest))
    return result


def history(conn: psycopg2.extensions.connection) -> dict[int, list[str]]:
    """Every recorded transition per channel, oldest first.

    unknown→offline is left out: the simulator's streamers start offline, so learning that
    (reconciliation at connect does) is knowledge gained, not a transition of its truth.
    """
    rows = rows_by_channel(
        conn,
        "SELECT channel_id, status FROM kick_monitor.status_events"
        " WHERE NOT (previous_status = 'unknown' AND status = 'offline')"
        " ORDER BY order_generation, order_seq, received_at, id",  # the writer's order, not a clock
    )
    return {channel_id: [status for (status,) in statuses] for channel_id, statuses in rows.items()}


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


def make_service(sim: Simulator, url: str, tmp_path: Path, **settings: str) -> Service:
    """`kick-monitor run` against `sim` and `url`, data dir and log under `tmp_path`."""
    return Service(service_env(sim, url, tmp_path / "data", **settings), tmp_path / "service.log")


def settle(sim: Simulator, conn: psycopg2.extensions.connection, timeout: float = 20.0) -> None:
    """Wait until the database agrees with the simulator (or fail with the differences)."""
    try:
        wait_until(lambda: not mismatches(sim, conn) and not history_errors(sim, conn), timeout,
                   interval=0.2, what="database to match the simulator")
    except AssertionError:
        bad = mismatches(sim, conn)
        errors = history_errors(sim, conn)
        raise AssertionError(
            f"{len(bad)} state mismatches {bad[:5]}; {len(errors)} history errors {errors[:5]}"
        ) from None


def commit_lags(
    sim: Simulator, conn: psycopg2.extensions.connection, since: float = 0.0
) -> list[tuple[float, float, int]]:
    """(commit − send seconds, send wall time, channel) per transition sent after `since`.

    Joined on (channel, status, order of occurrence): the simulator's send time of each
    delivered lifecycle frame against the commit time of the matching history row.
    """
    sent: dict[tuple[int, str], list[float]] = {}
    for t in status_transitions(sim.truth()):
        if t.delivered:
            sent.setdefault((t.channel_id, t.status), []).append(t.sent_wall)
    recorded: dict[tuple[int, str], list[float]] = {}
    for channel_id, status, at in query(conn, PUSHER_COMMITS):
        recorded.setdefault((channel_id, status), []).append(at)
    return [
        (recorded_at - sent_at, sent_at, key[0])
        for key, times in recorded.items()
        for sent_at, recorded_at in zip(sorted(sent.get(key, [])), sorted(times), strict=False)
        if sent_at >= since
    ]


def latencies_ms(sim: Simulator, conn: psycopg2.extensions.connection, since: float = 0.0) -> list[float]:
    """Frame → commit per transition sent after `since`, in milliseconds, sorted."""
    return sorted(lag * 1000 for lag, _, _ in commit_lags(sim, conn, since))


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def listening_addresses(port: int) -> set[str]:
    """Local addresses listening on TCP `port`, from /proc/net/tcp and tcp6 ("127.0.0.1", "0.0.0.0", "::")."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, _, port_hex = local.partition(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A = LISTEN
                continue
            if width == 8:
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
            else:
                found.add("::1" if address == "0" * 24 + "01000000" else ("::" if set(address) == {"0"} else address))
    return found


def flip_in_rounds(sim: Simulator, streamers: list[SimStreamer], rounds: int, gap: float) -> int:
    """Toggle every streamer once per round, spread evenly over `gap` seconds, in the same order
    each round (so one streamer's flips are `gap` apart). Returns the flips made."""
    live = {s.slug: sim.is_live(s.slug) for s in streamers}
    step = gap / len(streamers)
    start = time.monotonic()
    for n in range(rounds * len(streamers)):
        delay = start + n * step - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        slug = streamers[n % len(streamers)].slug
        live[slug] = not live[slug]
        sim.set_live(slug, live[slug])
    return rounds * len(streamers)

