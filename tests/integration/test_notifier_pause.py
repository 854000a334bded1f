"""A paused dispatching notifier (SIGSTOP, a frozen VM) loses the dispatch lock within its idle limit;
the standby takes over, and the woken one sends nothing — real processes, real signals.

Each notifier runs in a process of its own (the role's loop, as the supervisor's child runs it)
with the holder's idle limit shortened to IDLE_LIMIT_MS; it writes "active" / "standby" to a
state file whenever that changes, so the test knows which process holds the lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2.extensions
import pytest

from kick_monitor.notify_targets import add_target
from kick_sim.chat_endpoint import ChatEndpoint
from tests.service import wait_until

pytestmark = pytest.mark.timeout(120)

IDLE_LIMIT_MS = 3000  # well above the sweep's 1 s between statements: a running holder is never cut
REPO = Path(__file__).resolve().parents[2]

CHILD = """
import signal, sys, time
from pathlib import Path
import workers.notifier as notifier_module
from kick_monitor.config import load_settings
from kick_monitor.role import standalone_context

notifier_module.LOCK_IDLE_LIMIT_MS = int(sys.argv[3])
ctx, keep = standalone_context("notifier", load_settings(environ={}), sys.argv[1])
role = notifier_module.Notifier(ctx)
state_file, shown = Path(sys.argv[2]), None
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
while not stopping:
    role.step()
    state = "active" if role.conn is not None else "standby" if role.standby else "away"
    if state != shown:
        shown = state
        state_file.write_text(state)
role.finish()
"""


@pytest.fixture
def chat() -> Iterator[ChatEndpoint]:
    with ChatEndpoint() as endpoint:
        yield endpoint


class Child:
    """One notifier process and its state file."""

    def __init__(self, database_url: str, tmp_path: Path, name: str) -> None:
        self.state_file = tmp_path / f"{name}.state"
        self.log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, database_url, str(self.state_file), str(IDLE_LIMIT_MS)],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def state(self) -> str:
        try:
            return self.state_file.read_text()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


def go_live(conn: psycopg2.extensions.connection, slug: str) -> None:
    """A go-live as the writer commits it: a broadcast row and its notification."""
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO kick_monitor.streamers (username) VALUES (%s) RETURNING id", (slug,))
        streamer_id = cur.fetchone()[0]  # type: ignore[index]
        cur.execute("INSERT INTO kick_monitor.broadcasts (streamer_id, started_at, start_title, start_source)"
                    " VALUES (%s, now(), 'hi', 'pusher') RETURNING id", (streamer_id,))
        broadcast_id = cur.fetchone()[0]  # type: ignore[index]
        cur.execute("SELECT pg_notify('kick_monitor_status', json_build_object('broadcast_id', %s::bigint,"
                    " 'username', %s, 'status', 'online')::text)", (broadcast_id, slug))


def announced(chat: ChatEndpoint, slug: str) -> int:
    return sum(slug in str(message.body) for message in chat.delivered("hook"))


@pytest.mark.slow  # ~8 s: a notification end-to-end suite (keeps `make test` under 8 minutes)
def test_a_paused_notifier_loses_the_lock_the_standby_takes_over_and_the_woken_one_sends_nothing(
    conn: psycopg2.extensions.connection, database_url: str, chat: ChatEndpoint, tmp_path: Path,
) -> None:
    add_target(conn, chat.url("hook"), kind="slack")
    first = Child(database_url, tmp_path, "first")
    second: Child | None = None
    try:
        wait_until(lambda: first.state() == "active", 30, what="the first notifier dispatching")
        second = Child(database_url, tmp_path, "second")
        wait_until(lambda: second is not None and second.state() == "standby", 30, what="the second standing by")
        go_live(conn, "before_pause")
        wait_until(lambda: announced(chat, "before_pause") == 1, 10, what="the holder announcing")

        os.kill(first.process.pid, signal.SIGSTOP)
        paused = time.monotonic()
        wait_until(lambda: second is not None and second.state() == "active", 20, what="the standby taking over")
        took = time.monotonic() - paused
        assert took < IDLE_LIMIT_MS / 1000 + 2.0 + 2.0, f"took over after {took:.1f} s"  # limit + standby retry
        go_live(conn, "while_paused")  # the paused holder's LISTEN session queues this notification too
        wait_until(lambda: announced(chat, "while_paused") == 1, 10, what="the new holder announcing")

        os.kill(first.process.pid, signal.SIGCONT)
        wait_until(lambda: first.state() == "standby", 20, what="the woken one standing by")
        go_live(conn, "after_wake")
        wait_until(lambda: announced(chat, "after_wake") == 1, 10, what="the holder announcing after the wake")
        time.sleep(2.5)  # a sweep of each, and the woken one's standby retry
        assert second.state() == "active" and first.state() == "standby"
        assert [announced(chat, slug) for slug in ("before_pause", "while_paused", "after_wake")] == [1, 1, 1]
        assert len(chat.delivered("hook")) == 3, "nothing sent twice, nothing else sent"
        with conn, conn.cursor() as cur:
            cur.execute("SELECT state, count(*) FROM kick_monitor.notify_deliveries GROUP BY state")
            assert dict(cur.fetchall()) == {"sent": 3}
    finally:
        for child in (first, second):
            if child is not None:
                child.stop()
