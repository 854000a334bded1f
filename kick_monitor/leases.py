"""Nodes and shard leases in PostgreSQL: which process tree of a deployment listens for which shard.

A node is one `kick-monitor run` (its coordinator's process tree). It registers itself in
`kick_monitor.cluster_nodes` and claims shards in `kick_monitor.shard_leases`, the job-queue
pattern (Que, Oban, graphile-worker): one `UPDATE … WHERE shard IN (SELECT … FOR UPDATE SKIP
LOCKED)` claims free or expired rows without two nodes ever getting the same one, and a lease
not renewed within the TTL is free for anyone. The database's clock is the only clock that
decides expiry, so hosts' clocks do not matter.

Each claim raises the shard's `epoch`; a renewal names the epoch it holds, so a node whose
lease was taken over (even if it was taken back later) learns that it lost it. What the node
does with a claim — a fresh assignment generation for the shard's streamers, so the new
owner's changes outrank the old owner's — is the planner's (`kick_monitor.lease_keeper`).

Every function here is one short transaction on the caller's connection (committed before
returning); none of them waits on a lock held by another node.

>>> node = Node.this("all", "1.0.5")
>>> register(conn, node); shard_count = agree_shard_count(conn, 4, node)
>>> held = claim(conn, node, range(4), want=2, ttl=15.0)     # {shard: epoch}
>>> held = renew(conn, node, held, ttl=15.0)                 # those still ours
>>> release(conn, node, held)                                # clean stop: free at once
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions

LEASES_CHANNEL = "kick_monitor_leases"  # NOTIFY when shards become free: other nodes claim at once

@dataclass(frozen=True)
class Node:
    """One process tree: `name` is host:coordinator-pid, unique while it runs."""

    name: str
    host: str
    pid: int
    version: str
    shards: str  # "all", or the one shard a per-shard unit runs

    @classmethod
    def this(cls, shards: str, version: str, coordinator_pid: int | None = None) -> Node:
        """This tree's node; roles pass their parent (the coordinator) as `coordinator_pid`."""
        host = socket.gethostname()
        pid = os.getpid() if coordinator_pid is None else coordinator_pid
        return cls(node_name(host, pid), host, pid, version, shards)


def node_name(host: str | None = None, pid: int | None = None) -> str:
    """host:pid of the coordinator; in a role process (whose parent is the coordinator) without arguments."""
    return f"{host or socket.gethostname()}:{os.getppid() if pid is None else pid}"


@dataclass(frozen=True)
class Membership:
    """What a node needs to know to take its fair share: live nodes and who holds how many."""

    shard_count: int
    live_nodes: int  # nodes of the whole-tree kind ('all') renewed within the TTL
    held_by: dict[str, int]  # live node -> shards it holds (unexpired)
    free: int  # shards nobody holds (never owned, released, or expired)
    oldest_free: float = 0.0  # seconds the longest-unowned shard has been without an owner


def register(conn: psycopg2.extensions.connection, node: Node) -> None:
    """Insert or refresh this node's row; forget nodes of this host whose coordinator is gone.

    A node restarted after a crash (systemd's Restart=) would otherwise wait a whole TTL for
    its own predecessor's leases. Only same-host rows are checked (a pid means nothing elsewhere),
    and a pid that was reused merely leaves the row to expire.
    """
    with conn.cursor() as cur:
        cur.execute(
            """INSERT INTO kick_monitor.cluster_nodes (name, host, pid, version, shards)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, shards = EXCLUDED.shards,
                                                renewed_at = now()""",
            (node.name, node.host, node.pid, node.version, node.shards),
        )
        _forget_dead_neighbours(cur, node)
    conn.commit()


def deregister(conn: psycopg2.extensions.connection, node: Node) -> None:
    """Clean stop: every lease of this node free at once, and its row gone."""
    with conn.cursor() as cur:
        _forget(cur, [node.name])
    conn.commit()


def agree_shard_count(conn: psycopg2.extensions.connection, proposed: int, node: Node, ttl: float) -> int:
    """The deployment's shard count: the stored plan's while other nodes run, else `proposed`.

    With no other live node (one host, or the first node of a cluster) the plan follows this
    node's configuration — single-host behaviour as before the cluster. While others run, a
    node adopts their plan: two counts at once would give a streamer two owners.
    """
    with conn.cursor() as cur:
        cur.execute("LOCK TABLE kick_monitor.shard_plan IN EXCLUSIVE MODE")  # one re-plan at a time
        _forget_dead_neighbours(cur, node)  # a crashed predecessor on this host is not "another node"
        cur.execute("SELECT shard_count FROM kick_monitor.shard_plan")
        row = cur.fetchone()
        cur.execute(
            "SELECT count(*) FROM kick_monitor.cluster_nodes"
            " WHERE name <> %s AND renewed_at > now() - make_interval(secs => %s)",
            (node.name, ttl),
        )
        others = int(cur.fetchone()[0])  # type: ignore[index]
        if row is not None and (others or row[0] == proposed):
            count = int(row[0])
        else:
            count = proposed
            cur.execute(
                """INSERT INTO kick_monitor.shard_plan (shard_count) VALUES (%s)
                   ON CONFLICT (id) DO UPDATE SET shard_count = EXCLUDED.shard_count,
                                                  version = shard_plan.version + 1, changed_at = now()""",
                (count,),
            )
            # Every lease of the old plan ends: a shard number now means other streamers.
            cur.execute("DELETE FROM kick_monitor.shard_leases WHERE shard >= %s", (count,))
            cur.execute("UPDATE kick_monitor.shard_leases SET owner = NULL, expires_at = '-infinity',"
                        " free_since = now()")
        cur.execute(
            """INSERT INTO kick_monitor.shard_leases (shard) SELECT generate_series(0, %s - 1)
               ON CONFLICT (shard) DO NOTHING""",
            (count,),
        )
    conn.commit()
    return count


def claim(
    conn: psycopg2.extensions.connection, node: Node, candidates: Iterable[int], want: int, ttl: float,
) -> dict[int, int]:
    """Claim up to `want` free or expired shards among `candidates`; {shard: new epoch}.

    Rows another node is claiming or renewing right now are skipped, never waited for.
    A shard whose lease this node already holds under its own name (a restarted planner of
    the same tree) counts as free for it: the claim gives it a new epoch.
    """
    shards = sorted(set(candidates))
    if want <= 0 or not shards:
        return {}
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE kick_monitor.shard_leases l
               SET owner = %(node)s, epoch = l.epoch + 1, claimed_at = now(), free_since = NULL,
                   pusher_connected = NULL, watching = NULL,
                   expires_at = now() + make_interval(secs => %(ttl)s)
               WHERE l.shard IN (
                   SELECT shard FROM kick_monitor.shard_leases
                   WHERE shard = ANY(%(shards)s)
                     AND (owner IS NULL OR owner = %(node)s OR expires_at < now())
                   ORDER BY shard
                   LIMIT %(want)s
                   FOR UPDATE SKIP LOCKED)
               RETURNING l.shard, l.epoch""",
            {"node": node.name, "ttl": ttl, "shards": shards, "want": want},
        )
        claimed = {int(shard): int(epoch) for shard, epoch in cur.fetchall()}
    conn.commit()
    return claimed


def renew(
    conn: psycopg2.extensions.connection, node: Node, held: Mapping[int, int], ttl: float,
) -> dict[int, int]:
    """Extend this node's leases (and its own row); returns those still held at the same epoch.

    A lease that expired but that nobody claimed since is renewed: nobody else listened.
    """
    with conn.cursor() as cur:
        cur.execute("UPDATE kick_monitor.cluster_nodes SET renewed_at = now() WHERE name = %s", (node.name,))
        if cur.rowcount == 0:
            conn.rollback()
            register(conn, node)  # our row was removed (a clean stop of a namesake, or by hand)
            return renew(conn, node, held, ttl) if held else {}
        if not held:
            conn.commit()
            return {}
        cur.execute(
            """UPDATE kick_monitor.shard_leases l SET expires_at = now() + make_interval(secs => %s)
               FROM unnest(%s::int[], %s::bigint[]) AS h(shard, epoch)
               WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = %s
               RETURNING l.shard, l.epoch""",
            (ttl, list(held), [held[s] for s in held], node.name),
        )
        kept = {int(shard): int(epoch) for shard, epoch in cur.fetchall()}
    conn.commit()
    return kept


def release(conn: psycopg2.extensions.connection, node: Node, held: Mapping[int, int]) -> None:
    """Hand shards back at once (after this node stopped listening to them)."""
    if not held:
        return
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE kick_monitor.shard_leases l
               SET owner = NULL, expires_at = '-infinity', free_since = now()
               FROM unnest(%s::int[], %s::bigint[]) AS h(shard, epoch)
               WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = %s""",
            (list(held), [held[s] for s in held], node.name),
        )
        cur.execute("SELECT pg_notify(%s, 'released')", (LEASES_CHANNEL,))
    conn.commit()


def record_workers(
    conn: psycopg2.extensions.connection, node: Node, states: Mapping[int, tuple[bool, int]],
) -> None:
    """Store what the owner's workers last said (Pusher connected, streamers watched) with their leases."""
    if not states:
        return
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE kick_monitor.shard_leases l SET pusher_connected = s.connected, watching = s.watching
               FROM unnest(%s::int[], %s::boolean[], %s::int[]) AS s(shard, connected, watching)
               WHERE l.shard = s.shard AND l.owner = %s""",
            (list(states), [states[k][0] for k in states], [states[k][1] for k in states], node.name),
        )
    conn.commit()


def membership(conn: psycopg2.extensions.connection, ttl: float) -> Membership:
    """Live whole-tree nodes and their holdings, for the fair share (one read)."""
    with conn.cursor() as cur:
        cur.execute("SELECT shard_count FROM kick_monitor.shard_plan")
        row = cur.fetchone()
        shard_count = int(row[0]) if row else 0
        cur.execute(
            """SELECT n.name, n.shards, count(l.shard)
               FROM kick_monitor.cluster_nodes n
               LEFT JOIN kick_monitor.shard_leases l ON l.owner = n.name AND l.expires_at > now()
               WHERE n.renewed_at > now() - make_interval(secs => %s)
               GROUP BY n.name, n.shards""",
            (ttl,),
        )
        rows = cur.fetchall()
        cur.execute(
            """SELECT count(*), COALESCE(extract(epoch FROM now() - min(COALESCE(free_since, expires_at))), 0)
               FROM kick_monitor.shard_leases WHERE owner IS NULL OR expires_at < now()"""
        )
        free_row = cur.fetchone()
        assert free_row is not None
    conn.commit()
    return Membership(
        shard_count=shard_count,
        live_nodes=sum(1 for _, shards, _ in rows if shards == "all"),
        held_by={name: int(count) for name, shards, count in rows if shards == "all"},
        free=int(free_row[0]),
        oldest_free=max(0.0, float(free_row[1])),
    )


def contenders(conn: psycopg2.extensions.connection, node: Node, shards: Iterable[int], ttl: float) -> int:
    """Other live nodes that could take one of `shards` (whole-tree nodes, or per-shard units of them)."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT count(*) FROM kick_monitor.cluster_nodes
               WHERE name <> %s AND renewed_at > now() - make_interval(secs => %s)
                 AND (shards = 'all' OR shards = ANY(%s))""",
            (node.name, ttl, [str(s) for s in shards]),
        )
        row = cur.fetchone()
    conn.commit()
    return int(row[0]) if row else 0


def fair_share(members: Membership, me: str, holding: int) -> tuple[int, int]:
    """(shards to claim, shards to release) for a whole-tree node holding `holding` shards now.

    The share is ceil(shards / live nodes) at most and floor(...) at least. A node above the
    ceiling gives one back per round; a node above the floor gives one back only while
    another live node is below the floor and no shard is free — so a joining node gets its
    share one shard at a time and nothing else moves. A node claims up to the floor at once,
    and up to the ceiling only what nobody below the floor is waiting for.
    """
    nodes = max(1, members.live_nodes if me in members.held_by else members.live_nodes + 1)
    low, high = divmod(members.shard_count, nodes)
    ceiling = low + (1 if high else 0)
    hungry = any(count < low for name, count in members.held_by.items() if name != me)
    if holding > ceiling:
        return 0, 1
    if holding > low and hungry and members.free == 0:
        return 0, 1
    if holding < low:
        return min(low - holding, members.free), 0
    if holding < ceiling and not hungry:
        return min(ceiling - holding, members.free), 0
    return 0, 0


def _forget_dead_neighbours(cur: Any, node: Node) -> None:
    cur.execute("SELECT name, pid FROM kick_monitor.cluster_nodes WHERE host = %s AND name <> %s",
                (node.host, node.name))
    dead = [name for name, pid in cur.fetchall() if not _alive(pid)]
    if dead:
        _forget(cur, dead)


def _forget(cur: Any, names: list[str]) -> None:
    cur.execute(
        "UPDATE kick_monitor.shard_leases SET owner = NULL, expires_at = '-infinity', free_since = now()"
        " WHERE owner = ANY(%s)",
        (names,),
    )
    cur.execute("DELETE FROM kick_monitor.cluster_nodes WHERE name = ANY(%s)", (names,))
    cur.execute("SELECT pg_notify(%s, 'released')", (LEASES_CHANNEL,))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def read_status(conn: psycopg2.extensions.connection, soon: float) -> dict[str, Any]:
    """Nodes, shards, duties and leases expiring within `soon` seconds, as `cluster status` shows them.

    Streamers per shard are counted with the deployment's plan (`sharding.plan_shards`).
    """
    from .sharding import plan_shards
    from .streamers import load_monitorable

    def rows(statement: str, *params: Any) -> list[dict[str, Any]]:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    nodes = rows(
        """SELECT name, host, pid, version, shards, started_at, renewed_at,
                  extract(epoch FROM now() - renewed_at)::float8 AS renewed_seconds_ago
           FROM kick_monitor.cluster_nodes ORDER BY name""")
    plan = rows("SELECT shard_count, version, changed_at FROM kick_monitor.shard_plan")
    shards = rows(
        """SELECT shard, owner, epoch, expires_at, claimed_at, pusher_connected, watching,
                  extract(epoch FROM expires_at - now())::float8 AS expires_in,
                  CASE WHEN owner IS NULL OR expires_at < now()
                       THEN extract(epoch FROM now() - COALESCE(free_since, expires_at))::float8 END AS unowned_for
           FROM kick_monitor.shard_leases ORDER BY shard""")
    duties = rows(
        """SELECT d.name, d.node, d.round_started, a.application_name AS holding_session
           FROM kick_monitor.duty_holders d
           LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted
                AND l.classid = (d.lock_key >> 32)::oid AND l.objid = (d.lock_key & 4294967295)::oid
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           LEFT JOIN pg_stat_activity a ON a.pid = l.pid
           ORDER BY d.name""")
    count = int(plan[0]["shard_count"]) if plan else 0
    per_shard: dict[int, int] = {}
    if count:
        for index, members in plan_shards(load_monitorable(conn), count).items():
            per_shard[index] = len(members)
    conn.rollback()
    for shard in shards:
        shard["streamers"] = per_shard.get(shard["shard"], 0)
        shard["state"] = "unowned" if shard["unowned_for"] is not None else "owned"
        if shard["state"] == "unowned":
            shard["owner"] = None
    expiring = [s for s in shards if s["state"] == "owned" and s["expires_in"] is not None and s["expires_in"] < soon]
    return {"plan": plan[0] if plan else None, "nodes": nodes, "shards": shards, "duties": duties,
            "expiring": [{"shard": s["shard"], "owner": s["owner"], "expires_in": s["expires_in"]} for s in expiring]}
