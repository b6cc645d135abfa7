"""One client connection: the ServerSession driven by a WebSocket, and what it asks for.

Three tasks per connection: the reader (frames -> session -> actions), the
writer (outbox -> socket, all queued frames at once), and short-lived request
tasks (publish, subscribe with catch-up, history). Requests run concurrently
so that a slow catch-up does not hold up a publish, yet a connection's
publishes to one channel are stored in the order they were sent: each takes
the channel's FIFO lock in the Publisher before it starts to wait on NATS.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Hashable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.adapters.nats_broker import BrokerUnavailable
from relay.adapters.outbox import Outbox
from relay.core.channels import Channel
from relay.core.feed import AttachedLive, ChannelFeed
from relay.core.recovery import PositionExpired
from relay.protocol.errors import CloseCode, ErrorCode
from relay.protocol.frames import (
    History,
    Publish,
    Subscribe,
    Unsubscribe,
    ack_frame,
    error_frame,
    history_frame,
    parse_position,
    subscribed_frame,
)
from relay.protocol.session import Close, Reply, ServerSession, SessionLimits

if TYPE_CHECKING:
    from relay.adapters.ws_edge import WsEdge

log = logging.getLogger("relaynet.conn")
_ids = itertools.count(1)


class Connection:
    def __init__(self, edge: WsEdge, ws: ServerConnection) -> None:
        self.edge = edge
        self.ws = ws
        self.id = f"{edge.relay_id}-{next(_ids)}-{uuid.uuid4().hex[:8]}"
        limits = edge.cfg.limits
        self.session = ServerSession(
            SessionLimits(
                max_subscriptions=limits.max_subscriptions,
                max_errors_per_minute=limits.max_errors_per_minute,
                max_message_bytes=lambda ch: edge.cfg.namespace_for(ch).max_message_bytes,
            )
        )
        self.outbox = Outbox(limits.outbox_max_messages)
        self.key: Hashable = self.id
        self.feeds: dict[Channel, ChannelFeed] = {}
        self._close: tuple[int, str] | None = None
        self._requests: TaskGroup | None = None
        # Bounds the requests one connection has in flight; past it the reader waits.
        self._inflight = anyio.Semaphore(256)
        self.reader_scope = anyio.CancelScope()

    # Sink protocol, for the feeds.
    def offer(self, frame: bytes) -> None:
        self.outbox.offer(frame)

    def overflow(self) -> None:
        self.outbox.overflow()

    async def serve(self) -> None:
        edge = self.edge
        self.outbox.offer(edge.connected_frame(self.id))
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._writer)
                async with anyio.create_task_group() as requests:
                    self._requests = requests
                    with self.reader_scope:
                        await self._reader()
                # Requests in flight (publishes awaiting their ack) finish before we close.
                self.outbox.close()
        finally:
            await self._detach_all()

    async def _reader(self) -> None:
        try:
            async for raw in self.ws:
                binary = isinstance(raw, bytes)
                for action in self.session.receive(raw, time.monotonic(), binary=binary):
                    if isinstance(action, Reply):
                        self.outbox.offer(action.frame)
                    elif isinstance(action, Close):
                        self.close_with(action.code, action.reason)
                        return
                    else:
                        await self._inflight.acquire()
                        assert self._requests is not None
                        self._requests.start_soon(self._run_request, action)
                if self.outbox.failed:
                    return
        except ConnectionClosed:
            pass

    def close_with(self, code: int, reason: str) -> None:
        """Stop reading; requests in flight still finish and their replies are sent."""
        if self._close is None:
            self._close = (code, reason)
        self.reader_scope.cancel()

    async def _writer(self) -> None:
        try:
            while True:
                batch = await self.outbox.get_batch()
                if not batch:
                    break
                for frame in batch:
                    await self.ws.send(frame, text=True)
        except ConnectionClosed:
            self.outbox.close()  # wakes a catch-up waiting for room
            self.reader_scope.cancel()
            return
        if self.outbox.failed:
            self._close = (CloseCode.SLOW_CONSUMER, "slow_consumer")
            self.reader_scope.cancel()
        code, reason = self._close or (CloseCode.GOING_AWAY, "going_away")
        with anyio.move_on_after(2, shield=True):
            await self.ws.close(code, reason)

    async def _run_request(self, request: Subscribe | Unsubscribe | Publish | History) -> None:
        try:
            if isinstance(request, Publish):
                await self._publish(request)
            elif isinstance(request, Subscribe):
                await self._subscribe(request)
            elif isinstance(request, Unsubscribe):
                await self._unsubscribe(Channel(request.channel))
            else:
                await self._history(request)
        except BrokerUnavailable as exc:
            log.warning("request failed, NATS unavailable: %s", exc)
            if isinstance(request, Subscribe):
                await self._unsubscribe(Channel(request.channel))
            self.outbox.offer(error_frame(ErrorCode.UNAVAILABLE, str(exc), request.ref))
        except Exception:
            log.exception("internal error handling %s", type(request).__name__)
            if isinstance(request, Subscribe):
                await self._unsubscribe(Channel(request.channel))
            self.outbox.offer(error_frame(ErrorCode.INTERNAL, "internal error", request.ref))
        finally:
            self._inflight.release()

    async def _publish(self, request: Publish) -> None:
        channel = Channel(request.channel)
        message_id = request.id or uuid.uuid4().hex
        result = await self.edge.publisher.publish(channel, message_id, request.data)
        self.outbox.offer(ack_frame(request.ref, message_id, channel, result.position))

    async def _subscribe(self, request: Subscribe) -> None:
        channel = Channel(request.channel)
        position = parse_position(request.position, request.ref, "position")
        feed = await self.edge.feeds.acquire(channel)
        self.feeds[channel] = feed
        attached = feed.attach(self.key, self, position)
        if isinstance(attached, AttachedLive):
            if self.session.subscribe_succeeded(channel):
                self.outbox.offer(
                    subscribed_frame(request.ref, channel, attached.position, position is not None)
                )
            else:
                await self._unsubscribe(channel)
            return
        assert position is not None
        try:
            batches = self.edge.recovery.missed(channel, position, attached.upto_seq)
            first = await anext(batches, None)
        except PositionExpired as exc:
            await self._unsubscribe(channel)
            self.outbox.offer(
                error_frame(
                    ErrorCode.POSITION_EXPIRED,
                    "messages after this position are no longer stored; "
                    "subscribe again from 'earliest' (or without a position for live only)",
                    request.ref,
                    channel=channel,
                    earliest=exc.earliest.to_dict(),
                )
            )
            return
        if not self.session.subscribe_succeeded(channel):
            await self._unsubscribe(channel)
            return
        self.outbox.offer(
            subscribed_frame(request.ref, channel, attached.head_position.merge(position), True)
        )
        while first is not None:
            for entry in first:
                await self.outbox.put(entry.frame)
            first = await anext(batches, None)
        feed.finish_catch_up(self.key)

    async def _unsubscribe(self, channel: Channel) -> None:
        self.session.drop_subscription(channel)
        feed = self.feeds.pop(channel, None)
        if feed is not None:
            feed.detach(self.key)
            await self.edge.feeds.release(channel)

    async def _history(self, request: History) -> None:
        channel = Channel(request.channel)
        before = parse_position(request.before, request.ref, "before")
        frames, more = await self.edge.recovery.history(channel, request.limit, before)
        self.outbox.offer(history_frame(request.ref, channel, frames, more))

    async def _detach_all(self) -> None:
        with anyio.CancelScope(shield=True):
            for channel in list(self.feeds):
                await self._unsubscribe(channel)
