"""ChangeSender / ChangeReceiver over a real listening Unix socket, with a fake clock.

Unix stream sockets hand bytes to the peer's receive queue inside `send()`, so every
step here is deterministic: no sleeps, no select. Time only moves when a test says so.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kick_monitor.framing import bind_listener
from kick_monitor.handoff import ACK_READ_AFTER, ChangeReceiver, ChangeSender, overflow_spool
from kick_monitor.messages import ChangeBatch, StatusChange


class Clock:
    """Monotonic time that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def change(n: int) -> StatusChange:
    return StatusChange(f"c{n}", n, "online", "pusher", "e", None, None, None, 1000.0 + n, 1.0 + n, 0)


def changes(start: int, stop: int) -> list[StatusChange]:
    return [change(n) for n in range(start, stop)]


class Writer:
    """The writer side as the writer uses it: accept, read, acknowledge what it chooses."""

    def __init__(self, listener: socket.socket) -> None:
        self.receiver = ChangeReceiver(listener)
        self.batches: list[tuple[int, ChangeBatch]] = []

    def read(self) -> list[tuple[int, ChangeBatch]]:
        self.receiver.accept()
        fresh = self.receiver.read(list(self.receiver.channels))
        self.batches += fresh
        return fresh

    def ack_all(self) -> None:
        acks: dict[int, int] = {}
        for conn_id, batch in self.batches:
            acks[conn_id] = max(batch.seq, acks.get(conn_id, 0))
        self.receiver.acknowledge(acks)

    def received(self) -> list[StatusChange]:
        return [c for _, batch in self.batches for c in batch.changes]


@pytest.fixture
def address(tmp_path: Path) -> str:
    return str(tmp_path / "w.sock")


@pytest.fixture
def listener(address: str) -> Iterator[socket.socket]:
    sock = bind_listener(address)
    yield sock
    sock.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def connected_sender(address: str, clock: Clock, **kwargs: object) -> ChangeSender:
    sender = ChangeSender(address, "shard-0", clock=clock, **kwargs)  # type: ignore[arg-type]
    sender.service(clock())
    assert sender.connected
    return sender


def test_send_ack_forget(address: str, listener: socket.socket, clock: Clock) -> None:
    sender = connected_sender(address, clock)
    writer = Writer(listener)
    sender.send(changes(0, 3))
    sender.send(changes(3, 5))
    assert [c for _, b in writer.read() for c in b.changes] == changes(0, 5)
    assert sender.unacked_changes == 5
    writer.ack_all()
    sender.service(clock(), readable=True)
    assert sender.unacked_changes == 0 and sender.unacked == 0
    sender.close()


def test_an_ack_forgets_only_up_to_its_seq(address: str, listener: socket.socket, clock: Clock) -> None:
    sender = connected_sender(address, clock)
    writer = Writer(listener)
    for n in range(3):
        sender.send([change(n)])
    (conn_id, first), *_ = writer.read()
    writer.receiver.acknowledge({conn_id: first.seq})
    sender.service(clock(), readable=True)
    assert sender.unacked == 2 and sender.unacked_changes == 2
    sender.close()


def test_on_acked_names_exactly_the_changes_made_durable(address: str, listener: socket.socket, clock: Clock) -> None:
    """The webhook receiver answers 200 from this callback: it must name only acknowledged changes."""
    durable: list[StatusChange] = []
    sender = connected_sender(address, clock, on_acked=lambda batch: durable.extend(batch))
    writer = Writer(listener)
    sender.send(changes(0, 2))
    sender.send(changes(2, 3))
    (conn_id, first), _ = writer.read()
    writer.receiver.acknowledge({conn_id: first.seq})
    sender.service(clock(), readable=True)
    assert durable == changes(0, 2)
    writer.ack_all()
    sender.service(clock(), readable=True)
    assert durable == changes(0, 3)
    sender.close()


def test_an_acknowledgement_that_is_not_overdue_does_not_wake_the_loop(
    address: str, listener: socket.socket, clock: Clock
) -> None:
    """A worker reads acknowledgements when it is awake anyway (round 17: 19 % of a worker's wake-ups in S2
    were for an ack alone); it asks to be woken by the writer's socket only once an ack is overdue."""
    sender = connected_sender(address, clock)
    writer = Writer(listener)
    assert sender.wants_read(clock())  # nothing awaits an ack: only an EOF can come, watch for it
    sender.send(changes(0, 2))
    assert not sender.wants_read(clock())
    assert sender.next_timeout(clock()) == pytest.approx(ACK_READ_AFTER)
    writer.read()
    writer.ack_all()
    clock.advance(ACK_READ_AFTER / 2)
    assert not sender.wants_read(clock())
    assert sender.next_timeout(clock()) == pytest.approx(ACK_READ_AFTER / 2)
    sender.service(clock())  # awake for something else (a Pusher frame): the ack is read all the same
    assert sender.unacked == 0
    assert sender.wants_read(clock()) and sender.next_timeout(clock()) == float("inf")
    sender.close()


def test_an_overdue_acknowledgement_wakes_the_loop_and_a_dead_writer_is_noticed(
    address: str, listener: socket.socket, clock: Clock
) -> None:
    sender = connected_sender(address, clock)
    writer = Writer(listener)
    sender.send(changes(0, 1))
    clock.advance(ACK_READ_AFTER + 0.001)
    assert sender.wants_read(clock())
    assert sender.next_timeout(clock()) == float("inf")  # the socket wakes the loop now: no timeout, no spinning
    writer.read()
    for channel in list(writer.receiver.channels.values()):  # the writer dies before it acknowledged
        channel.close()
    sender.service(clock())  # read without select() saying readable: the EOF is seen
    assert not sender.connected and sender.unacked == 1
    clock.advance(1.0)
    sender.service(clock())
    assert sender.connected
    assert [c for _, b in Writer(listener).read() for c in b.changes] == changes(0, 1)
    sender.close()


def test_writer_dies_before_ack_sender_resends_every_unacked_batch_oldest_first(
    address: str, listener: socket.socket, clock: Clock
) -> None:
    sender = connected_sender(address, clock)
    first = Writer(listener)
    for n in range(0, 9, 3):
        sender.send(changes(n, n + 3))
    assert len(first.read()) == 3
    first.receiver.close()  # the writer is killed; the listening socket stays (the coordinator's)

    sender.service(clock(), readable=True)  # EOF
    assert not sender.connected and sender.reconnects == 1
    sender.service(clock.advance(0.01))
    assert not sender.connected, "reconnects after a short pause, not in a tight loop"
    sender.service(clock.advance(0.1))
    assert sender.connected

    second = Writer(listener)
    resent = second.read()
    assert [c for _, b in resent for c in b.changes] == changes(0, 9)
    seqs = [b.seq for _, b in resent]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    second.ack_all()
    sender.service(clock(), readable=True)
    assert sender.unacked == 0
    sender.close()


def test_acks_go_by_connection_id_never_by_fd(address: str, listener: socket.socket, clock: Clock) -> None:
    writer = Writer(listener)
    old = connected_sender(address, clock)
    old.send(changes(0, 2))
    ((old_id, old_batch),) = writer.read()
    old_fd = writer.receiver._by_id[old_id].fileno()
    old.close()  # the worker dies before its ack
    assert writer.read() == []  # the writer notices the EOF and closes its end: the fd is free

    new = connected_sender(address, clock)
    new.send([change(10)])
    ((new_id, new_batch),) = writer.read()
    assert writer.receiver._by_id[new_id].fileno() == old_fd, "precondition: the new connection reuses the fd"
    assert new_id != old_id

    writer.receiver.acknowledge({old_id: old_batch.seq})  # the commit of the dead one's batch completes
    new.service(clock(), readable=True)
    assert new.unacked_changes == 1, "the new connection must not take the old one's ack for its own"
    writer.receiver.acknowledge({new_id: new_batch.seq})
    new.service(clock(), readable=True)
    assert new.unacked_changes == 0
    new.close()


def test_without_a_spool_overflow_drops_the_oldest_and_counts_them(address: str, clock: Clock) -> None:
    sender = ChangeSender(address, "shard-0", max_unacked=10, clock=clock)  # nobody listens
    sender.service(clock())
    for n in range(0, 30, 3):
        sender.send(changes(n, n + 3))
    assert sender.memory_changes <= 10
    assert sender.dropped + sender.unacked_changes == 30
    assert sender.dropped > 0 and sender.spilled == 0


def drain(sender: ChangeSender, writer: Writer, clock: Clock, rounds: int = 100) -> None:
    """Let sender and writer talk until everything is acknowledged (the writer acks all it reads)."""
    for _ in range(rounds):
        sender.service(clock.advance(0.1), readable=True, writable=True)
        writer.read()
        writer.ack_all()
        if not sender.unacked:
            return
    raise AssertionError(f"{sender.unacked_changes} changes still unacknowledged")


def test_overflow_spills_to_disk_and_everything_arrives_once_in_order(
    address: str, tmp_path: Path, clock: Clock
) -> None:
    spool_dir = tmp_path / "spool" / "worker-0"
    sender = ChangeSender(address, "shard-0", max_unacked=10, overflow=overflow_spool(spool_dir, 1 << 20), clock=clock)
    sender.service(clock())  # the writer is not there
    for n in range(0, 100, 3):
        sender.send(changes(n, min(n + 3, 100)))
        sender.service(clock.advance(0.3))
    assert sender.memory_changes <= 10, "memory stays bounded"
    assert sender.spilled >= 90 and sender.dropped == 0
    assert sender.unacked_changes == 100
    assert list(spool_dir.iterdir()), "the overflow is on disk"

    listener = bind_listener(address)  # the writer comes back
    try:
        writer = Writer(listener)
        drain(sender, writer, clock)
        assert writer.received() == changes(0, 100), "each change once, oldest first"
        assert list(spool_dir.iterdir()) == []
    finally:
        sender.close()
        listener.close()


def test_a_spilled_segment_is_deleted_only_after_the_writer_acknowledged_it(
    address: str, tmp_path: Path, clock: Clock
) -> None:
    spool_dir = tmp_path / "spool"
    sender = ChangeSender(address, "shard-0", max_unacked=4, overflow=overflow_spool(spool_dir, 1 << 20), clock=clock)
    for n in range(10):
        sender.send([change(n)])
    segments = sorted(spool_dir.iterdir())
    assert segments and sender.disk_changes > 0

    listener = bind_listener(address)
    try:
        writer = Writer(listener)
        sender.service(clock.advance(1.0))
        writer.read()
        assert writer.received()[:1] == [change(0)], "spilled changes go first"
        assert sorted(spool_dir.iterdir()) == segments, "sent is not durable: the files stay"
        writer.ack_all()
        sender.service(clock(), readable=True)
        assert len(list(spool_dir.iterdir())) < len(segments)
        drain(sender, writer, clock)
        assert writer.received() == changes(0, 10)
    finally:
        sender.close()
        listener.close()


def test_spilling_while_connected_to_a_stalled_writer_loses_and_doubles_nothing(
    address: str, listener: socket.socket, tmp_path: Path, clock: Clock
) -> None:
    spool_dir = tmp_path / "spool"
    sender = connected_sender(address, clock, max_unacked=10, overflow=overflow_spool(spool_dir, 1 << 20))
    writer = Writer(listener)
    for n in range(0, 40, 2):  # the writer reads nothing meanwhile (SIGSTOPped, say)
        sender.send(changes(n, n + 2))
    assert sender.spilled > 0 and list(spool_dir.iterdir())
    drain(sender, writer, clock)  # it wakes up
    assert writer.received() == changes(0, 40)
    assert list(spool_dir.iterdir()) == [], "acknowledged on the wire: deleted without being sent again"
    sender.close()


def test_when_the_spool_is_full_the_rest_is_dropped_and_counted(address: str, tmp_path: Path, clock: Clock) -> None:
    spool_dir = tmp_path / "spool"
    spool = overflow_spool(spool_dir, max_bytes=1500)  # room for a dozen changes
    sender = ChangeSender(address, "shard-0", max_unacked=5, overflow=spool, clock=clock)
    for n in range(60):
        sender.send([change(n)])
    assert sender.spilled > 0 and sender.dropped > 0
    assert sender.spilled + sender.dropped + sender.memory_changes == 60
    assert spool.size_bytes <= 1500

    listener = bind_listener(address)
    try:
        writer = Writer(listener)
        drain(sender, writer, clock)
        received = writer.received()
        assert len(received) == 60 - sender.dropped
        assert received == sorted(received, key=lambda c: c.channel_id or 0), "what is kept stays in order"
        assert len({c.change_id for c in received}) == len(received)
    finally:
        sender.close()
        listener.close()


def test_a_restarted_worker_sends_what_the_last_one_spilled_first(address: str, tmp_path: Path, clock: Clock) -> None:
    spool_dir = tmp_path / "spool"
    gone = ChangeSender(address, "shard-0", max_unacked=3, overflow=overflow_spool(spool_dir, 1 << 20), clock=clock)
    for n in range(10):
        gone.send([change(n)])
    spilled = gone.spilled
    assert spilled > 0
    del gone  # the worker died; its memory is gone, its spool is not

    listener = bind_listener(address)
    try:
        spool = overflow_spool(spool_dir, 1 << 20)
        sender = ChangeSender(address, "shard-0", max_unacked=3, overflow=spool, clock=clock)
        assert sender.disk_changes == spilled
        sender.send([change(100)])
        writer = Writer(listener)
        drain(sender, writer, clock)
        assert writer.received() == [*changes(0, spilled), change(100)]
        assert list(spool_dir.iterdir()) == []
        sender.close()
    finally:
        listener.close()


def test_a_torn_spilled_segment_sends_its_good_lines(address: str, tmp_path: Path, clock: Clock) -> None:
    spool_dir = tmp_path / "spool"
    gone = ChangeSender(address, "shard-0", max_unacked=2, overflow=overflow_spool(spool_dir, 1 << 20), clock=clock)
    for n in range(3):
        gone.send([change(n)])
    (segment,) = spool_dir.iterdir()
    with segment.open("ab") as f:
        f.write(b'["half a li')
    listener = bind_listener(address)
    try:
        sender = ChangeSender(address, "shard-0", overflow=overflow_spool(spool_dir, 1 << 20), clock=clock)
        writer = Writer(listener)
        drain(sender, writer, clock)
        assert writer.received() == [change(0)]
        assert not os.listdir(spool_dir)
        sender.close()
    finally:
        listener.close()


def test_stopping_unacknowledged_keeps_memory_on_disk_for_the_next_start(
    address: str, tmp_path: Path, clock: Clock
) -> None:
    spool_dir = tmp_path / "spool"
    stopping = ChangeSender(address, "shard-0", overflow=overflow_spool(spool_dir, 1 << 20), clock=clock)
    stopping.send(changes(0, 3))
    stopping.send(changes(3, 5))
    assert not stopping.wait_drained(0.0)  # the writer is away
    assert stopping.spill_all() == 5
    assert stopping.memory_changes == 0 and stopping.disk_changes == 5 and stopping.dropped == 0
    assert ChangeSender(address, "shard-0", clock=clock).spill_all() == 0, "without a spool nothing to do"

    listener = bind_listener(address)
    try:
        sender = ChangeSender(address, "shard-0", overflow=overflow_spool(spool_dir, 1 << 20), clock=clock)
        writer = Writer(listener)
        drain(sender, writer, clock)
        assert writer.received() == changes(0, 5)
        sender.close()
    finally:
        listener.close()


def test_a_spilled_segment_that_vanished_is_counted_as_dropped_not_waited_for(
    address: str, tmp_path: Path, clock: Clock
) -> None:
    spool_dir = tmp_path / "spool"
    sender = ChangeSender(address, "shard-0", max_unacked=2, overflow=overflow_spool(spool_dir, 1 << 20), clock=clock)
    for n in range(5):
        sender.send([change(n)])
    first, *_ = sorted(spool_dir.iterdir())
    first.unlink()  # an operator cleaning up, a disk error
    listener = bind_listener(address)
    try:
        writer = Writer(listener)
        drain(sender, writer, clock)
        assert sender.dropped == 1
        assert writer.received() == changes(1, 5)
        sender.close()
    finally:
        listener.close()
