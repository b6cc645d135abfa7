"""ChannelFeed: one relay's view of one channel's log, against a model stream.

The model stream holds the channel's entries with increasing stream sequences,
interleaved with other channels' sequences (so the channel's sequences are not
contiguous). Sinks record what they are offered; a frame is identified by its
``position`` (the applied vector after the entry, whose total is the entry's
1-based index in the channel's log).
"""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from federation.logformat import StoredMessage
from federation.vclock import EMPTY, VectorClock
from relay.core.channels import Channel
from relay.core.feed import AttachedLive, CatchUp, ChannelFeed, FillGap, GapLost, LogEntry
from relay.protocol.frames import message_frame

CH = Channel("room.1")
ORIGINS = ("r1", "r2")


class Stream:
    """A region's stream as seen by one channel: its entries, interleaved with others."""

    def __init__(self) -> None:
        self.seq = 0
        self.entries: list[LogEntry] = []
        self.applied: VectorClock = EMPTY

    def other(self, n: int = 1) -> None:
        """Messages of other channels take stream sequences too."""
        self.seq += n

    def append(self, origin: str = "r1") -> LogEntry:
        self.seq += 1
        last_seq = self.entries[-1].seq if self.entries else 0
        before = self.applied
        self.applied = before.increment(origin)
        ts = before.to_dict()
        ts[origin] = self.applied[origin]
        k = len(self.entries) + 1
        msg = StoredMessage(f"m{k}", msgspec.Raw(b"1"), origin, ts, self.applied.to_dict())
        entry = LogEntry(self.seq, last_seq, CH, msg)
        self.entries.append(entry)
        return entry

    def grow(self, n: int, origin: str = "r1", others: int = 2) -> list[LogEntry]:
        out = []
        for _ in range(n):
            self.other(others)
            out.append(self.append(origin))
        return out

    def head(self) -> tuple[int, VectorClock]:
        if not self.entries:
            return 0, EMPTY
        return self.entries[-1].seq, self.entries[-1].position

    def read(self, after_seq: int, before_seq: int) -> list[LogEntry]:
        """What the node reads for a FillGap: fresh entries, as decoded from the stream."""
        return [fresh(e) for e in self.entries if after_seq < e.seq < before_seq]

    def missed(self, position: VectorClock, upto_seq: int) -> list[LogEntry]:
        """What the node reads for a CatchUp."""
        return [fresh(e) for e in self.entries if e.seq <= upto_seq and not e.covered_by(position)]


def frame_of(entry: LogEntry) -> bytes:
    """What the relay sends for an entry read from the stream (a catch-up)."""
    return message_frame(entry.channel, entry.msg)


def fresh(entry: LogEntry) -> LogEntry:
    return LogEntry(entry.seq, entry.last_seq, entry.channel, entry.msg)


def index_of(frame: bytes) -> int:
    body = json.loads(frame)
    assert body["op"] == "message"
    assert body["channel"] == CH
    position: dict[str, int] = body["position"]
    k = sum(position.values())
    assert body["id"] == f"m{k}"
    return k


class RecordingSink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.indexes: list[int] = []
        self.overflows = 0
        self.losses = 0

    def offer(self, frame: bytes) -> None:
        assert self.overflows == 0, "offered a frame after overflow()"
        assert self.losses == 0, "offered a frame after lost()"
        self.frames.append(frame)
        self.indexes.append(index_of(frame))

    def overflow(self) -> None:
        self.overflows += 1

    def lost(self) -> None:
        self.losses += 1


def started(
    n: int = 0, *, max_pending: int = 100, max_unconfirmed: int | None = None
) -> tuple[Stream, ChannelFeed]:
    stream = Stream()
    stream.grow(n)
    kwargs = {} if max_unconfirmed is None else {"max_unconfirmed": max_unconfirmed}
    feed = ChannelFeed(CH, max_pending, encode=message_frame, **kwargs)
    assert feed.start(*stream.head()) is None
    return stream, feed


def live(feed: ChannelFeed, *entries: LogEntry) -> list[FillGap | None]:
    return [feed.on_live(fresh(e)) for e in entries]


# --- the log side ------------------------------------------------------------------------


def test_live_delivery_in_order_to_several_sinks_with_identical_bytes() -> None:
    stream, feed = started(2)
    sinks = [RecordingSink() for _ in range(3)]
    for i, sink in enumerate(sinks):
        attached = feed.attach(i, sink, None)
        assert attached == AttachedLive(VectorClock({"r1": 2}))
    entries = stream.grow(4)
    assert live(feed, *entries) == [None] * 4
    for sink in sinks:
        assert sink.indexes == [3, 4, 5, 6]
    for a, b in zip(sinks[0].frames, sinks[1].frames, strict=True):
        assert a is b  # encoded once, the same bytes object for every subscriber
    assert feed.head_seq == feed.verified_seq == entries[-1].seq
    assert feed.head_position == VectorClock({"r1": 6})
    assert feed.subscriber_count == 3


def test_no_sinks_still_advances_the_head() -> None:
    stream, feed = started()
    entries = stream.grow(3)
    live(feed, *entries)
    assert feed.head_seq == entries[-1].seq
    assert feed.head_position == VectorClock({"r1": 3})


def test_duplicates_are_ignored() -> None:
    stream, feed = started(1)
    sink = RecordingSink()
    feed.attach("k", sink, None)
    entries = stream.grow(3)
    live(feed, *entries)
    assert live(feed, entries[0], entries[2], entries[1], stream.entries[0]) == [None] * 4
    assert sink.indexes == [2, 3, 4]
    assert feed.verified_seq == entries[-1].seq


def test_messages_before_start_are_buffered_then_applied_minus_those_at_or_below_head() -> None:
    stream = Stream()
    stream.grow(2)
    feed = ChannelFeed(CH, 10, encode=message_frame)
    # The live subscription is made before the head is read: 3..5 race the head read.
    early = stream.grow(3)
    assert live(feed, *early) == [None, None, None]
    assert not feed.ready and feed.head_seq == 0
    with pytest.raises(RuntimeError):
        feed.attach("k", RecordingSink(), None)
    # the head read saw entry 4
    assert feed.start(early[1].seq, early[1].position) is None
    assert feed.ready
    assert feed.head_seq == early[2].seq
    assert feed.head_position == VectorClock({"r1": 5})
    sink = RecordingSink()
    assert feed.attach("k", sink, None) == AttachedLive(VectorClock({"r1": 5}))
    live(feed, *stream.grow(1))
    assert sink.indexes == [6]


def test_early_messages_with_a_hole_after_the_head_ask_for_a_fill() -> None:
    stream = Stream()
    stream.grow(2)
    feed = ChannelFeed(CH, 10, encode=message_frame)
    head_seq, head_pos = stream.head()
    lost, arrived, later = stream.grow(3)
    live(feed, arrived, later)
    gap = feed.start(head_seq, head_pos)
    assert gap == FillGap(after_seq=head_seq, before_seq=arrived.seq)
    sink = RecordingSink()
    feed.attach("k", sink, None)
    assert feed.on_fill(stream.read(gap.after_seq, gap.before_seq), gap.before_seq) is None
    assert sink.indexes == [3, 4, 5]
    assert lost.seq < arrived.seq


def test_dropped_live_message_is_filled_and_everything_is_delivered_once_in_order() -> None:
    stream, feed = started(1)
    sink = RecordingSink()
    feed.attach("k", sink, None)
    e2, e3, e4, e5, e6 = stream.grow(5)
    assert live(feed, e2) == [None]
    # e3 dropped by core NATS; e4 reveals it
    gap = feed.on_live(fresh(e4))
    assert gap == FillGap(after_seq=e2.seq, before_seq=e4.seq)
    # later live messages are buffered, not delivered, while the fill is outstanding
    assert live(feed, e5, e6) == [None, None]
    assert sink.indexes == [2]
    # a late duplicate during the fill changes nothing
    assert live(feed, e2) == [None]
    assert feed.on_fill(stream.read(gap.after_seq, gap.before_seq), gap.before_seq) is None
    assert sink.indexes == [2, 3, 4, 5, 6]
    assert feed.verified_seq == e6.seq
    live(feed, e3, e4, e5, e6)
    assert sink.indexes == [2, 3, 4, 5, 6]


def test_fill_ignores_entries_outside_the_gap() -> None:
    stream, feed = started(1)
    sink = RecordingSink()
    feed.attach("k", sink, None)
    e2, e3, e4 = stream.grow(3)
    gap = feed.on_live(fresh(e3))
    assert gap == FillGap(stream.entries[0].seq, e3.seq)
    # the reader returned too much: the already-verified head and e3, e4 themselves
    assert feed.on_fill([fresh(stream.entries[0]), fresh(e2), fresh(e3), fresh(e4)], e3.seq) is None
    assert sink.indexes == [2, 3]
    live(feed, e4)
    assert sink.indexes == [2, 3, 4]


def test_a_predecessor_gone_from_the_stream_closes_subscribers_instead_of_skipping() -> None:
    """The live message names a predecessor the stream no longer has (deleted, or aged
    out): the subscriber cannot be shown an unbroken sequence, so it is dropped to resume
    from its position; the feed goes on for whoever subscribes next."""
    stream, feed = started(1)
    sink = RecordingSink()
    feed.attach("k", sink, None)
    e2, e3 = stream.grow(2)  # e2 gone from the stream: its position is still in e3's
    gap = feed.on_live(fresh(e3))
    assert gap == FillGap(stream.entries[0].seq, e3.seq)
    # Not in the stream: maybe a frame nobody stored named it. The stream is read again
    # from its last confirmed point, and its positions show an entry is gone.
    check = feed.on_fill([], gap.before_seq)
    assert check == FillGap(stream.entries[0].seq, e3.seq + 1)
    stored = [e for e in stream.read(check.after_seq, check.before_seq) if e.seq != e2.seq]
    lost = feed.on_fill(stored, check.before_seq)
    assert isinstance(lost, GapLost) and "no longer in the stream" in lost.reason
    assert sink.losses == 1 and sink.indexes == []
    assert feed.subscriber_count == 0
    later = RecordingSink()
    feed.attach("k2", later, None)
    e4 = stream.append()
    assert feed.on_live(fresh(e4)) is None
    assert later.indexes == [4]


def test_a_fill_missing_entries_in_the_middle_is_a_lost_gap() -> None:
    """Every entry of a causal log moves the position by one: a fill that skips one (the
    stream lost it) is caught even when the last link is there."""
    stream, feed = started(1)
    sink = RecordingSink()
    feed.attach("k", sink, None)
    e2, e3, e4 = stream.grow(3)
    gap = feed.on_live(fresh(e4))  # e2 and e3 dropped on the way
    assert gap is not None
    check = feed.on_fill([e3], gap.before_seq)  # e2 is gone from the stream
    assert isinstance(check, FillGap)  # read again from the last confirmed point
    stored = [e for e in stream.read(check.after_seq, check.before_seq) if e.seq != e2.seq]
    lost = feed.on_fill(stored, check.before_seq)
    assert isinstance(lost, GapLost)
    assert sink.losses == 1 and sink.indexes == []


def test_a_fill_given_up_on_closes_subscribers() -> None:
    stream, feed = started(1)
    sink = RecordingSink()
    feed.attach("k", sink, None)
    _e2, e3 = stream.grow(2)
    gap = feed.on_live(fresh(e3))
    assert gap is not None
    lost = feed.abandon_gap(gap.before_seq, "NATS did not answer")
    assert lost.reason == "NATS did not answer" and sink.losses == 1


def test_a_second_gap_found_while_draining_the_buffer() -> None:
    stream, feed = started(1)
    sink = RecordingSink()
    feed.attach("k", sink, None)
    _e2, e3, _e4, e5, e6 = stream.grow(5)
    gap1 = feed.on_live(fresh(e3))  # e2 dropped
    assert gap1 == FillGap(stream.entries[0].seq, e3.seq)
    assert live(feed, e5, e6) == [None, None]  # e4 dropped too; buffered
    gap2 = feed.on_fill(stream.read(gap1.after_seq, gap1.before_seq), gap1.before_seq)
    assert gap2 == FillGap(e3.seq, e5.seq)
    assert sink.indexes == [2, 3]
    assert feed.on_fill(stream.read(gap2.after_seq, gap2.before_seq), gap2.before_seq) is None
    assert sink.indexes == [2, 3, 4, 5, 6]


def test_check_head_after_reconnect() -> None:
    stream, feed = started(1)
    sink = RecordingSink()
    feed.attach("k", sink, None)
    e2, _e3, e4 = stream.grow(3)
    live(feed, e2)
    # e3, e4 lost during the reconnect; nothing else arrives to reveal them
    assert feed.check_head(e2.seq) is None  # up to date
    gap = feed.check_head(e4.seq)
    assert gap == FillGap(after_seq=e2.seq, before_seq=e4.seq + 1)
    assert feed.check_head(e4.seq) is None  # a fill is already outstanding
    e5 = stream.grow(1)[0]
    assert live(feed, e5) == [None]  # buffered while filling
    assert sink.indexes == [2]
    assert feed.on_fill(stream.read(gap.after_seq, gap.before_seq), gap.before_seq) is None
    assert sink.indexes == [2, 3, 4, 5]
    assert feed.check_head(e5.seq) is None


def test_check_head_before_start_does_nothing() -> None:
    feed = ChannelFeed(CH, 10, encode=message_frame)
    assert feed.check_head(10) is None


# --- the subscriber side (the seam) ------------------------------------------------------


def test_attach_live_from_the_head() -> None:
    stream, feed = started(3)
    sink = RecordingSink()
    assert feed.attach("k", sink, None) == AttachedLive(VectorClock({"r1": 3}))
    live(feed, *stream.grow(2))
    assert sink.indexes == [4, 5]


def test_attach_behind_the_head_catches_up_with_an_exact_seam() -> None:
    stream, feed = started(5)
    sink = RecordingSink()
    position = VectorClock({"r1": 2})
    attached = feed.attach("k", sink, position)
    head_seq, head_pos = stream.head()
    assert attached == CatchUp(upto_seq=head_seq, head_position=head_pos)
    # live traffic during the catch-up is held back
    e6, e7 = stream.grow(2)
    live(feed, e6, e7)
    assert sink.frames == []
    # the node reads the missed stretch and offers it
    for entry in stream.missed(position, attached.upto_seq):
        sink.offer(frame_of(entry))
    assert sink.indexes == [3, 4, 5]
    assert feed.finish_catch_up("k") is True
    assert sink.indexes == [3, 4, 5, 6, 7]
    live(feed, *stream.grow(1))
    assert sink.indexes == [3, 4, 5, 6, 7, 8]
    assert feed.finish_catch_up("k") is False  # already live


def test_attach_with_a_position_covering_the_head_is_live() -> None:
    stream, feed = started(4)
    sink = RecordingSink()
    assert feed.attach("k", sink, VectorClock({"r1": 4})) == AttachedLive(VectorClock({"r1": 4}))
    live(feed, *stream.grow(2))
    assert sink.indexes == [5, 6]


def test_attach_ahead_of_the_head_acts_as_a_floor() -> None:
    stream, feed = started(4)
    sink = RecordingSink()
    position = VectorClock({"r1": 6})  # e.g. it saw 5 and 6 through another relay
    assert feed.attach("k", sink, position) == AttachedLive(position)
    live(feed, *stream.grow(4))
    assert sink.indexes == [7, 8]
    assert feed.subscriber_count == 1


def test_floor_ahead_in_another_region() -> None:
    stream, feed = started(2)
    sink = RecordingSink()
    position = VectorClock({"r1": 2, "r2": 1})
    assert feed.attach("k", sink, position) == AttachedLive(position)
    stream.other()
    stream.append("r2")  # covered by the floor
    stream.append("r1")
    stream.append("r2")
    live(feed, *stream.entries[2:])
    assert sink.indexes == [4, 5]


def test_catch_up_with_a_concurrent_position() -> None:
    stream = Stream()
    for origin in ["r1", "r2", "r1", "r2"]:
        stream.other()
        stream.append(origin)
    feed = ChannelFeed(CH, 10, encode=message_frame)
    feed.start(*stream.head())
    sink = RecordingSink()
    position = VectorClock({"r1": 3})  # has r1#1..r1#3 (r1#3 comes later here), no r2
    attached = feed.attach("k", sink, position)
    assert isinstance(attached, CatchUp)
    stream.append("r1")  # r1#3: covered
    stream.append("r2")  # r2#3
    live(feed, *stream.entries[4:])
    for entry in stream.missed(position, attached.upto_seq):
        sink.offer(frame_of(entry))
    assert feed.finish_catch_up("k")
    # entries 2 (r2#1), 4 (r2#2), 6 (r2#3); entry 5 (r1#3) was filtered by the floor
    assert sink.indexes == [2, 4, 6]


def test_pending_overflow_calls_overflow_and_detaches() -> None:
    stream, feed = started(3, max_pending=2)
    sink, other = RecordingSink(), RecordingSink()
    feed.attach("other", other, None)
    assert isinstance(feed.attach("k", sink, VectorClock({"r1": 1})), CatchUp)
    entries = stream.grow(3)
    live(feed, *entries[:2])
    assert sink.overflows == 0  # exactly max_pending held
    live(feed, entries[2])
    assert sink.overflows == 1
    assert feed.subscriber_count == 1
    assert feed.finish_catch_up("k") is False
    live(feed, *stream.grow(1))
    assert sink.frames == []
    assert sink.overflows == 1
    assert other.indexes == [4, 5, 6, 7]


def test_detach_stops_delivery() -> None:
    stream, feed = started(1)
    a, b = RecordingSink(), RecordingSink()
    feed.attach("a", a, None)
    feed.attach("b", b, VectorClock({"r1": 3}))
    live(feed, *stream.grow(1))
    feed.detach("a")
    feed.detach("b")
    feed.detach("never-attached")
    live(feed, *stream.grow(3))
    assert a.indexes == [2]
    assert b.indexes == []
    assert feed.subscriber_count == 0


def test_detach_during_catch_up() -> None:
    stream, feed = started(3)
    sink = RecordingSink()
    assert isinstance(feed.attach("k", sink, EMPTY), CatchUp)
    live(feed, *stream.grow(1))
    feed.detach("k")
    assert feed.finish_catch_up("k") is False
    live(feed, *stream.grow(1))
    assert sink.frames == []
    assert feed.subscriber_count == 0


def test_attach_during_an_outstanding_fill() -> None:
    stream, feed = started(1)
    e2, e3 = stream.grow(2)
    gap = feed.on_live(fresh(e3))  # e2 dropped
    assert gap is not None
    sink, catching = RecordingSink(), RecordingSink()
    assert feed.attach("k", sink, None) == AttachedLive(VectorClock({"r1": 1}))
    attached = feed.attach("c", catching, EMPTY)
    assert attached == CatchUp(stream.entries[0].seq, VectorClock({"r1": 1}))
    feed.on_fill(stream.read(gap.after_seq, gap.before_seq), gap.before_seq)
    for entry in stream.missed(EMPTY, attached.upto_seq):
        catching.offer(frame_of(entry))
    feed.finish_catch_up("c")
    assert sink.indexes == [2, 3]
    assert catching.indexes == [1, 2, 3]
    assert e2.seq < e3.seq


# --- random schedules (stateful) ---------------------------------------------------------

MAX_PENDING = 3


@dataclass
class SinkModel:
    sink: RecordingSink
    position: VectorClock  # the sink must get exactly the entries this does not cover
    catch_up: list[LogEntry] | None = None  # still to offer by the "node"; None once live
    upto_seq: int = 0
    attached: bool = True


class FeedMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.stream = Stream()
        # A tiny memory of unconfirmed live frames: forgetting them (trust by age) must
        # never repeat or lose a message either (bench chaos found repeats).
        self.feed = ChannelFeed(CH, MAX_PENDING, encode=message_frame, max_unconfirmed=3)
        self.started = False
        self.in_flight: deque[LogEntry] = deque()  # published live, not yet delivered
        self.passed: list[LogEntry] = []  # delivered or dropped: candidates for duplicates
        self.gap: FillGap | None = None
        self.sinks: dict[Hashable, SinkModel] = {}
        self.max_seen = 0  # highest stream sequence the feed has been shown

    # helpers

    def _gap(self, gap: FillGap | None) -> None:
        if gap is not None:
            assert self.gap is None, f"second FillGap {gap} while {self.gap} is outstanding"
            assert gap.after_seq < gap.before_seq
            self.gap = gap

    def _pick(self, i: int, catching: bool | None = None) -> Hashable | None:
        keys = [
            k
            for k, m in self.sinks.items()
            if m.attached
            and m.sink.overflows == 0
            and (catching is None or (m.catch_up is not None) == catching)
        ]
        return keys[i % len(keys)] if keys else None

    def _expected(self, model: SinkModel) -> list[int]:
        return [
            k
            for k, e in enumerate(self.stream.entries, start=1)
            if not e.covered_by(model.position)
        ]

    # rules

    @initialize(
        stored=st.lists(st.sampled_from(ORIGINS), max_size=5),
        start_now=st.integers(0, 3).map(lambda n: n > 0),
    )
    def stored_before_the_subscription(self, stored: list[str], start_now: bool) -> None:
        for origin in stored:
            self.stream.other(2)
            self.stream.append(origin)
        if start_now:
            self.start()

    @rule(
        batch=st.lists(
            st.tuples(
                st.sampled_from(ORIGINS),
                st.integers(0, 2),  # other channels' messages before this one
                st.integers(0, 4).map(lambda n: n == 0),  # dropped by the live subscription
            ),
            min_size=1,
            max_size=3,
        )
    )
    def publish(self, batch: list[tuple[str, int, bool]]) -> None:
        for origin, others, dropped in batch:
            self.stream.other(others)
            entry = self.stream.append(origin)
            if dropped:
                self.passed.append(entry)
            else:
                self.in_flight.append(entry)

    @precondition(lambda self: self.in_flight)
    @rule(n=st.integers(1, 3))
    def deliver(self, n: int = 1) -> None:
        for _ in range(min(n, len(self.in_flight))):
            entry = self.in_flight.popleft()
            self.passed.append(entry)
            self.max_seen = max(self.max_seen, entry.seq)
            self._gap(self.feed.on_live(fresh(entry)))

    @precondition(lambda self: self.passed)
    @rule(i=st.integers(0, 10**6))
    def deliver_late_duplicate(self, i: int) -> None:
        entry = self.passed[i % len(self.passed)]
        self.max_seen = max(self.max_seen, entry.seq)
        self._gap(self.feed.on_live(fresh(entry)))

    @precondition(lambda self: not self.started)
    @rule()
    def start(self) -> None:
        self.started = True
        head_seq, head = self.stream.head()
        self.max_seen = max(self.max_seen, head_seq)
        self._gap(self.feed.start(head_seq, head))

    @precondition(lambda self: self.gap is not None)
    @rule()
    def answer_fill(self) -> None:
        gap, self.gap = self.gap, None
        assert gap is not None
        self._gap(
            self.feed.on_fill(self.stream.read(gap.after_seq, gap.before_seq), gap.before_seq)
        )

    @precondition(lambda self: self.started)
    @rule(lose_in_flight=st.booleans())
    def reconnect(self, lose_in_flight: bool) -> None:
        if lose_in_flight:
            self.passed.extend(self.in_flight)
            self.in_flight.clear()
        self._gap(self.feed.check_head(self.stream.head()[0]))

    @precondition(lambda self: self.started)
    @rule()
    def attach_live(self) -> None:
        key = len(self.sinks)
        sink = RecordingSink()
        head = self.feed.head_position
        attached = self.feed.attach(key, sink, None)
        assert attached == AttachedLive(head)
        self.sinks[key] = SinkModel(sink, head)

    @precondition(lambda self: self.started)
    @rule(a=st.integers(0, 10**6), b=st.integers(0, 10**6), prefix=st.booleans())
    def attach_at(self, a: int, b: int, prefix: bool) -> None:
        entries = self.stream.entries
        if prefix:  # a position this region's log went through
            k = a % (len(entries) + 1)
            position = entries[k - 1].position if k else EMPTY
        else:  # any position: behind, ahead or concurrent in each region
            applied = self.stream.applied
            position = VectorClock(
                {"r1": a % (applied.get("r1") + 3), "r2": b % (applied.get("r2") + 3)}
            )
        key = len(self.sinks)
        sink = RecordingSink()
        head_seq, head = self.feed.head_seq, self.feed.head_position
        attached = self.feed.attach(key, sink, position)
        model = SinkModel(sink, position)
        if head <= position:
            assert attached == AttachedLive(head.merge(position))
        else:
            assert attached == CatchUp(head_seq, head)
            assert isinstance(attached, CatchUp)
            model.catch_up = self.stream.missed(position, attached.upto_seq)
            model.upto_seq = attached.upto_seq
        self.sinks[key] = model

    @rule(i=st.integers(0, 10**6), n=st.integers(1, 3))
    def catch_up_step(self, i: int, n: int) -> None:
        key = self._pick(i, catching=True)
        if key is None:
            return
        model = self.sinks[key]
        assert model.catch_up is not None
        for entry in model.catch_up[:n]:
            model.sink.offer(frame_of(entry))
        del model.catch_up[:n]

    @rule(i=st.integers(0, 10**6))
    def finish_catch_up(self, i: int) -> None:
        keys = [k for k, m in self.sinks.items() if m.catch_up is not None]
        if not keys:
            return
        key = keys[i % len(keys)]
        model = self.sinks[key]
        assert model.catch_up is not None
        alive = model.attached and model.sink.overflows == 0
        if alive:
            for entry in model.catch_up:
                model.sink.offer(frame_of(entry))
        model.catch_up = None
        assert self.feed.finish_catch_up(key) is alive

    @rule(i=st.integers(0, 10**6))
    def detach(self, i: int) -> None:
        key = self._pick(i)
        if key is None:
            return
        self.sinks[key].attached = False
        self.feed.detach(key)

    @precondition(lambda self: self.started)
    @rule()
    def quiesce(self) -> None:
        """Deliver everything, answer every fill, resync; then every sink is complete."""
        while self.in_flight or self.gap is not None:
            self.deliver(len(self.in_flight))
            if self.gap is not None:
                self.answer_fill()
        # Without any resync, the feed has applied everything up to what it was shown.
        assert self.feed.head_seq >= self.max_seen
        for _ in range(10_000):
            while self.in_flight:
                self.deliver()
            if self.gap is not None:
                self.answer_fill()
                continue
            self._gap(self.feed.check_head(self.stream.head()[0]))
            if self.gap is None:
                break
        else:
            raise AssertionError("fills never converge")
        assert self.feed.head_seq == self.stream.head()[0]
        assert self.feed.head_position == self.stream.applied
        for _ in range(len(self.sinks)):
            self.finish_catch_up(0)
        for key, model in self.sinks.items():
            if model.attached and model.sink.overflows == 0:
                assert model.sink.indexes == self._expected(model), f"sink {key}"

    # invariants

    @invariant()
    def every_sink_got_a_gapless_prefix(self) -> None:
        for key, model in self.sinks.items():
            got = model.sink.indexes
            assert got == self._expected(model)[: len(got)], f"sink {key}"

    @invariant()
    def overflow_exactly_when_pending_exceeds_the_limit(self) -> None:
        for key, model in self.sinks.items():
            assert model.sink.overflows <= 1
            if model.catch_up is None or not model.attached:
                continue
            pending = [
                e
                for e in self.stream.entries
                if model.upto_seq < e.seq <= self.feed.head_seq and not e.covered_by(model.position)
            ]
            assert (model.sink.overflows == 1) == (len(pending) > MAX_PENDING), f"sink {key}"

    @invariant()
    def subscriber_count_matches(self) -> None:
        alive = [m for m in self.sinks.values() if m.attached and m.sink.overflows == 0]
        assert self.feed.subscriber_count == len(alive)

    @invariant()
    def verified_never_behind_the_head(self) -> None:
        assert self.feed.verified_seq >= self.feed.head_seq

    def teardown(self) -> None:
        if sys.exc_info()[0] is not None:
            return  # a step already failed: report that, not a consequence of it
        if not self.started:
            self.start()
        self.quiesce()


FeedMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_feed_random_schedules = FeedMachine.TestCase
