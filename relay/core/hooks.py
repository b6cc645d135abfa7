"""Backend hooks: what a relay asks the application's backend, and what it accepts back. Pure.

Theory of operation
-------------------
A hook is an HTTP POST of one JSON object to the backend (``relay.adapters.hooks``
does the I/O); ``hook`` names which of the three it is:

* ``connect``: a client connects (or sends an ``auth`` frame) on a relay with
  ``[auth] mode = "hook"``. The request carries the credentials string the client
  gave (``?token=``, the ``auth`` frame's ``token``, a bearer token; may be null),
  the client's address and the request headers the hook forwards. The backend
  answers who the client is (``sub``), what it may do (``caps``, the shape of a
  JWT's ``caps`` claim) and until when (``exp``, optional), or rejects it.
* ``subscribe``: before a subscription is attached; accept or reject.
* ``publish``: before a message is stored; accept (optionally with ``data``, which
  replaces the message's data), or reject.

The backend answers HTTP 200 with ``{"result": "accept" | "reject", ...}``. The
answer is never trusted blindly: anything else (another status, bad JSON, a
connect accept without a ``sub``, capabilities that do not parse, an ``exp`` in the
past, replaced data over the namespace's size limit) is ``BadAnswer``, which the
adapter counts as a failure of the backend, exactly like a timeout: the client gets
``unavailable`` (temporary), never a crash and never an accept.

Verdicts are ``Accepted``, ``Rejected`` (shown to the client, as ``unauthorized``
for connect and ``forbidden`` otherwise) and ``Unavailable`` (the backend failed;
or its breaker is open).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from relay.core.capabilities import CapabilityError, Credentials, parse_capabilities

HookKind = Literal["connect", "subscribe", "publish"]

MAX_REASON_CHARS: Final = 200
MAX_SUB_CHARS: Final = 256
# A connect answer without ``exp``: the identity lasts as long as the connection. Kept a
# number (the protocol's frames carry one), ten years ahead.
NO_EXPIRY_S: Final = 10 * 365 * 86400.0
DEFAULT_REJECT_REASON: Final = "refused by the application"

_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]+")


# --- relay -> backend -------------------------------------------------------------------


class ConnectHookRequest(msgspec.Struct, tag="connect", tag_field="hook", kw_only=True):
    region: str
    relay: str
    connection_id: str
    transport: Literal["websocket", "sse", "http"]
    credentials: str | None  # as the client gave it; null: none (forwarded headers only)
    remote_addr: str | None
    headers: dict[str, str]  # the forwarded ones the client sent, names lower-cased


class SubscribeHookRequest(msgspec.Struct, tag="subscribe", tag_field="hook", kw_only=True):
    region: str
    relay: str
    connection_id: str
    sub: str | None  # the client's identity; null: anonymous
    channel: str


class PublishHookRequest(msgspec.Struct, tag="publish", tag_field="hook", kw_only=True):
    region: str
    relay: str
    connection_id: str
    sub: str | None
    channel: str
    id: str
    data: msgspec.Raw  # the JSON value as the client sent it


HookRequest = ConnectHookRequest | SubscribeHookRequest | PublishHookRequest

_encode: Final = msgspec.json.Encoder().encode


def encode_request(request: HookRequest) -> bytes:
    return _encode(request)


# --- backend -> relay -------------------------------------------------------------------


class HookAnswer(msgspec.Struct):
    """The body of a backend's 200 answer (fields a hook does not use are ignored)."""

    result: Literal["accept", "reject"]
    reason: str = ""
    sub: str | None = None  # connect
    caps: object = None  # connect: {pattern: [operations]}, checked by parse_capabilities
    exp: float | None = None  # connect: seconds since the epoch
    data: msgspec.Raw = msgspec.Raw(b"")  # publish: replaces the message's data


_answer: Final = msgspec.json.Decoder(HookAnswer)


class BadAnswer(ValueError):
    """The backend's answer is not one a relay accepts; counted as a failure."""


@dataclass(frozen=True)
class Accepted:
    credentials: Credentials | None = None  # connect: who the client is
    data: msgspec.Raw | None = None  # publish: the data to store instead of the client's


@dataclass(frozen=True)
class Rejected:
    reason: str  # shown to the client


@dataclass(frozen=True)
class Unavailable:
    reason: str  # shown to the client: why the backend could not decide


Verdict = Accepted | Rejected | Unavailable


def clean_reason(reason: str) -> str:
    """A rejection's reason as shown to clients: one line, bounded."""
    text = _CONTROL_RE.sub(" ", reason).strip()
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return text or DEFAULT_REJECT_REASON


def decode_answer(status: int, body: bytes) -> HookAnswer:
    if status != 200:
        raise BadAnswer(f"HTTP {status} (a hook answers 200 with a JSON object)")
    try:
        return _answer.decode(body)
    except msgspec.ValidationError as exc:
        raise BadAnswer(f"answer: {exc}") from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise BadAnswer("answer is not JSON") from None


def connect_verdict(answer: HookAnswer, now: float) -> Accepted | Rejected:
    """``now``: seconds since the epoch (an ``exp`` is one)."""
    if answer.result == "reject":
        return Rejected(clean_reason(answer.reason))
    sub = answer.sub
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS:
        raise BadAnswer(f"an accepted connect needs a sub: a string of 1-{MAX_SUB_CHARS} chars")
    try:
        caps = parse_capabilities({} if answer.caps is None else answer.caps)
    except CapabilityError as exc:
        raise BadAnswer(f"caps: {exc}") from None
    exp = answer.exp
    if exp is None:
        exp = now + NO_EXPIRY_S
    elif not math.isfinite(exp) or exp <= now:
        raise BadAnswer("exp must be a time in the future (seconds since the epoch)")
    return Accepted(credentials=Credentials(sub=sub, exp=exp, capabilities=caps, iat=now))


def subscribe_verdict(answer: HookAnswer) -> Accepted | Rejected:
    if answer.result == "reject":
        return Rejected(clean_reason(answer.reason))
    return Accepted()


def publish_verdict(answer: HookAnswer, max_message_bytes: int) -> Accepted | Rejected:
    if answer.result == "reject":
        return Rejected(clean_reason(answer.reason))
    data = answer.data
    if not data:
        return Accepted()
    if len(data) > max_message_bytes:
        raise BadAnswer(
            f"replaced data is {len(data)} bytes; the channel's limit is {max_message_bytes}"
        )
    return Accepted(data=data)


# --- retries ----------------------------------------------------------------------------


def retryable(status: int | None) -> bool:
    """Whether a failed attempt is worth another: the connection failed (``None``) or the
    backend had a server error. A timeout is not retried (it already took ``timeout_s``);
    nor is an answer that is wrong (asking again gets the same)."""
    return status is None or 500 <= status <= 599


def retry_delay_s(attempt: int, base_s: float, jitter: float) -> float:
    """Before retry ``attempt`` (1 for the first): doubling from ``base_s``, times
    ``jitter`` (0.5 to 1, from the caller's random source) so that relays spread out."""
    return base_s * float(2 ** (attempt - 1)) * jitter
