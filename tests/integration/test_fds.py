"""Nothing crosses a fork that the child does not need: every open fd of a role, accounted for.

Reads /proc of a real running tree: each fd of a shard worker is classified (stdio, its
Pusher connection, its three Unix sockets — hand-off, planner link, control —, the role's
SIGTERM pipe, metrics files) and anything else fails the test: no Kick API and no database
connection (the planner asks the API for its workers, `kick_monitor.reconcile_service`).
Listening sockets are counted for every role: each has only its own.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2.extensions
import pytest

from kick_sim import Simulator
from kick_tools.bench.footprint import malloc_thread_arenas
from tests.service import (
    Service,
    children_of,
    insert_streamers,
    running,
    service_env,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

SO_ACCEPTCON = 0x10000  # /proc/net/unix flag of a listening socket
TCP_LISTEN = "0A"


def unix_sockets(pid: int) -> dict[str, tuple[bool, str]]:
    """inode → (listening, bound path) for every Unix socket in the process's namespace."""
    found: dict[str, tuple[bool, str]] = {}
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        flags, inode = int(parts[3], 16), parts[6]
        found[inode] = (bool(flags & SO_ACCEPTCON), parts[7] if len(parts) > 7 else "")
    return found


def tcp_sockets(pid: int) -> dict[str, tuple[int, int, str]]:
    """inode → (local port, remote port, state)."""
    found: dict[str, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
            found[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return found


def open_fds(pid: int) -> dict[int, str]:
    result = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            result[int(entry.name)] = os.readlink(entry)
        except OSError:
            continue  # closed while we looked
    return result


def socket_inode(target: str) -> str | None:
    match = re.fullmatch(r"socket:\[(\d+)\]", target)
    return match.group(1) if match else None


def listening(pid: int) -> list[str]:
    """What the process listens on: Unix socket paths and TCP ports."""
    unix, tcp = unix_sockets(pid), tcp_sockets(pid)
    found = []
    for target in open_fds(pid).values():
        inode = socket_inode(target)
        if inode is None:
            continue
        if inode in unix and unix[inode][0]:
            found.append(unix[inode][1])
        if inode in tcp and tcp[inode][2] == TCP_LISTEN:
            found.append(f"tcp:{tcp[inode][0]}")
    return sorted(found)


def role_pids(service: Service) -> dict[str, int]:
    roles = {}
    for pid, title in service.children().items():
        match = re.search(r"kick-monitor: (worker shard \d+|writer|planner|exporter)", title)
        if match:
            roles[match.group(1)] = pid
    return roles


def test_each_role_holds_only_what_it_needs(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path, free_port
) -> None:
    insert_streamers(conn, sim.create_streamers(10))
    metrics_port = free_port()
    data = tmp_path / "data"
    service = Service(
        service_env(sim, database_url, data, shard_count="2", metrics_port=str(metrics_port)),
        tmp_path / "service.log",
    )
    pusher_port = urlsplit(sim.pusher_url).port
    api_ports = {urlsplit(sim.api_base_url).port, urlsplit(sim.oauth_token_url).port}
    with running(service):
        service.wait_children(2)
        wait_until(lambda: len(role_pids(service)) == 5, 20, what="writer, planner, exporter and two workers")
        wait_until(lambda: sim.subscription_count() >= 20, 30, what="20 subscriptions")
        roles = role_pids(service)
        worker = roles["worker shard 0"]
        planner = roles["planner"]
        wait_until(lambda: any(tcp_sockets(planner).get(socket_inode(t) or "", (0, 0, ""))[1] in api_ports
                               for t in open_fds(planner).values()), 20, what="the first reconciliation (planner)")
        # its helper threads (leases, resolver, eight reconciliation threads...) share the main malloc arena
        assert malloc_thread_arenas(planner) == 0

        run_dir = (data / "run").resolve()
        assert listening(service.pid) == sorted([str(run_dir / "planner-all.sock"), str(run_dir / "writer-all.sock")])
        assert listening(roles["writer"]) == [str(run_dir / "writer-all.sock")]
        assert listening(roles["planner"]) == [str(run_dir / "planner-all.sock")]
        assert listening(roles["exporter"]) == [f"tcp:{metrics_port}"]
        assert listening(worker) == []
        assert listening(roles["worker shard 1"]) == []

        unix, tcp = unix_sockets(worker), tcp_sockets(worker)
        metrics_dir = str((data / "metrics").resolve())
        unaccounted, kinds = [], {"unix": 0, "pusher": 0, "api": 0, "pipe": 0, "db": 0}
        db_port = urlsplit(database_url).port or 5432
        for fd, target in sorted(open_fds(worker).items()):
            inode = socket_inode(target)
            if fd <= 2:
                continue  # stdio: the log file and whatever stdin the service was given
            if inode is not None and inode in unix:
                kinds["unix"] += 1
            elif inode is not None and inode in tcp and tcp[inode][1] == pusher_port:
                kinds["pusher"] += 1
            elif inode is not None and inode in tcp and tcp[inode][1] in api_ports:
                kinds["api"] += 1
            elif inode is not None and inode in tcp and tcp[inode][1] == db_port:
                kinds["db"] += 1
            elif target.startswith("pipe:"):
                kinds["pipe"] += 1
            elif target.startswith(metrics_dir) and target.endswith(".db"):
                continue  # this process's own metric files (multiprocess mode)
            else:
                unaccounted.append((fd, target))
        assert not unaccounted, f"fds the worker does not need: {unaccounted}"
        # hand-off, planner link, control channel; no database (a Unix or TCP socket, as the URL says)
        assert kinds["unix"] + kinds["db"] == 3 and kinds["db"] == 0, f"three channels, no database; found {kinds}"
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kick-monitor api budget'")
            row = cur.fetchone()
        conn.rollback()
        assert row is not None and 1 <= row[0] <= 2, f"budget connections of the planner only; found {row}"
        assert kinds["pusher"] == 1, kinds
        assert kinds["api"] == 0, f"the planner asks the Kick API for its workers; found {kinds}"
        assert kinds["pipe"] == 2, f"the role's SIGTERM pipe only; found {kinds}"
        assert children_of(worker) == {}
