"""Federation for one region: a lease-guarded link per peer feeding the region writer.

Runs inside a relay (``[federation] run_in_relay``, sharing the relay's writer,
so local publishes and remote messages of a channel go through one queue) or
alone (``relaynet federate``, with a writer of its own). Any number of
instances per region may run: each peer link is served by whichever instance
holds its lease, and every append is a compare-and-set, so a message lands in
this region's log exactly once whichever instance, link or path brings it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskStatus
from nats.aio.client import Client as NatsClient

from federation import logformat
from federation.adapters.lease import Lease
from federation.adapters.nats_link import PeerLink
from federation.adapters.nats_region_log import NatsRegionLog
from federation.adapters.region_writer import RegionWriter
from federation.adapters.sequencer import Sequencer
from federation.settings import RegionSettings

log = logging.getLogger("relaynet.federation")

RECHECK_INTERVAL_S = 0.5
HEARTBEAT_INTERVAL_S = 1.0


class FederationService:
    def __init__(
        self,
        settings: RegionSettings,
        nc: NatsClient,
        instance_id: str,
        writer: RegionWriter | None = None,
    ) -> None:
        """``writer``: the relay's, when federation runs inside it (the caller runs it, and
        its region log is the process's one); without one the service makes and runs its
        own."""
        self.settings = settings
        self.nc = nc
        self.instance_id = instance_id
        region = settings.region
        self.region_log = writer.log if writer is not None else NatsRegionLog(nc, settings)
        self._own_writer = writer is None
        self.writer = writer or RegionWriter(self.region_log, settings.max_buffered)
        namespaces = [ns.name for ns in settings.namespaces]
        self.links = {
            peer.region: PeerLink(
                region=region,
                peer_region=peer.region,
                peer_nats=peer.nats,
                namespaces=namespaces,
                writer=self.writer,
                ack_wait_s=settings.ack_wait_s,
                forward_heartbeat=self._forward_heartbeat,
                regions=[peer.region for peer in settings.peers],
            )
            for peer in settings.peers
        }
        total = sorted(settings.total_order_namespaces)
        self.sequencer = (
            Sequencer(
                nc,
                self.region_log,
                [region, *(p.region for p in settings.peers)],
                total,
                owe_progress=self.writer.owe_progress,
            )
            if total
            else None
        )
        self.leases = {
            peer.region: Lease(
                nc,
                bucket=f"RLY_FED_{region.upper()}",
                key=f"link-{peer.region}",
                owner=instance_id,
                ttl_s=settings.lease_ttl_s,
            )
            for peer in settings.peers
        }
        self.sequencer_lease = Lease(
            nc,
            bucket=f"RLY_FED_{region.upper()}",
            key="sequencer",
            owner=instance_id,
            ttl_s=settings.lease_ttl_s,
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            if self._own_writer:
                await tg.start(self.writer.run)
            for peer, link in self.links.items():
                tg.start_soon(self.leases[peer].run)
                tg.start_soon(self._serve_while_leased, self.leases[peer], link.run)
            if self.sequencer is not None:
                tg.start_soon(self.sequencer_lease.run)
                tg.start_soon(self._serve_while_leased, self.sequencer_lease, self.sequencer.run)
            tg.start_soon(self._recheck)
            tg.start_soon(self._beat)
            task_status.started()

    async def _beat(self) -> None:
        """Say we are alive, on our own NATS; peers' links forward it to their regions."""
        subject = logformat.heartbeat_subject(self.settings.region)
        while True:
            beat = logformat.Beat(region=self.settings.region, t=time.time())
            payload = logformat.encode_beat(beat)
            with contextlib.suppress(Exception):  # NATS away: silence is the signal
                await self.nc.publish(subject, payload)
            await anyio.sleep(HEARTBEAT_INTERVAL_S)

    async def _forward_heartbeat(self, subject: str, payload: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.nc.publish(subject, payload)

    @staticmethod
    async def _serve_while_leased(
        lease: Lease, serve: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        while True:
            while not lease.held:
                await lease.wait_changed()
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                while lease.held:
                    await lease.wait_changed()
                tg.cancel_scope.cancel()

    async def _recheck(self) -> None:
        while True:
            await anyio.sleep(RECHECK_INTERVAL_S)
            self.writer.recheck()
