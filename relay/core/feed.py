"""ChannelFeed: one relay's view of one channel's log, and its local subscribers.

Theory of operation
-------------------
A relay holds ONE live NATS subscription per channel it serves, whatever the
number of local subscribers. The live subscription carries JetStream's
republish of every stored message, each tagged with its stream sequence and
the stream sequence of the previous message on the same channel
(``Nats-Last-Sequence``). So the feed can tell, with a comparison, whether it
has seen everything up to a message:

* ``verified_seq``: every stream sequence up to here has been accounted for;
* a live message whose predecessor is ``<= verified_seq`` is next in order;
* one whose predecessor is later means core NATS dropped something (a slow
  subscription, a reconnect): the feed buffers live traffic and asks the node
  to read the missing stretch from the stream (``FillGap``), then resumes.

A fill is checked, never trusted: it must end with the predecessor the live
message named, and in a causal log (where every entry moves the applied vector
by exactly one) each entry's position must follow the one before. A fill that
fails the check, or that the node gives up on (``abandon_gap``), is a gap
nobody can close here: rather than skip it silently, the feed drops every
subscriber (``Sink.lost``): each reconnects and resumes from its own position,
where the stream either has the messages or says plainly that it does not.

Live frames are hints, the stream is the truth. Anyone holding the relay's NATS
credentials can publish a frame on the live subject with any sequence headers;
one claiming a far sequence would otherwise make every later real message look
"already seen". So the feed also keeps ``store_seq``, up to which the stream
itself (the head read at start, fills) accounted for every sequence, and the
sequences it applied above it. A live frame is applied at once only when it is
consistent: its predecessor is ``<= verified_seq`` and, in a causal log, its
position is the head's plus one in its origin. A frame that is not, or one at or below
``verified_seq`` that the feed never applied, means something it was shown was
not what the stream holds: it asks to read the stream from ``store_seq``
(``FillGap`` again, a verification), delivers what the stream has and the
subscribers lack, forgets the sequences the stream does not have (``refuted``)
and goes on from the stream's own last entry. Contiguous real traffic never
costs a read. A fill also names the sequences of stored entries that readers
skipped as malformed: those count as read, so a bad entry is never a gap.

Subscribers attach either live (from the current head) or "catching up": they
were away and sent a position. The node reads their missed messages from the
stream up to the head captured at attach time while the feed keeps their live
traffic in a pending list; ``finish_catch_up`` hands over the pending frames
and makes them live in one synchronous step, so the seam is exact: nothing is
lost and nothing is sent twice. A subscriber's ``floor`` (its resume position)
also filters live traffic it already has, which matters when its position is
ahead of this relay's region in some entry.

No I/O happens here: sinks are non-blocking (``offer``) and decide themselves
what to do when full (the slow-consumer policy). Nor does the feed know the
wire format: it is given ``encode`` (the protocol's message frame), calls it
once per delivered entry and offers the same bytes to every sink.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Protocol

from federation.logformat import StoredMessage
from federation.vclock import EMPTY, VectorClock
from relay.core.channels import Channel


class Sink(Protocol):
    def offer(self, frame: bytes) -> None:
        """Queue a frame without waiting; on overflow the sink disconnects itself."""

    def overflow(self) -> None:
        """The subscriber fell too far behind while catching up."""

    def lost(self) -> None:
        """The feed cannot show this subscriber an unbroken sequence: close it so that it
        resumes from its position (a reconnectable close)."""


@dataclass(slots=True)
class LogEntry:
    seq: int
    last_seq: int  # stream sequence of the previous message on this channel (0: none known)
    channel: Channel
    msg: StoredMessage

    @property
    def position(self) -> VectorClock:
        return VectorClock(self.msg.pos)

    def covered_by(self, position: VectorClock) -> bool:
        return position.covers(self.msg.origin, self.msg.ts)


def _identity(entry: LogEntry) -> tuple[str, int, str]:
    """What makes a message itself in one region's log: its origin's counter and its id."""
    msg = entry.msg
    return msg.origin, msg.ts.get(msg.origin, 0), msg.id


@dataclass(frozen=True)
class FillGap:
    """Read stored messages of the channel with ``after_seq < seq < before_seq``."""

    after_seq: int
    before_seq: int


@dataclass(frozen=True)
class GapLost:
    """A gap could not be filled; every subscriber was dropped (``Sink.lost``)."""

    after_seq: int
    before_seq: int
    reason: str


# Sequences applied above ``store_seq`` that the feed remembers; a late duplicate of an older
# one only costs a verification read.
MAX_UNCONFIRMED = 256


@dataclass(frozen=True)
class AttachedLive:
    position: VectorClock


@dataclass(frozen=True)
class CatchUp:
    """Read the stream from the subscriber's position up to ``upto_seq`` inclusive."""

    upto_seq: int
    head_position: VectorClock


@dataclass
class _Special:
    sink: Sink
    floor: VectorClock | None
    pending: list[bytes] | None  # not None while catching up


class ChannelFeed:
    def __init__(
        self,
        channel: Channel,
        max_pending: int,
        *,
        encode: Callable[[Channel, StoredMessage], bytes],
        contiguous: bool = True,
        max_unconfirmed: int = MAX_UNCONFIRMED,
    ) -> None:
        self.channel = channel
        self.max_pending = max_pending
        self.max_unconfirmed = max_unconfirmed
        # A message -> the frame every subscriber gets (``relay.protocol.frames.message_frame``,
        # injected: the core does not know the wire format).
        self._encode = encode
        # Every entry moves the applied vector by one (a region's causal log); a total-order
        # delivery log skips progress entries, so its positions jump.
        self.contiguous = contiguous
        self.ready = False
        self.head_seq = 0
        self.head_position: VectorClock = EMPTY
        self.verified_seq = 0
        # Up to here the stream itself accounted for every sequence; head position there.
        self.store_seq = 0
        self.store_position: VectorClock = EMPTY
        self._store_exact = True  # store_position is the stream's (not after a lost gap)
        # Applied above store_seq, in order: sequence -> what was delivered (``_identity``).
        self._unconfirmed: dict[int, tuple[str, int, str]] = {}
        # ... and the head position once each was applied (where store_seq moves on to).
        self._positions: dict[int, VectorClock] = {}
        self._verifying = False
        self._suspects: list[int] = []  # claimed by frames that asked for a verification
        # Sequences live frames claimed that the stream does not hold (the caller drains it).
        self.refuted: list[int] = []
        self._early: list[LogEntry] = []
        self._filling: list[LogEntry] | None = None
        self._trigger: LogEntry | None = None
        # After an abandoned gap the head's count is off until the next entry: no check.
        self._reposition = False
        self._plain: dict[Hashable, Sink] = {}
        self._special: dict[Hashable, _Special] = {}
        # Live frames handed to subscribers (one per subscriber), for /metrics.
        self.delivered = 0

    # --- the log side ----------------------------------------------------------------

    def start(self, head_seq: int, head_position: VectorClock) -> FillGap | None:
        """The head as read from the stream after the live subscription was made."""
        self.head_seq = self.verified_seq = self.store_seq = head_seq
        self.head_position = self.store_position = head_position
        self.ready = True
        early, self._early = self._early, []
        gap: FillGap | None = None
        for entry in early:
            gap = self.on_live(entry) or gap
        return gap

    def on_live(self, entry: LogEntry) -> FillGap | None:
        if not self.ready:
            self._early.append(entry)
            return None
        if self._filling is not None:
            self._filling.append(entry)
            return None
        if entry.seq <= self.verified_seq:
            if entry.seq <= self.store_seq:
                return None  # already seen (the subscription raced the head read, or a refill)
            shown = self._unconfirmed.get(entry.seq)
            if shown == _identity(entry):
                return None  # already seen
            # Never applied (or another message under that sequence), yet behind what the
            # feed counts as seen: an earlier frame claimed what the stream may not have.
            return self._verify(entry.seq)
        if entry.last_seq > self.verified_seq:
            self._filling = [entry]
            self._trigger = entry
            return FillGap(after_seq=self.verified_seq, before_seq=entry.seq)
        if not self.contiguous or self._reposition:
            self._apply(entry)
            return None
        # Every entry of a causal log moves the applied vector by one, in its origin.
        following = self.head_position.increment(entry.msg.origin)
        if not following.equals(entry.msg.pos):
            return self._verify(entry.seq)  # not what the stream republishes after the head
        self._apply(entry, following)
        return None

    def _verify(self, claimed_seq: int) -> FillGap:
        """Read the stream from the last point it confirmed, past anything claimed."""
        if self._filling is None:
            self._filling = []
        self._trigger = None
        self._verifying = True
        self._suspects.append(claimed_seq)
        return FillGap(after_seq=self.store_seq, before_seq=max(self.verified_seq, claimed_seq) + 1)

    def on_fill(
        self, entries: list[LogEntry], before_seq: int, skipped: Collection[int] = ()
    ) -> FillGap | GapLost | None:
        """Stored messages for the last FillGap, in stream order; then drain the buffer.
        ``skipped``: sequences of stored entries the reader dropped as malformed."""
        if self._verifying:
            return self._verified(entries, before_seq, skipped)
        broken = self._broken_fill(entries, before_seq, skipped)
        trigger = self._trigger
        exact = self.contiguous and self._store_exact  # then positions show what is lost
        if broken is not None and exact and (trigger is not None or self._unconfirmed):
            # The live frame that showed the gap, or one applied before it, may be one
            # nobody stored (it named a predecessor, or moved the head, the stream does
            # not know): the stream decides, from its last confirmed point. It still
            # closes subscribers if it lost entries itself.
            if trigger is not None:
                assert self._filling is not None and self._filling[0] is trigger
                del self._filling[0]
            return self._verify(trigger.seq if trigger is not None else before_seq - 1)
        if broken is not None:
            return self.abandon_gap(before_seq, broken)
        read = [self.verified_seq]
        for entry in entries:
            if self.verified_seq < entry.seq < before_seq:
                self._apply(entry)
                read.append(entry.seq)
        read += [s for s in skipped if self.verified_seq < s < before_seq]
        # Up to the last entry read, not to the sequence the live frame claimed: that one
        # is checked as it drains (its predecessor, its position).
        self.verified_seq = max(read) if trigger is not None else before_seq - 1
        return self._drain_filling()

    def _verified(
        self, entries: list[LogEntry], before_seq: int, skipped: Collection[int]
    ) -> FillGap | GapLost | None:
        """The stream's answer to a verification: it replaces what live frames claimed."""
        self._verifying = False
        after = self.store_seq
        stored = sorted(
            {e.seq: e for e in entries if after < e.seq < before_seq}.values(),
            key=lambda e: e.seq,
        )
        bad = [s for s in skipped if after < s < before_seq]
        held = {e.seq for e in stored} | set(bad)
        claimed = dict.fromkeys([*self._unconfirmed, *self._suspects])
        self._suspects.clear()
        self.refuted.extend(s for s in claimed if s not in held)
        position = self.store_position
        lost: str | None = None
        check = self.contiguous and self._store_exact
        for entry in stored:
            if check and lost is None and entry.position.total() != position.total() + 1:
                lost = f"entries before {entry.seq} are no longer in the stream"
            position = position.merge(entry.msg.pos)
        if lost is None:
            # A stored message a live frame already showed under another sequence (a
            # replay) is not shown twice; one that only looked like it (another id) is.
            shown = set(self._unconfirmed.values())
            for entry in stored:
                if entry.seq not in self._unconfirmed and _identity(entry) not in shown:
                    self._deliver(entry)
        last = max([after, *held])
        self.head_seq = self.verified_seq = self.store_seq = last
        self.head_position = self.store_position = position
        self._store_exact = True
        self._unconfirmed.clear()
        self._positions.clear()
        self._reposition = False
        if lost is not None:  # the stream lost some itself: no silent gap, as for a fill
            return self.abandon_gap(last + 1, lost)
        return self._drain_filling()

    def abandon_gap(self, before_seq: int, reason: str) -> GapLost:
        """The gap before ``before_seq`` will not be filled: drop every subscriber (they
        resume from their positions elsewhere or later) and go on after it."""
        if self._verifying:
            # What live frames claimed was never confirmed: go back to what the stream said.
            self._verifying = False
            self._suspects.clear()
            self.verified_seq = self.head_seq = self.store_seq
            self.head_position = self.store_position
            before_seq = self.store_seq + 1
        after_seq = self.verified_seq
        for sink in list(self._plain.values()):
            sink.lost()
        for sub in list(self._special.values()):
            sub.sink.lost()
        self._plain.clear()
        self._special.clear()
        self.verified_seq = self.head_seq = max(self.verified_seq, before_seq - 1)
        self._reposition = True
        self._confirmed_up_to_head()
        gap = self._drain_filling()
        while gap is not None:  # nobody is subscribed: nothing to fill for
            if self._verifying:  # but nothing a live frame claimed is taken on trust
                self._verifying = False
                self._suspects.clear()
                self.verified_seq = self.head_seq = self.store_seq
                self.head_position = self.store_position
            else:
                self.verified_seq = max(self.verified_seq, gap.before_seq - 1)
            self._reposition = True
            self._confirmed_up_to_head()
            gap = self._drain_filling()
        return GapLost(after_seq, before_seq, reason)

    def _confirmed_up_to_head(self) -> None:
        self.store_seq = self.verified_seq
        self.store_position = self.head_position
        self._store_exact = False
        self._unconfirmed.clear()
        self._positions.clear()

    def _broken_fill(
        self, entries: list[LogEntry], before_seq: int, skipped: Collection[int]
    ) -> str | None:
        """Why the fill cannot be the whole stretch it was asked for, if it cannot."""
        inside = [e for e in entries if self.verified_seq < e.seq < before_seq]
        if any(b.seq <= a.seq for a, b in itertools.pairwise(inside)):
            return "the stream returned entries out of order"
        # A malformed entry was read all the same: it takes its sequence, not a position.
        bad = [s for s in skipped if self.verified_seq < s < before_seq]
        last_read = max([*(e.seq for e in inside[-1:]), *bad], default=0)
        # The live entry that showed the gap (None after a reconnect: then the stored head).
        first_live = self._trigger
        wanted_last = first_live.last_seq if first_live is not None else before_seq - 1
        if wanted_last > self.verified_seq and last_read != wanted_last:
            return f"entry {wanted_last} is no longer in the stream"
        if self.contiguous and not self._reposition:
            position = self.head_position
            following = [*inside, *([first_live] if first_live is not None else [])]
            for entry in following:
                position = position.increment(entry.msg.origin)
                if entry.position != position:
                    return f"entries before {entry.seq} are no longer in the stream"
        return None

    def _drain_filling(self) -> FillGap | None:
        buffered, self._filling = self._filling or [], None
        for i, entry in enumerate(buffered):
            gap = self.on_live(entry)
            if gap is not None:
                assert self._filling is not None
                self._filling.extend(buffered[i + 1 :])
                return gap
        return None

    def check_head(self, stored_head_seq: int) -> FillGap | None:
        """After NATS reconnected: the live feed may have missed messages silently."""
        if not self.ready or self._filling is not None:
            return None
        if stored_head_seq < self.verified_seq and self.verified_seq > self.store_seq:
            # Live frames took the feed past the stream's own last entry: check them.
            return self._verify(self.verified_seq)
        if stored_head_seq <= self.verified_seq:
            return None
        self._filling = []
        self._trigger = None
        return FillGap(after_seq=self.verified_seq, before_seq=stored_head_seq + 1)

    def _apply(self, entry: LogEntry, position: VectorClock | None = None) -> None:
        """``position``: the head's after ``entry``, when the caller knows it already."""
        self.head_seq = self.verified_seq = entry.seq
        self._reposition = False
        if position is None:
            position = self.head_position.merge(entry.msg.pos)
        self.head_position = position
        self._unconfirmed[entry.seq] = _identity(entry)
        self._positions[entry.seq] = self.head_position
        if len(self._unconfirmed) > self.max_unconfirmed:
            # Memory is bounded: the oldest is taken as confirmed (trust by age). It must
            # then leave the unconfirmed stretch altogether, else a later verification
            # would read it again from store_seq and deliver it twice (bench chaos found
            # 150 duplicates: a busy channel applies far more than this between two
            # verifications, and contiguous traffic never verifies).
            oldest = next(iter(self._unconfirmed))
            del self._unconfirmed[oldest]
            self.store_seq = oldest
            self.store_position = self._positions.pop(oldest)
        self._deliver(entry)

    def _deliver(self, entry: LogEntry) -> None:
        if entry.msg.hidden or (not self._plain and not self._special):
            return  # hidden entries (dup, null) only advance the position
        frame = self._encode(entry.channel, entry.msg)
        sinks = list(self._plain.values())
        for sink in sinks:
            sink.offer(frame)
        self.delivered += len(sinks)
        for key, sub in list(self._special.items()):
            if sub.floor is not None and entry.covered_by(sub.floor):
                continue
            if sub.pending is not None:
                sub.pending.append(frame)
                if len(sub.pending) > self.max_pending:
                    del self._special[key]
                    sub.sink.overflow()
            else:
                sub.sink.offer(frame)
                self.delivered += 1
                self._maybe_plain(key, sub)

    # --- the subscriber side ---------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._plain) + len(self._special)

    def attach(
        self, key: Hashable, sink: Sink, position: VectorClock | None
    ) -> AttachedLive | CatchUp:
        if not self.ready:
            raise RuntimeError("attach before the feed knows its head")
        if position is None:
            self._plain[key] = sink
            return AttachedLive(self.head_position)
        if self.head_position <= position:
            # Nothing stored that the client lacks; it may be ahead in some entry (floor).
            self._special[key] = _Special(sink, position, None)
            self._maybe_plain(key, self._special[key])
            return AttachedLive(self.head_position.merge(position))
        self._special[key] = _Special(sink, position, [])
        return CatchUp(self.head_seq, self.head_position)

    def finish_catch_up(self, key: Hashable) -> bool:
        """Flush what arrived live during the catch-up and go live; False if detached."""
        sub = self._special.get(key)
        if sub is None or sub.pending is None:
            return False
        pending, sub.pending = sub.pending, None
        for frame in pending:
            sub.sink.offer(frame)
        self.delivered += len(pending)
        self._maybe_plain(key, sub)
        return True

    def detach(self, key: Hashable) -> None:
        self._plain.pop(key, None)
        self._special.pop(key, None)

    def _maybe_plain(self, key: Hashable, sub: _Special) -> None:
        if sub.pending is None and (sub.floor is None or sub.floor <= self.head_position):
            del self._special[key]
            self._plain[key] = sub.sink
