"""OAuth client-credentials tokens that really expire, so refresh paths get exercised."""

from __future__ import annotations

import secrets
import time


class TokenStore:
    """Issues bearer tokens for one app (client id + secret) and checks them."""

    def __init__(self, client_id: str, client_secret: str, ttl: float) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.ttl = ttl
        self.revoked = False
        self.issued_total = 0
        self.refused_total = 0
        self._expiry: dict[str, float] = {}  # token -> monotonic deadline

    def issue(self, client_id: str, client_secret: str) -> tuple[str, int] | None:
        """(token, expires_in seconds) for the right credentials, None otherwise."""
        if self.revoked or not (
            secrets.compare_digest(client_id, self.client_id)
            and secrets.compare_digest(client_secret, self.client_secret)
        ):
            self.refused_total += 1
            return None
        now = time.monotonic()
        if len(self._expiry) > 10_000:
            self._expiry = {token: end for token, end in self._expiry.items() if end > now}
        token = secrets.token_urlsafe(32)
        self._expiry[token] = now + self.ttl
        self.issued_total += 1
        return token, max(int(self.ttl), 1)

    def set_ttl(self, seconds: float) -> None:
        """Lifetime of tokens issued from now on."""
        if seconds <= 0:
            raise ValueError("token ttl must be > 0")
        self.ttl = seconds

    def revoke(self, revoked: bool = True) -> None:
        """While revoked the token endpoint refuses the secret; issued tokens live on."""
        self.revoked = revoked

    def rotate(self, client_secret: str) -> None:
        """The app's secret is now `client_secret`: the old one is refused; issued tokens live on."""
        if not client_secret:
            raise ValueError("client_secret must not be empty")
        self.client_secret = client_secret

    def is_valid(self, token: str) -> bool:
        """True while the token exists and has not reached its expiry."""
        deadline = self._expiry.get(token)
        return deadline is not None and time.monotonic() < deadline

    def expire_all(self) -> int:
        """Invalidate every token issued so far; returns how many there were."""
        count = len(self._expiry)
        self._expiry.clear()
        return count
