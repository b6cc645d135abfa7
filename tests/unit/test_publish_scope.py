"""Publish ids are scoped to the publisher (issue #12): the dedupe key, the stored ``by``,
the writer, and total order, on the in-memory region log."""

from __future__ import annotations

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.adapters.region_writer import RegionWriter
from federation.channel_writes import Result, Stored
from federation.logformat import (
    StoredMessage,
    decode_stored,
    dedupe_key,
    encode_stored,
    entry_key,
)
from federation.region_log import LoggedEntry
from federation.region_log_memory import MemoryRegionLog
from federation.settings import Namespace, RegionSettings
from federation.total_order import Entry, TotalOrderMerger
from federation.vclock import VectorClock
from tests.support.waiting import wait_until

CHANNEL = "chat:x"
SETTINGS = RegionSettings(region="us-east", namespaces=(Namespace("default", ""),))

# What the relay accepts: a channel name and a publish id hold no space.
names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
# A token's sub is any non-empty string.
scopes = st.none() | st.text(min_size=1, max_size=40)


# --- the key -----------------------------------------------------------------------------


def test_anonymous_keys_are_what_they_always_were() -> None:
    # Entries stored before scoping still answer a retry inside the dedupe window.
    assert dedupe_key("chat:x", "m-1") == "chat:x m-1"
    assert dedupe_key("chat:x", "m-1", None) == "chat:x m-1"


def test_a_scoped_key_differs_per_publisher_and_is_header_safe() -> None:
    alice = dedupe_key("chat:x", "m-1", "alice")
    assert alice == dedupe_key("chat:x", "m-1", "alice")  # every relay, every region
    assert alice != dedupe_key("chat:x", "m-1", "mallory")
    assert alice != dedupe_key("chat:x", "m-1")
    # A sub may hold anything; a NATS header value may not.
    for sub in ("alice smith", "a\r\nNats-Msg-Id: x", "é" * 5000, ""):
        key = dedupe_key("chat:x", "m-1", sub)
        assert key.isascii() and key.isprintable() and len(key) < 100
        assert key.split(" ")[:2] == ["chat:x", "m-1"]


@settings(max_examples=300, deadline=None)
@given(names, names, scopes, names, names, scopes)
def test_the_key_is_injective(
    ch_a: str, id_a: str, by_a: str | None, ch_b: str, id_b: str, by_b: str | None
) -> None:
    if (ch_a, id_a, by_a) != (ch_b, id_b, by_b):
        assert dedupe_key(ch_a, id_a, by_a) != dedupe_key(ch_b, id_b, by_b)


def stored(
    msg_id: str, by: str | None = None, *, null: bool = False, dup: bool = False
) -> StoredMessage:
    ts = {"us-east": 1}
    return StoredMessage(msg_id, msgspec.Raw(b"1"), "us-east", ts, ts, dup, null, by)


@settings(max_examples=200, deadline=None)
@given(names, scopes)
def test_no_publish_has_a_progress_entrys_key(msg_id: str, by: str | None) -> None:
    # A client may send "~us-east:9" as its id: it must not stall the region's progress.
    assert entry_key(CHANNEL, stored(msg_id, by)) != entry_key(CHANNEL, stored(msg_id, null=True))


def test_an_entry_is_keyed_as_its_publish_wherever_it_is_applied() -> None:
    assert entry_key(CHANNEL, stored("m-1", "alice")) == dedupe_key(CHANNEL, "m-1", "alice")
    assert entry_key(CHANNEL, stored("m-1")) == dedupe_key(CHANNEL, "m-1")
    dup = stored("m-1", "alice", dup=True)
    assert entry_key(CHANNEL, dup) == entry_key(CHANNEL, stored("m-1", "alice"))


# --- the stored record -------------------------------------------------------------------


def test_stored_message_round_trip_with_and_without_by() -> None:
    plain = stored("m-1")
    encoded = encode_stored(plain)
    assert b'"by"' not in encoded  # omitted: what relays have always written
    assert decode_stored(encoded) == plain
    scoped = stored("m-1", "alice")
    assert decode_stored(encode_stored(scoped)) == scoped
    assert decode_stored(encode_stored(scoped)).by == "alice"
    # An entry written before scoping decodes, unscoped.
    old = b'{"id":"m-1","data":1,"origin":"us-east","ts":{"us-east":1},"pos":{"us-east":1}}'
    assert decode_stored(old) == plain


@settings(max_examples=100, deadline=None)
@given(names, scopes)
def test_stored_message_round_trip_random(msg_id: str, by: str | None) -> None:
    msg = stored(msg_id, by)
    assert decode_stored(encode_stored(msg)) == msg


# --- the writer on the in-memory log -----------------------------------------------------


async def entries(log: MemoryRegionLog) -> list[LoggedEntry]:
    out: list[LoggedEntry] = []
    async for batch in log.read_range(CHANNEL, 1, 10**9):
        out.extend(batch)
    return out


@pytest.mark.anyio
async def test_another_publishers_ids_taken_first_change_nothing() -> None:
    log = MemoryRegionLog(SETTINGS)
    await log.ensure_streams()
    writer = RegionWriter(log, max_buffered=100)
    answers: dict[tuple[str, str | None], list[Result]] = {}

    def publish(msg_id: str, by: str | None) -> None:
        def done(result: Result) -> None:
            answers.setdefault((msg_id, by), []).append(result)

        writer.publish(CHANNEL, msg_id, msgspec.Raw(b"1"), by, done, by=by)

    def answered() -> int:
        return sum(map(len, answers.values()))

    victim_ids = [f"v-{n}" for n in range(1, 6)]
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        for msg_id in victim_ids:  # the attacker goes first, in one group
            publish(msg_id, "mallory")
        await wait_until(lambda: answered() == 5, "the attacker's publishes answered")
        for msg_id in victim_ids:  # then the victim, and an anonymous client, same ids
            publish(msg_id, "alice")
            publish(msg_id, None)
        await wait_until(lambda: answered() == 15, "every publish answered")
        publish("v-3", "alice")  # the victim's retry
        await wait_until(lambda: answered() == 16, "the retry answered")
        tg.cancel_scope.cancel()
    for msg_id in victim_ids:
        for by in ("mallory", "alice", None):
            first = answers[(msg_id, by)][0]
            assert isinstance(first, Stored) and not first.duplicate, (msg_id, by)
    first, retry = answers[("v-3", "alice")]
    assert isinstance(first, Stored) and isinstance(retry, Stored)
    assert retry.duplicate and retry.position == first.position
    logged = await entries(log)
    assert len(logged) == 15
    assert sorted((e.msg.id, e.msg.by or "") for e in logged) == sorted(
        (i, by) for i in victim_ids for by in ("mallory", "alice", "")
    )


@pytest.mark.anyio
async def test_a_peers_copy_is_a_duplicate_only_of_the_same_publishers_id() -> None:
    """A client that failed over republished its id in eu-west: that copy is a dup entry
    here. Someone else's publish with the same id in eu-west is a message of its own."""
    log = MemoryRegionLog(SETTINGS)
    await log.ensure_streams()
    writer = RegionWriter(log, max_buffered=100)
    answers: list[Result] = []
    acked: list[str] = []

    def remote(n: int, by: str) -> StoredMessage:
        ts = {"eu-west": n}
        return StoredMessage("m-1", msgspec.Raw(b"2"), "eu-west", ts, ts, by=by)

    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        writer.publish(CHANNEL, "m-1", msgspec.Raw(b"1"), "conn", answers.append, by="alice")
        await wait_until(lambda: len(answers) == 1, "the local publish stored")
        assert writer.offer_remote(CHANNEL, remote(1, "alice"), lambda: acked.append("alice"))
        assert writer.offer_remote(CHANNEL, remote(2, "bob"), lambda: acked.append("bob"))
        await wait_until(lambda: len(acked) == 2, "both peer copies applied")
        tg.cancel_scope.cancel()
    logged = [e.msg for e in await entries(log)]
    assert [(m.origin, m.by, m.dup) for m in logged] == [
        ("us-east", "alice", False),
        ("eu-west", "alice", True),  # advances the position, never delivered twice
        ("eu-west", "bob", False),
    ]


# --- total order -------------------------------------------------------------------------


def test_total_order_drops_a_retry_but_not_another_publishers_equal_id() -> None:
    merger: TotalOrderMerger[StoredMessage] = TotalOrderMerger(["us-east", "eu-west"])

    def entry(origin: str, n: int, by: str, **ts: int) -> Entry[StoredMessage]:
        clock = {origin: n, **ts}
        msg = StoredMessage("m-1", msgspec.Raw(b"1"), origin, clock, clock, by=by)
        return Entry(origin, VectorClock(clock), False, msg, entry_key(CHANNEL, msg))

    def null(origin: str, **ts: int) -> Entry[StoredMessage]:
        clock = VectorClock(ts)
        msg = StoredMessage(f"~{origin}", msgspec.Raw(b"null"), origin, ts, ts, null=True)
        return Entry(origin, clock, True, msg)

    released = merger.add(entry("us-east", 1, "alice"))
    released += merger.add(entry("eu-west", 1, "alice"))  # alice's retry via eu-west
    released += merger.add(entry("eu-west", 2, "bob"))  # bob's own m-1
    released += merger.add(null("us-east", **{"us-east": 2, "eu-west": 2}))
    released += merger.add(null("eu-west", **{"us-east": 2, "eu-west": 3}))
    # One copy of alice's (whichever sorts first: every region keeps the same), and bob's.
    assert [e.payload.by for e in released] == ["alice", "bob"]
