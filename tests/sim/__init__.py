"""Helpers for the simulator tests: raw websocket-client sockets, every read with a timeout."""

from __future__ import annotations

import json
import struct
from typing import Any

import websocket

RECV_TIMEOUT = 3.0


def connect(url: str, timeout: float = RECV_TIMEOUT) -> websocket.WebSocket:
    """A raw socket that has already read pusher:connection_established."""
    ws = websocket.create_connection(url, timeout=timeout)
    frame = recv_json(ws)
    assert frame["event"] == "pusher:connection_established", frame
    return ws


def recv_json(ws: websocket.WebSocket) -> dict[str, Any]:
    """Next text frame as JSON (raises websocket.WebSocketTimeoutException after the timeout)."""
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_TEXT, (opcode, data[:100])
    frame = json.loads(data)
    assert isinstance(frame, dict), frame
    return frame


def send_json(ws: websocket.WebSocket, event: str, data: Any) -> None:
    ws.send(json.dumps({"event": event, "data": data}))


def subscribe(ws: websocket.WebSocket, channel: str, auth: str = "") -> dict[str, Any]:
    """Subscribe and return the server's answer frame."""
    send_json(ws, "pusher:subscribe", {"auth": auth, "channel": channel})
    return recv_json(ws)


def assert_nothing_pending(ws: websocket.WebSocket) -> None:
    """Prove no frame is queued before now: a ping's pong must be the very next frame.

    The simulator writes frames before its control calls return, so anything sent earlier
    would arrive before the pong.
    """
    send_json(ws, "pusher:ping", {})
    frame = recv_json(ws)
    assert frame == {"event": "pusher:pong", "data": {}}, frame


def recv_close(ws: websocket.WebSocket) -> tuple[int, str]:
    """Read until a close frame; returns (code, reason). Text frames before it are skipped."""
    while True:
        frame = ws.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
            return code, frame.data[2:].decode()


def lifecycle_frames_until_pong(ws: websocket.WebSocket) -> list[dict[str, Any]]:
    """Every frame received before the pong answering a ping sent now."""
    send_json(ws, "pusher:ping", {})
    frames: list[dict[str, Any]] = []
    while True:
        frame = recv_json(ws)
        if frame["event"] == "pusher:pong":
            return frames
        frames.append(frame)
