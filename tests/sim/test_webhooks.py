"""The simulator as Kick's Events API sender: signed deliveries to a real loopback receiver.

The receiver is a tiny stdlib HTTP server that verifies every signature with `cryptography`
against the key the simulator serves at /public/v1/public-key, as a real receiver would.
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kick_sim import SimConfig, Simulator
from kick_sim.cli import add_arguments, config_from_args
from kick_sim.cli import main as cli_main
from kick_sim.webhook_settings import DeliverySettings, WebhookFaults
from kick_tools.harness import SimProcess, child_env, sim_argv

CREDENTIALS = {"grant_type": "client_credentials", "client_id": "sim-client-id", "client_secret": "sim-client-secret"}
EVENTS = [{"name": "livestream.status.updated", "version": 1}, {"name": "livestream.metadata.updated", "version": 1}]
HEADERS = (
    "Kick-Event-Message-Id", "Kick-Event-Subscription-Id", "Kick-Event-Signature",
    "Kick-Event-Message-Timestamp", "Kick-Event-Type", "Kick-Event-Version",
)
FAST = DeliverySettings(timeout=2.0, retry_base=0.02, retry_max=0.1, max_attempts=4, unsubscribe_after=50)


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    valid: bool  # the signature verified against the served public key
    arrived: float  # time.time()

    @property
    def message_id(self) -> str:
        return self.headers["Kick-Event-Message-Id"]

    def json(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    """Records every POST; answers `answer(delivery)` (default 200) after verifying the signature."""

    def __init__(self, idle_timeout: float | None = None) -> None:
        self.public_key: rsa.RSAPublicKey | None = None
        self.deliveries: list[Delivery] = []
        self.answer: Callable[[Delivery], int] = lambda delivery: 200
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the sender uses it
            timeout = idle_timeout  # closes a connection idle this long, as servers do

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name: self.headers.get(name, "") for name in HEADERS}
                delivery = Delivery(headers, body, receiver.verify(headers, body), time.time())
                with receiver._lock:
                    receiver.deliveries.append(delivery)
                self.send_response(receiver.answer(delivery))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/kick"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        assert self.public_key is not None, "fetch the public key first"
        signed = f"{headers['Kick-Event-Message-Id']}.{headers['Kick-Event-Message-Timestamp']}.".encode() + body
        try:
            signature = base64.b64decode(headers["Kick-Event-Signature"], validate=True)
            self.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return False
        return True

    def fetch_key(self, api_base_url: str) -> None:
        """The public key as a receiver gets it: Kick's GET /public/v1/public-key."""
        answer = requests.get(f"{api_base_url}/public/v1/public-key", timeout=5)
        assert answer.status_code == 200, answer.text
        key = serialization.load_pem_public_key(answer.json()["data"]["public_key"].encode())
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
        self.public_key = key

    def received(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One key pair for the module (generating one per simulator would cost ~0.1 s each)."""
    return str(tmp_path_factory.mktemp("webhook-key") / "key.pem")


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def start_sim(key_file: str, receiver: Receiver, delivery: DeliverySettings = FAST, **faults: Any) -> Simulator:
    config = SimConfig(
        seed=3, webhook_key_file=key_file, webhook_url=receiver.url, webhook_delivery=delivery,
        webhook_faults=WebhookFaults(**faults),
    )
    sim = Simulator(config)
    sim.start()
    receiver.fetch_key(sim.api_base_url)
    return sim


@pytest.fixture()
def make_sim(key_file: str, receiver: Receiver) -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def make(delivery: DeliverySettings = FAST, **faults: Any) -> Simulator:
        started.append(start_sim(key_file, receiver, delivery, **faults))
        return started[-1]

    yield make
    for sim in started:
        sim.stop()


def subscribe(sim: Simulator, user_id: int, events: list[dict[str, Any]] = EVENTS) -> list[str]:
    token = requests.post(sim.oauth_token_url, data=CREDENTIALS, timeout=5).json()["access_token"]
    answer = requests.post(
        f"{sim.api_base_url}/public/v1/events/subscriptions",
        json={"broadcaster_user_id": user_id, "events": events, "method": "webhook"},
        headers={"Authorization": f"Bearer {token}"}, timeout=5,
    )
    assert answer.status_code == 200, answer.text
    return [result["subscription_id"] for result in answer.json()["data"]]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_public_key_verifies_the_sims_signatures(make_sim: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = make_sim()
    body = b'{"is_live":true}'
    signature = sim.webhook_signer.sign("01ABC", "2026-01-01T00:00:00Z", body)
    headers = {"Kick-Event-Message-Id": "01ABC", "Kick-Event-Message-Timestamp": "2026-01-01T00:00:00Z",
               "Kick-Event-Signature": signature}
    assert receiver.verify(headers, body)
    assert not receiver.verify(headers, body + b" ")  # the body is covered
    assert not receiver.verify({**headers, "Kick-Event-Message-Timestamp": "2026-01-01T00:00:01Z"}, body)
    control = requests.post(f"{sim.control_url}/control/webhooks/sign",
                            json={"message_id": "01ABC", "timestamp": "2026-01-01T00:00:00Z", "body": body.decode()},
                            timeout=5)
    assert control.json()["signature"] == signature  # PKCS#1 v1.5 is deterministic
    answer = requests.get(f"{sim.api_base_url}/public/v1/public-key", timeout=5).json()
    assert answer["message"] == "OK" and answer["data"]["public_key"].startswith("-----BEGIN PUBLIC KEY-----")


def test_go_live_title_offline_are_delivered_signed(make_sim: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = make_sim()
    watched, other = sim.create_streamers(2)
    status_id, metadata_id = subscribe(sim, watched.user_id)
    sim.set_live(watched.slug, True, title="hello")
    sim.update_title(watched.slug, "renamed")
    sim.set_live(watched.slug, False, send_event=False)  # a missed Pusher frame still gets its webhook
    sim.set_live(other.slug, True)  # nobody subscribed to it
    assert sim.wait_webhooks_idle(10)

    got = receiver.received()
    assert len(got) == 3 and all(d.valid for d in got)
    by_type = {(d.headers["Kick-Event-Type"], d.json().get("is_live")): d for d in got}
    live = by_type[("livestream.status.updated", True)].json()
    ended = by_type[("livestream.status.updated", False)].json()
    meta = by_type[("livestream.metadata.updated", None)]
    broadcaster = {"is_anonymous": False, "user_id": watched.user_id, "username": watched.slug, "is_verified": False,
                   "profile_picture": "", "channel_slug": watched.slug, "identity": None}
    assert live == {"broadcaster": broadcaster, "is_live": True, "title": "hello",
                    "started_at": live["started_at"], "ended_at": None}
    assert ended["is_live"] is False and ended["started_at"] == live["started_at"] and ended["ended_at"]
    assert meta.json()["metadata"]["title"] == "renamed" and meta.headers["Kick-Event-Subscription-Id"] == metadata_id
    for delivery in got:
        assert delivery.headers["Kick-Event-Version"] == "1" and len(delivery.message_id) == 26
        assert delivery.headers["Kick-Event-Message-Timestamp"].endswith("Z")
    assert by_type[("livestream.status.updated", True)].headers["Kick-Event-Subscription-Id"] == status_id
    assert len({d.message_id for d in got}) == 3

    truth = {t.seq: t for t in sim.truth()}
    messages = sim.webhook_messages()
    assert [m.state for m in messages] == ["delivered"] * 3
    assert [truth[m.truth_seq].user_id for m in messages] == [watched.user_id] * 3
    assert [a.ok for a in sim.webhook_attempts()] == [True] * 3


def test_duplicate_resends_the_same_message(make_sim: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = make_sim(duplicate=1.0, duplicate_after=(0.05, 0.05))
    (streamer,) = sim.create_streamers(1)
    subscribe(sim, streamer.user_id)
    sim.set_live(streamer.slug, True)
    assert sim.wait_webhooks_idle(10)
    first, second = receiver.received()
    assert first.headers == second.headers and first.body == second.body and first.valid and second.valid
    assert sorted(a.kind for a in sim.webhook_attempts()) == ["duplicate", "send"]


def test_drop_sends_nothing_and_delay_waits(make_sim: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = make_sim(drop=1.0)
    (streamer,) = sim.create_streamers(1)
    subscribe(sim, streamer.user_id)
    sim.set_live(streamer.slug, True)
    assert sim.wait_webhooks_idle(10)
    assert receiver.received() == [] and [m.state for m in sim.webhook_messages()] == ["dropped"]

    sim.set_webhook_faults(WebhookFaults(delay=(0.4, 0.4)))  # drop off again
    sim.set_live(streamer.slug, False)
    assert sim.wait_webhooks_idle(10)
    (late,) = receiver.received()
    message = sim.webhook_messages()[-1]
    assert late.arrived - message.created_wall >= 0.4 and late.json()["is_live"] is False


def test_stamp_at_event_keeps_a_late_message_old(key_file: str, receiver: Receiver) -> None:
    settings = DeliverySettings(timeout=2.0, stamp="event")
    with Simulator(SimConfig(seed=6, webhook_key_file=key_file, webhook_url=receiver.url, webhook_delivery=settings,
                             webhook_faults=WebhookFaults(delay=(1.0, 1.0)))) as sim:
        receiver.fetch_key(sim.api_base_url)
        (streamer,) = sim.create_streamers(1)
        subscribe(sim, streamer.user_id)
        sim.set_live(streamer.slug, True)
        assert sim.wait_webhooks_idle(10)
        (late,) = receiver.received()
        message = sim.webhook_messages()[0]
        stamped = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(message.created_wall))
        assert late.valid and late.headers["Kick-Event-Message-Timestamp"] == stamped
        assert late.arrived - message.created_wall >= 1.0


def test_reorder_releases_newest_first(make_sim: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = make_sim(replace(FAST, workers=1), reorder=1.0, reorder_depth=2)  # one sender: arrival order is send order
    (streamer,) = sim.create_streamers(1)
    subscribe(sim, streamer.user_id)
    sim.set_live(streamer.slug, True)
    time.sleep(0.1)
    assert receiver.received() == []  # held until a second message comes
    sim.set_live(streamer.slug, False)
    assert sim.wait_webhooks_idle(10)
    assert [d.json()["is_live"] for d in receiver.received()] == [False, True]


def test_corrupt_signatures_fail_and_are_retried(make_sim: Callable[..., Simulator], receiver: Receiver) -> None:
    receiver.answer = lambda delivery: 200 if delivery.valid else 401
    sim = make_sim(corrupt=1.0)
    (streamer,) = sim.create_streamers(1)
    subscribe(sim, streamer.user_id)
    sim.set_live(streamer.slug, True)
    assert sim.wait_webhooks_idle(10)
    got = receiver.received()
    assert len(got) == FAST.max_attempts and not any(d.valid for d in got)
    assert len({d.message_id for d in got}) == 1 and sim.webhook_messages()[0].state == "gave_up"
    assert [a.attempt for a in sim.webhook_attempts()] == [1, 2, 3, 4]

    sim.set_webhook_faults(corrupt=0.0)
    sim.set_live(streamer.slug, False)
    assert sim.wait_webhooks_idle(10)
    assert receiver.received()[-1].valid and sim.webhook_messages()[-1].state == "delivered"


def test_retries_keep_id_timestamp_and_signature(make_sim: Callable[..., Simulator], receiver: Receiver) -> None:
    failures = iter([500, 503])
    receiver.answer = lambda delivery: next(failures, 200)
    sim = make_sim()
    (streamer,) = sim.create_streamers(1)
    subscribe(sim, streamer.user_id)
    sim.set_live(streamer.slug, True)
    assert sim.wait_webhooks_idle(10)
    got = receiver.received()
    assert len(got) == 3 and len({tuple(d.headers.items()) for d in got}) == 1 and all(d.valid for d in got)
    assert [(a.kind, a.status) for a in sim.webhook_attempts()] == [("send", 500), ("retry", 503), ("retry", 200)]


def test_failing_receiver_gets_unsubscribed(key_file: str, receiver: Receiver) -> None:
    receiver.answer = lambda delivery: 500
    settings = DeliverySettings(timeout=2.0, retry_base=0.01, retry_max=0.02, max_attempts=10, unsubscribe_after=3)
    with Simulator(SimConfig(seed=5, webhook_key_file=key_file, webhook_url=receiver.url,
                             webhook_delivery=settings)) as sim:
        receiver.fetch_key(sim.api_base_url)
        (streamer,) = sim.create_streamers(1)
        status_id, metadata_id = subscribe(sim, streamer.user_id)
        sim.set_live(streamer.slug, True)
        assert sim.wait_webhooks_idle(10)
        assert len(receiver.received()) == 3
        assert sim.webhook_unsubscribed() == [status_id]
        assert [s.id for s in sim.event_subscriptions()] == [metadata_id]
        sim.set_live(streamer.slug, False)  # no subscription to status any more: nothing is made
        assert len(sim.webhook_messages()) == 1 and sim.webhook_messages()[0].state == "unsubscribed"


def test_a_receiver_closing_idle_connections_costs_no_failure(key_file: str) -> None:
    with Receiver(idle_timeout=0.2) as closing:
        sim = start_sim(key_file, closing)
        try:
            (streamer,) = sim.create_streamers(1)
            subscribe(sim, streamer.user_id)
            sim.set_live(streamer.slug, True)
            assert sim.wait_webhooks_idle(10)
            time.sleep(0.5)  # the receiver has closed the kept-alive connection by now
            sim.set_live(streamer.slug, False)
            assert sim.wait_webhooks_idle(10)
        finally:
            sim.stop()
        assert [(a.kind, a.status) for a in sim.webhook_attempts()] == [("send", 200), ("send", 200)]
        assert len(closing.received()) == 2


def test_replay_resends_an_old_message(make_sim: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = make_sim()
    (streamer,) = sim.create_streamers(1)
    subscribe(sim, streamer.user_id)
    sim.set_live(streamer.slug, True)
    assert sim.wait_webhooks_idle(10)
    time.sleep(1.1)  # the timestamp has second precision: a replay must carry the old one
    (message_id,) = sim.replay_webhooks(count=1)
    assert sim.wait_webhooks_idle(10)
    original, replayed = receiver.received()
    assert replayed.message_id == message_id and replayed.headers == original.headers and replayed.valid
    assert sim.webhook_attempts()[-1].kind == "replay"


def test_control_api_drives_webhooks(make_sim: Callable[..., Simulator], receiver: Receiver) -> None:
    sim = make_sim()
    control = sim.control_url
    (streamer,) = sim.create_streamers(1)
    subscribe(sim, streamer.user_id, EVENTS[:1])
    assert requests.post(f"{control}/control/webhooks/url", json={"url": None}, timeout=5).json() == {"url": None}
    sim.set_live(streamer.slug, True)  # no URL: no message at all
    bad = requests.post(f"{control}/control/webhooks/url", json={"url": "http://192.0.2.1/x"}, timeout=5)
    assert bad.status_code == 400 and "loopback" in bad.json()["error"]
    requests.post(f"{control}/control/webhooks/url", json={"url": receiver.url}, timeout=5)
    faults = requests.post(f"{control}/control/webhooks/faults", json={"duplicate": 1, "duplicate_after": 0}, timeout=5)
    assert faults.json()["duplicate"] == 1.0 and faults.json()["duplicate_after"] == [0.0, 0.0]
    bad_fault = requests.post(f"{control}/control/webhooks/faults", json={"drop": 2}, timeout=5)
    assert bad_fault.status_code == 400
    sim.set_live(streamer.slug, False)
    assert requests.post(f"{control}/control/webhooks/wait", json={"timeout": 10}, timeout=15).json() == {"idle": True}
    attempts = [orjson.loads(line) for line in
                requests.get(f"{control}/control/webhooks/attempts", timeout=5).content.splitlines()]
    assert sorted((a["kind"], a["ok"]) for a in attempts) == [("duplicate", True), ("send", True)]  # same moment
    messages = requests.get(f"{control}/control/webhooks/messages", params={"since": 0}, timeout=5).content
    (message,) = [orjson.loads(line) for line in messages.splitlines()]
    assert message["state"] == "delivered" and orjson.loads(message["body"])["is_live"] is False
    stats = requests.get(f"{control}/control/webhooks/stats", timeout=5).json()
    assert stats["states"] == {"delivered": 1} and stats["attempts_ok"] == 2
    wait_for(lambda: len(receiver.received()) == 2)


def test_bad_webhook_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        SimConfig(webhook_url="http://example.com/hook")
    with pytest.raises(ValueError, match="probability"):
        WebhookFaults(drop=1.5)
    with pytest.raises(ValueError, match="range"):
        WebhookFaults(delay=(5.0, 1.0))


@pytest.mark.slow
def test_every_flip_arrives_under_load_with_duplicates_and_reorder(key_file: str, receiver: Receiver) -> None:
    """1,000 subscribed streamers flipping at 200/s: each transition lands, copies share their id."""
    with Simulator(SimConfig(seed=9, webhook_key_file=key_file, webhook_url=receiver.url, webhook_delivery=FAST,
                             webhook_faults=WebhookFaults(duplicate=0.1, reorder=0.1))) as sim:
        receiver.fetch_key(sim.api_base_url)
        streamers = sim.create_streamers(1000)
        for streamer in streamers:
            subscribe(sim, streamer.user_id, EVENTS[:1])
        sim.start_flipping(rate=200, duration=5, spacing="even")
        assert sim.wait_flipping_done(30)
        assert sim.wait_webhooks_idle(60)
        truth = sim.truth()
        messages = sim.webhook_messages()
        assert sorted(m.truth_seq for m in messages) == [t.seq for t in truth]
        assert {m.state for m in messages} == {"delivered"}
        got = receiver.received()
        assert all(d.valid for d in got)
        assert {d.message_id for d in got} == {m.message_id for m in messages}
        duplicates = len(got) - len(messages)
        assert 0.05 * len(messages) < duplicates < 0.15 * len(messages)
        by_id = {m.message_id: m for m in messages}
        lag = sorted(d.arrived - by_id[d.message_id].created_wall for d in got)
        assert lag[len(lag) // 2] < 2.0, lag[len(lag) // 2]  # median, held-back ones aside (generous: shared CPUs)


def test_sim_process_delivers_and_reports(tmp_path: Path, receiver: Receiver) -> None:
    """`kick-monitor sim --webhook-url ...` as its own process, driven over the control API."""
    key = tmp_path / "hook-key.pem"
    sim = SimProcess.start(tmp_path / "sim.log", tmp_path / "ready.json", [
        "--webhook-url", receiver.url, "--webhook-key-file", str(key), "--webhook-duplicate", "1",
        "--webhook-retry-base", "0.05",
    ], timeout=30)
    try:
        assert key.stat().st_mode & 0o777 == 0o600
        (streamer,) = sim.post("/control/streamers", {"count": 1})["created"]
        token = requests.post(sim.urls["oauth_token_url"], data=CREDENTIALS, timeout=5).json()["access_token"]
        requests.post(f"{sim.urls['api_base_url']}/public/v1/events/subscriptions", timeout=5,
                      json={"broadcaster_user_id": streamer["user_id"], "events": EVENTS, "method": "webhook"},
                      headers={"Authorization": f"Bearer {token}"})
        receiver.fetch_key(sim.urls["api_base_url"])
        sim.post("/control/live", {"slug": streamer["slug"], "live": True})
        assert sim.post("/control/webhooks/wait", {"timeout": 10})["idle"]
        got = receiver.received()
        assert len(got) == 2 and all(d.valid for d in got) and got[0].message_id == got[1].message_id
        (message,) = sim.get_lines("/control/webhooks/messages")
        assert message["message_id"] == got[0].message_id and message["state"] == "delivered"
        assert len(sim.get_lines("/control/webhooks/attempts?since=1")) == 1
    finally:
        exit_code = sim.stop()
    assert exit_code == 0  # SIGTERM: a clean stop


def test_sim_process_refuses_a_non_loopback_webhook_url() -> None:
    result = subprocess.run(sim_argv("--webhook-url", "http://192.0.2.7/hook"), capture_output=True, text=True,
                            env=child_env(), timeout=30, check=False)
    assert result.returncode == 2 and "loopback" in result.stderr and len(result.stderr.splitlines()) == 1


def test_cli_options_reach_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args([
        "--webhook-url", "http://127.0.0.1:9/x", "--webhook-delay", "2:60", "--webhook-delay-fraction", "0.5",
        "--webhook-drop", "0.1", "--webhook-duplicate", "0.2", "--webhook-duplicate-after", "0.5",
        "--webhook-reorder", "0.3", "--webhook-reorder-depth", "3", "--webhook-reorder-max-hold", "2",
        "--webhook-corrupt", "0.4", "--webhook-replay", "0.5", "--webhook-replay-after", "1:2",
        "--webhook-timeout", "3", "--webhook-retry-base", "0.5", "--webhook-retry-max", "4",
        "--webhook-max-attempts", "5", "--webhook-unsubscribe-after", "6", "--webhook-workers", "2",
        "--webhook-stamp", "event", "--webhook-key-file", "/tmp/k.pem", "--event-subscription-limit", "7",
    ]))
    assert config.webhook_url == "http://127.0.0.1:9/x" and config.webhook_key_file == "/tmp/k.pem"
    assert config.event_subscription_limit == 7
    assert config.webhook_faults == WebhookFaults(
        delay=(2.0, 60.0), delay_fraction=0.5, drop=0.1, duplicate=0.2, duplicate_after=(0.5, 0.5), reorder=0.3,
        reorder_depth=3, reorder_max_hold=2.0, corrupt=0.4, replay=0.5, replay_after=(1.0, 2.0),
    )
    assert config.webhook_delivery == DeliverySettings(
        timeout=3.0, retry_base=0.5, retry_max=4.0, max_attempts=5, unsubscribe_after=6, workers=2, stamp="event"
    )
    assert cli_main(["--webhook-drop", "2"]) == 2
    assert "probability" in capsys.readouterr().err
