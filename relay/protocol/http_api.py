"""The HTTP API and SSE, as translations to and from protocol v1 frames. Pure.

An HTTP request is one client frame: ``POST /v1/channels/{channel}/messages`` is a
``publish``, ``GET`` of the same path a ``history``. The relay runs that frame through
the same session code as a WebSocket client's (authentication, capabilities, limits,
validation, error messages), and the reply frame becomes the response body, so the
two APIs cannot drift apart: the ``ack``, ``history`` and ``error`` bodies are the
frames themselves, with an HTTP status chosen from the error code.

SSE (``GET /v1/sse?channels=a,b``) sends each ``message`` frame as an event whose
``id`` is the stream's position in every channel, so a browser's automatic
reconnect (``Last-Event-ID``) resumes each channel exactly where it stopped.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

import msgspec

from federation.vclock import ClockError, VectorClock
from relay.core.channels import Channel, InvalidChannel, validate_channel
from relay.protocol.errors import ErrorCode, ProtocolError
from relay.protocol.frames import (
    DEFAULT_HISTORY_LIMIT,
    History,
    MessageFrame,
    PresenceGet,
    Publish,
    Subscribe,
)

API_PREFIX: Final = "/v1/channels/"
SSE_PATH: Final = "/v1/sse"
MAX_SSE_CHANNELS: Final = 32
MAX_EVENT_ID_BYTES: Final = 8192

# HTTP status per error code; anything unlisted is a 400.
STATUS: Final[dict[str, int]] = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.INVALID_CHANNEL: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.POSITION_EXPIRED: 410,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.LIMIT_EXCEEDED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class PublishBody(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/channels/{channel}/messages``: the message, as in a ``publish`` frame."""

    data: msgspec.Raw
    # Makes the request idempotent: the same id (per publisher) is stored once. The
    # ``Idempotency-Key`` header does the same.
    id: str | None = None
    after: dict[str, int] | None = None  # causal context: stored only after this position


@dataclass(frozen=True)
class ChannelRoute:
    kind: Literal["messages", "presence"]
    channel: str  # not validated yet: the session does that, with its usual error


def route(path: str) -> ChannelRoute | None:
    """``/v1/channels/{channel}/messages`` (or ``/presence``); the channel is
    percent-decoded after the split, so an encoded ``/`` stays in the name."""
    if not path.startswith(API_PREFIX):
        return None
    raw_channel, _, rest = path[len(API_PREFIX) :].partition("/")
    if rest not in ("messages", "presence") or not raw_channel:
        return None
    kind: Literal["messages", "presence"] = "messages" if rest == "messages" else "presence"
    return ChannelRoute(kind, unquote(raw_channel))


_encode: Final = msgspec.json.Encoder().encode
_body_decoder: Final = msgspec.json.Decoder(PublishBody)


def publish_request(channel: str, body: bytes, idempotency_key: str | None) -> bytes:
    """The ``publish`` frame a POST stands for; ``ProtocolError`` if its body is wrong."""
    try:
        parsed = _body_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"body: {exc}") from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"body is not valid JSON: {exc}") from None
    message_id = parsed.id
    if idempotency_key is not None:
        if message_id is not None and message_id != idempotency_key:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "the body's id and the Idempotency-Key header differ"
            )
        message_id = idempotency_key
    frame = Publish(channel=channel, data=parsed.data, id=message_id, after=parsed.after)
    return _encode(frame)


def history_request(channel: str, query: dict[str, list[str]]) -> bytes:
    """The ``history`` frame a GET stands for: ``limit`` and ``before`` (a position, as
    JSON, e.g. ``{"us-east":41}``: the page of messages before it)."""
    limit = DEFAULT_HISTORY_LIMIT
    raw_limit = _last(query, "limit")
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "limit must be an integer") from None
    before = _position_param(query, "before")
    return _encode(History(channel=channel, limit=limit, before=before))


def presence_request(channel: str) -> bytes:
    """The ``presence.get`` frame ``GET /v1/channels/{channel}/presence`` stands for."""
    return _encode(PresenceGet(channel=channel))


def _last(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _position_param(query: dict[str, list[str]], name: str) -> dict[str, int] | None:
    raw = _last(query, name)
    if raw is None:
        return None
    try:
        decoded = msgspec.json.decode(raw, type=dict[str, int])
        return VectorClock.parse(decoded).to_dict()
    except (msgspec.DecodeError, msgspec.ValidationError, ClockError) as exc:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f'{name} must be a position as JSON, like {{"us-east":41}}: {exc}',
        ) from None


class _ErrorCodeOnly(msgspec.Struct):
    code: str = ""
    retry_after_ms: int | None = None


_reply_decoder: Final = msgspec.json.Decoder(_ErrorCodeOnly)


def reply_status(frame: bytes, ok: int = 200) -> tuple[int, tuple[tuple[str, str], ...]]:
    """HTTP status (and headers) for a reply frame: ``ok`` unless it is an ``error``."""
    if not frame.startswith(b'{"op":"error"'):
        return ok, ()
    reply = _reply_decoder.decode(frame)
    status = STATUS.get(reply.code, 400)
    headers: tuple[tuple[str, str], ...] = ()
    if reply.retry_after_ms is not None:
        headers = (("Retry-After", str(max(1, -(-reply.retry_after_ms // 1000)))),)
    elif reply.code == ErrorCode.UNAUTHORIZED:
        headers = (("WWW-Authenticate", 'Bearer realm="relaynet"'),)
    return status, headers


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "Authorization must be 'Bearer <token>'")
    return token.strip()


# --- SSE ---------------------------------------------------------------------------------


class _EventId(msgspec.Struct, array_like=True):
    positions: dict[str, dict[str, int]]


_event_id_decoder: Final = msgspec.json.Decoder(_EventId)


def encode_event_id(positions: dict[str, VectorClock]) -> str:
    """An SSE event id: the stream's position in each of its channels (base64url JSON)."""
    raw = _encode(_EventId({c: p.to_dict() for c, p in positions.items()}))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_event_id(event_id: str) -> dict[Channel, VectorClock]:
    """Positions from a ``Last-Event-ID``; ``ProtocolError`` for anything else."""
    if len(event_id) > MAX_EVENT_ID_BYTES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "Last-Event-ID is too long")
    try:
        raw = base64.urlsafe_b64decode(event_id + "=" * (-len(event_id) % 4))
        decoded = _event_id_decoder.decode(raw)
        return {validate_channel(c): VectorClock.parse(p) for c, p in decoded.positions.items()}
    except (
        binascii.Error,
        ValueError,
        msgspec.DecodeError,
        msgspec.ValidationError,
        ClockError,
        InvalidChannel,
    ):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "Last-Event-ID is not an event id this API sent"
        ) from None


def sse_channels(query: dict[str, list[str]]) -> list[str]:
    """``channels=a,b`` and/or repeated ``channel=`` (taken whole: a channel name may
    hold a comma), in order, without repeats."""
    names: list[str] = []
    for value in query.get("channels", []):
        names += [n for n in value.split(",") if n]
    names += [n for n in query.get("channel", []) if n]
    unique = list(dict.fromkeys(names))
    if not unique:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "name the channels: ?channels=a,b")
    if len(unique) > MAX_SSE_CHANNELS:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"at most {MAX_SSE_CHANNELS} channels")
    return unique


def subscribe_request(
    channel: str, position: VectorClock | None, ref: int, *, presence: bool = False
) -> bytes:
    frame = Subscribe(
        channel=channel,
        position=None if position is None else position.to_dict(),
        ref=ref,
        presence=presence,
    )
    return _encode(frame)


def wants_presence(query: dict[str, list[str]]) -> bool:
    """``presence=1`` on an SSE stream: every channel's member list and presence events."""
    return _last(query, "presence") in ("1", "true")


def sse_event(event: str, data: bytes, event_id: str | None = None) -> bytes:
    """One event; ``data`` is compact JSON (no raw newline), so it is one data line."""
    head = b"" if event_id is None else b"id: " + event_id.encode("ascii") + b"\n"
    return head + b"event: " + event.encode("ascii") + b"\ndata: " + data + b"\n\n"


def sse_comment(text: str) -> bytes:
    """A comment line: keeps proxies from closing an idle stream; clients ignore it."""
    return b": " + text.encode("ascii", "replace") + b"\n\n"


_message_decoder: Final = msgspec.json.Decoder(MessageFrame)


def message_position(frame: bytes) -> tuple[str, VectorClock]:
    """The channel and position of an encoded ``message`` frame."""
    message = _message_decoder.decode(frame)
    return message.channel, VectorClock(message.position)
