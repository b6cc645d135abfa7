"""A client connection carried on Server-Sent Events: ``GET /v1/sse?channels=a,b``.

The same ``Connection`` as a WebSocket client's runs on it (session, subscriptions,
resume, outbox bounds, slow-consumer cut-off, token expiry and revocation); only the
wire differs. The request's channels become subscribe frames, from the positions in
``Last-Event-ID`` when the browser reconnects; every server frame becomes an event
named by its ``op`` whose data is the frame itself. ``message`` and ``subscribed``
events carry an ``id``: the stream's position in every channel, which is what a
reconnect resumes from (on any relay of any region: a position is not a relay's).
The end of a connection is an ``end`` event with the close code and reason (the
browser then reconnects by itself, unless the code says not to), and comment lines
every heartbeat keep proxies from closing an idle stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Final

import anyio
import h11
import msgspec

from federation.vclock import VectorClock
from relay.adapters.http_server import HttpConnection, StreamClosed, StreamWriter
from relay.adapters.wire import WireClosed
from relay.protocol import http_api

# Reconnect after this long (the browser's default is about 3 s).
RETRY_MS: Final = 1000


class _Head(msgspec.Struct):
    """What an event needs of a server frame: its op, and a channel's position if any."""

    op: str = "unknown"
    channel: str | None = None
    position: dict[str, int] | None = None


_head: Final = msgspec.json.Decoder(_Head)
_encode: Final = msgspec.json.Encoder().encode


class SseWire:
    """One SSE response stream as a ``Wire``."""

    def __init__(
        self,
        conn: HttpConnection,
        writer: StreamWriter,
        subscribes: list[bytes],
        positions: dict[str, VectorClock],
        token: str | None,
    ) -> None:
        self.conn = conn
        self.writer = writer
        self._subscribes = subscribes
        self._positions = dict(positions)
        self._token = token
        self._sending = False

    def token(self) -> str | None:
        token, self._token = self._token, None
        return token

    async def incoming(self) -> AsyncGenerator[str | bytes, None]:
        for frame in self._subscribes:
            yield frame.decode()  # text, as a WebSocket client sends frames
        self._subscribes = []
        # Nothing more comes from the client: the HTTP side cancels the stream when it goes.
        await anyio.sleep_forever()

    def writable(self) -> bool:
        conn = self.conn
        return not conn.closed and not conn.paused and not self._sending

    def buffered(self) -> int:
        transport = self.conn.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def event(self, frame: bytes) -> bytes:
        head = _head.decode(frame)
        event_id = None
        if head.channel is not None and head.position is not None and head.op != "ack":
            self._positions[head.channel] = VectorClock(head.position)
            event_id = http_api.encode_event_id(self._positions)
        return http_api.sse_event(head.op, frame, event_id)

    def encode(self, frame: bytes) -> bytes:
        return self.conn.h11.send(h11.Data(data=self.event(frame))) or b""

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    async def send(self, frames: list[bytes]) -> None:
        self._sending = True
        try:
            await self.writer.send(b"".join([self.event(frame) for frame in frames]))
        except StreamClosed:
            raise WireClosed from None
        finally:
            self._sending = False

    async def close(self, code: int, reason: str) -> None:
        end = _encode({"code": code, "reason": reason})
        with contextlib.suppress(StreamClosed):
            await self.writer.send(http_api.sse_event("end", end))

    def abort(self) -> None:
        if self.conn.transport is not None:
            self.conn.transport.abort()

    async def start(self) -> None:
        await self.writer.send(f"retry: {RETRY_MS}\n\n".encode())

    def heartbeat(self) -> None:
        """A comment line, if nothing is queued (else the queue keeps the stream busy)."""
        if self.writable():
            self.write(self.conn.h11.send(h11.Data(data=http_api.sse_comment("ping"))) or b"")
