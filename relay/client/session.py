"""ClientSession: what a client must remember across connections, without I/O.

Theory of operation
-------------------
The I/O layer owns the WebSocket (and the choice of region). It hands every
received text frame to ``receive()`` and gets back events (nouns:
``Message``, ``Acked``, ``PositionExpired``...); it sends the bytes that
``subscribe()``, ``unsubscribe()`` and ``publish()`` return; and on every new
connection, in whichever region, it sends what ``on_reconnect()`` returns.
When a connection closes, ``close_policy(code)`` says whether to come back.

Tokens (relays in token mode): the I/O layer puts the token in the connection URL
(``?token=``); the ``connected`` frame then says when it expires (``exp``), and
``renewal_delay_s`` says when to send a fresh one with ``auth()`` (answered by an
``Authed`` event with the new ``exp``); a ``TokenExpiring`` event (the relay's warning,
``[auth] expiry_warning_s`` before ``exp``) means renew now. A token that expires
unrenewed closes the connection with 4003, and one an operator revoked with 4005: both
reconnect with a fresh token.

Three things survive a reconnect (the third, presence, is ``presence.py``'s
``PresenceBook``: what the application entered is entered again on every new
connection, and a subscription with ``presence`` gets the member list again):

* **Subscriptions and positions.** For each channel the session keeps the
  position it has processed up to and resubscribes with it, so the relay
  replays exactly what was missed. The position only grows: it is the
  pointwise maximum of the positions of the messages processed, because after
  a failover another region's log may order concurrent messages differently,
  and adopting a message's position as is could move an entry backwards and
  let an already delivered message through again. A message the position
  already covers (``position[origin] >= ts[origin]``) is dropped, as is a
  message whose id and data were recently delivered on the channel (the same
  publish retried in two regions is stored once per region, under the same id,
  with the same bytes; another publisher's message with that id is not a repeat).
  The application never sees a duplicate.
* **Unacknowledged publishes.** Each publish gets an idempotency id that does
  not depend on the connection and stays pending until its ``ack``. Ids are
  128 random bits each, never a prefix and a counter: every subscriber sees
  them, and an id someone can guess, someone can publish first (an anonymous
  relay would then ack ours as that one's duplicate and store nothing).
  ``on_reconnect()`` publishes every pending one again with the same id: the
  relay deduplicates by id within its window, so a publish whose ack was lost
  is not stored twice.

Malformed server frames never raise: they become a ``BadFrame`` event; frames
with an ``op`` this version does not know are ignored (the protocol lets
servers add ops and fields). Misusing the API (subscribing twice, invalid JSON
data) raises ``ValueError``: that is a bug in the caller.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final, Literal

import msgspec

from federation.vclock import ClockError, VectorClock
from relay.client.history import history_decoder, history_request
from relay.client.presence import (
    Entry,
    Member,
    PresenceBook,
    PresenceChange,
    PresenceSync,
    action_of,
    member_of,
    members_of,
)
from relay.protocol.errors import CloseCode, ErrorCode
from relay.protocol.frames import (  # the wire format, defined once
    AckFrame,
    Auth,
    AuthedFrame,
    ConnectedFrame,
    ErrorFrame,
    HistoryFrame,
    MessageFrame,
    PresenceEnter,
    PresenceEventFrame,
    PresenceFrame,
    PresenceGet,
    PresenceLeave,
    PresenceOkFrame,
    Publish,
    RedirectFrame,
    Subscribe,
    SubscribedFrame,
    TokenExpiringFrame,
    Unsubscribe,
)
from relay.protocol.http_api import PublishBody

Ref = str | int | None
ClosePolicy = Literal["reconnect", "stop"]

# How many (channel, id) pairs to remember for dropping a message stored twice under one id.
DEFAULT_ID_MEMORY: Final = 4096
# What a relay accepts as a publish id (PROTOCOL.md): 1-128 printable ASCII, no spaces.
_ID_RE: Final = re.compile(r"[\x21-\x7e]{1,128}")


def new_publish_id() -> str:
    """128 bits from the system's generator, URL-safe base64 (22 characters): unguessable
    by whoever sees our earlier ids, and unique across every client of a channel."""
    return secrets.token_urlsafe(16)


class FrameTooLarge(ValueError):
    """A publish whose frame exceeds the relay's ``max_frame_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the publish frame is {size} bytes; the relay accepts frames up to {limit} bytes"
        )
        self.size = size
        self.limit = limit


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    region: str
    relay: str
    connection_id: str
    heartbeat_s: float | None = None
    max_frame_bytes: int | None = None
    # With a token: whose it is, and when it expires (seconds since the epoch).
    sub: str | None = None
    exp: float | None = None


@dataclass(frozen=True)
class Authed:
    """The relay accepted a renewed token; it now expires at ``exp``."""

    sub: str
    exp: float


@dataclass(frozen=True)
class TokenExpiring:
    """The relay warns that the token expires at ``exp``: renew now (``auth()``)."""

    exp: float


@dataclass(frozen=True)
class Redirected:
    """The relay asks us to go to ``url`` (an edge of ``region``) and will close."""

    url: str
    region: str | None
    reason: str


@dataclass(frozen=True)
class Subscribed:
    channel: str
    position: VectorClock
    recovered: bool


@dataclass(frozen=True)
class Message:
    channel: str
    id: str
    data_json: bytes
    """``data`` exactly as the publisher sent it (JSON)."""
    origin: str
    ts: VectorClock
    position: VectorClock

    @cached_property
    def data(self) -> Any:
        """The message's ``data``: the JSON value the publisher sent, decoded."""
        return msgspec.json.decode(self.data_json)


@dataclass(frozen=True)
class Acked:
    id: str
    channel: str
    position: VectorClock


@dataclass(frozen=True)
class ErrorReceived:
    code: str
    message: str
    ref: Ref
    temporary: bool
    # What the failed request was about, when the session sent it.
    channel: str | None = None
    publish_id: str | None = None
    # rate_limited: the wait before sending it again (at most 60 s, whatever the relay says)
    retry_after_ms: int | None = None


@dataclass(frozen=True)
class PositionExpired:
    """The relay no longer stores everything after our position: subscribe again from
    ``earliest`` (accepting the gap) or without a position (live only)."""

    channel: str
    earliest: VectorClock


@dataclass(frozen=True)
class HistoryReceived:
    """The reply to ``history()``: the newest stored messages up to the limit, oldest first
    (not deduplicated, and the channel's position does not move)."""

    ref: int
    channel: str
    messages: tuple[Message, ...]
    more: bool
    """Older messages are still stored: ask again with ``before=messages[0].position``."""


@dataclass(frozen=True)
class PresenceDone:
    """The relay applied the presence op of ``version`` (and every earlier one) on
    ``channel``; ``PresenceBook.done`` says which ops are settled."""

    channel: str
    version: int


@dataclass(frozen=True)
class PresenceRefused:
    """The relay refused the presence op of ``version`` on ``channel``."""

    channel: str
    version: int
    code: str
    message: str
    temporary: bool


@dataclass(frozen=True)
class MembersReceived:
    """The reply to ``presence_get()``."""

    ref: int
    channel: str
    members: tuple[Member, ...]


@dataclass(frozen=True)
class BadFrame:
    reason: str


Event = (
    Connected
    | Authed
    | TokenExpiring
    | Redirected
    | Subscribed
    | Message
    | Acked
    | ErrorReceived
    | PositionExpired
    | HistoryReceived
    | PresenceSync
    | PresenceChange
    | PresenceDone
    | PresenceRefused
    | MembersReceived
    | BadFrame
)


# --- close codes -------------------------------------------------------------------------

# Standard codes (RFC 6455) that PROTOCOL.md does not list. A peer that found our frames
# malformed or unacceptable will find them so again; anything else is worth another try.
_STOP_CODES: Final = frozenset(
    {
        CloseCode.NORMAL,
        1002,  # protocol error
        1003,  # unsupported data
        1007,  # invalid payload (not UTF-8)
        1008,  # policy violation
        1010,  # mandatory extension
    }
)


def close_policy(code: int) -> ClosePolicy:
    """What to do after the connection closed with ``code`` (PROTOCOL.md, close codes).

    1000 is a deliberate end; 4500-4999 mean "do not reconnect until something
    changes". 1001 (going away), 1006 (connection lost), 1009 (frame too large:
    the connection is fine, that frame is not), 1011 and 4000-4499 mean
    reconnect, with backoff, and resume. Unknown codes reconnect: the backoff
    bounds the cost of being wrong, giving up does not.
    """
    if 4500 <= code <= 4999 or code in _STOP_CODES:
        return "stop"
    return "reconnect"


# --- wire format -------------------------------------------------------------------------


# The server frames this session acts on (the others: ignored, like a newer relay's ops).
_ServerFrame = (
    ConnectedFrame
    | RedirectFrame
    | SubscribedFrame
    | MessageFrame
    | AckFrame
    | ErrorFrame
    | AuthedFrame
    | TokenExpiringFrame
    | PresenceFrame
    | PresenceEventFrame
    | PresenceOkFrame
)
_HANDLED_OPS: Final = frozenset(
    {
        "connected",
        "redirect",
        "subscribed",
        "message",
        "ack",
        "error",
        "authed",
        "token_expiring",
        "presence",
        "presence_event",
        "presence.ok",
    }
)


def renewal_delay_s(exp: float, now: float) -> float:
    """Seconds from ``now`` until a token expiring at ``exp`` should be renewed: 30 s
    before it expires, or at three quarters of what is left for short-lived tokens."""
    left = exp - now
    if left >= 120.0:
        return left - 30.0
    if left < 0.001:  # now (three quarters of a subnormal float rounds back up to it)
        return 0.0
    return left * 0.75


_decoder: Final = msgspec.json.Decoder(_ServerFrame)
_publish_reply_decoder: Final = msgspec.json.Decoder(AckFrame | ErrorFrame)


# --- state -------------------------------------------------------------------------------


@dataclass
class _Channel:
    # The application wants this channel: it is subscribed, or will be on the next connection.
    wanted: bool = True
    # Processed up to here; None before the first `subscribed` or message.
    position: VectorClock | None = None
    # The relay cannot serve `position` any more: resuming from it would only fail again.
    expired: bool = False
    # Ref of the subscribe sent on the current connection; None when not subscribed on it.
    ref: int | None = None
    # Subscribed with the channel's presence (its member list, then its events).
    presence: bool = False


@dataclass(frozen=True)
class _Request:
    op: Literal["subscribe", "unsubscribe", "publish", "history", "presence", "presence.get"]
    channel: str
    publish_id: str | None = None
    # presence: the op's version, what it sent (None: a leave), and whether it enters
    # again on a new connection what was entered before
    version: int = 0
    entry: Entry | None = None
    again: bool = False


class ClientSession:
    def __init__(
        self,
        *,
        new_id: Callable[[], str] = new_publish_id,
        id_memory: int = DEFAULT_ID_MEMORY,
    ) -> None:
        """``new_id`` makes each publish's id (tests pass a predictable one)."""
        if id_memory < 1:
            raise ValueError("id_memory must be >= 1")
        self._new_id = new_id
        self._id_memory = id_memory
        self._next_ref = 1
        self._channels: dict[str, _Channel] = {}
        # id -> the publish, in send order (kept until acked; sent again after a failure)
        self._pending: dict[str, _Pending] = {}
        # channel -> pointwise maximum of the positions of our acked publishes there: with
        # what we have read, the causal context every publish carries.
        self._written: dict[str, VectorClock] = {}
        self._requests: dict[int, _Request] = {}  # ref -> what we sent, on this connection
        # (channel, id, digest of the data), oldest first
        self._seen: dict[tuple[str, str, bytes], None] = {}
        self._presence = PresenceBook()  # what the application entered, to enter again
        # The relay's limit on a frame from us (from `connected`); None: not announced.
        self.max_frame_bytes: int | None = None

    close_policy = staticmethod(close_policy)

    # --- queries --------------------------------------------------------------------------

    @property
    def channels(self) -> list[str]:
        """Channels the application is subscribed to (or that will be resubscribed)."""
        return [name for name, state in self._channels.items() if state.wanted]

    def position(self, channel: str) -> VectorClock | None:
        """Where the application is in ``channel``: what to persist to resume after a restart."""
        state = self._channels.get(channel)
        return state.position if state is not None else None

    @property
    def pending(self) -> dict[str, str]:
        """Unacknowledged publishes: id -> channel, in the order they were made."""
        return {message_id: p.channel for message_id, p in self._pending.items()}

    @property
    def idle(self) -> bool:
        """Nothing in flight: a safe point to move to another region."""
        return not self._pending

    # --- commands -------------------------------------------------------------------------

    def subscribe(
        self, channel: str, position: Mapping[str, int] | None = None, *, presence: bool = False
    ) -> bytes:
        """Frame subscribing to ``channel``.

        Without ``position`` the session resumes from where it is in the channel if
        it has been there before (and that position has not expired), else live.
        With ``position`` (a persisted one, or ``earliest`` after ``PositionExpired``)
        it starts there; messages it has already delivered are still dropped.
        With ``presence`` the channel's member list follows (``PresenceSync``), then its
        changes (``PresenceChange``), and again on every new connection.
        """
        state = self._channels.get(channel)
        if state is not None and state.wanted and state.ref is not None:
            raise ValueError(f"already subscribed to {channel!r}")
        start = VectorClock.parse(dict(position)) if position is not None else None
        if state is None:
            state = self._channels[channel] = _Channel()
        state.wanted = True
        state.presence = presence
        if start is None:
            return self._subscribe_frame(channel, state, self._resume_from(state))
        # Keep what was already delivered covered, so that starting earlier repeats nothing.
        state.position = start if state.position is None else state.position.merge(start)
        state.expired = False
        return self._subscribe_frame(channel, state, start)

    def unsubscribe(self, channel: str) -> bytes:
        """Frame unsubscribing; the session forgets the channel and its position."""
        state = self._channels.get(channel)
        if state is None or not state.wanted:
            raise ValueError(f"not subscribed to {channel!r}")
        del self._channels[channel]
        ref = self._ref()
        self._requests[ref] = _Request("unsubscribe", channel)
        return msgspec.json.encode(Unsubscribe(channel=channel, ref=ref))

    def forget(self, channel: str) -> None:
        """Drop what is known about a channel that is not subscribed (e.g. after it expired)."""
        state = self._channels.get(channel)
        if state is not None and state.wanted:
            raise ValueError(f"{channel!r} is subscribed: unsubscribe instead")
        self._channels.pop(channel, None)

    def publish(self, channel: str, data_json: bytes) -> tuple[str, bytes]:
        """Assign an idempotency id, remember the publish until acked, return (id, frame).

        Raises ``FrameTooLarge`` when the frame would exceed the relay's announced
        limit: the relay would close the connection (1009) every time it is sent.
        """
        try:
            msgspec.json.decode(data_json)
        except msgspec.DecodeError as exc:
            raise ValueError(f"data is not valid JSON: {exc}") from None
        message_id = self._new_id()
        if not _ID_RE.fullmatch(message_id) or message_id in self._pending:
            raise ValueError(f"new_id made {message_id!r}: not a fresh, valid publish id")
        pending = _Pending(channel, bytes(data_json), self._context(channel))
        size = _publish_size(message_id, pending)
        if self.max_frame_bytes is not None and size > self.max_frame_bytes:
            raise FrameTooLarge(size, self.max_frame_bytes)
        self._pending[message_id] = pending
        return message_id, self._publish_frame(message_id)

    def _context(self, channel: str) -> dict[str, int] | None:
        """What this client has read and published on the channel: a region must not store
        the publish before all of it (after a failover, it may not have it yet)."""
        state = self._channels.get(channel)
        read = state.position if state is not None else None
        written = self._written.get(channel)
        if read is None and written is None:
            return None
        context = (read or VectorClock()).merge(written or {})
        return context.to_dict() or None

    def history(
        self, channel: str, *, limit: int, before: Mapping[str, int] | None = None
    ) -> tuple[int, bytes]:
        """(ref, frame) asking for the newest ``limit`` stored messages of ``channel``
        (before ``before``, a message's position, to page back). The reply comes as a
        ``HistoryReceived`` with this ref, or an ``ErrorReceived``; it is not resent on
        a new connection (the caller asks again)."""
        if before is not None:
            VectorClock.parse(dict(before))  # ClockError (a ValueError) for a bad position
        ref = self._ref()
        frame = history_request(channel, ref, limit, before)
        self._requests[ref] = _Request("history", channel)
        return ref, frame

    def drop_oversized(self) -> list[str]:
        """Forget pending publishes too large for the relay now connected (a relay with
        a smaller limit than the one they were made on); returns their ids."""
        if self.max_frame_bytes is None:
            return []
        limit = self.max_frame_bytes
        dropped = [
            message_id
            for message_id, pending in self._pending.items()
            if _publish_size(message_id, pending) > limit
        ]
        for message_id in dropped:
            del self._pending[message_id]
        return dropped

    def on_reconnect(self) -> list[bytes]:
        """Frames for a new connection, in any region: resubscribe, enter the presence
        sets the application is in again, then publish again.

        Subscriptions go first so that the replies to the republished messages do
        not race with the replay; pending publishes keep their order and ids.
        """
        # Replies to requests of the old connection will never come.
        self._requests.clear()
        frames: list[bytes] = []
        for channel, state in self._channels.items():
            state.ref = None
            if state.wanted:
                frames.append(self._subscribe_frame(channel, state, self._resume_from(state)))
        # The relay forgot the old connection's members: be in the channels again.
        for channel, version, entry in self._presence.reconnected():
            frames.append(self._presence_enter_frame(channel, version, entry, again=True))
        frames.extend(self._publish_frame(message_id) for message_id in self._pending)
        return frames

    def on_stream(self, max_channels: int) -> list[StreamPlan]:
        """Instead of ``on_reconnect()`` on SSE: the streams to open, each naming at most
        ``max_channels`` channels with the positions to resume them from (its
        ``Last-Event-ID``). A relay subscribes a stream's channels with refs 0, 1, ...
        in the order named; ``StreamPlan.first_ref`` turns those into this session's.
        Pending publishes go over HTTP (``http_publish``), one at a time per channel."""
        if max_channels < 1:
            raise ValueError("max_channels must be >= 1")
        self._requests.clear()
        wanted: list[tuple[str, _Channel]] = []
        for channel, state in self._channels.items():
            state.ref = None
            if state.wanted:
                wanted.append((channel, state))
        plans: list[StreamPlan] = []
        for start in range(0, len(wanted), max_channels):
            chunk = wanted[start : start + max_channels]
            positions: dict[str, VectorClock] = {}
            first_ref = self._next_ref
            for channel, state in chunk:
                state.ref = self._ref()  # contiguous: first_ref + index
                self._requests[state.ref] = _Request("subscribe", channel)
                resume = self._resume_from(state)
                if resume is not None:
                    positions[channel] = resume
            presence = any(state.presence for _, state in chunk)
            plans.append(StreamPlan(tuple(c for c, _ in chunk), positions, first_ref, presence))
        return plans

    def http_publish(self, message_id: str) -> tuple[str, bytes]:
        """(channel, body) publishing the pending ``message_id`` over the HTTP API: the
        same id and data as its frame, its causal context taken again now."""
        pending = self._with_context(message_id, self._pending[message_id])
        body = PublishBody(data=msgspec.Raw(pending.data), id=message_id, after=pending.after)
        return pending.channel, msgspec.json.encode(body)

    def publish_replied(self, message_id: str, reply: bytes) -> list[Event]:
        """The HTTP API's answer to ``http_publish(message_id)`` (an ``ack`` or ``error``
        frame): an ``Acked``, or an ``ErrorReceived`` as the WebSocket reply would give
        (a temporary one keeps the publish pending)."""
        # The frame publish() made is never answered on SSE: forget its request.
        for ref in [r for r, q in self._requests.items() if q.publish_id == message_id]:
            del self._requests[ref]
        try:
            frame = _publish_reply_decoder.decode(reply)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            return [BadFrame(f"publish reply: {exc}")]
        try:
            if isinstance(frame, AckFrame):
                return self._ack(frame)
        except ClockError as exc:
            return [BadFrame(f"ack: {exc}")]
        channel = self._pending[message_id].channel if message_id in self._pending else None
        if not frame.temporary:
            self._pending.pop(message_id, None)  # resending it would be refused again
        retry_ms = frame.retry_after_ms
        return [
            ErrorReceived(
                frame.code,
                frame.message,
                None,
                frame.temporary,
                channel,
                message_id,
                None if isinstance(retry_ms, msgspec.UnsetType) else min(max(0, retry_ms), 60_000),
            )
        ]

    def auth(self, token: str) -> bytes:
        """An ``auth`` frame presenting ``token`` (renewal on a live connection)."""
        return msgspec.json.encode(Auth(token=token, ref=self._ref()))

    def republish_pending(self) -> list[bytes]:
        """Frames publishing every pending message again on the current connection
        (after a temporary error such as ``unavailable``); the ids make it safe."""
        return [self._publish_frame(message_id) for message_id in self._pending]

    # --- presence -------------------------------------------------------------------------

    def presence_enter(
        self, channel: str, data_json: bytes | None = None, client_id: str | None = None
    ) -> tuple[int, bytes]:
        """(version, frame) entering ``channel``'s presence set with ``data_json`` (JSON;
        None: no data) as ``client_id`` (None: the relay's choice; in token mode it is the
        token's ``sub``). Entered again on every new connection until ``presence_leave``;
        ``presence_done(channel) >= version`` once the relay has it."""
        _check_json(data_json)
        version, entry = self._presence.enter(channel, client_id, data_json)
        return version, self._presence_enter_frame(channel, version, entry)

    def presence_update(self, channel: str, data_json: bytes | None) -> tuple[int, bytes]:
        """(version, frame) changing our member's data; ``ValueError`` if not entered.
        The frame is a ``presence.enter`` with the same client id (entering again is an
        update to the relay): it means the same whether or not the enter before it was
        accepted, where a ``presence.update`` after a refused enter would enter under
        the connection's id."""
        _check_json(data_json)
        version, entry = self._presence.update(channel, data_json)
        return version, self._presence_enter_frame(channel, version, entry)

    def presence_leave(self, channel: str) -> tuple[int, bytes] | None:
        """(version, frame) leaving ``channel``'s presence set; None if not entered."""
        version = self._presence.leave(channel)
        if version is None:
            return None
        ref = self._ref()
        self._requests[ref] = _Request("presence", channel, version=version)
        return version, msgspec.json.encode(PresenceLeave(channel=channel, ref=ref))

    def presence_get(self, channel: str) -> tuple[int, bytes]:
        """(ref, frame) asking for the channel's members: a ``MembersReceived`` with this
        ref, or an ``ErrorReceived``; not resent on a new connection (ask again)."""
        ref = self._ref()
        self._requests[ref] = _Request("presence.get", channel)
        return ref, msgspec.json.encode(PresenceGet(channel=channel, ref=ref))

    def presence_done(self, channel: str) -> int:
        """Every presence op on ``channel`` up to this version is settled (applied by the
        relay, refused, or made moot by a new connection)."""
        return self._presence.done(channel)

    def presence_entry(self, channel: str) -> Entry | None:
        """What we are (or are becoming) in ``channel``'s presence set; None: not entered."""
        return self._presence.entered(channel)

    def presence_client_id(self, channel: str) -> str | None:
        """Our member's client id as the relay confirmed it; None: not entered (yet)."""
        return self._presence.client_id(channel)

    def presence_on_sse(self) -> list[tuple[str, int]]:
        """The connection is over SSE, which carries no presence op: (channel, version)
        after which the channel's ops failed. What was entered before is entered again on
        the next WebSocket connection."""
        for ref in [r for r, q in self._requests.items() if q.op == "presence"]:
            del self._requests[ref]
        return self._presence.on_sse()

    def _presence_enter_frame(
        self, channel: str, version: int, entry: Entry, *, again: bool = False
    ) -> bytes:
        ref = self._ref()
        self._requests[ref] = _Request(
            "presence", channel, version=version, entry=entry, again=again
        )
        data = msgspec.UNSET if entry.data is None else msgspec.Raw(entry.data)
        frame = PresenceEnter(channel=channel, data=data, client_id=entry.client_id, ref=ref)
        return msgspec.json.encode(frame)

    # --- server frames --------------------------------------------------------------------

    def receive(self, frame_text: str | bytes) -> list[Event]:
        try:
            frame = _decoder.decode(frame_text)
        except msgspec.ValidationError as exc:
            return self._undecodable(frame_text, exc)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            return [BadFrame(f"frame is not valid JSON: {exc}")]
        try:
            if isinstance(frame, MessageFrame):
                return self._message(frame)
            if isinstance(frame, AckFrame):
                return self._ack(frame)
            if isinstance(frame, SubscribedFrame):
                return self._subscribed(frame)
            if isinstance(frame, ErrorFrame):
                return self._error(frame)
            if isinstance(frame, RedirectFrame):
                return [Redirected(frame.url, frame.region, frame.reason)]
            if isinstance(frame, AuthedFrame):
                if isinstance(frame.ref, int):
                    self._requests.pop(frame.ref, None)
                return [Authed(frame.sub, frame.exp)]
            if isinstance(frame, TokenExpiringFrame):
                return [TokenExpiring(frame.exp)]
            if isinstance(frame, PresenceEventFrame | PresenceFrame | PresenceOkFrame):
                return self._presence_frame(frame)
            limit = frame.max_frame_bytes
            self.max_frame_bytes = limit if limit is not None and limit > 0 else None
            return [
                Connected(
                    frame.region,
                    frame.relay,
                    frame.connection_id,
                    frame.heartbeat_s,
                    self.max_frame_bytes,
                    None if isinstance(frame.sub, msgspec.UnsetType) else frame.sub,
                    None if isinstance(frame.exp, msgspec.UnsetType) else frame.exp,
                )
            ]
        except ClockError as exc:
            return [BadFrame(f"{type(frame).__struct_config__.tag}: {exc}")]

    def _message(self, frame: MessageFrame) -> list[Event]:
        state = self._channels.get(frame.channel)
        if state is None or not state.wanted:
            return []  # unsubscribed meanwhile: the relay has not processed it yet
        ts = _clock("ts", frame.ts)
        position = _clock("position", frame.position)
        if ts.get(frame.origin) < 1:
            return [BadFrame(f"message {frame.id!r}: ts has no entry for its origin")]
        if state.position is not None and state.position.covers(frame.origin, ts):
            return []  # delivered before this reconnect / failover
        state.position = position if state.position is None else state.position.merge(position)
        # With the data: a retry carries the same bytes, while another publisher's message
        # may carry the same id (relays in token mode scope ids to the publisher).
        key = (frame.channel, frame.id, hashlib.blake2b(frame.data, digest_size=16).digest())
        if key in self._seen:
            return []  # the same publish stored in another region too; the position still moves
        self._seen[key] = None
        if len(self._seen) > self._id_memory:
            del self._seen[next(iter(self._seen))]
        return [Message(frame.channel, frame.id, bytes(frame.data), frame.origin, ts, position)]

    def _ack(self, frame: AckFrame) -> list[Event]:
        if isinstance(frame.ref, int):
            self._requests.pop(frame.ref, None)
        # The ack's position is where the message was stored, not where this client has read
        # to: the push of our own message may still be on its way, so it must not move ours.
        position = _clock("position", frame.position)
        if self._pending.pop(frame.id, None) is None:
            return []  # a second ack after a republish: the first one was reported
        written = self._written.get(frame.channel)
        self._written[frame.channel] = position if written is None else written.merge(position)
        return [Acked(frame.id, frame.channel, position)]

    def _subscribed(self, frame: SubscribedFrame) -> list[Event]:
        if isinstance(frame.ref, int):
            self._requests.pop(frame.ref, None)
        state = self._channels.get(frame.channel)
        if (
            state is None
            or not state.wanted
            or (_ref_of(frame) is not None and frame.ref != state.ref)
        ):
            return []  # answers a subscribe the application has since withdrawn
        position = _clock("position", frame.position)
        # Live: reading starts at the channel's current position, so that is where we are.
        # Recovered: the reply carries the channel's head, and the replay that follows is
        # what gets us there; adopting it now would drop the whole replay as duplicates.
        if not frame.recovered:
            state.position = position if state.position is None else state.position.merge(position)
            state.expired = False
        return [Subscribed(frame.channel, position, frame.recovered)]

    def _error(self, frame: ErrorFrame) -> list[Event]:
        request = self._requests.pop(frame.ref, None) if isinstance(frame.ref, int) else None
        channel = None if isinstance(frame.channel, msgspec.UnsetType) else frame.channel
        if request is None and frame.code == ErrorCode.FORBIDDEN and channel is not None:
            # A renewed token no longer allows a subscription: the relay ended it.
            state = self._channels.get(channel)
            if state is not None:
                state.wanted = False
                state.ref = None
            return [ErrorReceived(frame.code, frame.message, None, False, channel)]
        if request is None:
            return [ErrorReceived(frame.code, frame.message, _ref_of(frame), frame.temporary)]
        if request.op == "presence":
            self._presence.refused(
                request.channel, request.version, temporary=frame.temporary, again=request.again
            )
            return [
                PresenceRefused(
                    request.channel, request.version, frame.code, frame.message, frame.temporary
                )
            ]
        if request.op == "subscribe":
            state = self._channels.get(request.channel)
            if state is None or not state.wanted or state.ref != frame.ref:
                return []  # answers a subscribe the application has since withdrawn
            if frame.code == ErrorCode.POSITION_EXPIRED:
                raw = frame.earliest
                earliest = _clock("earliest", {} if isinstance(raw, msgspec.UnsetType) else raw)
                # The relay did not subscribe us. Which way to go on (accept the gap from
                # `earliest`, or live only) is the application's call; until then there is
                # nothing to restore on a reconnect.
                state.wanted = False
                state.expired = True
                state.ref = None
                return [PositionExpired(request.channel, earliest)]
            if frame.code != ErrorCode.ALREADY_SUBSCRIBED:
                state.ref = None
                # A temporary failure is retried on the next connection (or by subscribing
                # again now); a permanent one would fail the same way every time.
                state.wanted = frame.temporary
        elif request.op == "publish" and not frame.temporary:
            assert request.publish_id is not None
            self._pending.pop(request.publish_id, None)  # resending it would be refused again
        retry_ms = frame.retry_after_ms
        return [
            ErrorReceived(
                frame.code,
                frame.message,
                _ref_of(frame),
                frame.temporary,
                request.channel,
                request.publish_id,
                None if isinstance(retry_ms, msgspec.UnsetType) else min(max(0, retry_ms), 60_000),
            )
        ]

    def _presence_frame(
        self, frame: PresenceEventFrame | PresenceFrame | PresenceOkFrame
    ) -> list[Event]:
        ref = None if isinstance(frame, PresenceEventFrame) else frame.ref
        if isinstance(ref, int):  # the answer to a request of ours
            request = self._requests.pop(ref, None)
            if request is None:
                return []  # of an earlier connection
            if isinstance(frame, PresenceFrame) and request.op == "presence.get":
                return [MembersReceived(ref, frame.channel, members_of(frame))]
            if isinstance(frame, PresenceOkFrame) and request.op == "presence":
                self._presence.accepted(
                    request.channel, request.version, request.entry, frame.client_id
                )
                return [PresenceDone(request.channel, request.version)]
            return [BadFrame(f"{_op(frame)} does not answer the {request.op} of ref {ref}")]
        if isinstance(frame, PresenceOkFrame):
            return []  # answers nothing of ours
        state = self._channels.get(frame.channel)
        if state is None or not state.wanted or not state.presence:
            return []  # not watched (any more), or for another channel of an SSE stream
        if isinstance(frame, PresenceFrame):
            return [PresenceSync(frame.channel, members_of(frame))]
        action = action_of(frame.action)
        if action is None:
            return []  # a newer relay's
        return [PresenceChange(frame.channel, action, member_of(frame.member))]

    def _undecodable(self, raw: str | bytes, exc: msgspec.ValidationError) -> list[Event]:
        # A frame that is not one of ours may just be from a newer relay: only a known op
        # with the wrong shape is a broken frame.
        try:
            generic = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as bad:
            return [BadFrame(f"frame is not valid JSON: {bad}")]
        if not isinstance(generic, dict) or not isinstance(generic.get("op"), str):
            return [BadFrame('a frame is a JSON object with an "op" field')]
        if generic["op"] == "history":  # not in the union above: see relay/client/history.py
            return self._history(raw)
        if generic["op"] in _HANDLED_OPS:
            return [BadFrame(f"{generic['op']}: {exc}")]
        return []

    def _history(self, raw: str | bytes) -> list[Event]:
        try:
            frame = history_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            return [BadFrame(f"history: {exc}")]
        request = self._requests.pop(frame.ref, None) if isinstance(frame.ref, int) else None
        if request is None or request.op != "history" or not isinstance(frame.ref, int):
            return []  # not an answer to a request of this connection
        try:
            messages = messages_of(frame)
        except ClockError as exc:
            return [BadFrame(f"history: {exc}")]
        return [HistoryReceived(frame.ref, frame.channel, messages, frame.more)]

    # --- helpers --------------------------------------------------------------------------

    def _ref(self) -> int:
        ref = self._next_ref
        self._next_ref += 1
        return ref

    @staticmethod
    def _resume_from(state: _Channel) -> VectorClock | None:
        return None if state.expired else state.position

    def _subscribe_frame(
        self, channel: str, state: _Channel, position: VectorClock | None
    ) -> bytes:
        ref = self._ref()
        state.ref = ref
        self._requests[ref] = _Request("subscribe", channel)
        body = position.to_dict() if position is not None else None
        return msgspec.json.encode(
            Subscribe(channel=channel, position=body, ref=ref, presence=state.presence)
        )

    def _publish_frame(self, message_id: str) -> bytes:
        """The frame as sent now: its causal context is taken again at every (re)send, so a
        publish sent again after a failover covers what this client learnt meanwhile: the
        acks of its own earlier publishes above all (pipelined, they were not acked when
        this one was first sent; another region must store this one after them)."""
        pending = self._with_context(message_id, self._pending[message_id])
        ref = self._ref()
        self._requests[ref] = _Request("publish", pending.channel, message_id)
        return msgspec.json.encode(pending.frame(message_id, ref))

    def _with_context(self, message_id: str, pending: _Pending) -> _Pending:
        """``pending`` with the channel's causal context as it is now."""
        now = self._context(pending.channel)
        if now is None:
            return pending
        grown = _Pending(
            pending.channel, pending.data, VectorClock(pending.after or {}).merge(now).to_dict()
        )
        limit = self.max_frame_bytes
        # A frame within a few bytes of the relay's limit keeps the context it was
        # checked with: it must still be accepted.
        if limit is None or _publish_size(message_id, grown) <= limit:
            return grown
        return pending


@dataclass(frozen=True)
class StreamPlan:
    """One SSE stream to open: its channels, in order, and where to resume them."""

    channels: tuple[str, ...]
    positions: dict[str, VectorClock]
    """Channels with a position to resume from (the others start live)."""
    first_ref: int
    """This session's ref for the relay's ref 0 on this stream (then +1 per channel)."""
    presence: bool = False
    """A channel of the stream is subscribed with presence (``presence=1``: the relay
    then sends every channel's; the session drops the others')."""


@dataclass(frozen=True)
class _Pending:
    channel: str
    data: bytes
    # The causal context when it was published (the same on every resend).
    after: dict[str, int] | None

    def frame(self, message_id: str, ref: int) -> Publish:
        return Publish(
            channel=self.channel,
            data=msgspec.Raw(self.data),
            id=message_id,
            ref=ref,
            after=self.after,
        )


def _publish_size(message_id: str, pending: _Pending) -> int:
    """Bytes of the publish frame, with the longest ref it can get (refs only grow)."""
    return len(msgspec.json.encode(pending.frame(message_id, _LONGEST_REF)))


_LONGEST_REF: Final = 2**63


def _op(frame: msgspec.Struct) -> str:
    return str(type(frame).__struct_config__.tag)


def _check_json(data_json: bytes | None) -> None:
    if data_json is None:
        return
    try:
        msgspec.json.decode(data_json)
    except msgspec.DecodeError as exc:
        raise ValueError(f"data is not valid JSON: {exc}") from None


def _ref_of(frame: SubscribedFrame | ErrorFrame) -> Ref:
    """The ref a reply echoes; None when it has none."""
    return None if isinstance(frame.ref, msgspec.UnsetType) else frame.ref


def messages_of(frame: HistoryFrame) -> tuple[Message, ...]:
    """A history page's messages (over WebSocket or HTTP); ``ClockError`` for a bad one."""
    return tuple(
        Message(
            m.channel,
            m.id,
            bytes(m.data),
            m.origin,
            _clock("ts", m.ts),
            _clock("position", m.position),
        )
        for m in frame.messages
    )


def _clock(field: str, raw: dict[str, int]) -> VectorClock:
    try:
        return VectorClock.parse(raw)
    except ClockError as exc:
        raise ClockError(f"{field}: {exc}") from None
