"""One port, two protocols: WebSocket upgrades go to websockets, everything else to h11."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve

from relay.adapters.http_server import (
    HttpConnection,
    HttpRequest,
    HttpResponse,
    StreamResponse,
    StreamWriter,
    edge_connections,
    json_response,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


class App:
    def __init__(self) -> None:
        self.sent = 0
        self.stream_ended: asyncio.Event = asyncio.Event()
        self.writer: StreamWriter | None = None
        self.connections: list[HttpConnection] = []

    async def handle(self, request: HttpRequest) -> HttpResponse | StreamResponse:
        if request.path == "/echo":
            return json_response(
                200,
                {
                    "method": request.method,
                    "body": request.body.decode(),
                    "q": request.param("q"),
                    "type": request.header("content-type"),
                },
            )
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/stream":
            return StreamResponse(200, (("Content-Type", "text/event-stream"),), self.produce)
        return HttpResponse(404, b"nope\n")

    async def produce(self, writer: StreamWriter) -> None:
        self.writer = writer
        try:
            for _ in range(2000):
                await writer.send(b"x" * 65536)
                self.sent += 1
        finally:  # StreamClosed, or cancelled when the connection is lost
            self.stream_ended.set()

    def http(self) -> HttpConnection:
        conn = HttpConnection(self.handle, max_body_bytes=1000)
        self.connections.append(conn)
        return conn


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.fixture
async def served() -> AsyncIterator[tuple[App, int]]:
    app = App()
    connections = edge_connections(app.http, head_timeout_s=5)
    server: Server = await serve(echo, "127.0.0.1", 0, create_connection=connections)
    port = server.sockets[0].getsockname()[1]
    try:
        yield app, port
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, raw: bytes, *, until: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = b""
        async with asyncio.timeout(10):
            while until not in data or not until:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
                if until and until in data:
                    break
        return data
    finally:
        writer.close()


async def test_websocket_upgrades_still_reach_websockets(served: tuple[App, int]) -> None:
    _, port = served
    async with connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"


async def test_requests_with_bodies_and_keep_alive(served: tuple[App, int]) -> None:
    _, port = served
    raw = (
        b"POST /echo?q=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}'
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = await exchange(port, raw)
    assert data.count(b"HTTP/1.1 200") == 2, data
    assert b'"body":"{\\"a\\":1}"' in data and b'"q":"1"' in data
    assert b'"body":"abcde"' in data
    assert b"HTTP/1.1 404" in data and data.endswith(b"nope\n")


async def test_bad_and_oversized_requests_get_a_status_and_a_close(
    served: tuple[App, int],
) -> None:
    _, port = served
    data = await exchange(port, b"GARBAGE\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400"), data
    big = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"y" * 5000
    data = await exchange(port, big)
    assert data.startswith(b"HTTP/1.1 413"), data
    chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"7d0\r\n" + b"z" * 2000 + b"\r\n0\r\n\r\n"
    data = await exchange(port, chunked)
    assert data.startswith(b"HTTP/1.1 413"), data


async def test_a_failing_handler_is_a_500_not_a_dead_server(served: tuple[App, int]) -> None:
    _, port = served
    data = await exchange(port, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 500"), data
    data = await exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200"), data


async def test_a_stream_waits_for_a_slow_reader_and_stops_when_it_leaves(
    served: tuple[App, int],
) -> None:
    app, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    # Not reading: the producer must block on flow control, far short of its 2000 chunks
    # (131 MB), rather than the relay buffering them.
    await wait_until(
        lambda: bool(app.connections) and app.connections[-1].paused, "stream paused", 20
    )
    assert app.sent < 200
    writer.transport.abort()
    await asyncio.wait_for(app.stream_ended.wait(), 10)
    assert app.sent < 200
