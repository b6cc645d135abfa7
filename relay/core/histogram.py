"""A latency histogram as Prometheus exports it, cheap enough for a per-message path.

``observe`` is a bisect and three additions: the relay records into plain ints on
its hot paths and the metrics collector turns them into cumulative buckets only
when scraped (``cumulative``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Final

#: Upper bounds (seconds) for message latencies: publish -> ack, store -> fan-out.
MESSAGE_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum_s")

    def __init__(self, bounds: Sequence[float] = MESSAGE_BUCKETS_S) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket bounds must be strictly increasing: {bounds!r}")
        self.bounds = tuple(bounds)
        # Per bucket (not cumulative), the last one past every bound (+Inf).
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        # A negative value (clocks of two hosts) lands in the first bucket, and is summed
        # as it is: the sum then shows the skew instead of hiding it.
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum_s += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, observations <= le)`` for every bound and ``+Inf``, as exported."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((repr(float(bound)), running))
        out.append(("+Inf", self.count))
        return out
