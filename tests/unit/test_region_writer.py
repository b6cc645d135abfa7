"""The region writer's async shell on the in-memory region log: two relays of one region
writing one channel at once, with remote messages offered to both, and the log failing."""

from __future__ import annotations

import itertools
import random

import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.adapters.region_writer import MAX_GROUP, MIN_GROUP, RegionWriter, group_size
from federation.channel_writes import Failed, Result, Stored
from federation.logformat import StoredMessage
from federation.region_log import LoggedEntry
from federation.region_log_memory import MemoryRegionLog
from federation.settings import Namespace, RegionSettings
from federation.vclock import VectorClock
from tests.support.waiting import wait_until
from tests.support.writers import running_writers

pytestmark = pytest.mark.anyio

CHANNEL = "chat:x"
SETTINGS = RegionSettings(region="us-east", namespaces=(Namespace("default", ""),))


async def entries(log: MemoryRegionLog) -> list[LoggedEntry]:
    out: list[LoggedEntry] = []
    async for batch in log.read_range(CHANNEL, 1, 10**9):
        out.extend(batch)
    return out


def remote(n: int) -> StoredMessage:
    ts = {"eu-west": n}
    return StoredMessage(f"eu-{n}", msgspec.Raw(b"1"), "eu-west", ts, ts)


@pytest.mark.parametrize("seed", range(5))
async def test_two_writers_one_channel_everything_once_in_order(seed: int) -> None:
    """A remote message offered to one writer only may wait for a predecessor that only
    the other writer has; it learns the head moved when it reads it again, which the
    federation service has every writer do twice a second (``RECHECK_INTERVAL_S``)."""
    rng = random.Random(seed)
    log = MemoryRegionLog(SETTINGS)
    await log.ensure_streams()
    writers = [RegionWriter(log, max_buffered=1000) for _ in range(2)]
    results: dict[str, list[tuple[str, Result]]] = {}
    acked: list[int] = []
    sources = [(w, f"conn{w}{s}") for w in range(2) for s in range(3)]

    async with running_writers(writers):
        sent = 0
        remotes = list(range(1, 41))
        while sent < 300 or remotes:
            if remotes and rng.random() < 0.2:
                n = remotes.pop(0)
                for writer in rng.sample(writers, rng.randint(1, 2)):  # one or both paths
                    assert writer.offer_remote(CHANNEL, remote(n), lambda n=n: acked.append(n))
            elif sent < 300:
                w, source = rng.choice(sources)
                message_id = f"{source}-{sent}"
                sent += 1

                def done(result: Result, source: str = source, mid: str = message_id) -> None:
                    results.setdefault(source, []).append((mid, result))

                writers[w].publish(CHANNEL, message_id, msgspec.Raw(b"1"), source, done)
            if rng.random() < 0.3:
                await anyio.lowlevel.checkpoint()
        await wait_until(lambda: sum(map(len, results.values())) == 300, "every publish answered")
        await wait_until(lambda: set(acked) >= set(range(1, 41)), "every remote acked")
    stored = await entries(log)
    ids = [e.msg.id for e in stored]
    assert len(ids) == len(set(ids)), "an id stored twice"
    assert sorted(i for i in ids if i.startswith("eu-")) == sorted(f"eu-{n}" for n in range(1, 41))
    remote_order = [int(i[3:]) for i in ids if i.startswith("eu-")]
    assert remote_order == sorted(remote_order), "remote messages out of causal order"
    for source, answered in results.items():
        assert all(isinstance(r, Stored) for _, r in answered)
        mine = [i for i in ids if i.startswith(source + "-")]
        assert mine == [mid for mid, _ in answered], f"{source}: stored out of publish order"
    positions = [VectorClock(e.msg.pos) for e in stored]
    assert all(a <= b for a, b in itertools.pairwise(positions))


async def test_a_failing_log_fails_the_publish_and_what_queued_behind_it() -> None:
    log = MemoryRegionLog(SETTINGS)
    await log.ensure_streams()
    writer = RegionWriter(log, max_buffered=100)
    answers: list[tuple[str, Result]] = []
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        log.fail_next = 1  # the head read of the first commit fails
        for n in range(3):
            writer.publish(
                CHANNEL,
                f"m{n}",
                msgspec.Raw(b"1"),
                "conn",
                lambda r, n=n: answers.append((f"m{n}", r)),
            )
        await wait_until(lambda: len(answers) == 3, "answers")
        assert [type(r) for _, r in answers] == [Failed, Failed, Failed]
        # The log is back: the client resends, in order, and everything is stored once.
        for n in range(3):
            writer.publish(
                CHANNEL,
                f"m{n}",
                msgspec.Raw(b"1"),
                "conn",
                lambda r, n=n: answers.append((f"m{n}", r)),
            )
        await wait_until(lambda: len(answers) == 6, "answers after the resend")
        tg.cancel_scope.cancel()
    assert all(isinstance(r, Stored) for _, r in answers[3:])
    assert [e.msg.id for e in await entries(log)] == ["m0", "m1", "m2"]


@given(st.integers(min_value=0, max_value=100_000))
def test_a_group_leaves_half_of_what_waits_within_its_bounds(waiting: int) -> None:
    size = group_size(waiting)
    assert MIN_GROUP <= size <= MAX_GROUP
    if waiting >= 2 * MAX_GROUP:
        assert size == MAX_GROUP
    elif waiting >= 2 * MIN_GROUP:
        assert size == waiting // 2  # the other half fills the next group meanwhile


async def test_a_long_queue_is_committed_in_the_largest_groups_in_order() -> None:
    log = MemoryRegionLog(SETTINGS)
    await log.ensure_streams()
    writer = RegionWriter(log, max_buffered=1000)
    answered: list[str] = []
    count = 3 * MAX_GROUP + 7
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        for n in range(count):  # all queued before the first group is planned
            mid = f"p-{n}"
            writer.publish(
                CHANNEL, mid, msgspec.Raw(b"1"), "conn", lambda r, mid=mid: answered.append(mid)
            )
        await wait_until(lambda: len(answered) == count, "every publish answered")
        tg.cancel_scope.cancel()
    assert [e.msg.id for e in await entries(log)] == [f"p-{n}" for n in range(count)]
    assert answered == [f"p-{n}" for n in range(count)]
    # 2,887 waiting: groups of 960, 960, 483 (half of 967), 256 and the last 228
    assert (writer.stats.groups, writer.stats.group_entries) == (5, count)
