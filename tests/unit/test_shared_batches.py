"""Channels of one stream sharing atomic batches (``federation.adapters.shared_batches``),
on the in-memory region log: what leaves together, what each group is told, and what
happens when a shared batch is refused."""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.adapters.region_writer import RegionWriter
from federation.adapters.shared_batches import SharedBatches, _Waiting, last_sequences, take_batch
from federation.channel_writes import Result, Stored
from federation.logformat import StoredMessage
from federation.region_log import MAX_BATCH, Group, GroupAnswer, LogUnavailable
from federation.region_log_memory import MemoryRegionLog
from federation.settings import Namespace, RegionSettings
from federation.vclock import VectorClock
from tests.support.waiting import wait_until
from tests.support.writers import running_writers

pytestmark = pytest.mark.anyio

SETTINGS = RegionSettings(
    region="us-east",
    namespaces=(Namespace("default", ""), Namespace("other", "other:")),
)


def message(channel: str, n: int) -> StoredMessage:
    ts = {"us-east": n}
    return StoredMessage(f"{channel}-{n}", msgspec.Raw(b"1"), "us-east", ts, ts)


def group(channel: str, first: int, count: int, expected: int) -> Group:
    return Group(
        channel,
        [(message(channel, n), f"{channel}/{n}") for n in range(first, first + count)],
        expected,
    )


class CountingLog(MemoryRegionLog):
    """The memory log, answering after a few turns (as a round trip would) and recording
    every batch it is given."""

    def __init__(self, settings: RegionSettings, delay_s: float = 0.0) -> None:
        super().__init__(settings)
        self.delay_s = delay_s
        self.batches: list[list[str]] = []
        self.fail_batch = -1  # this batch (counted from 0) fails

    async def append_groups(self, groups: Sequence[Group]) -> GroupAnswer:
        self.batches.append([g.channel for g in groups])
        failing = len(self.batches) - 1 == self.fail_batch
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(self.delay_s)
        if failing:
            raise LogUnavailable("batch lost")
        return await super().append_groups(groups)


@given(sizes=st.lists(st.integers(1, 960), min_size=1, max_size=40), last=st.integers(10**5, 10**9))
def test_take_batch_and_last_sequences(sizes: list[int], last: int) -> None:
    """A batch is the oldest groups that fit (at least one); each group's last sequence is
    what consecutive numbering of the batch's entries gives it."""
    queue = deque(_Waiting(group(f"c{i}", 1, n, 0)) for i, n in enumerate(sizes))
    taken = take_batch(queue)
    assert taken and [w.group.channel for w in taken] == [f"c{i}" for i in range(len(taken))]
    total = sum(len(w.group.entries) for w in taken)
    assert total <= MAX_BATCH or len(taken) == 1
    if queue:
        assert total + len(queue[0].group.entries) > MAX_BATCH
    groups = [w.group for w in taken]
    seqs = itertools.count(last - total + 1)
    expected = [[next(seqs) for _ in g.entries][-1] for g in groups]
    assert last_sequences(groups, last) == expected


async def test_groups_queued_together_leave_as_one_batch() -> None:
    log = CountingLog(SETTINGS)
    await log.ensure_streams()
    answers: dict[str, GroupAnswer] = {}
    async with anyio.create_task_group() as tg:
        shared = SharedBatches(log, tg)

        async def send(g: Group) -> None:
            answers[g.channel] = await shared.append_group(g.channel, g.entries, g.expected_seq)

        # "first" leaves alone at once (nothing to share with); the rest queue meanwhile.
        tg.start_soon(send, group("first", 1, 2, 0))
        await anyio.lowlevel.checkpoint()
        for i in range(20):
            tg.start_soon(send, group(f"c{i}", 1, 3, 0))
            tg.start_soon(send, group(f"other:c{i}", 1, 2, 0))
    assert log.batches[0] == ["first"]
    # One more stream in flight at most, then the queue leaves whole, per stream.
    assert len(log.batches) <= 5, log.batches
    assert sorted(itertools.chain(*log.batches)) == sorted(answers)
    assert all({ch.startswith("other:") for ch in b} in ({True}, {False}) for b in log.batches)
    for channel, answer in answers.items():
        assert isinstance(answer, int)
        stored = [e async for batch in log.read_range(channel, 1, 10**9) for e in batch]
        assert stored[-1].seq == answer
    assert shared.stats.shared >= 2


async def test_a_refused_shared_batch_answers_each_group_alone_then_shares_again() -> None:
    log = CountingLog(SETTINGS)
    await log.ensure_streams()
    now = [0.0]
    await log.append_groups([group("busy", 1, 1, 0)])  # another relay wrote "busy"
    answers: dict[str, GroupAnswer] = {}
    async with anyio.create_task_group() as tg:
        shared = SharedBatches(log, tg, alone_s=1.0, clock=lambda: now[0])

        async def send(g: Group) -> None:
            answers[g.channel] = await shared.append_group(g.channel, g.entries, g.expected_seq)

        tg.start_soon(send, group("lead", 1, 2, 0))
        await anyio.lowlevel.checkpoint()
        tg.start_soon(send, group("busy", 2, 2, 0))  # a stale head
        tg.start_soon(send, group("fine", 1, 2, 0))
        tg.start_soon(send, group("dup", 1, 2, 0))
    assert answers["busy"] == "moved"
    assert isinstance(answers["fine"], int) and isinstance(answers["dup"], int)
    assert shared.stats.refused_shared == 1
    assert ["busy", "fine", "dup"] in log.batches and ["fine"] in log.batches
    # Alone for a while: two groups at once leave apart.
    log.batches.clear()
    async with anyio.create_task_group() as tg:
        shared._tg = tg
        tg.start_soon(send, group("x", 1, 2, 0))
        tg.start_soon(send, group("y", 1, 2, 0))
        tg.start_soon(send, group("z", 1, 2, 0))
    assert sorted(log.batches) == [["x"], ["y"], ["z"]]
    now[0] = 1.5  # then they share again
    log.batches.clear()
    async with anyio.create_task_group() as tg:
        shared._tg = tg
        tg.start_soon(send, group("x", 3, 2, (await log.head("x")).seq))
        await anyio.lowlevel.checkpoint()
        tg.start_soon(send, group("y", 3, 2, (await log.head("y")).seq))
        tg.start_soon(send, group("z", 3, 2, (await log.head("z")).seq))
    assert log.batches == [["x"], ["y", "z"]]


async def test_a_failing_log_fails_every_group_of_the_batch() -> None:
    log = CountingLog(SETTINGS)
    await log.ensure_streams()
    errors: list[str] = []
    async with anyio.create_task_group() as tg:
        shared = SharedBatches(log, tg)

        async def send(g: Group) -> None:
            try:
                await shared.append_group(g.channel, g.entries, g.expected_seq)
            except LogUnavailable as exc:
                errors.append(f"{g.channel}: {exc}")

        log.fail_batch = 1  # the shared batch after "lead"
        tg.start_soon(send, group("lead", 1, 2, 0))
        await anyio.lowlevel.checkpoint()
        for channel in ("a", "b", "c"):
            tg.start_soon(send, group(channel, 1, 2, 0))
    assert sorted(errors) == [f"{c}: batch lost" for c in ("a", "b", "c")]
    assert [b for b in log.batches if b != ["lead"]] == [["a", "b", "c"]]


@pytest.mark.parametrize(("relays", "seed"), [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)])
async def test_relays_writing_many_channels_everything_once_in_order(
    relays: int, seed: int
) -> None:
    """One or two relays of one region write 12 channels at once (their groups share
    batches; with two, each relay's writes refuse the other's), with remote messages
    offered to one relay or both: every publish is stored once, in its source's order,
    every remote message once and in causal order, and each ack names the entry stored
    for it. The writers re-read the heads of channels with waiting remote messages twice
    a second, as the federation service has them do (``RECHECK_INTERVAL_S``)."""
    rng = random.Random(seed)
    log = CountingLog(SETTINGS, delay_s=0.002)  # a round trip: groups queue meanwhile
    await log.ensure_streams()
    channels = [f"ch{i}" for i in range(12)]
    writers = [RegionWriter(log, max_buffered=1000) for _ in range(relays)]
    results: dict[str, list[tuple[str, str, Result]]] = {}
    acked: set[tuple[str, int]] = set()
    sources = [(w, f"conn{w}{s}") for w in range(relays) for s in range(4)]
    remotes = deque((ch, n) for n in range(1, 11) for ch in channels[:4])

    def remote(channel: str, n: int) -> StoredMessage:
        ts = {"eu-west": n}
        return StoredMessage(f"eu-{n}", msgspec.Raw(b"1"), "eu-west", ts, ts)

    async with running_writers(writers):
        sent = 0
        while sent < 1500 or remotes:
            if remotes and rng.random() < 0.1:
                channel, n = remotes.popleft()
                for writer in rng.sample(writers, rng.randint(1, relays)):
                    ok = writer.offer_remote(
                        channel, remote(channel, n), lambda c=channel, n=n: acked.add((c, n))
                    )
                    assert ok
            elif sent < 1500:
                w, source = rng.choice(sources)
                channel = rng.choice(channels)
                message_id = f"{source}-{sent}"
                sent += 1

                def done(result: Result, src: str = source, mid: str = message_id,
                         ch: str = channel) -> None:  # fmt: skip
                    results.setdefault(src, []).append((ch, mid, result))

                writers[w].publish(channel, message_id, msgspec.Raw(b"1"), source, done)
            if rng.random() < 0.1:
                await anyio.lowlevel.checkpoint()
        await wait_until(lambda: sum(map(len, results.values())) == 1500, "every publish answered")
        want = {(ch, n) for n in range(1, 11) for ch in channels[:4]}
        await wait_until(lambda: acked >= want, "every remote acked")
    shared = [b for b in log.batches if len(b) > 1]
    # Alone, a relay's batches are mostly shared; two relays refuse each other's often.
    assert len(shared) >= (len(log.batches) // 2 if relays == 1 else 1), log.batches
    stored = {ch: [e async for b in log.read_range(ch, 1, 10**9) for e in b] for ch in channels}
    by_seq = {e.seq: (ch, e) for ch, entries in stored.items() for e in entries}
    for channel, entries in stored.items():
        ids = [e.msg.id for e in entries]
        assert len(ids) == len(set(ids)), f"{channel}: an id stored twice"
        remote_order = [int(i[3:]) for i in ids if i.startswith("eu-")]
        if channel in channels[:4]:
            assert remote_order == list(range(1, 11)), f"{channel}: remote order"
        positions = [VectorClock(e.msg.pos) for e in entries]
        assert all(a <= b for a, b in itertools.pairwise(positions)), f"{channel}: positions"
    for source, answered in results.items():
        for channel in channels:
            mine = [mid for ch, mid, _ in answered if ch == channel]
            ids = [e.msg.id for e in stored[channel] if e.msg.id.startswith(source + "-")]
            assert ids == mine, f"{source} on {channel}: stored out of publish order"
        for channel, mid, result in answered:
            assert isinstance(result, Stored) and not result.duplicate
            where, entry = by_seq[result.seq]
            assert (where, entry.msg.id) == (channel, mid), "an ack names another entry"
            assert result.position == VectorClock(entry.msg.pos)
