"""The worker → writer hand-off: at-least-once delivery with acknowledgements.

Why not a bare `multiprocessing.Queue`: its reader and writer hold inter-process locks
while blocked in a pipe read/write, so a `SIGKILL` of the writer (or of any worker) in
that window leaves the lock taken forever and every other process deadlocks; and it has
no way to say "committed", so whatever the dead writer had read is lost.

So each worker holds its own Unix stream socket to the writer's listening socket (created
by the coordinator before forking and kept open across writer restarts, so connections
made while the writer is down wait in the backlog). Messages are length-prefixed pickles
of the typed messages in `kick_monitor.messages`:

- worker → writer: `ChangeBatch(sender, seq, changes)`; the worker keeps every batch
  (in memory, or spilled to disk) until acknowledged;
- writer → worker: `Ack(seq)` once everything up to `seq` is durable — committed to
  PostgreSQL or fsync'ed to the local spool;
- when the connection breaks (writer killed, restarted), the worker reconnects and sends
  every unacknowledged batch again, oldest first. A batch the dead writer had committed
  but not yet acknowledged arrives twice: its `change_id`s make the history insert a
  no-op and "newer wins" makes the state update a no-op. Nothing is lost, nothing doubled.

Both ends are non-blocking: a stalled writer can never block a worker's socket loop.
Memory is bounded (`handoff_max_unacked`): past it the oldest unacknowledged changes
spill to the worker's own spool and are re-sent from disk first; only what that spool
cannot take is dropped, and counted (`kick_monitor_handoff_dropped_changes_total`).
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .framing import FramedSocket, Link, ProtocolError, bind_listener, dial
from .messages import Ack, ChangeBatch, StatusChange
from .spool import Spool

__all__ = ["ChangeReceiver", "ChangeSender", "bind_listener", "overflow_spool"]

log = logging.getLogger(__name__)

SPILL_BATCH = 5000  # changes per ChangeBatch when a spilled segment is sent again
SPILL_WINDOW = 2  # spilled segments in flight at once: bounds what re-sending reads into memory
# Seconds an acknowledgement may wait to be read while the worker has other reasons to wake: an ack only
# frees memory, so it is read when the loop is awake anyway (a Pusher frame), and wakes the loop only once
# this overdue (docs/performance.md, round 17: 19 % of a worker's wake-ups in S2 were for an ack alone).
ACK_READ_AFTER = 0.1


@dataclass(eq=False, slots=True)
class _Unacked:
    """Changes the writer has not acknowledged: an in-memory batch, or a spilled segment on disk."""

    count: int
    changes: tuple[StatusChange, ...] = ()
    path: Path | None = None  # set when on disk
    seq: int = 0  # the highest seq it was queued under on the current connection
    queued_at: float = 0.0  # when it was queued on the current connection (sender's clock)


class ChangeSender(Link):
    """Worker side: sends batches, keeps them until acknowledged, re-sends after a reconnect.

    At most `max_unacked` changes wait in memory. Beyond that the oldest go to the optional
    `overflow` spool (one segment per spill, oldest first) and are sent again from there,
    before anything in memory, once the writer takes them; a segment is deleted only when
    the writer has acknowledged it. Only what the spool cannot take is dropped, and counted.

    Sequence numbers are given when a batch is queued on a connection, so they always rise
    in sending order, whatever came from disk and whatever from memory.
    """

    def __init__(
        self,
        address: str,
        sender: str,
        *,
        max_unacked: int = 500_000,
        overflow: Spool | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_acked: Callable[[tuple[StatusChange, ...]], None] | None = None,
    ) -> None:
        super().__init__(address)
        self.on_acked = on_acked  # told of each in-memory batch the writer made durable (webhook receiver)
        self.sender = sender
        self.max_unacked = max_unacked
        self.overflow = overflow
        self.clock = clock
        self.memory: deque[_Unacked] = deque()
        self.disk: deque[_Unacked] = deque()  # always older than everything in memory
        self.memory_changes = 0
        self.disk_changes = 0
        self.spilled = 0  # running totals, for metrics
        self.dropped = 0
        self.reconnects = 0
        self._seq = 0
        self._queued_disk = 0  # how many of `disk` (a prefix) are queued on the current connection
        self._queued_memory = 0  # likewise for `memory`; only once every disk item is queued
        if overflow is not None:
            for path in overflow.segments:  # left by an earlier run of this worker: older than anything new
                self.disk.append(_Unacked(_count_lines(path), path=path))
                self.disk_changes += self.disk[-1].count

    @property
    def unacked_changes(self) -> int:
        """Changes the writer has not acknowledged yet, in memory and on disk."""
        return self.memory_changes + self.disk_changes

    @property
    def unacked(self) -> int:
        """Batches and spilled segments the writer has not acknowledged yet."""
        return len(self.memory) + len(self.disk)

    def send(self, changes: Sequence[StatusChange]) -> None:
        """Queue changes for the writer; they are kept (memory or spool) until the writer says durable."""
        if not changes:
            return
        batch = tuple(changes)
        self.memory.append(_Unacked(len(batch), batch))
        self.memory_changes += len(batch)
        self._spill_overflow()
        self._queue_pending()
        self._flush()

    def wants_read(self, now: float) -> bool:
        """Should the loop wake when the writer's socket turns readable? Not for an acknowledgement that is
        not yet overdue (`ACK_READ_AFTER`): `service()` reads acks whenever it runs. With nothing awaiting
        an ack, only an EOF can come: watch for it (no cost)."""
        if self._channel is None:
            return False
        oldest = self._oldest_queued_at()
        return oldest is None or now - oldest >= ACK_READ_AFTER

    def next_timeout(self, now: float) -> float:
        """Seconds until `service()` must run without input: a reconnect, or the moment an acknowledgement
        turns overdue (from then on the socket is watched: an ack that is slow to come, a writer stalled
        in a long commit, must not make the loop spin)."""
        if self._channel is None:
            return max(0.0, self._retry_at - now)
        oldest = self._oldest_queued_at()
        if oldest is None or now - oldest >= ACK_READ_AFTER:
            return float("inf")
        return oldest + ACK_READ_AFTER - now

    def _oldest_queued_at(self) -> float | None:
        """When the oldest batch on the connection that awaits its acknowledgement was queued, or None."""
        if self._queued_disk:
            return self.disk[0].queued_at
        if self._queued_memory:
            return self.memory[0].queued_at
        return None

    def service(self, now: float, readable: bool = False, writable: bool = False) -> None:
        """Connect when due, read acks (whether or not select() said readable: see `wants_read`), write
        what is pending. Never raises."""
        if self._channel is None:
            if now >= self._retry_at:
                self._connect(now)
            return
        try:
            if readable or self._queued_disk or self._queued_memory:
                for message in self._channel.read():
                    if isinstance(message, Ack):
                        self._forget_through(message.seq)
                self._queue_pending()
            if writable or self._channel.wants_write:
                self._channel.flush()
        except (OSError, ConnectionError, ProtocolError) as exc:
            self._drop_connection(now, f"{type(exc).__name__}: {exc}")

    def wait_drained(self, timeout: float) -> bool:
        """Block until every batch is acknowledged or `timeout` passes (used at shutdown)."""
        import select

        deadline = self.clock() + timeout
        while self.unacked and self.clock() < deadline:
            now = self.clock()
            fileno = self.fileno()
            if fileno is None:
                self.service(now)
                time.sleep(min(0.05, max(0.0, self._retry_at - now)))
                continue
            wlist = [fileno] if self.wants_write else []
            readable, writable, _ = select.select([fileno], wlist, [], min(0.1, max(0.0, deadline - now)))
            self.service(self.clock(), bool(readable), bool(writable))
        return not self.unacked

    def close(self) -> None:
        super().close()
        self._queued_disk = self._queued_memory = 0

    def _connect(self, now: float) -> None:
        self._channel = dial(self.address, "writer")
        if self._channel is None:
            self._retry_at = now + 0.2
            return
        self._queued_disk = self._queued_memory = 0
        self._queue_pending()  # everything not yet durable, oldest first
        self._flush()

    def _queue_pending(self) -> None:
        """Queue, in order, what is not on the connection yet: spilled segments first, then memory."""
        channel = self._channel
        if channel is None:
            return
        while self._queued_disk < len(self.disk) and self._queued_disk < SPILL_WINDOW:
            item = self.disk[self._queued_disk]
            changes = self._read_spilled(item)
            if not changes:  # nothing readable left in it: nothing to send
                self._forget_spilled(item)
                continue
            for start in range(0, len(changes), SPILL_BATCH):
                self._seq += 1
                channel.queue(ChangeBatch(self.sender, self._seq, tuple(changes[start : start + SPILL_BATCH])))
            item.seq = self._seq
            item.queued_at = self.clock()
            self._queued_disk += 1
        if self._queued_disk < len(self.disk):
            return  # memory waits until every older spilled change is on the wire
        while self._queued_memory < len(self.memory):
            item = self.memory[self._queued_memory]
            self._seq += 1
            channel.queue(ChangeBatch(self.sender, self._seq, item.changes))
            item.seq = self._seq
            item.queued_at = self.clock()
            self._queued_memory += 1

    def _read_spilled(self, item: _Unacked) -> list[StatusChange]:
        assert self.overflow is not None and item.path is not None
        try:
            changes = self.overflow.read(item.path)
        except OSError as exc:  # gone or unreadable: say so and count it, rather than stall everything behind it
            log.error("cannot read %d spilled changes from %s (%s): dropped", item.count, item.path, exc)
            self.dropped += item.count
            changes = []
        self.disk_changes += len(changes) - item.count
        item.count = len(changes)
        return changes

    def _flush(self) -> None:
        if self._channel is None:
            return
        try:
            self._channel.flush()
        except OSError as exc:
            self._drop_connection(self.clock(), str(exc))

    def _drop_connection(self, now: float, reason: str) -> None:
        log.info("lost the writer connection (%s); %d changes will be sent again", reason, self.unacked_changes)
        self.close()
        self.reconnects += 1
        self._retry_at = now + 0.05

    def _forget_through(self, seq: int) -> None:
        """The writer made everything up to `seq` durable: let go of it, from disk too."""
        while self._queued_disk and self.disk[0].seq <= seq:
            self._forget_spilled(self.disk[0])
        if self.disk:
            return
        while self._queued_memory and self.memory[0].seq <= seq:
            item = self.memory.popleft()
            self.memory_changes -= item.count
            self._queued_memory -= 1
            if self.on_acked is not None:
                self.on_acked(item.changes)

    def _forget_spilled(self, item: _Unacked) -> None:
        assert self.overflow is not None and item.path is not None
        index = self.disk.index(item)
        del self.disk[index]
        if index < self._queued_disk:
            self._queued_disk -= 1
        self.disk_changes -= item.count
        self.overflow.remove(item.path)

    def spill_all(self) -> int:
        """Stopping unacknowledged: keep what is in memory on disk for the next start; how many were kept."""
        if self.overflow is None or not self.memory:
            return 0
        before = self.spilled
        self._spill_down_to(0)
        return self.spilled - before

    def _spill_overflow(self) -> None:
        """Bounded memory: past `max_unacked`, move the oldest tenth of the bound to disk at once."""
        if self.memory_changes > self.max_unacked:
            self._spill_down_to(self.max_unacked - self.max_unacked // 10)

    def _spill_down_to(self, target: int) -> None:
        chunk: list[_Unacked] = []
        while self.memory and self.memory_changes > target:
            chunk.append(self.memory.popleft())
            self.memory_changes -= chunk[-1].count
        if not chunk:
            return
        queued = min(len(chunk), self._queued_memory)
        self._queued_memory -= queued
        changes = [change for item in chunk for change in item.changes]
        path = self._write_spill(changes)
        if path is None:
            self.dropped += len(changes)
            return
        self.spilled += len(changes)
        # Already on the wire whole: its ack (on this connection) deletes it; else it is sent from disk.
        seq = chunk[-1].seq if queued == len(chunk) else 0
        self.disk.append(_Unacked(len(changes), path=path, seq=seq))
        self.disk_changes += len(changes)
        if seq:
            self._queued_disk += 1

    def _write_spill(self, changes: list[StatusChange]) -> Path | None:
        if self.overflow is None:
            log.error("dropped %d oldest unacknowledged changes (no overflow spool)", len(changes))
            return None
        try:
            path = self.overflow.append(changes)
        except OSError as exc:
            log.error("overflow spool unusable (%s): dropped %d oldest unacknowledged changes", exc, len(changes))
            return None
        log.warning("spilled %d unacknowledged changes to %s", len(changes), self.overflow.directory)
        return path


def overflow_spool(directory: Path, max_bytes: int) -> Spool:
    """A worker's overflow spool: one segment per spill, so each is deleted once acknowledged."""
    return Spool(directory, max_bytes, segment_bytes=0)


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


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
            except (OSError, ConnectionError, ProtocolError) as exc:
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
