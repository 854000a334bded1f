"""Shard leases and the fair share against the real (embedded) PostgreSQL: kick_monitor/leases.py,
kick_monitor/lease_keeper.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from itertools import pairwise

import psycopg2
import psycopg2.extensions
import pytest

from kick_monitor import leases
from kick_monitor.lease_keeper import LeaseKeeper
from kick_monitor.leases import Membership, Node, fair_share


def node(name: str, shards: str = "all") -> Node:
    return Node(name, "elsewhere", 1, "test", shards)  # another host: never checked for a live pid


def owners(conn: psycopg2.extensions.connection) -> dict[int, tuple[str | None, int]]:
    with conn.cursor() as cur:
        cur.execute("SELECT shard, owner, epoch FROM kick_monitor.shard_leases ORDER BY shard")
        rows = cur.fetchall()
    conn.rollback()
    return {shard: (owner, epoch) for shard, owner, epoch in rows}


@pytest.fixture
def plan4(db_conn: psycopg2.extensions.connection) -> psycopg2.extensions.connection:
    a = node("a")
    leases.register(db_conn, a)
    assert leases.agree_shard_count(db_conn, 4, a, ttl=15.0) == 4
    return db_conn


def test_claims_never_overlap_and_renewal_keeps_the_epoch(plan4: psycopg2.extensions.connection) -> None:
    a, b = node("a"), node("b")
    leases.register(plan4, b)
    got_a = leases.claim(plan4, a, range(4), want=3, ttl=15.0)
    got_b = leases.claim(plan4, b, range(4), want=3, ttl=15.0)
    assert sorted(got_a) == [0, 1, 2] and sorted(got_b) == [3]
    assert set(got_a.values()) == {1}
    assert leases.renew(plan4, a, got_a, ttl=15.0) == got_a
    assert leases.renew(plan4, b, {**got_b, 0: 1}, ttl=15.0) == got_b  # never someone else's


def test_a_lapsed_lease_moves_with_a_new_epoch_and_the_old_owner_learns_it(
    plan4: psycopg2.extensions.connection,
) -> None:
    a, b = node("a"), node("b")
    leases.register(plan4, b)
    held_a = leases.claim(plan4, a, [0], want=1, ttl=0.3)
    assert leases.claim(plan4, b, [0], want=1, ttl=15.0) == {}  # still a's
    time.sleep(0.4)
    held_b = leases.claim(plan4, b, [0], want=1, ttl=15.0)
    assert held_b == {0: held_a[0] + 1}
    assert leases.renew(plan4, a, held_a, ttl=15.0) == {}
    assert owners(plan4)[0] == ("b", 2)


def test_an_expired_lease_nobody_took_is_renewed(plan4: psycopg2.extensions.connection) -> None:
    a = node("a")
    held = leases.claim(plan4, a, [1], want=1, ttl=0.1)
    time.sleep(0.2)
    assert leases.renew(plan4, a, held, ttl=15.0) == held


def test_release_and_deregister_free_shards_at_once(plan4: psycopg2.extensions.connection) -> None:
    a, b = node("a"), node("b")
    leases.register(plan4, b)
    held = leases.claim(plan4, a, range(4), want=4, ttl=15.0)
    leases.release(plan4, a, {3: held[3]})
    assert leases.claim(plan4, b, range(4), want=4, ttl=15.0) == {3: 2}
    leases.deregister(plan4, a)
    assert sorted(leases.claim(plan4, b, range(3), want=4, ttl=15.0)) == [0, 1, 2]
    with plan4.cursor() as cur:
        cur.execute("SELECT name FROM kick_monitor.cluster_nodes ORDER BY name")
        assert cur.fetchall() == [("b",)]
    plan4.rollback()


def test_concurrent_claims_skip_rows_being_claimed(plan4: psycopg2.extensions.connection, database_url: str) -> None:
    """A row locked by another node's claim is skipped, not waited for (SKIP LOCKED)."""
    other = psycopg2.connect(database_url)
    try:
        with other.cursor() as cur:  # another node in the middle of claiming shard 0
            cur.execute("SELECT shard FROM kick_monitor.shard_leases WHERE shard = 0 FOR UPDATE")
        started = time.monotonic()
        got = leases.claim(plan4, node("a"), range(4), want=2, ttl=15.0)
        assert sorted(got) == [1, 2] and time.monotonic() - started < 1.0
    finally:
        other.close()


def test_the_shard_count_is_agreed_through_the_database(plan4: psycopg2.extensions.connection) -> None:
    a, b = node("a"), node("b")
    leases.claim(plan4, a, range(4), want=4, ttl=15.0)
    leases.register(plan4, b)
    assert leases.agree_shard_count(plan4, 6, b, ttl=15.0) == 4  # a runs: b adopts its plan
    leases.deregister(plan4, a)
    assert leases.agree_shard_count(plan4, 6, b, ttl=15.0) == 6  # alone: b's configuration
    assert owners(plan4) == {s: (None, owners(plan4)[s][1]) for s in range(6)}
    with plan4.cursor() as cur:
        cur.execute("SELECT shard_count, version FROM kick_monitor.shard_plan")
        assert cur.fetchone() == (6, 2)
    plan4.rollback()


def test_a_dead_tree_of_this_host_is_forgotten_at_once(plan4: psycopg2.extensions.connection) -> None:
    """A node restarted after a crash does not wait a whole TTL for its predecessor's leases."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    crashed = Node(leases.node_name(socket.gethostname(), dead.pid), socket.gethostname(), dead.pid, "t", "all")
    leases.register(plan4, crashed)
    leases.claim(plan4, crashed, range(4), want=4, ttl=15.0)
    restarted = Node.this("all", "t")
    leases.register(plan4, restarted)
    assert sorted(leases.claim(plan4, restarted, range(4), want=4, ttl=15.0)) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("shards", "held_by", "me", "holding", "free", "expected"),
    [
        (6, {"a": 0}, "a", 0, 6, (6, 0)),  # alone: everything
        (6, {"a": 6, "b": 0}, "a", 6, 0, (0, 1)),  # above the ceiling: one back per round
        (6, {"a": 3, "b": 3, "c": 0}, "a", 3, 0, (0, 1)),  # c joined: above the floor while c waits
        (6, {"a": 3, "b": 2, "c": 1}, "c", 1, 1, (1, 0)),  # c claims up to the floor
        (6, {"a": 2, "b": 2, "c": 2}, "a", 2, 0, (0, 0)),  # balanced: nothing moves
        (7, {"a": 3, "b": 2, "c": 2}, "b", 2, 0, (0, 0)),  # one over: stays with whoever has it
        (6, {"a": 2, "b": 2}, "a", 2, 2, (1, 0)),  # c died: survivors take its shards
        (6, {"a": 0}, "b", 0, 6, (3, 0)),  # b's first round (not yet counted live)
        (6, {"a": 6}, "b", 0, 0, (0, 0)),  # nothing free: nothing to ask the database for
    ],
)
def test_fair_share(
    shards: int, held_by: dict[str, int], me: str, holding: int, free: int, expected: tuple[int, int]
) -> None:
    members = Membership(shards, len(held_by), held_by, free)
    assert fair_share(members, me, holding) == expected


def keeper(database_url: str, name: str, shards: tuple[int, ...] = (0, 1, 2, 3), ttl: float = 15.0) -> LeaseKeeper:
    k = LeaseKeeper(lambda: psycopg2.connect(database_url), node(name, "all" if len(shards) == 4 else str(shards[0])),
                    shards, 4, ttl)
    k.handover_pause = 0.0
    k.ready.set()  # as the planner does once its workers are on Pusher
    return k


def test_a_joining_node_gets_its_share_one_shard_at_a_time(plan4: psycopg2.extensions.connection,
                                                           database_url: str) -> None:
    a, b = keeper(database_url, "a"), keeper(database_url, "b")
    try:
        a.tick(time.monotonic())
        assert sorted(a.current(time.monotonic())) == [0, 1, 2, 3]
        b.tick(time.monotonic())
        assert b.current(time.monotonic()) == {}
        moves = []
        for _ in range(6):
            a.tick(time.monotonic())
            b.tick(time.monotonic())
            now = time.monotonic()
            held_a, held_b = a.current(now), b.current(now)
            assert not set(held_a) & set(held_b)
            moves.append(len(held_b))
        assert sorted(a.current(time.monotonic())) == [0, 1] and sorted(b.current(time.monotonic())) == [2, 3]
        assert all(later - earlier in (0, 1) for earlier, later in pairwise([0, *moves]))  # one at a time
    finally:
        a.stop()
        b.stop()
    assert owners(plan4) == {s: (None, owners(plan4)[s][1]) for s in range(4)}  # clean stop frees at once


def test_a_lapsed_node_stops_listening_before_it_talks_to_the_database(
    plan4: psycopg2.extensions.connection, database_url: str,
) -> None:
    a, b = keeper(database_url, "a", ttl=2.0), keeper(database_url, "b", ttl=2.0)
    try:
        a.tick(time.monotonic())
        b.tick(time.monotonic())  # b is live: a is not alone any more
        a.tick(time.monotonic())
        assert a.current(time.monotonic())
        assert a.current(time.monotonic() + 2.0) == {}  # woke after its TTL: nothing, whatever the database says
        epochs = a.current(time.monotonic())
        a.tick(time.monotonic() + 2.0)  # the thread's next round: claims again, with new epochs
        assert all(a.current(time.monotonic())[s] > e for s, e in epochs.items() if s in a.current(time.monotonic()))
    finally:
        a.stop()
        b.stop()


def test_a_node_nobody_could_replace_keeps_listening_without_the_database(
    plan4: psycopg2.extensions.connection, database_url: str,
) -> None:
    a = keeper(database_url, "a", ttl=2.0)
    try:
        a.tick(time.monotonic())
        assert sorted(a.current(time.monotonic() + 60.0)) == [0, 1, 2, 3]  # single host: as before the cluster
    finally:
        a.stop()


def test_a_second_tree_for_the_same_shard_waits(plan4: psycopg2.extensions.connection, database_url: str) -> None:
    first, second = keeper(database_url, "one", (2,)), keeper(database_url, "two", (2,))
    try:
        first.tick(time.monotonic())
        second.tick(time.monotonic())
        assert first.current(time.monotonic()) == {2: 1} and second.current(time.monotonic()) == {}
        first.stop()
        second.tick(time.monotonic())
        assert second.current(time.monotonic()) == {2: 2}
    finally:
        second.stop()


def test_shards_freed_by_a_clean_stop_are_claimed_at_once_not_at_the_next_round(
    plan4: psycopg2.extensions.connection, database_url: str,
) -> None:
    a, b = keeper(database_url, "a"), keeper(database_url, "b")  # TTL 15 s: rounds every 3 s
    try:
        a.tick(time.monotonic())
        b.start()
        time.sleep(0.5)  # b's first round: nothing free
        assert b.current(time.monotonic()) == {}
        a.stop()  # frees every shard and NOTIFYs
        stopped = time.monotonic()
        while not b.current(time.monotonic()) and time.monotonic() - stopped < 1.5:
            time.sleep(0.02)
        assert sorted(b.current(time.monotonic())) == [0, 1, 2, 3], "claimed on the NOTIFY, before b's next round"
    finally:
        b.stop()


def test_a_shard_given_back_is_freed_as_soon_as_the_planner_lets_go(
    plan4: psycopg2.extensions.connection, database_url: str,
) -> None:
    """The hand-over's gap (issue 17): the old owner frees the lease once its worker has left Pusher
    (`let_go`), not after a fixed pause, and the planner is woken by the keeper's pipe."""
    a, b = keeper(database_url, "a"), keeper(database_url, "b")
    a.handover_pause = 60.0  # only let_go frees it in this test
    try:
        a.tick(time.monotonic())
        a.take_changes()
        b.tick(time.monotonic())  # b is live and holds nothing: a gives one back
        a.tick(time.monotonic())
        assert os.read(a.changed_read, 64), "the planner is woken at once"
        [shard] = a.releasing()
        assert shard not in a.current(time.monotonic())  # the planner unsubscribes it ...
        a.tick(time.monotonic())
        assert owners(plan4)[shard][0] == "a"  # ... and the lease stays ours until the worker has left
        a.let_go(shard)
        a.tick(time.monotonic())
        assert owners(plan4)[shard][0] is None and shard not in a.releasing()
        b.tick(time.monotonic())
        assert shard in b.current(time.monotonic())
    finally:
        a.stop()
        b.stop()


def test_a_shard_being_freed_is_never_published_as_held_again(
    plan4: psycopg2.extensions.connection, database_url: str,
) -> None:
    """The flake of the 3-node test: the round that freed a given-back shard forgot it was being
    given back before it forgot it was held, and a planner reading `current()` in between took it
    for a claim (same epoch) and had its worker subscribe again under the new owner."""
    a, b = keeper(database_url, "a"), keeper(database_url, "b")
    try:
        a.tick(time.monotonic())
        b.tick(time.monotonic())
        a.tick(time.monotonic())
        [shard] = a.releasing()
        a.let_go(shard)
        seen: list[dict[int, int]] = []
        freeing = threading.Thread(target=a.tick, args=(time.monotonic(),))
        freeing.start()
        while freeing.is_alive():  # what the planner's loop would read at any moment of the round
            seen.append(a.current(time.monotonic()))
        freeing.join()
        assert owners(plan4)[shard][0] is None, "the round freed it"
        assert not [held for held in seen if shard in held], f"shard {shard} published as held while freed"
    finally:
        a.stop()
        b.stop()


def test_a_node_takes_part_only_once_its_workers_are_ready(
    plan4: psycopg2.extensions.connection, database_url: str,
) -> None:
    k = keeper(database_url, "late")
    k.ready.clear()
    try:
        k.start()
        time.sleep(0.4)
        assert not k.settled.is_set() and all(owner is None for owner, _ in owners(plan4).values())
        k.ready.set()  # the planner: every worker is on Pusher
        assert k.settled.wait(5.0)
        assert len(k.current(time.monotonic())) == 2  # its share beside the fixture's node a
    finally:
        k.stop()
