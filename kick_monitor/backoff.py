"""When to reconnect to Pusher: close-code classification and a jittered back-off.

Pusher's close and error codes say what the client should do (shared/pusher/README.md):
4000-4099 never reconnect unchanged, 4100-4199 back off from at least 1 s, 4200-4299
reconnect at once, everything else back off. "At once" still gets a small jittered delay
that grows while failures repeat: a server in shutdown answers every immediate retry with
4200 again (pusher-js made ~290 retries in that window, Pysher thousands a second).

Delays use *equal jitter*: half of the exponential step is fixed, half random. Full jitter
can draw ~0 s every time, so it can neither promise a floor (4100 >= 1 s) nor bound how
many attempts fit in an outage; equal jitter does both and still spreads clients out.

Example::

    policy = ReconnectPolicy()
    policy.connected(now)                      # after connection_established
    delay = policy.delay(CloseAction.RECONNECT_FAST, now)
"""

from __future__ import annotations

import enum
import random


class CloseAction(enum.Enum):
    """What to do after a close code or a `pusher:error` code."""

    FATAL = "fatal"  # 4000-4099: configuration error, do not reconnect
    BACKOFF = "backoff"  # 4100-4199: over capacity, >= 1 s exponential back-off
    RECONNECT_FAST = "reconnect_fast"  # 4200-4299: reconnect after a small delay
    RECONNECT = "reconnect"  # anything else: abnormal, back off and reconnect


def classify_close(code: int | None) -> CloseAction:
    """The client action for a websocket close code or a `pusher:error` code."""
    if code is None:
        return CloseAction.RECONNECT
    if 4000 <= code <= 4099:
        return CloseAction.FATAL
    if 4100 <= code <= 4199:
        return CloseAction.BACKOFF
    if 4200 <= code <= 4299:
        return CloseAction.RECONNECT_FAST
    return CloseAction.RECONNECT


class ReconnectPolicy:
    """Exponential back-off with equal jitter, capped; one failure count for all actions.

    Attempt k (k = failures since the last stable connection) waits
    `c/2 + uniform(0, c/2)` with `c = min(cap, base * 2**k)`, `base` chosen by the
    action; BACKOFF additionally never waits less than `backoff_floor`. The count resets
    only when a failure ends a connection that stayed up for `stable_after` seconds, so a
    server that accepts and then drops at once still sees growing delays.
    Time is passed in (monotonic seconds) and `rng` is injectable, for tests.
    """

    def __init__(
        self,
        *,
        fast_base: float = 0.2,
        reconnect_base: float = 1.0,
        backoff_base: float = 2.0,
        backoff_floor: float = 1.0,
        cap: float = 30.0,
        stable_after: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if (
            min(fast_base, reconnect_base, backoff_base, cap) <= 0
            or backoff_floor > cap
        ):
            raise ValueError("bases and cap must be positive, backoff_floor <= cap")
        self.cap = cap
        self.backoff_floor = backoff_floor
        self.stable_after = stable_after
        self.failures = 0
        self._base = {
            CloseAction.RECONNECT_FAST: fast_base,
            CloseAction.RECONNECT: reconnect_base,
            CloseAction.BACKOFF: backoff_base,
        }
        self._rng = rng if rng is not None else random.Random()
        self._up_since: float | None = None

    def connected(self, now: float) -> None:
        """A connection was established at `now`."""
        self._up_since = now

    def delay(self, action: CloseAction, now: float) -> float:
        """Seconds to wait before the next attempt, after a failure of kind `action`."""
        if action is CloseAction.FATAL:
            raise ValueError("FATAL is not retried")
        if self._up_since is not None and now - self._up_since >= self.stable_after:
            self.failures = 0
        self._up_since = None
        step = min(self.cap, self._base[action] * 2.0 ** min(self.failures, 64))
        self.failures += 1
        wait = step / 2 + self._rng.uniform(0.0, step / 2)
        if action is CloseAction.BACKOFF:
            wait = max(wait, self.backoff_floor)
        return wait

    def min_delay(self, action: CloseAction, failures: int) -> float:
        """The smallest delay `delay` can return after `failures` failures (for bounds)."""
        step = min(self.cap, self._base[action] * 2.0 ** min(failures, 64))
        floor = self.backoff_floor if action is CloseAction.BACKOFF else 0.0
        return max(step / 2, floor)
