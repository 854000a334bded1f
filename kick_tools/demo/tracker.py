"""Joins what the service committed with what the simulator sent: counts, rate, latency, recent rows.

Feed it the simulator's truth first, then the rows committed since the last poll (read in
the opposite order: database, then truth, so every committed row's send is already known):

>>> tracker = Tracker()
>>> rows = db.events_since(tracker.last_id)
>>> tracker.add_truth(sim.truth(since=tracker.truth_seq))
>>> tracker.add_events(rows)
>>> tracker.percentile(0.99)   # frame sent → row committed, ms
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .store import Event

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Committed:
    """One committed transition as the live view shows it."""

    recorded_at: float
    slug: str
    status: str
    source: str
    latency_ms: float
    from_send: bool  # measured from the simulator's send time (else from the service's receive time)


@dataclass(slots=True)
class _Sent:
    status: str
    sent_wall: float
    delivered: bool


class Tracker:
    """Transitions sent and committed, their latency and the last few of them."""

    def __init__(self, recent: int = 10, window: float = 5.0) -> None:
        self.truth_seq = 0  # truth rows consumed (the next `since`)
        self.last_id = 0  # history rows consumed
        self.sent = 0  # status transitions the simulator made
        self.committed = 0  # history rows that are transitions of the simulator's world
        self.learned = 0  # unknown → known rows: initial status learned from the API
        self.latencies: list[float] = []  # from_send latencies in ms, kept sorted
        self.recent: deque[Committed] = deque(maxlen=recent)
        self.window = window
        self._started = time.time()
        self._times: deque[float] = deque()
        self._pending: dict[int, deque[_Sent]] = {}

    def add_truth(self, rows: Iterable[dict[str, Any]]) -> None:
        """Record the simulator's transitions (title updates, which change no status, are skipped)."""
        for row in rows:
            self.truth_seq = max(self.truth_seq, int(row["seq"]))
            if row["status"] == row["previous_status"]:
                continue
            self.sent += 1
            queue = self._pending.setdefault(int(row["channel_id"]), deque())
            queue.append(_Sent(row["status"], float(row["sent_wall"]), bool(row["delivered"])))

    def add_events(self, events: Iterable[Event]) -> None:
        """Count committed rows and measure each against the send it answers."""
        for event in events:
            self.last_id = max(self.last_id, event.id)
            if event.previous_status == UNKNOWN:
                self.learned += 1
                continue
            self.committed += 1
            sent = self._match(event)
            if sent is not None and sent.delivered and event.source == "pusher":
                latency, from_send = (event.recorded_at - sent.sent_wall) * 1000, True
                bisect.insort(self.latencies, latency)
            else:
                latency, from_send = (event.recorded_at - event.received_at) * 1000, False
            self.recent.append(Committed(event.recorded_at, event.slug, event.status, event.source, latency, from_send))
            self._times.append(event.recorded_at)

    def _match(self, event: Event) -> _Sent | None:
        """The oldest unanswered send of this status for this channel; older ones were superseded."""
        queue = self._pending.get(event.channel_id)
        if not queue:
            return None
        for index, sent in enumerate(queue):
            if sent.status == event.status:
                for _ in range(index + 1):
                    queue.popleft()
                return sent
        return None

    def rate(self, now: float | None = None) -> float:
        """Transitions committed per second over the last `window` seconds."""
        now = time.time() if now is None else now
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()
        span = min(self.window, max(now - self._started, 1e-3))
        return len(self._times) / span

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the send→commit latencies (ms); None before the first."""
        if not self.latencies:
            return None
        return self.latencies[min(len(self.latencies) - 1, int(len(self.latencies) * q))]
