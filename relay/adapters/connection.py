"""One client connection: the ServerSession driven by a WebSocket, and what it asks for.

Two tasks per connection: the reader (frames -> session -> actions) and the
writer (outbox -> socket), plus short-lived request tasks for subscribes (with
catch-up) and history, so a slow catch-up does not hold up a publish.
Publishes take no task: the reader queues each on the region writer, which
calls back with the result, so a connection's publishes to one channel are
stored in the order they were sent. Unsubscribe is handled inline by the
reader, so no message of the channel can follow the "unsubscribed".
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from contextlib import aclosing, suppress
from typing import TYPE_CHECKING

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from federation.channel_writes import Failed, Result
from federation.throttled_log import ThrottledLog
from federation.vclock import VectorClock
from relay.adapters.nats_broker import BrokerUnavailable
from relay.adapters.outbox import Outbox
from relay.adapters.wsframe import text_frame
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
from relay.protocol.session import Close, Reply, ServerSession

if TYPE_CHECKING:
    from relay.adapters.ws_edge import WsEdge

log = logging.getLogger("relaynet.conn")
# Shared by every connection: when NATS is away, all of them fail alike.
_problems = ThrottledLog(log)
_ids = itertools.count(1)

MAX_REQUESTS_IN_FLIGHT = 256
# Above this many bytes waiting in the transport, frames go through the outbox.
DIRECT_WRITE_LIMIT_BYTES = 64 * 1024


class _SubscriptionKey:
    """Identity of one subscription in a ChannelFeed: a late catch-up of an earlier
    subscription to the same channel can never flush into, or detach, a newer one."""

    __slots__ = ()


def _forget_handshake(ws: ServerConnection) -> None:
    """websockets keeps the handshake's request and response, headers and all, for the
    connection's life (3 KB of a 19 KB idle connection; the request also stays referenced
    from its parser): after the handshake it only checks that a request was seen, so the
    headers are emptied in place and the response is dropped."""
    if ws.request is not None:
        ws.request.headers.clear()
    ws.response = None


class Connection:
    def __init__(self, edge: WsEdge, ws: ServerConnection) -> None:
        self.edge = edge
        self.ws = ws
        _forget_handshake(ws)
        self.id = f"{edge.relay_id}-{next(_ids)}-{os.urandom(4).hex()}"
        limits = edge.cfg.limits
        self.session = ServerSession(edge.session_limits)
        self.outbox = Outbox(limits.outbox_max_messages, self._write_now, self._start_writer)
        # Frames written directly during this event-loop turn, sent together at its end.
        self._loop = asyncio.get_running_loop()
        self._unflushed: list[bytes] = []
        self._unflushed_bytes = 0
        self.subscriptions: dict[Channel, tuple[ChannelFeed, _SubscriptionKey]] = {}
        # The subscription each channel's latest subscribe request is for.
        self._wanted: dict[Channel, _SubscriptionKey] = {}
        self._close: tuple[int, str] | None = None
        self._writer_done: anyio.Event | None = None  # set once the writer task ended
        # Requests in flight (bounded: past the bound the reader waits), and an event made
        # only when someone waits for one to finish: most connections never do.
        self._requesting = 0  # subscribes and history reads
        self._publishing = 0  # publishes queued on the writer, not yet answered
        self._room: anyio.Event | None = None
        self.reader_scope = anyio.CancelScope()

    async def serve(self) -> None:
        self.outbox.offer(self.edge.connected_frame(self.id))
        try:
            with self.reader_scope:
                await self._reader()
            # Requests in flight (publishes awaiting their ack) are answered first.
            while self._requesting or self._publishing:
                await self._wait_room()
            self.outbox.close()
            if self._writer_done is not None:
                await self._writer_done.wait()
            else:  # nothing ever waited for the socket: close from here
                await self._finish()
        finally:
            for channel in list(self.subscriptions):
                self._drop(channel)

    def _start_writer(self) -> None:
        """A frame has to wait for the socket (or the connection must end): from now on a
        task writes the queue. Idle connections never need one."""
        if self._writer_done is None and self.edge.tasks is not None:
            self._writer_done = anyio.Event()
            self.edge.tasks.start_soon(self._writer)

    async def _wait_room(self) -> None:
        self._room = anyio.Event()
        await self._room.wait()

    def _made_room(self) -> None:
        if self._room is not None:
            self._room.set()

    def close_with(self, code: int, reason: str) -> None:
        """Stop reading; requests in flight still finish and their replies are sent."""
        if self._close is None:
            self._close = (code, reason)
        self.reader_scope.cancel()

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
                    elif isinstance(action, Unsubscribe):
                        self._wanted.pop(Channel(action.channel), None)
                        self._drop(Channel(action.channel))
                    elif isinstance(action, Publish):
                        while self._publishing >= MAX_REQUESTS_IN_FLIGHT:
                            await self._wait_room()
                        self._publish(action)
                    elif isinstance(action, Subscribe) and self._subscribe_now(action):
                        pass  # a live subscribe to a channel this relay serves already
                    else:
                        while self._requesting >= MAX_REQUESTS_IN_FLIGHT:
                            await self._wait_room()
                        assert self.edge.tasks is not None
                        key = _SubscriptionKey()
                        if isinstance(action, Subscribe):
                            self._wanted[Channel(action.channel)] = key
                        self._requesting += 1
                        self.edge.tasks.start_soon(self._run_request, action, key)
                if self.outbox.failed:
                    return
        except ConnectionClosed:
            pass

    async def _writer(self) -> None:
        try:
            while batch := await self.outbox.get_batch():
                self._flush()  # what was written directly goes first
                for frame in batch:
                    await self.ws.send(frame, text=True)
                self.outbox.batch_sent()
            await self._finish()
        except ConnectionClosed:
            self.outbox.close()  # wakes a catch-up waiting for room
            self.reader_scope.cancel()
        finally:
            assert self._writer_done is not None
            self._writer_done.set()

    async def _finish(self) -> None:
        """Close the WebSocket with the code the connection ended for."""
        if self.outbox.failed:
            self._close = self.outbox.close_code
            self.reader_scope.cancel()
        self._flush()
        code, reason = self._close or (CloseCode.GOING_AWAY, "going_away")
        with anyio.move_on_after(2, shield=True), suppress(ConnectionClosed):
            await self.ws.close(code, reason)

    def _write_now(self, frame: bytes) -> bool:
        """What websockets' broadcast() does, but only while the socket keeps up, and one
        write per event-loop turn for everything sent to this client during it (a burst
        of messages costs one system call, not one each)."""
        ws = self.ws
        if ws.protocol.state is not State.OPEN or ws.send_in_progress is not None:
            return False
        backlog = ws.transport.get_write_buffer_size() + self._unflushed_bytes
        if backlog > DIRECT_WRITE_LIMIT_BYTES:
            return False  # backed up: queue it, the writer waits for the socket to drain
        encoded = text_frame(frame)
        if not self._unflushed:
            self._loop.call_soon(self._flush)
        self._unflushed.append(encoded)
        self._unflushed_bytes += len(encoded)
        return True

    def _flush(self) -> None:
        frames, self._unflushed, self._unflushed_bytes = self._unflushed, [], 0
        if frames and self.ws.protocol.state is State.OPEN:
            self.ws.transport.write(b"".join(frames))

    async def _run_request(self, request: Subscribe | History, key: _SubscriptionKey) -> None:
        try:
            if isinstance(request, Subscribe):
                await self._subscribe(request, key)
            else:
                await self._history(request)
        except BrokerUnavailable as exc:
            what = type(request).__name__
            _problems.log(logging.WARNING, what, "%s failed: %s", what, exc)
            self._fail_subscribe(request, key)
            self.outbox.offer(error_frame(ErrorCode.UNAVAILABLE, str(exc), request.ref))
        except Exception:
            log.exception("internal error handling %s", type(request).__name__)
            self._fail_subscribe(request, key)
            self.outbox.offer(error_frame(ErrorCode.INTERNAL, "internal error", request.ref))
        finally:
            self._requesting -= 1
            self._made_room()

    def _fail_subscribe(self, request: Subscribe | History, key: _SubscriptionKey) -> None:
        channel = Channel(request.channel)
        if isinstance(request, Subscribe) and self._wanted.get(channel) is key:
            del self._wanted[channel]
            self.session.subscribe_failed(channel)
            self._drop(channel, key)

    def _publish(self, request: Publish) -> None:
        channel = Channel(request.channel)
        # Unguessable (another client could otherwise publish it first and have this one
        # acked as its duplicate); 96 random bits without uuid4's object overhead.
        message_id = request.id or os.urandom(12).hex()

        def done(result: Result) -> None:
            self._publishing -= 1
            self._made_room()
            if isinstance(result, Failed):
                self.session.publish_failed(channel, result.behind or message_id)
                self.outbox.offer(
                    error_frame(
                        ErrorCode.UNAVAILABLE,
                        result.reason,
                        request.ref,
                        channel=channel,
                        id=message_id,
                    )
                )
                return
            self.outbox.offer(ack_frame(request.ref, message_id, channel, result.position))

        self._publishing += 1
        after = VectorClock(request.after) if request.after else None  # validated on decode
        self.edge.writer.publish(channel, message_id, request.data, self, done, after)

    def _subscribe_now(self, request: Subscribe) -> bool:
        """Subscribe without a task when nothing needs waiting for: no position to catch up
        from, and the channel's feed open already (the common case: many clients of one
        channel; a task per subscribe was most of a connection's set-up cost)."""
        if request.position is not None:
            return False
        channel = Channel(request.channel)
        feed = self.edge.feeds.acquire_ready(channel)
        if feed is None:
            return False
        key = _SubscriptionKey()
        self._wanted[channel] = key
        self.subscriptions[channel] = (feed, key)
        attached = feed.attach(key, self.outbox, None)
        assert isinstance(attached, AttachedLive)  # no position: always live
        self.session.subscribe_succeeded(channel)
        self.outbox.offer(subscribed_frame(request.ref, channel, attached.position, False))
        return True

    async def _subscribe(self, request: Subscribe, key: _SubscriptionKey) -> None:
        channel = Channel(request.channel)
        position = parse_position(request.position, request.ref, "position")
        feed = await self.edge.feeds.acquire(channel)
        if self._wanted.get(channel) is not key:  # unsubscribed (maybe resubscribed) meanwhile
            self.edge.feeds.release(channel)
            return
        self.subscriptions[channel] = (feed, key)
        attached = feed.attach(key, self.outbox, position)
        if isinstance(attached, AttachedLive):
            self.session.subscribe_succeeded(channel)
            self.outbox.offer(
                subscribed_frame(request.ref, channel, attached.position, position is not None)
            )
            return
        assert position is not None
        async with aclosing(self.edge.recovery.missed(channel, position, attached.upto_seq)) as it:
            try:
                batch = await anext(it, None)
            except PositionExpired as exc:
                self._wanted.pop(channel, None)
                self.session.subscribe_failed(channel)
                self._drop(channel, key)
                self.outbox.offer(
                    error_frame(
                        ErrorCode.POSITION_EXPIRED,
                        "messages after this position are no longer stored; subscribe again "
                        "from 'earliest' (or without a position for live only)",
                        request.ref,
                        channel=channel,
                        earliest=exc.earliest.to_dict(),
                    )
                )
                return
            if not self.session.subscribe_succeeded(channel):
                self._drop(channel, key)
                return
            # Your own position: the replay that follows takes you from there.
            self.outbox.offer(subscribed_frame(request.ref, channel, position, True))
            while batch is not None:
                for entry in batch:
                    if not self._is_current(channel, key):
                        return  # unsubscribed during the catch-up
                    await self.outbox.put(entry.frame)
                batch = await anext(it, None)
        feed.finish_catch_up(key)

    def _is_current(self, channel: Channel, key: _SubscriptionKey) -> bool:
        current = self.subscriptions.get(channel)
        return current is not None and current[1] is key

    def _drop(self, channel: Channel, key: _SubscriptionKey | None = None) -> None:
        """Detach from the channel's feed now; the NATS side is released in the background."""
        current = self.subscriptions.get(channel)
        if current is None or (key is not None and current[1] is not key):
            return
        del self.subscriptions[channel]
        feed, current_key = current
        feed.detach(current_key)
        self.edge.feeds.release(channel)

    async def _history(self, request: History) -> None:
        channel = Channel(request.channel)
        before = parse_position(request.before, request.ref, "before")
        frames, more = await self.edge.recovery.history(channel, request.limit, before)
        self.outbox.offer(history_frame(request.ref, channel, frames, more))
