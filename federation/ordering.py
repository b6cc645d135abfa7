"""ChannelOrderBuffer: per-channel causal delivery of messages from other regions.

Theory of operation
-------------------
A region appends a remote message ``m`` (from ``m.origin``, stamped ``m.ts``) to
its own log for the channel only when it is *causally ready* against the
channel's applied vector ``A`` (the log head's position):

* ``m.ts[m.origin] == A[m.origin] + 1`` — the next message from its origin, and
* ``m.ts[k] <= A[k]`` for every other region ``k`` — everything it depends on
  is already applied.

A message with ``m.ts[m.origin] <= A[m.origin]`` is already applied (a
duplicate, a re-delivery, or a copy that arrived over another path) and is
dropped. Anything else waits here, bounded. The buffer never applies anything
itself: the caller asks ``next_ready(A)`` for a message, appends it to the log
(compare-and-set on the log head), and asks again with the new head. Because
the head is re-read whenever the append loses a race, several instances can
feed the same region's log and each message still lands once.

A message that waits longer than the caller tolerates is a gap that cannot be
filled (a peer's retention dropped it before we read it): ``stuck()`` reports
what is missing so the caller can reset subscribers loudly instead of
skipping silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from federation.vclock import VectorClock

P = TypeVar("P")


@dataclass(frozen=True)
class Stamped(Generic[P]):
    """A message as the ordering logic sees it; ``payload`` is carried, never read."""

    origin: str
    ts: VectorClock
    payload: P

    @property
    def seq(self) -> int:
        return self.ts.get(self.origin)


class BufferFull(Exception):
    """More messages wait for their causal predecessors than the buffer may hold."""


def is_ready(ts: Mapping[str, int], origin: str, applied: VectorClock) -> bool:
    if ts.get(origin, 0) != applied.get(origin) + 1:
        return False
    return all(v <= applied.get(k) for k, v in ts.items() if k != origin)


def is_applied(ts: Mapping[str, int], origin: str, applied: VectorClock) -> bool:
    return ts.get(origin, 0) <= applied.get(origin)


class ChannelOrderBuffer(Generic[P]):
    def __init__(self, max_buffered: int) -> None:
        self.max_buffered = max_buffered
        # (origin, seq) -> message; one copy per message whatever the paths it came by.
        self._waiting: dict[tuple[str, int], Stamped[P]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, msg: Stamped[P], applied: VectorClock) -> bool:
        """Keep ``msg`` until it can be applied; False if it is already applied or held."""
        if is_applied(msg.ts, msg.origin, applied):
            return False
        key = (msg.origin, msg.seq)
        if key in self._waiting:
            return False
        if len(self._waiting) >= self.max_buffered:
            raise BufferFull(f"{len(self._waiting)} messages wait for their predecessors")
        self._waiting[key] = msg
        return True

    def drop_covered(self, applied: VectorClock) -> list[Stamped[P]]:
        """Forget (and return) waiting messages that ``applied`` already covers."""
        covered = [m for m in self._waiting.values() if is_applied(m.ts, m.origin, applied)]
        for m in covered:
            del self._waiting[(m.origin, m.seq)]
        return covered

    def next_ready(self, applied: VectorClock) -> Stamped[P] | None:
        """A message causally ready against ``applied`` (lowest origin first), or None.

        Messages that ``applied`` already covers are dropped on the way.
        """
        self.drop_covered(applied)
        candidates = [m for m in self._waiting.values() if is_ready(m.ts, m.origin, applied)]
        if not candidates:
            return None
        return min(candidates, key=lambda m: m.origin)

    def applied(self, msg: Stamped[P]) -> None:
        """The caller appended ``msg`` to the log."""
        self._waiting.pop((msg.origin, msg.seq), None)

    def missing(self, applied: VectorClock) -> VectorClock:
        """For each region, the highest counter the waiting messages need but we lack."""
        need: dict[str, int] = {}
        for m in self._waiting.values():
            for k, v in m.ts.items():
                bound = v - 1 if k == m.origin else v
                if bound > applied.get(k):
                    need[k] = max(need.get(k, 0), bound)
        return VectorClock(need)
