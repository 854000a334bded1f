"""The one kind of channel between kick-monitor processes: framed messages on a Unix socket.

Every process-to-process link (worker → writer hand-off, planner → worker assignments,
supervisor → child control) is a non-blocking Unix stream socket carrying
length-prefixed pickles of the typed messages in `kick_monitor.messages`. Non-blocking
on both ends, with an outbox, so a stalled or SIGSTOPped peer can never block the
sender's loop; the size prefix is checked before anything is unpickled.

Only our own processes connect (the listening sockets are created 0600 in a 0700
directory), which is why pickle is acceptable here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import pickle
import socket
import struct
import threading

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 64 << 20
# Bytes one recv may take. Received into a buffer each reading thread keeps, not into a fresh object: a
# `recv(1 MiB)` allocated a megabyte a call, which glibc served with mmap, mremap and munmap (strace of a
# worker: three syscalls for every acknowledgement read; docs/performance.md, round 17). An anonymous
# mapping: a page is resident only once a read has filled it (a zeroed bytearray would be all resident).
RECEIVE_BYTES = 256 << 10
_RECEIVE = threading.local()


def _receive_buffer() -> memoryview:
    view: memoryview | None = getattr(_RECEIVE, "view", None)
    if view is None:
        view = _RECEIVE.view = memoryview(mmap.mmap(-1, RECEIVE_BYTES))
    return view


class ProtocolError(Exception):
    """The peer sent something that is not a framed message of ours."""


def encode(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def _decode(body: memoryview) -> object:
    """Unpickle one frame; anything that is not a pickle of ours is the peer's fault, one error kind."""
    try:
        return pickle.loads(body)
    except Exception as exc:  # UnpicklingError, EOFError, AttributeError, ImportError, ...
        raise ProtocolError(f"undecodable message ({type(exc).__name__})") from None


class FramedSocket:
    """A non-blocking Unix stream socket carrying length-prefixed pickled messages."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._inbox = bytearray()
        self._outbox = bytearray()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def wants_write(self) -> bool:
        return bool(self._outbox)

    @property
    def outbox_bytes(self) -> int:
        """Bytes queued for a peer that has not read them yet."""
        return len(self._outbox)

    def queue(self, message: object) -> None:
        self._outbox += encode(message)

    def flush(self) -> None:
        """Write as much of the outbox as the socket takes now; raise OSError if broken."""
        while self._outbox:
            try:
                sent = self.sock.send(self._outbox)
            except BlockingIOError:
                return
            del self._outbox[:sent]

    def read(self) -> list[object]:
        """Every complete message readable now; raise ConnectionError at EOF, ProtocolError on garbage."""
        buffer = _receive_buffer()
        while True:
            try:
                received = self.sock.recv_into(buffer)
            except BlockingIOError:
                break
            if not received:
                raise ConnectionError("peer closed the connection")
            self._inbox += buffer[:received]
            if received < len(buffer):
                break
        messages: list[object] = []
        offset = 0
        view = memoryview(self._inbox)
        try:
            while len(self._inbox) - offset >= _HEADER.size:
                (size,) = _HEADER.unpack_from(view, offset)
                if size > MAX_MESSAGE_BYTES:
                    raise ProtocolError(f"message of {size} bytes exceeds the limit")
                end = offset + _HEADER.size + size
                if end > len(self._inbox):
                    break
                messages.append(_decode(view[offset + _HEADER.size : end]))
                offset = end
        finally:
            view.release()
        if offset:
            del self._inbox[:offset]
        return messages

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


def dial(address: str, peer: str) -> FramedSocket | None:
    """Connect to a listening socket of ours; None while it is not there (yet), said only if odd.

    A missing or refusing socket is the normal state while its role restarts: the caller
    retries soon. Anything else (permissions, a path that is not a socket) is logged.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(address)
    except OSError as exc:
        sock.close()
        if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
            log.warning("cannot reach the %s at %s: %s", peer, address, exc)
        return None
    return FramedSocket(sock)


class Link:
    """The client end of one of our channels: at most one connection, re-dialled after a delay.

    Subclasses connect in `service()` when `next_timeout` says so; a select() loop waits on
    `fileno()` (None while disconnected) and asks for writability while `wants_write`.
    """

    def __init__(self, address: str) -> None:
        self.address = address
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
        return float("inf") if self._channel is not None else max(0.0, self._retry_at - now)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def bind_listener(path: str) -> socket.socket:
    """The writer's listening socket; the coordinator creates it before forking the writer."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(1024)
    return sock
