"""Webhook deliveries through faults, end to end (slow): the writer or the receiver SIGKILLed
mid-stream, PostgreSQL down for 30 s. Kick's side re-sends every delivery not answered 200 —
the same message id and body — and every one must land exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2.extensions
import pytest

from kick_monitor.database import connect
from kick_monitor.embedded_pg import EmbeddedPostgres
from kick_monitor.migrations import migrate
from kick_monitor.webhook_events import STATUS_EVENT
from kick_tools import harness
from tests.integration.test_webhook_receiver import healthy, receiver_pid, webhook_service
from tests.service import query, running, wait_until
from tests.webhooks import Delivery, KickSigner, post, status_body

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PATH = "/webhooks/kick"
FIRST_USER = 100_000


def add_streamers(conn: psycopg2.extensions.connection, count: int) -> list[int]:
    users = [FIRST_USER + i for i in range(count)]
    harness.insert_streamers(conn, [(f"s{u}", u + 1_000_000, u, u + 2_000_000) for u in users])
    return users


class Kick:
    """Sends deliveries from a few threads and re-sends each until it is answered 200."""

    def __init__(self, signer: KickSigner, port: int) -> None:
        self.signer, self.port = signer, port
        self.attempts = 0
        self.not_200: dict[int | str, int] = {}
        self._lock = threading.Lock()

    def send_until_taken(self, delivery: Delivery, deadline: float) -> bool:
        while time.monotonic() < deadline:
            try:
                status: int | str = post(self.port, PATH, delivery.body, self.signer.headers(delivery), timeout=10)
            except OSError as exc:
                status = type(exc).__name__
            with self._lock:
                self.attempts += 1
                if status != 200:
                    self.not_200[status] = self.not_200.get(status, 0) + 1
            if status == 200:
                return True
            time.sleep(0.2)
        return False

    def deliver_all(self, deliveries: list[Delivery], rate: float, timeout: float = 90.0) -> list[bool]:
        deadline = time.monotonic() + timeout
        with ThreadPoolExecutor(max_workers=32) as pool:  # Kick sends in parallel
            futures = []
            for delivery in deliveries:
                futures.append(pool.submit(self.send_until_taken, delivery, deadline))
                time.sleep(1.0 / rate)
            return [f.result() for f in futures]


def go_lives(users: list[int]) -> list[Delivery]:
    now = time.time()
    return [Delivery(STATUS_EVENT, status_body(u, True, now - 5)) for u in users]


def assert_exactly_once(conn: psycopg2.extensions.connection, deliveries: list[Delivery]) -> None:
    rows = query(conn, "SELECT change_id FROM kick_monitor.status_events WHERE source = 'webhook'")
    recorded = [change_id for (change_id,) in rows]
    expected = {f"webhook:{d.message_id}" for d in deliveries}
    assert len(recorded) == len(set(recorded)) == len(expected), "a delivery recorded twice or missing"
    assert set(recorded) == expected
    online = query(conn, f"SELECT count(*) FROM kick_monitor.streamers WHERE kick_user_id >= {FIRST_USER}"
                         " AND status = 'online'")
    assert online == [(len(deliveries),)]


def test_writer_sigkilled_during_deliveries_every_retry_lands_once(
    conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path, free_port: object
) -> None:
    users = add_streamers(conn, 300)
    signer, port = KickSigner(), free_port()  # type: ignore[operator]
    service = webhook_service(database_url, tmp_path, port, signer.write_public_key(tmp_path / "kick.pem"))
    deliveries = go_lives(users)
    with running(service):
        wait_until(lambda: healthy(port), 20, what="the webhook receiver")
        kick = Kick(signer, port)
        killed: list[int] = []

        def kill_writer_twice() -> None:
            for _ in range(2):
                time.sleep(1.0)
                writer = service.writer_pid()
                if writer is not None and writer not in killed:
                    os.kill(writer, signal.SIGKILL)
                    killed.append(writer)

        killer = threading.Thread(target=kill_writer_twice)
        killer.start()
        taken = kick.deliver_all(deliveries, rate=100.0)
        killer.join()
        assert all(taken), f"{taken.count(False)} deliveries never answered 200"
        assert len(killed) == 2 and service.writer_pid() not in killed, "the writer was not killed twice"
        assert service.stop() == 0
    assert_exactly_once(conn, deliveries)


def test_receiver_sigkilled_during_deliveries_every_retry_lands_once(
    conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path, free_port: object
) -> None:
    users = add_streamers(conn, 300)
    signer, port = KickSigner(), free_port()  # type: ignore[operator]
    service = webhook_service(database_url, tmp_path, port, signer.write_public_key(tmp_path / "kick.pem"))
    deliveries = go_lives(users)
    with running(service):
        wait_until(lambda: healthy(port), 20, what="the webhook receiver")
        kick = Kick(signer, port)

        def kill_receiver() -> None:
            time.sleep(1.0)
            pid = receiver_pid(service)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_receiver)
        killer.start()
        taken = kick.deliver_all(deliveries, rate=100.0)
        killer.join()
        assert all(taken), f"{taken.count(False)} deliveries never answered 200"
        assert kick.not_200, "the kill was not felt by any delivery: the test did not test it"
        assert service.stop() == 0
    assert_exactly_once(conn, deliveries)


def test_postgres_down_30s_deliveries_answered_from_the_spool_and_all_land(
    tmp_path: Path, server_tmp_path: Path, free_port: object
) -> None:
    pg = EmbeddedPostgres(server_tmp_path / "own-pg")
    url = pg.start()
    conn = connect(url)
    try:
        migrate(conn)
        users = add_streamers(conn, 100)
        signer, port = KickSigner(), free_port()  # type: ignore[operator]
        service = webhook_service(url, tmp_path, port, signer.write_public_key(tmp_path / "kick.pem"),
                                  webhook_ack_timeout="5")
        deliveries = go_lives(users)
        with running(service):
            wait_until(lambda: healthy(port), 20, what="the webhook receiver")
            kick = Kick(signer, port)
            conn.close()
            pg.stop()
            began = time.monotonic()
            taken = kick.deliver_all(deliveries, rate=5.0, timeout=27.0)  # all during the outage
            assert all(taken), f"{taken.count(False)} not answered 200 while PostgreSQL was down: {kick.not_200}"
            time.sleep(max(0.0, 30.0 - (time.monotonic() - began)))
            pg.restart_after_stop()
            conn = connect(url)
            wait_until(lambda: query(conn, "SELECT count(*) FROM kick_monitor.status_events")[0][0] >= len(users),
                       40, what="the spooled deliveries to land")
            assert "spooled" in service.log_text()
            assert service.stop() == 0
        assert_exactly_once(conn, deliveries)
    finally:
        conn.close()
        pg.stop(force=True)
