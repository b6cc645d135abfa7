"""Backoff: when to try the next connection, without reading a clock.

Theory of operation
-------------------
A client that lost its connection waits ``next_delay()`` seconds before each
new attempt. The delay is drawn with *full jitter* from
``[0, min(max_s, base_s * 2**attempt)]``: the cap doubles with every failed
attempt up to ``max_s``, and drawing uniformly below it spreads the clients of
a relay that just went away, so they do not all come back in the same instant.

The attempt count only goes back to zero when a connection *proved itself*:
it stayed up at least ``reset_after_s``. A relay that accepts connections and
drops them a moment later would otherwise reset the schedule every time and be
hammered at ``base_s`` forever.

The caller reports ``connected(now)`` and ``disconnected(now)`` with its own
clock readings, and injects the random generator, so the schedule is
reproducible in tests.
"""

from __future__ import annotations

import math
import random

# 2.0 ** 1024 overflows a float; every realistic cap is reached long before this.
_MAX_EXPONENT = 1000


class Backoff:
    def __init__(
        self,
        *,
        base_s: float,
        max_s: float,
        reset_after_s: float,
        rng: random.Random,
    ) -> None:
        if not (math.isfinite(base_s) and base_s > 0):
            raise ValueError(f"base_s must be a positive number, not {base_s!r}")
        if not (math.isfinite(max_s) and max_s >= base_s):
            raise ValueError(f"max_s must be a number >= base_s ({base_s}), not {max_s!r}")
        if not (math.isfinite(reset_after_s) and reset_after_s >= 0):
            raise ValueError(f"reset_after_s must be a number >= 0, not {reset_after_s!r}")
        self.base_s = base_s
        self.max_s = max_s
        self.reset_after_s = reset_after_s
        self._rng = rng
        self._attempt = 0
        self._connected_at: float | None = None

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def cap(self, attempt: int | None = None) -> float:
        """The upper bound of the delay for ``attempt`` (default: the next one)."""
        n = self._attempt if attempt is None else attempt
        if n < 0:
            raise ValueError("attempt must be >= 0")
        return min(self.max_s, self.base_s * 2.0 ** min(n, _MAX_EXPONENT))

    def next_delay(self) -> float:
        """Seconds to wait before the next connection attempt; counts the attempt."""
        delay = self._rng.uniform(0.0, self.cap())
        self._attempt += 1
        return delay

    def connected(self, now: float) -> None:
        self._connected_at = now

    def disconnected(self, now: float) -> None:
        """A connection ended; a long-lived one earns a fresh schedule."""
        if self._connected_at is not None and now - self._connected_at >= self.reset_after_s:
            self._attempt = 0
        self._connected_at = None

    def reset(self) -> None:
        """Start over, e.g. when the user asks to reconnect right away."""
        self._attempt = 0
        self._connected_at = None
