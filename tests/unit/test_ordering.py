"""Causal delivery across regions, under random interleavings, delays and duplicates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.ordering import BufferFull, ChannelOrderBuffer, Stamped, is_ready
from federation.vclock import EMPTY, VectorClock

REGIONS = ["ap-south", "eu-west", "us-east"]


class Region:
    """One region's log for one channel, fed by local publishes and a causal buffer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.applied = EMPTY
        self.log: list[Stamped[int]] = []
        self.buffer: ChannelOrderBuffer[int] = ChannelOrderBuffer(max_buffered=10_000)

    def publish(self, payload: int) -> Stamped[int]:
        ts = self.applied.increment(self.name)
        msg = Stamped(self.name, ts, payload)
        self.applied = ts
        self.log.append(msg)
        return msg

    def receive(self, msg: Stamped[int]) -> None:
        if msg.origin == self.name:
            return  # loop-free: never re-apply our own
        self.buffer.offer(msg, self.applied)
        while (ready := self.buffer.next_ready(self.applied)) is not None:
            assert is_ready(ready.ts, ready.origin, self.applied)
            self.applied = self.applied.with_entry(ready.origin, ready.seq)
            self.log.append(ready)
            self.buffer.applied(ready)


def check_causal_log(log: list[Stamped[int]]) -> None:
    seen: dict[str, int] = {}
    keys = set()
    for i, m in enumerate(log):
        key = (m.origin, m.seq)
        assert key not in keys, f"#{i} {key} applied twice"
        keys.add(key)
        assert m.seq == seen.get(m.origin, 0) + 1, f"#{i} {key} out of origin order"
        for k, v in m.ts.items():
            if k != m.origin:
                assert v <= seen.get(k, 0), f"#{i} {key} before its dependency {k}:{v}"
        seen[m.origin] = m.seq


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_schedules_converge_in_causal_order(data: st.DataObject) -> None:
    regions = {name: Region(name) for name in REGIONS}
    sent: list[Stamped[int]] = []
    for step in range(data.draw(st.integers(0, 60), label="steps")):
        if not sent or data.draw(st.booleans(), label="publish?"):
            where = data.draw(st.sampled_from(REGIONS), label="publisher")
            sent.append(regions[where].publish(step))
        else:
            # Any message, to any region, any number of times, in any order: a delay line
            # with re-deliveries and copies arriving over several paths.
            msg = data.draw(st.sampled_from(sent), label="deliver")
            to = data.draw(st.sampled_from(REGIONS), label="to")
            regions[to].receive(msg)
    # Links heal: everything reaches everyone, in a random order, some twice.
    for region in regions.values():
        backlog = data.draw(st.permutations(sent), label="backlog")
        for msg in backlog + backlog[: len(backlog) // 3]:
            region.receive(msg)
    for region in regions.values():
        check_causal_log(region.log)
        assert len(region.log) == len(sent), "every message applied everywhere"
        assert len(region.buffer) == 0


def test_waits_for_dependency_then_releases_both() -> None:
    buf: ChannelOrderBuffer[str] = ChannelOrderBuffer(max_buffered=10)
    m1 = Stamped("us-east", VectorClock({"us-east": 1}), "m1")
    m2 = Stamped("eu-west", VectorClock({"us-east": 1, "eu-west": 1}), "m2")
    applied = EMPTY
    assert buf.offer(m2, applied)
    assert buf.next_ready(applied) is None
    assert buf.missing(applied) == VectorClock({"us-east": 1})
    assert buf.offer(m1, applied)
    assert buf.next_ready(applied) is m1
    buf.applied(m1)
    applied = VectorClock({"us-east": 1})
    assert buf.next_ready(applied) is m2


def test_already_applied_and_repeated_offers_are_refused() -> None:
    buf: ChannelOrderBuffer[str] = ChannelOrderBuffer(max_buffered=10)
    m = Stamped("us-east", VectorClock({"us-east": 2}), "m")
    assert not buf.offer(m, VectorClock({"us-east": 2}))
    assert buf.offer(m, EMPTY)
    assert not buf.offer(m, EMPTY)
    assert len(buf) == 1
    # Another instance applied it meanwhile: it is not ready, and dropping what the new
    # head covers returns it (so its peer copy can be acknowledged).
    assert buf.next_ready(VectorClock({"us-east": 2})) is None
    assert buf.drop_covered(VectorClock({"us-east": 2})) == [m]
    assert len(buf) == 0


def test_bounded() -> None:
    buf: ChannelOrderBuffer[int] = ChannelOrderBuffer(max_buffered=2)
    buf.offer(Stamped("us-east", VectorClock({"us-east": 5}), 5), EMPTY)
    buf.offer(Stamped("us-east", VectorClock({"us-east": 6}), 6), EMPTY)
    with pytest.raises(BufferFull):
        buf.offer(Stamped("us-east", VectorClock({"us-east": 7}), 7), EMPTY)
