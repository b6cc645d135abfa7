"""Reads a channel's stored log for resume (catch-up) and history pages."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from federation.vclock import VectorClock
from relay.adapters.nats_broker import NatsBroker
from relay.core import recovery
from relay.core.channels import Channel
from relay.core.feed import LogEntry
from relay.protocol.frames import message_frame


class LogReader:
    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker

    async def missed(
        self, channel: Channel, position: VectorClock, upto_seq: int
    ) -> AsyncGenerator[list[LogEntry], None]:
        """Entries up to ``upto_seq`` that ``position`` does not cover, in log order.

        Raises PositionExpired before yielding anything if retention already removed
        some of them.
        """
        oldest = await self.broker.entry_at_or_after(channel, 1)
        if oldest is None or oldest.seq > upto_seq:
            return
        recovery.check_not_expired(oldest.msg, position)
        start = await self.broker.first_seq_where(
            channel,
            oldest.seq,
            upto_seq,
            lambda e: recovery.uncovered(e.position, position),
        )
        if start is None:
            return
        async for batch in self.broker.read_range(channel, start.seq, upto_seq):
            wanted = [e for e in batch if not e.msg.hidden and not e.covered_by(position)]
            if wanted:
                yield wanted

    async def history(
        self, channel: Channel, limit: int, before: VectorClock | None
    ) -> tuple[list[bytes], bool]:
        newest = await self.broker.last_entry(channel)
        oldest = await self.broker.entry_at_or_after(channel, 1)
        if newest is None or oldest is None:
            return [], False
        first_index = oldest.position.total()
        window = recovery.history_window(
            first_index,
            newest.position.total(),
            limit,
            None if before is None else before.total(),
        )
        if window is None:
            return [], False
        start_index, end_index = window
        start = await self.broker.first_seq_where(
            channel, oldest.seq, newest.seq, lambda e: e.position.total() >= start_index
        )
        frames: list[bytes] = []
        if start is not None:
            async for batch in self.broker.read_range(channel, start.seq, newest.seq):
                for entry in batch:
                    if entry.position.total() > end_index:
                        break
                    if not entry.msg.hidden:
                        frames.append(message_frame(channel, entry.msg))
                if frames and len(frames) >= end_index - start_index + 1:
                    break
        return frames, start_index > first_index
