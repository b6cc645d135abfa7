"""Composition root: one relay of one region.

Start order: (embedded nats-server) -> NATS connection -> streams -> feeds ->
WebSocket edge. Shutdown runs the other way: the edge drains first (acks for
in-flight publishes are sent before clients are closed with 1001), then the
NATS connection drains, then the embedded server stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

import anyio
import nats
import nats.errors
from anyio.abc import TaskStatus

from federation.adapters.nats_client import NatsClient, NatsOptionsError, describe_failure
from federation.adapters.nats_region_log import NatsRegionLog
from federation.adapters.region_writer import RegionWriter
from federation.service import FederationService
from federation.settings import NatsConnectOptions
from relay.adapters.audit import AuditLog
from relay.adapters.directory import EdgeDirectory
from relay.adapters.embedded_nats import (
    EmbeddedNats,
    region_nats_options,
    region_peer_permissions,
)
from relay.adapters.feed_manager import FeedManager
from relay.adapters.log_reader import LogReader
from relay.adapters.metrics import RelayCollector, make_registry, render
from relay.adapters.nats_broker import NatsBroker
from relay.adapters.presence import PresenceService
from relay.adapters.revocations import RevocationFollower
from relay.adapters.ws_edge import WsEdge
from relay.config.schema import RelayConfig
from relay.core.feed import LogEntry
from relay.core.revocations import Revocation, RevocationSet
from relay.protocol.errors import CloseCode

log = logging.getLogger("relaynet.node")

PROBE_INTERVAL_S = 1.0


class NatsUnreachable(Exception):
    """The relay's NATS did not answer at start within ``nats.connect_timeout_s``."""


class NatsHealth:
    """Whether this relay reaches its NATS and JetStream, from the client's callbacks and
    a JetStream probe."""

    def __init__(self) -> None:
        self._down_since: float | None = None
        self.reason = ""
        self.clients_sent_away = False

    def available(self) -> bool:
        return self._down_since is None

    def lost_for(self, seconds: float) -> bool:
        return self._down_since is not None and time.monotonic() - self._down_since >= seconds

    def disconnected(self) -> None:
        self._down("the NATS connection is lost")

    def connected(self) -> None:
        self._down_since = None

    def _down(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
        self.reason = reason

    async def probe(self, nc: NatsClient) -> None:
        if not nc.is_connected:
            self._down("the NATS connection is lost")
            return
        try:
            reply = await nc.request("$JS.API.INFO", b"", timeout=PROBE_INTERVAL_S)
            failed = b'"error"' in reply.data
        except Exception as exc:  # timeout, no responders: JetStream is not answering
            failed, reply_error = True, repr(exc)
        else:
            reply_error = reply.data[:200].decode(errors="replace")
        if failed:
            self._down(f"JetStream does not answer: {reply_error}")
        else:
            self._down_since = None


class RelayNode:
    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.nats_url: str | None = None
        self.edge: WsEdge | None = None
        self.federation: FederationService | None = None
        self._feeds: FeedManager | None = None
        self._stop = anyio.Event()
        self._finished = anyio.Event()
        self.nats = NatsHealth()
        self.embedded: EmbeddedNats | None = None  # the nats-server this relay started
        self.revocations: RevocationFollower | None = None  # in token mode
        #: How this relay connects to its NATS (shared by what else connects there).
        self.nats_options: NatsConnectOptions | None = None

    @property
    def port(self) -> int:
        assert self.edge is not None and self.edge.port is not None, "relay not started"
        return self.edge.port

    @property
    def url(self) -> str:
        """The listener's WebSocket URL (``wss://`` with TLS), on the bound port."""
        return self.cfg.relay.listen_url(self.port)

    def stop(self) -> None:
        self._stop.set()

    async def _watch_nats(self, nc: NatsClient, edge: WsEdge) -> None:
        """Probe JetStream every second; once NATS or JetStream has been unavailable for
        ``[nats] lost_grace_s`` (a NATS back within it is a blip: publishes meanwhile get
        `unavailable` and are retried), close every client with 4001 (they go to another
        relay, in this region or the next) and refuse new ones until it is back."""
        grace_s = self.cfg.nats.lost_grace_s
        while True:
            await self.nats.probe(nc)
            if self.nats.lost_for(grace_s) and not self.nats.clients_sent_away:
                self.nats.clients_sent_away = True
                log.error(
                    "NATS/JetStream unavailable for %.0f s (%s): closing %d clients with "
                    "4001 and refusing new ones until it is back",
                    grace_s,
                    self.nats.reason,
                    len(edge.connections),
                )
                edge.close_all(CloseCode.UNAVAILABLE, "unavailable")
            elif self.nats.available() and self.nats.clients_sent_away:
                self.nats.clients_sent_away = False
                log.warning("NATS/JetStream is back: taking clients again")
            await anyio.sleep(PROBE_INTERVAL_S)

    async def run(self, *, task_status: TaskStatus[RelayNode] = anyio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        async with contextlib.AsyncExitStack() as stack:
            if cfg.nats.url == "embedded":
                embedded = EmbeddedNats(
                    host=cfg.nats.embedded_host,
                    port=cfg.nats.embedded_port,
                    store_dir=cfg.nats.store_dir,
                    server_name=f"relaynet-{cfg.region.name}-{cfg.relay.id}",
                    peer_permissions=region_peer_permissions(cfg),
                    max_file_store=cfg.nats.store_budget_bytes,
                    tls=(
                        (cfg.nats.embedded_tls_cert_file, cfg.nats.embedded_tls_key_file)
                        if cfg.nats.embedded_tls_cert_file
                        else None
                    ),
                )
                self.nats_url = await stack.enter_async_context(embedded)
            else:
                embedded = None
                self.nats_url = cfg.nats.url
            self.nats_options = region_nats_options(cfg.nats, self.nats_url)
            self.embedded = embedded
            async with anyio.create_task_group() as tg:
                if embedded is not None:
                    tg.start_soon(embedded.supervise)
                nc = await self._connect(tg)
                stack.push_async_callback(self._close_nats, nc)
                # One region log per process, shared by the relay's reads, the writer
                # and federation.
                region_log = NatsRegionLog(nc, cfg.region_settings())
                broker = NatsBroker(nc, cfg, region_log)
                await broker.ensure_streams()
                # One writer per process for the region log: local publishes and remote
                # messages of a channel queue together, so neither starves the other.
                writer = RegionWriter(
                    region_log, cfg.federation.max_buffered, cfg.limits.publish_context_wait_s
                )
                await tg.start(writer.run)

                def note_head(entry: LogEntry) -> None:
                    if not broker.log.is_total(entry.channel):  # live = the causal log
                        writer.note_head(entry.channel, entry.seq, entry.msg.pos, entry.msg.origin)

                feeds = FeedManager(broker, cfg.limits.outbox_max_messages, note_head)
                self._feeds = feeds
                await tg.start(feeds.run)
                if cfg.peers and cfg.federation.run_in_relay:
                    self.federation = FederationService(
                        cfg.region_settings(), nc, instance_id=cfg.relay.id, writer=writer
                    )
                    await tg.start(self.federation.run)
                edge = WsEdge(cfg, feeds, writer, LogReader(broker))
                self.edge = edge
                registry = make_registry(
                    RelayCollector(
                        cfg.region.name,
                        cfg.relay.id,
                        lambda: self.edge,
                        lambda: self._feeds,
                        lambda: self.federation,
                    )
                )
                edge.metrics = lambda: render(registry)
                edge.available = self.nats.available
                edge.http.nats_connected = lambda: nc.is_connected
                edge.audit = AuditLog.from_config(cfg)
                stack.callback(edge.audit.close)
                edge.presence = PresenceService(nc, cfg.region.name, cfg.relay.id, cfg.presence)
                await tg.start(edge.presence.run)
                if cfg.auth.mode == "token":  # before serving: no revoked token gets in
                    await self._follow_revocations(tg, nc, edge, edge.audit)
                await tg.start(edge.run)
                tg.start_soon(self._watch_nats, nc, edge)
                # Served only once bound: with port 0 the directory must show the real port.
                directory = EdgeDirectory(
                    cfg, cfg.relay.public_url or self.url, edge.state, self.nats.available
                )
                await directory.start(nc)
                tg.start_soon(directory.run)
                edge.directory = directory
                task_status.started(self)
                await self._stop.wait()
                edge.stop()
                # Connections end only after their in-flight publishes are acked.
                with anyio.move_on_after(cfg.relay.shutdown_grace_s + 3):
                    await edge.stopped.wait()
                tg.cancel_scope.cancel()
        log.info("relay %s stopped", cfg.relay.id)
        self._finished.set()

    async def _follow_revocations(
        self, tg: anyio.abc.TaskGroup, nc: NatsClient, edge: WsEdge, audit: AuditLog
    ) -> None:
        """Every region's revocations, checked by every session: a live connection whose
        token one revokes is closed with 4005."""
        cfg = self.cfg
        revocations = RevocationSet(cfg.auth.revocation_retention_s)
        edge.auth = dataclasses.replace(edge.auth, revoked=revocations.matches)

        def revoked(rev: Revocation) -> None:
            log.info("revocation from %s: %s", rev.region, rev.describe())
            audit.record(
                "revocation_received",
                sub=rev.sub,
                jti=rev.jti,
                reason=rev.describe(),
                origin=rev.region,
                issued_before=rev.issued_before,
            )
            for conn in list(edge.connections):
                conn.check_revoked()

        self.revocations = RevocationFollower(
            cfg.region.name, cfg.region_settings().peers, revocations, revoked
        )
        await tg.start(self.revocations.run, nc)

    async def run_finished(self) -> None:
        await self._finished.wait()

    async def _connect(self, tg: anyio.abc.TaskGroup) -> NatsClient:
        assert self.nats_url is not None

        async def reconnected() -> None:
            self.nats.connected()
            log.warning("NATS connection re-established; resyncing live feeds")
            if self._feeds is not None:
                tg.start_soon(self._feeds.resync)

        async def disconnected() -> None:
            self.nats.disconnected()
            # On shutdown the drain disconnects on purpose; before the first connection
            # there was nothing to lose.
            if not self._stop.is_set() and connected_once:
                log.warning("NATS connection lost; reconnecting")

        async def error(exc: Exception) -> None:
            if not nc.is_connected and not connected_once:
                failures.append(exc)  # said once, in the error that ends the start
            else:
                log.warning("NATS: %s", exc)

        # Reconnects go on for ever once connected; the first connection has a deadline,
        # so a relay pointed at the wrong NATS says so and exits instead of retrying.
        failures: list[Exception] = []
        connected_once = False
        nc = NatsClient()
        options = self.nats_options
        assert options is not None
        deadline = self.cfg.nats.connect_timeout_s
        try:
            with anyio.fail_after(deadline):
                await nc.connect_with(
                    options,
                    name=f"relaynet-{self.cfg.relay.id}",
                    connect_timeout=deadline,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    reconnected_cb=reconnected,
                    disconnected_cb=disconnected,
                    error_cb=error,
                )
        except BaseException as exc:
            # A connect cut short may hold a socket already.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(2),
                contextlib.suppress(Exception),
            ):
                await nc.close()
            if isinstance(exc, NatsOptionsError):  # an unreadable password, seed or CA file
                raise NatsUnreachable(f"NATS at {self.nats_url}: {exc}") from None
            if isinstance(exc, (TimeoutError, OSError, nats.errors.Error)):
                why = describe_failure(failures[-1] if failures else exc, options)
                raise NatsUnreachable(
                    f"cannot reach NATS at {self.nats_url} within {deadline:g} s "
                    f"(nats.connect_timeout_s): {why}"
                ) from exc
            raise
        connected_once = True
        return nc

    @staticmethod
    async def _close_nats(nc: NatsClient) -> None:
        with anyio.move_on_after(5, shield=True):
            try:
                await nc.drain()
            except Exception:
                # NATS gone (reset, refused): closing the dead socket raises too, and
                # must not turn a clean stop into a crash.
                with contextlib.suppress(Exception):
                    await nc.close()
        if not nc.is_closed:  # the drain ran out of time: close, or the socket leaks
            with anyio.move_on_after(2, shield=True), contextlib.suppress(Exception):
                await nc.close()
