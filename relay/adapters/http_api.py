"""Everything a relay answers over plain HTTP: the HTTP API, SSE, health, directory, pages.

Publishing and history are one-frame sessions: the request becomes the frame a
WebSocket client would send (``relay.protocol.http_api``), a fresh ``ServerSession``
with the request's token checks it exactly as it checks a WebSocket client's (auth,
capabilities, size, validation), and the reply frame is the response body. Nothing
is sticky: any request may land on any relay of any region. An SSE stream is a whole
``Connection`` on an ``SseWire``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

from federation.channel_writes import Failed, Result
from federation.region_log import LogUnavailable
from federation.vclock import VectorClock
from relay import __version__
from relay.adapters import publishing
from relay.adapters.hooks import ClientInfo, Transport
from relay.adapters.http_server import (
    HttpRequest,
    HttpResponse,
    StreamResponse,
    StreamWriter,
    text_response,
)
from relay.adapters.sse import SseWire
from relay.core.capabilities import TokenRejected
from relay.core.channels import Channel, InvalidChannel, validate_channel
from relay.core.hooks import Rejected, Unavailable
from relay.core.rate import TokenBucket
from relay.protocol import http_api, openapi
from relay.protocol.errors import ErrorCode, ProtocolError
from relay.protocol.frames import (
    History,
    Publish,
    ack_frame,
    error_frame,
    history_frame,
    parse_position,
    presence_frame,
)
from relay.protocol.session import (
    Audit,
    PresenceRequest,
    Reply,
    ServerSession,
    rate_limited_frame,
)

if TYPE_CHECKING:
    from relay.adapters.ws_edge import WsEdge

log = logging.getLogger("relaynet.http")

WEB_DIR: Final = Path(__file__).resolve().parent.parent / "web"
STATIC_FILES: Final = {"/": "index.html", "/v1/client.js": "client.js", "/demo.js": "demo.js"}
WS_PATH: Final = "/v1/ws"
MAX_RATE_BUCKETS: Final = 65536
CORS_HEADERS: Final = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"

_requests = itertools.count(1)


class HttpApi:
    def __init__(self, edge: WsEdge) -> None:
        self.edge = edge
        self._openapi: bytes | None = None
        self.sse_streams = 0  # open now, for /metrics
        # Whether the relay's NATS connection is up (the node sets it), for /v1/ready.
        self.nats_connected: Callable[[], bool] = lambda: True
        # HTTP requests have no connection to hold a rate bucket: one per token subject
        # (or client address when anonymous) and kind, the least recently used dropped.
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self.rate_limited = 0

    def _rate_limit(
        self, kind: str, request: HttpRequest, session: ServerSession, channel: str, mid: str | None
    ) -> bytes | None:
        """The ``rate_limited`` reply if this client is above the limit for ``kind``
        (``publish``: limits.publish_rate; reads: limits.subscribe_rate), else None."""
        limits = self.edge.cfg.limits
        who = session.credentials.sub if session.credentials else f"ip:{request.remote}"
        key = (kind, who)
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if kind == "publish":
                bucket = TokenBucket(limits.publish_rate, limits.publish_burst, now)
            else:
                bucket = TokenBucket(limits.subscribe_rate, limits.subscribe_burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > MAX_RATE_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait_s = bucket.take(now)
        if wait_s <= 0:
            return None
        self.rate_limited += 1
        return rate_limited_frame(kind, wait_s, None, Channel(channel), mid)

    async def handle(self, request: HttpRequest) -> HttpResponse | StreamResponse:
        response = await self._route(request)
        body = response.body if isinstance(response, HttpResponse) else b""
        self.edge.stats.http_answered(request.path, request.method, response.status, body)
        return response

    async def _route(self, request: HttpRequest) -> HttpResponse | StreamResponse:
        path = request.path
        if request.method == "OPTIONS":
            return self._preflight(request)
        cors = self._cors(request)
        if cors is None:
            return self.edge.refused_origin(request.header("origin") or "")
        channel_route = http_api.route(path)
        if channel_route is not None and channel_route.kind == "messages":
            if request.method == "POST":
                return _with(await self._publish(request, channel_route.channel), cors)
            if request.method == "GET":
                return _with(await self._history(request, channel_route.channel), cors)
            return _with(_not_allowed("GET, POST"), cors)
        if channel_route is not None:  # presence
            if request.method != "GET":
                return _with(_not_allowed("GET"), cors)
            return _with(await self._presence(request, channel_route.channel), cors)
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET")
        if path == http_api.SSE_PATH:
            return await self._sse(request, cors)
        return _with(self._plain_get(path), cors)

    # --- the simple GETs

    def _plain_get(self, path: str) -> HttpResponse:
        edge = self.edge
        if path == "/v1/health":
            if not edge.available():
                return text_response(503, "nats or jetstream unavailable\n")
            return text_response(200, "ok\n")
        if path == "/v1/ready":
            return self._ready()
        if path == "/v1/ping":  # the cheapest answer there is: clients time it
            return text_response(200, "pong\n")
        if path == "/v1/edges" and edge.directory is not None:
            body = json.dumps(edge.directory.edges()).encode()
            return HttpResponse(
                200, body, (("Content-Type", "application/json"), ("Cache-Control", "no-store"))
            )
        if path == "/v1/openapi.json":
            if self._openapi is None:
                self._openapi = json.dumps(openapi.document(__version__)).encode()
            return HttpResponse(200, self._openapi, (("Content-Type", "application/json"),))
        if path in STATIC_FILES:
            return _static(STATIC_FILES[path])
        if path == "/metrics" and edge.metrics is not None:
            return HttpResponse(
                200, edge.metrics(), (("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),)
            )
        if path == WS_PATH:
            return text_response(426, "relaynet: this endpoint speaks WebSocket\n")
        return text_response(404, f"relaynet: WebSocket endpoint is {WS_PATH}\n")

    # --- CORS and origins

    def _cors(self, request: HttpRequest) -> tuple[tuple[str, str], ...] | None:
        """Headers that let pages of allowed origins read the answer; None: a page of an
        origin ``relay.allowed_origins`` does not list (refused). Requests without an
        Origin (servers, SDKs, tools) always pass."""
        origin = request.header("origin")
        if origin is None:
            return (("Access-Control-Allow-Origin", "*"),)
        if not self.edge.origins.allows(origin):
            return None
        return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))

    def _preflight(self, request: HttpRequest) -> HttpResponse:
        cors = self._cors(request)
        if cors is None:
            return self.edge.refused_origin(request.header("origin") or "")
        return HttpResponse(
            204,
            b"",
            (
                *cors,
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                ("Access-Control-Allow-Headers", CORS_HEADERS),
                ("Access-Control-Max-Age", "600"),
            ),
        )

    # --- one-frame sessions

    def _session(self, request: HttpRequest, who: str) -> tuple[ServerSession, bytes | None]:
        """A session for one request, with its token if it has one; or the error frame
        refusing it."""
        edge = self.edge
        deps = edge.deps()
        session = ServerSession(deps.session_limits, deps.auth)
        try:
            token = http_api.bearer_token(request.header("authorization")) or request.param("token")
        except ProtocolError as exc:
            return session, error_frame(exc.code, exc.message)
        if token is None or not deps.auth.required or deps.auth.external:
            return session, None  # hook mode: see _authed_session
        try:
            credentials = session.authenticate(token)
        except TokenRejected as exc:
            self._audit(Audit("auth_failed", exc.reason, "http"), who)
            return session, error_frame(ErrorCode.UNAUTHORIZED, exc.reason)
        self._audit(Audit("authed", op="http", sub=credentials.sub, jti=credentials.jti), who)
        return session, None

    async def _authed_session(
        self, request: HttpRequest, who: str, transport: Transport = "http"
    ) -> tuple[ServerSession, bytes | None]:
        """``_session``; in hook mode, with the backend's connect hook asked about the
        request's credentials (a bearer token or ``?token=``) and forwarded headers."""
        edge = self.edge
        deps = edge.deps()
        if not deps.auth.external:
            return self._session(request, who)
        session = ServerSession(deps.session_limits, deps.auth)
        try:
            token = http_api.bearer_token(request.header("authorization")) or request.param("token")
        except ProtocolError as exc:
            return session, error_frame(exc.code, exc.message)
        hooks = edge.hooks
        assert hooks is not None  # hook mode has a connect hook (config check)
        headers = hooks.forwarded(dict(request.headers))
        if token is None and not headers:
            return session, None  # no credentials: refused as for a missing token
        verdict = await hooks.connect(
            connection_id=who, transport=transport, credentials=token, remote_addr=request.remote,
            headers=headers,
        )  # fmt: skip
        if isinstance(verdict, Rejected):
            self._audit(Audit("auth_failed", verdict.reason, "http"), who)
            return session, error_frame(ErrorCode.UNAUTHORIZED, verdict.reason)
        if isinstance(verdict, Unavailable):
            return session, error_frame(ErrorCode.UNAVAILABLE, verdict.reason)
        credentials = verdict.credentials
        assert credentials is not None  # a connect accept always has them
        session.grant(credentials)
        self._audit(Audit("authed", op="http", sub=credentials.sub), who)
        return session, None

    async def _hook_publish(
        self, session: ServerSession, frame: Publish, who: str
    ) -> Publish | bytes:
        """The publish to store after the namespace's publish hook (its data maybe
        replaced), or the error frame refusing it."""
        hooks = self.edge.hooks
        if hooks is None or not hooks.publishes(frame.channel):
            return frame
        if frame.id is None:  # the backend is told the id it will be stored under
            frame = msgspec.structs.replace(frame, id=os.urandom(12).hex())
        creds = session.credentials
        sub = None if creds is None else creds.sub
        verdict = await hooks.publish(who, sub, frame)
        if isinstance(verdict, Rejected):
            jti = None if creds is None else creds.jti
            self._audit(Audit("denied", verdict.reason, "publish", frame.channel, sub, jti), who)
            return error_frame(
                ErrorCode.FORBIDDEN, verdict.reason, channel=frame.channel, id=frame.id
            )
        if isinstance(verdict, Unavailable):
            return error_frame(
                ErrorCode.UNAVAILABLE, verdict.reason, channel=frame.channel, id=frame.id
            )
        if verdict.data is not None:
            frame = msgspec.structs.replace(frame, data=verdict.data)
        return frame

    def _run(
        self, session: ServerSession, frame: bytes, who: str
    ) -> Publish | History | PresenceRequest | bytes:
        """The session's verdict on ``frame``: the request to carry out, or a reply."""
        reply: bytes | None = None
        request: Publish | History | PresenceRequest | None = None
        for action in session.receive(frame, time.monotonic()):
            if isinstance(action, Audit):
                self._audit(action, who)
            elif isinstance(action, Reply):
                reply = action.frame
            elif isinstance(action, Publish | History | PresenceRequest):
                request = action
        if request is not None:
            return request
        return reply or error_frame(ErrorCode.BAD_REQUEST, "nothing to do")

    def _audit(self, event: Audit, who: str) -> None:
        if event.event == "auth_failed":
            self.edge.stats.auth_failures[event.op or "http"] += 1
        audit = self.edge.audit
        if audit is not None:
            audit.record(
                event.event,
                connection=who,
                sub=event.sub,
                jti=event.jti,
                channel=event.channel,
                op=event.op,
                reason=event.reason,
            )

    async def _publish(self, request: HttpRequest, channel: str) -> HttpResponse:
        who = f"{self.edge.relay_id}-http-{next(_requests)}"
        session, refused = await self._authed_session(request, who)
        if refused is not None:
            return _reply(refused)
        try:
            key = request.header("idempotency-key")
            frame = http_api.publish_request(channel, request.body, key)
        except ProtocolError as exc:
            return _reply(error_frame(exc.code, exc.message, channel=channel))
        verdict = self._run(session, frame, who)
        if not isinstance(verdict, Publish):
            return _reply(verdict) if isinstance(verdict, bytes) else _internal()
        limited = self._rate_limit("publish", request, session, verdict.channel, verdict.id)
        if limited is not None:
            return _reply(limited)
        started = time.perf_counter()
        hooked = await self._hook_publish(session, verdict, who)
        if isinstance(hooked, bytes):
            return _reply(hooked)
        verdict = hooked
        answered = anyio.Event()
        outcome: list[tuple[str, Result]] = []

        def done(message_id: str, result: Result) -> None:
            outcome.append((message_id, result))
            answered.set()

        # Each request is its own source: requests in flight at once have no order.
        publishing.submit(self.edge.writer, verdict, session.credentials, who, done)
        await answered.wait()
        message_id, result = outcome[0]
        if isinstance(result, Failed):
            failed = error_frame(
                ErrorCode.UNAVAILABLE, result.reason, channel=verdict.channel, id=message_id
            )
            return _reply(failed)
        self.edge.stats.acked(verdict.channel, time.perf_counter() - started)
        return _reply(ack_frame(None, message_id, verdict.channel, result.position), ok=201)

    def _ready(self) -> HttpResponse:
        """Readiness: 200 while this relay takes clients (its NATS and JetStream answer and
        it is not draining), else 503; the body says why either way. Links to peer
        regions are shown, not required: a region cut off still serves its own clients."""
        edge = self.edge
        nats_up = self.nats_connected()
        jetstream = nats_up and edge.available()
        draining = edge.state() == "draining"
        directory = edge.directory
        links = {
            peer.region: (
                "up" if directory is not None and directory.health(peer.region) == "up" else "down"
            )
            for peer in edge.cfg.peers
        }
        ready = jetstream and not draining
        body = {
            "status": "ok" if ready else "unavailable",
            "nats": nats_up,
            "jetstream": jetstream,
            "draining": draining,
            "links": links,
            "region": edge.region,
            "relay": edge.relay_id,
        }
        return HttpResponse(
            200 if ready else 503,
            json.dumps(body).encode(),
            (("Content-Type", "application/json"), ("Cache-Control", "no-store")),
        )

    async def _history(self, request: HttpRequest, channel: str) -> HttpResponse:
        who = f"{self.edge.relay_id}-http-{next(_requests)}"
        session, refused = await self._authed_session(request, who)
        if refused is not None:
            return _reply(refused)
        try:
            frame = http_api.history_request(channel, request.query)
        except ProtocolError as exc:
            return _reply(error_frame(exc.code, exc.message, channel=channel))
        verdict = self._run(session, frame, who)
        if not isinstance(verdict, History):
            return _reply(verdict) if isinstance(verdict, bytes) else _internal()
        limited = self._rate_limit("read", request, session, verdict.channel, None)
        if limited is not None:
            return _reply(limited)
        before = parse_position(verdict.before, None, "before")
        try:
            frames, more = await self.edge.recovery.history(
                Channel(verdict.channel), verdict.limit, before
            )
        except LogUnavailable as exc:
            return _reply(error_frame(ErrorCode.UNAVAILABLE, str(exc), channel=channel))
        return _reply(history_frame(None, verdict.channel, frames, more))

    async def _presence(self, request: HttpRequest, channel: str) -> HttpResponse:
        who = f"{self.edge.relay_id}-http-{next(_requests)}"
        session, refused = await self._authed_session(request, who)
        if refused is not None:
            return _reply(refused)
        verdict = self._run(session, http_api.presence_request(channel), who)
        if isinstance(verdict, bytes):
            return _reply(verdict)
        limited = self._rate_limit("read", request, session, channel, None)
        if limited is not None:
            return _reply(limited)
        presence = self.edge.presence
        if not isinstance(verdict, PresenceRequest) or presence is None:
            return _reply(error_frame(ErrorCode.UNAVAILABLE, "presence is off", channel=channel))
        return _reply(presence_frame(None, verdict.frame.channel, presence.members(channel)))

    # --- SSE

    async def _sse(
        self, request: HttpRequest, cors: tuple[tuple[str, str], ...]
    ) -> HttpResponse | StreamResponse:
        edge = self.edge
        try:
            channels = [validate_channel(c) for c in http_api.sse_channels(request.query)]
            last = request.header("last-event-id") or request.param("last_event_id")
            positions = http_api.decode_event_id(last) if last else {}
            token = http_api.bearer_token(request.header("authorization")) or request.param("token")
        except InvalidChannel as exc:
            return _with(_reply(error_frame(ErrorCode.INVALID_CHANNEL, str(exc))), cors)
        except ProtocolError as exc:
            return _with(_reply(error_frame(exc.code, exc.message)), cors)
        refused = edge.refuse_stream()
        if refused is not None:
            return _with(refused, cors)
        who = f"{edge.relay_id}-sse-{next(_requests)}"
        client: ClientInfo | None = None
        if edge.deps().auth.required:
            # Checked before the 200: a browser's EventSource gives up on an error status
            # (so its SDK fetches a fresh token) but would retry a stream that ends.
            check, failed = await self._authed_session(request, who, "sse")
            if failed is None and check.credentials is None:
                failed = error_frame(ErrorCode.UNAUTHORIZED, "a token is required: ?token=")
            if failed is not None:
                return _with(_reply(failed), cors)
            if edge.deps().auth.external:  # the stream is who the hook just said
                client = ClientInfo("sse", credentials=check.credentials)
        presence = http_api.wants_presence(request.query)
        subscribes = [
            http_api.subscribe_request(c, positions.get(c), ref=i, presence=presence)
            for i, c in enumerate(channels)
        ]
        kept: dict[str, VectorClock] = {c: p for c, p in positions.items() if c in channels}

        async def produce(writer: StreamWriter) -> None:
            wire = SseWire(writer.connection, writer, subscribes, kept, token)
            await wire.start()
            self.sse_streams += 1
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_heartbeats, wire, edge.cfg.relay.heartbeat_s)
                    await edge.serve_wire(wire, client)
                    tg.cancel_scope.cancel()
            finally:
                self.sse_streams -= 1

        headers = (
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-store"),
            ("X-Accel-Buffering", "no"),  # nginx: do not buffer the stream
            *cors,
        )
        return StreamResponse(200, headers, produce)


async def _heartbeats(wire: SseWire, every_s: float) -> None:
    while True:
        await anyio.sleep(every_s)
        wire.heartbeat()


def _reply(frame: bytes, ok: int = 200) -> HttpResponse:
    status, headers = http_api.reply_status(frame, ok)
    return HttpResponse(status, frame, (("Content-Type", "application/json"), *headers))


def _internal() -> HttpResponse:
    return _reply(error_frame(ErrorCode.INTERNAL, "internal error"))


def _with(response: HttpResponse, headers: tuple[tuple[str, str], ...]) -> HttpResponse:
    return HttpResponse(response.status, response.body, (*response.headers, *headers))


def _not_allowed(allow: str) -> HttpResponse:
    return text_response(405, "method not allowed\n", (("Allow", allow),))


def _static(name: str) -> HttpResponse:
    """The browser client and the demo page, shipped inside the package."""
    try:
        body = (WEB_DIR / name).read_bytes()
    except OSError:
        return text_response(404, f"{name} is not installed\n")
    kind = "text/html" if name.endswith(".html") else "application/javascript"
    return HttpResponse(
        200,
        body,
        (("Content-Type", f"{kind}; charset=utf-8"), ("Cache-Control", "no-cache")),
    )
