"""What a relay counts as it works, for ``/metrics``: plain ints and Counters.

The connections, the HTTP API and the live feed update these inline (an addition,
a dict increment); the metrics collector reads them when scraped. Nothing here
calls prometheus-client, so a publish or a delivery pays no registry lookup, lock
or label resolution.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Final

from relay.core.histogram import Histogram
from relay.protocol import http_api
from relay.protocol.errors import ErrorCode

# HTTP routes by their template, so the label stays bounded whatever paths clients send.
_PLAIN_ROUTES: Final = frozenset(
    {
        "/",
        "/demo.js",
        "/metrics",
        "/v1/client.js",
        "/v1/edges",
        "/v1/health",
        "/v1/openapi.json",
        "/v1/ping",
        "/v1/ready",
        "/v1/sse",
        "/v1/ws",
    }
)
_ERROR_PREFIX: Final = b'{"op":"error"'
# Exported at 0 before the first one, so a dashboard's rate() has a series from the start.
CLOSE_REASONS: Final = (
    "gap", "going_away", "redirected", "slow_consumer", "token_expired", "token_revoked",
    "too_many_connections", "too_many_errors", "unauthorized", "unavailable", "write_timeout",
)  # fmt: skip
AUTH_OPS: Final = ("auth", "connect", "http")
_CODE_KEY: Final = b'"code":"'


def route_label(path: str) -> str:
    """The route a request path belongs to: its template, or ``other``."""
    if path in _PLAIN_ROUTES:
        return path
    channel_route = http_api.route(path)
    if channel_route is not None:
        return f"/v1/channels/{{channel}}/{channel_route.kind}"
    return "other"


def error_code(frame: bytes) -> str | None:
    """The code of an ``error`` frame (as ``relay.protocol.frames`` encodes it), else None.
    A byte search, not a decode: it runs for every reply a connection sends."""
    if not frame.startswith(_ERROR_PREFIX):
        return None
    start = frame.find(_CODE_KEY)
    if start < 0:
        return None
    start += len(_CODE_KEY)
    end = frame.find(b'"', start)
    return frame[start:end].decode("ascii", "replace") if end > start else None


class RelayStats:
    def __init__(self, namespace_of: Callable[[str], str]) -> None:
        self._namespace_of = namespace_of
        self.published: collections.Counter[str] = collections.Counter()  # namespace
        self.publish_ack = Histogram()  # publish received -> ack sent, acked ones
        # error code sent; close reason; op where credentials were refused
        self.errors = collections.Counter(dict.fromkeys((c.value for c in ErrorCode), 0))
        self.closes = collections.Counter(dict.fromkeys(CLOSE_REASONS, 0))
        self.auth_failures = collections.Counter(dict.fromkeys(AUTH_OPS, 0))
        # (route, method, status)
        self.http: collections.Counter[tuple[str, str, int]] = collections.Counter()

    def acked(self, channel: str, seconds: float) -> None:
        self.published[self._namespace_of(channel)] += 1
        self.publish_ack.observe(seconds)

    def reply(self, frame: bytes) -> None:
        """A reply a client is sent: counted if it is an ``error``."""
        code = error_code(frame)
        if code is not None:
            self.errors[code] += 1

    def http_answered(self, path: str, method: str, status: int, body: bytes) -> None:
        self.http[(route_label(path), method, status)] += 1
        if status >= 400:
            self.reply(body)
