"""Serialises this relay's writes per channel.

The region's compare-and-set on the channel subject already makes concurrent
writers safe; the per-channel FIFO lock keeps this relay from racing itself
(every lost race costs a round trip) and keeps a connection's publishes to a
channel in the order it sent them.
"""

from __future__ import annotations

import anyio
import msgspec

from relay.adapters.nats_broker import NatsBroker, StoreResult
from relay.core.channels import Channel


class Publisher:
    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker
        # channel -> (FIFO lock, number of publishes holding or waiting for it)
        self._locks: dict[Channel, tuple[anyio.Lock, list[int]]] = {}

    async def publish(self, channel: Channel, message_id: str, data: msgspec.Raw) -> StoreResult:
        lock, users = self._locks.setdefault(channel, (anyio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                return await self.broker.store(channel, message_id, data)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[channel]
