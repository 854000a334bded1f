"""The Pusher socket's read-ahead (`_BoundedWebSocket`): whatever the sizes of the frames and of the
pieces they arrive in, websocket-client gets every frame whole and in order, and nothing stays held
once the sender is done. Real sockets (a socketpair), websocket-client's own frame parser."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st
from websocket import ABNF

from kick_monitor.pusher import READ_AHEAD, _BoundedWebSocket


def text_frame(payload: bytes) -> bytes:
    """An unmasked server → client text frame (RFC 6455)."""
    n = len(payload)
    if n < 126:
        header = bytes([0x81, n])
    elif n < 1 << 16:
        header = bytes([0x81, 126]) + struct.pack("!H", n)
    else:
        header = bytes([0x81, 127]) + struct.pack("!Q", n)
    return header + payload


@contextlib.contextmanager
def connected() -> Iterator[tuple[_BoundedWebSocket, socket.socket]]:
    """Our websocket on one end of a socketpair (as if the handshake were done), the server's raw end."""
    ours, theirs = socket.socketpair()
    ws = _BoundedWebSocket(skip_utf8_validation=True, enable_multithread=False)
    ws.sock, ws.connected = ours, True
    ours.settimeout(10)
    try:
        yield ws, theirs
    finally:
        ours.close()
        theirs.close()


def read_frames(sizes: list[int], pieces: list[int]) -> None:
    payloads = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    wire = b"".join(text_frame(p) for p in payloads)
    with connected() as (ws, theirs):

        def send() -> None:
            at, k = 0, 0
            while at < len(wire):
                step = pieces[k % len(pieces)]
                theirs.sendall(wire[at : at + step])
                at, k = at + step, k + 1

        sender = threading.Thread(target=send)
        sender.start()
        got = []
        try:
            for _ in payloads:
                opcode, frame = ws.recv_data_frame(True)
                assert opcode == ABNF.OPCODE_TEXT
                got.append(frame.data)
            assert ws.buffered == 0  # nothing left behind once every frame is out
        finally:
            sender.join()
    assert got == payloads


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3 * READ_AHEAD), min_size=1, max_size=12),
    pieces=st.lists(st.integers(1, 2 * READ_AHEAD), min_size=1, max_size=5),
)
def test_every_frame_arrives_whole_and_in_order(sizes: list[int], pieces: list[int]) -> None:
    read_frames(sizes, pieces)


def test_a_burst_in_one_write_is_held_ahead_between_frames() -> None:
    with connected() as (ws, theirs):
        theirs.sendall(b"".join(text_frame(b"x" * 200) for _ in range(5)))
        assert ws.recv_data_frame(True)[1].data == b"x" * 200
        # the other four came with the first read: held here, not in the kernel
        assert ws.buffered == 4 * len(text_frame(b"x" * 200))
        assert ws.sock is not None
        ws.sock.setblocking(False)
        for _ in range(4):
            assert ws.recv_data_frame(True)[1].data == b"x" * 200
        assert ws.buffered == 0
