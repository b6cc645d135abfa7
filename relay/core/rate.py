"""A token bucket: how many requests a connection may make, and how long to wait if not.

Theory of operation
-------------------
The bucket holds up to ``burst`` tokens and gains ``rate_per_s`` of them per second.
``take(now)`` spends one token and returns 0.0, or, if less than one is there, spends
nothing and returns the seconds until one will be (the ``retry_after`` a refused client
is told). So over any interval of ``d`` seconds at most ``burst + rate_per_s * d``
requests are accepted, a client that keeps below ``rate_per_s`` is never refused, and
one that waits the returned time is accepted. Time is passed in (any monotonic clock);
a clock that goes backwards adds nothing. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

_EPSILON = 1e-9


class TokenBucket:
    __slots__ = ("_last", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
            self._last = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now``."""
        self._refill(now)
        return self._tokens

    def take(self, now: float) -> float:
        """0.0 if a token was taken; else the seconds until one is there (nothing taken)."""
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:  # waiting the time returned is always enough
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s
