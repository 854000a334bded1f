"""The simulator's webhook signing key: Kick's scheme with a key pair of our own.

Kick signs `{Kick-Event-Message-Id}.{Kick-Event-Message-Timestamp}.{raw body}` with RSA
PKCS#1 v1.5 over SHA-256 and sends it base64-encoded (docs: events/webhook-security.md);
receivers verify with the public key from `GET /public/v1/public-key`. The simulator does the
same with an RSA 2048 pair generated when first needed (about 0.1 s, so simulators that never
deliver webhooks never pay it) or loaded from a PEM file. Tests use `sign()` to build valid
and invalid deliveries of their own.
"""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

KEY_BITS = 2048


def signed_bytes(message_id: str, timestamp: str, body: bytes) -> bytes:
    """What Kick signs: the three values joined by dots, the body raw."""
    return f"{message_id}.{timestamp}.".encode() + body


class WebhookSigner:
    """Holds the private key; thread-safe (sender threads sign concurrently)."""

    def __init__(self, key_file: str | os.PathLike[str] | None = None) -> None:
        self._key_file = Path(key_file) if key_file is not None else None
        self._key: rsa.RSAPrivateKey | None = None
        self._lock = threading.Lock()

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        """The key: loaded from key_file if it exists, else generated (and written there, 0600)."""
        with self._lock:
            if self._key is None:
                self._key = self._load_or_generate()
            return self._key

    def public_key_pem(self) -> str:
        """The public half as Kick publishes its own: SubjectPublicKeyInfo PEM ("BEGIN PUBLIC KEY")."""
        pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode()

    def private_key_pem(self) -> bytes:
        """PKCS#8 PEM of the private key, for tests that sign deliveries themselves."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign_bytes(self, data: bytes) -> str:
        """base64(RSA PKCS#1 v1.5 SHA-256 signature of `data`)."""
        signature = self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode()

    def sign(self, message_id: str, timestamp: str, body: bytes) -> str:
        """The Kick-Event-Signature header value for one delivery."""
        return self.sign_bytes(signed_bytes(message_id, timestamp, body))

    def _load_or_generate(self) -> rsa.RSAPrivateKey:
        if self._key_file is not None and self._key_file.exists():
            key = serialization.load_pem_private_key(self._key_file.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{self._key_file}: not an RSA private key")
            return key
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        if self._key_file is not None:
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            descriptor = os.open(self._key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(pem)
        return key


def corrupt_signature(signature: str) -> str:
    """A well-formed base64 signature that does not verify (one bit of the RSA block flipped)."""
    raw = bytearray(base64.b64decode(signature))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()
