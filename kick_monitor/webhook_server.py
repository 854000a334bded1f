"""The webhook receiver's HTTP server: waitress, with a deadline per request against slow clients.

Why waitress (a maintained WSGI server, Pylons project, pure Python, no dependencies):
- its I/O loop reads every request *completely* (headers and body, buffered) before a
  worker thread sees it, so a slow or stalled client holds one connection slot, never a
  thread: the threads stay free for deliveries that wait for the writer's acknowledgement;
- the limits we need are its settings: `max_request_body_size` (64 KiB → it answers 413
  itself), `max_request_header_size`, `connection_limit` (stops accepting beyond it),
  `channel_timeout` (idle keep-alive connections closed), HTTP/1.1 keep-alive;
- a blocking WSGI handler fits our hand-off: a thread waits on an Event until the writer
  acknowledges, no asyncio loop to marry with the role's select() loop.
Measured against the alternatives: aiohttp and uvicorn/h11 have no read deadline for
headers either and would put an asyncio loop beside the role's own; hand-written HTTP is
what the issue rules out.

What waitress lacks is a *total* deadline for reading one request: its `channel_timeout`
counts idle time, so a slow-loris client trickling a byte every few seconds would hold its
slot forever. `_DeadlineServer` adds it: a request whose headers and body have not all
arrived `read_timeout` seconds after its first byte gets its connection closed (checked
every `CHECK_EVERY` seconds by the server's own maintenance pass).

The I/O loop runs on one thread of the receiver (`serve()`), the handlers on `threads`
more; `close()` stops both.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

log = logging.getLogger(__name__)

CHECK_EVERY = 0.5  # seconds between deadline checks (waitress's cleanup_interval)
MAX_HEADER_BYTES = 16 << 10

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _DeadlineChannel(HTTPChannel):
    """A connection that remembers when the request it is reading began."""

    request_started: float | None = None

    def received(self, data: bytes) -> bool:
        if data and self.request is None:
            self.request_started = time.monotonic()
        result: bool = super().received(data)
        if self.request is None:  # every request in `data` was complete
            self.request_started = None
        elif self.request_started is None:
            self.request_started = time.monotonic()
        return result


class _DeadlineServer(TcpWSGIServer):
    """Waitress's TCP server plus the per-request read deadline (module docstring)."""

    channel_class = _DeadlineChannel
    read_timeout = 10.0

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        cutoff = time.monotonic() - self.read_timeout
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff and not channel.will_close:
                log.debug("closing a connection whose request took over %.0fs to arrive", self.read_timeout)
                channel.will_close = True
                self.on_slow_client()

    slow_client_hook: Callable[[], None] | None = None  # the receiver counts them

    def on_slow_client(self) -> None:
        if self.slow_client_hook is not None:
            self.slow_client_hook()


def bind_shared(host: str, port: int) -> socket.socket:
    """The listening socket, with SO_REUSEPORT: per-shard process trees of one host (one unit per
    shard, the same configuration) each run a receiver on the same port and the kernel spreads the
    connections among them (any receiver may take any delivery: the message id dedupes). Only
    processes of the same user can share it. OSError (port taken by someone else) fails the boot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """Binds at construction (errors surface at boot); `serve()` in a thread; `close()` to stop."""

    def __init__(
        self, app: WsgiApp, host: str, port: int, *, threads: int, max_connections: int,
        read_timeout: float, idle_timeout: float, max_body: int, on_slow_client: Callable[[], None] | None = None,
    ) -> None:
        sock = bind_shared(host, port)
        adj = Adjustments(
            sockets=[sock], threads=threads, connection_limit=max_connections,
            channel_timeout=max(1, int(idle_timeout)), cleanup_interval=CHECK_EVERY,
            max_request_body_size=max_body + 1,  # waitress refuses a body of exactly its limit
            max_request_header_size=MAX_HEADER_BYTES,
            asyncore_use_poll=True,  # no FD_SETSIZE limit on descriptors
            ident="kick-monitor", expose_tracebacks=False, clear_untrusted_proxy_headers=True,
        )
        self._map: dict[int, Any] = {}
        self.server = _DeadlineServer(
            app, map=self._map, _sock=sock, adj=adj, bind_socket=False,
            sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()),
        )
        self.server.read_timeout = read_timeout
        if on_slow_client is not None:
            self.server.slow_client_hook = on_slow_client
        self.port: int = int(self.server.effective_port)
        self._stop = threading.Event()
        self._refuse = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="webhook-http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._refuse.is_set() and self.server.accepting:
                self.server.accepting = False  # in this thread: the loop owns the map
                with contextlib.suppress(OSError):
                    wasyncore.dispatcher.close(self.server)  # the listener only; the wake-up trigger stays
            try:
                wasyncore.loop(timeout=0.2, map=self._map, use_poll=True, count=1)
            except Exception:  # a bug in one connection's handling must not stop the server
                log.exception("webhook HTTP loop error")
                time.sleep(0.1)

    def stop_accepting(self) -> None:
        """Warm stop: no new connections (requests already read still get their answer)."""
        self._refuse.set()
        self.server.pull_trigger()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the I/O loop and the handler threads (waiting up to `timeout` for busy ones)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for channel in list(self._map.values()):
            with contextlib.suppress(Exception):
                channel.close()
        self.server.task_dispatcher.shutdown(timeout=timeout)
