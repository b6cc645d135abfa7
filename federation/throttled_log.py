"""Logging that cannot flood: one line per kind of problem per interval.

When NATS is away or the store is full, every publish on every channel fails the
same way; an operator needs one line saying so (and how often), not thousands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping


class ThrottledLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 5.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(
        self,
        level: int,
        key: str,
        message: str,
        *args: object,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Log unless a line with the same ``key`` went out within the interval; the next
        line that goes out says how many were held back."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._suppressed.pop(key, 0)
        if held:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, held, self.interval_s)
        self.logger.log(level, message, *args, extra=extra)
        if len(self._last) > 1000:  # keys are few in practice; never let them grow unbounded
            self._last.clear()
            self._suppressed.clear()
