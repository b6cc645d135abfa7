"""TokenBucket: the laws a rate limit must keep, over generated request times."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.rate import TokenBucket

rates = st.floats(min_value=0.5, max_value=10_000, allow_nan=False, allow_infinity=False)
bursts = st.integers(min_value=1, max_value=5_000)
gaps = st.lists(
    st.floats(min_value=0, max_value=2.0, allow_nan=False, allow_infinity=False), max_size=300
)


def _times(start: float, steps: list[float]) -> list[float]:
    out, now = [], start
    for step in steps:
        now += step
        out.append(now)
    return out


@given(rates, bursts, gaps)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    times = _times(0.0, steps)
    accepted = [t for t in times if bucket.take(t) == 0.0]
    # Over any window [a, b] of accepted requests: at most burst + rate * (b - a).
    for i, first in enumerate(accepted):
        for j in range(i, min(len(accepted), i + 50)):
            assert j - i + 1 <= burst + rate * (accepted[j] - first) + 1e-6


@given(rates, bursts, st.integers(min_value=1, max_value=300))
def test_a_client_below_the_rate_is_never_refused(rate: float, burst: int, count: int) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    for n in range(count):
        assert bucket.take(n / rate) == 0.0


@given(rates, bursts, gaps)
def test_waiting_the_time_returned_is_enough(rate: float, burst: int, steps: list[float]) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    for now in _times(0.0, steps):
        wait = bucket.take(now)
        assert wait >= 0.0
        if wait > 0:
            assert wait <= 1.0 / rate + 1e-9
            # On a copy: taking at now + wait here would move this bucket's clock past the
            # next step's time (a clock going backwards adds nothing, by design).
            assert copy.copy(bucket).take(now + wait) == 0.0


@given(rates, bursts, gaps)
def test_a_refusal_takes_nothing_and_tokens_stay_within_zero_and_burst(
    rate: float, burst: int, steps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    for now in _times(0.0, steps):
        before = bucket.tokens(now)
        assert 0.0 <= before <= burst
        if bucket.take(now) > 0:
            assert bucket.tokens(now) == before


def test_a_burst_then_refused_then_refilled() -> None:
    bucket = TokenBucket(10.0, 3, 100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.1)
    assert bucket.take(100.05) == pytest.approx(0.05)
    assert bucket.take(100.1) == 0.0


def test_a_clock_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(1.0, 1, 10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)
    assert bucket.take(10.5) == pytest.approx(0.5)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_nonsense_parameters_are_a_bug(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate, burst, 0.0)
