"""What a reader accepts as a log entry when it comes from NATS.

Whoever holds the relay's NATS credentials (an operator's tool, a bug, an insider)
can store or republish any bytes on a channel's subjects. Readers check every entry
they lift before it reaches a subscriber, a resume, a history page, the region
writer's head or a peer link's causal buffer, and skip what fails here rather than
failing the channel:

* a body that is not a ``StoredMessage``;
* sequence headers that are missing or not sequences;
* an ``origin`` that is not a region of this network (no subscriber can resume
  from it, no region will ever send its predecessors);
* a ``ts`` or ``pos`` that is not a vector clock (region names, counters from 0 to
  2**53-1), a ``ts`` without a counter for its own origin, or a ``pos`` that does
  not include the entry itself (a client resuming from it would get it again).

A message read from a peer is also refused when its ``ts`` names a region this
network does not have: it could never become causally ready, and would hold the
link's buffer for good.

Pure: no I/O; the adapters decide what to log and count (``federation.bad_entries``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import msgspec

from federation.logformat import StoredMessage, decode_stored
from federation.vclock import MAX_COUNTER, ClockError, VectorClock, region_name_match


class BadEntry(ValueError):
    """An entry read from NATS that no relaynet writer produces; ``str`` says why, never
    with the body in it."""


def check_stored(
    msg: StoredMessage, regions: Collection[str], *, known_dependencies: bool = False
) -> None:
    """Raise ``BadEntry`` if ``msg`` cannot be a region log's entry of this network.
    ``known_dependencies``: every region in ``ts`` must be one of ``regions`` too."""
    if msg.origin not in regions:
        raise BadEntry(f"origin {_short(msg.origin)} is not a region of this network")
    for name, clock in (("ts", msg.ts), ("pos", msg.pos)):
        if not _plainly_valid(clock):
            try:
                VectorClock.parse(clock)  # says why
            except ClockError as exc:
                raise BadEntry(f"{name} is not a vector clock: {exc}") from None
    own = msg.ts.get(msg.origin, 0)
    if own < 1:
        raise BadEntry("ts has no counter for its origin")
    if msg.pos.get(msg.origin, 0) < own:
        raise BadEntry("pos does not include the entry itself")
    if known_dependencies:
        unknown = sorted(set(msg.ts) - set(regions))
        if unknown:
            raise BadEntry(f"ts depends on {_short(unknown[0])}, not a region of this network")


def _plainly_valid(clock: Mapping[str, int]) -> bool:
    """What ``VectorClock.parse`` accepts, without building one: every stored message is
    checked, twice, on the live feed's path (msgspec decoded ``str`` keys and ``int``
    values already)."""
    for region, value in clock.items():
        if type(value) is not int or not 0 <= value <= MAX_COUNTER:
            return False
        if region_name_match(region) is None:
            return False
    return True


def decode_checked(
    body: bytes, regions: Collection[str], *, known_dependencies: bool = False
) -> StoredMessage:
    """The stored message in ``body``; ``BadEntry`` if it is not one this network wrote."""
    try:
        msg = decode_stored(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise BadEntry(f"undecodable body ({len(body)} bytes): {_short(str(exc))}") from None
    check_stored(msg, regions, known_dependencies=known_dependencies)
    return msg


def sequence_header(headers: Mapping[str, str], name: str, *, minimum: int) -> int:
    """A stream sequence header as an int; ``BadEntry`` if absent or not a sequence."""
    raw = headers.get(name)
    if raw is None:
        raise BadEntry(f"no {name} header")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 20 or int(raw) < minimum:
        raise BadEntry(f"{name} {_short(raw)} is not a stream sequence")
    return int(raw)


def _short(value: object) -> str:
    """A value for a log line: what came from NATS is bounded and quoted."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
