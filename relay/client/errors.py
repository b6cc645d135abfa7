"""What the SDK raises for the world's failures (API misuse raises ``ValueError``).

``ClientError`` is the base class; ``temporary`` on ``RequestRefused`` carries the
relay's retry hint (PROTOCOL.md, errors).
"""

from __future__ import annotations

from collections.abc import Mapping


class ClientError(Exception):
    """Base class of what the SDK raises for the world's failures (not for API misuse)."""


class ClientClosed(ClientError):
    """The client was closed; pending requests and subscriptions end with this."""


class ConnectionFailed(ClientError):
    """The relay closed the connection with a code that says not to reconnect."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed with {code} {reason!r}: not reconnecting")
        self.code = code
        self.reason = reason


class NoEdgeReachable(ClientError):
    """``connect(..., timeout=...)`` reached no relay in time. ``failures`` maps every
    seed and edge that was tried to why it failed (connection refused, timed out,
    "HTTP 404: not a relay", bad JSON...)."""

    def __init__(self, timeout_s: float, failures: Mapping[str, str]) -> None:
        detail = "; ".join(f"{url}: {why}" for url, why in failures.items())
        super().__init__(
            f"no relay reachable within {timeout_s:g} s"
            + (f" ({detail})" if detail else " (nothing answered yet)")
        )
        self.timeout_s = timeout_s
        self.failures = dict(failures)


class RequestRefused(ClientError):
    """The relay answered a request with an error (PROTOCOL.md, errors)."""

    def __init__(
        self, code: str, message: str, channel: str | None, *, temporary: bool = False
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.channel = channel
        self.temporary = temporary


class PositionExpiredError(ClientError):
    """Retention removed messages the position does not cover: subscribe again from
    ``earliest`` (accepting the gap) or without a position (live)."""

    def __init__(self, channel: str, earliest: dict[str, int]) -> None:
        super().__init__(f"{channel}: position expired; earliest still stored is {earliest}")
        self.channel = channel
        self.earliest = earliest


class PresenceUnavailable(ClientError):
    """``enter``/``update``/``leave`` while the client is on SSE (WebSocket is blocked on
    the way to the relay): that wire carries nothing from client to relay, and the HTTP
    API has no presence ops. ``members()`` and presence events still work. What was
    entered before stays wanted: it is entered again once the client is back on a
    WebSocket."""

    def __init__(self, channel: str) -> None:
        super().__init__(
            f"presence in {channel!r}: enter, update and leave need a WebSocket, and this "
            "client is on SSE (WebSocket is blocked); it tries WebSocket again now and then"
        )
        self.channel = channel
