"""Vector timestamps for per-channel causal order.

Theory of operation
-------------------
Every message on a channel carries ``ts``: for each region, how many of that
region's messages on the channel the origin region had applied when it accepted
the message, its own entry being the message's own per-channel sequence.

A region's log for a channel also has an *applied* vector after each entry
(what the region has applied so far). That applied vector is the ``position``
a client receives and sends back to resume: a message ``m`` is covered by a
position ``P`` when ``P[m.origin] >= m.ts[m.origin]``.

Zero entries are never stored, so two clocks with the same meaning compare and
hash equal. The type is immutable and does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import NewType

RegionId = NewType("RegionId", str)

_REGION_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
#: A match when ``name`` can be a region in a vector clock, else None.
region_name_match = _REGION_RE.fullmatch
# Counters come from JSON; JavaScript clients can only represent integers up to 2**53 exactly.
MAX_COUNTER = 2**53 - 1


class ClockError(ValueError):
    """A vector timestamp from outside (a client frame, a stored message) is malformed."""


class VectorClock(Mapping[str, int]):
    """An immutable map region -> counter with the partial order of vector clocks."""

    __slots__ = ("_entries", "_hash")

    def __init__(self, entries: Mapping[str, int] | None = None) -> None:
        cleaned = {k: v for k, v in (entries or {}).items() if v != 0}
        self._entries: dict[str, int] = dict(sorted(cleaned.items()))
        self._hash: int | None = None

    @classmethod
    def parse(cls, raw: object) -> VectorClock:
        """Validate a decoded JSON value (object region -> non-negative integer)."""
        if not isinstance(raw, dict):
            raise ClockError("a position is an object mapping region names to counters")
        for key, value in raw.items():
            if not isinstance(key, str) or not _REGION_RE.fullmatch(key):
                raise ClockError(f"bad region name {key!r} in position")
            if isinstance(value, bool) or not isinstance(value, int):
                raise ClockError(f"counter for {key!r} must be an integer")
            if not 0 <= value <= MAX_COUNTER:
                raise ClockError(f"counter for {key!r} out of range")
        return cls(raw)

    # Mapping protocol: missing regions read as 0 through get(); [] raises like a dict.
    def __getitem__(self, region: str) -> int:
        return self._entries[region]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, region: str, default: int = 0) -> int:  # type: ignore[override]
        return self._entries.get(region, default)

    def to_dict(self) -> dict[str, int]:
        return dict(self._entries)

    def total(self) -> int:
        """How many log entries this applied vector accounts for."""
        return sum(self._entries.values())

    def increment(self, region: str) -> VectorClock:
        # The hot path of every publish: a region already present keeps the order, so the
        # copy needs no re-sorting or zero-filtering.
        if region in self._entries:
            entries = dict(self._entries)
            entries[region] += 1
            return VectorClock._sorted(entries)
        entries = dict(self._entries)
        entries[region] = 1
        return VectorClock(entries)

    @classmethod
    def _sorted(cls, entries: dict[str, int]) -> VectorClock:
        """From entries already sorted by region and without zeros (not checked)."""
        clock = cls.__new__(cls)
        clock._entries = entries
        clock._hash = None
        return clock

    def with_entry(self, region: str, value: int) -> VectorClock:
        entries = dict(self._entries)
        entries[region] = value
        return VectorClock(entries)

    def merge(self, other: Mapping[str, int]) -> VectorClock:
        """Pointwise maximum: the least clock that covers both."""
        entries = dict(self._entries)
        for region, value in other.items():
            if value > entries.get(region, 0):
                entries[region] = value
        return VectorClock(entries)

    def covers(self, origin: str, ts: Mapping[str, int]) -> bool:
        """True when the message from ``origin`` stamped ``ts`` is already included."""
        return self.get(origin) >= ts.get(origin, 0)

    def __le__(self, other: object) -> bool:
        if not isinstance(other, VectorClock):
            return NotImplemented
        return all(v <= other.get(k) for k, v in self._entries.items())

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, VectorClock):
            return NotImplemented
        return self <= other and self != other

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, VectorClock):
            return NotImplemented
        return other <= self

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, VectorClock):
            return NotImplemented
        return other < self

    def concurrent(self, other: VectorClock) -> bool:
        return not (self <= other) and not (other <= self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VectorClock):
            return self._entries == other._entries
        return NotImplemented

    def equals(self, raw: Mapping[str, int]) -> bool:
        """``self == VectorClock(raw)``, without building one in the common case (``raw``
        as this module writes it: no zero counters)."""
        return self._entries == raw or self._entries == VectorClock(raw)._entries

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._entries.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"VectorClock({self._entries!r})"


EMPTY = VectorClock()
