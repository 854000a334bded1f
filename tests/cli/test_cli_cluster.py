"""`kick-monitor cluster status [--json]` (issue 17) against a real database with real leases."""

from __future__ import annotations

import json

import psycopg2.extensions

from kick_monitor import leases
from kick_monitor.leases import Node
from tests.conftest import CliRunner


def test_cluster_status_shows_nodes_shards_duties_and_expiring_leases(
    cli: CliRunner, db_conn: psycopg2.extensions.connection,
) -> None:
    a, b = Node("a:1", "host-a", 1, "1.0.7", "all"), Node("b:2", "host-b", 2, "1.0.8", "all")
    for node in (a, b):
        leases.register(db_conn, node)
    leases.agree_shard_count(db_conn, 3, a, ttl=15.0)
    with db_conn.cursor() as cur:
        cur.execute("INSERT INTO kick_monitor.streamers (username, channel_id)"
                    " SELECT 's' || g, g FROM generate_series(1, 30) g")
        cur.execute("INSERT INTO kick_monitor.duty_holders (name, node, lock_key) VALUES ('id-resolver', 'a:1', 1)")
    db_conn.commit()
    leases.claim(db_conn, a, [0, 1], want=2, ttl=15.0)
    held_b = leases.claim(db_conn, b, [2], want=1, ttl=4.8)  # about to expire: the default TTL / 3 is 5 s
    leases.record_workers(db_conn, a, {0: (True, 11), 1: (False, 9)})

    code, out, err = cli("cluster", "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert [n["name"] for n in status["nodes"]] == ["a:1", "b:2"]
    assert status["plan"]["shard_count"] == 3
    shards = [(s["shard"], s["owner"], s["epoch"]) for s in status["shards"]]
    assert shards == [(0, "a:1", 1), (1, "a:1", 1), (2, "b:2", 1)]
    assert sum(s["streamers"] for s in status["shards"]) == 30
    assert [(s["pusher_connected"], s["watching"]) for s in status["shards"]] == [(True, 11), (False, 9), (None, None)]
    assert [(d["name"], d["node"], d["holding_session"]) for d in status["duties"]] == [("id-resolver", "a:1", None)]
    assert [lease["shard"] for lease in status["expiring"]] == [2]

    leases.renew(db_conn, b, held_b, ttl=4.8)
    code, out, err = cli("cluster", "status")
    assert code == 0, err
    assert "NODES" in out and "host-b" in out and "id-resolver" in out
    assert "connected, watching 11" in out and "DISCONNECTED, watching 9" in out
    assert "the lease of shard 2 (b:2) expires in" in out
