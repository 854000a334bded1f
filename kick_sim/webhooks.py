"""Webhook delivery: Kick's Events API POSTs for every transition the simulator makes.

The loop thread only builds the body and queues a message (`enqueue`, O(log n), never
blocks: a full queue records the message as "overflow"). Sender threads sign and POST it with
Kick's headers, retry with exponential back-off on non-2xx, timeouts and refused connections
(same message id, timestamp and signature every time), and drop a subscription after
`unsubscribe_after` consecutive failed attempts (Kick's auto-unsubscribe, a day shortened to
a count). Faults (webhook_faults.py) decide, from one seeded RNG, what is delayed, dropped,
duplicated, held back, corrupted or replayed. Every attempt is recorded for tests to grade.

Senders are threads with blocking stdlib HTTP (keep-alive per thread): a slow receiver
slows only them, never the Pusher side on the loop.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from kick_sim.config import check_url
from kick_sim.event_subscriptions import EventSubscriptionStore, new_ulid
from kick_sim.events import rfc3339
from kick_sim.webhook_settings import DeliverySettings, Range, WebhookFaults
from kick_sim.webhook_signing import WebhookSigner, corrupt_signature

log = logging.getLogger(__name__)

Kind = Literal["send", "retry", "duplicate", "replay"]
# A message's fate: "pending" until one of the others.
MessageState = Literal["pending", "delivered", "dropped", "gave_up", "unsubscribed", "overflow"]
REORDER_STAGGER = 0.02  # seconds between released held messages, so they arrive newest first


@dataclass(slots=True, eq=False)
class WebhookMessage:
    """One event for one subscription; its id, timestamp and signature never change once sent."""

    seq: int  # 1.. in creation order
    message_id: str
    subscription_id: str
    event_type: str
    broadcaster_user_id: int
    body: bytes
    truth_seq: int  # the Transition it announces (0 if none)
    created_wall: float
    version: str = "1"
    timestamp: str = ""  # Kick-Event-Message-Timestamp, set at the first attempt
    signature: str = ""
    attempts: int = 0
    state: MessageState = "pending"
    delivered_wall: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "message_id": self.message_id, "subscription_id": self.subscription_id,
            "event_type": self.event_type, "version": self.version, "broadcaster_user_id": self.broadcaster_user_id,
            "body": self.body.decode(), "truth_seq": self.truth_seq, "created_wall": self.created_wall,
            "timestamp": self.timestamp, "attempts": self.attempts, "state": self.state,
            "delivered_wall": self.delivered_wall,
        }


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One POST (or a failure to make one) and how it ended."""

    message_seq: int
    message_id: str
    subscription_id: str
    event_type: str
    broadcaster_user_id: int
    truth_seq: int
    kind: Kind
    attempt: int  # 1.. for send/retry; the message's attempt count at the time for copies
    started_wall: float
    elapsed: float
    status: int | None  # HTTP status, None when no answer came
    error: str | None  # "timeout", "connection refused", ...
    signature_valid: bool  # False: this attempt carried a corrupted signature
    timestamp: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        return {
            "message_seq": self.message_seq, "message_id": self.message_id, "subscription_id": self.subscription_id,
            "event_type": self.event_type, "broadcaster_user_id": self.broadcaster_user_id,
            "truth_seq": self.truth_seq, "kind": self.kind, "attempt": self.attempt,
            "started_wall": self.started_wall, "elapsed": self.elapsed, "status": self.status, "error": self.error,
            "ok": self.ok, "signature_valid": self.signature_valid, "timestamp": self.timestamp,
        }


@dataclass(order=True, slots=True)
class _Job:
    due: float  # monotonic
    order: int
    message: WebhookMessage = field(compare=False)
    kind: Kind = field(compare=False)


class WebhookDeliverer:
    """Queues, schedules, sends and records webhook messages; every public method is thread-safe."""

    def __init__(
        self,
        store: EventSubscriptionStore,
        signer: WebhookSigner,
        rng: random.Random,
        settings: DeliverySettings | None = None,
        faults: WebhookFaults | None = None,
        url: str | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.settings = settings or DeliverySettings()
        self.faults = faults or WebhookFaults()
        self._rng = rng
        self._cond = threading.Condition()
        self._heap: list[_Job] = []
        self._held: list[tuple[float, WebhookMessage]] = []  # (monotonic hold start, message)
        self._order = itertools.count()
        self._pending = 0  # messages neither finished nor given up
        self._states: Counter[str] = Counter()  # message state -> messages in it
        self._attempts_ok = 0
        self._in_flight = 0  # jobs taken by senders and not yet done
        self._failures: dict[str, int] = {}  # subscription id -> consecutive failed attempts
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._target: tuple[str, int, str] | None = None
        self.url: str | None = None
        self.messages: list[WebhookMessage] = []
        self.attempts: list[DeliveryAttempt] = []
        self.unsubscribed: list[str] = []  # subscription ids Kick dropped after failures
        if url is not None:
            self.set_url(url)

    # --- control ---

    def set_url(self, url: str | None) -> None:
        """Where deliveries go (None: nowhere, and no messages are made)."""
        target = check_url(url) if url is not None else None
        with self._cond:
            self.url, self._target = url, target
            if target is not None and not self._threads and not self._stopping:
                self._start_threads()
            self._cond.notify_all()

    def set_faults(self, faults: WebhookFaults) -> None:
        with self._cond:
            self.faults = faults
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop the senders (pending messages stay pending); joins the threads. Idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=self.settings.timeout + 5)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued, held or in flight; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._heap or self._held or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is None else min(remaining, 0.5))
        return True

    # --- producing ---

    def enqueue(self, user_id: int, event_type: str, body: bytes, truth_seq: int) -> WebhookMessage | None:
        """A message for `event_type` of `user_id` if the app subscribed to it and a URL is set."""
        if self._target is None:
            return None
        subscription = self.store.find(user_id, event_type)
        if subscription is None:
            return None
        with self._cond:
            message = WebhookMessage(
                len(self.messages) + 1, new_ulid(self._rng), subscription.id, event_type, user_id, body, truth_seq,
                time.time(),
            )
            self.messages.append(message)
            faults, now = self.faults, time.monotonic()
            if self._pending >= self.settings.queue_size:
                self._states["overflow"] += 1
                message.state = "overflow"
                return message
            if self._rng.random() < faults.drop:
                self._states["dropped"] += 1
                message.state = "dropped"
                return message
            self._pending += 1
            self._states["pending"] += 1
            if self._rng.random() < faults.reorder:
                self._held.append((now, message))
                if len(self._held) >= faults.reorder_depth:
                    self._release_held(now)
            else:
                delayed = faults.delays and self._rng.random() < faults.delay_fraction
                delay = self._uniform(faults.delay) if delayed else 0.0
                self._push(now + delay, message, "send")
            if self._rng.random() < faults.duplicate:
                self._push(now + self._uniform(faults.duplicate_after), message, "duplicate")
            self._cond.notify_all()  # not notify(): it could wake a wait_idle() caller instead of a sender
            return message

    def replay(self, message_ids: list[str] | None = None, count: int = 1) -> list[str]:
        """Re-send delivered messages now, unchanged (old timestamp): the named ones, else `count` random."""
        with self._cond:
            by_id = {m.message_id: m for m in self.messages if m.state == "delivered"}
            if message_ids is not None:
                chosen = [by_id[i] for i in message_ids if i in by_id]
            else:
                chosen = self._rng.sample(sorted(by_id.values(), key=lambda m: m.seq), min(count, len(by_id)))
            now = time.monotonic()
            for message in chosen:
                self._push(now, message, "replay")
            self._cond.notify_all()
            return [message.message_id for message in chosen]

    # --- reading ---

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "url": self.url, "messages": len(self.messages), "attempts": len(self.attempts),
                "states": {state: count for state, count in self._states.items() if count},
                "attempts_ok": self._attempts_ok, "pending": self._pending,
                "queued": len(self._heap), "held": len(self._held), "unsubscribed": len(self.unsubscribed),
                "faults": self.faults.to_json(),
            }

    def snapshot_messages(self, since: int = 0) -> list[WebhookMessage]:
        with self._cond:
            return self.messages[since:]

    def snapshot_attempts(self, since: int = 0) -> list[DeliveryAttempt]:
        with self._cond:
            return self.attempts[since:]

    # --- internals (callers hold self._cond where noted) ---

    def _uniform(self, bounds: Range) -> float:
        return self._rng.uniform(*bounds) if bounds[1] > 0 else 0.0

    def _push(self, due: float, message: WebhookMessage, kind: Kind) -> None:
        """Schedule a job (caller holds the lock)."""
        heapq.heappush(self._heap, _Job(due, next(self._order), message, kind))

    def _release_held(self, now: float) -> None:
        """Send every held message, newest first (caller holds the lock)."""
        held, self._held = self._held, []
        for index, (_, message) in enumerate(reversed(held)):
            self._push(now + index * REORDER_STAGGER, message, "send")

    def _start_threads(self) -> None:
        for index in range(self.settings.workers):
            thread = threading.Thread(target=self._run_sender, name=f"kick-sim-webhooks-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _next_job(self) -> _Job | None:
        """Wait for a due job; None when stopping."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._held and now - self._held[0][0] >= self.faults.reorder_max_hold:
                    self._release_held(now)
                waits = []
                if self._heap and self._target is not None:
                    if self._heap[0].due <= now:
                        self._in_flight += 1
                        return heapq.heappop(self._heap)
                    waits.append(self._heap[0].due - now)
                if self._held:
                    waits.append(self._held[0][0] + self.faults.reorder_max_hold - now)
                self._cond.wait(min(waits) if waits else None)
            return None

    def _run_sender(self) -> None:
        client = _Client(self.settings.timeout)
        try:
            while (job := self._next_job()) is not None:
                try:
                    target = self._target
                    if target is None:  # the URL was unset meanwhile: try again once it is back
                        with self._cond:
                            self._push(time.monotonic() + 1.0, job.message, job.kind)
                        continue
                    self._attempt(job, client, target)
                except Exception:  # a bug here must not silently stop deliveries
                    log.exception("webhook sender failed on message %s", job.message.message_id)
                finally:
                    with self._cond:
                        self._in_flight -= 1
                        self._cond.notify_all()
        finally:
            client.close()

    def _attempt(self, job: _Job, client: _Client, target: tuple[str, int, str]) -> None:
        """Send one job and record it."""
        message = job.message
        counted = job.kind in ("send", "retry")
        with self._cond:
            if counted and not self.store.is_active(message.subscription_id):
                self._finish(message, "unsubscribed")
                return
            if counted:
                message.attempts += 1
            if not message.timestamp:
                message.timestamp = rfc3339(message.created_wall if self.settings.stamp == "event" else time.time())
            corrupt = self._rng.random() < self.faults.corrupt
            attempt_number = message.attempts
        if not message.signature:
            message.signature = self.signer.sign(message.message_id, message.timestamp, message.body)
        signature = corrupt_signature(message.signature) if corrupt else message.signature
        headers = {
            "Content-Type": "application/json",
            "Kick-Event-Message-Id": message.message_id,
            "Kick-Event-Subscription-Id": message.subscription_id,
            "Kick-Event-Signature": signature,
            "Kick-Event-Message-Timestamp": message.timestamp,
            "Kick-Event-Type": message.event_type,
            "Kick-Event-Version": message.version,
        }
        started_wall, started = time.time(), time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            status = client.post(target, message.body, headers)
        except TimeoutError:
            error = "timeout"
        except (OSError, http.client.HTTPException) as exc:
            error = type(exc).__name__
        attempt = DeliveryAttempt(
            message.seq, message.message_id, message.subscription_id, message.event_type,
            message.broadcaster_user_id, message.truth_seq, job.kind, attempt_number, started_wall,
            time.monotonic() - started, status, error, not corrupt, message.timestamp,
        )
        with self._cond:
            self.attempts.append(attempt)
            self._attempts_ok += attempt.ok
            if counted:
                self._settle(job, attempt)

    def _settle(self, job: _Job, attempt: DeliveryAttempt) -> None:
        """After a send/retry: done, retry later, give up, or Kick drops the subscription (lock held)."""
        message = job.message
        if attempt.ok:
            self._failures.pop(message.subscription_id, None)
            message.delivered_wall = time.time()
            self._finish(message, "delivered")
            if self._rng.random() < self.faults.replay:
                self._push(time.monotonic() + self._uniform(self.faults.replay_after), message, "replay")
            return
        failures = self._failures.get(message.subscription_id, 0) + 1
        self._failures[message.subscription_id] = failures
        if failures >= self.settings.unsubscribe_after:
            if self.store.drop([message.subscription_id]):
                self.unsubscribed.append(message.subscription_id)
            self._failures.pop(message.subscription_id, None)
            self._finish(message, "unsubscribed")
        elif message.attempts >= self.settings.max_attempts:
            self._finish(message, "gave_up")
        else:
            self._push(time.monotonic() + self.settings.backoff(message.attempts), message, "retry")

    def _finish(self, message: WebhookMessage, state: MessageState) -> None:
        if message.state != "pending":
            return
        self._pending -= 1
        self._states["pending"] -= 1
        self._states[state] += 1
        message.state = state


class _Client:
    """One sender thread's keep-alive connection to the receiver.

    A kept-alive connection the receiver closed while idle fails on its next use through no
    fault of the receiver; that one case is retried at once on a fresh connection instead of
    counting as a failed delivery.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None
        self._peer: tuple[str, int] | None = None
        self._used = False

    def post(self, target: tuple[str, int, str], body: bytes, headers: dict[str, str]) -> int:
        """POST and read the answer; the status, or an OSError/HTTPException/TimeoutError."""
        host, port, path = target
        if self._connection is None or self._peer != (host, port):
            self._open(host, port)
        try:
            return self._exchange(path, body, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not self._used:
                self.close()
                raise
            self._open(host, port)
            try:
                return self._exchange(path, body, headers)
            except BaseException:
                self.close()
                raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection, self._peer, self._used = None, None, False

    def _open(self, host: str, port: int) -> None:
        self.close()
        self._connection = http.client.HTTPConnection(host, port, timeout=self._timeout)
        self._peer = (host, port)

    def _exchange(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        assert self._connection is not None
        self._connection.request("POST", path, body=body, headers=headers)
        response = self._connection.getresponse()
        response.read()
        if response.will_close:
            self.close()
        else:
            self._used = True
        return int(response.status)
