"""The receiver's WSGI application: one delivery → verify → parse → map → durable → answer.

Answers, and why (Kick re-sends what is not answered 2xx, and unsubscribes an app that
keeps failing an event for a day):
| case | answer | outcome label |
|---|---|---|
| signature missing or wrong | 401, nothing recorded | `bad_signature` |
| timestamp older than `max_age` or ahead by more than the skew (replay) | 401 | `stale` |
| body over 64 KiB | 413 (waitress, before us) | — |
| event type we do not use, or a version other than 1 | 200, logged once per type | `unknown_type` |
| message id acknowledged before (re-delivery) | 200 at once | `duplicate` |
| signed but not the JSON its type says | 200, ignored, logged (a re-sent broken body stays broken) | `invalid` |
| broadcaster user id not among our streamers | 200, logged once per user id | `unknown_broadcaster` |
| writer acknowledged (committed or in its spool) | 200 | `accepted` |
| writer did not acknowledge within `ack_timeout`, too many waiting, no streamer list | 503 | `unavailable` |
A 200 is never given for a change that is not durable: the receiver's own memory is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from .broadcaster_directory import BroadcasterDirectory, DirectoryUnavailable
from .messages import StatusChange
from .webhook_events import KNOWN_EVENTS, Invalid, parse_delivery, to_change
from .webhook_signature import Rejected, Verifier

log = logging.getLogger("kick_monitor.webhook")

MAX_REMEMBERED = 10_000  # unknown types / user ids logged once each, up to this many
RETRY_AFTER = "5"
SUBSCRIBED_VERSION = "1"  # the event version the subscriptions ask for

Submit = Callable[[StatusChange, float], "bool | None"]


class WebhookApp:
    """WSGI callable; thread-safe (waitress calls it from several threads)."""

    def __init__(
        self, verifier: Verifier, directory: BroadcasterDirectory, submit: Submit, *, path: str,
        ack_timeout: float, telemetry: Any, is_duplicate: Callable[[str], bool] = lambda change_id: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verifier = verifier
        self.directory = directory
        self.submit = submit
        self.path = path
        self.ack_timeout = ack_timeout
        self.telemetry = telemetry
        self.clock = clock
        self.is_duplicate = is_duplicate  # a change id the writer acknowledged before (Intake.is_recent)
        self._told: set[tuple[str, object]] = set()  # (kind, value) already logged

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path == "/healthz":
            return _answer(start_response, "200 OK", b"ok\n")
        if path != self.path:
            return _answer(start_response, "404 Not Found", b"not found\n")
        if method != "POST":
            return _answer(start_response, "405 Method Not Allowed", b"POST only\n", [("Allow", "POST")])
        status, text = self.deliver(environ)
        extra = [("Retry-After", RETRY_AFTER)] if status.startswith("503") else []
        return _answer(start_response, status, text.encode() + b"\n", extra)

    def deliver(self, environ: dict[str, Any]) -> tuple[str, str]:
        """Handle one POSTed delivery; returns (HTTP status line, short text)."""
        received_at, received_mono = self.clock(), time.monotonic()
        body = _read_body(environ)
        event = environ.get("HTTP_KICK_EVENT_TYPE", "")
        label = event if event in KNOWN_EVENTS else "other"
        started = time.perf_counter()
        try:
            verified = self.verifier.verify(
                environ.get("HTTP_KICK_EVENT_MESSAGE_ID"), environ.get("HTTP_KICK_EVENT_MESSAGE_TIMESTAMP"),
                body, environ.get("HTTP_KICK_EVENT_SIGNATURE"), now=received_at,
            )
        except Rejected as exc:
            self.telemetry.WEBHOOK_VERIFY_SECONDS.observe(time.perf_counter() - started)
            log.warning("webhook delivery refused: %s", exc, extra={"outcome": exc.reason})
            return self.count(label, exc.reason, "401 Unauthorized", "unauthorized")
        self.telemetry.WEBHOOK_VERIFY_SECONDS.observe(time.perf_counter() - started)
        if event not in KNOWN_EVENTS:
            self.tell_once("type", event[:100], "webhook event type %r is not used; answered 200 and ignored")
            return self.count(label, "unknown_type", "200 OK", "ignored")
        version = environ.get("HTTP_KICK_EVENT_VERSION", SUBSCRIBED_VERSION)
        if version != SUBSCRIBED_VERSION:  # another shape than the one we parse: never misread it
            self.tell_once("version", f"{event} v{version[:20]}", "webhook %s is not the version we subscribe to;"
                           " answered 200 and ignored")
            return self.count(label, "unknown_type", "200 OK", "ignored")
        change_id = f"webhook:{verified.message_id}"
        if self.is_duplicate(change_id):
            return self.count(label, "duplicate", "200 OK", "duplicate")
        try:
            delivery = parse_delivery(event, body)
        except Invalid as exc:
            log.warning("signed webhook delivery ignored: %s", exc, extra={"message_id": verified.message_id[:64]})
            return self.count(label, "invalid", "200 OK", "ignored")
        try:
            streamer = self.directory.lookup(delivery.user_id)
        except DirectoryUnavailable as exc:
            log.warning("webhook delivery not taken: %s", exc)
            return self.count(label, "unavailable", "503 Service Unavailable", "unavailable")
        if streamer is None:
            self.tell_once("user", delivery.user_id, "webhook for broadcaster user id %s, not one of our streamers;"
                           " answered 200 and ignored")
            return self.count(label, "unknown_broadcaster", "200 OK", "ignored")
        change = to_change(delivery, verified.message_id, streamer[0], streamer[1], received_at, received_mono)
        taken = self.submit(change, self.ack_timeout)
        if not taken:
            return self.count(label, "unavailable", "503 Service Unavailable", "unavailable")
        self.telemetry.WEBHOOK_DELAY_SECONDS.labels(event=label).observe(max(0.0, self.clock() - verified.sent_at))
        self.telemetry.WEBHOOK_LAST_DELIVERY.labels(event=label).set(self.clock())
        return self.count(label, "accepted", "200 OK", "ok")

    def count(self, event: str, outcome: str, status: str, text: str) -> tuple[str, str]:
        self.telemetry.WEBHOOK_DELIVERIES.labels(event=event, outcome=outcome).inc()
        return status, text

    def tell_once(self, kind: str, value: object, message: str) -> None:
        key = (kind, value)
        if key in self._told or len(self._told) >= MAX_REMEMBERED:
            return
        self._told.add(key)
        log.warning(message, value)


def _read_body(environ: dict[str, Any]) -> bytes:
    """The raw body as waitress buffered it (its max_request_body_size already answered 413 above that)."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    data: bytes = stream.read(length) if length > 0 else stream.read()
    return data


def _answer(
    start_response: Callable[..., Any], status: str, body: bytes, extra: list[tuple[str, str]] | None = None
) -> list[bytes]:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *(extra or [])]
    start_response(status, headers)
    return [body]
