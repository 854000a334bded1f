"""Runtime-switchable misbehaviour of Kick's HTTP side: 5xx, 429, Cloudflare 403, slowness.

Each of the three surfaces (OAuth, official API, web API) has its own mode, so a test can,
say, block the web API behind Cloudflare while the official API keeps working, which is
what datacenter IPs see in practice.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from typing import Literal, get_args

from kick_sim.http_server import Response, json_response, text_response

ApiMode = Literal["error_500", "rate_limit", "cloudflare_403", "slow"]
Surface = Literal["oauth", "official", "web"]
API_MODES: tuple[str, ...] = get_args(ApiMode)
SURFACES: tuple[str, ...] = get_args(Surface)

CLOUDFLARE_HTML = """<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"><meta name="robots" content="noindex,nofollow">
</head><body><div class="main-wrapper" role="main"><div class="main-content">
<h1 class="zone-name-title h1">kick.com</h1><h2 class="h2" id="challenge-running">Checking if the site connection is
secure</h2><noscript>Enable JavaScript and cookies to continue</noscript></div></div></body></html>
"""


class RateLimiter:
    """Fixed window: at most `requests` per `per_seconds`, then 429 until the window ends."""

    def __init__(self, requests: int, per_seconds: float) -> None:
        if requests < 1 or per_seconds <= 0:
            raise ValueError("rate limit needs requests >= 1 and per_seconds > 0")
        self.requests = requests
        self.per_seconds = per_seconds
        self._window_start = time.monotonic()
        self._count = 0

    def retry_after(self) -> float | None:
        """Count one request; seconds to wait if it is over the limit, else None."""
        now = time.monotonic()
        if now - self._window_start >= self.per_seconds:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count <= self.requests:
            return None
        return self._window_start + self.per_seconds - now


class ApiFaults:
    """The current fault settings, consulted before every API answer."""

    def __init__(self, delay: float, rate_limit: tuple[int, float] | None) -> None:
        self.modes: dict[str, str | None] = dict.fromkeys(SURFACES)
        self.delay = delay
        self.error_status = 500
        self.retry_after = 1
        self.cloudflare_body = "html"
        self._blocks = 0  # "mixed" alternates the JSON policy block and the HTML challenge
        self.limiter = RateLimiter(*rate_limit) if rate_limit else None

    def set_mode(
        self,
        mode: str | None,
        surface: str = "all",
        error_status: int = 500,
        retry_after: int = 1,
        cloudflare_body: str = "html",
    ) -> None:
        """Switch `surface` ("all", "oauth", "official" or "web") to `mode` (None = healthy)."""
        if mode is not None and mode not in API_MODES:
            raise ValueError(f"mode must be one of {API_MODES} or null, got {mode!r}")
        if surface != "all" and surface not in SURFACES:
            raise ValueError(f"surface must be all or one of {SURFACES}, got {surface!r}")
        if not 500 <= error_status <= 599 or retry_after < 0 or cloudflare_body not in ("html", "json", "mixed"):
            raise ValueError("error_status must be 5xx, retry_after >= 0, cloudflare_body html|json|mixed")
        for name in SURFACES if surface == "all" else (surface,):
            self.modes[name] = mode
        self.error_status, self.retry_after, self.cloudflare_body = error_status, retry_after, cloudflare_body

    def set_delay(self, seconds: float) -> None:
        """How long "slow" mode holds each answer."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self.delay = seconds

    def set_rate_limit(self, requests: int | None, per_seconds: float = 60.0) -> None:
        """Limit all API requests to `requests` per `per_seconds`; None removes the limit."""
        self.limiter = RateLimiter(requests, per_seconds) if requests is not None else None

    async def intercept(self, surface: str) -> Response | None:
        """A fault answer for this request, or None to answer normally (after any delay)."""
        if self.limiter is not None:
            wait = self.limiter.retry_after()
            if wait is not None:
                return too_many_requests(math.ceil(wait))
        mode = self.modes[surface]
        if mode == "slow":
            await asyncio.sleep(self.delay)
        elif mode == "error_500":
            return json_response(self.error_status, {"message": "Server Error", "data": None})
        elif mode == "rate_limit":
            return too_many_requests(self.retry_after)
        elif mode == "cloudflare_403":
            body = self.cloudflare_body
            if body == "mixed":
                self._blocks += 1
                body = "json" if self._blocks % 2 else "html"
            return cloudflare_block(body)
        return None


def too_many_requests(retry_after: int) -> Response:
    return json_response(429, {"message": "Too Many Requests", "data": None}, {"Retry-After": str(retry_after)})


def cloudflare_block(body: str) -> Response:
    """Cloudflare's answer to a blocked client: a challenge page or the JSON policy block."""
    if body == "json":
        reference = secrets.token_hex(8)
        return json_response(403, {"error": "Request blocked by security policy.", "reference": reference})
    response = text_response(403, CLOUDFLARE_HTML, "text/html; charset=UTF-8")
    response.headers.update({"Server": "cloudflare", "cf-mitigated": "challenge"})
    return response
