"""A duty: work that one process of a whole deployment does at a time, on a helper thread.

Id resolution and history pruning (and next: webhook subscription sync, notification
dispatch) must not run once per process tree: with per-shard units or several hosts
they would repeat each other's work and multiply API requests. A duty runs a round every
`every` seconds or when woken, takes a PostgreSQL session advisory lock for the round
(`pg_try_advisory_lock`: whoever holds it does the round, the others skip it), and never
lets an error kill its thread: it is logged and the next round tries again.

Threads are safe here because duties live in roles that never fork (the planner).

Across nodes (issue 17) the advisory lock is what makes a duty run on one node at a time,
and it moves on failover by itself: a dead holder's session ends with its process. A holder
that is *paused* (SIGSTOP, a frozen VM) or cut off would keep its session, and the lock,
for ever — so during a round the session carries `idle_session_timeout` and
`idle_in_transaction_session_timeout` (`ROUND_IDLE_LIMIT`): PostgreSQL ends a holder that
stopped talking, the lock is free, another node's next round takes it, and the woken holder's
next statement fails instead of writing. Between rounds (no lock held) the limits are off.
Each round records its node in `kick_monitor.duty_holders` for `kick-monitor cluster status`.

>>> class Tidy(Duty):
...     name, lock_key, every = "tidy", 0x4B4D0001, 60.0
...     def round(self, conn): ...
>>> duty = Tidy(lambda: connect(url)); duty.start(); duty.wake(); duty.stop()
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions

log = logging.getLogger(__name__)

ROUND_IDLE_LIMIT_MS = 60_000  # a holder silent this long mid-round loses its session (and the lock)


def limit_idle(conn: psycopg2.extensions.connection, limit_ms: int | None = None) -> None:
    """PostgreSQL ends this session when it stays silent `limit_ms` (ROUND_IDLE_LIMIT_MS by default), idle
    or idle in a transaction: a paused lock holder loses its session, so its advisory locks go free.
    Takes effect when the caller commits."""
    limit = ROUND_IDLE_LIMIT_MS if limit_ms is None else limit_ms
    with conn.cursor() as cur:
        if conn.server_version >= 140000:  # idle_session_timeout is PostgreSQL 14+
            cur.execute("SET idle_session_timeout = %s", (limit,))
        cur.execute("SET idle_in_transaction_session_timeout = %s", (limit,))


def lift_idle_limits(conn: psycopg2.extensions.connection) -> None:
    """Undo `limit_idle` (a session that holds no lock may sit idle)."""
    limit_idle(conn, 0)


class Duty:
    """Subclasses set `name`, `lock_key`, `every` and implement `round(conn)`."""

    name = "duty"
    lock_key = 0
    every = 60.0
    keep_connection = True  # False: close it after every round (rounds far apart hold no idle session)

    def __init__(self, connect: Callable[[], psycopg2.extensions.connection]) -> None:
        self._connect = connect
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg2.extensions.connection | None = None

    # -- what a duty implements -----------------------------------------------------------
    def enabled(self) -> bool:
        return True

    def prepare(self, conn: psycopg2.extensions.connection) -> None:
        """Session settings for a new connection (timeouts), before its first round."""

    def round(self, conn: psycopg2.extensions.connection) -> Any:
        raise NotImplementedError

    def finish(self) -> None:
        """After the thread's last round (close clients)."""

    # -- the thread ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run_round(self) -> Any:
        """One round under the advisory lock; None when another process holds it."""
        if self._conn is None:
            conn = self._connect()
            self.prepare(conn)
            conn.commit()
            self._conn = conn
        conn = self._conn
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_key,))
            row = cur.fetchone()
        conn.commit()
        if not row or not row[0]:
            return None  # another process of this deployment does it now
        try:
            self._begin_round(conn)
            return self.round(conn)
        finally:
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (self.lock_key,))
            lift_idle_limits(conn)
            conn.commit()

    def _begin_round(self, conn: psycopg2.extensions.connection) -> None:
        """Bound how long a paused holder keeps the lock, and say which node holds it."""
        from .leases import node_name

        limit_idle(conn)
        with conn.cursor() as cur:
            cur.execute(
                """INSERT INTO kick_monitor.duty_holders (name, node, lock_key) VALUES (%s, %s, %s)
                   ON CONFLICT (name) DO UPDATE SET node = EXCLUDED.node, lock_key = EXCLUDED.lock_key,
                                                    round_started = now()""",
                (self.name, node_name(), self.lock_key),
            )
        conn.commit()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.enabled():
                try:
                    self.run_round()
                except Exception as exc:  # reported, never fatal: the next round tries again
                    first = (str(exc).strip().splitlines() or [""])[0]
                    log.warning("%s failed: %s: %s", self.name, type(exc).__name__, first)
                    self.close()
                if not self.keep_connection:
                    self.close()
            self._wake.wait(self.every)
            self._wake.clear()
        self.close()
        self.finish()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None
