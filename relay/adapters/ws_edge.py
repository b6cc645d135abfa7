"""The relay's listener: ``/v1/ws`` speaks protocol v1 over WebSocket; every other request
is plain HTTP (``relay.adapters.http_api``: the HTTP API, SSE, health, directory, pages),
on the same port: each new connection's request head decides (``http_server``).

With ``[relay] tls_cert_file`` the one listener speaks only TLS (wss:// and https://
alike). A WebSocket upgrade from a browser page whose origin ``allowed_origins`` does
not list gets 403 before anything else is looked at.
"""

from __future__ import annotations

import collections
import contextlib
import http
import itertools
import logging
import math
import resource
import sys
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup, TaskStatus
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from federation.adapters.region_writer import RegionWriter
from relay.adapters.audit import AuditLog
from relay.adapters.connection import Connection, ConnectionDeps
from relay.adapters.directory import EdgeDirectory
from relay.adapters.feed_manager import FeedManager
from relay.adapters.hooks import ClientInfo, Hooks
from relay.adapters.http_api import HttpApi
from relay.adapters.http_server import (
    EdgeConnection,
    HttpConnection,
    HttpResponse,
    edge_connections,
    text_response,
)
from relay.adapters.log_reader import LogReader
from relay.adapters.presence import PresenceService
from relay.adapters.stats import RelayStats
from relay.adapters.tls import server_ssl_context
from relay.adapters.tokens import session_auth
from relay.adapters.wire import Wire, WsWire
from relay.config.schema import RelayConfig
from relay.core.connections_per_sub import ConnectionsPerSub
from relay.core.origins import OriginPolicy
from relay.core.redirect import RelayState
from relay.protocol.errors import CloseCode
from relay.protocol.frames import redirect_frame
from relay.protocol.session import SessionLimits

_WEBSOCKETS_LOG = logging.getLogger("websockets.server")
log = logging.getLogger("relaynet.edge")

# File descriptors kept free of client connections: NATS, the store, the health and
# metrics endpoints, and the brief accept-then-refuse of a client over the limit.
RESERVED_FDS = 64


def connection_limit(configured: int) -> int:
    """``limits.max_connections``, and never more than the process's file-descriptor limit
    leaves room for: out of descriptors, a relay can neither accept nor refuse (the accept
    loop spins, health stops answering), so it refuses (redirect, 1013) before that. The
    soft limit is raised to the hard one first, as servers commonly do (1024 is a common
    soft default, far below what a relay holds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    room = max(1, soft - RESERVED_FDS) if soft != resource.RLIM_INFINITY else sys.maxsize
    return min(configured, room) if configured else room


WS_PATH = "/v1/ws"
# A new connection must send its whole request head within this long.
HEAD_TIMEOUT_S = 10.0


class WsEdge:
    def __init__(
        self, cfg: RelayConfig, feeds: FeedManager, writer: RegionWriter, recovery: LogReader
    ) -> None:
        self.cfg = cfg
        self.region = cfg.region.name
        self.relay_id = cfg.relay.id
        self.feeds = feeds
        self.writer = writer
        self.recovery = recovery
        self.connections: set[Connection] = set()
        self.connection_limit = connection_limit(cfg.limits.max_connections)
        # Key files are read here, once: a relay that cannot verify tokens does not start.
        self.auth = session_auth(cfg.auth)
        # So are the certificate and key: a relay configured for TLS never serves plain text.
        self.ssl = server_ssl_context(cfg.relay)
        self.origins = OriginPolicy(cfg.relay.allowed_origins)
        self.per_sub = ConnectionsPerSub(cfg.limits.max_connections_per_sub)
        self.hooks = Hooks.from_config(cfg)  # hook secrets are read here, once, too
        self.refused_origins = 0  # WebSocket upgrades refused for their Origin
        self.metrics: Callable[[], bytes] | None = None
        self.audit: AuditLog | None = None  # set by the node before run()
        self.presence: PresenceService | None = None  # ditto
        # What every connection gets of this relay; made once the task group runs.
        self._deps: ConnectionDeps | None = None
        self.directory: EdgeDirectory | None = None
        self.port: int | None = None
        # Whether this relay reaches its NATS and JetStream (the node keeps it up to date).
        self.available: Callable[[], bool] = lambda: True
        self._stop = anyio.Event()
        self.stopped = anyio.Event()
        self._all_closed = anyio.Event()
        self._server: Server | None = None
        self._spread = itertools.count()
        # (reason, "sibling" | "none") -> clients: for /metrics
        self.redirects: collections.Counter[tuple[str, str]] = collections.Counter()
        self.stats = RelayStats(lambda channel: cfg.namespace_for(channel).name)
        self.http = HttpApi(self)
        self._http_connections: set[HttpConnection] = set()

    def _connection_deps(self, tasks: TaskGroup) -> ConnectionDeps:
        cfg = self.cfg
        limits = cfg.limits
        return ConnectionDeps(
            region=self.region,
            relay_id=self.relay_id,
            heartbeat_s=cfg.relay.heartbeat_s,
            max_frame_bytes=limits.max_frame_bytes,
            outbox_max_messages=limits.outbox_max_messages,
            outbox_max_bytes=limits.outbox_max_bytes,
            write_timeout_s=limits.write_timeout_s,
            session_limits=SessionLimits(
                max_subscriptions=limits.max_subscriptions,
                max_errors_per_minute=limits.max_errors_per_minute,
                max_message_bytes=lambda ch: cfg.namespace_for(ch).max_message_bytes,
                publish_rate=limits.publish_rate,
                publish_burst=limits.publish_burst,
                subscribe_rate=limits.subscribe_rate,
                subscribe_burst=limits.subscribe_burst,
                auth_timeout_s=cfg.auth.auth_timeout_s,
            ),
            feeds=self.feeds,
            writer=self.writer,
            recovery=self.recovery,
            tasks=tasks,
            auth=self.auth,
            audit=self.audit,
            presence=self.presence,
            per_sub=self.per_sub,
            hooks=self.hooks,
            stats=self.stats,
        )

    def state(self) -> RelayState:
        """What this relay's beats tell the region (and its redirects about the others)."""
        if self._stop.is_set():
            return "draining"
        return "full" if len(self.connections) >= self.connection_limit else "up"

    def _redirect(self, reason: str) -> bytes | None:
        """A ``redirect`` frame to where a client should go instead, if anywhere."""
        if self.directory is None:
            self.redirects[(reason, "none")] += 1
            return None
        target = self.directory.redirect(next(self._spread))
        self.redirects[(reason, "none" if target is None else "sibling")] += 1
        if target is None:
            return None
        return redirect_frame(target.url, target.region, reason)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """WebSocket upgrades only: every other request is served by ``self.http``."""
        path = request.path.split("?", 1)[0]
        if path != WS_PATH:
            return self._plain(
                http.HTTPStatus.NOT_FOUND, f"relaynet: WebSocket endpoint is {WS_PATH}\n"
            )
        refused = self._refuse_origin(request.headers)
        if refused is not None:
            return refused
        if not self.cfg.relay.websocket:
            return self._plain(
                http.HTTPStatus.FORBIDDEN,
                "relaynet: WebSocket is off on this relay (relay.websocket); use SSE at "
                "/v1/sse and the HTTP API\n",
            )
        if self._stop.is_set():
            return self._plain(http.HTTPStatus.SERVICE_UNAVAILABLE, "relay is shutting down\n")
        if not self.available():
            return self._plain(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "relay cannot reach NATS/JetStream\n"
            )
        return None

    def _refuse_origin(self, headers: Headers) -> Response | None:
        """403 for a browser page of an origin ``relay.allowed_origins`` does not list."""
        values = headers.get_all("Origin")
        if not values or (len(values) == 1 and self.origins.allows(values[0])):
            return None
        shown = values[0] if len(values) == 1 else None
        return self._plain(http.HTTPStatus.FORBIDDEN, self._origin_refusal(shown))

    def _origin_refusal(self, origin: str | None) -> str:
        self.refused_origins += 1
        # Echoed for the developer looking at the browser's network tab, but bounded: it is
        # whatever the client sent.
        shown = "several Origin headers" if origin is None else repr(origin[:100])
        return (
            f"relaynet: origin {shown} is not allowed to connect to this relay "
            "(relay.allowed_origins)\n"
        )

    def refused_origin(self, origin: str) -> HttpResponse:
        """403 for an HTTP request from a page of an origin that is not allowed."""
        return text_response(403, self._origin_refusal(origin))

    def refuse_stream(self) -> HttpResponse | None:
        """503 for a new SSE stream this relay cannot take now, else None."""
        if self._stop.is_set():
            return text_response(503, "relay is shutting down\n")
        if not self.available():
            return text_response(503, "relay cannot reach NATS/JetStream\n")
        if len(self.connections) >= self.connection_limit:
            return text_response(503, "relay is full\n", (("Retry-After", "1"),))
        return None

    def deps(self) -> ConnectionDeps:
        assert self._deps is not None  # serving only inside run()
        return self._deps

    @staticmethod
    def _plain(status: http.HTTPStatus, body: str) -> Response:
        headers = Headers(
            [("Content-Type", "text/plain; charset=utf-8"), ("Access-Control-Allow-Origin", "*")]
        )
        return Response(status.value, status.phrase, headers, body.encode())

    async def _handle(self, ws: ServerConnection) -> None:
        if len(self.connections) >= self.connection_limit:
            await self._refuse(ws)
            return
        assert isinstance(ws, EdgeConnection)  # serve() makes only these (create_connection)
        await self.serve_wire(WsWire(ws), self._client_info(ws))

    def _client_info(self, ws: ServerConnection) -> ClientInfo | None:
        """For the connect hook: the client's address and the headers it forwards, taken
        before the connection forgets its handshake."""
        if self.hooks is None:
            return None
        forwarded: dict[str, str] = {}
        if ws.request is not None:
            headers = ws.request.headers
            for name in self.hooks.forward_headers:
                values = headers.get_all(name)
                if values:
                    forwarded[name] = ", ".join(values)
        remote = ws.remote_address
        return ClientInfo("websocket", None if not remote else str(remote[0]), forwarded)

    async def serve_wire(self, wire: Wire, client: ClientInfo | None = None) -> None:
        """One client connection, WebSocket or SSE, from its start to its end."""
        conn = Connection(self.deps(), wire, client)
        self.connections.add(conn)
        try:
            await conn.serve()
        finally:
            self.connections.discard(conn)
            if not self.connections:
                self._all_closed.set()

    async def _refuse(self, ws: ServerConnection) -> None:
        """At the connection limit: say where to go instead, then 1013 (try again later)."""
        frame = self._redirect("overloaded")
        with anyio.move_on_after(2, shield=True):
            try:
                if frame is not None:
                    await ws.send(frame, text=True)
                await ws.close(CloseCode.TRY_AGAIN_LATER, "overloaded")
            except ConnectionClosed:
                pass

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        relay = self.cfg.relay
        heartbeat = relay.heartbeat_s
        async with (
            anyio.create_task_group() as tasks,
            serve(
                self._handle,
                relay.host,
                relay.port,
                process_request=self._process_request,
                max_size=self.cfg.limits.max_frame_bytes,
                # One keepalive task for all WebSockets (``_keepalive``), not one each.
                ping_interval=None,
                ping_timeout=None,
                close_timeout=2,
                compression=None,  # so the same encoded frame goes to every subscriber cheaply
                reuse_port=relay.reuse_port or None,
                server_header="relaynet",
                # Given, so that websockets does not look it up per connection (getLogger
                # takes the logging lock: 1.7% of a relay's samples while 5k clients connect).
                logger=_WEBSOCKETS_LOG,
                ssl=self.ssl,
                create_connection=edge_connections(self._new_http, HEAD_TIMEOUT_S),
            ) as server,
        ):
            # Connections' short tasks (subscribe catch-ups, history reads, writers of
            # backed-up sockets) run in this one task group, not one per connection.
            self._deps = self._connection_deps(tasks)
            self._server = server
            tasks.start_soon(self._keepalive, heartbeat)
            self.port = server.sockets[0].getsockname()[1]
            log.info(
                "relay %s (%s) listening on %s (at most %d connections)",
                self.relay_id,
                self.region,
                relay.listen_url(self.port),
                self.connection_limit,
            )
            task_status.started(self.port)
            await self._stop.wait()
            await self._drain(server)
            tasks.cancel_scope.cancel()  # request tasks of connections that did not close
        self.stopped.set()

    async def _keepalive(self, interval_s: float) -> None:
        """Every WebSocket is pinged once per ``interval_s`` (in slices, one a second or
        so, not all at once) and closed with 1011 when its pong is not back by its next
        turn (``WsWire.keepalive``). websockets' own keepalive runs a task per connection
        for its whole life: 1.4 KB of every idle connection (tracemalloc)."""
        slices = max(1, math.ceil(interval_s))
        turn = 0
        while True:
            await anyio.sleep(interval_s / slices)
            turn = (turn + 1) % slices
            for conn in list(self.connections):
                wire = conn.wire
                if not isinstance(wire, WsWire) or (id(conn) >> 4) % slices != turn:
                    continue
                try:
                    if not wire.keepalive():
                        conn.close_with(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                except Exception:  # one connection's socket is never a reason to stop pinging
                    log.exception("keepalive ping of a connection failed")

    def _new_http(self) -> HttpConnection:
        conn = HttpConnection(
            self.http.handle,
            max_body_bytes=self.cfg.limits.max_frame_bytes,
            on_close=self._http_connections.discard,
        )
        self._http_connections.add(conn)
        return conn

    def stop(self) -> None:
        self._stop.set()

    def close_all(self, code: int, reason: str) -> None:
        """Close every client (requests in flight are answered first): they reconnect,
        to another relay while this one refuses new connections."""
        for conn in list(self.connections):
            conn.close_with(code, reason)

    async def _drain(self, server: Server) -> None:
        """Stop accepting, tell every client where to go, let in-flight publishes be
        acked, then close with 1001."""
        server.close(close_connections=False)
        for http_conn in list(self._http_connections):
            http_conn.shutdown()  # idle keep-alives now; a request being answered, after it
        if self.directory is not None:
            await self.directory.beat()  # siblings stop sending clients here right away
        for conn in list(self.connections):
            frame = self._redirect("draining")
            if frame is not None:
                conn.outbox.offer(frame)
            conn.close_with(CloseCode.GOING_AWAY, "going_away")
        if self.connections:
            self._all_closed = anyio.Event()
            with anyio.move_on_after(self.cfg.relay.shutdown_grace_s):
                await self._all_closed.wait()
        if self.connections:
            log.warning("%d connections did not close in time", len(self.connections))
        with anyio.move_on_after(2):
            await server.wait_closed()
