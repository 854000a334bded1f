"""The alternatives our design is measured against, each written the way a user would write it.

- `NaiveWriter`: reads a batch from the same hand-off socket and commits every change in
  a transaction of its own — the same SQL (`status_store.apply_changes` with a batch of
  one), so the only difference from `workers.writer.BatchWriter` is group commit.
- `PysherClient`: Pysher 1.0.8, the Python Pusher client a user would otherwise pick,
  used as its README shows (subscribe and bind in the `connection_established` handler,
  so every reconnect resubscribes), callbacks decoding `data` with `json.loads`. Its URL
  is set to the simulator's (protocol 7, like pusher-js and Kick): Pysher asks for
  protocol 6, which the simulator — like Kick's app — refuses.
- `RestPoller`: the loop of most public Kick notifiers: every `interval` seconds, GET
  `/public/v1/channels` with 50 slugs a request, compare `stream.is_live` with the last
  answer, honour 429 Retry-After. Detection time is when the answer arrived (it writes
  nothing, which flatters it against a monitor that also commits).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import requests

from kick_monitor.handoff import ChangeReceiver
from kick_monitor.messages import StatusChange
from kick_monitor.status_store import apply_changes, prepare

LIFECYCLE = ("App\\Events\\StreamerIsLive", "App\\Events\\StopStreamBroadcast")

log = logging.getLogger("kick_tools.bench.compare")


class NaiveWriter:
    """One commit per change; acknowledges a batch once each of its changes is committed.

    `on_commit(change, committed_wall)` is called after every commit (for latencies).
    """

    def __init__(self, database_url: str, listener: socket.socket,
                 on_commit: Callable[[StatusChange, float], None] | None = None) -> None:
        self.database_url = database_url
        self.receiver = ChangeReceiver(listener)
        self.on_commit = on_commit
        self.committed = 0
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "stopping", True))
        conn = psycopg2.connect(self.database_url, application_name="kick-monitor bench naive writer")
        prepare(conn)
        try:
            while not self.stopping:
                try:
                    readable, writable, _ = select.select(self.receiver.filenos(), self.receiver.writers(), [], 0.2)
                except InterruptedError:
                    continue
                for fd in writable:
                    self.receiver.flush(fd)
                for fd, batch in self.receiver.read(readable):
                    for change in batch.changes:
                        apply_changes(conn, [change])  # BEGIN; the same statement; COMMIT
                        self.committed += 1
                        if self.on_commit is not None:
                            self.on_commit(change, time.time())
                    self.receiver.acknowledge({fd: batch.seq})
        finally:
            self.receiver.close()
            conn.close()
        return 0


def pusher_key(url: str) -> str:
    """The app key in a Pusher URL (…/app/KEY?…)."""
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


class PysherClient:
    """Pysher subscribed to `channels`, counting frames, lifecycle events and connection events."""

    def __init__(self, url: str, channels: Sequence[str]) -> None:
        import pysher

        parts = urlsplit(url)
        self.channels = list(channels)
        self.frames = 0
        self.detections: list[tuple[str, str, int | None, float]] = []
        self.connection_events: list[tuple[float, str]] = []
        self.pusher = pysher.Pusher(
            pusher_key(url), custom_host=parts.hostname or "127.0.0.1", port=parts.port or 80,
            secure=parts.scheme == "wss", log_level=logging.WARNING,
        )
        connection = self.pusher.connection
        connection.url = url  # protocol 7 (module docstring)
        original_message, original_open = connection._on_message, connection._on_open
        original_close, original_error = connection._on_close, connection._on_error

        def on_message(*args: Any) -> None:
            self.frames += 1
            original_message(*args)

        def on_open(*args: Any) -> None:
            self.connection_events.append((time.time(), "open"))
            original_open(*args)

        def on_close(*args: Any) -> None:
            self.connection_events.append((time.time(), "close"))
            original_close(*args)

        def on_error(*args: Any) -> None:
            self.connection_events.append((time.time(), "error"))
            original_error(*args)

        connection._on_message, connection._on_open = on_message, on_open
        connection._on_close, connection._on_error = on_close, on_error
        connection.bind("pusher:connection_established", self._subscribe_all)
        self._count_attempts()

    def _count_attempts(self) -> None:
        """Every `run_forever` is one connection attempt (this process runs nothing else)."""
        import websocket

        original = websocket.WebSocketApp.run_forever
        events = self.connection_events

        def run_forever(app: Any, *args: Any, **kwargs: Any) -> Any:
            events.append((time.time(), "attempt"))
            return original(app, *args, **kwargs)

        websocket.WebSocketApp.run_forever = run_forever  # type: ignore[method-assign,assignment]

    def _subscribe_all(self, data: Any) -> None:
        self.connection_events.append((time.time(), "established"))
        for name in self.channels:
            channel = self.pusher.subscribe(name)
            for event in LIFECYCLE:
                channel.bind(event, self._on_lifecycle, name, event)

    def _on_lifecycle(self, data: Any, channel: str, event: str) -> None:
        payload = json.loads(data) if isinstance(data, str) else data
        stream = payload.get("livestream") or {}
        status = "online" if event == LIFECYCLE[0] else "offline"
        self.detections.append((channel, status, stream.get("id"), time.time()))

    def start(self) -> None:
        self.pusher.connect()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.pusher.disconnect(timeout=5)


class RestPoller:
    """Polls live status of `slugs` every `interval` seconds, `batch` slugs a request."""

    def __init__(self, api_base_url: str, token_url: str, client_id: str, client_secret: str,
                 slugs: Sequence[str], *, interval: float = 60.0, batch: int = 50) -> None:
        self.api_base_url = api_base_url.rstrip("/")
        self.token_url = token_url
        self.client = (client_id, client_secret)
        self.slugs = list(slugs)
        self.interval = interval
        self.batch = batch
        self.http = requests.Session()
        self.token: str | None = None
        self.live: dict[str, bool] = {}
        self.detections: list[tuple[str, str, float]] = []
        self.requests: dict[str, int] = {}
        self.polls = 0
        self.stop_event = threading.Event()

    def _count(self, what: str) -> None:
        self.requests[what] = self.requests.get(what, 0) + 1

    def _renew_token(self) -> None:
        response = self.http.post(self.token_url, data={
            "grant_type": "client_credentials", "client_id": self.client[0], "client_secret": self.client[1],
        }, timeout=10)
        self._count(f"token {response.status_code}")
        response.raise_for_status()
        self.token = response.json()["access_token"]

    def _get(self, slugs: Sequence[str]) -> list[dict[str, Any]]:
        for _ in range(5):
            if self.token is None:
                self._renew_token()
            response = self.http.get(
                f"{self.api_base_url}/public/v1/channels", params=[("slug", s) for s in slugs],
                headers={"Authorization": f"Bearer {self.token}"}, timeout=10,
            )
            self._count(f"channels {response.status_code}")
            if response.status_code == 200:
                data: list[dict[str, Any]] = response.json()["data"]
                return data
            if response.status_code == 401:
                self.token = None
            elif response.status_code == 429:
                self.stop_event.wait(float(response.headers.get("Retry-After", "1")))
            else:
                self.stop_event.wait(1.0)
        return []

    def poll_once(self) -> None:
        """One round over every slug; a change from the last answer is a detection."""
        for start in range(0, len(self.slugs), self.batch):
            for item in self._get(self.slugs[start : start + self.batch]):
                now = time.time()
                slug, live = item["slug"], bool(item["stream"]["is_live"])
                before = self.live.get(slug)
                self.live[slug] = live
                if before is not None and before != live:
                    self.detections.append((slug, "online" if live else "offline", now))
        self.polls += 1

    def run(self) -> None:
        """Poll on a fixed schedule until `stop_event` is set (a late round does not shift the next)."""
        due = time.monotonic()
        while not self.stop_event.is_set():
            self.poll_once()
            due += self.interval
            self.stop_event.wait(max(0.0, due - time.monotonic()))


def self_cpu() -> float:
    """This process's CPU seconds, every thread included."""
    times = os.times()
    return times.user + times.system
