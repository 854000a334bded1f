"""The planner role: the streamer list, the shard plan, and which worker watches what.

The supervisor only supervises; everything that talks to PostgreSQL about the list lives
here, in its own process, so a slow database or a slow Kick API can delay a list update
but never the reaping, killing and respawning of processes.

- Reads the streamers (`kick_monitor.streamers.load_subscribable`), plans them onto the
  tree's shards with `kick_monitor.sharding.plan_shards` (the same function `--dry-run`
  prints), and serves each shard's list to its worker over the assignment channel
  (`kick_monitor.assignment`): the whole list on every Hello, then differences.
- Wakes on `LISTEN kick_monitor_streamers` (debounced), on every `reload_interval`, and on a
  worker's Hello (a respawned worker gets statuses as fresh as the database has them).
  Notifications sent while the LISTEN connection was down are gone, so every reconnect
  reloads fully.
- Id resolution of streamers added by slug runs on a helper thread with its own
  connection (this process never forks, so a thread is safe here), time-boxed per round and
  under a PostgreSQL advisory lock so that one process of a deployment resolves at a time.
  What it stores fires the streamers trigger, which wakes the planner's LISTEN.
- Retention (`kick_monitor.retention.Pruner`): history older than `history_retention` is
  deleted in small batches on another helper thread, under an advisory lock (one pruner per
  deployment), never in the way of the writer.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions

from kick_monitor.assignment import AssignmentServer
from kick_monitor.database import DatabaseUnavailable, connect
from kick_monitor.messages import Assign, StreamerRef, Subscribe, Unsubscribe
from kick_monitor.migrations import STREAMERS_CHANNEL
from kick_monitor.preload import release_free_memory
from kick_monitor.resolver import resolve_pending
from kick_monitor.retention import Pruner
from kick_monitor.role import Role, RoleContext
from kick_monitor.sharding import plan_shards
from kick_monitor.streamers import count_by_status, load_subscribable

log = logging.getLogger("kick_monitor.planner")

RELOAD_DEBOUNCE = 0.2  # coalesce a burst of streamer notifications into one reload
FRESH_FOR_HELLO = 1.0  # a Hello is answered from a list at most this old
STATEMENT_TIMEOUT_MS = 5000  # our queries are tiny; one stuck on a lock gives up and is retried
RETRY_MIN, RETRY_MAX = 0.5, 10.0
RESOLVE_BUDGET = 5.0  # seconds of Kick API lookups per resolution round
RESOLVE_EVERY = 30.0  # seconds between rounds when nothing wakes the resolver
RESOLVE_LOCK_KEY = 0x4B4D5245  # advisory lock: one resolver per deployment at a time


class Planner(Role):
    """Runs in the forked planner process; see the module docstring."""

    kind = "planner"

    def __init__(self, ctx: RoleContext) -> None:
        super().__init__(ctx)
        assert ctx.listener is not None, "the supervisor binds the planner's socket"
        self.server = AssignmentServer(ctx.listener)
        self.conn: psycopg2.extensions.connection | None = None
        self.listen_conn: psycopg2.extensions.connection | None = None
        self.plan: dict[int, dict[int, StreamerRef]] = {shard: {} for shard in ctx.shards}
        self.loaded_at = float("-inf")
        self.reload_at: float | None = 0.0  # load at once
        self.next_full_reload = 0.0
        self.retry_delay = RETRY_MIN
        self.reload_failed = False
        self.hellos: list[tuple[int, int]] = []  # (connection id, shard) waiting for their Assign
        self.resolver = IdResolver(self)
        self.pruner = Pruner(
            lambda: connect(self.ctx.database_url, application_name="kick-monitor pruner"),
            self.settings.history_retention,
        )

    def boot(self) -> None:
        self.resolver.start()
        self.pruner.start()

    # -- the loop ---------------------------------------------------------------------
    def step(self) -> None:
        now = time.monotonic()
        timeout = 0.5
        if self.reload_at is not None:
            timeout = max(0.0, min(timeout, self.reload_at - now))
        rlist: list[Any] = [self.control_fd, *self.server.filenos()]
        if self.listen_conn is not None:
            rlist.append(self.listen_conn)
        wlist = self.server.writers()
        if self.control_wants_write():
            wlist.append(self.control_fd)
        try:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
        except InterruptedError:
            return
        if self.control_fd in readable or self.control_fd in writable:
            self.read_control()
        if self.listen_conn is not None and self.listen_conn in readable:
            self.read_notifications()
        now = time.monotonic()
        for conn_id, shard in self.server.serve(readable, writable):
            self.hellos.append((conn_id, shard))
            if now - self.loaded_at > FRESH_FOR_HELLO:
                self.schedule_reload(now)
        if now >= self.next_full_reload:
            self.schedule_reload(now)
        if self.reload_at is not None and now >= self.reload_at:
            self.reload(now)
        self.answer_hellos()

    def finish(self) -> int:
        self.resolver.stop()
        self.pruner.stop()
        self.server.close()
        self.close_database()
        return 0

    def reconfigure(self, changed: set[str]) -> None:
        if "reload_interval" in changed:
            self.next_full_reload = min(self.next_full_reload, time.monotonic() + self.settings.reload_interval)
        if "history_retention" in changed:
            self.pruner.set_retention(self.settings.history_retention)
        self.resolver.settings_changed()

    # -- the list and the plan -------------------------------------------------------------
    def schedule_reload(self, at: float) -> None:
        self.reload_at = at if self.reload_at is None else min(self.reload_at, at)

    def reload(self, now: float) -> None:
        """Re-read the list and tell only the affected workers what changed."""
        self.reload_at = None
        self.next_full_reload = now + self.settings.reload_interval
        try:
            if self.conn is None:
                self.open_database()
            assert self.conn is not None
            streamers = load_subscribable(self.conn)
            counts = count_by_status(self.conn)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            log.warning("cannot load the streamer list (%s); retrying in %.1fs", _first_line(exc), self.retry_delay)
            self.close_database()
            self.reload_failed = True
            self.reload_at = now + self.retry_delay
            self.retry_delay = min(RETRY_MAX, self.retry_delay * 2)
            return
        self.retry_delay = RETRY_MIN
        self.reload_failed = False
        self.loaded_at = time.monotonic()
        for status, count in counts.items():
            self.telemetry.STREAMERS.labels(status=status).set(count)
        planned = plan_shards(streamers, self.ctx.shard_count)
        for shard in self.plan:
            self.update_shard(shard, {ref.channel_id: ref for ref in planned.get(shard, [])})
        del streamers, planned
        release_free_memory()  # the list read from the database was a burst as big as the plan

    def update_shard(self, shard: int, wanted: dict[int, StreamerRef]) -> None:
        current = self.plan[shard]
        added = tuple(ref for cid, ref in wanted.items() if cid not in current)
        removed = tuple(cid for cid in current if cid not in wanted)
        self.plan[shard] = {ref.channel_id: ref for ref in map(self._kept(current), wanted.values())}
        if removed:
            self.server.send_to_shard(shard, Unsubscribe(removed))
        if added:
            self.server.send_to_shard(shard, Subscribe(added))
        if added or removed:
            log.info("shard %d: +%d -%d streamers", shard, len(added), len(removed), extra={"shard": shard})

    @staticmethod
    def _kept(current: dict[int, StreamerRef]) -> Callable[[StreamerRef], StreamerRef]:
        """The long-lived object where nothing changed: the fresh copy dies young, so a reload of
        100k streamers does not leave the heap fragmented (measured: planner private 72 -> see docs)."""

        def keep(ref: StreamerRef) -> StreamerRef:
            old = current.get(ref.channel_id)
            return old if old is not None and old == ref else ref

        return keep

    def answer_hellos(self) -> None:
        """Every worker that said Hello gets its whole shard, once the list is fresh enough.

        Never before the first successful load: an empty Assign would make a worker drop
        every streamer it watches. While the database is down, the last list serves.
        """
        if not self.hellos or self.loaded_at == float("-inf"):
            return
        if self.reload_at is not None and not self.reload_failed:
            return  # a reload is due first
        for conn_id, shard in self.hellos:
            members = self.plan.get(shard)
            if members is None:
                log.warning("a worker said it runs shard %d, which this tree does not run", shard)
                continue
            self.server.send(conn_id, Assign(tuple(members.values())))
        self.hellos.clear()

    # -- database ------------------------------------------------------------------------
    def open_database(self) -> None:
        conn = connect(self.ctx.database_url, application_name=f"kick-monitor planner {self.ctx.tree}")
        try:
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (STATEMENT_TIMEOUT_MS,))
            conn.commit()
        except psycopg2.Error as exc:
            conn.close()
            raise DatabaseUnavailable(f"database session lost at once: {_first_line(exc)}") from None
        self.conn = conn
        try:
            listen = connect(self.ctx.database_url, application_name="kick-monitor listen", autocommit=True)
            with listen.cursor() as cur:
                cur.execute(f"LISTEN {STREAMERS_CHANNEL}")
            self.listen_conn = listen
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            log.warning("cannot LISTEN for streamer changes (%s); relying on periodic reloads", _first_line(exc))

    def close_database(self) -> None:
        for conn in (self.conn, self.listen_conn):
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
        self.conn = None
        self.listen_conn = None

    def read_notifications(self) -> None:
        assert self.listen_conn is not None
        try:
            self.listen_conn.poll()
        except psycopg2.Error as exc:
            log.warning("lost the LISTEN connection: %s", _first_line(exc))
            self.close_database()
            self.schedule_reload(time.monotonic() + RETRY_MIN)
            return
        if self.listen_conn.notifies:
            self.listen_conn.notifies.clear()
            self.schedule_reload(time.monotonic() + RELOAD_DEBOUNCE)
            self.resolver.wake()


class IdResolver:
    """Gives streamers added by slug their ids, on a helper thread of the planner process."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._conn: psycopg2.extensions.connection | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="id-resolver", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def settings_changed(self) -> None:
        """API settings changed on SIGHUP: the next round builds a new client with them."""
        self._client = None
        self.wake()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except Exception as exc:  # reported, never fatal: the next round tries again
                log.warning("id resolution failed: %s: %s", type(exc).__name__, _first_line(exc))
                self._close()
            self._wake.wait(RESOLVE_EVERY)
            self._wake.clear()
        self._close()

    def _round(self) -> None:
        if self._conn is None:
            self._conn = connect(self.planner.ctx.database_url, application_name="kick-monitor resolver")
        with self._conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (RESOLVE_LOCK_KEY,))
            row = cur.fetchone()
        self._conn.commit()
        if not row or not row[0]:
            return  # another process of this deployment is resolving
        try:
            resolved = resolve_pending(self._conn, self._api(), budget=RESOLVE_BUDGET)
        finally:
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (RESOLVE_LOCK_KEY,))
            self._conn.commit()
        if resolved:
            log.info("resolved ids of %d streamers", resolved)

    def _api(self) -> Any:
        if self._client is None:
            from kick_monitor.kick_api import client_from_settings

            self._client = client_from_settings(self.planner.settings)
        return self._client

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
