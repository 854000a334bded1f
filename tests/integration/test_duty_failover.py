"""Duties across nodes (issue 17): one holder at a time; a holder that stops talking mid-round
(paused, frozen, cut off) loses its session and the lock, so another node's round runs."""

from __future__ import annotations

import threading
import time

import psycopg2
import psycopg2.extensions
import pytest

from kick_monitor import duty
from kick_monitor.duty import Duty


class Stuck(Duty):
    """A round that stops in the middle like a SIGSTOPped process: its session goes idle."""

    name, lock_key, every = "test-stuck", 0x4B4D7E57, 3600.0

    def __init__(self, url: str) -> None:
        super().__init__(lambda: psycopg2.connect(url))
        self.inside = threading.Event()
        self.resume = threading.Event()
        self.rounds = 0

    def round(self, conn: psycopg2.extensions.connection) -> int:
        self.rounds += 1
        self.inside.set()
        self.resume.wait(10)
        with conn.cursor() as cur:  # the woken holder's next statement
            cur.execute("SELECT 1")
        conn.commit()
        return self.rounds


def test_a_paused_duty_holder_loses_the_lock_and_cannot_write(
    database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(duty, "ROUND_IDLE_LIMIT_MS", 1000)
    first, second = Stuck(database_url), Stuck(database_url)
    result: list[object] = []

    def hold() -> None:
        try:
            result.append(first.run_round())
        except psycopg2.Error as exc:
            result.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert first.inside.wait(5)
        second.resume.set()
        assert second.run_round() is None  # the holder's session is alive: the lock is taken
        time.sleep(1.5)  # the holder has been silent past the limit
        assert second.run_round() == 1  # the server ended the paused holder's session: the duty moved
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT node FROM kick_monitor.duty_holders WHERE name = 'test-stuck'")
            assert cur.fetchone() is not None
    finally:
        first.resume.set()
        holder.join(5)
        first.close()
        second.close()
    assert len(result) == 1 and isinstance(result[0], psycopg2.Error)  # woken, it wrote nothing
