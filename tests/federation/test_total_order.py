"""ordering = "total": every subscriber in every region sees one identical sequence."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from tests.support.checker import check_publisher_order, check_total_order, ids
from tests.support.regions import REGIONS, region_configs, region_nats, running_regions
from tests.support.wsclient import ProtocolClient, protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

NAMESPACES = [
    {"name": "room", "prefix": "room:", "ordering": "total"},
    {"name": "chat", "prefix": "chat:"},
]
PER_PUBLISHER = 40


async def test_total_order_is_identical_in_every_region(tmp_path: Path) -> None:
    with region_nats(tmp_path) as urls:
        configs = region_configs(urls, relays_per_region=2, namespaces=NAMESPACES)
        async with running_regions(configs) as regions, AsyncExitStack() as stack:
            subscribers: list[ProtocolClient] = []
            for nodes in regions.values():
                for node in nodes:
                    client = await stack.enter_async_context(protocol_client(node.url))
                    assert (await client.subscribe("room:vote"))["op"] == "subscribed"
                    subscribers.append(client)
            acked: list[str] = []

            async def publisher(url: str, name: str) -> None:
                async with protocol_client(url) as pub:
                    for n in range(PER_PUBLISHER):
                        ack = await pub.publish("room:vote", {"pub": name, "n": n})
                        assert ack["op"] == "ack", ack
                        acked.append(ack["id"])

            async with anyio.create_task_group() as tg:
                for region in REGIONS:
                    for i, node in enumerate(regions[region]):
                        tg.start_soon(publisher, node.url, f"{region}/{i}")
            for client in subscribers:
                await client.wait_messages("room:vote", len(acked), 60)
            reference = ids(subscribers[0].messages["room:vote"])
            assert sorted(reference) == sorted(acked)
            for client in subscribers:
                received = client.messages["room:vote"]
                assert ids(received) == reference, "one order in every region"
                assert check_total_order(received) == []
                assert check_publisher_order(received) == []


async def test_resume_in_another_region_continues_the_same_sequence(tmp_path: Path) -> None:
    with region_nats(tmp_path) as urls:
        configs = region_configs(urls, namespaces=NAMESPACES)
        async with running_regions(configs) as regions:
            east, west, south = (regions[r][0] for r in REGIONS)
            async with (
                protocol_client(east.url) as pub_east,
                protocol_client(south.url) as pub_south,
            ):
                for n in range(10):
                    await pub_east.publish("room:r", f"e{n}")
                    await pub_south.publish("room:r", f"s{n}")
                async with protocol_client(east.url) as first:
                    await first.subscribe("room:r", position={})
                    await first.wait_messages("room:r", 20, 30)
                    head = first.messages["room:r"][:7]
                async with protocol_client(west.url) as second:
                    await second.subscribe("room:r", position=head[-1]["position"])
                    await second.wait_messages("room:r", 13, 30)
                    rest = second.messages["room:r"]
                assert ids(head + rest) == ids(first.messages["room:r"])
