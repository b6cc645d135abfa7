"""Federation for one region: a lease-guarded link per peer feeding one applier.

Runs inside a relay (``[federation] run_in_relay``) or alone
(``relaynet federate``). Any number of instances per region may run: each
peer link is served by whichever instance holds its lease, and every append
is a compare-and-set, so a message lands in this region's log exactly once
whichever instance, link or path brings it.
"""

from __future__ import annotations

import logging

import anyio
from anyio.abc import TaskStatus
from nats.aio.client import Client as NatsClient

from config.schema import RelayConfig
from federation.adapters.applier import Applier
from federation.adapters.lease import Lease
from federation.adapters.nats_link import PeerLink
from federation.adapters.region_log import LogUnavailable, region_log_for

log = logging.getLogger("relaynet.federation")

RECHECK_INTERVAL_S = 0.5


class FederationService:
    def __init__(self, cfg: RelayConfig, nc: NatsClient, instance_id: str) -> None:
        self.cfg = cfg
        self.nc = nc
        self.instance_id = instance_id
        region = cfg.region.name
        self.region_log = region_log_for(nc, cfg)
        self.applier = Applier(self.region_log, region, cfg.federation.max_buffered)
        namespaces = [rule.name for rule in cfg.all_namespaces]
        self.links = {
            peer.region: PeerLink(
                region=region,
                peer_region=peer.region,
                peer_url=peer.nats_url,
                namespaces=namespaces,
                applier=self.applier,
                ack_wait_s=cfg.federation.ack_wait_s,
            )
            for peer in cfg.peers
        }
        self.leases = {
            peer.region: Lease(
                nc,
                bucket=f"RLY_FED_{region.upper()}",
                key=f"link-{peer.region}",
                owner=instance_id,
                ttl_s=cfg.federation.lease_ttl_s,
            )
            for peer in cfg.peers
        }

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for peer in self.links:
                tg.start_soon(self.leases[peer].run)
                tg.start_soon(self._serve_while_leased, peer)
            tg.start_soon(self._recheck)
            task_status.started()

    async def _serve_while_leased(self, peer: str) -> None:
        lease, link = self.leases[peer], self.links[peer]
        while True:
            while not lease.held:
                await lease.wait_changed()
            async with anyio.create_task_group() as tg:
                tg.start_soon(link.run)
                while lease.held:
                    await lease.wait_changed()
                tg.cancel_scope.cancel()

    async def _recheck(self) -> None:
        while True:
            await anyio.sleep(RECHECK_INTERVAL_S)
            try:
                await self.applier.recheck()
            except LogUnavailable as exc:
                log.debug("recheck: %r", exc)
