"""Several regions on loopback: a nats-server per region, relays, federation between them.

The tests' view of ``relay.harness.network``: the same link proxies and relay configs,
with each test choosing what to start when. As there, every region's NATS is closed:
``region_configs`` gives each server started by ``tests.support.nats`` the users a
relay's embedded server has, and the relays and links their credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio

from relay.adapters.embedded_nats import RELAY_USER, peer_user, region_peer_permissions
from relay.config.schema import RelayConfig
from relay.harness.linkproxy import LinkProxy
from relay.harness.network import FAST_FEDERATION, proxy_url, start_link_proxies
from relay.harness.toolkit import relay_config
from relay.node import RelayNode
from tests.support.nats import nats_server, server_at
from tests.support.relays import running_relays

REGIONS = ("us-east", "eu-west", "ap-south")


@contextmanager
def region_nats(tmp_path: Path, regions: Sequence[str] = REGIONS) -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        yield {r: stack.enter_context(nats_server(tmp_path / f"nats-{r}")) for r in regions}


def region_configs(
    nats_urls: dict[str, str],
    *,
    peer_urls: dict[tuple[str, str], str] | None = None,
    relays_per_region: int = 1,
    **overrides: Any,
) -> list[RelayConfig]:
    """One config per relay. ``peer_urls[(a, b)]`` is the URL region a uses to reach b's
    NATS (a proxy, in partition tests); by default b's NATS itself.

    Each region's NATS that ``tests.support.nats`` started is closed first, as a relay's
    embedded server is (the relay user, and one user per peer region that may only read
    through its own durable consumer), and the configs carry the credentials: the relays
    the relay user's, each link its region's user on the peer. A URL not started there
    (an operator's NATS) stays as it is, without credentials."""
    servers = {region: server_at(url) for region, url in nats_urls.items()}
    configs = []
    federation = {**FAST_FEDERATION, **overrides.pop("federation", {})}
    nats_section = overrides.pop("nats", {})
    for region, url in nats_urls.items():
        peers = []
        for peer, peer_url in nats_urls.items():
            if peer == region:
                continue
            entry = {
                "region": peer,
                "edge_url": "ws://127.0.0.1:1/v1/ws",
                "nats_url": (peer_urls or {}).get((region, peer), peer_url),
            }
            if (peer_server := servers[peer]) is not None:
                entry["nats_user"] = peer_user(region)
                entry["nats_password_file"] = str(peer_server.password_file(peer_user(region)))
            peers.append(entry)
        nats = dict(nats_section)
        if (server := servers[region]) is not None:
            nats |= {"user": RELAY_USER, "password_file": str(server.password_file())}
        relays = [
            relay_config(
                nats_url=url,
                region=region,
                relay_id=f"{region}-{i + 1}",
                peers=peers,
                federation=federation,
                nats=nats,
                **overrides,
            )
            for i in range(relays_per_region)
        ]
        if server is not None:
            server.authorize(region_peer_permissions(relays[0]))
        configs += relays
    return configs


@asynccontextmanager
async def running_regions(configs: list[RelayConfig]) -> AsyncIterator[dict[str, list[RelayNode]]]:
    async with running_relays(*configs) as nodes:
        by_region: dict[str, list[RelayNode]] = {}
        for node in nodes:
            by_region.setdefault(node.cfg.region.name, []).append(node)
        yield by_region


@asynccontextmanager
async def link_proxies(
    nats_urls: dict[str, str], latency_ms: float = 0.0
) -> AsyncIterator[dict[tuple[str, str], LinkProxy]]:
    """A proxy for every directed link: ``proxies[(a, b)]`` carries a's reads of b's NATS."""
    async with anyio.create_task_group() as tg:
        try:
            yield await start_link_proxies(tg, nats_urls, latency_ms)
        finally:
            tg.cancel_scope.cancel()


def proxy_urls(proxies: dict[tuple[str, str], LinkProxy]) -> dict[tuple[str, str], str]:
    return {link: proxy_url(proxy) for link, proxy in proxies.items()}
