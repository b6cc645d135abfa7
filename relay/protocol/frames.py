"""Protocol v1 frames: JSON text frames over WebSocket (see relay/PROTOCOL.md).

Every frame of both directions is defined here, once, as a msgspec Struct: the
relay decodes client frames and encodes server frames with them, and the
Python SDK (``relay.client.session``) encodes client frames and decodes server
frames with the very same Structs. Optional fields are left out of the JSON
when absent (client frames: ``omit_defaults``; server frames: ``UNSET``).

Decoding is typed (msgspec): one pass validates a well-formed frame and keeps a
publish's ``data`` as the raw JSON bytes the client sent, so the relay stores
and forwards them without re-encoding. Only a frame that fails that pass is
decoded a second time, generically, to say precisely what is wrong and to echo
its ``ref``. ``decode_client_frame`` raises nothing but ``ProtocolError``.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec
from msgspec import UNSET, UnsetType

# The stored record is the region log's format, shared with federation.
from federation.logformat import StoredMessage
from federation.vclock import ClockError, VectorClock
from relay.core.channels import Channel, InvalidChannel, validate_channel
from relay.core.presence import Member, PresenceEvent
from relay.protocol.errors import TEMPORARY_ERRORS, ErrorCode, ProtocolError

Ref = str | int | None

_MESSAGE_ID_RE: Final = re.compile(r"[\x21-\x7e]{1,128}")
MAX_REF_LENGTH: Final = 128
DEFAULT_HISTORY_LIMIT: Final = 100
MAX_HISTORY_LIMIT: Final = 1000


# --- client -> server -------------------------------------------------------------------


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="op", omit_defaults=True):
    channel: str
    position: dict[str, int] | None = None
    ref: Ref = None
    # Also the channel's presence: its member list now, then ``presence_event`` frames.
    presence: bool = False


class Unsubscribe(msgspec.Struct, tag="unsubscribe", tag_field="op", omit_defaults=True):
    channel: str
    ref: Ref = None


class Publish(msgspec.Struct, tag="publish", tag_field="op", omit_defaults=True):
    channel: str
    data: msgspec.Raw
    id: str | None = None
    ref: Ref = None
    # The publisher's causal context on the channel: what it had seen and published
    # there (a position). The message is stored only after everything it covers.
    after: dict[str, int] | None = None


class History(msgspec.Struct, tag="history", tag_field="op", omit_defaults=True):
    channel: str
    limit: int = DEFAULT_HISTORY_LIMIT
    before: dict[str, int] | None = None
    ref: Ref = None


class Ping(msgspec.Struct, tag="ping", tag_field="op", omit_defaults=True):
    ref: Ref = None


class Auth(msgspec.Struct, tag="auth", tag_field="op", omit_defaults=True):
    """Present a token (first, or again to renew it on a live connection)."""

    token: str
    ref: Ref = None


class PresenceEnter(msgspec.Struct, tag="presence.enter", tag_field="op", omit_defaults=True):
    """Enter the channel's presence set (again: an update). ``client_id`` names the member
    on an anonymous relay (default: the connection id); with a token it is the ``sub``."""

    channel: str
    data: msgspec.Raw | UnsetType = UNSET
    client_id: str | None = None
    ref: Ref = None


class PresenceUpdate(msgspec.Struct, tag="presence.update", tag_field="op", omit_defaults=True):
    channel: str
    data: msgspec.Raw | UnsetType = UNSET
    ref: Ref = None


class PresenceLeave(msgspec.Struct, tag="presence.leave", tag_field="op", omit_defaults=True):
    channel: str
    ref: Ref = None


class PresenceGet(msgspec.Struct, tag="presence.get", tag_field="op", omit_defaults=True):
    channel: str
    ref: Ref = None


PresenceOp = PresenceEnter | PresenceUpdate | PresenceLeave | PresenceGet
ClientFrame = (
    Subscribe
    | Unsubscribe
    | Publish
    | History
    | Ping
    | Auth
    | PresenceEnter
    | PresenceUpdate
    | PresenceLeave
    | PresenceGet
)
KNOWN_OPS: Final = frozenset(
    {
        "subscribe",
        "unsubscribe",
        "publish",
        "history",
        "ping",
        "auth",
        "presence.enter",
        "presence.update",
        "presence.leave",
        "presence.get",
    }
)

_decoder: Final = msgspec.json.Decoder(ClientFrame)
# A causal context names regions; no deployment has more than this many.
MAX_CONTEXT_REGIONS: Final = 64


def decode_client_frame(raw: str | bytes) -> ClientFrame:
    """Parse and validate one client frame, or raise ``ProtocolError``."""
    try:
        frame: ClientFrame = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _explain(raw, exc) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise _bad_json(exc) from None
    if isinstance(frame.ref, str) and len(frame.ref) > MAX_REF_LENGTH:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"ref longer than {MAX_REF_LENGTH} characters")
    if isinstance(frame, Ping | Auth):
        return frame
    try:
        validate_channel(frame.channel)
    except InvalidChannel as exc:
        raise ProtocolError(ErrorCode.INVALID_CHANNEL, str(exc), frame.ref) from None
    if isinstance(frame, Publish):
        if frame.id is not None and not _MESSAGE_ID_RE.fullmatch(frame.id):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                "id must be 1-128 printable ASCII characters without spaces",
                frame.ref,
            )
        if frame.after is not None and len(frame.after) > MAX_CONTEXT_REGIONS:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"after: at most {MAX_CONTEXT_REGIONS} regions",
                frame.ref,
            )
        parse_position(frame.after, frame.ref, "after")
    elif isinstance(frame, History):
        if not 1 <= frame.limit <= MAX_HISTORY_LIMIT:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"limit must be 1..{MAX_HISTORY_LIMIT}", frame.ref
            )
        parse_position(frame.before, frame.ref, "before")
    elif isinstance(frame, Subscribe):
        parse_position(frame.position, frame.ref, "position")
    elif (
        isinstance(frame, PresenceEnter)
        and frame.client_id is not None
        and not _MESSAGE_ID_RE.fullmatch(frame.client_id)
    ):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            "client_id must be 1-128 printable ASCII characters without spaces",
            frame.ref,
        )
    return frame


def parse_position(raw: dict[str, int] | None, ref: Ref, name: str) -> VectorClock | None:
    if raw is None:
        return None
    try:
        return VectorClock.parse(raw)
    except ClockError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name}: {exc}", ref) from None


def _bad_json(exc: BaseException) -> ProtocolError:
    if isinstance(exc, RecursionError):
        return ProtocolError(ErrorCode.BAD_JSON, "frame is nested too deeply")
    return ProtocolError(ErrorCode.BAD_JSON, f"frame is not valid JSON: {exc}")


def _explain(raw: str | bytes, exc: msgspec.ValidationError) -> ProtocolError:
    # Typed decoding may stop at a wrong type before it reaches a syntax error further on,
    # so the frame can still turn out not to be JSON at all.
    try:
        obj: Any = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as bad:
        return _bad_json(bad)
    if not isinstance(obj, dict):
        return ProtocolError(ErrorCode.BAD_REQUEST, 'a frame is a JSON object with an "op" field')
    ref = obj.get("ref")
    if (
        not isinstance(ref, str | int)
        or isinstance(ref, bool)
        or (isinstance(ref, str) and len(ref) > MAX_REF_LENGTH)
    ):
        ref = None
    op = obj.get("op")
    if not isinstance(op, str):
        return ProtocolError(ErrorCode.BAD_REQUEST, 'missing or non-string "op" field', ref)
    if op not in KNOWN_OPS:
        known = ", ".join(sorted(KNOWN_OPS))
        return ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op[:40]!r} (known: {known})", ref)
    return ProtocolError(ErrorCode.BAD_REQUEST, f"{op}: {exc}", ref)


# --- server -> client -------------------------------------------------------------------
#
# A reply echoes the request's ``ref`` only when it had one: ``ref`` is UNSET (never sent)
# otherwise. Fields a relay always sends keep a default only so that the SDK reads a frame
# without them as older relays meant it. ``ref`` comes first, right after ``op``.


class MessageFrame(msgspec.Struct, tag="message", tag_field="op"):
    channel: str
    id: str
    data: msgspec.Raw
    origin: str
    ts: dict[str, int]
    position: dict[str, int]


class MemberFrame(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One member of a channel's presence set: a client on a connection."""

    client_id: str
    connection: str
    region: str
    relay: str
    status: str  # "present", or "unreachable": its relay or region is not heard from
    data: msgspec.Raw | UnsetType = UNSET  # left out: entered without data


class PresenceFrame(msgspec.Struct, tag="presence", tag_field="op", kw_only=True):
    """The channel's members (the answer to ``presence.get``, and the first presence
    frame of a subscription with ``presence``)."""

    ref: Ref | UnsetType = UNSET
    channel: str
    members: list[MemberFrame]


class PresenceOkFrame(msgspec.Struct, tag="presence.ok", tag_field="op", kw_only=True):
    """``presence.enter``/``update``/``leave`` done (on this relay; the others hear of it
    within a moment)."""

    ref: Ref | UnsetType = UNSET
    channel: str
    action: str  # enter, update or leave
    client_id: str


class PresenceEventFrame(msgspec.Struct, tag="presence_event", tag_field="op", kw_only=True):
    channel: str
    action: str  # enter, update or leave
    member: MemberFrame


class ConnectedFrame(msgspec.Struct, tag="connected", tag_field="op", kw_only=True):
    region: str
    relay: str
    connection_id: str
    heartbeat_s: float | None = None
    max_frame_bytes: int | None = None
    # Only when the client presented a token with ?token=: whose it is and when it expires.
    sub: str | UnsetType = UNSET
    exp: float | UnsetType = UNSET


class RedirectFrame(msgspec.Struct, tag="redirect", tag_field="op", kw_only=True):
    url: str
    region: str | None = None
    reason: str = ""


class SubscribedFrame(msgspec.Struct, tag="subscribed", tag_field="op", kw_only=True):
    ref: Ref | UnsetType = UNSET
    channel: str
    position: dict[str, int]
    recovered: bool = False


class UnsubscribedFrame(msgspec.Struct, tag="unsubscribed", tag_field="op", kw_only=True):
    ref: Ref | UnsetType = UNSET
    channel: str


class AckFrame(msgspec.Struct, tag="ack", tag_field="op", kw_only=True):
    ref: Ref | UnsetType = UNSET
    id: str
    channel: str
    position: dict[str, int]


class HistoryFrame(msgspec.Struct, tag="history", tag_field="op", kw_only=True):
    ref: Ref | UnsetType = UNSET
    channel: str
    more: bool = False
    messages: list[MessageFrame]  # last: the relay splices them in already encoded


class PongFrame(msgspec.Struct, tag="pong", tag_field="op", kw_only=True):
    ref: Ref | UnsetType = UNSET


class AuthedFrame(msgspec.Struct, tag="authed", tag_field="op", kw_only=True):
    ref: Ref | UnsetType = UNSET
    sub: str
    exp: float  # seconds since the epoch: renew before, or the relay closes with 4003


class TokenExpiringFrame(msgspec.Struct, tag="token_expiring", tag_field="op", kw_only=True):
    """The connection's token expires at ``exp`` (seconds since the epoch): renew it with
    an ``auth`` frame before then, or the relay closes with 4003."""

    exp: float


class ErrorFrame(msgspec.Struct, tag="error", tag_field="op", kw_only=True):
    ref: Ref | UnsetType = UNSET
    code: str  # an ErrorCode; a str so that a newer relay's codes still decode
    message: str = ""
    temporary: bool = False
    # What the failed request was about, for the errors that say (PROTOCOL.md).
    channel: str | UnsetType = UNSET
    # A publish's id (the relay's, if the client sent none; null for a fenced one without).
    id: str | UnsetType | None = UNSET
    behind: str | UnsetType = UNSET  # the failed publish a fenced one waits behind
    earliest: dict[str, int] | UnsetType = UNSET  # position_expired: oldest servable
    retry_after_ms: int | UnsetType = UNSET  # rate_limited: wait this long, then send again


ServerFrame = (
    ConnectedFrame
    | RedirectFrame
    | SubscribedFrame
    | UnsubscribedFrame
    | MessageFrame
    | AckFrame
    | HistoryFrame
    | PongFrame
    | AuthedFrame
    | TokenExpiringFrame
    | ErrorFrame
    | PresenceFrame
    | PresenceOkFrame
    | PresenceEventFrame
)

_encode: Final = msgspec.json.Encoder().encode


def _ref(ref: Ref) -> Ref | UnsetType:
    return UNSET if ref is None else ref


def message_frame(channel: Channel, msg: StoredMessage) -> bytes:
    """Encoded once per message per relay; the same bytes go to every subscriber."""
    return _encode(MessageFrame(channel, msg.id, msg.data, msg.origin, msg.ts, msg.pos))


def connected_frame(
    region: str,
    relay: str,
    connection_id: str,
    heartbeat_s: float,
    max_frame_bytes: int,
    *,
    sub: str | UnsetType = UNSET,
    exp: float | UnsetType = UNSET,
) -> bytes:
    return _encode(
        ConnectedFrame(
            region=region,
            relay=relay,
            connection_id=connection_id,
            heartbeat_s=heartbeat_s,
            max_frame_bytes=max_frame_bytes,
            sub=sub,
            exp=exp,
        )
    )


def authed_frame(ref: Ref, sub: str, exp: float) -> bytes:
    return _encode(AuthedFrame(ref=_ref(ref), sub=sub, exp=exp))


def token_expiring_frame(exp: float) -> bytes:
    return _encode(TokenExpiringFrame(exp=exp))


def redirect_frame(url: str, region: str, reason: str) -> bytes:
    """Go to ``url`` (an edge of ``region``) instead; this relay is about to close."""
    return _encode(RedirectFrame(url=url, region=region, reason=reason))


def subscribed_frame(ref: Ref, channel: str, position: VectorClock, recovered: bool) -> bytes:
    return _encode(
        SubscribedFrame(
            ref=_ref(ref), channel=channel, position=position.to_dict(), recovered=recovered
        )
    )


def unsubscribed_frame(ref: Ref, channel: str) -> bytes:
    return _encode(UnsubscribedFrame(ref=_ref(ref), channel=channel))


def ack_frame(ref: Ref, message_id: str, channel: str, position: VectorClock) -> bytes:
    return _encode(
        AckFrame(ref=_ref(ref), id=message_id, channel=channel, position=position.to_dict())
    )


def history_frame(ref: Ref, channel: str, messages: list[bytes], more: bool) -> bytes:
    # The message frames are already encoded; splice them into the empty list rather than
    # decode and re-encode them.
    empty = _encode(HistoryFrame(ref=_ref(ref), channel=channel, more=more, messages=[]))
    return empty[:-2] + b",".join(messages) + b"]}"


def pong_frame(ref: Ref) -> bytes:
    return _encode(PongFrame(ref=_ref(ref)))


def error_frame(
    code: ErrorCode,
    message: str,
    ref: Ref = None,
    *,
    channel: str | UnsetType = UNSET,
    id: str | UnsetType | None = UNSET,
    behind: str | UnsetType = UNSET,
    earliest: dict[str, int] | UnsetType = UNSET,
    retry_after_ms: int | UnsetType = UNSET,
) -> bytes:
    return _encode(
        ErrorFrame(
            ref=_ref(ref),
            code=code.value,
            message=message,
            temporary=code in TEMPORARY_ERRORS,
            channel=channel,
            id=id,
            behind=behind,
            earliest=earliest,
            retry_after_ms=retry_after_ms,
        )
    )


def member_frame(member: Member) -> MemberFrame:
    return MemberFrame(
        client_id=member.key.client_id,
        connection=member.key.connection,
        region=member.region,
        relay=member.relay,
        status=member.status.value,
        data=UNSET if member.data is None else msgspec.Raw(member.data),
    )


def presence_frame(ref: Ref, channel: str, members: list[Member]) -> bytes:
    return _encode(
        PresenceFrame(ref=_ref(ref), channel=channel, members=[member_frame(m) for m in members])
    )


def presence_ok_frame(ref: Ref, channel: str, action: str, client_id: str) -> bytes:
    return _encode(
        PresenceOkFrame(ref=_ref(ref), channel=channel, action=action, client_id=client_id)
    )


def presence_event_frame(channel: str, event: PresenceEvent) -> bytes:
    return _encode(
        PresenceEventFrame(
            channel=channel, action=event.action.value, member=member_frame(event.member)
        )
    )
