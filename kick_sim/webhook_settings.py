"""Webhook delivery settings: retries and capacity, and the faults that misdeliver on purpose.

Faults model Kick's reported lateness, drops and repeats. Every fault knob is a probability
per message (or per attempt, for corrupt) or a (low, high) range in seconds drawn uniformly
from the simulator's seeded RNG, so a run is repeatable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

Range = tuple[float, float]
PROBABILITIES = ("delay_fraction", "drop", "duplicate", "reorder", "corrupt", "replay")
RANGES = ("delay", "duplicate_after", "replay_after")


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """Retries and capacity; Kick documents no retry schedule, so every number is a knob."""

    timeout: float = 10.0  # per attempt: connect + answer
    retry_base: float = 1.0  # first retry after this; doubles per attempt
    retry_max: float = 60.0  # longest wait between attempts
    max_attempts: int = 10  # then the message is given up
    unsubscribe_after: int = 20  # consecutive failed attempts of one subscription: Kick drops it
    workers: int = 4  # sender threads
    queue_size: int = 100_000  # messages waiting (delayed, held, retrying) at most
    # Kick-Event-Message-Timestamp: when the message is first sent ("send", what Kick's docs
    # describe), or when the change happened ("event": a delayed message then looks as old as
    # it is late, which a receiver's max-age check may refuse). Kept for every retry either way.
    stamp: str = "send"

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.retry_base < 0 or self.retry_max < self.retry_base:
            raise ValueError("webhook timeout must be > 0 and 0 <= retry_base <= retry_max")
        if self.stamp not in ("send", "event"):
            raise ValueError(f"webhook stamp must be send|event, got {self.stamp!r}")
        if self.max_attempts < 1 or self.unsubscribe_after < 1 or self.workers < 1 or self.queue_size < 1:
            raise ValueError("webhook max_attempts, unsubscribe_after, workers and queue_size must be >= 1")

    def backoff(self, attempt: int) -> float:
        """Wait before attempt `attempt + 1` (attempt counts from 1)."""
        return float(min(self.retry_max, self.retry_base * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class WebhookFaults:
    """All off by default; see each field."""

    delay: Range = (0.0, 0.0)  # extra wait before the first attempt (Kick: seconds to hours late)
    delay_fraction: float = 1.0  # share of messages that get `delay` (when the range is not 0)
    drop: float = 0.0  # never sent at all
    duplicate: float = 0.0  # sent a second time (same id, timestamp, signature) `duplicate_after` later
    duplicate_after: Range = (0.0, 1.0)
    reorder: float = 0.0  # held back and released after later ones (see reorder_depth)
    reorder_depth: int = 2  # held messages are released, newest first, once this many are held
    reorder_max_hold: float = 5.0  # ... or once the oldest held one waited this long (seconds)
    corrupt: float = 0.0  # per attempt: the signature does not verify (a retry may carry a good one)
    replay: float = 0.0  # re-sent unchanged (old timestamp) `replay_after` after it was first sent
    replay_after: Range = (30.0, 60.0)

    def __post_init__(self) -> None:
        for name in PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"webhook fault {name} must be a probability 0..1, got {value}")
        for name in RANGES:
            low, high = getattr(self, name)
            if not 0.0 <= low <= high:
                raise ValueError(f"webhook fault {name} must be a range 0 <= low <= high, got {(low, high)}")
        if self.reorder_depth < 2 or self.reorder_max_hold <= 0:
            raise ValueError("reorder_depth must be >= 2 and reorder_max_hold > 0")

    @property
    def delays(self) -> bool:
        return self.delay[1] > 0 and self.delay_fraction > 0

    def updated(self, changes: dict[str, Any]) -> WebhookFaults:
        """A copy with `changes` applied (JSON values: lists for ranges); ValueError on a bad one."""
        known = {field.name for field in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown webhook fault(s): {', '.join(sorted(unknown))}")
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name in RANGES:
                clean[name] = parse_range(name, value)
            elif name == "reorder_depth":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError("reorder_depth must be an integer")
                clean[name] = value
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"webhook fault {name} must be a number")
            else:
                clean[name] = float(value)
        return replace(self, **clean)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_range(name: str, value: Any) -> Range:
    """[low, high] (or one number for a fixed value) as a (low, high) tuple."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), float(value)
    if (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        return float(value[0]), float(value[1])
    raise ValueError(f"webhook fault {name} must be [low, high] seconds or one number")


def parse_range_text(text: str) -> Range:
    """CLI form: "LOW:HIGH" or "SECONDS"."""
    low, sep, high = text.partition(":")
    try:
        return (float(low), float(high)) if sep else (float(low), float(low))
    except ValueError:
        raise ValueError(f"expected SECONDS or LOW:HIGH, got {text!r}") from None
