"""One suite, two region logs: the in-memory one behaves as the JetStream one does.

What is built on the log (the region writer, the sequencer, the relay's readers) may then be
unit-tested on MemoryRegionLog and trusted on NatsRegionLog.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from msgspec.structs import replace as struct_replace

from federation.adapters.nats_client import NatsClient
from federation.adapters.nats_region_log import NatsRegionLog
from federation.adapters.region_writer import MAX_GROUP
from federation.logformat import StoredMessage, entry_key
from federation.region_log import MAX_BATCH, Group, LoggedEntry, LogUnavailable, RegionLog
from federation.region_log_memory import MemoryRegionLog
from federation.settings import Namespace, RegionSettings
from tests.support.nats import nats_server

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SETTINGS = RegionSettings(
    region="us-east",
    namespaces=(
        Namespace("default", ""),
        Namespace("feed", "feed:", total_order=True),
        Namespace("short", "short:", max_messages=3),
    ),
)


def message(n: int, origin: str = "us-east") -> StoredMessage:
    ts = {origin: n}
    return StoredMessage(f"m{n}", msgspec.Raw(b'"x"'), origin, ts, ts)


@asynccontextmanager
async def region_log(kind: str, tmp_path: Path) -> AsyncIterator[RegionLog]:
    if kind == "memory":
        memory = MemoryRegionLog(SETTINGS)
        await memory.ensure_streams()
        yield memory
        return
    with nats_server(tmp_path / "nats") as url:
        nc = NatsClient()
        await nc.connect(servers=[url])
        try:
            log = NatsRegionLog(nc, SETTINGS)
            await log.ensure_streams()
            yield log
        finally:
            await nc.close()


@pytest.fixture(params=["memory", "nats"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def all_entries(log: RegionLog, channel: str) -> list[LoggedEntry]:
    out: list[LoggedEntry] = []
    async for batch in log.read_range(channel, 1, 10**9):
        out.extend(batch)
    return out


async def test_compare_and_set_and_ids(kind: str, tmp_path: Path) -> None:
    async with region_log(kind, tmp_path) as log:
        assert (await log.head("c")).seq == 0
        first = await log.append("c", message(1), "id-1", 0)
        assert first is not None and not first.duplicate
        assert await log.append("c", message(2), "id-2", 0) is None  # the head moved
        # The expected sequence is checked before the id.
        assert await log.append("c", message(1), "id-1", 0) is None
        again = await log.append("c", message(1), "id-1", first.seq)
        assert again is not None and again.duplicate and again.seq == first.seq
        head = await log.head("c")
        assert head.seq == first.seq and head.position.get("us-east") == 1
        assert (await log.entry("c", first.seq)).id == "m1"
        # Sequences are per stream: another channel of the namespace continues them.
        other = await log.append("d", message(1), "d-1", 0)
        assert other is not None and other.seq > first.seq


async def test_publisher_scopes_are_stored_and_keep_ids_apart(kind: str, tmp_path: Path) -> None:
    # A sub no NATS header could carry as it is: the key holds its digest.
    subs = ["alice", "mallory\r\nNats-Msg-Id: c m1"]
    scoped = [struct_replace(message(n), id="m1", by=sub) for n, sub in enumerate(subs, start=1)]
    async with region_log(kind, tmp_path) as log:
        seq = 0
        for msg in scoped:  # the same id twice, from two publishers: two messages
            appended = await log.append("c", msg, entry_key("c", msg), seq)
            assert appended is not None and not appended.duplicate
            seq = appended.seq
        retry = await log.append("c", scoped[0], entry_key("c", scoped[0]), seq)
        assert retry is not None and retry.duplicate
        assert [e.msg.by for e in await all_entries(log, "c")] == subs
        assert (await log.entry("c", seq)).by == subs[1]


async def test_groups_are_all_or_nothing(kind: str, tmp_path: Path) -> None:
    async with region_log(kind, tmp_path) as log:
        last = await log.append_group("c", [(message(1), "a"), (message(2), "b")], 0)
        assert isinstance(last, int)
        assert await log.append_group("c", [(message(3), "c3")], 0) == "moved"
        repeated = [(message(3), "c3"), (message(4), "a")]
        assert await log.append_group("c", repeated, last) == "duplicate"
        within = [(message(3), "c3"), (message(4), "c3")]
        assert await log.append_group("c", within, last) == "duplicate"
        assert [e.msg.id for e in await all_entries(log, "c")] == ["m1", "m2"]
        after = await log.append_group("c", [(message(3), "c3"), (message(4), "c4")], last)
        assert isinstance(after, int) and after > last
        assert [e.msg.id for e in await all_entries(log, "c")] == ["m1", "m2", "m3", "m4"]


async def test_channels_of_one_stream_share_a_batch(kind: str, tmp_path: Path) -> None:
    """Groups of several channels in one batch: each checks its own channel's head, the
    batch is stored whole or not at all, and its entries get consecutive sequences in
    order (``shared_batches`` computes each group's last sequence from that)."""
    async with region_log(kind, tmp_path) as log:
        assert log.batch_scope("a") == log.batch_scope("b") != log.batch_scope("short:x")
        first = await log.append_groups(
            [
                Group("a", [(message(1), "a1"), (message(2), "a2")], 0),
                Group("b", [(message(1), "b1")], 0),
                Group("c", [(message(1), "c1"), (message(2), "c2"), (message(3), "c3")], 0),
            ]
        )
        assert isinstance(first, int)
        assert [e.seq for e in await all_entries(log, "a")] == [first - 5, first - 4]
        assert [e.seq for e in await all_entries(log, "b")] == [first - 3]
        assert [e.seq for e in await all_entries(log, "c")] == [first - 2, first - 1, first]
        heads = {ch: (await log.head(ch)).seq for ch in "abc"}
        # One channel's head is stale: nothing of the batch is stored.
        stale = [Group("a", [(message(3), "a3")], heads["a"]), Group("b", [(message(2), "b2")], 0)]
        assert await log.append_groups(stale) == "moved"
        # One id is stored already (or twice in the batch): nothing is stored.
        stored_id = [
            Group("a", [(message(3), "a3")], heads["a"]),
            Group("b", [(message(2), "c1")], heads["b"]),
        ]
        assert await log.append_groups(stored_id) == "duplicate"
        twice = [
            Group("a", [(message(3), "a3")], heads["a"]),
            Group("b", [(message(2), "a3")], heads["b"]),
        ]
        assert await log.append_groups(twice) == "duplicate"
        assert {ch: (await log.head(ch)).seq for ch in "abc"} == heads
        # A channel with no entries yet expects 0, next to channels that have some.
        last = await log.append_groups(
            [Group("a", [(message(3), "a3")], heads["a"]), Group("d", [(message(1), "d1")], 0)]
        )
        assert isinstance(last, int) and last == first + 2
        assert [e.msg.id for e in await all_entries(log, "a")] == ["m1", "m2", "m3"]
        # The batch limit counts every group's entries.
        half = MAX_BATCH // 2 + 1
        too_long = [
            Group("e", [(message(n), f"e{n}") for n in range(1, half + 1)], 0),
            Group("f", [(message(n), f"f{n}") for n in range(1, half + 1)], 0),
        ]
        with pytest.raises(LogUnavailable):
            await log.append_groups(too_long)
        assert await all_entries(log, "e") == [] and await all_entries(log, "f") == []


async def test_reads(kind: str, tmp_path: Path) -> None:
    async with region_log(kind, tmp_path) as log:
        assert await log.last_entry("c") is None
        assert await log.entry_at_or_after("c", 1) is None
        seqs = []
        for n in range(1, 301):  # more than one read batch
            head = await log.head("c")
            appended = await log.append("c", message(n), f"id-{n}", head.seq)
            assert appended is not None
            seqs.append(appended.seq)
            if n % 100 == 0:  # interleave another channel: sequences of c get holes
                await log.append("d", message(n), f"d-{n}", (await log.head("d")).seq)
        entries = await all_entries(log, "c")
        assert [e.seq for e in entries] == seqs
        assert [e.msg.id for e in entries] == [f"m{n}" for n in range(1, 301)]
        last = await log.last_entry("c")
        assert last is not None and last.seq == seqs[-1]
        hole = seqs[100] - 1  # the sequence "d" took
        found = await log.entry_at_or_after("c", hole)
        assert found is not None and found.seq == seqs[100]
        middle = [e.seq for batch in [b async for b in log.read_range("c", seqs[10], seqs[20])]
                  for e in batch]  # fmt: skip
        assert middle == seqs[10:21]


async def test_retention_keeps_the_newest(kind: str, tmp_path: Path) -> None:
    async with region_log(kind, tmp_path) as log:
        for n in range(1, 6):
            await log.append("short:x", message(n), f"s-{n}", (await log.head("short:x")).seq)
        assert [e.msg.id for e in await all_entries(log, "short:x")] == ["m3", "m4", "m5"]


async def test_total_namespaces_read_the_delivery_log(kind: str, tmp_path: Path) -> None:
    async with region_log(kind, tmp_path) as log:
        assert log.is_total("feed:a") and not log.is_total("chat:a")
        appended = await log.append("feed:a", message(1), "f-1", 0)
        assert appended is not None
        # Readers see the total-order log, which the sequencer fills.
        assert await log.last_entry("feed:a") is None
        assert (await log.head("feed:a", delivery=True)).seq == 0
        ordered = await log.append("feed:a", message(1), "t-1", 0, delivery=True)
        assert ordered is not None
        last = await log.last_entry("feed:a")
        assert last is not None and last.msg.id == "m1"


async def test_the_writers_largest_group_is_one_batch(kind: str, tmp_path: Path) -> None:
    """JetStream refuses atomic batches above its `max_msgs` (1,000 by default), whole:
    the largest group the writer plans must still be stored."""
    assert MAX_GROUP < MAX_BATCH
    group = [(message(n), f"id-{n}") for n in range(1, MAX_GROUP + 1)]
    too_long = [(message(n), f"id-{n}") for n in range(1, MAX_BATCH + 2)]
    async with region_log(kind, tmp_path) as log:
        with pytest.raises(LogUnavailable):
            await log.append_group("c", too_long, 0)
        assert await all_entries(log, "c") == []
        last = await log.append_group("c", group, 0)
        assert isinstance(last, int)
        assert [e.msg.id for e in await all_entries(log, "c")] == [
            f"m{n}" for n in range(1, MAX_GROUP + 1)
        ]
