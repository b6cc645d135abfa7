"""Plain HTTP/1.1 on the relay's port, on h11: the HTTP API, SSE, health, static files.

The WebSocket library only speaks the GET of an upgrade (no request bodies, no
streamed responses), so every other request is served here. The listener is shared:
``EdgeConnection`` reads the request head of each new TCP (or TLS) connection and
either hands the connection to websockets (a WebSocket upgrade) or moves it, bytes
read so far included, to an ``HttpConnection``. h11 does all the parsing (request
line, headers, Content-Length and chunked bodies, keep-alive); this module only moves
bytes, bounds them (head and body sizes, idle time) and runs one handler per request.

A handler returns an ``HttpResponse`` (a whole body) or a ``StreamResponse`` (headers,
then chunks as a coroutine produces them; Server-Sent Events). Streaming respects the
transport's flow control: a client that does not read stops the producer instead of
growing the relay's buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import parse_qs, urlsplit

import h11
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode

from relay.adapters.wsframe import read_with_shortcut

log = logging.getLogger("relaynet.http")

MAX_HEAD_BYTES: Final = 16 * 1024
IDLE_TIMEOUT_S: Final = 30.0  # between requests on a kept-alive connection, and for a head
BODY_TIMEOUT_S: Final = 30.0  # to send a whole request body once its head arrived
SERVER_HEADER: Final = ("Server", "relaynet")


@dataclass(frozen=True)
class HttpRequest:
    method: str
    # As sent (percent-encoded): routes split it first, then decode the parts, so an
    # encoded "/" inside a channel name stays in the name.
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...]  # names lower-cased
    body: bytes = b""
    remote: str | None = None  # the client's address (the peer's, behind a proxy)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


class StreamClosed(Exception):
    """The client went away while a stream was being written."""


@dataclass
class StreamResponse:
    """Headers now, then whatever ``produce`` sends until it returns."""

    status: int
    headers: tuple[tuple[str, str], ...]
    produce: Callable[[StreamWriter], Awaitable[None]]


Handler = Callable[[HttpRequest], Awaitable[HttpResponse | StreamResponse]]


def json_response(status: int, body: Any, headers: Iterable[tuple[str, str]] = ()) -> HttpResponse:
    data = json.dumps(body, separators=(",", ":")).encode()
    return HttpResponse(status, data, (("Content-Type", "application/json"), *headers))


def text_response(status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> HttpResponse:
    return HttpResponse(
        status, text.encode(), (("Content-Type", "text/plain; charset=utf-8"), *headers)
    )


@dataclass
class StreamWriter:
    """What a ``StreamResponse`` producer writes with; waits while the client is slow."""

    _conn: HttpConnection
    _resumed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def connection(self) -> HttpConnection:
        return self._conn

    async def send(self, chunk: bytes) -> None:
        conn = self._conn
        if conn.closed:
            raise StreamClosed
        conn.write(conn.h11.send(h11.Data(data=chunk)) or b"")
        while conn.paused and not conn.closed:
            self._resumed.clear()
            await self._resumed.wait()
        if conn.closed:
            raise StreamClosed


class HttpConnection(asyncio.Protocol):
    """One client connection speaking plain HTTP/1.1, kept alive between requests."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        on_close: Callable[[HttpConnection], None] | None = None,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self.on_close = on_close
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writer: StreamWriter | None = None
        self._shutting_down = False

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._arm(self.idle_timeout_s)

    def data_received(self, data: bytes) -> None:
        try:
            self.h11.receive_data(data)
        except h11.RemoteProtocolError:  # data after the client said it would close
            self._abort()
            return
        self._advance()

    def eof_received(self) -> bool | None:
        with contextlib.suppress(h11.RemoteProtocolError):
            self.h11.receive_data(b"")
        self._advance()
        # A client may half-close after its request: keep the socket to send the answer.
        return self._task is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        if self._writer is not None:
            self._writer._resumed.set()
        if self._task is not None and self._request is not None:
            self._task.cancel()  # nobody is left to answer
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._writer is not None:
            self._writer._resumed.set()

    # --- the request cycle

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _advance(self) -> None:
        """Read events until h11 needs more data or a request is being answered."""
        while not self.closed and self._task is None:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc.error_status_hint, f"bad request: {exc}\n")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request = event
                self._body.clear()
                self._arm(BODY_TIMEOUT_S)
                if self._too_large(event):
                    self._refuse(413, f"request body above {self.max_body_bytes} bytes\n")
                    return
                if self.h11.client_is_waiting_for_100_continue:
                    self.write(
                        self.h11.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                    )
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self.max_body_bytes:
                    self._refuse(413, f"request body above {self.max_body_bytes} bytes\n")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._disarm()
                request = self._request
                assert request is not None
                loop = asyncio.get_running_loop()
                parsed = _request_of(request, bytes(self._body), self._remote())
                self._task = loop.create_task(self._answer(parsed))
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _remote(self) -> str | None:
        peer = None if self.transport is None else self.transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else None

    def _too_large(self, request: h11.Request) -> bool:
        for name, value in request.headers:
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    return int(value) > self.max_body_bytes
        return False

    async def _answer(self, request: HttpRequest) -> None:
        try:
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("HTTP %s %s failed", request.method, request.path)
                response = text_response(500, "internal error\n")
            if isinstance(response, StreamResponse):
                await self._stream(response)
            else:
                self._send_whole(response)
        except StreamClosed:
            pass
        except asyncio.CancelledError:
            self._abort()
            raise
        finally:
            self._task = None
            self._request = None
        self._next_cycle()

    def _send_whole(self, response: HttpResponse) -> None:
        headers = [SERVER_HEADER, *response.headers, ("Content-Length", str(len(response.body)))]
        self._send(h11.Response(status_code=response.status, headers=headers))
        if response.body:
            self._send(h11.Data(data=response.body))
        self._send(h11.EndOfMessage())

    async def _stream(self, response: StreamResponse) -> None:
        self._send(
            h11.Response(status_code=response.status, headers=[SERVER_HEADER, *response.headers])
        )
        self._writer = StreamWriter(self)
        try:
            await response.produce(self._writer)
        finally:
            self._writer = None
        self._send(h11.EndOfMessage())

    def _send(self, event: h11.Event) -> None:
        if self.closed:
            raise StreamClosed
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError:
            log.exception("HTTP response refused by h11")
            self._abort()
            raise StreamClosed from None
        self.write(data or b"")

    def shutdown(self) -> None:
        """Close once the request being answered (if any) is; a stream ends on its own."""
        self._shutting_down = True
        if self._task is None:
            self._close()

    def _next_cycle(self) -> None:
        if self.closed:
            return
        if self._shutting_down:
            self._close()
            return
        closing = (h11.MUST_CLOSE, h11.CLOSED)
        if self.h11.our_state in closing or self.h11.their_state in closing:
            self._close()
            return
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self._arm(self.idle_timeout_s)
            self._advance()  # a pipelined request may be waiting in h11's buffer
        else:  # the client is still sending a body we answered early (413): give up
            self._close()

    def _refuse(self, status: int, text: str) -> None:
        """Answer an unreadable or unacceptable request and close: h11 cannot go on."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            response = text_response(status, text, (("Connection", "close"),))
            with contextlib.suppress(h11.LocalProtocolError, StreamClosed):
                self._send_whole(response)
        self._close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._task is None:
            self._close()

    def _close(self) -> None:
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _abort(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.abort()


def _request_of(request: h11.Request, body: bytes, remote: str | None) -> HttpRequest:
    target = request.target.decode("ascii", "replace")
    parts = urlsplit(target)
    headers = tuple(
        (name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in request.headers
    )
    return HttpRequest(
        method=request.method.decode("ascii", "replace"),
        path=parts.path,
        query=parse_qs(parts.query, keep_blank_values=True),
        headers=headers,
        body=body,
        remote=remote,
    )


def is_websocket_upgrade(head: bytes) -> bool:
    """Whether a request head asks for a WebSocket: ``GET`` with ``Upgrade: websocket``."""
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"GET "):
        return False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.strip().lower():
            return True
    return False


#: What websockets' asyncio ServerConnection (14 to 17) sets on itself.
_WEBSOCKETS_ATTRIBUTES = (
    "protocol", "ping_interval", "ping_timeout", "close_timeout", "max_queue_high",
    "max_queue_low", "write_limit_high", "write_limit_low", "id", "logger", "debug",
    "request", "response", "loop", "close_deadline", "send_in_progress", "pending_pings",
    "latency", "keepalive_task", "connection_exc", "connection_lost_waiter", "paused",
    "drain_waiters", "server", "request_rcvd", "recv_messages", "transport",
)  # fmt: skip


class _Sniff:
    """What an ``EdgeConnection`` holds while it reads the request head."""

    __slots__ = ("head", "timer", "transport")

    def __init__(self, transport: asyncio.Transport, timer: asyncio.TimerHandle) -> None:
        self.head = bytearray()
        self.transport = transport
        self.timer = timer


class EdgeConnection(ServerConnection):
    """websockets' connection for one accepted socket, which first reads the request head:
    a WebSocket upgrade goes on as websockets would have it; anything else is handed,
    bytes and all, to an ``HttpConnection`` made by ``http_factory``.

    Every attribute websockets sets is a slot here: in a relay its connections' instance
    dicts stopped sharing their keys (1,584 bytes each instead of 296: tracemalloc, then
    ``sys.getsizeof`` on 10,000 idle WebSockets), so the dict is left empty instead.
    One is named for websockets' version in use by ``_WEBSOCKETS_ATTRIBUTES``; one that a
    later websockets adds still works (it lands in the dict), and a test says so."""

    __slots__ = ("_kept", "_sniff", "pongs", *_WEBSOCKETS_ATTRIBUTES)
    http_factory: Callable[[], HttpConnection]  # set on the subclass edge_connections makes
    head_timeout_s: float

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sniff: _Sniff | None = None
        self._kept = b""  # the start of a text frame still arriving (the read shortcut)
        self.pongs = 0  # every pong the client sent: the relay's keepalive pings are not
        # websockets' (``WsWire.keepalive``), so websockets ignores their pongs

    def acknowledge_pings(self, data: bytes) -> None:
        self.pongs += 1
        super().acknowledge_pings(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Nothing of websockets starts until the head says this is a WebSocket.
        tcp = cast(asyncio.Transport, transport)
        timer = asyncio.get_running_loop().call_later(self.head_timeout_s, tcp.abort)
        self._sniff = _Sniff(tcp, timer)

    def data_received(self, data: bytes) -> None:
        sniff = self._sniff
        if sniff is None:
            # Plain text frames skip websockets' parser (``wsframe.read_with_shortcut``) and
            # go straight to its message queue, as its parser would have put them.
            if self._kept:
                data = self._kept + data
            self._kept = read_with_shortcut(
                self.protocol, data, self._put_text, super().data_received
            )
            return
        sniff.head += data
        end = sniff.head.find(b"\r\n\r\n")
        if end < 0 and len(sniff.head) < MAX_HEAD_BYTES:
            return
        self._sniff = None
        head, transport = bytes(sniff.head), sniff.transport
        sniff.timer.cancel()
        if is_websocket_upgrade(head[: end if end >= 0 else len(head)]):
            super().connection_made(transport)
            super().data_received(head)
            return
        http = self.http_factory()
        transport.set_protocol(http)
        http.connection_made(transport)
        http.data_received(head)

    def _put_text(self, payload: bytes) -> None:
        self.recv_messages.put(Frame(Opcode.TEXT, payload))

    def eof_received(self) -> None:
        # Closed before a whole head (nothing to answer), or websockets' own handling;
        # None lets asyncio close the transport.
        if self._sniff is None:
            kept, self._kept = self._kept, b""
            if kept:  # a frame cut short by the end: websockets' parser says so
                super().data_received(kept)
            super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        sniff = self._sniff
        if sniff is None:
            super().connection_lost(exc)
            return
        self._sniff = None
        sniff.timer.cancel()  # never became a WebSocket: websockets never knew it


def edge_connections(
    http_factory: Callable[[], HttpConnection], head_timeout_s: float
) -> type[EdgeConnection]:
    """The ``create_connection`` class for websockets' ``serve``, bound to this listener."""

    class BoundEdgeConnection(EdgeConnection):
        __slots__ = ()

    BoundEdgeConnection.http_factory = staticmethod(http_factory)
    BoundEdgeConnection.head_timeout_s = head_timeout_s
    return BoundEdgeConnection
