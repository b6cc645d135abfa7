"""Partitions and a region's full restart, under load: nothing lost, nothing twice,
causal order everywhere, and the regions that can still talk are not held up."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay.node import RelayNode
from tests.support.checker import check_causal, ids
from tests.support.http import http_get_ok
from tests.support.nats import NatsProcess
from tests.support.regions import (
    REGIONS,
    link_proxies,
    proxy_urls,
    region_configs,
    running_regions,
)
from tests.support.relays import running_relays
from tests.support.waiting import wait_until
from tests.support.wsclient import ProtocolClient, protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHANNEL = "chat:storm"


def check_region(subscribers: list[ProtocolClient], acked: set[str], region: str) -> None:
    reference = ids(subscribers[0].messages[CHANNEL])
    for client in subscribers:
        received = client.messages[CHANNEL]
        assert check_causal(received) == [], region
        assert ids(received) == reference, f"{region}: one order"
        assert sorted(ids(received)) == sorted(acked), region


async def sees(node: RelayNode, health: str, *regions: str) -> bool:
    """Whether ``node``'s directory (GET /v1/edges) gives each of ``regions`` that health:
    "up" while their heartbeats come over the links, "down" once they stopped coming."""
    edges = json.loads(await http_get_ok(node, "/v1/edges"))["edges"]
    return all({e["health"] for e in edges if e["region"] == r} == {health} for r in regions)


async def test_partition_under_load_then_heal_converges(tmp_path: Path) -> None:
    servers = {r: NatsProcess(tmp_path / f"nats-{r}") for r in REGIONS}
    try:
        urls = {r: s.start() for r, s in servers.items()}
        async with link_proxies(urls, latency_ms=5) as proxies:
            configs = region_configs(urls, peer_urls=proxy_urls(proxies))
            async with running_regions(configs) as regions, AsyncExitStack() as stack:
                subscribers: dict[str, list[ProtocolClient]] = {}
                for region in REGIONS:
                    for _ in range(2):
                        client = await stack.enter_async_context(
                            protocol_client(regions[region][0].url)
                        )
                        await client.subscribe(CHANNEL)
                        subscribers.setdefault(region, []).append(client)
                acked: set[str] = set()
                published = dict.fromkeys(REGIONS, 0)
                during_cut: dict[str, list[str]] = {r: [] for r in REGIONS}
                cut = anyio.Event()
                # Fully linked first: the partition below is a change every region sees.
                for region in REGIONS:
                    node = regions[region][0]
                    others = [r for r in REGIONS if r != region]
                    await wait_until(
                        lambda node=node, others=others: sees(node, "up", *others),
                        f"{region} sees the others up",
                        30,
                    )

                async def publisher(region: str) -> None:
                    async with protocol_client(regions[region][0].url) as pub:
                        for n in range(120):
                            ack = await pub.publish(CHANNEL, {"pub": region, "n": n})
                            assert ack["op"] == "ack"
                            acked.add(ack["id"])
                            published[region] += 1
                            if cut.is_set():
                                during_cut[region].append(ack["id"])
                            # Load shaping, not a wait: paced, publishing goes on through
                            # the partition instead of being over before it starts.
                            await anyio.sleep(0.01)

                async with anyio.create_task_group() as tg:
                    for region in REGIONS:
                        tg.start_soon(publisher, region)
                    # Under load: every region is a quarter of the way through.
                    await wait_until(
                        lambda: all(n >= 30 for n in published.values()),
                        "every region publishing",
                        30,
                    )
                    # Isolate eu-west: reset its links with us-east, stall those with ap-south.
                    for a, b in proxies:
                        if "eu-west" in (a, b):
                            (proxies[(a, b)].cut if "us-east" in (a, b) else proxies[(a, b)].hold)()
                    cut.set()
                    # Meanwhile us-east and ap-south keep talking: not blocked by eu-west.
                    await wait_until(
                        lambda: len(during_cut["ap-south"]) >= 10,
                        "ap-south publishing during the partition",
                        30,
                    )
                    south_id = during_cut["ap-south"][-1]
                    east = subscribers["us-east"][0]
                    await east.wait_for(lambda: south_id in ids(east.messages[CHANNEL]), 10)
                    # The partition lasts until every region sees it (eu-west down on both
                    # sides, from missing heartbeats): longer than the links' ack wait and
                    # lease TTL, so the stalled links' timeouts have all fired by the heal.
                    for region, gone in (
                        ("us-east", ["eu-west"]),
                        ("ap-south", ["eu-west"]),
                        ("eu-west", ["us-east", "ap-south"]),
                    ):
                        node = regions[region][0]
                        await wait_until(
                            lambda node=node, gone=gone: sees(node, "down", *gone),
                            f"{region} sees {gone} down",
                            30,
                        )
                    # Nothing us-east published during the partition reached eu-west, over
                    # the whole of it (no marker can cross a cut link to show it now).
                    west = subscribers["eu-west"][0]
                    assert not any(i in ids(west.messages[CHANNEL]) for i in during_cut["us-east"])
                    cut = anyio.Event()  # stop recording
                    for proxy in proxies.values():
                        proxy.heal()
                for region in REGIONS:
                    for client in subscribers[region]:
                        await client.wait_messages(CHANNEL, len(acked), 60)
                for region in REGIONS:
                    check_region(subscribers[region], acked, region)
    finally:
        for server in servers.values():
            server.stop()


async def test_region_restart_after_acking_messages_it_had_not_forwarded(
    tmp_path: Path,
) -> None:
    servers = {r: NatsProcess(tmp_path / f"nats-{r}") for r in REGIONS}
    try:
        urls = {r: s.start() for r, s in servers.items()}
        async with link_proxies(urls) as proxies:
            configs = region_configs(urls, peer_urls=proxy_urls(proxies))
            south_cfg = [c for c in configs if c.region.name == "ap-south"]
            others = [c for c in configs if c.region.name != "ap-south"]
            async with running_relays(*others) as (east, west):
                async with (
                    protocol_client(east.url) as sub_east,
                    protocol_client(west.url) as sub_west,
                ):
                    await sub_east.subscribe(CHANNEL)
                    await sub_west.subscribe(CHANNEL)
                    acked: list[str] = []
                    # Nobody can read ap-south's log: what it acks stays there.
                    for (_reader, b), proxy in proxies.items():
                        if b == "ap-south":
                            proxy.hold()
                    async with running_relays(*south_cfg) as (south,):
                        async with protocol_client(south.url) as pub:
                            for n in range(30):
                                acked.append((await pub.publish(CHANNEL, f"s{n}"))["id"])
                    # Really not forwarded: nobody outside ap-south has any of them.
                    assert not sub_east.messages[CHANNEL] and not sub_west.messages[CHANNEL]
                    servers["ap-south"].kill()  # the region burns down, relays already gone
                    for proxy in proxies.values():
                        proxy.heal()
                    # Life goes on elsewhere while ap-south is away.
                    async with protocol_client(east.url) as pub:
                        for n in range(30):
                            acked.append((await pub.publish(CHANNEL, f"e{n}"))["id"])
                    servers["ap-south"].start()  # same port, same store
                    async with running_relays(*south_cfg) as (south,):
                        async with protocol_client(south.url) as sub_south:
                            await sub_south.subscribe(CHANNEL, position={})
                            for client in (sub_east, sub_west, sub_south):
                                await client.wait_messages(CHANNEL, len(acked), 60)
                            received: dict[str, list[dict[str, Any]]] = {
                                "us-east": sub_east.messages[CHANNEL],
                                "eu-west": sub_west.messages[CHANNEL],
                                "ap-south": sub_south.messages[CHANNEL],
                            }
                            for region, got in received.items():
                                assert check_causal(got) == [], region
                                assert sorted(ids(got)) == sorted(acked), region
    finally:
        for server in servers.values():
            server.stop()
