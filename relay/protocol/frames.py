"""Protocol v1 frames: JSON text frames over WebSocket (see relay/PROTOCOL.md).

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

# The stored record is the region log's format, shared with federation (re-exported).
from federation.logformat import StoredMessage as StoredMessage
from federation.logformat import decode_stored as decode_stored
from federation.logformat import encode_stored as encode_stored
from federation.vclock import ClockError, VectorClock
from relay.core.channels import Channel, InvalidChannel, validate_channel
from relay.protocol.errors import TEMPORARY_ERRORS, ErrorCode, ProtocolError

Ref = str | int | None

_MESSAGE_ID_RE: Final = re.compile(r"[\x21-\x7e]{1,128}")
MAX_REF_LENGTH: Final = 128
DEFAULT_HISTORY_LIMIT: Final = 100
MAX_HISTORY_LIMIT: Final = 1000


# --- client -> server -------------------------------------------------------------------


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="op"):
    channel: str
    position: dict[str, int] | None = None
    ref: Ref = None


class Unsubscribe(msgspec.Struct, tag="unsubscribe", tag_field="op"):
    channel: str
    ref: Ref = None


class Publish(msgspec.Struct, tag="publish", tag_field="op"):
    channel: str
    data: msgspec.Raw
    id: str | None = None
    ref: Ref = None
    # The publisher's causal context on the channel: what it had seen and published
    # there (a position). The message is stored only after everything it covers.
    after: dict[str, int] | None = None


class History(msgspec.Struct, tag="history", tag_field="op"):
    channel: str
    limit: int = DEFAULT_HISTORY_LIMIT
    before: dict[str, int] | None = None
    ref: Ref = None


class Ping(msgspec.Struct, tag="ping", tag_field="op"):
    ref: Ref = None


ClientFrame = Subscribe | Unsubscribe | Publish | History | Ping
KNOWN_OPS: Final = frozenset({"subscribe", "unsubscribe", "publish", "history", "ping"})

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
    if isinstance(frame, Ping):
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


# --- stored in JetStream ----------------------------------------------------------------


# --- server -> client -------------------------------------------------------------------


class MessageFrame(msgspec.Struct, tag="message", tag_field="op"):
    channel: str
    id: str
    data: msgspec.Raw
    origin: str
    ts: dict[str, int]
    position: dict[str, int]


def message_frame(channel: Channel, msg: StoredMessage) -> bytes:
    """Encoded once per message per relay; the same bytes go to every subscriber."""
    return msgspec.json.encode(MessageFrame(channel, msg.id, msg.data, msg.origin, msg.ts, msg.pos))


def _frame(op: str, ref: Ref, **fields: object) -> bytes:
    body: dict[str, object] = {"op": op}
    if ref is not None:
        body["ref"] = ref
    body.update(fields)
    return msgspec.json.encode(body)


def connected_frame(
    region: str, relay: str, connection_id: str, heartbeat_s: float, max_frame_bytes: int
) -> bytes:
    return _frame(
        "connected",
        None,
        region=region,
        relay=relay,
        connection_id=connection_id,
        heartbeat_s=heartbeat_s,
        max_frame_bytes=max_frame_bytes,
    )


def redirect_frame(url: str, region: str, reason: str) -> bytes:
    """Go to ``url`` (an edge of ``region``) instead; this relay is about to close."""
    return _frame("redirect", None, url=url, region=region, reason=reason)


def subscribed_frame(ref: Ref, channel: str, position: VectorClock, recovered: bool) -> bytes:
    return _frame(
        "subscribed", ref, channel=channel, position=position.to_dict(), recovered=recovered
    )


def unsubscribed_frame(ref: Ref, channel: str) -> bytes:
    return _frame("unsubscribed", ref, channel=channel)


def ack_frame(ref: Ref, message_id: str, channel: str, position: VectorClock) -> bytes:
    return _frame("ack", ref, id=message_id, channel=channel, position=position.to_dict())


def history_frame(ref: Ref, channel: str, messages: list[bytes], more: bool) -> bytes:
    # The message frames are already encoded; splice them rather than decode and re-encode.
    head = _frame("history", ref, channel=channel, more=more)
    return head[:-1] + b',"messages":[' + b",".join(messages) + b"]}"


def pong_frame(ref: Ref) -> bytes:
    return _frame("pong", ref)


def error_frame(code: ErrorCode, message: str, ref: Ref = None, **details: object) -> bytes:
    return _frame(
        "error",
        ref,
        code=code.value,
        message=message,
        temporary=code in TEMPORARY_ERRORS,
        **details,
    )
