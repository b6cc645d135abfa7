"""Total order across regions: same sequence everywhere, under random schedules."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.ordering import ChannelOrderBuffer, Stamped
from federation.total_order import Entry, Key, MergerFull, TotalOrderMerger
from federation.vclock import EMPTY, VectorClock

# Index order differs from name order, so a tie-break on position instead of name shows.
REGIONS = ["us-east", "ap-south", "eu-west"]
DEDUPE_IDS = ["req-1", "req-2", "req-3"]


def reference_order(entries: Iterable[Entry[int]], max_ids: int) -> list[Entry[int]]:
    """The specification: non-nulls by key, later copies of a remembered dedupe id dropped."""
    out: list[Entry[int]] = []
    remembered: deque[str] = deque()
    for e in sorted((e for e in entries if not e.null), key=lambda e: e.key):
        if e.dedupe_id is not None and max_ids > 0:
            if e.dedupe_id in remembered:
                continue
            remembered.append(e.dedupe_id)
            if len(remembered) > max_ids:
                remembered.popleft()
        out.append(e)
    return out


class SimRegion:
    """One region's causal log for one channel, and the merger reading it."""

    def __init__(self, name: str, max_ids: int) -> None:
        self.name = name
        self.applied = EMPTY
        self.log: list[Entry[int]] = []
        self.buffer: ChannelOrderBuffer[Entry[int]] = ChannelOrderBuffer(max_buffered=10_000)
        # Applied a remote non-null and has not appended a null since (the real system
        # appends it some time later, covering everything applied by then).
        self.owes_null = False
        self.merger: TotalOrderMerger[int] = TotalOrderMerger(REGIONS, max_ids=max_ids)
        self.delivered: list[Entry[int]] = []


class World:
    def __init__(self, max_ids: int, check_every_add: bool) -> None:
        self.max_ids = max_ids
        self.check_every_add = check_every_add
        self.regions = {name: SimRegion(name, max_ids) for name in REGIONS}
        self.sent: list[Stamped[Entry[int]]] = []  # every entry any region originated
        self.max_delivered: Key | None = None  # largest key any region delivered so far

    def originate(self, region: SimRegion, *, null: bool, dedupe_id: str | None = None) -> None:
        ts = region.applied.increment(region.name)
        region.applied = ts
        entry = Entry(region.name, ts, null, len(self.sent), None if null else dedupe_id)
        if self.check_every_add and self.max_delivered is not None:
            # Safety from the other side: nothing can be created that sorts before
            # something already delivered somewhere.
            assert entry.key > self.max_delivered, f"{entry} sorts before a delivered entry"
        if null:
            region.owes_null = False
        self.sent.append(Stamped(region.name, ts, entry))
        self._append(region, entry)

    def deliver(self, msg: Stamped[Entry[int]], region: SimRegion) -> None:
        if msg.origin == region.name:
            return
        region.buffer.offer(msg, region.applied)
        while (ready := region.buffer.next_ready(region.applied)) is not None:
            region.applied = region.applied.with_entry(ready.origin, ready.seq)
            region.buffer.applied(ready)
            if not ready.payload.null:
                region.owes_null = True
            self._append(region, ready.payload)

    def _append(self, region: SimRegion, entry: Entry[int]) -> None:
        region.log.append(entry)
        out = region.merger.add(entry)
        region.delivered.extend(out)
        for e in out:
            if self.max_delivered is None or e.key > self.max_delivered:
                self.max_delivered = e.key
        if self.check_every_add:
            # Whatever any region will originate later sorts after everything delivered
            # (checked in originate), so the final order restricted to what exists now is
            # the reference order of what exists now.
            expected = reference_order((m.payload for m in self.sent), self.max_ids)
            got = region.delivered
            assert got == expected[: len(got)], f"{region.name} delivered out of order"


STEP = st.tuples(
    st.sampled_from(["publish", "deliver", "catch-up", "null"]),
    st.integers(0, len(REGIONS) - 1),  # the region acting
    st.integers(0, 10_000),  # which entry, peer or debtor (modulo how many there are)
    st.none() | st.sampled_from(DEDUPE_IDS),  # a publish's dedupe id
)


def simulate(data: st.DataObject, *, check_every_add: bool = False) -> World:
    max_ids = data.draw(st.sampled_from([1, 2, 10_000]), label="max_ids")
    # One draw for the whole schedule: drawing step by step costs more than the test.
    # Lists average about five elements; a list of bursts gives long schedules too, and
    # the shrinker can still delete steps one by one.
    bursts = data.draw(
        st.lists(st.lists(STEP, min_size=2, max_size=14), max_size=6), label="schedule"
    )
    schedule = [step for burst in bursts for step in burst]
    rng = data.draw(st.randoms(use_true_random=False), label="link order")
    world = World(max_ids, check_every_add)
    regions = [world.regions[name] for name in REGIONS]
    for action, who, pick, dedupe_id in schedule:
        region = regions[who]
        owing = [r for r in regions if r.owes_null]
        if action == "null" and owing:
            world.originate(owing[pick % len(owing)], null=True)
        elif action == "deliver" and world.sent:
            # Any entry, to any region, in any order, any number of times; the causal
            # buffer holds it until its dependencies are applied.
            world.deliver(world.sent[pick % len(world.sent)], region)
        elif action == "catch-up":
            # A link reads a peer's whole log, in the peer's order.
            for entry in regions[pick % len(regions)].log:
                world.deliver(Stamped(entry.origin, entry.ts, entry), region)
        else:
            world.originate(region, null=False, dedupe_id=dedupe_id)
    # Links heal: everything reaches everyone, every owed null is appended and reaches
    # everyone too. Nulls create no further debts, so this ends after two rounds.
    while True:
        for region in regions:
            backlog = list(world.sent)
            rng.shuffle(backlog)
            for msg in backlog:
                world.deliver(msg, region)
        owing = [r for r in regions if r.owes_null]
        if not owing:
            break
        for region in owing:
            world.originate(region, null=True)
    for region in regions:
        assert len(region.log) == len(world.sent)
        assert len(region.buffer) == 0
    return world


def assert_causal(seq: Sequence[Entry[int]]) -> None:
    for i, j in itertools.combinations(range(len(seq)), 2):
        # seq[i] comes first, so seq[j] must not be a causal predecessor of it.
        assert not seq[j].ts <= seq[i].ts, f"{seq[j]} delivered after its successor {seq[i]}"


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_region_delivers_the_same_total_order(data: st.DataObject) -> None:
    world = simulate(data)
    first, *others = (world.regions[name].delivered for name in REGIONS)
    for other in others:
        assert other == first, "regions disagree on the total order"
    all_entries = [m.payload for m in world.sent]
    assert first == reference_order(all_entries, world.max_ids)
    assert not any(e.null for e in first)
    keys = [e.key for e in first]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert_causal(first)
    # Exactly once: distinct entries without a dedupe id all appear, once; every dedupe
    # id appears (more than once only when it was forgotten in between).
    plain = [e for e in all_entries if not e.null and e.dedupe_id is None]
    assert [e for e in first if e.dedupe_id is None] == sorted(plain, key=lambda e: e.key)
    published_ids = {e.dedupe_id for e in all_entries if not e.null} - {None}
    assert {e.dedupe_id for e in first} - {None} == published_ids
    if world.max_ids >= len(DEDUPE_IDS):
        delivered_ids = [e.dedupe_id for e in first if e.dedupe_id is not None]
        assert len(delivered_ids) == len(set(delivered_ids))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_prefix_is_a_prefix_of_the_final_order(data: st.DataObject) -> None:
    world = simulate(data, check_every_add=True)
    final = reference_order((m.payload for m in world.sent), world.max_ids)
    for region in world.regions.values():
        assert region.delivered == final


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_nothing_pending_once_everyone_heard_everyone(data: st.DataObject) -> None:
    world = simulate(data)
    for region in world.regions.values():
        assert region.merger.pending() == 0, f"{region.name} still holds entries back"
        assert region.merger.waiting_on() == []


# --- examples -------------------------------------------------------------------------

A, B, C = "us-east", "ap-south", "eu-west"


def entry(origin: str, null: bool = False, dedupe_id: str | None = None, **ts: int) -> Entry[str]:
    clock = VectorClock({k.replace("_", "-"): v for k, v in ts.items()})
    return Entry(origin, clock, null, f"{origin}:{clock.get(origin)}", dedupe_id)


def merger(**kwargs: int) -> TotalOrderMerger[str]:
    return TotalOrderMerger(REGIONS, **kwargs)


def test_waits_for_a_silent_region_until_its_null_arrives() -> None:
    m = merger()
    msg = entry(A, us_east=1)
    assert m.add(msg) == []
    assert m.waiting_on() == [B, C]
    assert m.add(entry(B, null=True, us_east=1, ap_south=1)) == []
    assert m.pending() == 1
    assert m.waiting_on() == [C], "eu-west has said nothing"
    assert m.add(entry(C, null=True, us_east=1, eu_west=1)) == [msg]
    assert m.pending() == 0
    assert m.waiting_on() == []


def test_a_region_that_sorts_before_needs_a_later_key() -> None:
    m = merger()
    msg = entry(B, us_east=1, ap_south=1)  # key (2, "ap-south")
    m.add(entry(A, us_east=1))  # (1, "us-east"): held back by ap-south and eu-west
    m.add(msg)  # releases nothing: eu-west is silent
    # eu-west at (2, "eu-west") is past (1, "us-east") and (2, "ap-south").
    assert m.add(entry(C, null=True, us_east=1, eu_west=1)) == [entry(A, us_east=1)]
    assert m.waiting_on() == [A]  # us-east is only at (1, "us-east")
    assert m.add(entry(A, null=True, us_east=2, ap_south=1)) == [msg]


def test_ties_are_broken_by_region_name_whatever_the_arrival_order() -> None:
    first, second = entry(B, ap_south=1), entry(A, us_east=1)  # both total 1
    nulls = [
        entry(C, null=True, us_east=1, ap_south=1, eu_west=1),
        entry(A, null=True, us_east=2, ap_south=1),
        entry(B, null=True, us_east=1, ap_south=2),
    ]
    for order in ([second, first], [first, second]):
        m = merger()
        out = [e for x in [*order, *nulls] for e in m.add(x)]
        assert out == [first, second], "ap-south < us-east"


def test_repeated_entries_are_ignored() -> None:
    m = merger()
    one, two = entry(A, us_east=1), entry(A, us_east=2)
    m.add(one)
    m.add(two)
    assert m.add(one) == []
    assert m.add(two) == []
    assert m.pending() == 2
    m.add(entry(B, null=True, us_east=2, ap_south=1))
    assert m.add(entry(C, null=True, us_east=2, eu_west=1)) == [one, two]
    assert m.add(two) == []


def test_an_entry_from_an_unknown_region_raises() -> None:
    m = merger()
    with pytest.raises(ValueError, match="mars"):
        m.add(entry("mars", mars=1))
    assert m.pending() == 0


def test_an_origin_whose_keys_do_not_increase_raises() -> None:
    m = merger()
    m.add(entry(A, us_east=1, ap_south=3))
    with pytest.raises(ValueError, match="advance"):
        m.add(entry(A, us_east=2))  # later, yet total 2 < 4: not a causal log


def test_bounded_and_unchanged_when_full() -> None:
    m = merger(max_pending=2)
    one, two, third = entry(A, us_east=1), entry(A, us_east=2), entry(A, us_east=3)
    m.add(one)
    m.add(two)
    with pytest.raises(MergerFull):
        m.add(third)
    assert m.pending() == 2
    with pytest.raises(MergerFull):
        m.add(third)  # still refused, not mistaken for a repeat
    assert m.add(entry(C, null=True, us_east=2, eu_west=1)) == []
    # Full, but this entry moves ap-south past the head: accepted, and room is made.
    from_b = entry(B, us_east=1, ap_south=1)  # key (2, "ap-south")
    assert m.add(from_b) == [one, from_b]
    assert m.pending() == 1
    assert m.add(third) == []
    assert m.pending() == 2


def test_dedupe_keeps_the_first_copy_in_total_order_in_every_region() -> None:
    # A client published req-7 through us-east, timed out, and published again through
    # ap-south: two concurrent entries, both total 1; ap-south's sorts first.
    via_a = entry(A, dedupe_id="req-7", us_east=1)
    via_b = entry(B, dedupe_id="req-7", ap_south=1)
    other = entry(C, eu_west=1)
    # The nulls each region appends after applying remote messages.
    a_null_1 = entry(A, null=True, us_east=2, eu_west=1)
    a_null_2 = entry(A, null=True, us_east=3, ap_south=1, eu_west=1)
    b_null_1 = entry(B, null=True, us_east=1, ap_south=2)
    b_null_2 = entry(B, null=True, us_east=1, ap_south=3, eu_west=1)
    c_null = entry(C, null=True, us_east=1, ap_south=1, eu_west=2)
    logs = {  # two causal logs of the same entries, interleaved differently
        A: [via_a, other, a_null_1, via_b, a_null_2, c_null, b_null_1, b_null_2],
        B: [via_b, via_a, b_null_1, other, b_null_2, a_null_1, c_null, a_null_2],
    }
    for region, log in logs.items():
        m = merger()
        out = [e for x in log for e in m.add(x)]
        assert out == [via_b, other], f"{region} kept the wrong copy"
        assert m.pending() == 0


def test_dedupe_forgets_the_oldest_ids_beyond_max_ids() -> None:
    m = merger(max_ids=1)
    out: list[Entry[str]] = []
    for n, dedupe_id in enumerate(["p", "q", "p", "p"], start=1):
        out += m.add(entry(A, dedupe_id=dedupe_id, us_east=n))
    out += m.add(entry(B, null=True, us_east=4, ap_south=1))
    out += m.add(entry(C, null=True, us_east=4, eu_west=1))
    # p, then q (p forgotten), then p again (q forgotten), then the repeat of p dropped.
    assert [e.dedupe_id for e in out] == ["p", "q", "p"]


def test_nulls_are_never_delivered() -> None:
    m = merger()
    out = m.add(entry(A, null=True, us_east=1))
    out += m.add(entry(B, null=True, us_east=1, ap_south=1))
    out += m.add(entry(C, null=True, us_east=1, ap_south=1, eu_west=1))
    assert out == []
    assert m.pending() == 0


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        TotalOrderMerger([])
    with pytest.raises(ValueError):
        TotalOrderMerger(REGIONS, max_pending=0)
