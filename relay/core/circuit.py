"""A circuit breaker: stop calling a backend that keeps failing, try it again later. Pure.

Theory of operation
-------------------
Three states, one transition table:

* ``CLOSED``: every call may go. Each failed call adds one to a count of consecutive
  failures, each success resets it; at ``failure_threshold`` the breaker opens.
* ``OPEN``: no call goes (the caller answers at once, as if the call had failed)
  until ``open_s`` seconds after it opened; then it is half-open.
* ``HALF_OPEN``: exactly one call, the trial, may go; the others are refused as in
  ``OPEN`` while it is in flight. Its success closes the breaker, its failure opens
  it again for another ``open_s``. A trial that ends with no verdict (the caller was
  cancelled) is ``abandoned``: the next call becomes the trial.

Time is passed in (``now``, any monotonic seconds), so tests need no clock. A call
that ``allow`` let through must end in exactly one of ``succeeded``, ``failed`` or
``abandoned``, saying whether it was the trial (``allow`` let it through half-open);
results of calls let through before the breaker opened still count (a late success
closes it: the backend answered; a late failure after the pause opens it again), but
only the trial's own end lets another trial go: a straggler that ends while the trial
is in flight must not let a second one through.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    failure_threshold: int
    open_s: float
    failures: int = 0  # consecutive, while closed
    opened_at: float | None = None  # None: closed
    trial: bool = False  # half-open, and the trial call is in flight

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.open_s < 0:
            raise ValueError("failure_threshold >= 1 and open_s >= 0")

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at < self.open_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self, now: float) -> bool:
        """Whether a call may go now; in half-open, True makes it the trial."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self.trial:
            return False
        self.trial = True
        return True

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial = False

    def failed(self, now: float, *, trial: bool) -> None:
        if self.opened_at is None:
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self.opened_at = now
        elif trial or self.state(now) is not BreakerState.OPEN:
            self.opened_at = now  # the trial (or a straggler after the pause) failed
        if trial:
            self.trial = False

    def abandoned(self, *, trial: bool) -> None:
        """A call let through ended without a verdict: it says nothing about the backend."""
        if trial:
            self.trial = False
