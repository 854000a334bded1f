"""Token bucket, Retry-After parsing and backoff, on an injected clock (no waiting)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from kick_monitor.ratelimit import (
    RetryPolicy,
    TokenBucket,
    backoff_delay,
    parse_retry_after,
)

pytestmark = pytest.mark.timeout(30)


class FakeClock:
    """A monotonic clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make_bucket(rate: float, burst: int) -> tuple[TokenBucket, FakeClock]:
    clock = FakeClock()
    return TokenBucket(rate, burst, clock=clock, sleep=clock.sleep), clock


def test_burst_is_free_then_requests_are_spaced_at_rate() -> None:
    bucket, clock = make_bucket(rate=2.0, burst=3)
    waits = [bucket.acquire() for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.5, 0.5, 0.5])
    assert clock.now - 1000.0 == pytest.approx(1.5)


def test_rate_never_exceeds_burst_plus_rate_times_elapsed() -> None:
    bucket, clock = make_bucket(rate=5.0, burst=4)
    sent_at = []
    for _ in range(200):
        bucket.acquire()
        sent_at.append(clock.now)
    for start in sent_at:
        in_window = sum(1 for t in sent_at if start <= t < start + 1.0)
        assert in_window <= 4 + 5
    elapsed = sent_at[-1] - sent_at[0]
    assert elapsed == pytest.approx((200 - 4) / 5.0)


def test_idle_time_refills_up_to_burst_only() -> None:
    bucket, clock = make_bucket(rate=1.0, burst=2)
    bucket.acquire()
    bucket.acquire()
    clock.now += 100.0  # a long idle period must not bank 100 tokens
    assert [bucket.acquire() for _ in range(3)] == pytest.approx([0.0, 0.0, 1.0])


def test_try_acquire_never_waits() -> None:
    bucket, clock = make_bucket(rate=1.0, burst=1)
    assert bucket.try_acquire() is True
    assert bucket.try_acquire() is False
    clock.now += 1.0
    assert bucket.try_acquire() is True
    assert clock.slept == []


def test_defer_holds_everyone_back_then_resumes_at_rate_without_burst() -> None:
    bucket, _ = make_bucket(rate=2.0, burst=5)
    bucket.defer(3.0)
    assert bucket.try_acquire() is False
    assert bucket.acquire() == pytest.approx(3.0)
    # after a 429 the saved-up burst is gone: paced at 2/s straight away
    assert bucket.acquire() == pytest.approx(0.5)
    assert bucket.acquire() == pytest.approx(0.5)


def test_defer_shorter_than_current_wait_changes_nothing() -> None:
    bucket, _ = make_bucket(rate=1.0, burst=1)
    bucket.defer(5.0)
    bucket.defer(1.0)
    assert bucket.acquire() == pytest.approx(5.0)


def test_waited_total_is_counted() -> None:
    bucket, _ = make_bucket(rate=4.0, burst=1)
    for _ in range(5):
        bucket.acquire()
    assert bucket.waited == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bad_parameters_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_threads_share_one_budget() -> None:
    """Real clock, real threads: 4 × 10 requests at 50/s with burst 5 take ≥ 0.7 s."""
    bucket = TokenBucket(50.0, 5)
    stamps: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(10):
            bucket.acquire()
            with lock:
                stamps.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(stamps) == 40
    assert time.monotonic() - started >= (40 - 5) / 50.0 - 0.02


# ---------------------------------------------------------------- Retry-After

NOW = datetime(2025, 9, 14, 16, 0, 0, tzinfo=UTC).timestamp()


def http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("3600", 60.0),  # capped
        ("inf", 60.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, cap=60.0, now=lambda: NOW) == expected


def test_retry_after_http_date() -> None:
    assert parse_retry_after(http_date(12), now=lambda: NOW) == pytest.approx(12.0)
    assert parse_retry_after(http_date(-30), now=lambda: NOW) == 0.0
    assert parse_retry_after(http_date(86400), cap=30.0, now=lambda: NOW) == 30.0
    assert parse_retry_after("Sun, 14 Sep 2025 16:00:00 -0000", now=lambda: NOW) is None


# ---------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=4.0)
    lows = [backoff_delay(n, policy, rand=lambda: 0.0) for n in range(1, 7)]
    highs = [backoff_delay(n, policy, rand=lambda: 1.0) for n in range(1, 7)]
    assert highs == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert lows == [h / 2 for h in highs]  # half of the delay is always waited


def test_retry_policy_validation() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(rate_limited_retries=-1)
