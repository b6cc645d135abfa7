"""Which transport to open edges with: WebSocket, or SSE + HTTP when WebSocket is blocked.

Theory of operation
-------------------
A network that blocks WebSocket (a proxy that refuses or mangles the upgrade, a relay
with ``relay.websocket = false``) still lets plain HTTP through. The client then
subscribes over Server-Sent Events and publishes over the HTTP API, with the same
session, ids and positions. This machine decides when, without I/O or a clock; the
shell (``client.py``) reports each WebSocket attempt that failed and the answer of a
plain ``GET /v1/ping`` to that edge, and asks where the next attempt goes:

* **Evidence of a block**, never of a dead edge. An edge that refuses the TCP
  connection (``unreachable``) is down, not filtered: ordinary failover. Otherwise
  the shell GETs ``/v1/ping`` on the same edge; if that fails too, the edge is down
  and the failure counts for nothing. If it answers, the failed upgrade counts:
  an HTTP status that no working relay answers an upgrade with (4xx but 408 and
  429; 501, 505) switches at once, any other failure during the handshake (a
  timeout, a reset, a 502 from a proxy, a connection that opens and never says
  ``connected``) switches once it happened ``handshake_failures`` times in a row.
  503 is the relay itself saying "not now" (shutting down, NATS down): its SSE
  would say the same, so it is ordinary failover.
* **Sticky while it works, then retried.** Once on SSE every edge is opened with
  SSE (a block is usually the client's network, not one edge), and WebSocket is
  tried again every ``retry_s`` (jittered by ±25 %, so that clients behind one proxy
  do not retry together). A WebSocket that opens puts the client back on
  WebSocket, counters cleared. An edge that SSE cannot open either puts the next
  attempt back on WebSocket first, with the failures counted so far: a blocked
  WebSocket then falls back again at once (``handshake_failures`` already reached,
  or a blocking status), and a client whose SSE stopped working for another reason
  is not stuck on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final, Literal

Transport = Literal["websocket", "sse"]
FailureKind = Literal["unreachable", "refused", "handshake"]

# Upgrade failures in a row (each with the edge answering /v1/ping) before SSE.
HANDSHAKE_FAILURES_BEFORE_SSE: Final = 2
DEFAULT_WEBSOCKET_RETRY_S: Final = 30.0
RETRY_JITTER: Final = 0.25
# Answers to an upgrade that mean "not here, not this way", whatever is retried.
_TRANSIENT_4XX: Final = frozenset({408, 429})
_BLOCKING_5XX: Final = frozenset({501, 505})
_RELAY_UNAVAILABLE: Final = 503


@dataclass(frozen=True)
class WebSocketFailure:
    """How a WebSocket attempt failed, as the shell saw it."""

    kind: FailureKind
    status: int | None = None
    """The HTTP status the upgrade was answered with (``refused``)."""

    def __str__(self) -> str:
        return f"{self.kind} (HTTP {self.status})" if self.status is not None else self.kind


def blocks_websocket(status: int) -> bool:
    """Whether an HTTP status answering an upgrade says WebSocket is refused on that path."""
    if 400 <= status < 500:
        return status not in _TRANSIENT_4XX
    return status in _BLOCKING_5XX


class TransportPolicy:
    def __init__(
        self,
        *,
        rng: random.Random,
        enabled: bool = True,
        handshake_failures: int = HANDSHAKE_FAILURES_BEFORE_SSE,
        retry_s: float = DEFAULT_WEBSOCKET_RETRY_S,
    ) -> None:
        """``enabled``: fall back to SSE at all. ``retry_s``: while on SSE, how often
        (on average) to try WebSocket again."""
        if handshake_failures < 1:
            raise ValueError(f"handshake_failures must be >= 1, not {handshake_failures!r}")
        if not retry_s > 0:
            raise ValueError(f"websocket_retry_s must be > 0, not {retry_s!r}")
        self._rng = rng
        self._enabled = enabled
        self._needed = handshake_failures
        self._retry_s = retry_s
        self.transport: Transport = "websocket"
        """What the next attempt opens."""
        self.failures_in_a_row = 0
        """Failed upgrades, each on an edge that answered /v1/ping, since the last success."""
        self._pending: WebSocketFailure | None = None  # waiting for ping_answered()

    def websocket_failed(self, failure: WebSocketFailure) -> bool:
        """A WebSocket attempt failed; True: GET /v1/ping on that edge and report it with
        ``ping_answered()`` before deciding anything."""
        if not self._enabled or failure.kind == "unreachable":
            return False
        if failure.kind == "refused" and failure.status == _RELAY_UNAVAILABLE:
            return False
        self._pending = failure
        return True

    def ping_answered(self, ok: bool) -> bool:
        """The edge's /v1/ping answered (``ok``) or not; True: open it with SSE now."""
        failure, self._pending = self._pending, None
        if failure is None or not ok:
            return False  # the edge is down: that is failover, not a block
        self.failures_in_a_row += 1
        blocked = failure.kind == "refused" and blocks_websocket(failure.status or 0)
        if blocked or self.failures_in_a_row >= self._needed:
            self.transport = "sse"
            return True
        return False

    def sse_failed(self) -> None:
        """An edge could not be opened with SSE: the next attempt tries WebSocket first
        (the failures counted so far still count), so that SSE stays only while it works."""
        self.transport = "websocket"

    def websocket_opened(self) -> None:
        """A WebSocket opened (and said ``connected``): back on WebSocket, counters cleared."""
        self.transport = "websocket"
        self.failures_in_a_row = 0
        self._pending = None

    @property
    def retry_s(self) -> float:
        return self._retry_s

    def retry_delay(self) -> float:
        """Seconds on SSE before the next WebSocket try."""
        return self._retry_s * self._rng.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
