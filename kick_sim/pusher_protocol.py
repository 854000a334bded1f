"""Pusher protocol 7 rules, free of I/O: handshake checks, channel rules, protocol frames.

Close codes follow Pusher's table: 4001 unknown app key, 4005 path not found, 4007
unsupported protocol version (anything but the accepted versions, garbage included), 4008
no protocol version supplied.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from kick_sim.events import encode_protocol

CHANNEL_NAME_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,164}")
PATH_RE = re.compile(r"/app/([^/]+)")
PONG = encode_protocol("pusher:pong", {})
PING = encode_protocol("pusher:ping", {})


def check_handshake(path: str, app_key: str, protocols: tuple[int, ...]) -> tuple[int, str] | None:
    """Pusher's connection-level refusal (code, message) for a request path, or None to accept."""
    url = urlsplit(path)
    match = PATH_RE.fullmatch(url.path)
    if match is None:
        return 4005, "Path not found"
    if match.group(1) != app_key:
        return 4001, f"App key {match.group(1)} not in this cluster. Did you forget to specify the cluster?"
    protocol = parse_qs(url.query).get("protocol", [""])[0]
    if not protocol:
        return 4008, "No protocol version supplied"
    if not protocol.isdigit() or int(protocol) not in protocols:
        return 4007, f"Unsupported protocol version {protocol}"
    return None


def established_frame(socket_id: str, activity_timeout: int) -> bytes:
    """pusher:connection_established, its data double-encoded like the real service."""
    data = orjson.dumps({"socket_id": socket_id, "activity_timeout": activity_timeout}).decode()
    return encode_protocol("pusher:connection_established", data)


def error_frame(code: int | None, message: str) -> bytes:
    """`pusher:error`; code None is how Pusher reports per-channel and message errors."""
    return encode_protocol("pusher:error", {"code": code, "message": message})


def subscription_refusal(channel: object, auth: object) -> tuple[str, str, int] | None:
    """(type, error, status) when a subscribe must fail, else None.

    Private and presence channels always fail: the simulator has no app secret to check
    a signature with, and Kick's public monitor never needs them.
    """
    if not isinstance(channel, str) or not CHANNEL_NAME_RE.fullmatch(channel):
        return "InvalidChannelName", f"Invalid channel name {str(channel)[:200]!r}", 400
    if channel.startswith(("private-", "presence-")):
        problem = "Invalid signature" if auth else f"Auth value for subscription to {channel} is required"
        return "AuthError", problem, 401
    return None


def subscription_ack(channel: str) -> bytes:
    """pusher_internal:subscription_succeeded; `channel` passed CHANNEL_NAME_RE, so no escaping."""
    return b'{"event":"pusher_internal:subscription_succeeded","data":"{}","channel":"' + channel.encode() + b'"}'


def subscription_error(channel: str | None, kind: str, error: str, status: int, style: str) -> bytes:
    """A failed subscription as pusher:subscription_error or as pusher:error with code null."""
    if style == "pusher_error":
        return error_frame(None, error)
    return encode_protocol("pusher:subscription_error", {"type": kind, "error": error, "status": status}, channel)


def payload(frame: dict[str, Any]) -> dict[str, Any]:
    """A frame's `data` as a dict: clients send it as an object or as a JSON string."""
    data = frame.get("data")
    if isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return {}
    return data if isinstance(data, dict) else {}
