"""A fake Discord / Slack incoming-webhook endpoint: records what it receives, misbehaves on demand.

Any client that posts announcements can be tested against it (it knows nothing of
kick-monitor). Each webhook is a path `/api/webhooks/{hook}/{token}` (Discord's shape; Slack's
`/services/...` paths work the same); the token is random, so a test can grep for it as a
secret. Per hook it can answer a status for the next N requests (429 with `Retry-After` —
header and Discord's JSON `retry_after` —, 5xx, 404), answer slowly, or enforce a bucket
(at most `limit` requests per `window` seconds, 429 beyond, like Discord's per-webhook buckets)
and count requests that came back before the `Retry-After` it gave (`early`).

    with ChatEndpoint() as chat:
        url = chat.url("alerts")
        chat.misbehave("alerts", status=429, retry_after=2.0, count=3)
        ...
        [m.body for m in chat.delivered("alerts")]

Standalone: `python -m kick_sim.chat_endpoint --port 9900` (loopback only).
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True, slots=True)
class Received:
    """One request: which hook, its JSON body, when it arrived (wall clock), what it was answered."""

    hook: str
    body: Any
    at: float
    status: int


@dataclass
class Behaviour:
    """How one hook answers: `status` for `count` more requests (None: forever), after `delay` s."""

    status: int | None = None
    count: int | None = None
    retry_after: float = 1.0
    delay: float = 0.0
    limit: int = 0  # bucket: at most `limit` requests per `window` seconds (0: no bucket)
    window: float = 1.0
    hits: list[float] = field(default_factory=list)
    blocked_until: float = 0.0  # the Retry-After it last gave, as a monotonic time


class ChatEndpoint:
    """The fake endpoint; see the module docstring. Binds 127.0.0.1 unless told otherwise."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._behaviour: dict[str, Behaviour] = {}
        self._tokens: dict[str, str] = {}
        self.early = 0  # requests that ignored a Retry-After
        self.server = _QuietServer((host, port), _handler(self))
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> ChatEndpoint:
        self._thread = threading.Thread(target=self.server.serve_forever, name="chat-endpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ChatEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, hook: str) -> str:
        """The webhook URL of `hook` (made on first use, with a random secret token)."""
        with self._lock:
            token = self._tokens.setdefault(hook, secrets.token_urlsafe(32))
        return f"{self.base_url}/api/webhooks/{hook}/{token}"

    def token(self, hook: str) -> str:
        return self._tokens[hook]

    # -- behaviour ----------------------------------------------------------------------------
    def misbehave(
        self, hook: str, *, status: int | None = None, count: int | None = None, retry_after: float = 1.0,
        delay: float = 0.0, limit: int = 0, window: float = 1.0,
    ) -> None:
        """Answer `status` (429, 500, 404, ...) to the next `count` requests; `delay` every answer;
        `limit` per `window`: a bucket that answers 429 beyond it. `misbehave(hook)` resets."""
        with self._lock:
            self._behaviour[hook] = Behaviour(status, count, retry_after, delay, limit, window)

    # -- what it received --------------------------------------------------------------------
    def requests(self, hook: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if hook is None or r.hook == hook]

    def delivered(self, hook: str | None = None) -> list[Received]:
        """Requests answered 2xx: what a real Discord would have posted."""
        return [r for r in self.requests(hook) if 200 <= r.status < 300]

    # -- answering ----------------------------------------------------------------------------
    def answer(self, path: str, raw: bytes) -> tuple[int, dict[str, str], bytes, float]:
        """(status, headers, body, delay) for one POST to `path`."""
        parts = path.strip("/").split("/")
        hook = parts[2] if len(parts) >= 4 and parts[:2] == ["api", "webhooks"] else ""
        if not hook or self._tokens.get(hook) != parts[3]:
            return 404, {}, b'{"message": "Unknown Webhook", "code": 10015}', 0.0
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            return 400, {}, b'{"message": "Cannot send an empty message"}', 0.0
        now = time.monotonic()
        with self._lock:
            b = self._behaviour.setdefault(hook, Behaviour())
            status, headers, payload = 204, {}, b""
            if b.blocked_until > now:
                self.early += 1
            if b.status is not None and (b.count is None or b.count > 0):
                status = b.status
                if b.count is not None:
                    b.count -= 1
            elif b.limit:
                b.hits = [t for t in b.hits if t > now - b.window]
                if len(b.hits) >= b.limit:
                    status, b.retry_after = 429, max(0.001, b.hits[0] + b.window - now)
                else:
                    b.hits.append(now)
            if status == 429:
                headers = {"Retry-After": f"{b.retry_after:.3f}"}
                payload = json.dumps({"message": "You are being rate limited.", "retry_after": b.retry_after,
                                      "global": False}).encode()
                b.blocked_until = now + b.retry_after * 0.98  # a little slack for clock granularity
            elif status == 404:
                payload = b'{"message": "Unknown Webhook", "code": 10015}'
            elif status >= 500:
                payload = b'{"message": "Internal Server Error"}'
            self._received.append(Received(hook, body, time.time(), status))
            return status, headers, payload, b.delay


class _QuietServer(ThreadingHTTPServer):
    """A client killed mid-request (the tests SIGKILL senders) is not an error worth a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _handler(endpoint: ChatEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, headers, payload, delay = endpoint.answer(self.path, raw)
            if delay:
                time.sleep(delay)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read the record instead

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake Discord/Slack webhook endpoint (loopback).")
    parser.add_argument("--port", type=int, default=9900)
    parser.add_argument("--hook", default="kick", help="print this hook's URL")
    args = parser.parse_args()
    with ChatEndpoint(port=args.port) as chat:
        print(chat.url(args.hook), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
