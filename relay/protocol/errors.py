"""Error codes sent in ``error`` frames and close codes, with their retry policy.

Three kinds of failure are kept apart:

* the peer misbehaved -> an ``error`` frame (or, for floods, a close code); never an
  exception that reaches the server loop;
* we misused our own API -> a plain exception (a bug: it should crash the test);
* the world failed (NATS down, timeouts) -> ``internal`` / ``unavailable`` with
  ``temporary`` true so clients know to retry.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    INVALID_CHANNEL = "invalid_channel"
    TOO_LARGE = "too_large"
    NOT_SUBSCRIBED = "not_subscribed"
    ALREADY_SUBSCRIBED = "already_subscribed"
    LIMIT_EXCEEDED = "limit_exceeded"  # max_subscriptions, max_connections_per_sub
    POSITION_EXPIRED = "position_expired"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"  # no valid token yet (token mode), or a token refused
    FORBIDDEN = "forbidden"  # the token's capabilities do not allow this on the channel
    SLOW_CONSUMER = "slow_consumer"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


# Errors worth retrying unchanged after a pause: the request was fine, the world was not.
TEMPORARY_ERRORS = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED})


class CloseCode(IntEnum):
    """WebSocket close codes. 4000-4499: reconnect (and resume); 4500-4999: do not."""

    NORMAL = 1000
    GOING_AWAY = 1001  # relay shutting down: reconnect, to another relay if you have one
    MESSAGE_TOO_BIG = 1009  # frame above limits.max_frame_bytes (sent by the WebSocket layer)
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # relay at limits.max_connections: follow the redirect, or back off
    SLOW_CONSUMER = 4000  # outbox overflowed: reconnect and resume from your last position
    UNAVAILABLE = 4001  # relay lost its NATS connection: reconnect, maybe elsewhere
    GAP = 4002  # a channel's feed had a gap it could not fill: reconnect and resume
    TOKEN_EXPIRED = 4003  # the token expired without renewal: reconnect with a fresh one
    # The token's sub holds limits.max_connections_per_sub connections on this relay already
    # (after a `limit_exceeded` error). Reconnect range on purpose: a well-behaved client
    # refused because the relay has not yet noticed its previous connection is gone gets in
    # once it is (within 2 heartbeats), with backoff; a client that opens one connection
    # too many retries at the backoff's pace, costing the relay one refused handshake each.
    TOO_MANY_CONNECTIONS = 4004
    # An operator revoked the token (`relaynet token revoke`): reconnect with a fresh one
    # (a client whose fresh token is revoked too is then refused with 4501).
    TOKEN_REVOKED = 4005
    TOO_MANY_ERRORS = 4500  # the client keeps sending bad frames: fix the client
    UNAUTHORIZED = 4501  # the ?token= was refused (bad signature, claims...): fix the token


class ProtocolError(Exception):
    """A client frame we refuse; becomes an ``error`` frame, the connection stays open."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        ref: str | int | None = None,
        *,
        channel: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.channel = channel  # what the refused request was about, for errors that say
