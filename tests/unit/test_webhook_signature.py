"""Signature and replay checks of webhook deliveries, against a key pair made here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kick_monitor.webhook_events import STATUS_EVENT
from kick_monitor.webhook_signature import (
    KICK_PUBLIC_KEY_PEM,
    PublicKeyError,
    Rejected,
    Verified,
    Verifier,
    choose_public_key,
    load_public_key,
    parse_timestamp,
)
from tests.webhooks import Delivery, KickSigner, rfc3339, status_body

SIGNER = KickSigner()


def verify(delivery: Delivery, *, signer: KickSigner = SIGNER, now: float | None = None, body: bytes | None = None,
           signature: str | None = None, max_age: float = 600) -> Verified:
    headers = signer.headers(delivery, signature=signature)
    verifier = Verifier(load_public_key(SIGNER.public_pem), max_age=max_age)
    return verifier.verify(
        headers["Kick-Event-Message-Id"], headers["Kick-Event-Message-Timestamp"],
        delivery.body if body is None else body, headers["Kick-Event-Signature"],
        now=time.time() if now is None else now,
    )


def test_a_signed_fresh_delivery_verifies() -> None:
    delivery = Delivery(STATUS_EVENT, status_body(7, True, time.time()))
    verified = verify(delivery)
    assert verified.message_id == delivery.message_id
    assert abs(verified.sent_at - delivery.sent_at) < 0.001


@pytest.mark.parametrize("case", ["other key", "body changed", "not base64", "empty"])
def test_a_bad_signature_is_refused(case: str) -> None:
    delivery = Delivery(STATUS_EVENT, status_body(7, True, time.time()))
    with pytest.raises(Rejected) as caught:
        if case == "other key":
            verify(delivery, signer=KickSigner())
        elif case == "body changed":
            verify(delivery, body=delivery.body.replace(b"true", b"false"))
        elif case == "not base64":
            verify(delivery, signature="%%%not-base64%%%")
        else:
            verify(delivery, signature="")
    assert caught.value.reason == "bad_signature"


def test_the_message_id_is_signed_too() -> None:
    delivery = Delivery(STATUS_EVENT, status_body(7, True, time.time()))
    headers = SIGNER.headers(delivery)
    verifier = Verifier(load_public_key(SIGNER.public_pem), max_age=600)
    with pytest.raises(Rejected):
        verifier.verify("01OTHER", headers["Kick-Event-Message-Timestamp"], delivery.body,
                        headers["Kick-Event-Signature"], now=time.time())


def test_old_and_future_messages_are_replays() -> None:
    now = time.time()
    old = Delivery(STATUS_EVENT, b"{}", sent_at=now - 601)
    with pytest.raises(Rejected) as caught:
        verify(old, now=now)
    assert caught.value.reason == "stale"
    future = Delivery(STATUS_EVENT, b"{}", sent_at=now + 300)
    with pytest.raises(Rejected) as caught:
        verify(future, now=now)
    assert caught.value.reason == "stale"
    assert verify(Delivery(STATUS_EVENT, b"{}", sent_at=now - 590), now=now)  # inside the window
    assert verify(Delivery(STATUS_EVENT, b"{}", sent_at=now + 30), now=now)  # small clock skew


def test_rfc3339_forms_kick_may_send() -> None:
    assert parse_timestamp("2025-01-01T11:00:00+11:00") == parse_timestamp("2025-01-01T00:00:00Z")
    assert parse_timestamp("2025-01-01T00:00:00.123456789Z") == pytest.approx(1735689600.123456, abs=1e-5)
    assert parse_timestamp(rfc3339(1_800_000_000.5)) == 1_800_000_000.5
    with pytest.raises(ValueError):
        parse_timestamp("2025-01-01T00:00:00")  # no zone: ambiguous


def test_the_shipped_kick_key_loads() -> None:
    assert load_public_key(KICK_PUBLIC_KEY_PEM).key_size == 2048


def test_key_sources_in_order(tmp_path: Path) -> None:
    pem = SIGNER.write_public_key(tmp_path / "kick.pem")
    key, origin = choose_public_key(pem, "http://127.0.0.1:9")  # the file wins; the API is not asked
    assert origin == str(pem) and key.public_numbers() == load_public_key(SIGNER.public_pem).public_numbers()
    key, origin = choose_public_key(None, "http://127.0.0.1:9", timeout=0.5)  # nothing listens on port 9
    assert "Kick's docs" in origin
    assert key.public_numbers() == load_public_key(KICK_PUBLIC_KEY_PEM).public_numbers()
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(PublicKeyError, match=r"KICK_MONITOR_WEBHOOK_PUBLIC_KEY=.*not a PEM public key"):
        choose_public_key(tmp_path / "bad.pem", "http://127.0.0.1:9")
    with pytest.raises(PublicKeyError, match="cannot read"):
        choose_public_key(tmp_path / "missing.pem", "http://127.0.0.1:9")
