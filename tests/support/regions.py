"""Several regions on loopback: a nats-server per region, relays, federation between them.

The tests' view of ``relay.harness.network``: the same link proxies and relay configs,
with each test choosing what to start when."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio

from relay.config.schema import RelayConfig
from relay.harness.linkproxy import LinkProxy
from relay.harness.network import FAST_FEDERATION, proxy_url, start_link_proxies
from relay.harness.toolkit import relay_config
from relay.node import RelayNode
from tests.support.nats import nats_server
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
    NATS (a proxy, in partition tests); by default b's NATS itself."""
    configs = []
    federation = {**FAST_FEDERATION, **overrides.pop("federation", {})}
    for region, url in nats_urls.items():
        peers = [
            {
                "region": peer,
                "edge_url": "ws://127.0.0.1:1/v1/ws",
                "nats_url": (peer_urls or {}).get((region, peer), peer_url),
            }
            for peer, peer_url in nats_urls.items()
            if peer != region
        ]
        for i in range(relays_per_region):
            relay_id = f"{region}-{i + 1}"
            configs.append(
                relay_config(
                    nats_url=url,
                    region=region,
                    relay_id=relay_id,
                    peers=peers,
                    federation=federation,
                    **overrides,
                )
            )
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
