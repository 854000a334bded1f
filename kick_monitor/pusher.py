"""Pusher protocol 7 client for a single-threaded, select()-driven worker.

No threads and no callbacks: the worker's own loop owns the socket and calls `service()`
when it is readable or when `next_timeout()` runs out. Everything the protocol needs
(connection_established, activity pings and the pong deadline, pusher:ping answers,
per-channel subscription errors, close/error codes, reconnects with back-off and a full
resubscribe) happens inside `service()`, which returns the app events it read.

Example::

    session = PusherSession(url, shard=0, app_events=LIFECYCLE_EVENTS)
    session.subscribe(tracker.channel_names())
    while True:
        now = time.monotonic()
        fd = session.fileno()
        wait = 0.0 if session.has_buffered_data() else min(session.next_timeout(now), 1.0)
        readable = bool(select.select([fd] if fd is not None else [], [], [], wait)[0])
        for ev in session.service(time.monotonic(), readable):
            ...

Reads are non-blocking (the socket has timeout 0 between calls); writes switch to a
bounded blocking write so a frame is never half-sent. websocket-client internals used
(stable since long before 1.8): `WebSocket._recv`, overridden to refuse absurd frame
lengths before buffering them (with `frame_buffer.length` and `cont_frame.cont_data`) and to
read ahead, so a burst of frames costs one recv() (`has_buffered_data` covers what it holds);
`WebSocket.sock` for select(), timeouts and the batched subscribe write.
"""

from __future__ import annotations

import logging
import math
import ssl
import struct
import time
from collections import deque
from collections.abc import Collection, Container, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import websocket
from websocket import ABNF, WebSocketException

from kick_monitor.backoff import CloseAction, ReconnectPolicy, classify_close
from kick_monitor.events import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_PREFIXES,
    AppEvent,
    EventStats,
    parse_frame,
)

__all__ = [
    "AppEvent",
    "CloseAction",
    "PusherFatalError",
    "PusherSession",
    "ReconnectPolicy",
    "SessionStats",
    "classify_close",
]

LOG = logging.getLogger("kick_monitor.pusher")

PING = b'{"event":"pusher:ping","data":{}}'
PONG = b'{"event":"pusher:pong","data":{}}'
MAX_FRAMES_PER_SERVICE = 4096  # then yield to the worker loop; select() wakes us again
READ_AHEAD = 65536  # bytes asked of the socket at once (_BoundedWebSocket): a burst of frames in one call
HARD_LIMIT_FACTOR = 16  # frames up to this x max_frame_bytes are read, counted, dropped
STATUS_NORMAL = 1000
STATUS_TOO_BIG = 1009
STATUS_NO_CODE = 1005


class PusherFatalError(Exception):
    """A 4000-4099 error (wrong app key, app disabled, over quota): reconnecting won't help."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"pusher error {code}: {message}")
        self.code = code
        self.message = message


@dataclass(slots=True)
class SessionStats:
    """Connection counters for metrics; `reconnects` is keyed by a fixed set of reasons."""

    connect_attempts: int = 0
    connects: int = 0
    connect_failures: int = 0
    reconnects: dict[str, int] = field(default_factory=dict)
    subscription_errors: int = 0
    frames: int = 0
    app_events: int = 0
    pings_sent: int = 0
    pongs_sent: int = 0
    server_errors: int = 0  # 4300+ pusher:error codes: logged, no reconnect rule
    last_close_code: int | None = None


class _Closed(Exception):
    """Internal: the connection ended (or never started); how to go on is in `action`."""

    def __init__(
        self,
        action: CloseAction,
        reason: str,
        code: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(f"{reason} ({code}): {detail}")
        self.action = action
        self.reason = reason
        self.code = code
        self.detail = detail


class _FrameTooLarge(WebSocketException):
    """Internal: a frame's declared length is beyond what we are willing to buffer."""


class _BoundedWebSocket(websocket.WebSocket):
    """websocket-client's WebSocket that refuses a frame before buffering its payload, and reads
    ahead: websocket-client asks the socket for each frame's header, length and payload separately
    (three recv() calls a frame, measured with strace in S2); this reads whatever the kernel holds,
    up to READ_AHEAD bytes, in one call and serves those requests from it. Bytes held here are
    invisible to select(): `buffered` says how many, and the session treats them as readable.
    `drained`: the last read from the socket got less than it asked for, so the kernel held nothing
    more then; the session waits for select() rather than ask again (one recv() answering EAGAIN and
    its exception through websocket-client cost ~6 µs on every wake-up, measured)."""

    hard_limit: int = 16 << 20  # set per session from max_frame_bytes

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._ahead = b""  # read from the socket, not yet handed to the frame parser (from _ahead_at on)
        self._ahead_at = 0
        self.drained = False

    @property
    def buffered(self) -> int:
        return len(self._ahead) - self._ahead_at

    def _recv(self, bufsize: int) -> bytes:
        length = self.frame_buffer.length
        pending = self.cont_frame.cont_data
        if (length is not None and length > self.hard_limit) or (
            pending is not None and len(pending[1]) > self.hard_limit
        ):
            raise _FrameTooLarge(f"frame of {length} bytes exceeds {self.hard_limit}")
        at = self._ahead_at
        if at < len(self._ahead):
            chunk = self._ahead[at : at + bufsize]
            self._ahead_at = at + len(chunk)
            return chunk
        asked = max(bufsize, READ_AHEAD)
        data: bytes = super()._recv(asked)
        self.drained = len(data) < asked
        if len(data) <= bufsize:
            self._ahead, self._ahead_at = b"", 0
            return data
        self._ahead, self._ahead_at = data, bufsize
        return data[:bufsize]


def _as_object(data: object) -> dict[str, object]:
    """Protocol `data` as a dict: it comes as an object or as a JSON string (or junk)."""
    if isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return {}
    return data if isinstance(data, dict) else {}


def _frames(event: str, channels: Iterable[str]) -> list[bytes]:
    """`pusher:subscribe`/`unsubscribe` payloads for each channel."""
    return [
        orjson.dumps({"event": event, "data": {"auth": "", "channel": name}})
        for name in channels
    ]


class PusherSession:
    """One Pusher connection that reconnects and resubscribes by itself.

    `now` arguments are `time.monotonic()` seconds. `generation` grows by one on every
    successful connection_established: the worker reconciles when it changes, since events
    published while disconnected are lost. `app_events`, if given, limits the app events
    returned to these names (the rest are counted in `event_stats.ignored` unparsed).
    Frames over `max_frame_bytes` are dropped and counted as malformed "oversize"; over
    16x that, reading them would cost unbounded memory, so the socket is closed (1009)
    and reconnected.
    """

    def __init__(
        self,
        url: str,
        *,
        activity_timeout: float = 120.0,
        pong_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        policy: ReconnectPolicy | None = None,
        shard: int = 0,
        app_events: Container[str] | None = None,
        event_stats: EventStats | None = None,
    ) -> None:
        self.url = url
        self.configured_activity_timeout = activity_timeout
        # min(configured, server's) once connected
        self.activity_timeout = activity_timeout
        self.pong_timeout = pong_timeout
        self.connect_timeout = connect_timeout
        self.max_frame_bytes = max_frame_bytes
        self.policy = policy if policy is not None else ReconnectPolicy()
        self.shard = shard
        self.app_events = app_events
        self.event_stats = event_stats if event_stats is not None else EventStats(shard)
        self.stats = SessionStats()
        self.socket_id: str | None = None
        self.generation = 0
        # channel -> the server's error text, until a later subscription succeeds
        self.failed_channels: dict[str, str] = {}
        # Every remembered channel, as an ordered set: a dict's table is ~40 % the size of a set's at
        # 10,000 names (a set grows 4x, to 32,768 slots of 16 bytes; measured 512 -> 295 KB a worker).
        self._channels: dict[str, None] = {}
        self._unacked: set[str] = set()  # subscribed on this connection, no answer yet (issue 17)
        # Pings in flight, in order: None for a liveness ping, else the barrier's number (`barrier`).
        self._pings: deque[int | None] = deque()
        self._barriers = 0
        self._barriers_passed = 0
        self._ws: _BoundedWebSocket | None = None
        self._reconnect_at: float | None = 0.0  # the first service() connects
        self._last_rx = 0.0
        self._ping_sent_at: float | None = None
        self._fatal: PusherFatalError | None = None
        self._closed = False

    # -- state the worker's loop reads -------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between connection_established and the next close."""
        return self._ws is not None

    @property
    def channels(self) -> frozenset[str]:
        """Every remembered channel (subscribed now, or on the next connection)."""
        return frozenset(self._channels)

    def awaiting(self, channels: Iterable[str] | None = None) -> bool:
        """Whether any of `channels` (None: any channel at all, O(1)) was subscribed on this
        connection and the server has not answered yet (subscription_succeeded or an error): what
        happened before that answer went to the previous listener, or to nobody."""
        if channels is None or not self._unacked:
            return bool(self._unacked)
        return any(name in self._unacked for name in channels)

    def barrier(self) -> int:
        """Send a pusher:ping after everything sent so far; `passed(n)` once its pong is read.

        The server answers in order, so by then every frame it sent before it applied our earlier
        unsubscribes has been read: a hand-over's old owner has seen all it was sent (issue 17).
        """
        if self._ws is None:
            return self._barriers_passed  # nothing in flight on a connection that is gone
        self._barriers += 1
        self._pings.append(self._barriers)
        self._send_guarded([PING])
        return self._barriers

    def _answered(self, channel: str) -> None:
        """The server answered a subscription. An emptied set keeps its table (measured: ~1 MB for a
        shard's 10,000 channel names, per worker, for good); `clear()` gives it back."""
        self._unacked.discard(channel)
        if not self._unacked:
            self._unacked.clear()

    def passed(self, barrier: int) -> bool:
        return barrier <= self._barriers_passed or self._ws is None

    def fileno(self) -> int | None:
        """The socket to select() on, or None while disconnected."""
        ws = self._ws
        return ws.sock.fileno() if ws is not None and ws.sock is not None else None

    def has_buffered_data(self) -> bool:
        """True if bytes are held that select() cannot see: read ahead by us, or decrypted by TLS."""
        ws = self._ws
        if ws is None:
            return False
        sock = ws.sock
        return ws.buffered > 0 or (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0)

    def next_timeout(self, now: float) -> float:
        """Seconds until `service()` is due even if nothing is readable (inf if never)."""
        if self._fatal is not None or self._closed:
            return math.inf
        if self._ws is None:
            if self._reconnect_at is None:
                return math.inf
            return max(0.0, self._reconnect_at - now)
        if self.has_buffered_data():
            return 0.0
        if self._ping_sent_at is None:
            return max(0.0, self._last_rx + self.activity_timeout - now)
        return max(0.0, self._ping_sent_at + self.pong_timeout - now)

    # -- commands ----------------------------------------------------------------------

    def subscribe(self, channels: Iterable[str]) -> None:
        """Remember channels; if connected, subscribe the new ones in one write.

        Acks are not awaited: thousands of channels cost one write, not round trips.
        """
        new = [name for name in dict.fromkeys(channels) if name not in self._channels]
        self._channels.update(dict.fromkeys(new))
        if new and self._ws is not None:
            self._unacked.update(new)
            self._send_guarded(_frames("pusher:subscribe", new))

    def unsubscribe(self, channels: Iterable[str]) -> None:
        """Forget channels; if connected, send the unsubscribes in one write."""
        gone = [name for name in dict.fromkeys(channels) if name in self._channels]
        for name in gone:
            del self._channels[name]
        self._unacked.difference_update(gone)
        for name in gone:
            self.failed_channels.pop(name, None)
        if gone and self._ws is not None:
            self._send_guarded(_frames("pusher:unsubscribe", gone))

    def close(self) -> None:
        """Close for good (normal closure); later `service()` calls do nothing."""
        self._closed = True
        self._reconnect_at = None
        self._close_socket(STATUS_NORMAL)

    def service(self, now: float, readable: bool) -> list[AppEvent]:
        """Connect when due, read every frame available, run the timers.

        Returns the app events read. Raises PusherFatalError (again on every later call)
        after a 4000-4099 code; never raises anything else.
        """
        if self._fatal is not None:
            raise self._fatal
        events: list[AppEvent] = []
        if self._closed:
            return events
        try:
            if self._ws is None:
                if self._reconnect_at is None or now < self._reconnect_at:
                    return events
                self._connect()
                readable = True  # acks may already be waiting
            if readable or self.has_buffered_data():
                self._read(events)
            self._check_timers(now)
        except _Closed as closed:
            self._on_closed(closed)
        except Exception as exc:  # a bug here must not kill the worker: start over
            LOG.exception("pusher session error", extra={"shard": self.shard})
            self._on_closed(
                _Closed(CloseAction.RECONNECT, "internal_error", detail=repr(exc))
            )
        return events

    # -- connection ----------------------------------------------------------------------

    def _connect(self) -> None:
        """Open, wait for connection_established, then resubscribe everything.

        Each step (TCP connect, HTTP upgrade) is bounded by connect_timeout and the wait
        for connection_established by what is left of it; DNS resolution is not bounded.
        """
        self._reconnect_at = None
        self.stats.connect_attempts += 1
        ws = _BoundedWebSocket(skip_utf8_validation=True, enable_multithread=False)
        ws.hard_limit = self.max_frame_bytes * HARD_LIMIT_FACTOR
        deadline = time.monotonic() + self.connect_timeout
        try:
            ws.connect(self.url, timeout=self.connect_timeout, suppress_origin=True)
            established = self._await_established(ws, deadline)
        except _Closed:
            ws.shutdown()
            raise
        except (WebSocketException, OSError, ValueError) as exc:
            ws.shutdown()
            raise _Closed(
                CloseAction.RECONNECT, "connect_failed", detail=repr(exc)
            ) from None
        data = _as_object(established.data)
        socket_id = data.get("socket_id")
        self.socket_id = socket_id if isinstance(socket_id, str) else None
        server_timeout = data.get("activity_timeout")
        self.activity_timeout = self.configured_activity_timeout
        if (
            isinstance(server_timeout, int | float)
            and not isinstance(server_timeout, bool)
            and server_timeout > 0
        ):
            self.activity_timeout = min(self.activity_timeout, float(server_timeout))
        assert ws.sock is not None
        ws.sock.settimeout(0)
        self._ws = ws
        self.generation += 1
        self.stats.connects += 1
        self._last_rx = established.received_mono
        self._ping_sent_at = None
        self.policy.connected(self._last_rx)
        self.failed_channels.clear()
        self._unacked = set(self._channels)
        LOG.info(
            "pusher connected (generation %d, socket %s, activity timeout %.0fs, %d channels)",
            self.generation,
            self.socket_id,
            self.activity_timeout,
            len(self._channels),
            extra={"shard": self.shard, "generation": self.generation},
        )
        self._send(_frames("pusher:subscribe", self._channels))

    def _await_established(self, ws: _BoundedWebSocket, deadline: float) -> AppEvent:
        """Read (blocking, until `deadline`) up to pusher:connection_established."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or ws.sock is None:
                raise _Closed(
                    CloseAction.RECONNECT,
                    "connect_failed",
                    detail="no connection_established",
                )
            ws.sock.settimeout(remaining)
            opcode, frame = ws.recv_data_frame(True)
            self.stats.frames += 1
            if opcode == ABNF.OPCODE_CLOSE:
                raise self._close_frame(frame.data)
            if opcode not in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY):
                continue
            ev = parse_frame(
                frame.data,
                received_at=time.time(),
                received_mono=time.monotonic(),
                stats=self.event_stats,
                max_bytes=self.max_frame_bytes,
            )
            if ev is None:
                continue
            if ev.event == "pusher:connection_established":
                return ev
            if ev.event == "pusher:error":
                self._on_pusher_error(ev)

    def _on_closed(self, closed: _Closed) -> None:
        """Tear down and schedule the next attempt by the close action (or go fatal)."""
        was_connected = self._ws is not None
        self._close_socket(
            STATUS_TOO_BIG if closed.reason == "frame_too_large" else STATUS_NORMAL
        )
        self.socket_id = None
        self._ping_sent_at = None
        self.stats.last_close_code = closed.code
        if closed.action is CloseAction.FATAL:
            self._reconnect_at = None
            self._fatal = PusherFatalError(closed.code or 0, closed.detail)
            LOG.error(
                "pusher refused us with %s: %s; not reconnecting",
                closed.code,
                closed.detail,
                extra={"shard": self.shard, "code": closed.code},
            )
            raise self._fatal
        if not was_connected:
            self.stats.connect_failures += 1
        self.stats.reconnects[closed.reason] = (
            self.stats.reconnects.get(closed.reason, 0) + 1
        )
        now = time.monotonic()
        delay = self.policy.delay(closed.action, now)
        self._reconnect_at = now + delay
        LOG.log(
            logging.INFO if was_connected else logging.WARNING,
            "pusher %s (code %s, %s): reconnecting in %.2fs (failure %d)",
            closed.reason,
            closed.code,
            closed.detail[:200],
            delay,
            self.policy.failures,
            extra={"shard": self.shard, "code": closed.code, "reason": closed.reason},
        )

    def _close_socket(self, status: int) -> None:
        """Best-effort close frame, then drop the socket at once (never waits for the peer)."""
        ws, self._ws = self._ws, None
        self._unacked.clear()
        self._pings.clear()
        self._barriers_passed = self._barriers  # what the old connection still had in flight is gone
        if ws is None:
            return
        try:
            if ws.connected:
                ws.send_close(status)
        except (WebSocketException, OSError, ValueError):
            pass
        ws.shutdown()

    def _close_frame(self, payload: bytes) -> _Closed:
        """The server's close frame as a `_Closed` with its code's action."""
        code = (
            struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else STATUS_NO_CODE
        )
        reason = payload[2:].decode("utf-8", "replace")
        return _Closed(classify_close(code), "closed_by_server", code, reason)

    # -- reading -------------------------------------------------------------------------

    def _read(self, events: list[AppEvent]) -> None:
        """Read every frame available without blocking (up to MAX_FRAMES_PER_SERVICE)."""
        ws = self._ws
        if ws is None:
            return
        for n in range(MAX_FRAMES_PER_SERVICE):
            if n and ws.drained and not ws.buffered:
                return  # the socket had nothing more at its last read; select() says when it has
            try:
                opcode, frame = ws.recv_data_frame(True)
            except (BlockingIOError, ssl.SSLWantReadError):
                return  # nothing more right now; a partial frame stays buffered
            except _FrameTooLarge as exc:
                self.event_stats.malformed_frame("oversize", detail=str(exc))
                raise _Closed(
                    CloseAction.RECONNECT, "frame_too_large", detail=str(exc)
                ) from None
            except (WebSocketException, OSError) as exc:
                raise _Closed(
                    CloseAction.RECONNECT, "connection_lost", detail=repr(exc)
                ) from None
            mono = time.monotonic()
            self._last_rx = mono  # any frame proves liveness
            self._ping_sent_at = None
            self.stats.frames += 1
            if opcode == ABNF.OPCODE_TEXT or opcode == ABNF.OPCODE_BINARY:
                self._on_message(frame.data, mono, events)
            elif opcode == ABNF.OPCODE_CLOSE:
                raise self._close_frame(frame.data)
            # websocket ping/pong: liveness only (websocket-client already answered pings)

    def _on_message(self, raw: bytes, mono: float, events: list[AppEvent]) -> None:
        ev = parse_frame(
            raw,
            received_at=time.time(),
            received_mono=mono,
            stats=self.event_stats,
            max_bytes=self.max_frame_bytes,
            wanted=self.app_events,
        )
        if ev is None:
            return
        if not ev.event.startswith(PROTOCOL_PREFIXES):
            self.stats.app_events += 1
            events.append(ev)
            return
        name = ev.event
        if name == "pusher:ping":
            self._send([PONG])
            self.stats.pongs_sent += 1
        elif name == "pusher_internal:subscription_succeeded":
            if ev.channel is not None:
                self.failed_channels.pop(ev.channel, None)
                self._answered(ev.channel)
        elif name == "pusher:subscription_error":
            self._subscription_failed(ev.channel, ev.data)
        elif name == "pusher:error":
            self._on_pusher_error(ev)
        elif name == "pusher:pong":
            if self._pings and (number := self._pings.popleft()) is not None:
                self._barriers_passed = number
        else:
            self.event_stats.ignore(name)

    def _on_pusher_error(self, ev: AppEvent) -> None:
        """code null: a per-channel/message problem, socket kept; else act on the code."""
        data = _as_object(ev.data)
        code, message = data.get("code"), str(data.get("message"))[:500]
        if code is None:
            self._subscription_failed(ev.channel, message)
            return
        if type(code) is not int:
            self.event_stats.malformed_frame(
                "bad_type", event=ev.event, detail=f"code {code!r}"
            )
            return
        if code >= 4300:
            self.stats.server_errors += 1
            LOG.warning(
                "pusher error %d: %s",
                code,
                message,
                extra={"shard": self.shard, "code": code},
            )
            return
        raise _Closed(classify_close(code), "pusher_error", code, message)

    def _subscription_failed(self, channel: str | None, detail: object) -> None:
        self.stats.subscription_errors += 1
        if channel is not None:
            self._answered(channel)
        text = str(detail)[:300]
        if channel is not None and channel in self._channels:
            self.failed_channels[channel] = text
        LOG.log(
            logging.WARNING if self.stats.subscription_errors == 1 else logging.DEBUG,
            "pusher subscription error on %s: %s",
            (channel or "?")[:164],
            text,
            extra={"shard": self.shard, "channel": channel and channel[:164]},
        )

    # -- writing and timers ------------------------------------------------------------

    def _send(self, payloads: Collection[bytes]) -> None:
        """Write text frames in one bounded blocking write, so none is ever half-sent."""
        ws = self._ws
        if ws is None or ws.sock is None or not payloads:
            return
        data = b"".join(
            ABNF.create_frame(p, ABNF.OPCODE_TEXT).format() for p in payloads
        )
        sock = ws.sock
        try:
            sock.settimeout(self.connect_timeout)
            sock.sendall(data)
            sock.settimeout(0)
        except OSError as exc:
            raise _Closed(
                CloseAction.RECONNECT, "send_failed", detail=repr(exc)
            ) from None

    def _send_guarded(self, payloads: Collection[bytes]) -> None:
        """`_send` for public methods: a failed write schedules a reconnect, never raises."""
        try:
            self._send(payloads)
        except _Closed as closed:
            self._on_closed(closed)

    def _check_timers(self, now: float) -> None:
        """Ping after `activity_timeout` of silence; give up `pong_timeout` after a ping."""
        if self._ws is None:
            return
        if self._ping_sent_at is None:
            if now - self._last_rx >= self.activity_timeout:
                self._send([PING])
                self._pings.append(None)
                self._ping_sent_at = now
                self.stats.pings_sent += 1
        elif now - self._ping_sent_at >= self.pong_timeout:
            raise _Closed(
                CloseAction.RECONNECT, "pong_timeout", detail=f"{self.pong_timeout}s"
            )
