"""Signed Kick webhook deliveries for tests: a key pair made here, bodies shaped as Kick sends them."""

from __future__ import annotations

import http.client
import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kick_monitor.webhook_signature import sign

_ids = itertools.count(1)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def status_body(user_id: int, live: bool, started_at: float, ended_at: float | None = None,
                title: str = "Stream Title") -> bytes:
    return json.dumps({
        "broadcaster": {"is_anonymous": False, "user_id": user_id, "username": f"u{user_id}", "is_verified": True,
                        "profile_picture": "", "channel_slug": f"u{user_id}", "identity": None},
        "is_live": live, "title": title, "started_at": rfc3339(started_at),
        "ended_at": None if ended_at is None else rfc3339(ended_at),
    }).encode()


def metadata_body(user_id: int, title: str, category: str) -> bytes:
    return json.dumps({
        "broadcaster": {"user_id": user_id, "username": f"u{user_id}"},
        "metadata": {"title": title, "language": "en", "has_mature_content": False,
                     "category": {"id": 1, "name": category, "thumbnail": ""}},
    }).encode()


@dataclass
class Delivery:
    """One delivery: the same message id and body are re-sent as Kick's retries would be."""

    event: str
    body: bytes
    message_id: str = field(default_factory=lambda: f"01TEST{next(_ids):020d}")
    sent_at: float = field(default_factory=time.time)


class KickSigner:
    """Kick's side of the signature: a fresh RSA key pair (its public half written as PEM)."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def write_public_key(self, path: Path) -> Path:
        path.write_bytes(self.public_pem)
        return path

    def headers(self, delivery: Delivery, *, signature: str | None = None) -> dict[str, str]:
        stamp = rfc3339(delivery.sent_at)
        if signature is None:
            signature = sign(self.private_key, delivery.message_id, stamp, delivery.body)
        return {
            "Kick-Event-Message-Id": delivery.message_id,
            "Kick-Event-Subscription-Id": "01SUBSCRIPTION",
            "Kick-Event-Signature": signature,
            "Kick-Event-Message-Timestamp": stamp,
            "Kick-Event-Type": delivery.event,
            "Kick-Event-Version": "1",
            "Content-Type": "application/json",
        }


def post(port: int, path: str, body: bytes, headers: dict[str, str], timeout: float = 15.0) -> int:
    """POST on a fresh connection; the HTTP status (the connection is closed after)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()
