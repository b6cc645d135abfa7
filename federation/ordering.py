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
        # origin -> how many of its messages wait: next_ready looks up one key per origin.
        self._origins: dict[str, int] = {}

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
        self._add(msg)
        return True

    def restore(self, msg: Stamped[P]) -> None:
        """Put back a message taken for an append that did not happen (no bound: it was
        counted when it came in)."""
        if (msg.origin, msg.seq) not in self._waiting:
            self._add(msg)

    def _add(self, msg: Stamped[P]) -> None:
        self._waiting[(msg.origin, msg.seq)] = msg
        self._origins[msg.origin] = self._origins.get(msg.origin, 0) + 1

    def _remove(self, key: tuple[str, int]) -> None:
        if self._waiting.pop(key, None) is not None:
            left = self._origins[key[0]] - 1
            if left:
                self._origins[key[0]] = left
            else:
                del self._origins[key[0]]

    def drop_covered(self, applied: VectorClock) -> list[Stamped[P]]:
        """Forget (and return) waiting messages that ``applied`` already covers."""
        covered = [m for m in self._waiting.values() if is_applied(m.ts, m.origin, applied)]
        for m in covered:
            self._remove((m.origin, m.seq))
        return covered

    def next_ready(self, applied: VectorClock) -> Stamped[P] | None:
        """A message causally ready against ``applied`` (lowest origin first), or None.

        Only the next message of each origin can be ready, so this is one lookup per
        origin, whatever the number waiting. Covered messages are left for
        ``drop_covered``.
        """
        if not self._waiting:
            return None  # the usual case, asked once per entry of every group
        for origin in sorted(self._origins):
            msg = self._waiting.get((origin, applied.get(origin) + 1))
            if msg is not None and is_ready(msg.ts, msg.origin, applied):
                return msg
        return None

    def applied(self, msg: Stamped[P]) -> None:
        """The caller appended ``msg`` to the log (or took it to append)."""
        self._remove((msg.origin, msg.seq))

    def missing(self, applied: VectorClock) -> VectorClock:
        """For each region, the highest counter the waiting messages need but we lack."""
        need: dict[str, int] = {}
        for m in self._waiting.values():
            for k, v in m.ts.items():
                bound = v - 1 if k == m.origin else v
                if bound > applied.get(k):
                    need[k] = max(need.get(k, 0), bound)
        return VectorClock(need)
