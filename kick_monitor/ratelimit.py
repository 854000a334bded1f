"""Client-side pacing for Kick's REST API: a token bucket, Retry-After parsing, backoff.

Kick does not document its rate limits (429s are reported at ~690 requests/min), so the
client paces itself well below that instead of discovering the limit by being refused.
Everything here is pure or takes its clock and sleep as arguments, so it is tested
without a server and without waiting.

    bucket = TokenBucket(rate=5.0, burst=10)
    bucket.acquire()                      # blocks until a request may be sent
    bucket.defer(parse_retry_after("7"))  # a 429 pauses every caller, not just one
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class RateBudget(Protocol):
    """What the API client paces itself with: a local `TokenBucket` or a shared budget."""

    waited: float

    @property
    def current_rate(self) -> float: ...

    def acquire(self) -> float: ...

    def defer(self, seconds: float) -> None: ...


class TokenBucket:
    """Thread-safe token bucket: `burst` requests at once, then `rate` per second.

    `acquire()` reserves a token under the lock and sleeps outside it, so concurrent
    callers queue up in order without holding the lock while they wait. `defer()` makes
    every caller wait until a moment (a server's Retry-After), shared by all threads.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1 (got rate={rate}, burst={burst})")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        # Tokens accrue from `_updated` on; `defer()` moves it into the future.
        self._updated = clock()
        self.waited = 0.0  # total seconds callers were told to wait (for metrics)

    @property
    def current_rate(self) -> float:
        """Requests per second this bucket allows (constant: only the shared budget adapts)."""
        return self.rate

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
            self._updated = now

    def reserve(self) -> float:
        """Take one token now and return how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            self._tokens -= 1.0  # may go negative: later callers queue behind this one
            wait = max(0.0, self._updated - now + max(0.0, -self._tokens) / self.rate)
            self.waited += wait
            return wait

    def acquire(self) -> float:
        """Block until one request may be sent; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def try_acquire(self) -> bool:
        """Take a token only if one is available right now (never waits)."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            if self._tokens < 1.0 or self._updated > now:
                return False
            self._tokens -= 1.0
            return True

    def defer(self, seconds: float) -> None:
        """Hold every caller back for `seconds` from now (e.g. after a 429).

        Tokens stop accruing until then and any saved-up burst is dropped, so traffic
        resumes at `rate` rather than with a burst into a server that just said "slow down".
        """
        with self._lock:
            now = self._clock()
            self._refill(now)
            until = now + max(0.0, seconds)
            if until > self._updated:
                self._updated = until
                self._tokens = min(self._tokens, 1.0)


def parse_retry_after(
    value: str | None, *, cap: float = 60.0, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped.

    Returns None when the header is missing or unreadable, so the caller falls back to its
    own backoff. A date in the past means "now" (0). The cap keeps a hostile or buggy
    header from parking the client for hours.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate gives naive for "-0000"
            return None
        seconds = when.timestamp() - now()
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), cap)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try before giving up on Kick.

    `attempts` bounds tries for 5xx / network errors / timeouts (exponential backoff with
    jitter between them); `rate_limited_retries` bounds extra tries after 429s, each
    waiting Retry-After (capped at `retry_after_cap`) or the backoff when it is absent.
    """

    attempts: int = 4
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    rate_limited_retries: int = 5
    retry_after_cap: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.rate_limited_retries < 0:
            raise ValueError("attempts must be >= 1 and rate_limited_retries >= 0")


def backoff_delay(
    attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random
) -> float:
    """Delay before retry number `attempt` (1-based): half fixed, half random ("equal jitter").

    The fixed half guarantees real spacing between tries; the random half keeps many
    workers that failed together from retrying in lockstep.
    """
    ceiling = min(policy.backoff_cap, policy.backoff_base * (2 ** max(0, attempt - 1)))
    return float(ceiling / 2 + rand() * ceiling / 2)
