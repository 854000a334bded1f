"""The notifier role in this process (no supervisor): one dispatcher per deployment, LISTEN wakes it.

Two roles share one database as two process trees would: the first holds the dispatch lock,
the second stands by and takes over when the first's session ends, turning what the first
left `sending` into `uncertain`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg2.extensions
import pytest

from kick_monitor.config import load_settings
from kick_monitor.notify_targets import add_target
from kick_monitor.role import standalone_context
from kick_sim.chat_endpoint import ChatEndpoint
from tests.service import query
from workers.notifier import Notifier


@pytest.fixture
def chat() -> Iterator[ChatEndpoint]:
    with ChatEndpoint() as endpoint:
        yield endpoint


def role(database_url: str) -> Notifier:
    ctx, keep = standalone_context("notifier", load_settings(environ={}), database_url)
    notifier = Notifier(ctx)
    notifier._keep = keep  # type: ignore[attr-defined]  # the supervisor's end: closing it means "gone"
    return notifier


def turn(notifier: Notifier, until: float) -> None:
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        notifier.step()


def test_one_dispatches_the_other_stands_by_and_takes_over(
    conn: psycopg2.extensions.connection, database_url: str, chat: ChatEndpoint
) -> None:
    target = add_target(conn, chat.url("hook"), kind="slack")
    first, second = role(database_url), role(database_url)
    try:
        turn(first, 0.3)
        turn(second, 0.3)
        assert first.conn is not None and not first.standby
        assert second.conn is None and second.standby
        with conn, conn.cursor() as cur:  # a go-live, committed as the writer commits it, with its notification
            cur.execute("INSERT INTO kick_monitor.streamers (username) VALUES ('xqc') RETURNING id")
            streamer_id = cur.fetchone()[0]  # type: ignore[index]
            cur.execute("INSERT INTO kick_monitor.broadcasts (streamer_id, started_at, start_title, start_source)"
                        " VALUES (%s, now(), 'hi', 'pusher') RETURNING id", (streamer_id,))
            broadcast_id = cur.fetchone()[0]  # type: ignore[index]
            cur.execute("SELECT pg_notify('kick_monitor_status', json_build_object('broadcast_id', %s::bigint,"
                        " 'status', 'online')::text)", (broadcast_id,))
        started = time.monotonic()
        while not chat.delivered("hook") and time.monotonic() - started < 5:
            first.step()
        assert len(chat.delivered("hook")) == 1
        assert time.monotonic() - started < 0.5, "woken by the notification, not by a sweep"
        turn(first, 0.2)
        with conn, conn.cursor() as cur:  # as if the first had marked one and died before recording it
            cur.execute("UPDATE kick_monitor.notify_deliveries SET state = 'sending'")
        first.close_database()  # its session ends: the lock is free
        turn(second, 2.5)  # the standby retries every 2 s
        assert second.conn is not None and not second.standby
        assert query(conn, "SELECT state FROM kick_monitor.notify_deliveries") == [("uncertain",)]
        turn(second, 1.2)
        assert len(chat.delivered("hook")) == 1, "an uncertain delivery is never sent again"
        assert target.id == 1
    finally:
        for notifier in (first, second):
            notifier.pool.close()
            notifier.close_database()
