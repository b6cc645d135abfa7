"""TotalOrderMerger: one delivery order for a channel, the same in every region.

Theory of operation
-------------------
A region's log for a channel is a *causal* log: a remote entry is appended only
after everything it depends on. Every region ends up with the same entries, but
entries from different origins may interleave differently from region to
region, so a channel in total-order mode cannot hand its log to subscribers
as it is. Instead every region sorts by a key that every region computes the
same way::

    key(m) = (m.ts.total(), m.origin)

The total acts as a Lamport clock: if ``a.ts <= b.ts`` and ``a != b`` then
``a.ts.total() < b.ts.total()``, so key order extends causal order. The origin
breaks ties between concurrent entries with the same total; no two entries
share a key, because one origin's totals strictly increase.

The hard part is knowing when nothing with a smaller key can still turn up.
Entries from one origin reach every causal log in origin order with strictly
increasing keys, so once the merger has seen an entry from region ``r`` with
key ``k``, every entry from ``r`` still to come sorts above ``k``. Hence a
pending entry ``m`` is *deliverable* when, for every configured region ``r``
other than ``m.origin``, the last key seen from ``r`` is above ``m.key``. The
origin itself needs nothing: its earlier entries came before ``m``, its later
ones sort after. Then every entry with a smaller key has already been fed in.

Deliverability is downward closed: if ``m`` is deliverable and ``e`` is pending
with ``e.key < m.key``, then for every ``r`` other than ``e.origin`` the last key
from ``r`` is above ``m.key > e.key`` (for ``r == m.origin``, ``m`` itself is
such an entry). So looking at the smallest pending key is enough: release it
while it is deliverable, and every region releases exactly the global key
order, whatever its own log's interleaving.

A region that only listens would hold everyone back forever, so regions append
*null* entries: after applying a remote message a region eventually appends a
null of its own, whose ``ts`` covers that message and whose key is therefore
above it. Nulls are never delivered; they only advance their origin's last key.

A client that retried a publish through another region leaves two entries with
different origins; ``dedupe_id`` lets the merger keep the first copy in total
order and drop the later ones. Every region releases the same sequence, so
every region keeps the same copy and forgets old ids (beyond ``max_ids``) at
the same point.

The merger is pure: no I/O, no clock. The caller feeds it the region's causal
log in order and passes what it returns to subscribers.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from federation.vclock import VectorClock

P = TypeVar("P")

Key = tuple[int, str]
"""``(ts.total(), origin)``: the total order every region delivers in."""


@dataclass(frozen=True)
class Entry(Generic[P]):
    """One entry of a region's causal log; ``payload`` is carried, never read."""

    origin: str
    ts: VectorClock
    null: bool
    payload: P
    # Same id on two entries = the same publish accepted twice (a client retry through
    # another region); only the first in total order is delivered. The caller scopes it to
    # the publisher (``logformat.entry_key``): two clients' equal ids are two publishes.
    dedupe_id: str | None = None

    @property
    def key(self) -> Key:
        return (self.ts.total(), self.origin)

    @property
    def seq(self) -> int:
        return self.ts.get(self.origin)


class MergerFull(Exception):
    """More entries wait for other regions' progress than the merger may hold."""


class TotalOrderMerger(Generic[P]):
    """Turns one region's causal log of a channel into the channel's total order."""

    def __init__(
        self, regions: Iterable[str], max_pending: int = 100_000, max_ids: int = 10_000
    ) -> None:
        self.regions = frozenset(regions)
        if not self.regions:
            raise ValueError("a total-order merger needs at least one region")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if max_ids < 0:
            raise ValueError("max_ids must not be negative")
        self.max_pending = max_pending
        self.max_ids = max_ids
        # Per origin, the last entry seen: its own counter (to drop repeats) and its key
        # (the origin's progress, which is all deliverability needs).
        self._last_seq: dict[str, int] = {}
        self._last_key: dict[str, Key] = {}
        # Non-null entries not yet released, as a heap on key. Keys are unique, so the
        # tuple comparison never falls through to the entries.
        self._pending: list[tuple[Key, Entry[P]]] = []
        # Dedupe ids released so far, oldest first; forgotten in release order, which is
        # the same in every region, so every region drops the same copies.
        self._id_order: deque[str] = deque()
        self._ids: set[str] = set()

    def pending(self) -> int:
        """How many entries wait for other regions' progress."""
        return len(self._pending)

    def waiting_on(self) -> list[str]:
        """Regions whose progress holds back the oldest pending entry (sorted)."""
        if not self._pending:
            return []
        head, head_entry = self._pending[0]
        return sorted(r for r in self.regions if r != head_entry.origin and not self._past(r, head))

    def add(self, entry: Entry[P]) -> list[Entry[P]]:
        """Feed the next entry of this region's causal log.

        Returns the entries that became deliverable, in total order (never nulls,
        never a later copy of a dedupe id already delivered). A repeated entry is
        ignored. Raises ValueError for an origin outside ``regions`` or an origin
        whose keys do not increase, and MergerFull (with nothing changed) when the
        entry would leave more than ``max_pending`` entries waiting.
        """
        origin = entry.origin
        if origin not in self.regions:
            raise ValueError(f"entry from {origin!r}, which is not one of {sorted(self.regions)}")
        previous_seq = self._last_seq.get(origin, 0)
        if entry.seq <= previous_seq:
            return []  # already seen: a re-delivery or a copy over another path
        key = entry.key
        previous = self._last_key.get(origin)
        if previous is not None and key <= previous:
            # Deliverability rests on each origin's keys increasing; a log that breaks
            # that would make us deliver out of order silently.
            raise ValueError(f"entry {origin}:{entry.seq} does not advance {origin}'s key")

        self._last_seq[origin] = entry.seq
        self._last_key[origin] = key
        if not entry.null:
            if len(self._pending) >= self.max_pending:
                head = min(self._pending[0][0], key)
                if not self._deliverable(head):
                    # Nothing would be released to make room: refuse with state unchanged,
                    # so the caller can pause the channel and feed this entry again later.
                    self._restore(origin, previous_seq, previous)
                    raise MergerFull(f"{len(self._pending)} entries wait for other regions")
            heapq.heappush(self._pending, (key, entry))
        return self._release()

    def _restore(self, origin: str, seq: int, key: Key | None) -> None:
        if key is None:
            del self._last_seq[origin]
            del self._last_key[origin]
        else:
            self._last_seq[origin] = seq
            self._last_key[origin] = key

    def _past(self, region: str, key: Key) -> bool:
        """True when ``region`` has been seen with an entry sorting after ``key``."""
        last = self._last_key.get(region)
        return last is not None and last > key

    def _deliverable(self, key: Key) -> bool:
        _, origin = key
        return all(self._past(r, key) for r in self.regions if r != origin)

    def _release(self) -> list[Entry[P]]:
        out: list[Entry[P]] = []
        while self._pending and self._deliverable(self._pending[0][0]):
            _, entry = heapq.heappop(self._pending)
            if entry.dedupe_id is not None and self.max_ids > 0:
                if entry.dedupe_id in self._ids:
                    continue  # a later copy of a publish already delivered
                self._remember(entry.dedupe_id)
            out.append(entry)
        return out

    def _remember(self, dedupe_id: str) -> None:
        self._ids.add(dedupe_id)
        self._id_order.append(dedupe_id)
        if len(self._id_order) > self.max_ids:
            self._ids.discard(self._id_order.popleft())
