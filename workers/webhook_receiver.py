"""The webhook receiver role: Kick's signed Events API deliveries → the writer, durable before 200.

Forked by the coordinator when `webhook_port` is set (one per process tree; several hosts
behind a load balancer are fine: the message id dedupes). Three parts, each its own module:

- HTTP (`kick_monitor.webhook_server`, waitress): bounded body, connections and read time;
  handler threads run `kick_monitor.webhook_app.WebhookApp`: verify (signature, age) →
  parse → broadcaster user id → streamer row (`kick_monitor.broadcaster_directory`) → hand
  over and wait (`kick_monitor.webhook_intake.Intake`);
- this role's loop: the only user of the writer connection — the same acknowledged
  hand-off as a shard worker (`ChangeSender`, no overflow spool: the receiver's own disk is
  not durable for Kick's purposes, Kick's re-sending is). What the HTTP threads queued goes
  out as one batch per loop turn; each acknowledgement releases the threads waiting for it;
- a helper thread (`DirectoryFollower`) reloading the user id → streamer mapping when the
  streamer list changes (LISTEN) and every `REFRESH_EVERY` seconds (an unknown user id also
  reloads it at once, rate-limited).

Killed at any moment, nothing is lost: a delivery is answered 200 only after the writer
acknowledged it; one without an answer is re-sent by Kick, and its `change_id`
(`webhook:{message id}`) makes the second copy a no-op in the writer.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from kick_monitor.broadcaster_directory import BroadcasterDirectory, DirectoryFollower
from kick_monitor.database import connect
from kick_monitor.exitcodes import EX_OK, EX_USAGE
from kick_monitor.handoff import ChangeSender
from kick_monitor.role import HEARTBEAT_EVERY, Role, RoleContext, RoleFatal
from kick_monitor.webhook_app import WebhookApp
from kick_monitor.webhook_intake import Intake
from kick_monitor.webhook_server import HttpServer
from kick_monitor.webhook_signature import PublicKeyError, Verifier, choose_public_key

log = logging.getLogger("kick_monitor.webhook")

SWITCH_INTERVAL = 0.0005  # s; see boot()
MAX_BODY = 64 << 10  # Kick's status and metadata bodies are < 2 KiB
IDLE_TIMEOUT = 75.0  # seconds an idle keep-alive connection stays open
REFRESH_EVERY = 60.0  # seconds between reloads of the streamer mapping
MIN_REFRESH_GAP = 2.0  # an unknown user id reloads it at most this often
MAX_UNACKED = 50_000  # changes in flight to the writer; beyond, deliveries get 503 (the sender never drops)
REPORT_EVERY = 1.0


class WebhookReceiver(Role):
    """Runs in the forked receiver process; see the module docstring."""

    kind = "webhook"

    def __init__(self, ctx: RoleContext) -> None:
        super().__init__(ctx)
        settings = self.settings
        self.intake = Intake(max_waiting=max(64, settings.webhook_threads * 4), max_in_flight=MAX_UNACKED)
        self.sender = ChangeSender(
            ctx.writer_address, sender="webhook", max_unacked=MAX_UNACKED, overflow=None,
            on_acked=self.intake.acknowledged,
        )
        self.directory = BroadcasterDirectory(  # ctx.database_url: a rotated password reaches the next connection
            lambda: connect(self.ctx.database_url, application_name="kick-monitor webhook"),
            min_gap=MIN_REFRESH_GAP,
        )
        self.app: WebhookApp | None = None
        self.http: HttpServer | None = None
        self.follower: DirectoryFollower | None = None
        self._next_report = 0.0

    # -- the role ------------------------------------------------------------------------
    def boot(self) -> None:
        settings = self.settings
        try:
            key, origin = choose_public_key(  # bounded well inside the heartbeat timeout
                settings.webhook_public_key, settings.api_base_url, min(settings.api_timeout, 5.0)
            )
        except PublicKeyError as exc:
            raise RoleFatal(EX_USAGE, str(exc)) from None
        self.directory.refresh()  # a database down now is retried on the first unknown user id
        self.app = WebhookApp(
            Verifier(key, settings.webhook_max_age), self.directory, self.intake.submit,
            path=settings.webhook_path, ack_timeout=settings.webhook_ack_timeout, telemetry=self.telemetry,
            is_duplicate=self.intake.is_recent,
        )
        self.http = HttpServer(
            self.app, settings.webhook_host, settings.webhook_port, threads=settings.webhook_threads,
            max_connections=settings.webhook_max_connections, read_timeout=settings.webhook_read_timeout,
            idle_timeout=IDLE_TIMEOUT, max_body=MAX_BODY, on_slow_client=self._count_slow_client,
        )
        # A delivery crosses four threads (waitress I/O → handler → this loop → handler → I/O); with
        # CPython's default 5 ms GIL switch interval each hand-over can wait that long for the GIL.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.http.start()
        self.follower = DirectoryFollower(
            self.directory, lambda: connect(self.ctx.database_url, application_name="kick-monitor webhook listen"),
            refresh_every=REFRESH_EVERY,
        )
        self.follower.start()
        now = time.time()
        for event in ("livestream.status.updated", "livestream.metadata.updated"):
            self.telemetry.WEBHOOK_LAST_DELIVERY.labels(event=event).set(now)
        log.info(
            "webhook receiver on http://%s:%d%s (key: %s; %d broadcasters known)",
            settings.webhook_host, self.http.port, settings.webhook_path, origin, len(self.directory),
        )

    def step(self) -> None:
        """One turn: wait for queued deliveries or the writer, send, read acknowledgements."""
        now = time.monotonic()
        sender_fd = self.sender.fileno()
        rlist: list[Any] = [self.intake.wake_read]
        if sender_fd is not None:  # always, unlike a shard worker: an ack is what answers Kick's delivery
            rlist.append(sender_fd)
        wlist = [sender_fd] if sender_fd is not None and self.sender.wants_write else []
        timeout = min(self.sender.next_timeout(now), HEARTBEAT_EVERY)
        readable, writable = self.wait(rlist, wlist, timeout)
        self.pass_on(readable, writable)

    def pass_on(self, readable: set[Any], writable: set[Any]) -> None:
        """Send what the HTTP threads queued; serve the writer connection (acks release them)."""
        now = time.monotonic()
        if self.intake.wake_read in readable:
            changes = self.intake.take()
            if changes:
                self.sender.send(changes)
        sender_fd = self.sender.fileno()
        self.sender.service(now, sender_fd in readable, sender_fd in writable)
        if now >= self._next_report:
            self._next_report = now + REPORT_EVERY
            self.telemetry.WEBHOOK_WAITING.set(self.intake.waiting)

    def finish(self) -> int:
        """Warm stop: no new connections; answer what is in flight (bounded), then close."""
        if self.http is not None:
            self.http.stop_accepting()
        deadline = time.monotonic() + self.settings.webhook_ack_timeout + 0.5
        while self.intake.waiting and time.monotonic() < deadline:
            self.beat()
            now = time.monotonic()
            fd = self.sender.fileno()
            rlist: list[Any] = [self.intake.wake_read, *([fd] if fd is not None else [])]
            wlist = [fd] if fd is not None and self.sender.wants_write else []
            readable, writable = self.wait(rlist, wlist, min(0.1, self.sender.next_timeout(now)))
            self.pass_on(readable, writable)
        if self.follower is not None:
            self.follower.stop()
        if self.http is not None:
            self.http.close()
        self.sender.close()
        self.directory.close()
        self.intake.close()
        log.info("webhook receiver stopped")
        return EX_OK

    def reconfigure(self, changed: set[str]) -> None:
        if self.app is None:
            return
        if "webhook_max_age" in changed:
            self.app.verifier.max_age = self.settings.webhook_max_age
        if "webhook_ack_timeout" in changed:
            self.app.ack_timeout = self.settings.webhook_ack_timeout

    # -- helpers -----------------------------------------------------------------------------
    def _count_slow_client(self) -> None:
        self.telemetry.WEBHOOK_DELIVERIES.labels(event="other", outcome="slow_client").inc()
