"""The planner's helper thread that holds this node's shard leases (`kick_monitor.leases`).

Every `renew_every` seconds (a fifth of the TTL) it renews what the node holds, takes its
fair share (`leases.fair_share`), and gives back one shard at a time when another node
needs it — after a hand-over pause, so the planner has told the shard's worker to
unsubscribe before anybody else may claim the shard. It publishes `{shard: epoch}` with
the monotonic time until which the leases are surely valid; the planner's loop reads that
with `current(now)` and subscribes or unsubscribes workers. A changed epoch is a new
claim: the planner hands the shard's streamers over again under a fresh assignment
generation, so the new owner outranks every change of the previous one.

Why the planner's loop checks the validity itself: after SIGSTOP/SIGCONT (or any stall)
both threads resume at once, and the loop must stop listening before the thread has had a
chance to talk to the database. The one exception is a node that no other live node could
replace (a single host, or the only tree for a per-shard unit): it keeps listening through
a database outage as before the cluster, because nobody can claim its shards then either.

Freed shards are announced with `NOTIFY kick_monitor_leases` (a clean stop, a hand-over), and
the thread LISTENs on its connection, so other nodes claim them at once instead of at their
next round.

A hand-over is break-before-make with the smallest gap the protocol allows: a node takes
part (registers, claims) only once its workers are connected to Pusher (`ready`, set by the
planner; at most `READY_WAIT` later), so the receiving node is ready before the old owner
lets go; the old owner frees the lease as soon as its planner says the worker has sent its
unsubscribes (`let_go`), not after a fixed pause; and the planner wakes on `changed_read`
the moment the thread claimed or gave up something, not at its next poll.

A thread is safe here: the planner never forks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from . import leases
from .database import take_notifications

log = logging.getLogger(__name__)

VALIDITY_MARGIN = 1.0  # seconds taken off the TTL: clock rates, and time to reach the workers
HANDOVER_PAUSE = 1.0  # at most, between telling the worker to unsubscribe and freeing the lease (`let_go`: sooner)
READY_WAIT = 5.0  # at most, from start until this node takes part without its workers on Pusher
STATEMENT_TIMEOUT_MS = 2000


class LeaseKeeper:
    """Holds this node's shard leases on a thread; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], psycopg2.extensions.connection],
        node: leases.Node,
        candidates: tuple[int, ...],
        shard_count: int,
        ttl: float,
        telemetry: Any = None,
    ) -> None:
        self._connect = connect
        self.node = node
        self.candidates = candidates
        self.whole_tree = len(candidates) == shard_count
        self.ttl = ttl
        self.renew_every = max(0.2, ttl / 5)
        self.handover_pause = HANDOVER_PAUSE
        self.telemetry = telemetry
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}  # what the database says is ours: shard -> epoch
        self._releasing: dict[int, float] = {}  # shard -> monotonic time its lease is freed
        self._valid_until = float("-inf")
        self._sole = False  # no other live node could take our shards
        self._conn: psycopg2.extensions.connection | None = None
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        os.set_blocking(self._wake_read, False)
        self.changed_read, self._changed_write = os.pipe()  # the planner selects on it: holdings changed
        os.set_blocking(self.changed_read, False)
        os.set_blocking(self._changed_write, False)
        self.ready = threading.Event()  # set by the planner: this tree's workers are on Pusher
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.settled = threading.Event()  # the first round is over (claimed, or failed): leases are known
        self.worker_states: dict[int, tuple[bool, int]] = {}  # set by the planner: shard -> (connected, watching)
        self._recorded: dict[int, tuple[bool, int]] = {}
        self.oldest_free = 0.0  # seconds the longest-free shard has been free (for metrics)

    # -- the planner's side ---------------------------------------------------------------
    def current(self, now: float) -> dict[int, int]:
        """{shard: epoch} the node may listen to now (nothing once the leases may have lapsed)."""
        with self._lock:
            if now > self._valid_until and not self._sole:
                return {}
            return {shard: epoch for shard, epoch in self._held.items() if shard not in self._releasing}

    def releasing(self) -> set[int]:
        """Shards being given back: the planner unsubscribes them, then calls `let_go`."""
        with self._lock:
            return set(self._releasing)

    def let_go(self, shard: int) -> None:
        """The shard's worker has sent its unsubscribes: free the lease now (the thread does it)."""
        with self._lock:
            if shard in self._releasing:
                self._releasing[shard] = float("-inf")
        self._poke(self._wake_write)

    def take_changes(self) -> None:
        """Empty the `changed_read` pipe (the planner, after waking on it)."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.changed_read, 4096):
                pass

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop renewing. `release`: the tree stops, every lease freed at once and the node row gone;
        otherwise (only the planner restarts, the workers keep listening) the next planner renews them."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")
        if self._thread is not None:
            self._thread.join(timeout=3.0)
        if release:
            with contextlib.suppress(Exception):
                conn = self._conn or self._open()
                leases.deregister(conn, self.node)
                log.info("released %d shard leases", len(self._held))
        self._close()
        for fd in (self._wake_read, self._wake_write, self.changed_read, self._changed_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        # Take part only once the workers can subscribe at once: a node that is given a shard
        # before its Pusher connection is up would widen the hand-over's gap by its connect time.
        started = time.monotonic()
        while not self.ready.wait(0.05) and not self._stop.is_set():
            if time.monotonic() - started > READY_WAIT:
                log.warning("workers not on Pusher after %.0fs: taking part in the cluster anyway", READY_WAIT)
                break
        while not self._stop.is_set():
            try:
                self.tick(time.monotonic())
            except (psycopg2.Error, OSError, RuntimeError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning("shard leases not renewed: %s", first)
                self._close()
            self.settled.set()
            self._sleep(self.renew_every)

    def _sleep(self, seconds: float) -> None:
        """Until the next round, a NOTIFY that shards were freed, or stop."""
        waiting: list[Any] = [self._wake_read]
        if self._conn is not None:
            waiting.append(self._conn)
        try:
            readable, _, _ = select.select(waiting, [], [], seconds)
        except (OSError, ValueError):
            time.sleep(min(seconds, 0.5))
            return
        if self._wake_read in readable:
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_read, 4096)
        if self._conn is not None and self._conn in readable:
            try:
                take_notifications(self._conn)
            except psycopg2.Error:
                self._close()

    @staticmethod
    def _poke(fd: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(fd, b"x")

    def tick(self, started: float) -> None:
        """One round: renew, give back what is due, take the fair share, publish."""
        conn = self._conn or self._open()
        members = leases.membership(conn, self.ttl)
        with self._lock:
            held, lapsed = dict(self._held), started > self._valid_until and not self._sole
        if lapsed and held:
            log.warning("shard leases lapsed locally (paused or cut off); claiming again: %s", sorted(held))
            self._count("lapsed", len(held))
            held = {}  # whatever we get back comes with a new epoch: a new hand-over
        kept = leases.renew(conn, self.node, held, self.ttl)
        lost = set(held) - set(kept)
        if lost:
            with self._lock:  # stop listening now, not at the end of the round
                for shard in lost:
                    self._held.pop(shard, None)
            log.warning("lost the leases of shards %s to another node", sorted(lost))
            self._count("lost", len(lost))
        with self._lock:
            releasing = dict(self._releasing)
        freed = bool(lost)
        for shard, due in releasing.items():
            if shard in kept and started < due:
                continue
            # A shard leaves `_releasing` and `_held` together: a planner reading `current()` between the
            # two would take a shard being freed for a fresh claim and have its worker subscribe again.
            with self._lock:
                del self._releasing[shard]
                self._held.pop(shard, None)
            freed = True
            if shard in kept:
                leases.release(conn, self.node, {shard: kept.pop(shard)})
                self._count("released")
                log.info("handed shard %d over", shard)
        giving = bool(self._releasing)
        want, give = self._share(members, len(kept))
        if give and not self._releasing and kept:
            shard = max(kept)
            with self._lock:
                self._releasing[shard] = time.monotonic() + self.handover_pause
            log.info("giving shard %d back for a fair share", shard)
        if want:
            free = [s for s in self.candidates if s not in kept]
            claimed = leases.claim(conn, self.node, free, want, self.ttl)
            for shard in claimed:
                self._recorded.pop(shard, None)  # the claim cleared what the previous owner's worker said
            if claimed:
                log.info("claimed shards %s", sorted(claimed))
                self._count("claimed", len(claimed))
            kept.update(claimed)
        states = {s: state for s, state in dict(self.worker_states).items() if s in kept}
        if states != self._recorded:
            leases.record_workers(conn, self.node, states)
            self._recorded = states
        sole = self._no_contenders(conn)
        with self._lock:
            changed = freed or kept != self._held or bool(self._releasing) != bool(giving)
            self._held = kept
            self._valid_until = started + self.ttl - VALIDITY_MARGIN
            self._sole = sole
        if changed:
            self._poke(self._changed_write)  # the planner acts now, not at its next poll
        self.oldest_free = members.oldest_free
        if self.telemetry is not None:
            self.telemetry.CLUSTER_LEASES.set(len(kept))
            self.telemetry.CLUSTER_UNOWNED_SECONDS.set(members.oldest_free)

    def _share(self, members: leases.Membership, holding: int) -> tuple[int, int]:
        if self.whole_tree:
            return leases.fair_share(members, self.node.name, holding)
        return len(self.candidates) - holding, 0  # a per-shard unit wants its shard, nothing else

    def _no_contenders(self, conn: psycopg2.extensions.connection) -> bool:
        others = leases.contenders(conn, self.node, self.candidates, self.ttl)
        return others == 0

    def _count(self, event: str, amount: int = 1) -> None:
        if self.telemetry is not None:
            self.telemetry.CLUSTER_HANDOVERS.labels(event=event).inc(amount)

    def _open(self) -> psycopg2.extensions.connection:
        conn = self._connect()
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (STATEMENT_TIMEOUT_MS,))
            cur.execute("SET lock_timeout = %s", (STATEMENT_TIMEOUT_MS // 2,))
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(leases.LEASES_CHANNEL)))
        conn.commit()
        leases.register(conn, self.node)
        self._conn = conn
        return conn

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None
