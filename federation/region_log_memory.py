"""The region log in memory, with JetStream's rules, for tests of what is built on the log.

Same interface and behaviour as ``federation.adapters.nats_region_log.NatsRegionLog`` (a
contract test runs both): one sequence per stream (namespace), compare-and-set on the channel's
last sequence checked before the message id, ids deduplicated, atomic groups all or nothing,
``max_messages`` per channel dropping the oldest. Differences, on purpose: ids are remembered
forever (no duplicate window), nothing expires by age, no byte limit (``max_bytes``: sizes
are JetStream's, see ``tests/integration/test_stream_bytes.py``), and it never fails unless
told to (``fail_next``), so tests choose where the world breaks.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from federation.channel_writes import Head
from federation.logformat import StoredMessage
from federation.region_log import (
    MAX_BATCH,
    Appended,
    Group,
    GroupAnswer,
    LoggedEntry,
    LogUnavailable,
)
from federation.settings import RegionSettings
from federation.vclock import EMPTY, VectorClock

READ_BATCH = 256


@dataclass
class _Stream:
    last_seq: int = 0
    ids: dict[str, int] = field(default_factory=dict)
    #: channel -> its entries, oldest first
    channels: dict[str, list[LoggedEntry]] = field(default_factory=dict)


class MemoryRegionLog:
    def __init__(self, settings: RegionSettings) -> None:
        self.settings = settings
        self.region = settings.region
        self._streams: dict[tuple[str, bool], _Stream] = {}
        #: Raise LogUnavailable on this many next operations (then work again).
        self.fail_next = 0

    def is_total(self, channel: str) -> bool:
        return self.settings.namespace_for(channel).total_order

    async def ensure_streams(self) -> None:
        for namespace in self.settings.namespaces:
            self._streams.setdefault((namespace.name, False), _Stream())
            if namespace.total_order:
                self._streams.setdefault((namespace.name, True), _Stream())

    def _stream(self, channel: str, delivery: bool) -> _Stream:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise LogUnavailable("memory log told to fail")
        namespace = self.settings.namespace_for(channel)
        total_log = delivery and namespace.total_order
        try:
            return self._streams[(namespace.name, total_log)]
        except KeyError:
            raise LogUnavailable(f"no stream for {channel}: ensure_streams first") from None

    def _store(self, stream: _Stream, channel: str, msg: StoredMessage, msg_id: str) -> int:
        stream.last_seq += 1
        stream.ids[msg_id] = stream.last_seq
        entries = stream.channels.setdefault(channel, [])
        entries.append(LoggedEntry(stream.last_seq, msg))
        limit = self.settings.namespace_for(channel).max_messages
        if limit > 0 and len(entries) > limit:
            del entries[: len(entries) - limit]
        return stream.last_seq

    @staticmethod
    def _last_seq(stream: _Stream, channel: str) -> int:
        entries = stream.channels.get(channel)
        return entries[-1].seq if entries else 0

    async def head(self, channel: str, *, delivery: bool = False) -> Head:
        entries = self._stream(channel, delivery).channels.get(channel)
        if not entries:
            return Head(0, EMPTY)
        last = entries[-1]
        return Head(last.seq, VectorClock(last.msg.pos), last.msg.origin)

    async def entry(self, channel: str, seq: int) -> StoredMessage:
        for logged in self._stream(channel, False).channels.get(channel, ()):
            if logged.seq == seq:
                return logged.msg
        raise LogUnavailable(f"entry {seq} of {channel} vanished")

    async def append(
        self,
        channel: str,
        msg: StoredMessage,
        msg_id: str,
        expected_seq: int,
        *,
        delivery: bool = False,
    ) -> Appended | None:
        stream = self._stream(channel, delivery)
        if self._last_seq(stream, channel) != expected_seq:
            return None
        if msg_id in stream.ids:
            return Appended(stream.ids[msg_id], duplicate=True)
        return Appended(self._store(stream, channel, msg, msg_id), duplicate=False)

    async def append_group(
        self, channel: str, entries: Sequence[tuple[StoredMessage, str]], expected_seq: int
    ) -> GroupAnswer:
        return await self.append_groups([Group(channel, entries, expected_seq)])

    def batch_scope(self, channel: str) -> str:
        return self.settings.namespace_for(channel).name

    async def append_groups(self, groups: Sequence[Group]) -> GroupAnswer:
        size = sum(len(group.entries) for group in groups)
        if size > MAX_BATCH:
            raise LogUnavailable(f"batch of {size} refused: at most {MAX_BATCH}")
        channels = [group.channel for group in groups]
        scopes = {self.batch_scope(channel) for channel in channels}
        if not groups or not all(group.entries for group in groups) or len(scopes) != 1:
            raise ValueError("a batch is non-empty groups of channels of one scope")
        if len(set(channels)) != len(channels):
            raise ValueError("a batch holds at most one group per channel")
        stream = self._stream(channels[0], False)
        if any(self._last_seq(stream, g.channel) != g.expected_seq for g in groups):
            return "moved"
        ids = [msg_id for group in groups for _, msg_id in group.entries]
        if len(set(ids)) != len(ids) or any(msg_id in stream.ids for msg_id in ids):
            return "duplicate"
        seq = 0
        for group in groups:
            for msg, msg_id in group.entries:
                seq = self._store(stream, group.channel, msg, msg_id)
        return seq

    async def last_entry(self, channel: str) -> LoggedEntry | None:
        entries = self._stream(channel, True).channels.get(channel)
        return entries[-1] if entries else None

    async def entry_at_or_after(self, channel: str, seq: int) -> LoggedEntry | None:
        entries = self._stream(channel, True).channels.get(channel, [])
        i = bisect.bisect_left(entries, seq, key=lambda e: e.seq)
        return entries[i] if i < len(entries) else None

    async def read_range(
        self, channel: str, from_seq: int, upto_seq: int
    ) -> AsyncIterator[list[LoggedEntry]]:
        entries = self._stream(channel, True).channels.get(channel, [])
        wanted = [e for e in entries if from_seq <= e.seq <= upto_seq]
        for start in range(0, len(wanted), READ_BATCH):
            yield wanted[start : start + READ_BATCH]
