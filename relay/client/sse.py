"""Reading a Server-Sent Events stream (the WHATWG ``text/event-stream`` format), on h11.

``EventParser`` is the pure part: bytes in, events out (``id``, ``event``, ``data``;
comments and ``retry`` are dropped; the last ``id`` seen carries over to events
without one, as browsers do). ``sse_stream`` opens one stream and yields its events
until the server ends it or ``idle_timeout_s`` passes without a byte (heartbeat
comments count).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import anyio
import h11
from anyio.abc import ByteStream

from relay.client.http import USER_AGENT, HttpError, open_stream

MAX_LINE_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: bytes
    id: str | None  # the stream's last event id as of this event


class EventParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[bytes] = []
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE_BYTES:
                    raise HttpError("event stream line too long")
                return events
            line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1 :]
            if not line:  # dispatch
                if self._data:
                    data = b"\n".join(self._data)
                    events.append(SseEvent(self._event or "message", data, self.last_id))
                self._event, self._data = "", []
                continue
            if line.startswith(b":"):
                continue  # a comment (heartbeat)
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode(errors="replace")
            elif name == b"id" and b"\0" not in value:
                self.last_id = value.decode(errors="replace")


@asynccontextmanager
async def sse_stream(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    connect_timeout_s: float,
    idle_timeout_s: float | Callable[[], float],
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncIterator[tuple[int, AsyncIterator[SseEvent]]]:
    """Open ``url``: (status, events). A status other than 200 comes with no events.
    For https, the certificate is verified against ``server_hostname`` (default: the
    URL's host; the relay's own name when ``url`` was dialed to another address).
    ``idle_timeout_s`` may be a function, asked before each wait: a client learns how
    often the relay sends heartbeats only from the stream's first event."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = h11.Connection(h11.CLIENT)
    request = conn.send(
        h11.Request(
            method="GET",
            target=target,
            headers=[
                ("Host", parts.netloc),
                ("User-Agent", USER_AGENT),
                ("Accept", "text/event-stream"),
                ("Cache-Control", "no-store"),
                *headers,
            ],
        )
    )
    request += conn.send(h11.EndOfMessage())
    with anyio.fail_after(connect_timeout_s):
        stream = await open_stream(host, port, secure, ssl_context, server_hostname)
    async with stream:
        with anyio.fail_after(connect_timeout_s):
            await stream.send(request)
            status = await _status(conn, stream)
        yield status, _events(conn, stream, idle_timeout_s)


async def _status(conn: h11.Connection, stream: ByteStream) -> int:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                conn.receive_data(await stream.receive())
            except anyio.EndOfStream:
                conn.receive_data(b"")
        elif isinstance(event, h11.Response):
            return event.status_code
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpError("the server closed the connection before answering")


async def _events(
    conn: h11.Connection, stream: ByteStream, idle_timeout_s: float | Callable[[], float]
) -> AsyncIterator[SseEvent]:
    parser = EventParser()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(f"bad event stream: {exc}") from None
        if event is h11.NEED_DATA:
            idle = idle_timeout_s() if callable(idle_timeout_s) else idle_timeout_s
            with anyio.fail_after(idle):
                try:
                    data = await stream.receive()
                except anyio.EndOfStream:
                    data = b""
            conn.receive_data(data)
        elif isinstance(event, h11.Data):
            for parsed in parser.feed(bytes(event.data)):
                yield parsed
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return
