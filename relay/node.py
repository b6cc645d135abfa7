"""Composition root: one relay of one region.

Start order: (embedded nats-server) -> NATS connection -> streams -> feeds ->
WebSocket edge. Shutdown runs the other way: the edge drains first (acks for
in-flight publishes are sent before clients are closed with 1001), then the
NATS connection drains, then the embedded server stops.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
import nats
from anyio.abc import TaskStatus
from nats.aio.client import Client as NatsClient

from config.schema import RelayConfig
from federation.adapters.region_writer import RegionWriter
from federation.service import FederationService
from relay.adapters.directory import EdgeDirectory
from relay.adapters.embedded_nats import EmbeddedNats
from relay.adapters.feed_manager import FeedManager
from relay.adapters.log_reader import LogReader
from relay.adapters.metrics import RelayCollector, make_registry, render
from relay.adapters.nats_broker import NatsBroker
from relay.adapters.ws_edge import WsEdge
from relay.core.feed import LogEntry

log = logging.getLogger("relaynet.node")


class RelayNode:
    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.nats_url: str | None = None
        self.edge: WsEdge | None = None
        self.federation: FederationService | None = None
        self._feeds: FeedManager | None = None
        self._stop = anyio.Event()
        self._finished = anyio.Event()

    @property
    def port(self) -> int:
        assert self.edge is not None and self.edge.port is not None, "relay not started"
        return self.edge.port

    @property
    def url(self) -> str:
        return f"ws://{self.cfg.relay.host}:{self.port}/v1/ws"

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[RelayNode] = anyio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        async with contextlib.AsyncExitStack() as stack:
            if cfg.nats.url == "embedded":
                embedded = EmbeddedNats(
                    host=cfg.nats.embedded_host,
                    port=cfg.nats.embedded_port,
                    store_dir=cfg.nats.store_dir,
                    server_name=f"relaynet-{cfg.region.name}-{cfg.relay.id}",
                )
                self.nats_url = await stack.enter_async_context(embedded)
            else:
                self.nats_url = cfg.nats.url
            async with anyio.create_task_group() as tg:
                nc = await self._connect(tg)
                stack.push_async_callback(self._close_nats, nc)
                broker = NatsBroker(nc, cfg)
                await broker.ensure_streams()
                # One writer per process for the region log: local publishes and remote
                # messages of a channel queue together, so neither starves the other.
                writer = RegionWriter(broker.log, cfg.federation.max_buffered)
                await tg.start(writer.run)

                def note_head(entry: LogEntry) -> None:
                    if not broker.log.is_total(entry.channel):  # live = the causal log
                        writer.note_head(entry.channel, entry.seq, entry.msg.pos, entry.msg.origin)

                feeds = FeedManager(broker, cfg.limits.outbox_max_messages, note_head)
                self._feeds = feeds
                await tg.start(feeds.run)
                if cfg.peers and cfg.federation.run_in_relay:
                    self.federation = FederationService(
                        cfg, nc, instance_id=cfg.relay.id, writer=writer
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
                await tg.start(edge.run)
                # Served only once bound: with port 0 the directory must show the real port.
                directory = EdgeDirectory(cfg, cfg.relay.public_url or self.url, edge.state)
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

    async def run_finished(self) -> None:
        await self._finished.wait()

    async def _connect(self, tg: anyio.abc.TaskGroup) -> NatsClient:
        assert self.nats_url is not None

        async def reconnected() -> None:
            log.warning("NATS connection re-established; resyncing live feeds")
            if self._feeds is not None:
                tg.start_soon(self._feeds.resync)

        async def disconnected() -> None:
            if not self._stop.is_set():  # on shutdown the drain disconnects on purpose
                log.warning("NATS connection lost; reconnecting")

        async def error(exc: Exception) -> None:
            log.warning("NATS: %s", exc)

        return await nats.connect(
            servers=[u.strip() for u in self.nats_url.split(",")],
            name=f"relaynet-{self.cfg.relay.id}",
            connect_timeout=self.cfg.nats.connect_timeout_s,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            reconnected_cb=reconnected,
            disconnected_cb=disconnected,
            error_cb=error,
        )

    @staticmethod
    async def _close_nats(nc: NatsClient) -> None:
        with anyio.move_on_after(5, shield=True):
            try:
                await nc.drain()
            except Exception:
                await nc.close()
        if not nc.is_closed:  # the drain ran out of time: close, or the socket leaks
            with anyio.move_on_after(2, shield=True):
                await nc.close()
