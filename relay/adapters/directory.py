"""The edge directory served at ``GET /v1/edges``: every region's public edge and health.

Health comes from federation heartbeats: each region's federation publishes
``rlyh.v1.<region>`` on its own NATS every second, and the instance serving
the link to a peer forwards that peer's heartbeats onto this region's NATS.
A region heard from within ``DOWN_AFTER_S`` is up; one heard from before but
not since is down (its heartbeats stopped, or the link to it is cut); one
never heard from is unknown. This region is up while this relay answers.
"""

from __future__ import annotations

import time
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from config.schema import RelayConfig

HEARTBEAT_SUBJECTS = "rlyh.v1.*"  # federation.logformat.heartbeat_subject(<any region>)
DOWN_AFTER_S = 3.5


class EdgeDirectory:
    def __init__(self, cfg: RelayConfig, own_url: str | None = None) -> None:
        self.cfg = cfg
        # The URL this relay is reachable at (the bound port when the config said 0).
        self.own_url = own_url or cfg.relay.effective_public_url
        self._last_seen: dict[str, float] = {}
        self._sub: Subscription | None = None

    async def start(self, nc: NatsClient) -> None:
        async def heard(msg: Msg) -> None:
            region = msg.subject.rsplit(".", 1)[-1]
            self._last_seen[region] = time.monotonic()

        self._sub = await nc.subscribe(HEARTBEAT_SUBJECTS, cb=heard)

    def health(self, region: str, now: float | None = None) -> str:
        if region == self.cfg.region.name:
            return "up"
        seen = self._last_seen.get(region)
        if seen is None:
            return "unknown"
        now = time.monotonic() if now is None else now
        return "up" if now - seen <= DOWN_AFTER_S else "down"

    def edges(self) -> dict[str, Any]:
        now = time.monotonic()
        own = self.cfg.region.name
        rows: list[dict[str, Any]] = [{"region": own, "url": self.own_url, "health": "up"}]
        for peer in self.cfg.peers:
            seen = self._last_seen.get(peer.region)
            rows.append(
                {
                    "region": peer.region,
                    "url": peer.edge_url,
                    "health": self.health(peer.region, now),
                    "last_heartbeat_s_ago": None if seen is None else round(now - seen, 3),
                }
            )
        return {"region": own, "relay": self.cfg.relay.id, "edges": rows}
