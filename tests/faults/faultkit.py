"""Helpers for the fault suite, on top of tests/service.py (which they reuse, not replace).

- `SECRET`: the Kick client secret every fault service runs with; no output may show it.
- `FaultService`: `Service` (which can start under a chosen umask) with log and timing helpers.
- `converge(...)`: wait until the database agrees with the simulator; returns the seconds.
- `duplicate_errors(conn)`: the history check for faults that lose frames by nature
  (a killed worker, a dropped socket): no (channel, status) twice in a row, every row's
  previous status is the status before it, no change_id twice.
- `record(fault, seconds, detail)`: collect a measured recovery time; the suite prints the
  table at the end (and writes it as JSON to $KICK_MONITOR_FAULT_REPORT if set).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from kick_sim import Simulator
from kick_sim.state import Transition
from tests.service import (
    PUSHER_COMMITS,
    Service,
    history_errors,
    mismatches,
    query,
    rows_by_channel,
    service_env,
    status_transitions,
    wait_until,
)

SECRET = "s3cr3t-fault-suite-7c1e9b2d4a"


@dataclass
class Recovery:
    fault: str
    seconds: float
    detail: str = ""


RECOVERIES: list[Recovery] = []


def record(fault: str, seconds: float, detail: str = "") -> None:
    """Keep one measured recovery time for the end-of-run table (and print it now)."""
    RECOVERIES.append(Recovery(fault, round(seconds, 2), detail))
    print(f"\nRECOVERY {fault}: {seconds:.2f} s {detail}", flush=True)


@dataclass
class FaultService(Service):
    """A `Service` with the fault suite's log and timing helpers."""

    @property
    def started_at(self) -> float:
        """time.monotonic() when it was started (0.0 before)."""
        return 0.0 if self.process is None else self.process.started_mono

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (anything else, e.g. a traceback on stderr, is skipped)."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records

    def messages(self, contains: str) -> list[dict[str, Any]]:
        return [r for r in self.log_records() if contains in str(r.get("msg", ""))]

    def tree_pids(self) -> list[int]:
        return [self.pid, *self.children()]


def make_env(sim: Simulator, database_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    return service_env(sim, database_url, data_dir, **settings)


# -- convergence and history ---------------------------------------------------------------------


def converge(
    sim: Simulator, conn: psycopg2.extensions.connection, timeout: float, *, exact: bool
) -> float:
    """Seconds until current state == truth (and, if `exact`, history == every transition once)."""
    started = time.monotonic()

    def done() -> bool:
        if mismatches(sim, conn):
            return False
        return not exact or not history_errors(sim, conn)

    try:
        wait_until(done, timeout, interval=0.1, what="database to match the simulator")
    except AssertionError:
        bad = mismatches(sim, conn)
        errors = history_errors(sim, conn) if exact else []
        raise AssertionError(
            f"not converged after {timeout}s: {len(bad)} state mismatches {bad[:5]};"
            f" {len(errors)} history errors {errors[:5]}"
        ) from None
    return time.monotonic() - started


def history_rows(conn: psycopg2.extensions.connection) -> dict[int, list[tuple[Any, ...]]]:
    """(change_id, previous_status, status) per channel, in commit order of the transitions."""
    return rows_by_channel(
        conn,
        "SELECT channel_id, change_id, previous_status, status FROM kick_monitor.status_events"
        " ORDER BY order_generation, order_seq, received_at, id",  # the writer's order, not a clock
    )


def duplicate_errors(conn: psycopg2.extensions.connection) -> list[str]:
    """History defects that no fault excuses: repeats, broken chains, a change_id twice."""
    errors = []
    seen: set[str] = set()
    for channel_id, rows in history_rows(conn).items():
        before: str | None = None
        for change_id, previous, status in rows:
            if change_id in seen:
                errors.append(f"channel {channel_id}: change {change_id} recorded twice")
            seen.add(change_id)
            if status == before:
                errors.append(f"channel {channel_id}: {status} twice in a row ({change_id})")
            elif before is not None and previous != before:
                errors.append(f"channel {channel_id}: {change_id} says previous {previous}, history says {before}")
            before = status
    return errors


def assert_no_duplicates(conn: psycopg2.extensions.connection) -> None:
    errors = duplicate_errors(conn)
    assert not errors, f"{len(errors)} history defects: {errors[:5]}"


def delivered_latencies(
    sim: Simulator, conn: psycopg2.extensions.connection, since_wall: float
) -> list[float]:
    """Seconds from the simulator's send to the commit, for delivered transitions sent after `since_wall`.

    Channels with a missed (undelivered) transition are left out: after one, a delivered
    frame may rightly change nothing (the tracker already believed it).
    """
    rows = query(conn, PUSHER_COMMITS)
    recorded: dict[tuple[int, str], list[float]] = {}
    for channel_id, status, at in rows:
        recorded.setdefault((channel_id, status), []).append(at)
    result = []
    truth = status_transitions(sim.truth())
    skipped = {t.channel_id for t in truth if not t.delivered}
    for t in truth:
        if not t.delivered or t.sent_wall < since_wall or t.channel_id in skipped:
            continue
        later = [at for at in recorded.get((t.channel_id, t.status), []) if at >= t.sent_wall]
        if later:
            result.append(min(later) - t.sent_wall)
        else:
            result.append(float("inf"))
    return sorted(result)


def missed_transitions(truth: Iterable[Transition]) -> list[Transition]:
    return [t for t in status_transitions(truth) if not t.delivered]


# -- database faults -------------------------------------------------------------------------------


def admin_connection(database_url: str) -> psycopg2.extensions.connection:
    """An autocommit connection to the `postgres` database of the same server."""
    base, _, query = database_url.partition("?")
    url = base.rsplit("/", 1)[0] + "/postgres" + (f"?{query}" if query else "")
    conn = psycopg2.connect(url)
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    return conn


def database_name(conn: psycopg2.extensions.connection) -> str:
    return str(conn.get_dsn_parameters()["dbname"])


def backends(
    admin: psycopg2.extensions.connection, dbname: str, prefix: str = "kick-monitor"
) -> list[tuple[int, str, str]]:
    """(pid, application_name, state) of the service's sessions on `dbname`."""
    with admin.cursor() as cur:
        cur.execute(
            "SELECT pid, application_name, coalesce(state, '') FROM pg_stat_activity"
            " WHERE datname = %s AND application_name LIKE %s",
            (dbname, prefix + "%"),
        )
        return [(int(pid), str(name), str(state)) for pid, name, state in cur.fetchall()]


def terminate(admin: psycopg2.extensions.connection, dbname: str, prefix: str = "kick-monitor") -> list[str]:
    """pg_terminate_backend every session of the service whose application_name starts with `prefix`."""
    killed = []
    with admin.cursor() as cur:
        for pid, name, _ in backends(admin, dbname, prefix):
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            if cur.fetchone() == (True,):
                killed.append(name)
    return killed


def set_connections_allowed(admin: psycopg2.extensions.connection, dbname: str, allowed: bool) -> None:
    """Make a database refuse (or accept) new connections: a 'database unreachable' on a shared server."""
    with admin.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(dbname), sql.Literal(allowed)
            )
        )


def database_unreachable(admin: psycopg2.extensions.connection, dbname: str) -> None:
    """New connections refused, the service's current ones cut: for the service, the database is gone."""
    set_connections_allowed(admin, dbname, False)
    terminate(admin, dbname)


# -- processes and endpoints ---------------------------------------------------------------------------


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def assert_clean(text: str, where: str) -> None:
    assert SECRET not in text, f"the client secret appears in {where}"


def assert_titles_clean(service: Service) -> dict[int, str]:
    """Every process title of the tree: role names, never the secret."""
    titles = {pid: cmdline(pid) for pid in [service.pid, *service.children()]}
    for pid, title in titles.items():
        assert_clean(title, f"the title of process {pid}")
    return titles


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def metric_values(text: str, name: str) -> dict[str, float]:
    """`{labels: value}` for every sample of metric `name` in a Prometheus text scrape."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            values[key[len(name):]] = float(value)
    return values


def kill(pid: int | None, sig: signal.Signals = signal.SIGKILL) -> None:
    assert pid is not None
    os.kill(pid, sig)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """`wait_until`, returning the seconds it took."""
    started = time.monotonic()
    wait_until(predicate, timeout, interval=interval, what=what)
    return time.monotonic() - started


def start(service: Service, sim: Simulator, shards: int, subscriptions: int) -> None:
    """Inside `running(service)`: wait for the tree and its subscriptions; check the titles."""
    service.wait_children(shards)
    wait_until(lambda: sim.subscription_count() >= subscriptions, 30, what=f"{subscriptions} subscriptions")
    assert_titles_clean(service)
