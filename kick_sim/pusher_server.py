"""Pusher Channels protocol 7 over a real websockets server, with Kick's quirks and faults.

Outgoing frames are written without awaiting per recipient (`broadcast`), so one publish
costs one encode plus one buffered write per subscriber, and thousands of subscribe
requests on one socket are answered as fast as they are read.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from kick_sim.config import SimConfig
from kick_sim.pusher_protocol import (
    PING,
    PONG,
    check_handshake,
    error_frame,
    established_frame,
    payload,
    subscription_ack,
    subscription_error,
    subscription_refusal,
)
from kick_sim.subscriptions import SubscriptionIndex

# A client this far behind is dropped, as hosted Pusher drops slow consumers, instead of
# letting the simulator buffer without bound (broadcast has no backpressure).
MAX_WRITE_BUFFER = 64 * 1024 * 1024


@dataclass(eq=False, slots=True)
class Client:
    """Per-socket Pusher state."""

    ws: ServerConnection
    socket_id: str
    last_rx: float
    channels: set[str] = field(default_factory=set)
    pinged: bool = False


class PusherServer:
    """The websocket endpoint `/app/{key}`; every method runs on the event loop thread."""

    def __init__(self, config: SimConfig, rng: random.Random) -> None:
        self.config = config
        self.index: SubscriptionIndex[ServerConnection] = SubscriptionIndex()
        self.frames_sent: Counter[str] = Counter()
        self.connections_total = 0
        self.connections_refused = 0
        self.slow_consumers_dropped = 0
        self._rng = rng
        self._clients: dict[ServerConnection, Client] = {}
        self._silent: set[ServerConnection] = set()
        self._refusing = False
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._unflushed: set[ServerConnection] = set()
        self._socket_ids = rng.randrange(10**6, 10**7)

    async def start(self) -> None:
        """Listen; returns once the port is bound."""
        self._server = await serve(
            self._serve,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,  # liveness is Pusher-level, as on the real service
            close_timeout=2,
            max_queue=1024,
            server_header=None,
        )
        self._sweeper = asyncio.create_task(self._sweep_idle())

    async def stop(self) -> None:
        """Close every connection (1001) and stop listening."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except TimeoutError:
                for ws in list(self._clients):
                    ws.transport.abort()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def clients(self) -> Collection[Client]:
        return self._clients.values()

    def publish(self, channel: str, frame: bytes, kind: str) -> int:
        """Send pre-encoded `frame` to the subscribers of `channel`; returns how many got it."""
        subscribers = self.index.subscribers(channel)
        if not subscribers:
            return 0
        targets = subscribers - self._silent if self._silent else subscribers
        sent = sum(1 for ws in targets if ws.state is State.OPEN)
        broadcast(targets, frame, text=True)
        self.frames_sent[kind] += sent
        return sent

    def push_each(self, build: Callable[[Client], list[bytes]], kind: str) -> int:
        """Send each non-silent client the frames `build` makes for it; returns frames sent."""
        sent = 0
        for client in list(self._clients.values()):
            for frame in build(client):
                sent += self._send(client.ws, frame, kind)
        return sent

    def drop(self, count: int | None) -> int:
        """Abort TCP connections without a close frame: the 'cable pulled' case."""
        targets = self._pick(count, include_silent=True)
        for ws in targets:
            ws.transport.abort()
            self._forget(ws)
        return len(targets)

    async def send_error(self, code: int, message: str, close: bool, count: int | None) -> int:
        """`pusher:error` {code, message}, then (if `close`) a close frame with the same code."""
        if not 4000 <= code <= 4999:
            raise ValueError("code must be a Pusher error code, 4000..4999")
        targets = self._pick(count, include_silent=False)
        frame = error_frame(code, message)
        for ws in targets:
            self._send(ws, frame, "error")
            if close:
                self._close(ws, code, message)
        await asyncio.sleep(0)  # let the close tasks write their close frames
        return len(targets)

    def set_silent(self, silent: bool) -> int:
        """Mute (or unmute) every current socket: no pong, no frame at all, like a half-open link.

        New connections are not muted, so a client that notices and reconnects recovers.
        """
        if silent:
            self._silent = set(self._clients)
        else:
            self._silent = set()
        return len(self._silent)

    def refuse(self, refuse: bool) -> None:
        """While set, websocket handshakes are answered with HTTP 503."""
        self._refusing = refuse

    def _pick(self, count: int | None, include_silent: bool) -> list[ServerConnection]:
        if count is not None and count < 0:
            raise ValueError("count must be >= 0 (or None for every connection)")
        pool = [ws for ws in self._clients if include_silent or ws not in self._silent]
        if count is None or count >= len(pool):
            return pool
        return self._rng.sample(pool, count)

    def _send(self, ws: ServerConnection, frame: bytes, kind: str) -> int:
        """Write one frame now."""
        if ws in self._silent or ws.state is not State.OPEN:
            return 0
        broadcast((ws,), frame, text=True)
        self.frames_sent[kind] += 1
        return 1

    def _reply(self, ws: ServerConnection, frame: bytes) -> None:
        """Queue a protocol reply; all replies of one loop iteration leave in one write.

        Thousands of subscribe acks then cost one syscall, not one each. Order is kept:
        anything written later on this socket flushes the queued replies first.
        """
        if ws in self._silent or ws.state is not State.OPEN:
            return
        ws.protocol.send_text(frame)
        self.frames_sent["protocol"] += 1
        if not self._unflushed:
            asyncio.get_running_loop().call_soon(self._flush_replies)
        self._unflushed.add(ws)

    def _flush_replies(self) -> None:
        for ws in self._unflushed:
            if ws.state is State.OPEN:  # else the connection's own close path flushes
                ws.transport.write(b"".join(ws.protocol.data_to_send()))
        self._unflushed.clear()

    def _close(self, ws: ServerConnection, code: int, reason: str) -> None:
        if ws.state is not State.OPEN:
            return
        task = asyncio.create_task(ws.close(code, _close_reason(reason)))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _forget(self, ws: ServerConnection) -> None:
        client = self._clients.pop(ws, None)
        self._silent.discard(ws)
        if client is not None:
            for channel in client.channels:
                self.index.remove(channel, ws, client.socket_id)
            client.channels.clear()

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if self._refusing:
            self.connections_refused += 1
            return ws.respond(503, "Service Unavailable\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        refusal = check_handshake(path, self.config.app_key, self.config.protocols)
        if refusal is not None:
            self._send(ws, error_frame(*refusal), "error")
            await ws.close(refusal[0], _close_reason(refusal[1]))
            return
        self.connections_total += 1
        self._socket_ids += self._rng.randrange(1, 1000)
        client = Client(ws, f"{self._rng.randrange(10**5, 10**6)}.{self._socket_ids}", time.monotonic())
        self._clients[ws] = client
        self._send(ws, established_frame(client.socket_id, self.config.activity_timeout), "protocol")
        try:
            async for message in ws:
                client.last_rx = time.monotonic()
                client.pinged = False
                self._handle(client, message)
        except ConnectionClosed:
            pass
        finally:
            self._forget(ws)

    def _handle(self, client: Client, message: str | bytes) -> None:
        try:
            frame = orjson.loads(message)
            event = frame["event"]
            if not isinstance(event, str):
                raise TypeError("event is not a string")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._send(client.ws, error_frame(None, "Invalid message format"), "error")
            return
        if event == "pusher:ping":
            self._reply(client.ws, PONG)
        elif event == "pusher:subscribe":
            self._subscribe(client, payload(frame))
        elif event == "pusher:unsubscribe":
            channel = payload(frame).get("channel")
            if isinstance(channel, str) and channel in client.channels:
                client.channels.discard(channel)
                self.index.remove(channel, client.ws, client.socket_id)
        elif event != "pusher:pong":
            reason = "only supported on private and presence channels" if event.startswith("client-") else "unknown"
            self._send(client.ws, error_frame(None, f"Event {event[:64]} rejected: {reason}"), "error")

    def _subscribe(self, client: Client, data: dict[str, Any]) -> None:
        channel, auth = data.get("channel"), data.get("auth")
        refusal = subscription_refusal(channel, auth)
        if refusal is not None:
            name = channel if isinstance(channel, str) else None
            self._send(client.ws, subscription_error(name, *refusal, self.config.subscription_error_style), "error")
            return
        assert isinstance(channel, str)
        if self.index.add(channel, client.ws, client.socket_id):
            client.channels.add(channel)
        self._reply(client.ws, subscription_ack(channel))

    async def _sweep_idle(self) -> None:
        """Ping clients silent for activity_timeout; close with 4201 those silent past idle_timeout.

        Also drops clients whose unsent backlog passed MAX_WRITE_BUFFER.
        """
        activity = float(self.config.activity_timeout)
        idle = self.config.effective_idle_timeout
        interval = min(max(min(activity, idle) / 4, 0.05), 1.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for client in list(self._clients.values()):
                silence = now - client.last_rx
                if client.ws.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                    self.slow_consumers_dropped += 1
                    client.ws.transport.abort()
                    self._forget(client.ws)
                elif silence >= idle:
                    self._close(client.ws, 4201, "Pong reply not received")
                elif silence >= activity and self.config.server_pings and not client.pinged:
                    client.pinged = True
                    self._send(client.ws, PING, "protocol")


def _close_reason(reason: str) -> str:
    """A close frame carries at most 123 bytes of reason."""
    return reason.encode()[:120].decode(errors="ignore")
