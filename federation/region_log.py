"""The region log: what every region stands on, and its one interface.

Each channel of a region is a sequence of stored messages (``federation.logformat``), each
stamped with a vector timestamp and position (``federation.vclock``). Two implementations have
the same behaviour, as Centrifuge pairs its memory broker with the Redis one:

- ``federation.adapters.nats_region_log.NatsRegionLog``: JetStream, one stream per namespace
  (plus a delivery stream per total-order namespace), compare-and-set on the channel's subject;
- ``federation.region_log_memory.MemoryRegionLog``: in memory, for unit tests of what is built on
  the log (the region writer, the sequencer, readers) without a nats-server.

``tests/federation/test_region_log_contract.py`` runs one suite against both.

Writes (the region writer, the sequencer) append with compare-and-set on the channel's head;
reads (the relay's resume, history and live feed start) go to the *delivery* log — the
total-order one in total namespaces, else the causal log itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from federation.channel_writes import Head
from federation.logformat import StoredMessage

# JetStream's default `max_msgs` per atomic batch: a longer group is refused whole.
MAX_BATCH = 1000


class LogUnavailable(Exception):
    """The log did not answer in time or refused for a temporary reason; retry later."""


@dataclass(frozen=True, slots=True)
class Appended:
    seq: int
    duplicate: bool  # the id was already in the log; nothing was stored


class Group(NamedTuple):
    """One channel's part of an atomic batch: its entries (message, ``Nats-Msg-Id``),
    stored only if the channel's head is still ``expected_seq``."""

    channel: str
    entries: Sequence[tuple[StoredMessage, str]]
    expected_seq: int


# A batch's answer: the sequence of its last entry (its entries have consecutive
# sequences, in order), or why nothing of it was stored.
GroupAnswer = int | Literal["moved", "duplicate"]


@dataclass(frozen=True, slots=True)
class LoggedEntry:
    """A stored message and its sequence in its stream."""

    seq: int
    msg: StoredMessage


class RegionLog(Protocol):
    region: str

    def is_total(self, channel: str) -> bool:
        """Whether the channel's namespace keeps one order for the whole region."""
        ...

    async def ensure_streams(self) -> None:
        """Create the streams, or bring existing ones in line with the settings."""
        ...

    # --- writing (the causal log; ``delivery`` = the total-order log) ---------------------

    async def head(self, channel: str, *, delivery: bool = False) -> Head: ...

    async def entry(self, channel: str, seq: int) -> StoredMessage:
        """The causal log's entry ``seq``; LogUnavailable if it is gone."""
        ...

    async def append(
        self,
        channel: str,
        msg: StoredMessage,
        msg_id: str,
        expected_seq: int,
        *,
        delivery: bool = False,
    ) -> Appended | None:
        """Append if the channel's head is still ``expected_seq``; None if it moved. A
        ``msg_id`` already stored answers ``duplicate`` with that entry's sequence."""
        ...

    async def append_group(
        self, channel: str, entries: Sequence[tuple[StoredMessage, str]], expected_seq: int
    ) -> GroupAnswer:
        """Append all entries atomically if the head is still ``expected_seq``: the last
        entry's sequence, else "moved" or "duplicate" (an id is stored; nothing was).
        More than MAX_BATCH entries: LogUnavailable, nothing stored."""
        ...

    def batch_scope(self, channel: str) -> str:
        """Channels with the same scope share a stream, so their groups may share a batch."""
        ...

    async def append_groups(self, groups: Sequence[Group]) -> GroupAnswer:
        """``append_group`` for several channels of one ``batch_scope`` (each at most once)
        in one atomic batch: everything is stored, in order, if every channel's head is
        still its group's ``expected_seq``; else "moved" or "duplicate" for the whole
        batch (which group caused it is not said), and nothing is stored."""
        ...

    # --- reading (the delivery log) -------------------------------------------------------

    async def last_entry(self, channel: str) -> LoggedEntry | None: ...

    async def entry_at_or_after(self, channel: str, seq: int) -> LoggedEntry | None: ...

    def read_range(
        self, channel: str, from_seq: int, upto_seq: int
    ) -> AsyncIterator[list[LoggedEntry]]:
        """The channel's entries with ``from_seq <= seq <= upto_seq``, in batches."""
        ...
