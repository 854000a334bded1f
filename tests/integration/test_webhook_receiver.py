"""The webhook receiver end to end: the real service (Pusher off), real PostgreSQL, signed POSTs.

Kick's side is played here: a key pair made by the test (the receiver reads its public half
from KICK_MONITOR_WEBHOOK_PUBLIC_KEY), deliveries shaped and signed as Kick sends them, and
Kick's retry (the same message id and body again) when an answer was not 200.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2.extensions
import pytest

from kick_monitor.webhook_events import METADATA_EVENT, STATUS_EVENT
from kick_sim import Simulator
from kick_tools import harness
from tests.service import Service, insert_streamers, make_service, query, running, wait_until
from tests.webhooks import Delivery, KickSigner, metadata_body, post, status_body

pytestmark = pytest.mark.timeout(120)

PATH = "/webhooks/kick"
USERS = {1001: "alpha", 1002: "bravo", 1003: "charlie"}
NO_URLS = {key: "http://127.0.0.1:9" for key in ("api_base_url", "oauth_token_url", "web_api_base_url")}


def receiver_pid(service: Service) -> int | None:
    return next((pid for pid, title in service.children().items() if "webhook" in title), None)


def webhook_service(database_url: str, tmp_path: Path, port: int, key: Path, **settings: str) -> Service:
    """`kick-monitor run`, Pusher off and no API credentials: webhooks are the only source."""
    env = harness.service_env(
        {**NO_URLS, "pusher_url": "off"}, database_url, tmp_path / "data",
        settings={"heartbeat_timeout": "10", "reload_interval": "5", "webhook_port": str(port),
                  "webhook_public_key": str(key), "webhook_read_timeout": "2", "webhook_ack_timeout": "1.5",
                  **settings},
    )
    for name in ("KICK_MONITOR_CLIENT_ID", "KICK_MONITOR_CLIENT_SECRET"):
        env.pop(name, None)
    return Service(env, tmp_path / "service.log")


def webhook_history(conn: psycopg2.extensions.connection) -> list[tuple[str, str, int]]:
    """(change_id, status, kick user id) of every webhook history row, in commit order."""
    return [tuple(row) for row in query(conn, (
        "SELECT e.change_id, e.status, s.kick_user_id FROM kick_monitor.status_events e"
        " JOIN kick_monitor.streamers s ON s.id = e.streamer_id WHERE e.source = 'webhook' ORDER BY e.id"))]


@pytest.fixture
def streamers(conn: psycopg2.extensions.connection) -> dict[int, str]:
    harness.insert_streamers(conn, [(slug, 5000 + uid, uid, 9000 + uid) for uid, slug in USERS.items()])
    return USERS


@pytest.fixture
def signer() -> KickSigner:
    return KickSigner()


@pytest.fixture
def service(
    database_url: str, tmp_path: Path, free_port: object, signer: KickSigner, streamers: dict[int, str]
) -> Iterator[tuple[Service, int]]:
    port, metrics_port = free_port(), free_port()  # type: ignore[operator]
    svc = webhook_service(database_url, tmp_path, port, signer.write_public_key(tmp_path / "kick.pem"),
                          metrics_port=str(metrics_port))
    with running(svc):
        wait_until(lambda: healthy(port), 20, what="the webhook receiver")
        yield svc, port


def healthy(port: int) -> bool:
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def deliveries_counted(metrics_port: int) -> dict[tuple[str, str], int]:
    """kick_monitor_webhook_deliveries_total by (event, outcome), from the service's scrape endpoint."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pattern = re.compile(r'^kick_monitor_webhook_deliveries_total\{event="([^"]+)",outcome="([^"]+)"\} (\S+)$', re.M)
    return {(event, outcome): int(float(value)) for event, outcome, value in pattern.findall(text)}


def deliver(signer: KickSigner, port: int, delivery: Delivery, **kwargs: str) -> int:
    return post(port, PATH, delivery.body, signer.headers(delivery, **kwargs))


def test_signed_deliveries_land_once_and_everything_else_is_refused_or_ignored(
    service: tuple[Service, int], signer: KickSigner, conn: psycopg2.extensions.connection
) -> None:
    svc, port = service
    started = time.time() - 30
    live = Delivery(STATUS_EVENT, status_body(1001, True, started, title="going live"))
    assert deliver(signer, port, live) == 200
    assert webhook_history(conn) == [(f"webhook:{live.message_id}", "online", 1001)]  # durable before the 200
    assert query(conn, "SELECT status, stream_title FROM kick_monitor.streamers WHERE kick_user_id = 1001") == [
        ("online", "going live")]
    assert deliver(signer, port, live) == 200  # Kick re-sends: same message id, no second row
    refused = {
        "bad signature": deliver(signer, port, Delivery(STATUS_EVENT, status_body(1002, True, started)),
                                 signature=KickSigner().headers(live)["Kick-Event-Signature"]),
        "unsigned": post(port, PATH, status_body(1002, True, started), {"Kick-Event-Type": STATUS_EVENT}),
        "stale": deliver(signer, port, Delivery(STATUS_EVENT, status_body(1002, True, started),
                                                sent_at=time.time() - 3600)),
        "oversize": deliver(signer, port, Delivery(STATUS_EVENT, b"{" + b" " * (65 << 10) + b"}")),
        "non-JSON, signed": deliver(signer, port, Delivery(STATUS_EVENT, b"<html>not json</html>")),
        "unknown broadcaster": deliver(signer, port, Delivery(STATUS_EVENT, status_body(4242, True, started))),
        "unknown type": deliver(signer, port, Delivery("chat.message.sent", b'{"broadcaster":{"user_id":1002}}')),
        "wrong path": post(port, "/other", b"{}", {}),
    }
    assert refused == {
        "bad signature": 401, "unsigned": 401, "stale": 401, "oversize": 413, "non-JSON, signed": 200,
        "unknown broadcaster": 200, "unknown type": 200, "wrong path": 404,
    }
    ended = Delivery(STATUS_EVENT, status_body(1001, False, started, ended_at=time.time()))
    assert deliver(signer, port, ended) == 200
    assert webhook_history(conn) == [
        (f"webhook:{live.message_id}", "online", 1001), (f"webhook:{ended.message_id}", "offline", 1001)]
    assert query(conn, "SELECT count(*) FROM kick_monitor.status_events WHERE source <> 'webhook'") == [(0,)]
    # title and category: taken (durable) and never a history row (how they apply is the writer's rule)
    assert deliver(signer, port, Delivery(METADATA_EVENT, metadata_body(1002, "new title", "Chess"))) == 200
    assert len(webhook_history(conn)) == 2
    log = svc.log_text()
    assert "not one of our streamers" in log and "chat.message.sent" in log
    counted = deliveries_counted(int(svc.env["KICK_MONITOR_METRICS_PORT"]))
    assert counted == {
        ("livestream.status.updated", "accepted"): 2, ("livestream.status.updated", "duplicate"): 1,
        ("livestream.status.updated", "bad_signature"): 2, ("livestream.status.updated", "stale"): 1,
        ("livestream.status.updated", "invalid"): 1, ("livestream.status.updated", "unknown_broadcaster"): 1,
        ("other", "unknown_type"): 1, ("livestream.metadata.updated", "accepted"): 1,
    }
    assert signer.private_key.private_numbers().d.to_bytes(256, "big").hex()[:32] not in log


def test_a_slow_loris_client_is_cut_off_while_others_are_served(
    service: tuple[Service, int], signer: KickSigner, conn: psycopg2.extensions.connection
) -> None:
    _, port = service
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"POST /webhooks/kick HTTP/1.1\r\nHost: x\r\n")
    began = time.monotonic()
    try:
        served = []
        for user in (1002, 1003):  # while the slow one trickles its headers
            slow.sendall(b"X-Slow: 1\r\n")
            served.append(deliver(signer, port, Delivery(STATUS_EVENT, status_body(user, True, time.time()))))
        assert served == [200, 200]
        slow.settimeout(10)
        closed = False
        while time.monotonic() - began < 8 and not closed:
            try:
                slow.sendall(b"X-Slow: 1\r\n")
                closed = slow.recv(1024) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
        assert closed, "the slow client was not disconnected"
        assert time.monotonic() - began < 6  # webhook_read_timeout is 2 s
    finally:
        slow.close()
    assert {user for _, _, user in webhook_history(conn)} == {1002, 1003}


def test_a_streamer_added_while_running_is_known_at_once(
    service: tuple[Service, int], signer: KickSigner, conn: psycopg2.extensions.connection
) -> None:
    """The receiver follows the streamer list by LISTEN: no wait for the rate-limited reload on a miss."""
    _, port = service
    assert deliver(signer, port, Delivery(STATUS_EVENT, status_body(5555, True, time.time()))) == 200  # ignored
    harness.insert_streamers(conn, [("echo", 5555 + 5000, 5555, 9555)])  # just after that miss reloaded the list
    time.sleep(0.3)
    late = Delivery(STATUS_EVENT, status_body(5555, True, time.time()))
    assert deliver(signer, port, late) == 200
    assert webhook_history(conn) == [(f"webhook:{late.message_id}", "online", 5555)]


def test_503_while_the_writer_cannot_acknowledge_then_kicks_retry_lands_once(
    service: tuple[Service, int], signer: KickSigner, conn: psycopg2.extensions.connection
) -> None:
    svc, port = service
    writer = svc.writer_pid()
    assert writer is not None
    delivery = Delivery(STATUS_EVENT, status_body(1003, True, time.time()))
    os.kill(writer, signal.SIGSTOP)
    try:
        began = time.monotonic()
        assert deliver(signer, port, delivery) == 503
        assert time.monotonic() - began < 4  # bounded by webhook_ack_timeout (1.5 s)
        assert healthy(port)
    finally:
        os.kill(writer, signal.SIGCONT)
    wait_until(lambda: deliver(signer, port, delivery) == 200, 10, what="the retried delivery to be taken")
    assert deliver(signer, port, delivery) == 200
    assert webhook_history(conn) == [(f"webhook:{delivery.message_id}", "online", 1003)]


def test_pusher_off_opens_no_connection_and_reconciliation_still_runs(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    """KICK_MONITOR_PUSHER_URL=off (webhook-only deployments): no Pusher, every streamer reconciled."""
    streamers = sim.create_streamers(6)
    insert_streamers(conn, streamers)
    sim.set_live(streamers[0].slug, True, send_event=False)
    service = make_service(sim, database_url, tmp_path, reconcile_interval_without_pusher="2")
    service.env["KICK_MONITOR_PUSHER_URL"] = "off"
    with running(service):
        wait_until(lambda: query(conn, "SELECT status FROM kick_monitor.streamers WHERE channel_id = "
                                       f"{streamers[0].channel_id}") == [("online",)], 30, what="reconciliation")
        sim.set_live(streamers[1].slug, True, send_event=False)
        wait_until(lambda: query(conn, "SELECT status FROM kick_monitor.streamers WHERE channel_id = "
                                       f"{streamers[1].channel_id}") == [("online",)], 15,
                   what="the next round of reconciliation (every 2 s without Pusher)")
        assert sim.connection_count() == 0 and sim.subscription_count() == 0
        assert "Pusher is off" in service.log_text()
        assert service.stop() == 0
