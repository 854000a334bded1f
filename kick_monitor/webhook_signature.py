"""Is this webhook delivery from Kick, and fresh? Checked before a body is parsed or acted on.

Kick signs `{Kick-Event-Message-Id}.{Kick-Event-Message-Timestamp}.{raw body}` with RSA
PKCS#1 v1.5 / SHA-256 and sends the signature base64-encoded (KickDevDocs,
events/webhook-security). Anyone who finds the URL can POST to it, so a delivery whose
signature does not verify is refused (401) and nothing of it is recorded. A valid
signature on an old message is a replay: the timestamp is inside the signed bytes, so a
message older than `max_age` seconds, or later than our clock by more than `FUTURE_SKEW`,
is refused the same way (`Kick-Event-Message-Id` dedupe covers replays inside the window).

The key, in order: a PEM file the operator names (`KICK_MONITOR_WEBHOOK_PUBLIC_KEY`), else
`GET {api_base_url}/public/v1/public-key` once at start (the simulator serves its own
there), else the key Kick publishes in its docs, shipped below. Verification costs one
RSA-2048 public-key operation (~40 µs on this machine; `kick-monitor bench` measures it).

>>> verifier = Verifier(load_public_key(KICK_PUBLIC_KEY_PEM), max_age=600)
>>> verifier.verify("01J..", "2026-11-30T10:00:00Z", b"{}", "c2ln..", now=1796032800.0)  # raises Rejected
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

log = logging.getLogger(__name__)

FUTURE_SKEW = 60.0  # seconds a message may be stamped ahead of our clock (clocks differ a little)
MAX_SIGNATURE_CHARS = 2048  # base64 of an RSA-8192 signature is ~1,400; anything longer is garbage

# Kick's webhook public key, as published in KickDevDocs events/webhook-security.md
# (also served at https://api.kick.com/public/v1/public-key). Used only when neither a
# configured PEM file nor the API's public-key endpoint gives one.
KICK_PUBLIC_KEY_PEM = b"""-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAq/+l1WnlRrGSolDMA+A8
6rAhMbQGmQ2SapVcGM3zq8ANXjnhDWocMqfWcTd95btDydITa10kDvHzw9WQOqp2
MZI7ZyrfzJuz5nhTPCiJwTwnEtWft7nV14BYRDHvlfqPUaZ+1KR4OCaO/wWIk/rQ
L/TjY0M70gse8rlBkbo2a8rKhu69RQTRsoaf4DVhDPEeSeI5jVrRDGAMGL3cGuyY
6CLKGdjVEM78g3JfYOvDU/RvfqD7L89TZ3iN94jrmWdGz34JNlEI5hqK8dd7C5EF
BEbZ5jgB8s8ReQV8H+MkuffjdAj3ajDDX3DOJMIut1lBrUVD1AaSrGCKHooWoL2e
twIDAQAB
-----END PUBLIC KEY-----
"""


class Rejected(Exception):
    """A delivery refused before its body is looked at; `reason` is the metric's outcome label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # "bad_signature" or "stale"


class PublicKeyError(ValueError):
    """A public key that cannot be used (not PEM, not RSA): one line, the receiver cannot start."""


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """An RSA public key from PEM text; PublicKeyError with one line otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise PublicKeyError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise PublicKeyError("not an RSA public key (Kick signs with RSA)")
    return key


def fetch_public_key(api_base_url: str, timeout: float = 5.0) -> rsa.RSAPublicKey | None:
    """The key `{api_base_url}/public/v1/public-key` serves, or None (said once) if it cannot be had.

    Kick answers `{"data": {"public_key": "-----BEGIN PUBLIC KEY-----..."}, "message": "OK"}`;
    a bare PEM body is accepted too.
    """
    import requests

    from .tls import new_session

    url = f"{api_base_url}/public/v1/public-key"
    try:
        with new_session() as session:  # the shared TLS context (kick_monitor/tls.py): no CA bundle loaded for it
            resp = session.get(url, timeout=timeout, headers={"Accept": "application/json"})
        resp.raise_for_status()
        text = resp.text
        if text.lstrip().startswith("{"):
            data = resp.json().get("data") or {}
            text = data.get("public_key", "") if isinstance(data, dict) else ""
        return load_public_key(text.encode())
    except (requests.RequestException, ValueError, AttributeError) as exc:
        log.warning("webhook public key not fetched from %s (%s)", url, str(exc).splitlines()[0][:200])
        return None


def choose_public_key(pem_path: Path | None, api_base_url: str, timeout: float = 5.0) -> tuple[rsa.RSAPublicKey, str]:
    """The key to verify with and where it came from (file, API, or the shipped one).

    A configured file that cannot be read or parsed is an error (PublicKeyError): the operator
    asked for it, so falling back silently would verify against the wrong key.
    """
    if pem_path is not None:
        try:
            pem = pem_path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or exc
            raise PublicKeyError(f"KICK_MONITOR_WEBHOOK_PUBLIC_KEY={pem_path}: cannot read: {reason}") from None
        try:
            return load_public_key(pem), str(pem_path)
        except PublicKeyError as exc:
            raise PublicKeyError(f"KICK_MONITOR_WEBHOOK_PUBLIC_KEY={pem_path}: {exc}") from None
    fetched = fetch_public_key(api_base_url, timeout)
    if fetched is not None:
        return fetched, f"{api_base_url}/public/v1/public-key"
    return load_public_key(KICK_PUBLIC_KEY_PEM), "the key published in Kick's docs"


def parse_timestamp(text: str) -> float:
    """RFC 3339 (`2026-11-30T10:00:00Z`, `...+11:00`, any fraction) → epoch seconds; ValueError otherwise."""
    stamp = datetime.fromisoformat(text.strip())
    if stamp.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    return stamp.timestamp()


@dataclass(frozen=True, slots=True)
class Verified:
    """What a verified delivery's headers say: the message id and Kick's send time (epoch s)."""

    message_id: str
    sent_at: float


class Verifier:
    """Checks signature and age of one delivery; thread-safe (the key object is immutable)."""

    def __init__(self, key: rsa.RSAPublicKey, max_age: float, future_skew: float = FUTURE_SKEW) -> None:
        self.key = key
        self.max_age = max_age
        self.future_skew = future_skew

    def verify(self, message_id: str | None, timestamp: str | None, body: bytes, signature: str | None,
               now: float) -> Verified:
        """Return the verified headers, or raise Rejected (bad_signature or stale)."""
        if not message_id or not timestamp or not signature:
            raise Rejected("bad_signature", "missing Kick-Event-Message-Id, -Message-Timestamp or -Signature")
        if len(signature) > MAX_SIGNATURE_CHARS:
            raise Rejected("bad_signature", "signature too long")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise Rejected("bad_signature", "signature is not base64") from None
        signed = b"%s.%s.%s" % (message_id.encode(), timestamp.encode(), body)
        try:
            self.key.verify(raw, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise Rejected("bad_signature", "signature does not verify") from None
        try:
            sent_at = parse_timestamp(timestamp)
        except ValueError:
            raise Rejected("stale", "Kick-Event-Message-Timestamp is not RFC 3339") from None
        if sent_at < now - self.max_age:
            raise Rejected("stale", f"message is {now - sent_at:.0f}s old (limit {self.max_age:.0f}s)")
        if sent_at > now + self.future_skew:
            raise Rejected("stale", f"message is stamped {sent_at - now:.0f}s in the future")
        return Verified(message_id, sent_at)


def sign(private_key: rsa.RSAPrivateKey, message_id: str, timestamp: str, body: bytes) -> str:
    """The `Kick-Event-Signature` Kick would send (tests, benchmarks; the simulator has its own)."""
    signed = b"%s.%s.%s" % (message_id.encode(), timestamp.encode(), body)
    return base64.b64encode(private_key.sign(signed, padding.PKCS1v15(), hashes.SHA256())).decode()
