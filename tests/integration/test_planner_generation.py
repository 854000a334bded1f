"""A hand-over always carries a fresh assignment generation, even right after PostgreSQL restarted.

In a cluster, a claimed shard's changes must outrank every earlier owner's (docs/architecture.md,
ordering). The planner allocates the generation on its own connection; after a PostgreSQL restart
that connection is dead until something reopens it, and a claim made then (on the lease keeper's
live connection) kept the previous generation: lower than another node's since, so every API
verdict of the new owner lost to the old owner's last change (seen once in the cluster's
"PostgreSQL down longer than the TTL" test: a streamer left offline after the outage).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kick_monitor.config import load_settings
from kick_monitor.database import connect
from kick_monitor.embedded_pg import EmbeddedPostgres
from kick_monitor.framing import bind_listener
from kick_monitor.messages import StreamerRef
from kick_monitor.migrations import migrate
from kick_monitor.process import Heartbeats
from kick_monitor.role import RoleContext
from workers.planner import Planner


@pytest.fixture
def own_postgres(server_tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    pg = EmbeddedPostgres(server_tmp_path / "own-pg")
    url = pg.start()
    conn = connect(url)
    try:
        migrate(conn)
    finally:
        conn.close()
    try:
        yield pg, url
    finally:
        pg.stop()


def planner_for(url: str, work: Path, control: socket.socket) -> Planner:
    settings = load_settings(environ={"KICK_MONITOR_DATABASE_URL": url, "KICK_MONITOR_DATA_DIR": str(work)})
    ctx = RoleContext(
        kind="planner", name="planner", tree="all", settings=settings, database_url=url, control=control,
        heartbeats=Heartbeats(1), slot=0, shard_count=1, shards=(0,),
        listener=bind_listener(str(work / "planner.sock")), data_dir=work,
    )
    return Planner(ctx)  # not booted: no helper threads, only what stamp() uses


def test_a_hand_over_after_a_postgres_restart_gets_a_fresh_generation(
    own_postgres: tuple[EmbeddedPostgres, str], tmp_path: Path,
) -> None:
    pg, url = own_postgres
    supervisor_end, role_end = socket.socketpair()
    planner = planner_for(url, tmp_path, role_end)
    try:
        refs = (StreamerRef(1, "xqc", 668, 676, "offline", generation=0),)
        [first] = planner.stamp(refs)
        assert first.generation > 0
        pg.stop()
        pg.restart_after_stop()  # the planner's connection is dead now
        [second] = planner.stamp(refs)
        assert second.generation > first.generation, "a hand-over kept an old generation after a restart"
    finally:
        planner.close_database()
        planner.server.close()
        if planner.ctx.listener is not None:
            planner.ctx.listener.close()
        supervisor_end.close()
        role_end.close()
