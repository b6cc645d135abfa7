"""Minimal HTTP/1.1 requests, on h11: the directory, the RTT probes and the HTTP API.

One request per connection (``Connection: close``): the relay's endpoints answer
and close. No proxy is ever used (the probes must measure the path the
WebSocket takes), every request is bounded in time (``timeout_s``, connecting
included) and in size (``MAX_RESPONSE_BYTES``). h11 does the parsing (status
line, headers, Content-Length, chunked bodies, a body that ends at EOF); this
module only moves bytes and times them. The elapsed time is measured from
sending the request to the end of the response, not counting the TCP (or TLS)
handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import anyio
import h11
from anyio.abc import ByteStream

MAX_RESPONSE_BYTES: Final = 1024 * 1024
USER_AGENT: Final = "relaynet-client"


class HttpError(Exception):
    """The peer answered something that is not an HTTP/1.1 response we can read."""


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: tuple[tuple[str, str], ...]  # names lower-cased
    body: bytes
    elapsed_s: float  # from sending the request to the whole response

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


async def http_get(
    url: str,
    *,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[int, bytes, float]:
    """GET ``url``: (status, body, seconds from sending the request to the whole response);
    see ``http_request``."""
    result = await http_request(
        "GET", url, timeout_s=timeout_s, ssl_context=ssl_context, server_hostname=server_hostname
    )
    return result.status, result.body, result.elapsed_s


async def http_request(
    method: str,
    url: str,
    *,
    timeout_s: float,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> HttpResult:
    """One request to ``url`` (``body`` sent with its Content-Length), on a connection
    of its own.

    For https: ``ssl_context`` verifies the server (default: the system's CAs), against
    ``server_hostname`` (default: the URL's host; the relay's own name when ``url`` was
    dialed to another address).

    Raises ``OSError`` (refused, unreachable, reset, and ``ssl.SSLError`` for a
    certificate that does not verify), ``TimeoutError`` (past ``timeout_s``),
    ``anyio.BrokenResourceError`` or ``HttpError``.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname
    if host is None:
        raise HttpError(f"no host in {url!r}")
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = parts.netloc.rsplit("@", 1)[-1]
    if not (target.isascii() and authority.isascii()):
        raise HttpError(f"{url!r} is not ASCII")
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_BYTES)
    try:
        sent_headers = [
            ("Host", authority),
            ("User-Agent", USER_AGENT),
            ("Accept", "*/*"),
            ("Connection", "close"),
            *headers,
        ]
        if body is not None:
            sent_headers.append(("Content-Length", str(len(body))))
        request = conn.send(h11.Request(method=method, target=target, headers=sent_headers))
        if body:
            request += conn.send(h11.Data(data=body))
        request += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError as exc:
        raise HttpError(f"cannot request {url!r}: {exc}") from None
    with anyio.fail_after(timeout_s):
        stream = await open_stream(host, port, secure, ssl_context, server_hostname)
        async with stream:
            started = anyio.current_time()
            await stream.send(request)
            status, got_headers, got = await _read_response(conn, stream, url)
            elapsed = anyio.current_time() - started
    return HttpResult(status, got_headers, got, elapsed)


async def _read_response(
    conn: h11.Connection, stream: ByteStream, url: str
) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(f"not an HTTP/1.1 response from {url}: {exc}") from None
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                data = b""  # h11 decides whether the response was complete
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = tuple(
                (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
            )
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_RESPONSE_BYTES:
                raise HttpError(f"response from {url} larger than {MAX_RESPONSE_BYTES} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert status is not None  # h11 gives the response head first
            return status, headers, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpError(f"{url} closed the connection before answering")
        # h11.InformationalResponse (1xx): the real answer follows.


async def open_stream(
    host: str,
    port: int,
    secure: bool,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> ByteStream:
    """A TCP connection, TLS on top for https (verified against ``server_hostname``,
    default ``host``: the relay's own name when a URL was dialed to another address)."""
    if not secure:
        return await anyio.connect_tcp(host, port)
    return await anyio.connect_tcp(
        host,
        port,
        ssl_context=ssl_context or ssl.create_default_context(),
        tls_hostname=server_hostname or host,
        tls_standard_compatible=False,
    )
