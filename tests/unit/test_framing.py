"""FramedSocket over real socketpairs: partial frames, several per recv, the size limit, EOF, a stalled peer."""

from __future__ import annotations

import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from kick_monitor.framing import MAX_MESSAGE_BYTES, FramedSocket, ProtocolError, encode


@pytest.fixture
def pair() -> Iterator[tuple[FramedSocket, socket.socket]]:
    """Our framed end and a raw peer that writes exactly the bytes a test chooses."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    framed = FramedSocket(ours)
    yield framed, peer
    framed.close()
    peer.close()


def test_a_message_split_into_one_byte_sends_arrives_once_whole(pair: tuple[FramedSocket, socket.socket]) -> None:
    framed, peer = pair
    message = {"seq": 7, "text": "ä" * 300}
    data = encode(message)
    received: list[object] = []
    for i in range(len(data)):
        peer.send(data[i : i + 1])
        received += framed.read()
        if i < len(data) - 1:
            assert received == [], f"a message came out after {i + 1} of {len(data)} bytes"
    assert received == [message]


def test_a_header_split_in_two(pair: tuple[FramedSocket, socket.socket]) -> None:
    framed, peer = pair
    data = encode("hello")
    peer.send(data[:2])
    assert framed.read() == []
    peer.send(data[2:])
    assert framed.read() == ["hello"]


def test_several_messages_in_one_recv_come_out_in_order(pair: tuple[FramedSocket, socket.socket]) -> None:
    framed, peer = pair
    messages = [("batch", n) for n in range(50)]
    last = encode("tail")
    peer.sendall(b"".join(encode(m) for m in messages) + last[:3])  # and the start of one more
    assert framed.read() == messages
    peer.sendall(last[3:])
    assert framed.read() == ["tail"]


def test_a_size_over_the_limit_is_refused_before_unpickling(pair: tuple[FramedSocket, socket.socket]) -> None:
    framed, peer = pair
    peer.sendall(struct.pack("!I", MAX_MESSAGE_BYTES + 1) + b"\x80\x05")  # no body follows: not waited for
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        framed.read()


def test_a_body_that_is_not_a_pickle_is_a_protocol_error(pair: tuple[FramedSocket, socket.socket]) -> None:
    framed, peer = pair
    body = b"GET / HTTP/1.1\r\n"
    peer.sendall(struct.pack("!I", len(body)) + body)
    with pytest.raises(ProtocolError, match="undecodable"):
        framed.read()


def test_eof_after_the_last_message_is_a_connection_error(pair: tuple[FramedSocket, socket.socket]) -> None:
    framed, peer = pair
    peer.sendall(encode(1) + encode(2))
    peer.close()
    assert framed.read() == [1, 2]
    with pytest.raises(ConnectionError):
        framed.read()


def test_nothing_to_read_is_an_empty_list_not_a_wait(pair: tuple[FramedSocket, socket.socket]) -> None:
    framed, _ = pair
    started = time.monotonic()
    assert framed.read() == []
    assert time.monotonic() - started < 0.5


@pytest.mark.timeout(10)
def test_reading_small_messages_allocates_no_buffer_per_read(pair: tuple[FramedSocket, socket.socket]) -> None:
    """Each read used to be `recv(1 MiB)`: a fresh megabyte a call, which glibc served by mmap, mremap and
    munmap (seen in strace of a worker: three syscalls for every acknowledgement read, round 17)."""
    framed, peer = pair
    peer.send(encode("warm"))
    assert framed.read() == ["warm"]  # the thread's receive buffer exists from here on
    tracemalloc.start()
    try:
        for n in range(50):
            peer.send(encode(n))
            assert framed.read() == [n]
            assert framed.read() == []  # nothing there: no allocation either
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"reads allocated {peak} bytes at their peak"


def test_a_message_larger_than_one_receive_arrives_whole(pair: tuple[FramedSocket, socket.socket]) -> None:
    framed, peer = pair
    message = b"\x01" * (3 << 20)
    sender = threading.Thread(target=peer.sendall, args=(encode(message),))
    sender.start()
    received: list[object] = []
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        received = framed.read()
        time.sleep(0.001)
    sender.join(5)
    assert received == [message]


def test_the_outbox_is_kept_when_the_peer_does_not_read_and_flush_never_blocks() -> None:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sender, receiver = FramedSocket(ours), FramedSocket(peer)
    try:
        messages = [bytes([n]) * 100_000 for n in range(8)]  # far more than the buffers hold
        for message in messages:
            sender.queue(message)
        started = time.monotonic()
        sender.flush()
        sender.flush()  # a second call on a full socket returns at once too
        assert time.monotonic() - started < 1.0
        assert sender.wants_write, "the kernel cannot have taken 800 kB: the rest must wait in the outbox"
        received: list[object] = []
        for _ in range(10_000):  # the peer reads a little at a time; each flush sends what fits
            received += receiver.read()
            sender.flush()
            if len(received) == len(messages):
                break
        assert received == messages
        assert not sender.wants_write
    finally:
        sender.close()
        receiver.close()


def test_flush_on_a_socket_whose_peer_is_gone_raises_oserror() -> None:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    framed = FramedSocket(ours)
    peer.close()
    framed.queue("lost")
    with pytest.raises(OSError):
        framed.flush()
    framed.close()
    assert framed.closed


def test_a_change_with_every_field_set_crosses_whole(pair: tuple[FramedSocket, socket.socket]) -> None:
    """StatusChange pickles as its constructor's arguments: a field out of order would land in another."""
    from dataclasses import fields

    from kick_monitor.messages import ChangeBatch, StatusChange

    values: dict[str, object] = {}
    for number, field in enumerate(fields(StatusChange), start=1):
        kind = str(field.type)
        values[field.name] = (float(number) + 0.5 if "float" in kind else number if "int" in kind
                              else f"{field.name}-{number}")
    change = StatusChange(**values)  # type: ignore[arg-type]
    framed, peer = pair
    peer.send(encode(ChangeBatch("shard-3", 9, (change, change))))
    [batch] = framed.read()
    assert batch == ChangeBatch("shard-3", 9, (change, change))
    assert [getattr(batch.changes[0], f.name) for f in fields(StatusChange)] == list(values.values())
