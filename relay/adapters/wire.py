"""What a client connection is carried on: a WebSocket, or a Server-Sent Events stream.

``Connection`` (the session, its subscriptions, outbox and writer) does not care which:
it reads client frames from ``incoming()``, writes encoded frames straight to the
socket while it keeps up (``writable``/``buffered``/``encode``/``write``), waits for
room with ``send`` when it does not, and ends with ``close``. A WebSocket carries
frames both ways; an SSE stream only from the relay (its subscriptions come from the
request's URL, and publishes go over the HTTP API).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Protocol
from urllib.parse import parse_qs

import anyio
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from relay.adapters.http_server import EdgeConnection
from relay.adapters.wsframe import text_frame


class WireClosed(Exception):
    """The client is gone: nothing more can be sent."""


class Wire(Protocol):
    def token(self) -> str | None:
        """The token offered when the connection opened (``?token=``), taken once."""

    def incoming(self) -> AsyncGenerator[str | bytes, None]:
        """The client's frames, until it closes."""

    def writable(self) -> bool:
        """Whether a frame may be written now, ahead of nothing queued."""

    def buffered(self) -> int:
        """Bytes written and not yet taken by the socket."""

    def encode(self, frame: bytes) -> bytes:
        """``frame`` as the bytes ``write`` puts on the socket."""

    def write(self, data: bytes) -> None:
        """Encoded frames, at once (only while ``writable``)."""

    async def send(self, frames: list[bytes]) -> None:
        """Frames in one write, then wait until the socket has room again; ``WireClosed``
        if the client is gone."""

    async def close(self, code: int, reason: str) -> None:
        """End the connection, telling the client why (it may not read it)."""

    def abort(self) -> None:
        """Drop the connection now."""


# A ping frame with no payload (RFC 6455 5.5.2), written as it is: see WsWire.keepalive.
PING_FRAME = b"\x89\x00"


class WsWire:
    """A WebSocket (websockets' connection, after its handshake)."""

    __slots__ = ("pinged", "ws")

    def __init__(self, ws: EdgeConnection) -> None:
        self.ws = ws
        # The client's pong count when the last keepalive ping went; None: none pending.
        self.pinged: int | None = None

    def keepalive(self) -> bool:
        """Ping the client; False if the last ping (a keepalive turn ago) is unanswered.

        websockets' own ``ping()`` costs a task, a future, a timer and an awaited drain per
        ping here: a relay holding 10,000 idle connections (15 s heartbeat) spent about 7%
        of a core on them, 3.3% this way. The ping frame goes straight to the socket
        instead and the pong is counted (``EdgeConnection.acknowledge_pings``). A client
        whose socket is backed up is not pinged (its pong would wait behind what it has
        not read yet): the writer's deadline, ``write_timeout_s``, judges it."""
        ws = self.ws
        if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
            return True
        pongs = ws.pongs
        if self.pinged is not None and self.pinged == pongs:
            return False
        if ws.transport.get_write_buffer_size():
            self.pinged = None
            return True
        ws.transport.write(PING_FRAME)
        self.pinged = pongs
        return True

    def token(self) -> str | None:
        """The ``token`` query parameter. The query is then dropped from the kept request,
        so the token is not held (or logged) past its check. websockets also keeps the
        handshake's request and response, headers and all, for the connection's life
        (3 KB of a 19 KB idle connection): after the handshake it only checks that a
        request was seen, so the headers are emptied in place and the response dropped."""
        ws = self.ws
        request = ws.request
        token = None
        if request is not None:
            if "?" in request.path:
                path, query = request.path.split("?", 1)
                request.path = path
                values = parse_qs(query).get("token")
                token = values[0] if values else None
            request.headers.clear()
        ws.response = None
        return token

    async def incoming(self) -> AsyncGenerator[str | bytes, None]:
        try:
            async for raw in self.ws:
                yield raw
        except ConnectionClosed:
            pass

    def writable(self) -> bool:
        ws = self.ws
        return ws.protocol.state is State.OPEN and ws.send_in_progress is None

    def buffered(self) -> int:
        return self.ws.transport.get_write_buffer_size()

    # The fan-out calls this once per subscriber per message: no method frame around it.
    encode = staticmethod(text_frame)

    def write(self, data: bytes) -> None:
        if self.ws.protocol.state is State.OPEN:
            self.ws.transport.write(data)

    async def send(self, frames: list[bytes]) -> None:
        # One transport write for all of them, as on the direct path: websockets' send()
        # writes (one system call) per frame, which a backed-up subscriber of a busy
        # channel paid for every message (4 writes per publish at N = 10).
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            raise WireClosed
        ws.transport.write(b"".join([text_frame(frame) for frame in frames]))
        try:
            await ws.drain()
        except (ConnectionClosed, OSError):
            raise WireClosed from None
        if ws.protocol.state is not State.OPEN:
            raise WireClosed

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(code, reason)

    def abort(self) -> None:
        self.ws.transport.abort()


async def never() -> AsyncGenerator[str | bytes, None]:
    """No client frames (an SSE stream): waits until cancelled."""
    await anyio.sleep_forever()
    yield b""  # pragma: no cover - unreachable; makes this an async generator
