"""The worker → writer hand-off: at-least-once delivery with acknowledgements.

Why not a bare `multiprocessing.Queue`: its reader and writer hold inter-process locks
while blocked in a pipe read/write, so a `SIGKILL` of the writer (or of any worker) in
that window leaves the lock taken forever and every other process deadlocks; and it has
no way to say "committed", so whatever the dead writer had read is lost.

So each worker holds its own Unix stream socket to the writer's listening socket (created
by the coordinator before forking and kept open across writer restarts, so connections
made while the writer is down wait in the backlog). Messages are length-prefixed pickles
of the typed messages in `kick_monitor.messages`:

- worker → writer: `ChangeBatch(sender, seq, changes)`; the worker keeps every batch in
  `unacked` until acknowledged;
- writer → worker: `Ack(seq)` once everything up to `seq` is durable — committed to
  PostgreSQL or fsync'ed to the local spool;
- when the connection breaks (writer killed, restarted), the worker reconnects and sends
  every unacknowledged batch again, oldest first. A batch the dead writer had committed
  but not yet acknowledged arrives twice: its `change_id`s make the history insert a
  no-op and "newer wins" makes the state update a no-op. Nothing is lost, nothing doubled.

Both ends are non-blocking: a stalled writer can never block a worker's socket loop.
"""

from __future__ import annotations

import errno
import itertools
import logging
import pickle
import socket
import time
from collections import deque
from collections.abc import Iterable, Sequence

from .framing import FramedSocket, ProtocolError, bind_listener
from .messages import Ack, ChangeBatch, StatusChange

__all__ = ["ChangeReceiver", "ChangeSender", "bind_listener"]

log = logging.getLogger(__name__)

class ChangeSender:
    """Worker side: sends batches, keeps them until acknowledged, re-sends after a reconnect."""

    def __init__(self, address: str, sender: str, *, max_unacked: int = 500_000) -> None:
        self.address = address
        self.sender = sender
        self.max_unacked = max_unacked
        self.unacked: deque[ChangeBatch] = deque()
        self.unacked_changes = 0
        self.dropped = 0
        self.reconnects = 0
        self._seq = 0
        self._channel: FramedSocket | None = None
        self._retry_at = 0.0

    @property
    def connected(self) -> bool:
        return self._channel is not None

    def fileno(self) -> int | None:
        return self._channel.fileno() if self._channel else None

    @property
    def wants_write(self) -> bool:
        return self._channel is not None and self._channel.wants_write

    def next_timeout(self, now: float) -> float:
        """Seconds until `service()` must run without input: only a pending reconnect needs it."""
        if self._channel is not None:
            return float("inf")
        return max(0.0, self._retry_at - now)

    def send(self, changes: Sequence[StatusChange]) -> None:
        """Queue changes for the writer; they stay in `unacked` until the writer says durable."""
        if not changes:
            return
        self._seq += 1
        batch = ChangeBatch(self.sender, self._seq, tuple(changes))
        self.unacked.append(batch)
        self.unacked_changes += len(batch.changes)
        self._shed_overflow()
        if self._channel is not None:
            self._channel.queue(batch)
            self._flush()

    def service(self, now: float, readable: bool = False, writable: bool = False) -> None:
        """Connect when due, read acks, write what is pending. Never raises."""
        if self._channel is None:
            if now >= self._retry_at:
                self._connect(now)
            return
        try:
            if readable:
                for message in self._channel.read():
                    if isinstance(message, Ack):
                        self._forget_through(message.seq)
            if writable or self._channel.wants_write:
                self._channel.flush()
        except (OSError, ConnectionError, ProtocolError, pickle.UnpicklingError) as exc:
            self._drop_connection(now, f"{type(exc).__name__}: {exc}")

    def wait_drained(self, timeout: float) -> bool:
        """Block until every batch is acknowledged or `timeout` passes (used at shutdown)."""
        import select

        deadline = time.monotonic() + timeout
        while self.unacked and time.monotonic() < deadline:
            now = time.monotonic()
            fileno = self.fileno()
            if fileno is None:
                self.service(now)
                time.sleep(min(0.05, max(0.0, self._retry_at - now)))
                continue
            wlist = [fileno] if self.wants_write else []
            readable, writable, _ = select.select([fileno], wlist, [], min(0.1, deadline - now))
            self.service(time.monotonic(), bool(readable), bool(writable))
        return not self.unacked

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _connect(self, now: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            self._retry_at = now + 0.2
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                log.warning("cannot reach the writer at %s: %s", self.address, exc)
            return
        self._channel = FramedSocket(sock)
        for batch in self.unacked:  # everything not yet durable, oldest first
            self._channel.queue(batch)
        self._flush()

    def _flush(self) -> None:
        if self._channel is None:
            return
        try:
            self._channel.flush()
        except OSError as exc:
            self._drop_connection(time.monotonic(), str(exc))

    def _drop_connection(self, now: float, reason: str) -> None:
        log.info("lost the writer connection (%s); %d changes will be sent again", reason, self.unacked_changes)
        self.close()
        self.reconnects += 1
        self._retry_at = now + 0.05

    def _forget_through(self, seq: int) -> None:
        while self.unacked and self.unacked[0].seq <= seq:
            self.unacked_changes -= len(self.unacked.popleft().changes)

    def _shed_overflow(self) -> None:
        # Bounded memory: the writer has been unreachable for very long. Reconciliation
        # repairs current state after the writer returns; the oldest history is what goes.
        while self.unacked_changes > self.max_unacked and len(self.unacked) > 1:
            dropped = self.unacked.popleft()
            self.unacked_changes -= len(dropped.changes)
            self.dropped += len(dropped.changes)
            log.error("writer unreachable: dropped %d oldest unacknowledged changes", len(dropped.changes))


class ChangeReceiver:
    """Writer side: accepts worker connections, reads batches, acknowledges durable ones.

    Connections are identified by a number never reused (not by file descriptor: a closed
    connection's fd can be reused at once by a new one, which must never receive an ack
    for sequence numbers it did not send).
    """

    def __init__(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self.listener = listener
        self.channels: dict[int, FramedSocket] = {}  # by fd, for select()
        self._ids: dict[int, int] = {}  # fd -> connection id
        self._by_id: dict[int, FramedSocket] = {}
        self._next_id = itertools.count(1)

    def filenos(self) -> list[int]:
        return [self.listener.fileno(), *self.channels]

    def writers(self) -> list[int]:
        return [fd for fd, ch in self.channels.items() if ch.wants_write]

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            channel = FramedSocket(sock)
            fd, conn_id = channel.fileno(), next(self._next_id)
            self.channels[fd] = channel
            self._ids[fd] = conn_id
            self._by_id[conn_id] = channel

    def read(self, readable: Iterable[int]) -> list[tuple[int, ChangeBatch]]:
        """Batches readable now, tagged with the id of the connection they came on."""
        received: list[tuple[int, ChangeBatch]] = []
        for fd in readable:
            if fd == self.listener.fileno():
                self.accept()
                continue
            channel = self.channels.get(fd)
            if channel is None:
                continue
            conn_id = self._ids[fd]
            try:
                for message in channel.read():
                    if isinstance(message, ChangeBatch):
                        received.append((conn_id, message))
                    else:
                        log.warning("ignoring unexpected message %s from a worker", type(message).__name__)
            except (OSError, ConnectionError, ProtocolError, pickle.UnpicklingError, EOFError) as exc:
                self._close(fd, str(exc))
        return received

    def acknowledge(self, acks: dict[int, int]) -> None:
        """Tell each connection (by id) the highest seq now durable; a vanished one re-sends anyway."""
        for conn_id, seq in acks.items():
            channel = self._by_id.get(conn_id)
            if channel is None:
                continue
            channel.queue(Ack(seq))
            self.flush(channel.fileno())

    def flush(self, fd: int) -> None:
        channel = self.channels.get(fd)
        if channel is None:
            return
        try:
            channel.flush()
        except OSError as exc:
            self._close(fd, str(exc))

    def close(self) -> None:
        for fd in list(self.channels):
            self._close(fd, "closing")

    def _close(self, fd: int, reason: str) -> None:
        channel = self.channels.pop(fd, None)
        conn_id = self._ids.pop(fd, None)
        if conn_id is not None:
            self._by_id.pop(conn_id, None)
        if channel is not None:
            log.debug("worker connection closed: %s", reason)
            channel.close()
