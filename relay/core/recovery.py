"""Pure rules for resuming from a position and paging history.

A region's log for a channel is a sequence of entries, entry ``i`` having the
applied vector ``A_i`` (its ``pos``). ``A_i`` grows by exactly one in the
entry's origin at each step, so:

* the entries a position ``P`` does not cover start at the first ``i`` with
  ``A_i`` not ``<= P`` (a predicate monotone in the stream sequence, so it can
  be binary-searched);
* entry ``i`` is the ``A_i.total()``-th entry of the channel (its index);
* the applied vector before the oldest stored entry tells whether retention
  removed something ``P`` does not cover: then the position has expired, and we
  say so with the earliest position we can still serve (never a silent gap).
"""

from __future__ import annotations

from federation.logformat import StoredMessage
from federation.vclock import VectorClock


class PositionExpired(Exception):
    def __init__(self, earliest: VectorClock) -> None:
        super().__init__(f"position expired; earliest available {earliest.to_dict()}")
        self.earliest = earliest


def position_before(msg: StoredMessage) -> VectorClock:
    """The applied vector just before this entry was appended."""
    own = msg.ts.get(msg.origin, 0)
    return VectorClock(msg.pos).with_entry(msg.origin, max(own - 1, 0))


def check_not_expired(oldest: StoredMessage, position: VectorClock) -> None:
    earliest = position_before(oldest)
    if not earliest <= position:
        raise PositionExpired(earliest)


def uncovered(entry_position: VectorClock, position: VectorClock) -> bool:
    """True from the first entry the position does not cover, onwards."""
    return not entry_position <= position


def history_window(
    first_index: int, last_index: int, limit: int, before_index: int | None
) -> tuple[int, int] | None:
    """Indexes [start, end] of the page to return, or None when it is empty."""
    end = last_index if before_index is None else min(last_index, before_index - 1)
    start = max(first_index, end - limit + 1)
    if end < start:
        return None
    return start, end
