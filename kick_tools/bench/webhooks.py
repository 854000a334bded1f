"""WH: the webhook receiver (issue 16) — signed delivery → commit, and how many deliveries/s one takes.

`kick-monitor run` webhook-only (Pusher off, no API credentials), a key pair made here (the
receiver reads its public half from KICK_MONITOR_WEBHOOK_PUBLIC_KEY), deliveries shaped and
signed as Kick sends them, over keep-alive HTTP/1.1 connections on loopback:

1. paced: `rate` deliveries/s (200) for `duration` s, each a go-live of another streamer (every
   delivery a transition, one history row). Latency = the history row's `recorded_at`
   (clock_timestamp() inside the committing transaction) − the client's send time;
   also the client's send → 200 time (what Kick waits for).
2. flat out: `burst` deliveries from `connections` clients as fast as the answers come;
   deliveries/s = answered / elapsed; the receiver's CPU per delivery from /proc.
3. the verification alone (RSA-2048 PKCS#1 v1.5 verify + timestamp), in this process.

Signing is done before each phase (Kick's cost, not ours).
"""

from __future__ import annotations

import http.client
import queue
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kick_monitor.webhook_events import STATUS_EVENT
from kick_monitor.webhook_signature import Verifier, load_public_key, sign
from kick_tools import harness
from kick_tools.bench import measure
from kick_tools.bench.harness import HarnessError, Stack, wait_until
from kick_tools.bench.scenarios import BenchContext, Target

PATH = "/webhooks/kick"
FIRST_USER = 10_000_000
WH_TARGETS = (
    Target("signed delivery → commit p99 ≤ 25 ms at 200 deliveries/s", "latency_p99_ms", 25.0),
    Target("≥ 400 deliveries/s through one receiver (twice the paced rate)", "max_rate", 400.0, at_most=False),
)


@dataclass(frozen=True)
class WebhookLoad:
    rate: float = 200.0
    duration: float = 30.0
    burst: int = 6000
    connections: int = 16

    def scaled(self, ctx: BenchContext) -> WebhookLoad:
        if ctx.quick:
            return WebhookLoad(rate=50.0, duration=4.0, burst=400, connections=4)
        if ctx.duration:
            return WebhookLoad(self.rate, ctx.duration, self.burst, self.connections)
        return self


@dataclass(frozen=True)
class Signed:
    message_id: str
    body: bytes
    headers: dict[str, str]


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def sign_deliveries(key: rsa.RSAPrivateKey, users: range, tag: str) -> list[Signed]:
    """A go-live delivery per user id, signed now (timestamps stay inside the receiver's max age)."""
    signed = []
    now = time.time()
    for user in users:
        message_id = f"01BENCH{tag}{user:016d}"
        body = orjson.dumps({
            "broadcaster": {"is_anonymous": False, "user_id": user, "username": f"b{user}", "is_verified": False,
                            "profile_picture": "", "channel_slug": f"b{user}", "identity": None},
            "is_live": True, "title": "bench", "started_at": _stamp(now - 1), "ended_at": None,
        })
        stamp = _stamp(time.time())
        signed.append(Signed(message_id, body, {
            "Kick-Event-Message-Id": message_id, "Kick-Event-Subscription-Id": "01BENCHSUB",
            "Kick-Event-Signature": sign(key, message_id, stamp, body), "Kick-Event-Message-Timestamp": stamp,
            "Kick-Event-Type": STATUS_EVENT, "Kick-Event-Version": "1", "Content-Type": "application/json",
        }))
    return signed


class Client(threading.Thread):
    """One keep-alive connection taking (due time, delivery) from a queue; records send wall and answer."""

    def __init__(self, port: int, work: queue.Queue[tuple[float, Signed] | None]) -> None:
        super().__init__(daemon=True)
        self.port, self.work = port, work
        self.sent: dict[str, float] = {}
        self.answer_ms: list[float] = []
        self.failures: dict[str, int] = {}

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while (item := self.work.get()) is not None:
            due, delivery = item
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            started, wall = time.perf_counter(), time.time()
            try:
                conn.request("POST", PATH, body=delivery.body, headers=delivery.headers)
                resp = conn.getresponse()
                resp.read()
                status = str(resp.status)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            if status == "200":
                self.sent[delivery.message_id] = wall
                self.answer_ms.append((time.perf_counter() - started) * 1000)
            else:
                self.failures[status] = self.failures.get(status, 0) + 1
        conn.close()


def drive(port: int, deliveries: list[Signed], rate: float | None, connections: int) -> tuple[list[Client], float]:
    """Send every delivery (paced at `rate`/s, or flat out); the clients and the elapsed seconds."""
    work: queue.Queue[tuple[float, Signed] | None] = queue.Queue()
    clients = [Client(port, work) for _ in range(connections)]
    for client in clients:
        client.start()
    began = time.monotonic()
    for index, delivery in enumerate(deliveries):
        work.put((began + index / rate if rate else 0.0, delivery))
    for _ in clients:
        work.put(None)
    for client in clients:
        client.join()
    return clients, time.monotonic() - began


def verify_cost_us(key: rsa.RSAPrivateKey, samples: int = 2000) -> float:
    """Microseconds per verification (signature + timestamp), measured in this process."""
    delivery = sign_deliveries(key, range(FIRST_USER, FIRST_USER + 1), "V")[0]
    verifier = Verifier(load_public_key(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)), max_age=600)
    h = delivery.headers
    started = time.perf_counter()
    for _ in range(samples):
        verifier.verify(h["Kick-Event-Message-Id"], h["Kick-Event-Message-Timestamp"], delivery.body,
                        h["Kick-Event-Signature"], now=time.time())
    return (time.perf_counter() - started) / samples * 1e6


def run_webhooks(ctx: BenchContext, index: int) -> dict[str, Any]:
    sys.setswitchinterval(0.0005)  # the clients are threads too: do not let the GIL's 5 ms inflate answers
    load = WebhookLoad().scaled(ctx)
    run_dir = ctx.run_dir("WH", index)
    url = ctx.db.fresh(f"bench_wh_{index}")
    paced = int(load.rate * load.duration)
    users = range(FIRST_USER, FIRST_USER + paced + load.burst)
    conn = psycopg2.connect(url)
    try:
        harness.insert_streamers(conn, ((f"b{u}", u + 1_000_000_000, u, u) for u in users))
    finally:
        conn.close()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = run_dir / "kick-public.pem"
    pem.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    port = harness.free_port()
    off = "http://127.0.0.1:9"
    env = harness.service_env(
        {"pusher_url": "off", "api_base_url": off, "oauth_token_url": off, "web_api_base_url": off},
        url, run_dir / "data",
        settings={"webhook_port": str(port), "webhook_public_key": str(pem), "webhook_threads": "32"},
    )
    for name in ("KICK_MONITOR_CLIENT_ID", "KICK_MONITOR_CLIENT_SECRET"):
        env.pop(name, None)
    result: dict[str, Any] = {"run": index + 1, "load_before": measure.loadavg(), "config": vars(load)}
    with Stack() as stack:
        service = stack.push(harness.Process("service", harness.service_argv(), run_dir / "service.log", env).start())
        wait_until(lambda: _healthy(port, service), timeout=60, what="the webhook receiver")
        receiver = next((pid for pid, title in harness.children_of(service.pid).items() if "webhook" in title), None)
        first = sign_deliveries(key, users[:paced], f"P{index}")
        clients, _ = drive(port, first, load.rate, connections=4)
        sent = {mid: wall for c in clients for mid, wall in c.sent.items()}
        result["paced_failures"] = _merge(c.failures for c in clients)
        rows = measure.fetch_rows(url, "SELECT substr(change_id, 9), extract(epoch FROM recorded_at)::float8"
                                       " FROM kick_monitor.status_events WHERE source = 'webhook'")
        latencies = [(recorded - sent[mid]) * 1000 for mid, recorded in rows if mid in sent]
        result["latency_ms"] = measure.latency_summary(latencies)
        result["answer_ms"] = measure.latency_summary(a for c in clients for a in c.answer_ms)
        result["_latencies"] = latencies
        second = sign_deliveries(key, users[paced:], f"B{index}")
        cpu_before = measure.cpu_seconds(receiver) if receiver else None
        clients, elapsed = drive(port, second, None, connections=load.connections)
        cpu_after = measure.cpu_seconds(receiver) if receiver else None
        answered = sum(len(c.sent) for c in clients)
        result["max_rate"] = round(answered / elapsed, 1) if elapsed > 0 else None
        result["burst_failures"] = _merge(c.failures for c in clients)
        result["burst_answer_ms"] = measure.latency_summary(a for c in clients for a in c.answer_ms)
        if cpu_before is not None and cpu_after is not None and answered:
            result["receiver_cpu_us_per_delivery"] = round((cpu_after - cpu_before) / answered * 1e6, 1)
        history = measure.fetch_rows(url, "SELECT count(*), count(DISTINCT change_id) FROM kick_monitor.status_events"
                                          " WHERE source = 'webhook'")[0]
        result["history_rows"], result["distinct"] = int(history[0]), int(history[1])
        result["lost"] = len(first) + len(second) - int(history[1]) - sum(result["paced_failures"].values()) - sum(
            result["burst_failures"].values())
    result["verify_us"] = round(verify_cost_us(key, 200 if ctx.quick else 2000), 1)
    result["load_after"] = measure.loadavg()
    result["throughput"] = result["max_rate"]
    return result


def summarize_webhooks(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "latency_p50_ms": measure.spread(r["latency_ms"].get("p50") for r in runs),
        "latency_p99_ms": measure.spread(r["latency_ms"].get("p99") for r in runs),
        "answer_p99_ms": measure.spread(r["answer_ms"].get("p99") for r in runs),
        "max_rate": measure.spread(r["max_rate"] for r in runs),
        "receiver_cpu_us_per_delivery": measure.spread(r.get("receiver_cpu_us_per_delivery") for r in runs),
        "verify_us": measure.spread(r["verify_us"] for r in runs),
        "lost": measure.spread(r["lost"] for r in runs),
    }


def _healthy(port: int, service: harness.Process) -> bool:
    if not service.running():
        raise HarnessError(f"kick-monitor run exited:\n{service.log_tail()}")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _merge(counts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for part in counts:
        for key, value in part.items():
            merged[key] = merged.get(key, 0) + value
    return merged
