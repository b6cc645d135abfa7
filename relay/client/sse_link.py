"""One edge reached over Server-Sent Events and the HTTP API instead of a WebSocket.

Theory of operation
-------------------
``transport.py`` decides when; this module is the I/O of that fallback. The client's
``ClientSession`` is the same as on a WebSocket, so ids, positions, deduplication and
causal contexts are too; only the wire differs:

* **Streams.** ``GET /v1/sse?channels=...`` (at most ``MAX_SSE_CHANNELS`` a stream,
  so more channels take more streams), with a ``Last-Event-ID`` built from the
  session's positions (``session.on_stream``), never from the relay's event ids:
  what the application was handed decides where to resume, on any relay of any
  region. Each event's data is a server frame, handled by the session as if it came
  on a WebSocket (the relay numbers a stream's subscribes 0, 1, ...: those refs are
  mapped to the session's). A stream with a channel subscribed with presence asks
  for presence (``presence=1``: the relay then sends the member list and events of
  each of its channels; the session keeps those of the channels that asked).
* **A new channel set reopens every stream** (subscribe, unsubscribe, a retry after
  a temporary subscribe error, a token about to expire, since the token goes with
  each stream's request): the streams are closed once no message is half delivered,
  and opened again from the positions as they are then. What a new stream repeats,
  the session drops; what the old one had not sent yet, the new one replays.
* **Publishes** go one at a time per channel (``POST /v1/channels/{c}/messages`` with
  the publish's id and causal context, taken at each send): HTTP requests in flight
  together have no order, so a channel's publishes are stored, and acked, in the
  order they were made only if each waits for the one before. Channels go side by
  side. A temporary refusal waits (``Retry-After``, else a backoff) and sends the
  same id again.
* **The end** is the relay's ``end`` event (its close code, e.g. draining after a
  ``redirect``), a stream that ends or stays silent past the idle timeout (the
  relay sends a heartbeat comment every ``heartbeat_s``), or a publish or history
  request that fails on the network: ``serve()`` returns how it ended, and the
  supervisor decides as after a WebSocket's close. Pending publishes stay pending.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import anyio
import h11
import msgspec
from anyio.abc import TaskGroup

from federation.vclock import ClockError, VectorClock
from relay.client.directory import Dial
from relay.client.endpoints import endpoint, is_secure
from relay.client.errors import RequestRefused
from relay.client.history import history_decoder
from relay.client.http import HttpResult, http_request
from relay.client.page import HistoryPage
from relay.client.presence import Member, members_of
from relay.client.probing import NETWORK_ERRORS, describe_failure
from relay.client.session import (
    Acked,
    BadFrame,
    ClientSession,
    Connected,
    ErrorReceived,
    Event,
    Redirected,
    StreamPlan,
    TokenExpiring,
    messages_of,
    renewal_delay_s,
)
from relay.client.sse import SseEvent, sse_stream
from relay.protocol.errors import CloseCode
from relay.protocol.frames import MAX_HISTORY_LIMIT, ErrorFrame, PresenceFrame
from relay.protocol.http_api import MAX_SSE_CHANNELS, SSE_PATH, encode_event_id

log = logging.getLogger("relaynet.client")

# RFC 6455's "connection lost", for a stream that ended without an `end` event.
ABNORMAL_CLOSURE: Final = 1006
FIRST_BACKOFF_S: Final = 0.1
MAX_BACKOFF_S: Final = 5.0
# A token provider that failed: ask it again after this.
TOKEN_RETRY_S: Final = 1.0
REQUEST_ERRORS: Final = (*NETWORK_ERRORS, anyio.ClosedResourceError, h11.ProtocolError)


@dataclass(frozen=True)
class LinkEnded:
    code: int
    reason: str
    silent: bool = False
    """It went quiet (no event or heartbeat in time), as a frozen relay does."""


class OpenFailed(Exception):
    """The streams could not be opened (the reason is the message)."""


class LinkLost(Exception):
    """A request failed because the edge is gone: ask again on the next connection."""


class _Head(msgspec.Struct):
    op: str = ""


class _End(msgspec.Struct):
    code: int = ABNORMAL_CLOSURE
    reason: str = ""


_head: Final = msgspec.json.Decoder(_Head)
_end: Final = msgspec.json.Decoder(_End)
_error: Final = msgspec.json.Decoder(ErrorFrame)
_presence: Final = msgspec.json.Decoder(PresenceFrame)


class SseLink:
    def __init__(
        self,
        url: str,
        session: ClientSession,
        dispatch: Callable[[Event], Awaitable[None]],
        *,
        token_provider: Callable[[], Awaitable[str | None]] | None,
        dial: Dial,
        ssl_context: ssl.SSLContext | None,
        open_timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        """``url``: the edge as the directory names it (the token goes to it only);
        ``dial`` maps it to what is opened. ``dispatch`` gets every event for the
        application (messages, acks, subscribed, errors, redirects)."""
        self.url = url
        dialed = dial(url)
        self._base = endpoint(dialed).http_base
        self._hostname = urlsplit(url).hostname if is_secure(dialed) else None
        self._session = session
        self._dispatch = dispatch
        self._token_provider = token_provider
        self._ssl_context = ssl_context
        self._open_timeout_s = open_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._streams: list[tuple[StreamPlan, AsyncIterator[SseEvent]]] = []
        self._stack: AsyncExitStack | None = None
        self._changed = anyio.Event()  # a reopen was asked for, or the link ended
        self._reopen = False
        self._wake = anyio.Event()  # publishes to send
        self._busy: set[str] = set()  # channels with a lane running
        self._tg: TaskGroup | None = None
        self.ended: LinkEnded | None = None
        self._ended_event = anyio.Event()
        self.exp: float | None = None
        """When the token of the streams expires (from their ``connected``)."""

    # --- opening ------------------------------------------------------------------------

    async def open(self) -> Connected | Redirected | None:
        """Open the streams the session needs: the first ``connected`` (None: no channel
        yet, nothing to open), or the relay's ``redirect``; ``OpenFailed`` if refused."""
        plans = self._session.on_stream(MAX_SSE_CHANNELS)
        stack = AsyncExitStack()
        hello: Connected | None = None
        try:
            token = await self._token()
            for plan in plans:
                answer, events = await self._open_stream(stack, plan, token)
                if isinstance(answer, Redirected):
                    await stack.aclose()
                    return answer
                hello = hello or answer
                self._streams.append((plan, events))
        except BaseException:
            self._streams = []
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            raise
        self._stack = stack
        return hello

    async def _open_stream(
        self, stack: AsyncExitStack, plan: StreamPlan, token: str | None
    ) -> tuple[Connected | Redirected, AsyncIterator[SseEvent]]:
        params = {"channels": ",".join(plan.channels)}
        if plan.presence:
            params["presence"] = "1"
        query = urlencode(params)
        headers = self._auth(token)
        if plan.positions:
            headers.append(("Last-Event-ID", encode_event_id(dict(plan.positions))))
        try:
            status, events = await stack.enter_async_context(
                sse_stream(
                    f"{self._base}{SSE_PATH}?{query}",
                    headers=headers,
                    connect_timeout_s=self._open_timeout_s,
                    idle_timeout_s=lambda: self._idle_timeout_s,
                    ssl_context=self._ssl_context,
                    server_hostname=self._hostname,
                )
            )
            if status != 200:
                raise OpenFailed(f"HTTP {status} for {SSE_PATH}")
            with anyio.fail_after(self._open_timeout_s):
                first = await anext(events, None)
        except REQUEST_ERRORS as exc:
            raise OpenFailed(describe_failure(exc, self._open_timeout_s)) from None
        if first is None:
            raise OpenFailed("the event stream ended before `connected`")
        for event in self._session.receive(first.data):
            if isinstance(event, Connected):
                self._connected(event)
                return event, events
            if isinstance(event, Redirected):
                return event, events
            if isinstance(event, ErrorReceived):
                raise OpenFailed(f"refused: {event.code}: {event.message}")
        raise OpenFailed("the first event was not `connected`: not a relay?")

    def _connected(self, event: Connected) -> None:
        self.exp = event.exp
        if event.heartbeat_s is not None:
            # Two heartbeats missed, and some slack: a relay that went quiet.
            self._idle_timeout_s = 2 * event.heartbeat_s + 1.0
        if event.exp is not None and self._token_provider is not None and self._tg is not None:
            self._tg.start_soon(self._renew_at, event.exp)

    # --- serving ------------------------------------------------------------------------

    async def serve(self) -> LinkEnded:
        """Read, publish and reopen until the link ends; how it ended."""
        async with anyio.create_task_group() as outer:
            self._tg = outer
            if self.exp is not None and self._token_provider is not None:
                outer.start_soon(self._renew_at, self.exp)
            outer.start_soon(self._lanes)
            while self.ended is None:
                async with anyio.create_task_group() as tg:
                    for plan, events in self._streams:
                        tg.start_soon(self._read, plan, events)
                    await self._changed.wait()
                    tg.cancel_scope.cancel()
                await self._close_streams()
                self._changed = anyio.Event()
                if self.ended is None and self._reopen:
                    self._reopen = False
                    await self._reopen_streams()
            outer.cancel_scope.cancel()
        await self._close_streams()
        assert self.ended is not None
        return self.ended

    async def _reopen_streams(self) -> None:
        try:
            answer = await self.open()
        except OpenFailed as exc:
            self.end(ABNORMAL_CLOSURE, f"reopening the event stream: {exc}")
            return
        if answer is not None:
            await self._deliver(answer)  # the new streams' relay; or where to go instead
        if isinstance(answer, Redirected):
            self.end(CloseCode.GOING_AWAY, "redirected")

    async def _close_streams(self) -> None:
        stack, self._stack, self._streams = self._stack, None, []
        if stack is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._open_timeout_s):
                await stack.aclose()

    async def _read(self, plan: StreamPlan, events: AsyncIterator[SseEvent]) -> None:
        try:
            async for event in events:
                if event.event == "end":
                    try:
                        end = _end.decode(event.data)
                    except msgspec.DecodeError:
                        end = _End(reason="bad end event")
                    self.end(end.code, end.reason)
                    return
                data = event.data
                if event.event in ("subscribed", "error"):
                    data = _session_ref(data, plan.first_ref)
                for received in self._session.receive(data):
                    if isinstance(received, Connected):
                        self._connected(received)
                        await self._deliver(received)
                    elif isinstance(received, TokenExpiring):
                        self.reopen()  # the reopened stream carries a fresh token
                    else:
                        await self._deliver(received)
        except TimeoutError:
            silent = f"no event or heartbeat for {self._idle_timeout_s:g} s"
            self.end(ABNORMAL_CLOSURE, silent, silent=True)
            return
        except REQUEST_ERRORS as exc:
            self.end(ABNORMAL_CLOSURE, f"event stream failed: {describe_failure(exc)}")
            return
        self.end(ABNORMAL_CLOSURE, "the event stream ended")

    async def _deliver(self, event: Event) -> None:
        # Never cut in half by a reopen: the session has already counted it as delivered.
        with anyio.CancelScope(shield=True):
            await self._dispatch(event)

    async def _renew_at(self, exp: float) -> None:
        await anyio.sleep(renewal_delay_s(exp, time.time()))
        if self.exp == exp:
            self.reopen()

    # --- what the client asks for -------------------------------------------------------

    def requested(self, frame: bytes) -> None:
        """A frame the session made for the relay: on SSE, what it stands for."""
        op = _head.decode(frame).op
        if op in ("subscribe", "unsubscribe"):
            self.reopen()
        elif op == "publish":
            self._wake.set()
        # `auth`: every stream and request asks the token provider itself.

    def reopen(self) -> None:
        """Open the streams again with the session's channels and positions as they are."""
        self._reopen = True
        self._changed.set()

    def end(self, code: int, reason: str, *, silent: bool = False) -> None:
        if self.ended is None:
            self.ended = LinkEnded(code, reason, silent)
            self._changed.set()
            self._ended_event.set()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self.end(code, reason)

    async def wait_ended(self) -> None:
        await self._ended_event.wait()

    async def history(
        self, channel: str, limit: int, before: Mapping[str, int] | None
    ) -> HistoryPage:
        """``GET /v1/channels/{channel}/messages``; ``LinkLost`` if the edge is gone,
        ``RequestRefused`` if the relay says no."""
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_HISTORY_LIMIT}, not {limit!r}")
        query = {"limit": str(limit)}
        if before is not None:
            query["before"] = msgspec.json.encode(VectorClock.parse(dict(before))).decode()
        path = f"/v1/channels/{quote(channel, safe='')}/messages?{urlencode(query)}"
        result = await self._request("GET", path, None)
        if result.status == 200:
            try:
                frame = history_decoder.decode(result.body)
                return HistoryPage(frame.channel, messages_of(frame), frame.more)
            except (msgspec.DecodeError, ClockError) as exc:
                raise RequestRefused("bad_reply", f"history: {exc}", channel) from None
        raise self._refusal("history", channel, result)

    async def members(self, channel: str) -> tuple[Member, ...]:
        """``GET /v1/channels/{channel}/presence``; ``LinkLost`` if the edge is gone,
        ``RequestRefused`` if the relay says no."""
        path = f"/v1/channels/{quote(channel, safe='')}/presence"
        result = await self._request("GET", path, None)
        if result.status == 200:
            try:
                return members_of(_presence.decode(result.body))
            except msgspec.DecodeError as exc:
                raise RequestRefused("bad_reply", f"presence: {exc}", channel) from None
        raise self._refusal("presence", channel, result)

    def _refusal(self, what: str, channel: str, result: HttpResult) -> Exception:
        """What a request's error answer means: ``RequestRefused``; or ``LinkLost`` (and
        the link ends) when it is not the API answering (a proxy's error page), so that
        the request is asked again on the next connection."""
        try:
            error = _error.decode(result.body)
        except msgspec.DecodeError:
            self.end(ABNORMAL_CLOSURE, f"{what} answered HTTP {result.status}")
            return LinkLost(f"{what}: HTTP {result.status}")
        return RequestRefused(error.code, error.message, channel, temporary=error.temporary)

    # --- publishing ---------------------------------------------------------------------

    async def _lanes(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                self._wake = anyio.Event()
                for channel in dict.fromkeys(self._session.pending.values()):
                    if channel not in self._busy:
                        self._busy.add(channel)
                        tg.start_soon(self._lane, channel)
                await self._wake.wait()

    async def _lane(self, channel: str) -> None:
        """This channel's pending publishes, oldest first, each once the one before it
        is acked (or refused for good)."""
        backoff = FIRST_BACKOFF_S
        try:
            while True:
                pending = self._session.pending
                message_id = next((i for i, c in pending.items() if c == channel), None)
                if message_id is None:
                    return
                _, body = self._session.http_publish(message_id)
                path = f"/v1/channels/{quote(channel, safe='')}/messages"
                try:
                    result = await self._request("POST", path, body)
                except LinkLost:
                    return
                wait_s: float | None = None
                for event in self._session.publish_replied(message_id, result.body):
                    if isinstance(event, ErrorReceived) and event.temporary:
                        ms = event.retry_after_ms
                        wait_s = ms / 1000 if ms is not None else backoff
                        backoff = min(MAX_BACKOFF_S, backoff * 2)
                    elif isinstance(event, BadFrame):
                        # Not the API answering (a proxy's error page): the path is broken.
                        self.end(ABNORMAL_CLOSURE, f"publish answered HTTP {result.status}")
                        return
                    else:
                        if isinstance(event, Acked):
                            backoff = FIRST_BACKOFF_S
                        await self._deliver(event)
                if wait_s is not None:
                    await anyio.sleep(wait_s)
        finally:
            self._busy.discard(channel)
            self._wake.set()

    # --- helpers ------------------------------------------------------------------------

    async def _request(self, method: str, path: str, body: bytes | None) -> HttpResult:
        """One request to this edge; ``LinkLost`` (and the link ends) if it fails."""
        while True:
            try:
                token = await self._token()
                break
            except OpenFailed:
                await anyio.sleep(TOKEN_RETRY_S)
        headers = self._auth(token)
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        try:
            return await http_request(
                method,
                self._base + path,
                body=body,
                headers=headers,
                timeout_s=self._open_timeout_s,
                ssl_context=self._ssl_context,
                server_hostname=self._hostname,
            )
        except REQUEST_ERRORS as exc:
            reason = f"{method} {path.split('?')[0]}: {describe_failure(exc)}"
            self.end(ABNORMAL_CLOSURE, reason)
            raise LinkLost(reason) from None

    async def _token(self) -> str | None:
        if self._token_provider is None:
            return None
        try:
            return await self._token_provider()
        except Exception as exc:
            log.exception("token provider failed")
            raise OpenFailed(f"token provider failed: {exc!r}") from None

    @staticmethod
    def _auth(token: str | None) -> list[tuple[str, str]]:
        return [] if token is None else [("Authorization", f"Bearer {token}")]


def _session_ref(data: bytes, first_ref: int) -> bytes:
    """A stream's reply with the ref the session gave its subscribe (the relay numbers a
    stream's subscribes from 0)."""
    try:
        frame: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data  # the session says what is wrong with it
    if not isinstance(frame, dict):
        return data
    ref = frame.get("ref")
    if isinstance(ref, int) and not isinstance(ref, bool) and ref >= 0:
        frame["ref"] = first_ref + ref
        return msgspec.json.encode(frame)
    return data
