"""Publishing and reading history over the HTTP API, for backends: no WebSocket.

``HttpClient`` sends each request to one of its relay URLs (any relay of any region
answers alike) and retries, with the same message id, until it is stored or
``timeout_s`` has passed: on a connection failure it moves to the next URL; on a
temporary refusal (``unavailable``, ``rate_limited``: 503/429) it waits as told
(``Retry-After``) or backs off. A publish is therefore stored once however often it
is retried, on whichever relay. Refusals that retrying cannot fix (a bad channel, a
forbidden one, a message too large) raise ``RequestRefused`` at once.

    api = HttpClient(["http://127.0.0.1:8701"], token=token)
    ack = await api.publish("orders:42", {"status": "shipped"})
    page = await api.history("orders:42", limit=20)
    members = await api.presence("chat:lobby")
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, urlencode

import anyio
import h11
import msgspec

from federation.vclock import ClockError, VectorClock
from relay.client.errors import NoEdgeReachable, RequestRefused
from relay.client.history import history_decoder
from relay.client.http import HttpError, HttpResult, http_request
from relay.client.page import HistoryPage
from relay.client.presence import Member, members_of
from relay.client.session import Acked, messages_of, new_publish_id
from relay.protocol.frames import MAX_HISTORY_LIMIT, AckFrame, ErrorFrame, PresenceFrame

_ack: Final = msgspec.json.Decoder(AckFrame)
_error: Final = msgspec.json.Decoder(ErrorFrame)
_presence: Final = msgspec.json.Decoder(PresenceFrame)
_encode: Final = msgspec.json.Encoder().encode

FIRST_BACKOFF_S: Final = 0.1
MAX_BACKOFF_S: Final = 2.0


class HttpClient:
    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        token_provider: Callable[[], Awaitable[str | None]] | None = None,
        timeout_s: float = 10.0,
        request_timeout_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``urls``: relays' base URLs (``http://host:port`` or ``https://...``), tried
        in turn. ``token`` or ``token_provider`` (asked before every request, so it can
        renew): sent as ``Authorization: Bearer``."""
        bases = [urls] if isinstance(urls, str) else list(urls)
        if not bases:
            raise ValueError("HttpClient needs at least one relay URL")
        self.urls = [_base(u) for u in bases]
        self.token = token
        self.token_provider = token_provider
        self.timeout_s = timeout_s
        self.request_timeout_s = request_timeout_s
        self.ssl_context = ssl_context
        self._next = 0

    async def publish(
        self, channel: str, data: Any, *, id: str | None = None, data_json: bytes | None = None
    ) -> Acked:
        """Store ``data`` (any JSON value; or ``data_json``, already encoded) on
        ``channel``; returns once it is stored. ``id`` (default: a random one, kept for
        every retry) makes the publish idempotent: the same id is stored once."""
        message_id = id if id is not None else new_publish_id()
        raw = data_json if data_json is not None else _encode(data)
        body = b'{"data":' + raw + b',"id":' + _encode(message_id) + b"}"
        result = await self._request(
            "POST", f"/v1/channels/{quote(channel, safe='')}/messages", channel, body
        )
        ack = _ack.decode(result.body)
        return Acked(ack.id, ack.channel, _position(ack.position))

    async def history(
        self, channel: str, *, limit: int = 100, before: Mapping[str, int] | None = None
    ) -> HistoryPage:
        """A page of the channel's stored messages, oldest first (the newest page, or the
        one before ``before``, a position such as ``page.messages[0].position``)."""
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_HISTORY_LIMIT}, not {limit!r}")
        query: dict[str, str] = {"limit": str(limit)}
        if before is not None:
            query["before"] = _encode(dict(before)).decode()
        path = f"/v1/channels/{quote(channel, safe='')}/messages?{urlencode(query)}"
        result = await self._request("GET", path, channel, None)
        try:
            frame = history_decoder.decode(result.body)
            return HistoryPage(frame.channel, messages_of(frame), frame.more)
        except (msgspec.DecodeError, ClockError) as exc:
            raise RequestRefused("bad_reply", f"history: {exc}", channel) from None

    async def presence(self, channel: str) -> tuple[Member, ...]:
        """The channel's members now, from every region (``GET .../presence``). Entering
        needs a connection: see ``client.presence(channel)``."""
        path = f"/v1/channels/{quote(channel, safe='')}/presence"
        result = await self._request("GET", path, channel, None)
        try:
            return members_of(_presence.decode(result.body))
        except msgspec.DecodeError as exc:
            raise RequestRefused("bad_reply", f"presence: {exc}", channel) from None

    async def _request(
        self, method: str, path: str, channel: str, body: bytes | None
    ) -> HttpResult:
        failures: dict[str, str] = {}
        backoff = FIRST_BACKOFF_S
        refused: RequestRefused | None = None
        with anyio.move_on_after(self.timeout_s):
            while True:
                base = self.urls[self._next % len(self.urls)]
                headers = [("Content-Type", "application/json")]
                token = await self.token_provider() if self.token_provider else self.token
                if token is not None:
                    headers.append(("Authorization", f"Bearer {token}"))
                try:
                    result = await http_request(
                        method,
                        base + path,
                        body=body,
                        headers=headers,
                        timeout_s=self.request_timeout_s,
                        ssl_context=self.ssl_context,
                    )
                except (
                    OSError,
                    TimeoutError,
                    HttpError,
                    anyio.BrokenResourceError,
                    h11.ProtocolError,
                ) as exc:
                    failures[base] = str(exc) or type(exc).__name__
                    self._next += 1  # another relay, maybe another region
                    await anyio.sleep(backoff)
                    backoff = min(MAX_BACKOFF_S, backoff * 2)
                    continue
                if 200 <= result.status < 300:
                    return result
                refused = _refusal(result, channel)
                if not refused.temporary:
                    raise refused
                failures[base] = str(refused)
                wait_s = _retry_after(result) or backoff
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                if result.status >= 500:
                    self._next += 1  # that relay or its region is in trouble: try another
                await anyio.sleep(wait_s)
        if refused is not None:
            raise refused
        raise NoEdgeReachable(self.timeout_s, failures)


def _base(url: str) -> str:
    url = url.rstrip("/")
    for ws, plain in (("wss://", "https://"), ("ws://", "http://")):
        if url.startswith(ws):  # a seed given as the WebSocket URL works too
            url = plain + url[len(ws) :]
    return url.removesuffix("/v1/ws")


def _refusal(result: HttpResult, channel: str) -> RequestRefused:
    try:
        error = _error.decode(result.body)
    except msgspec.DecodeError:
        text = result.body[:200].decode(errors="replace").strip()
        return RequestRefused(
            f"http_{result.status}", text, channel, temporary=result.status >= 500
        )
    return RequestRefused(error.code, error.message, channel, temporary=error.temporary)


def _retry_after(result: HttpResult) -> float | None:
    value = result.header("retry-after")
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None


def _position(raw: dict[str, int]) -> VectorClock:
    try:
        return VectorClock.parse(raw)
    except ClockError as exc:
        raise RequestRefused("bad_reply", f"ack: {exc}", None) from None
