"""Planner ↔ shard worker: which streamers each worker watches.

The planner owns the streamer list (it reads PostgreSQL); workers own nothing but their
Pusher connection. A worker connects to the planner's listening socket (created by the
supervisor before any fork and kept across planner restarts, like the writer's), says
`Hello(shard)`, and gets `Assign(all its streamers)`, then `Subscribe`/`Unsubscribe` as the
list changes. After any reconnection (planner restarted, worker restarted) the worker says
Hello again and the full `Assign` replaces what it had: no state needs to survive a restart.

The same channel carries API reconciliation (the planner holds the tree's one Kick API client,
`kick_monitor.reconcile_service`): the worker sends `ReconcileRequest`, the planner answers with
a `LiveAnswer` per API request and a `ReconcileDone`. A pass cut by a reconnection is asked
again on the new connection (the worker keeps it until its `ReconcileDone`).

Both ends are non-blocking (`kick_monitor.framing`): a SIGSTOPped worker with 10,000
streamers queued to it never blocks the planner; a connection whose outbox passes
`MAX_OUTBOX_BYTES` is dropped (the worker gets everything again when it comes back).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import pickle
import socket
from collections.abc import Iterable

from .framing import FramedSocket, Link, ProtocolError, dial
from .messages import (
    Assign,
    Hello,
    LiveAnswer,
    ReconcileDone,
    ReconcileRequest,
    Subscribe,
    Unsubscribe,
    WorkerState,
)

log = logging.getLogger(__name__)

MAX_OUTBOX_BYTES = 256 << 20
RECONNECT_DELAY = 0.1
PlannerMessage = Assign | Subscribe | Unsubscribe | LiveAnswer | ReconcileDone
_PLANNER_MESSAGES = (Assign, Subscribe, Unsubscribe, LiveAnswer, ReconcileDone)


class AssignmentClient(Link):
    """Worker side: connect, say hello, hand over every message the planner sends."""

    def __init__(self, address: str, shard: int) -> None:
        super().__init__(address)
        self.shard = shard
        self.state: WorkerState | None = None  # the last one told; told again after a reconnection
        self.request: ReconcileRequest | None = None  # the pass asked and not done; asked again after one

    def ask(self, request: ReconcileRequest) -> None:
        """Ask the planner for a reconciliation pass (sent with the next flush, again after a reconnection
        until `finished` is called for it)."""
        self.request = request
        if self._channel is not None:
            self._channel.queue(request)

    def finished(self, pass_id: int) -> None:
        """The planner said the pass ended: it is not asked again."""
        if self.request is not None and self.request.pass_id == pass_id:
            self.request = None

    def tell_state(self, state: WorkerState) -> None:
        """Queue the worker's state for the planner if it changed (sent with the next flush)."""
        if state == self.state:
            return
        self.state = state
        if self._channel is not None:
            self._channel.queue(state)

    def service(self, now: float, readable: bool = False) -> list[PlannerMessage]:
        """Connect when due, flush, read; never raises (a broken link is retried)."""
        if self._channel is None:
            if now >= self._retry_at:
                self._connect(now)
            return []
        received: list[PlannerMessage] = []
        try:
            self._channel.flush()
            if readable:
                for message in self._channel.read():
                    if isinstance(message, _PLANNER_MESSAGES):
                        received.append(message)
        except (OSError, ConnectionError, ProtocolError, pickle.UnpicklingError, EOFError) as exc:
            log.info("lost the planner connection (%s); reconnecting", exc)
            self.close()
            self._retry_at = now + RECONNECT_DELAY
        return received

    def _connect(self, now: float) -> None:
        self._channel = dial(self.address, "planner")
        if self._channel is None:
            self._retry_at = now + RECONNECT_DELAY
            return
        self._channel.queue(Hello(self.shard))
        if self.state is not None:
            self._channel.queue(self.state)
        if self.request is not None:
            self._channel.queue(self.request)
        with contextlib.suppress(OSError):
            self._channel.flush()


class AssignmentServer:
    """Planner side: accepts workers, learns their shard, sends to every worker of a shard."""

    def __init__(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self.listener = listener
        self._channels: dict[int, FramedSocket] = {}  # by connection id (never reused)
        self._shard_of: dict[int, int] = {}
        self._by_fd: dict[int, int] = {}
        self._ids = itertools.count(1)
        self.states: dict[int, WorkerState] = {}  # by shard: what its worker last told (issue 17)
        self.requests: list[tuple[int, ReconcileRequest]] = []  # (connection id, request), taken by the planner
        self.closed: list[int] = []  # connection ids closed since the planner last took them

    def filenos(self) -> list[int]:
        return [self.listener.fileno(), *self._by_fd]

    def writers(self) -> list[int]:
        return [fd for fd, conn_id in self._by_fd.items() if self._channels[conn_id].wants_write]

    def connected_shards(self) -> set[int]:
        return set(self._shard_of.values())

    def serve(self, readable: Iterable[int], writable: Iterable[int]) -> list[tuple[int, int]]:
        """Accept, flush, read; returns `(connection id, shard)` for every Hello received."""
        for fd in writable:
            if fd in self._by_fd:
                self._flush(self._by_fd[fd])
        hellos: list[tuple[int, int]] = []
        for fd in readable:
            if fd == self.listener.fileno():
                self._accept()
                continue
            conn_id = self._by_fd.get(fd)
            if conn_id is None:
                continue
            try:
                for message in self._channels[conn_id].read():
                    if isinstance(message, Hello):
                        self._shard_of[conn_id] = message.shard
                        hellos.append((conn_id, message.shard))
                    elif isinstance(message, WorkerState):
                        self.states[message.shard] = message
                    elif isinstance(message, ReconcileRequest):
                        self.requests.append((conn_id, message))
            except (OSError, ConnectionError, ProtocolError, pickle.UnpicklingError, EOFError) as exc:
                self._close(conn_id, str(exc))
        return hellos

    def take_requests(self) -> list[tuple[int, ReconcileRequest]]:
        """Reconciliation passes asked since the last call, with the connection that asked."""
        requests, self.requests = self.requests, []
        return requests

    def take_closed(self) -> list[int]:
        """Connections closed since the last call (their passes are abandoned)."""
        closed, self.closed = self.closed, []
        return closed

    def shard_of(self, conn_id: int) -> int | None:
        return self._shard_of.get(conn_id)

    def send(self, conn_id: int, message: PlannerMessage) -> None:
        channel = self._channels.get(conn_id)
        if channel is None:
            return
        channel.queue(message)
        self._flush(conn_id)

    def send_to_shard(self, shard: int, message: PlannerMessage) -> None:
        for conn_id, conn_shard in list(self._shard_of.items()):
            if conn_shard == shard:
                self.send(conn_id, message)

    def close(self) -> None:
        for conn_id in list(self._channels):
            self._close(conn_id, "closing")

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            channel = FramedSocket(sock)
            conn_id = next(self._ids)
            self._channels[conn_id] = channel
            self._by_fd[channel.fileno()] = conn_id

    def _flush(self, conn_id: int) -> None:
        channel = self._channels[conn_id]
        try:
            channel.flush()
        except OSError as exc:
            self._close(conn_id, str(exc))
            return
        if channel.outbox_bytes > MAX_OUTBOX_BYTES:
            self._close(conn_id, f"worker not reading ({channel.outbox_bytes} bytes queued)")

    def _close(self, conn_id: int, reason: str) -> None:
        channel = self._channels.pop(conn_id, None)
        self._shard_of.pop(conn_id, None)
        if channel is not None:
            self.closed.append(conn_id)
            self._by_fd.pop(channel.fileno(), None)
            log.info("worker connection closed: %s", reason)
            channel.close()
