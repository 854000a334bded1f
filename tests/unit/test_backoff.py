"""Close-code classification and the reconnect back-off, on injected time and randomness."""

from __future__ import annotations

import itertools
import random

import pytest

from kick_monitor.backoff import CloseAction, ReconnectPolicy, classify_close

pytestmark = pytest.mark.timeout(30)


class Extreme(random.Random):
    """An rng whose uniform() always returns one end of the range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize(
    ("codes", "action"),
    [
        ((4000, 4001, 4003, 4004, 4009, 4099), CloseAction.FATAL),
        ((4100, 4150, 4199), CloseAction.BACKOFF),
        ((4200, 4201, 4202, 4299), CloseAction.RECONNECT_FAST),
        (
            (
                4300,
                4301,
                4999,
                1000,
                1001,
                1002,
                1003,
                1004,
                1005,
                1006,
                1011,
                3999,
                None,
            ),
            CloseAction.RECONNECT,
        ),
    ],
)
def test_classification_table(
    codes: tuple[int | None, ...], action: CloseAction
) -> None:
    assert {classify_close(code) for code in codes} == {action}


@pytest.mark.parametrize(
    ("action", "low", "high"),
    [
        # equal jitter: [step/2, step], step = min(cap, base * 2**k)
        (CloseAction.RECONNECT, [0.5, 1, 2, 4, 8, 15, 15], [1, 2, 4, 8, 16, 30, 30]),
        (
            CloseAction.RECONNECT_FAST,
            [0.1, 0.2, 0.4, 0.8, 1.6],
            [0.2, 0.4, 0.8, 1.6, 3.2],
        ),
        # 41xx: base 2 s, never below 1 s
        (CloseAction.BACKOFF, [1, 2, 4, 8, 15, 15], [2, 4, 8, 16, 30, 30]),
    ],
)
def test_growth_and_cap_at_both_ends_of_the_jitter(
    action: CloseAction, low: list[float], high: list[float]
) -> None:
    for rng, expected in ((Extreme(False), low), (Extreme(True), high)):
        policy = ReconnectPolicy(rng=rng)
        assert [policy.delay(action, 0.0) for _ in expected] == pytest.approx(expected)


def test_jitter_stays_within_bounds_and_spreads() -> None:
    policy = ReconnectPolicy(rng=random.Random(7))
    for failures in range(40):
        step = min(30.0, 1.0 * 2**failures)
        delay = policy.delay(CloseAction.RECONNECT, 0.0)
        assert step / 2 <= delay <= step <= 30.0
        assert delay >= policy.min_delay(CloseAction.RECONNECT, failures)
    firsts = {
        round(ReconnectPolicy().delay(CloseAction.RECONNECT, 0.0), 6) for _ in range(50)
    }
    assert len(firsts) > 40  # clients do not reconnect in lock-step


def test_backoff_is_at_least_one_second_even_with_a_small_base() -> None:
    policy = ReconnectPolicy(backoff_base=0.1, rng=Extreme(False))
    assert min(policy.delay(CloseAction.BACKOFF, 0.0) for _ in range(10)) == 1.0


def test_4200_floor_is_small_but_grows_when_the_server_keeps_refusing() -> None:
    policy = ReconnectPolicy(rng=random.Random(3))
    now = 0.0
    delays = []
    for _ in range(8):  # each connection is answered with 4200 right away
        policy.connected(now)
        delay = policy.delay(CloseAction.RECONNECT_FAST, now + 0.01)
        delays.append(delay)
        now += delay + 0.01
    assert 0.1 <= delays[0] <= 0.2
    # Attempt k waits within [step/2, step], attempt k+1 within [step, 2 step].
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert delays[-1] >= 0.2 * 2**7 / 2


def test_reset_only_after_a_stable_connection() -> None:
    policy = ReconnectPolicy(rng=Extreme(False), stable_after=30.0)
    for _ in range(5):
        policy.delay(CloseAction.RECONNECT, 0.0)
    policy.connected(100.0)
    assert policy.delay(CloseAction.RECONNECT, 129.0) == 15.0  # up 29 s: still failing
    policy.connected(200.0)
    assert policy.delay(CloseAction.RECONNECT, 230.0) == 0.5  # up 30 s: start over
    assert policy.failures == 1
    # A failure without any connection in between never resets.
    assert policy.delay(CloseAction.RECONNECT, 10_000.0) == 1.0


def test_fatal_is_never_scheduled_and_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy().delay(CloseAction.FATAL, 0.0)
    with pytest.raises(ValueError):
        ReconnectPolicy(cap=0)
    with pytest.raises(ValueError):
        ReconnectPolicy(backoff_floor=60, cap=30)


def attempts_within(policy: ReconnectPolicy, window: float, action: CloseAction) -> int:
    """Connection attempts in `window` seconds if every attempt fails at once."""
    now, attempts = 0.0, 0
    while now <= window:
        attempts += 1
        now += policy.delay(action, now)
    return attempts


def test_refused_connections_cannot_storm() -> None:
    # Lower bounds 0.5 + 1 + 2 + 4 = 7.5 s, + 8 > 10 s: at most 5 attempts in 10 s.
    assert (
        attempts_within(
            ReconnectPolicy(rng=Extreme(False)), 10.0, CloseAction.RECONNECT
        )
        == 5
    )
    worst = max(
        attempts_within(
            ReconnectPolicy(rng=random.Random(seed)), 10.0, CloseAction.RECONNECT
        )
        for seed in range(200)
    )
    assert worst <= 5
    # Even "reconnect immediately" stays far from pusher-js' ~290 retries (or Pysher's 746).
    fast = attempts_within(
        ReconnectPolicy(rng=Extreme(False)), 10.0, CloseAction.RECONNECT_FAST
    )
    assert fast <= 8
