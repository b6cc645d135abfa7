"""The circuit breaker (relay.core.circuit): a model-checked state machine, no clock."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay.core.circuit import BreakerState, CircuitBreaker


def test_opens_after_consecutive_failures_then_one_trial_closes_it() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_s=10.0)
    for now in (0.0, 1.0):
        assert breaker.allow(now)
        breaker.failed(now, trial=False)
    assert breaker.allow(2.0)
    breaker.succeeded()  # a success in between: the count starts again
    for now in (3.0, 4.0, 5.0):
        assert breaker.allow(now)
        breaker.failed(now, trial=False)
    assert breaker.state(5.0) is BreakerState.OPEN
    assert not breaker.allow(14.9)
    assert breaker.state(15.0) is BreakerState.HALF_OPEN
    assert breaker.allow(15.0)  # the trial
    assert not breaker.allow(15.1)  # only one at a time
    breaker.succeeded()
    assert breaker.state(15.2) is BreakerState.CLOSED and breaker.allow(15.2)


def test_a_failed_trial_opens_it_for_another_period() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_s=5.0)
    breaker.failed(0.0, trial=False)
    assert breaker.allow(5.0)
    breaker.failed(6.0, trial=True)
    assert not breaker.allow(10.9) and breaker.allow(11.0)


def test_an_abandoned_trial_lets_the_next_call_try() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_s=1.0)
    breaker.failed(0.0, trial=False)
    assert breaker.allow(1.0)
    breaker.abandoned(trial=True)
    assert breaker.allow(1.0)


def test_a_straggler_ending_does_not_let_a_second_trial_go() -> None:
    """Found by the state machine below: a call let through before the breaker opened,
    abandoned (or failing) while the trial is in flight, let another trial through."""
    breaker = CircuitBreaker(failure_threshold=1, open_s=1.0)
    assert breaker.allow(0.0) and breaker.allow(0.0) and breaker.allow(0.0)  # closed
    breaker.failed(0.0, trial=False)  # the first of them fails: open
    assert breaker.allow(1.0)  # half-open: the trial
    breaker.abandoned(trial=False)  # the second gives up
    assert not breaker.allow(1.0)
    breaker.failed(1.5, trial=False)  # the third fails after the pause: open again
    assert not breaker.allow(2.6)  # half-open once more, but the trial is still out
    breaker.succeeded()  # the trial's verdict
    assert breaker.allow(2.7)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0, open_s=1.0)


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, verdicts and clock steps against a simple model of the rules."""

    THRESHOLD = 3
    OPEN_S = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.breaker = CircuitBreaker(self.THRESHOLD, self.OPEN_S)
        self.now = 0.0
        self.in_flight: list[bool] = []  # calls let through, not settled; True: the trial
        self.streak = 0  # failures since the last success (model)
        self.opened_at: float | None = None

    @rule(step=st.floats(min_value=0.0, max_value=4.0))
    def time_passes(self, step: float) -> None:
        self.now += step

    @rule()
    def call(self) -> None:
        state = self.breaker.state(self.now)
        trial_busy = any(self.in_flight)
        allowed = self.breaker.allow(self.now)
        if state is BreakerState.CLOSED:
            assert allowed
        elif state is BreakerState.OPEN:
            assert not allowed  # nothing reaches the backend while open
        else:
            assert allowed is not trial_busy  # one trial at a time
        if allowed:
            self.in_flight.append(state is BreakerState.HALF_OPEN)

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(min_value=0), ok=st.booleans(), abandon=st.booleans())
    def settle(self, index: int, ok: bool, abandon: bool) -> None:
        was_trial = self.in_flight.pop(index % len(self.in_flight))
        if abandon:
            self.breaker.abandoned(trial=was_trial)
        elif ok:
            self.breaker.succeeded()
            self.streak, self.opened_at = 0, None
            assert self.breaker.state(self.now) is BreakerState.CLOSED
        else:
            before = self.breaker.state(self.now)
            self.breaker.failed(self.now, trial=was_trial)
            if before is BreakerState.CLOSED:
                self.streak += 1
                if self.streak >= self.THRESHOLD:
                    assert self.breaker.state(self.now) is BreakerState.OPEN
            elif was_trial or before is BreakerState.HALF_OPEN:
                assert self.breaker.state(self.now) is BreakerState.OPEN
        if was_trial:
            assert not self.breaker.trial

    @invariant()
    def closed_means_under_threshold(self) -> None:
        if self.breaker.state(self.now) is BreakerState.CLOSED:
            assert self.breaker.failures < self.THRESHOLD

    @invariant()
    def open_never_outlasts_its_period(self) -> None:
        opened = self.breaker.opened_at
        if opened is not None and self.now - opened >= self.OPEN_S:
            assert self.breaker.state(self.now) is BreakerState.HALF_OPEN


TestBreakerMachine = BreakerMachine.TestCase
