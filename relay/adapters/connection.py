"""One client connection: the ServerSession driven by a WebSocket (or an SSE stream), and
what it asks for.

Two tasks per connection: the reader (frames -> session -> actions) and the
writer (outbox -> socket), plus short-lived request tasks for subscribes (with
catch-up) and history, so a slow catch-up does not hold up a publish.
Publishes take no task: the reader queues each on the region writer, which
calls back with the result, so a connection's publishes to one channel are
stored in the order they were sent. Unsubscribe is handled inline by the
reader, so no message of the channel can follow the "unsubscribed".

A connection gets what it needs from its relay in one frozen ``ConnectionDeps``
that the edge builds once; it never reaches back into the edge. Each of its
subscriptions is one ``Subscription`` object, owned by the session: its state
there, and the feed the connection attached it to (the object is its key in
that feed).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from contextlib import aclosing, suppress
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from federation.adapters.region_writer import RegionWriter
from federation.channel_writes import Failed, Result
from federation.region_log import LogUnavailable
from federation.throttled_log import ThrottledLog
from relay.adapters import publishing
from relay.adapters.audit import AuditLog
from relay.adapters.feed_manager import FeedManager
from relay.adapters.log_reader import LogReader
from relay.adapters.outbox import Outbox
from relay.adapters.wire import Wire, WireClosed
from relay.core.capabilities import TokenRejected
from relay.core.channels import Channel
from relay.core.connections_per_sub import ConnectionsPerSub
from relay.core.feed import AttachedLive
from relay.core.recovery import PositionExpired
from relay.protocol.errors import CloseCode, ErrorCode
from relay.protocol.frames import (
    History,
    Publish,
    ack_frame,
    connected_frame,
    error_frame,
    history_frame,
    message_frame,
    parse_position,
    subscribed_frame,
)
from relay.protocol.session import (
    ANONYMOUS,
    Action,
    Audit,
    Close,
    Detach,
    Reply,
    ServerSession,
    SessionAuth,
    SessionLimits,
    SubscribeRequest,
    Subscription,
)

log = logging.getLogger("relaynet.conn")
# Shared by every connection: when NATS is away, all of them fail alike.
_problems = ThrottledLog(log)
_ids = itertools.count(1)

MAX_REQUESTS_IN_FLIGHT = 256
# History reads in flight per connection: each holds a page (up to MAX_HISTORY_LIMIT
# messages) in memory until the outbox takes it, where it counts against the byte bound.
MAX_HISTORY_IN_FLIGHT = 4
# Above this many bytes waiting in the transport, frames go through the outbox.
DIRECT_WRITE_LIMIT_BYTES = 64 * 1024


@dataclass(frozen=True)
class ConnectionDeps:
    """Everything a connection uses of its relay, built once by the edge."""

    region: str
    relay_id: str
    heartbeat_s: float
    max_frame_bytes: int
    outbox_max_messages: int
    session_limits: SessionLimits  # one for all connections (a session only reads it)
    feeds: FeedManager
    writer: RegionWriter
    recovery: LogReader
    # Connections' short tasks (subscribe catch-ups, history reads, writers of backed-up
    # sockets): one task group for the relay, not one per connection.
    tasks: TaskGroup
    auth: SessionAuth = ANONYMOUS  # everything allowed
    outbox_max_bytes: int = 4 * 1024 * 1024
    # A frame the socket takes none of for this long closes the connection as slow.
    write_timeout_s: float = 15.0
    audit: AuditLog | None = None  # security events; None: not recorded
    # Connections per token subject on this relay (limits.max_connections_per_sub).
    per_sub: ConnectionsPerSub | None = None


class Connection:
    def __init__(self, deps: ConnectionDeps, wire: Wire) -> None:
        self.deps = deps
        self.wire = wire
        token = wire.token()  # always taken: the wire forgets it (and the handshake) then
        self._token = token if deps.auth.required else None
        self.id = f"{deps.relay_id}-{next(_ids)}-{os.urandom(4).hex()}"
        self.session = ServerSession(deps.session_limits, deps.auth, time.time())
        self._expiry_scope: anyio.CancelScope | None = None  # made once a token is accepted
        self._counted_sub: str | None = None  # the sub ``deps.per_sub`` counts this under
        self.outbox = Outbox(
            deps.outbox_max_messages, self._write_now, self._start_writer, deps.outbox_max_bytes
        )
        # Frames written directly during this event-loop turn, sent together at its end.
        self._loop = asyncio.get_running_loop()
        self._unflushed: list[bytes] = []
        self._unflushed_bytes = 0
        self._close: tuple[int, str] | None = None
        self._writer_done: anyio.Event | None = None  # set once the writer task ended
        # Requests in flight (bounded: past the bound the reader waits), and an event made
        # only when someone waits for one to finish: most connections never do.
        self._requesting = 0  # subscribes and history reads
        self._publishing = 0  # publishes queued on the writer, not yet answered
        self._histories = 0  # history reads among the requests
        self._room: anyio.Event | None = None
        self.reader_scope = anyio.CancelScope()

    @property
    def subscriptions(self) -> list[Subscription]:
        """Those attached to their channel's feed (for /metrics)."""
        return [sub for sub in self.session.subscriptions if sub.feed is not None]

    def _connected(self) -> bytes:
        """The ``connected`` frame; with ``?token=``, the token is checked first (a refused
        one gets an ``unauthorized`` error and the connection closes)."""
        deps = self.deps
        token, self._token = self._token, None
        if token is None:
            return connected_frame(
                deps.region, deps.relay_id, self.id, deps.heartbeat_s, deps.max_frame_bytes
            )
        try:
            credentials = self.session.authenticate(token)
        except TokenRejected as exc:
            if exc.expired:
                self._close = (CloseCode.TOKEN_EXPIRED, "token_expired")
            else:
                self._close = (CloseCode.UNAUTHORIZED, "unauthorized")
            self._audit(Audit("auth_failed", exc.reason, "connect"))
            return error_frame(ErrorCode.UNAUTHORIZED, exc.reason)
        self._audit(Audit("authed", op="connect", sub=credentials.sub, jti=credentials.jti))
        if self._refused_for_sub():
            return self._sub_limit_frame(credentials.sub)
        self._watch_expiry()
        return connected_frame(
            deps.region,
            deps.relay_id,
            self.id,
            deps.heartbeat_s,
            deps.max_frame_bytes,
            sub=credentials.sub,
            exp=credentials.exp,
        )

    async def serve(self) -> None:
        self.outbox.offer(self._connected())
        if self.session.deadline is not None:  # token mode: the authentication deadline
            self._watch_expiry()
        try:
            if self._close is None:  # else the token was refused
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
            if self._counted_sub is not None and self.deps.per_sub is not None:
                self.deps.per_sub.release(self._counted_sub)
            if self._expiry_scope is not None:
                self._expiry_scope.cancel()
            for sub in self.session.subscriptions:
                self._drop(sub)

    def _watch_expiry(self) -> None:
        """Close the connection when it has no token by the authentication deadline, or
        once its token expires unrenewed."""
        if self._expiry_scope is None:
            self._expiry_scope = anyio.CancelScope()
            with suppress(RuntimeError):  # the relay is stopping
                self.deps.tasks.start_soon(self._expire, self._expiry_scope)

    async def _expire(self, scope: anyio.CancelScope) -> None:
        with scope:
            while (deadline := self.session.deadline) is not None:
                await anyio.sleep(max(0.0, deadline - time.time()))
                self._act(self.session.tick(time.time()))
                if self.session.closed:
                    return

    def check_revoked(self) -> None:
        """A revocation arrived: close the connection if it revokes its token."""
        self._act(self.session.check_revoked())

    def _act(self, actions: list[Action]) -> None:
        """Replies, a close and audit lines, outside of the reader (token expiry and its
        warning, revocation)."""
        for action in actions:
            if isinstance(action, Reply):
                self.outbox.offer(action.frame)
            elif isinstance(action, Close):
                self.close_with(action.code, action.reason)
            elif isinstance(action, Audit):
                self._audit(action)

    def _audit(self, event: Audit) -> None:
        audit = self.deps.audit
        if audit is not None:
            audit.record(
                event.event,
                connection=self.id,
                sub=event.sub,
                jti=event.jti,
                channel=event.channel,
                op=event.op,
                reason=event.reason,
            )

    def _start_writer(self) -> None:
        """A frame has to wait for the socket (or the connection must end): from now on a
        task writes the queue. Idle connections never need one."""
        if self._writer_done is None:
            self._writer_done = anyio.Event()
            try:
                self.deps.tasks.start_soon(self._writer)
            except RuntimeError:
                # The edge's task group has ended: the relay is stopping, and what still
                # arrives (the region writer failing what it held) has nobody to go to.
                # Raising here ended the relay with code 1 (found by bench chaos).
                self._writer_done.set()

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
        async with aclosing(self.wire.incoming()) as frames:
            async for raw in frames:
                binary = isinstance(raw, bytes)
                actions = self.session.receive(raw, time.monotonic(), binary=binary)
                if self._refused_for_sub():  # its `authed` is not sent
                    assert self.session.credentials is not None
                    self.outbox.offer(self._sub_limit_frame(self.session.credentials.sub))
                    return
                for action in actions:
                    if isinstance(action, Reply):
                        self.outbox.offer(action.frame)
                    elif isinstance(action, Close):
                        self.close_with(action.code, action.reason)
                        return
                    elif isinstance(action, Detach):
                        self._drop(action.subscription)
                    elif isinstance(action, Audit):
                        self._audit(action)
                    elif isinstance(action, Publish):
                        while self._publishing >= MAX_REQUESTS_IN_FLIGHT:
                            await self._wait_room()
                        self._publish(action)
                    elif isinstance(action, SubscribeRequest) and self._subscribe_now(action):
                        pass  # a live subscribe to a channel this relay serves already
                    else:
                        while self._requesting >= MAX_REQUESTS_IN_FLIGHT or (
                            isinstance(action, History) and self._histories >= MAX_HISTORY_IN_FLIGHT
                        ):
                            await self._wait_room()
                        self._requesting += 1
                        self._histories += isinstance(action, History)
                        self.deps.tasks.start_soon(self._run_request, action)
                if self.session.credentials is not None and self._expiry_scope is None:
                    self._watch_expiry()
                if self.outbox.failed:
                    return

    def _refused_for_sub(self) -> bool:
        """Whether the first token this connection had accepted belongs to a sub that holds
        ``limits.max_connections_per_sub`` connections here already; if so the connection
        is to close (4004). Renewals keep the sub, so only the first token is counted."""
        per_sub = self.deps.per_sub
        credentials = self.session.credentials
        if per_sub is None or credentials is None or self._counted_sub is not None:
            return False
        if per_sub.admit(credentials.sub):
            self._counted_sub = credentials.sub
            return False
        self.close_with(CloseCode.TOO_MANY_CONNECTIONS, "too_many_connections")
        return True

    def _sub_limit_frame(self, sub: str) -> bytes:
        assert self.deps.per_sub is not None
        return error_frame(
            ErrorCode.LIMIT_EXCEEDED,
            f"{sub!r} holds {self.deps.per_sub.limit} connections to this relay already "
            "(limits.max_connections_per_sub): close one, or try again later",
        )

    async def _writer(self) -> None:
        try:
            while batch := await self.outbox.get_batch():
                self._flush()  # what was written directly goes first
                for frame in batch:
                    # Each send waits for the socket to take the one before it.
                    with anyio.move_on_after(self.deps.write_timeout_s) as stuck:
                        await self.wire.send(frame)
                    if stuck.cancelled_caught:
                        self.outbox.fail(CloseCode.SLOW_CONSUMER, "write_timeout")
                        break
                self.outbox.batch_sent()
            await self._finish()
        except WireClosed:
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
            failed_code, failed_reason = self.outbox.close_code
            _problems.log(
                logging.INFO,
                failed_reason,
                "closing %s: %s (%d)",
                self.id,
                failed_reason,
                failed_code,
            )
        self._flush()
        code, reason = self._close or (CloseCode.GOING_AWAY, "going_away")
        with anyio.move_on_after(2, shield=True) as timed_out:
            await self.wire.close(code, reason)
        if timed_out.cancelled_caught:  # the client reads nothing: drop what it never took
            self.wire.abort()

    def _write_now(self, frame: bytes) -> bool:
        """What websockets' broadcast() does, but only while the socket keeps up, and one
        write per event-loop turn for everything sent to this client during it (a burst
        of messages costs one system call, not one each)."""
        wire = self.wire
        if not wire.writable():
            return False
        if wire.buffered() + self._unflushed_bytes > DIRECT_WRITE_LIMIT_BYTES:
            return False  # backed up: queue it, the writer waits for the socket to drain
        encoded = wire.encode(frame)
        if not self._unflushed:
            self._loop.call_soon(self._flush)
        self._unflushed.append(encoded)
        self._unflushed_bytes += len(encoded)
        return True

    def _flush(self) -> None:
        frames, self._unflushed, self._unflushed_bytes = self._unflushed, [], 0
        if frames:
            self.wire.write(b"".join(frames))

    async def _run_request(self, request: SubscribeRequest | History) -> None:
        frame = request.frame if isinstance(request, SubscribeRequest) else request
        try:
            if isinstance(request, SubscribeRequest):
                await self._subscribe(request)
            else:
                await self._history(request)
        except LogUnavailable as exc:
            what = type(frame).__name__
            _problems.log(logging.WARNING, what, "%s failed: %s", what, exc)
            self._fail_subscribe(request)
            self.outbox.offer(error_frame(ErrorCode.UNAVAILABLE, str(exc), frame.ref))
        except Exception:
            log.exception("internal error handling %s", type(frame).__name__)
            self._fail_subscribe(request)
            self.outbox.offer(error_frame(ErrorCode.INTERNAL, "internal error", frame.ref))
        finally:
            self._requesting -= 1
            self._histories -= isinstance(request, History)
            self._made_room()

    def _fail_subscribe(self, request: SubscribeRequest | History) -> None:
        if isinstance(request, SubscribeRequest) and self.session.is_current(request.subscription):
            self.session.subscribe_failed(request.subscription)
            self._drop(request.subscription)

    def _publish(self, request: Publish) -> None:
        channel = Channel(request.channel)

        def done(message_id: str, result: Result) -> None:
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
        publishing.submit(self.deps.writer, request, self.session.credentials, self, done)

    def _subscribe_now(self, request: SubscribeRequest) -> bool:
        """Subscribe without a task when nothing needs waiting for: no position to catch up
        from, and the channel's feed open already (the common case: many clients of one
        channel; a task per subscribe was most of a connection's set-up cost)."""
        frame, sub = request.frame, request.subscription
        if frame.position is not None:
            return False
        feed = self.deps.feeds.acquire_ready(sub.channel)
        if feed is None:
            return False
        sub.feed = feed
        attached = feed.attach(sub, self.outbox, None)
        assert isinstance(attached, AttachedLive)  # no position: always live
        self.session.subscribe_succeeded(sub)
        self.outbox.offer(subscribed_frame(frame.ref, sub.channel, attached.position, False))
        return True

    async def _subscribe(self, request: SubscribeRequest) -> None:
        frame, sub = request.frame, request.subscription
        channel = sub.channel
        position = parse_position(frame.position, frame.ref, "position")
        feed = await self.deps.feeds.acquire(channel)
        if not self.session.is_current(sub):  # unsubscribed (maybe resubscribed) meanwhile
            self.deps.feeds.release(channel)
            return
        sub.feed = feed
        attached = feed.attach(sub, self.outbox, position)
        if isinstance(attached, AttachedLive):
            self.session.subscribe_succeeded(sub)
            self.outbox.offer(
                subscribed_frame(frame.ref, channel, attached.position, position is not None)
            )
            return
        assert position is not None
        async with aclosing(self.deps.recovery.missed(channel, position, attached.upto_seq)) as it:
            try:
                batch = await anext(it, None)
            except PositionExpired as exc:
                self.session.subscribe_failed(sub)
                self._drop(sub)
                self.outbox.offer(
                    error_frame(
                        ErrorCode.POSITION_EXPIRED,
                        "messages after this position are no longer stored; subscribe again "
                        "from 'earliest' (or without a position for live only)",
                        frame.ref,
                        channel=channel,
                        earliest=exc.earliest.to_dict(),
                    )
                )
                return
            if not self.session.subscribe_succeeded(sub):
                self._drop(sub)
                return
            # Your own position: the replay that follows takes you from there.
            self.outbox.offer(subscribed_frame(frame.ref, channel, position, True))
            while batch is not None:
                for entry in batch:
                    if sub.feed is None:
                        return  # unsubscribed during the catch-up
                    await self.outbox.put(message_frame(entry.channel, entry.msg))
                batch = await anext(it, None)
        feed.finish_catch_up(sub)

    def _drop(self, sub: Subscription) -> None:
        """Detach from the channel's feed now; the NATS side is released in the background."""
        feed, sub.feed = sub.feed, None
        if feed is not None:
            feed.detach(sub)
            self.deps.feeds.release(sub.channel)

    async def _history(self, request: History) -> None:
        if self.outbox.failed or self.outbox.closed:
            return  # nobody to read it for
        channel = Channel(request.channel)
        before = parse_position(request.before, request.ref, "before")
        frames, more = await self.deps.recovery.history(channel, request.limit, before)
        self.outbox.offer(history_frame(request.ref, channel, frames, more))
