"""Running totals kept by plain code, exported to Prometheus counters as increments.

The Pusher session, the frame parser and the Kick API client count what happens in
ordinary ints and dicts (they know nothing of Prometheus, and their unit tests need none).
A process that serves metrics calls `advance` with each total now and then (a worker does
it once a second); the counter grows by the difference since the last call.

>>> from kick_monitor import metrics
>>> deltas = CounterDeltas()
>>> deltas.advance(metrics.RECONNECTS, 3, shard="0", reason="pong_timeout")   # +3
>>> deltas.advance(metrics.RECONNECTS, 5, shard="0", reason="pong_timeout")   # +2
"""

from __future__ import annotations

from typing import Any

_Key = tuple[int, tuple[tuple[str, str], ...]]


class CounterDeltas:
    """Remembers the last total exported per (counter, labels) and increments by the difference."""

    def __init__(self) -> None:
        self._last: dict[_Key, float] = {}

    def advance(self, counter: Any, total: float, **labels: str) -> None:
        """Bring `counter{labels}` up to `total`; a smaller total means the source restarted from 0."""
        key = (id(counter), tuple(sorted(labels.items())))
        last = self._last.get(key, 0.0)
        delta = total - last if total >= last else total
        if delta > 0:
            (counter.labels(**labels) if labels else counter).inc(delta)
        self._last[key] = total

    def advance_api(self, m: Any, api: Any) -> None:
        """A Kick API client's running totals (`ApiStatsSnapshot`) into the API counters of `m`."""
        for (endpoint, status), total in api.requests.items():
            self.advance(m.API_REQUESTS, total, endpoint=endpoint, status=status)
        self.advance(m.TOKEN_REFRESHES, api.token_refreshes)
        self.advance(m.API_RETRIES, api.retries)
        self.advance(m.API_RATE_LIMITED, api.rate_limited)
        self.advance(m.API_THROTTLED_SECONDS, api.throttled_seconds)
        if getattr(api, "current_rate", 0.0) > 0:
            m.API_RATE.set(api.current_rate)
