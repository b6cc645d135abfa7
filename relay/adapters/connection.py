"""One client connection: the ServerSession driven by a WebSocket (or an SSE stream), and
what it asks for.

Two tasks per connection: the reader (frames -> session -> actions) and the
writer (outbox -> socket), plus short-lived request tasks for subscribes (with
catch-up) and history, so a slow catch-up does not hold up a publish.
Publishes take no task: the reader queues each on the region writer, which
calls back with the result, so a connection's publishes to one channel are
stored in the order they were sent. Unsubscribe is handled inline by the
reader, so no message of the channel can follow the "unsubscribed".

With backend hooks (``relay.adapters.hooks``): the connect hook is asked before the
``connected`` frame and, for an ``auth`` frame, by the reader itself (frames after it
wait); a subscribe hook is asked in the subscribe's task, before it attaches; a
channel's hooked publishes queue behind one task that asks about each in turn and
hands it to the writer before asking about the next, so the order still holds.

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
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import aclosing, suppress
from dataclasses import dataclass

import anyio
import msgspec
from anyio.abc import TaskGroup
from msgspec import UnsetType

from federation.adapters.region_writer import MAX_GROUP, RegionWriter
from federation.channel_writes import Failed, Result
from federation.region_log import LogUnavailable
from federation.throttled_log import ThrottledLog
from relay.adapters import publishing
from relay.adapters.audit import AuditLog
from relay.adapters.feed_manager import FeedManager
from relay.adapters.hooks import ClientInfo, Hooks
from relay.adapters.log_reader import LogReader
from relay.adapters.outbox import Outbox
from relay.adapters.presence import PresenceService
from relay.adapters.stats import RelayStats
from relay.adapters.wire import Wire, WireClosed
from relay.core.capabilities import Credentials, TokenRejected
from relay.core.channels import Channel
from relay.core.connections_per_sub import ConnectionsPerSub
from relay.core.feed import AttachedLive
from relay.core.hooks import Accepted, Rejected, Unavailable, Verdict
from relay.core.recovery import PositionExpired
from relay.protocol.errors import CloseCode, ErrorCode
from relay.protocol.frames import (
    Auth,
    History,
    PresenceEnter,
    PresenceGet,
    PresenceLeave,
    Publish,
    ack_frame,
    connected_frame,
    error_frame,
    history_frame,
    message_frame,
    parse_position,
    presence_frame,
    presence_ok_frame,
    subscribed_frame,
)
from relay.protocol.session import (
    ANONYMOUS,
    Action,
    Audit,
    AuthRequest,
    Close,
    Detach,
    PresenceRequest,
    Reply,
    ServerSession,
    SessionAuth,
    SessionLimits,
    SubscribeRequest,
    Subscription,
    fenced_frame,
)

log = logging.getLogger("relaynet.conn")
# Shared by every connection: when NATS is away, all of them fail alike.
_problems = ThrottledLog(log)
_ids = itertools.count(1)

MAX_REQUESTS_IN_FLIGHT = 256
# Publishes of one connection queued on the writer and not yet answered, and their data's
# bytes (by count alone, 1 MB frames could hold 2.8 GB). Three of the writer's largest
# groups: a group takes at most half of what waits (group_size), so a pipelining
# publisher's groups settle at a third of this window, the largest. nats-server pays
# about 2 ms per atomic batch whatever its size (see federation/DESIGN.md); with a window
# equal to one group, groups alternated 248 and 8.
MAX_PUBLISHES_IN_FLIGHT = 3 * MAX_GROUP
MAX_PUBLISH_BYTES_IN_FLIGHT = 8 * 1024 * 1024
PublishDone = Callable[[str, Result], None]
# History reads in flight per connection: each holds a page (up to MAX_HISTORY_LIMIT
# messages) in memory until the outbox takes it, where it counts against the byte bound.
MAX_HISTORY_IN_FLIGHT = 4
# Above this many bytes waiting in the transport, frames go through the outbox.
DIRECT_WRITE_LIMIT_BYTES = 64 * 1024


def _chunks(frames: list[bytes], limit: int) -> Iterator[list[bytes]]:
    """``frames`` in order, in runs of at most ``limit`` bytes (a larger frame alone)."""
    run: list[bytes] = []
    size = 0
    for frame in frames:
        if run and size + len(frame) > limit:
            yield run
            run, size = [], 0
        run.append(frame)
        size += len(frame)
    if run:
        yield run


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
    hooks: Hooks | None = None  # the backend's hooks; None: none configured
    presence: PresenceService | None = None  # None: presence ops answer `unavailable`
    stats: RelayStats | None = None  # what /metrics counts; None: not counted


class Connection:
    def __init__(self, deps: ConnectionDeps, wire: Wire, client: ClientInfo | None = None) -> None:
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
        self._unflushed_room = 0  # what the transport could take at this turn's first frame
        self._close: tuple[int, str] | None = None
        self._writer_done: anyio.Event | None = None  # set once the writer task ended
        # Requests in flight (bounded: past the bound the reader waits), and an event made
        # only when someone waits for one to finish: most connections never do.
        self._requesting = 0  # subscribes and history reads
        self._publishing = 0  # publishes queued on the writer, not yet answered
        self._publishing_bytes = 0  # and their data
        self._histories = 0  # history reads among the requests
        self._room: anyio.Event | None = None
        self.reader_scope = anyio.CancelScope()
        self._client = client  # what the connect hook is told about the client
        # Publishes waiting for their channel's publish hook, in order; and the channels
        # where one failed (its id): the ones queued behind it are refused until it is
        # sent again. Made on first use.
        self._hooked: dict[Channel, deque[tuple[Publish, PublishDone]]] | None = None
        self._hook_fences: dict[Channel, str] = {}
        # Presence: channel -> the client id this connection entered it as; and the
        # channels whose presence events it subscribed to. Made on first use.
        self._entered: dict[str, str] | None = None
        self._presence_subs: set[str] | None = None

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
        return self._connected_as(credentials)

    def _connected_as(self, credentials: Credentials) -> bytes:
        """The ``connected`` frame for a client whose identity was just accepted (or the
        refusal if its ``sub`` holds too many connections here already)."""
        if self._refused_for_sub():
            return self._sub_limit_frame(credentials.sub)
        self._watch_expiry()
        deps = self.deps
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
        if self.deps.auth.external:
            self._reply(await self._hook_connected())
        else:
            self._reply(self._connected())
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
            if self._entered and self.deps.presence is not None:
                self.deps.presence.connection_closed(self.id)

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
                self._reply(action.frame)
            elif isinstance(action, Close):
                self.close_with(action.code, action.reason)
            elif isinstance(action, Audit):
                self._audit(action)

    def _reply(self, frame: bytes) -> None:
        """A reply to this client (not a delivery): errors are counted for /metrics."""
        stats = self.deps.stats
        if stats is not None:
            stats.reply(frame)
        self.outbox.offer(frame)

    def _audit(self, event: Audit) -> None:
        if event.event == "auth_failed" and self.deps.stats is not None:
            self.deps.stats.auth_failures[event.op or "connect"] += 1
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
                    if isinstance(action, Publish):  # first: most frames of a busy client
                        while (
                            self._publishing >= MAX_PUBLISHES_IN_FLIGHT
                            or self._publishing_bytes >= MAX_PUBLISH_BYTES_IN_FLIGHT
                        ):
                            await self._wait_room()
                        self._publish(action)
                    elif isinstance(action, Reply):
                        self._reply(action.frame)
                    elif isinstance(action, Close):
                        self.close_with(action.code, action.reason)
                        return
                    elif isinstance(action, Detach):
                        self._drop(action.subscription)
                    elif isinstance(action, Audit):
                        self._audit(action)
                    elif isinstance(action, PresenceRequest):
                        self._presence(action)
                    elif isinstance(action, AuthRequest):
                        await self._hook_auth(action.frame)
                        if self._close is not None:
                            return
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
                for chunk in _chunks(batch, DIRECT_WRITE_LIMIT_BYTES):
                    # One write per chunk; each must be taken by the socket in time.
                    with anyio.move_on_after(self.deps.write_timeout_s) as stuck:
                        await self.wire.send(chunk)
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
                extra={"connection": self.id},
            )
        self._flush()
        if self._close is not None and self.deps.stats is not None:
            self.deps.stats.closes[self._close[1]] += 1  # the relay's choice, not the client's
        code, reason = self._close or (CloseCode.GOING_AWAY, "going_away")
        with anyio.move_on_after(2, shield=True) as timed_out:
            await self.wire.close(code, reason)
        if timed_out.cancelled_caught:  # the client reads nothing: drop what it never took
            self.wire.abort()

    def _write_now(self, frame: bytes) -> bool:
        """What websockets' broadcast() does, but only while the socket keeps up, and one
        write per event-loop turn for everything sent to this client during it (a burst
        of messages costs one system call, not one each)."""
        unflushed = self._unflushed
        if unflushed:
            # The socket was asked at this turn's first frame, and nothing was written to
            # it since: the fan-out to N subscribers asks N times per message, not N x k.
            if self._unflushed_bytes > self._unflushed_room:
                return False
        else:
            wire = self.wire
            if not wire.writable():
                return False
            room = DIRECT_WRITE_LIMIT_BYTES - wire.buffered()
            if room < 0:
                return False  # backed up: queue it, the writer waits for the socket to drain
            self._unflushed_room = room
            self._loop.call_soon(self._flush)
        encoded = self.wire.encode(frame)
        unflushed.append(encoded)
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
            self._reply(error_frame(ErrorCode.UNAVAILABLE, str(exc), frame.ref))
        except Exception:
            log.exception(
                "internal error handling %s",
                type(frame).__name__,
                extra={"connection": self.id},
            )
            self._fail_subscribe(request)
            self._reply(error_frame(ErrorCode.INTERNAL, "internal error", frame.ref))
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
        started = time.perf_counter()
        size = len(request.data)

        def done(message_id: str, result: Result) -> None:
            self._publishing -= 1
            self._publishing_bytes -= size
            self._made_room()
            if isinstance(result, Failed):
                self.session.publish_failed(channel, result.behind or message_id)
                self._reply(
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
            if self.deps.stats is not None:
                self.deps.stats.acked(channel, time.perf_counter() - started)

        self._publishing += 1
        self._publishing_bytes += size
        if self.deps.hooks is not None and self.deps.hooks.publishes(channel):
            self._queue_hooked(request, done)
            return
        publishing.submit(self.deps.writer, request, self.session.credentials, self, done)

    def _subscribe_now(self, request: SubscribeRequest) -> bool:
        """Subscribe without a task when nothing needs waiting for: no position to catch up
        from, and the channel's feed open already (the common case: many clients of one
        channel; a task per subscribe was most of a connection's set-up cost)."""
        frame, sub = request.frame, request.subscription
        if frame.position is not None or self._hooks_subscribe(sub.channel):
            return False
        feed = self.deps.feeds.acquire_ready(sub.channel)
        if feed is None:
            return False
        sub.feed = feed
        attached = feed.attach(sub, self.outbox, None)
        assert isinstance(attached, AttachedLive)  # no position: always live
        self.session.subscribe_succeeded(sub)
        self.outbox.offer(subscribed_frame(frame.ref, sub.channel, attached.position, False))
        self._follow_presence(request)
        return True

    async def _subscribe(self, request: SubscribeRequest) -> None:
        frame, sub = request.frame, request.subscription
        channel = sub.channel
        position = parse_position(frame.position, frame.ref, "position")
        if self._hooks_subscribe(channel) and not await self._hook_subscribe(request):
            return
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
            self._follow_presence(request)
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
            self._follow_presence(request)
            while batch is not None:
                for entry in batch:
                    if sub.feed is None:
                        return  # unsubscribed during the catch-up
                    await self.outbox.put(message_frame(entry.channel, entry.msg))
                batch = await anext(it, None)
        feed.finish_catch_up(sub)

    def _follow_presence(self, request: SubscribeRequest) -> None:
        """A subscription with ``presence``: the member list now, then every change."""
        presence = self.deps.presence
        if not request.frame.presence or presence is None:
            return
        channel = request.subscription.channel
        if self._presence_subs is None:
            self._presence_subs = set()
        if channel not in self._presence_subs:
            self._presence_subs.add(channel)
            presence.listen(channel, self.outbox.offer)
        self.outbox.offer(presence_frame(None, channel, presence.members(channel)))

    def _presence(self, request: PresenceRequest) -> None:
        frame = request.frame
        channel = frame.channel
        presence = self.deps.presence
        if presence is None:
            self.outbox.offer(
                error_frame(
                    ErrorCode.UNAVAILABLE,
                    "presence is off on this relay",
                    frame.ref,
                    channel=channel,
                )
            )
            return
        if isinstance(frame, PresenceGet):
            self.outbox.offer(presence_frame(frame.ref, channel, presence.members(channel)))
            return
        if self._entered is None:
            self._entered = {}
        if isinstance(frame, PresenceLeave):
            client_id = self._entered.pop(channel, request.client_id or self.id)
            presence.leave(channel, client_id, self.id)
            self.outbox.offer(presence_ok_frame(frame.ref, channel, "leave", client_id))
            return
        entered = self._entered.get(channel)
        client_id = entered or request.client_id or self.id
        if entered is not None and isinstance(frame, PresenceEnter) and request.client_id:
            client_id = request.client_id  # entering again under another name
            if client_id != entered:
                presence.leave(channel, entered, self.id)
        self._entered[channel] = client_id
        data = None if isinstance(frame.data, UnsetType) else bytes(frame.data)
        presence.enter(channel, client_id, self.id, data)
        action = "update" if entered is not None else "enter"
        self.outbox.offer(presence_ok_frame(frame.ref, channel, action, client_id))

    def _drop(self, sub: Subscription) -> None:
        """Detach from the channel's feed now; the NATS side is released in the background."""
        feed, sub.feed = sub.feed, None
        if feed is not None:
            feed.detach(sub)
            self.deps.feeds.release(sub.channel)
        if self._presence_subs and sub.channel in self._presence_subs:
            self._presence_subs.discard(sub.channel)
            if self.deps.presence is not None:
                self.deps.presence.unlisten(sub.channel, self.outbox.offer)

    async def _history(self, request: History) -> None:
        if self.outbox.failed or self.outbox.closed:
            return  # nobody to read it for
        channel = Channel(request.channel)
        before = parse_position(request.before, request.ref, "before")
        frames, more = await self.deps.recovery.history(channel, request.limit, before)
        self.outbox.offer(history_frame(request.ref, channel, frames, more))

    # --- backend hooks (relay.adapters.hooks)

    def _hooks_subscribe(self, channel: str) -> bool:
        return self.deps.hooks is not None and self.deps.hooks.subscribes(channel)

    async def _ask_connect(self, credentials: str | None) -> Verdict:
        hooks, client = self.deps.hooks, self._client
        assert hooks is not None  # hook mode has a connect hook (config check)
        return await hooks.connect(
            connection_id=self.id,
            transport="websocket" if client is None else client.transport,
            credentials=credentials,
            remote_addr=None if client is None else client.remote_addr,
            headers={} if client is None else dict(client.headers),
        )

    async def _hook_connected(self) -> bytes:
        """Hook mode: the ``connected`` frame, once the backend said who the client is if
        it came with credentials (``?token=``) or a forwarded header; without either it
        may still send an ``auth`` frame. A rejection closes the connection (4501); a
        backend that cannot answer closes it as temporary (4001: the client retries)."""
        deps, client = self.deps, self._client
        token, self._token = self._token, None
        credentials = None if client is None else client.credentials
        if credentials is None:
            if token is None and (client is None or not client.headers):
                return connected_frame(
                    deps.region, deps.relay_id, self.id, deps.heartbeat_s, deps.max_frame_bytes
                )
            verdict = await self._ask_connect(token)
            if isinstance(verdict, Rejected):
                self._close = (CloseCode.UNAUTHORIZED, "unauthorized")
                self._audit(Audit("auth_failed", verdict.reason, "connect"))
                return error_frame(ErrorCode.UNAUTHORIZED, verdict.reason)
            if isinstance(verdict, Unavailable):
                self._close = (CloseCode.UNAVAILABLE, "unavailable")
                return error_frame(ErrorCode.UNAVAILABLE, verdict.reason)
            credentials = verdict.credentials
            assert credentials is not None  # a connect accept always has them
        self.session.grant(credentials)
        self._audit(Audit("authed", op="connect", sub=credentials.sub))
        return self._connected_as(credentials)

    async def _hook_auth(self, frame: Auth) -> None:
        """Hook mode: an ``auth`` frame, checked by the backend. The reader waits for it,
        so frames sent after it are handled as the client it makes."""
        verdict = await self._ask_connect(frame.token)
        now = time.monotonic()
        if isinstance(verdict, Unavailable):
            self.outbox.offer(error_frame(ErrorCode.UNAVAILABLE, verdict.reason, frame.ref))
            return
        if isinstance(verdict, Rejected):
            actions = self.session.auth_refused(frame, verdict.reason, now)
        else:
            assert verdict.credentials is not None
            actions = self.session.auth_accepted(frame, verdict.credentials, now)
            if self._refused_for_sub():
                assert self.session.credentials is not None
                self.outbox.offer(self._sub_limit_frame(self.session.credentials.sub))
                return
        for action in actions:
            if isinstance(action, Detach):
                self._drop(action.subscription)
            else:
                self._act([action])

    async def _hook_subscribe(self, request: SubscribeRequest) -> bool:
        """Whether the backend lets the subscription be attached; if not, it is refused
        (``forbidden`` with the backend's reason, or ``unavailable``)."""
        hooks, sub = self.deps.hooks, request.subscription
        assert hooks is not None
        creds = self.session.credentials
        verdict = await hooks.subscribe(self.id, None if creds is None else creds.sub, sub.channel)
        if isinstance(verdict, Accepted):
            return True
        self.session.subscribe_failed(sub)
        code = ErrorCode.UNAVAILABLE
        if isinstance(verdict, Rejected):
            code = ErrorCode.FORBIDDEN
            sub_id, jti = (None, None) if creds is None else (creds.sub, creds.jti)
            self._audit(Audit("denied", verdict.reason, "subscribe", sub.channel, sub_id, jti))
        self.outbox.offer(error_frame(code, verdict.reason, request.frame.ref, channel=sub.channel))
        return False

    def _queue_hooked(self, request: Publish, done: PublishDone) -> None:
        """A publish to a channel with a publish hook. The channel's hooked publishes are
        asked about one after the other, each handed to the writer before the next is
        asked, so a slow answer never lets a later publish overtake an earlier one."""
        channel = Channel(request.channel)
        fences = self._hook_fences

        def answered(message_id: str, result: Result) -> None:
            if isinstance(result, Failed):  # the rest wait for its resend, as in the writer
                fences.setdefault(channel, result.behind or message_id)
            done(message_id, result)

        if self._hooked is None:
            self._hooked = {}
        queue = self._hooked.get(channel)
        if queue is not None:
            queue.append((request, answered))
            return
        self._hooked[channel] = deque([(request, answered)])
        self.deps.tasks.start_soon(self._run_hooked, channel)

    async def _run_hooked(self, channel: Channel) -> None:
        assert self._hooked is not None
        queue = self._hooked[channel]
        try:
            while queue:
                request, done = queue[0]
                await self._hooked_publish(channel, request, done)
                queue.popleft()
        finally:
            del self._hooked[channel]
            for request, done in queue:  # cancelled: the relay is stopping
                done(request.id or "", Failed("the relay is shutting down"))

    async def _hooked_publish(self, channel: Channel, request: Publish, done: PublishDone) -> None:
        if self._hook_fenced(channel, request):
            return
        if request.id is None:  # the backend is told the id it will be stored under
            request = msgspec.structs.replace(request, id=os.urandom(12).hex())
        assert request.id is not None and self.deps.hooks is not None
        creds = self.session.credentials
        sub = None if creds is None else creds.sub
        verdict = await self.deps.hooks.publish(self.id, sub, request)
        if isinstance(verdict, Rejected):
            # Final, like a capability's refusal: the publishes after it go on.
            jti = None if creds is None else creds.jti
            self._audit(Audit("denied", verdict.reason, "publish", channel, sub, jti))
            self.outbox.offer(
                error_frame(
                    ErrorCode.FORBIDDEN, verdict.reason, request.ref, channel=channel, id=request.id
                )
            )
            self._publish_ended(request)
        elif isinstance(verdict, Unavailable):
            done(request.id, Failed(verdict.reason))
        elif not self._hook_fenced(channel, request):  # one before it failed meanwhile
            if verdict.data is not None:
                request = msgspec.structs.replace(request, data=verdict.data)
            publishing.submit(self.deps.writer, request, creds, self, done)

    def _hook_fenced(self, channel: Channel, request: Publish) -> bool:
        """Refuse ``request`` if an earlier publish to ``channel`` failed and was not sent
        again yet; the resend itself lifts the fence."""
        fence = self._hook_fences.get(channel)
        if fence is None:
            return False
        if request.id == fence:
            del self._hook_fences[channel]
            return False
        self.outbox.offer(fenced_frame(request, fence))
        self._publish_ended(request)
        return True

    def _publish_ended(self, request: Publish) -> None:
        """Answered here, without the writer (``done`` is not called): the data is the
        request's as it was queued (a hook's replacement happens after these checks)."""
        self._publishing -= 1
        self._publishing_bytes -= len(request.data)
        self._made_room()
