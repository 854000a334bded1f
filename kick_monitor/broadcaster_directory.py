"""Which streamer row a webhook is about: Kick's broadcaster user id → our row id and channel id.

Webhooks name the broadcaster by user id only; the writer goes by our row id. The webhook
receiver keeps the whole mapping in memory (a few MB for 100k streamers) and reloads it
every `refresh_every` seconds on its own connection. A user id it does not know triggers
one reload at once (a streamer added a moment ago), at most one per `min_gap` seconds, so
a flood of deliveries for strangers costs one query per gap, not one per delivery.

`DirectoryFollower` (a thread) keeps it current: it LISTENs on `kick_monitor_streamers` (the
trigger fires when a streamer is added or removed or its user id changes) and reloads a
moment after a notification, every `refresh_every` seconds, and after each reconnect of its
LISTEN connection (notifications sent while it was down are gone).

Thread-safe: the HTTP threads look up and refresh; one lock serialises the database.
While the database is down the last good mapping keeps serving; only a receiver that never
loaded one answers `DirectoryUnavailable` (the delivery gets 503 and Kick retries).
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable

import psycopg2
import psycopg2.extensions

from .database import DatabaseUnavailable
from .migrations import STREAMERS_CHANNEL

log = logging.getLogger(__name__)

LOAD = "SELECT kick_user_id, id, channel_id FROM kick_monitor.streamers WHERE kick_user_id IS NOT NULL"


class DirectoryUnavailable(Exception):
    """No mapping was ever loaded (the database has been unreachable since start)."""


class BroadcasterDirectory:
    """user id → (streamer id, channel id or None); see the module docstring."""

    def __init__(
        self, connect: Callable[[], psycopg2.extensions.connection], *, min_gap: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self.min_gap = min_gap
        self.clock = clock
        self._lock = threading.Lock()
        self._conn: psycopg2.extensions.connection | None = None
        self._by_user: dict[int, tuple[int, int | None]] | None = None
        self._loaded_at = -float("inf")
        self.loads = 0

    def __len__(self) -> int:
        return len(self._by_user or {})

    def lookup(self, user_id: int) -> tuple[int, int | None] | None:
        """The streamer of `user_id`, reloading once (rate-limited) if unknown; None if not ours."""
        found = self._find(user_id)
        if found is not None:
            return found
        if self.clock() - self._loaded_at >= self.min_gap:
            with self._lock:
                if self.clock() - self._loaded_at >= self.min_gap:  # not done by another thread meanwhile
                    self._load()
        found = self._find(user_id)
        if found is None and self._by_user is None:
            raise DirectoryUnavailable("the streamer list has not been loaded (database unreachable)")
        return found

    def refresh(self) -> bool:
        """Reload now (the periodic refresh); False if the database could not be read."""
        with self._lock:
            return self._load()

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def _find(self, user_id: int) -> tuple[int, int | None] | None:
        mapping = self._by_user  # replaced whole, never mutated: safe to read without the lock
        return None if mapping is None else mapping.get(user_id)

    def _load(self) -> bool:
        self._loaded_at = self.clock()  # a failure also waits min_gap before the next try
        try:
            if self._conn is None:
                self._conn = self._connect()
            with self._conn.cursor() as cur:
                cur.execute(LOAD)
                rows = cur.fetchall()
            self._conn.rollback()
        except (psycopg2.Error, DatabaseUnavailable) as exc:
            log.warning("streamer list not reloaded (%s); keeping %d known broadcasters",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, len(self))
            self._drop_connection()
            return False
        self._by_user = {int(user_id): (int(row_id), channel_id) for user_id, row_id, channel_id in rows}
        self.loads += 1
        return True

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None


DEBOUNCE = 0.05  # s: a bulk import sends one notification per row; reload once after the burst


class DirectoryFollower(threading.Thread):
    """Reloads `directory` on streamer-list notifications and every `refresh_every` seconds."""

    def __init__(
        self, directory: BroadcasterDirectory, connect: Callable[[], psycopg2.extensions.connection],
        refresh_every: float = 60.0, retry_every: float = 5.0,
    ) -> None:
        super().__init__(name="webhook-directory", daemon=True)
        self.directory = directory
        self._connect = connect
        self.refresh_every = refresh_every
        self.retry_every = retry_every
        self.stopping = threading.Event()
        self._conn: psycopg2.extensions.connection | None = None

    def run(self) -> None:
        next_full = time.monotonic() + self.refresh_every
        while not self.stopping.is_set():
            try:
                if self._conn is None and not self._listen():
                    self.stopping.wait(self.retry_every)
                    continue
                if self._notified(min(1.0, max(0.0, next_full - time.monotonic()))):
                    self.stopping.wait(DEBOUNCE)
                    self._drain()
                    self.directory.refresh()
                if time.monotonic() >= next_full:
                    next_full = time.monotonic() + self.refresh_every
                    self.directory.refresh()
            except Exception:  # never let the thread die: the next turn tries again
                log.exception("streamer mapping follower error")
                self._close()
                self.stopping.wait(self.retry_every)
        self._close()

    def stop(self) -> None:
        self.stopping.set()

    def _listen(self) -> bool:
        try:
            conn = self._connect()
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {STREAMERS_CHANNEL}")
        except (psycopg2.Error, DatabaseUnavailable) as exc:
            log.debug("cannot LISTEN for streamer changes: %s", str(exc).strip().splitlines()[0] if str(exc) else exc)
            return False
        self._conn = conn
        self.directory.refresh()  # what changed while nobody listened
        return True

    def _notified(self, timeout: float) -> bool:
        assert self._conn is not None
        readable, _, _ = select.select([self._conn], [], [], timeout)
        if not readable:
            return False
        try:
            self._conn.poll()
        except psycopg2.Error as exc:
            log.warning("lost the LISTEN connection for streamer changes (%s)", str(exc).strip().splitlines()[0])
            self._close()
            return False
        return self._drain()

    def _drain(self) -> bool:
        if self._conn is None:
            return False
        with contextlib.suppress(psycopg2.Error):
            self._conn.poll()
        got = bool(self._conn.notifies)
        self._conn.notifies.clear()
        return got

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None
