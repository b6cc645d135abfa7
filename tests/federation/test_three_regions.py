"""Three regions on loopback: concurrent publishers everywhere, subscribers everywhere.

Every subscriber's whole sequence is checked: causal order, one identical order
per region, every acked message exactly once.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.checker import check_causal, check_publisher_order, ids
from tests.support.regions import REGIONS, region_configs, region_nats, running_regions
from tests.support.wsclient import ProtocolClient, protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHANNEL = "chat:world"
PER_PUBLISHER = 60


async def test_concurrent_publishers_in_three_regions_converge_causally(tmp_path: Path) -> None:
    with region_nats(tmp_path) as urls:
        configs = region_configs(urls, relays_per_region=2)
        async with running_regions(configs) as regions:
            async with AsyncExitStack() as stack:
                subscribers: dict[str, list[ProtocolClient]] = {}
                for region, nodes in regions.items():
                    for node in nodes:
                        client = await stack.enter_async_context(protocol_client(node.url))
                        assert (await client.subscribe(CHANNEL))["op"] == "subscribed"
                        subscribers.setdefault(region, []).append(client)
                acked: list[dict[str, Any]] = []

                async def publisher(url: str, name: str) -> None:
                    async with protocol_client(url) as pub:
                        for n in range(PER_PUBLISHER):
                            ack = await pub.publish(CHANNEL, {"pub": name, "n": n})
                            assert ack["op"] == "ack", ack
                            acked.append(ack)

                async with anyio.create_task_group() as tg:
                    for region, nodes in regions.items():
                        for i, node in enumerate(nodes):
                            tg.start_soon(publisher, node.url, f"{region}/{i}")
                total = PER_PUBLISHER * sum(len(n) for n in regions.values())
                for region in REGIONS:
                    for client in subscribers[region]:
                        await client.wait_messages(CHANNEL, total, 60)
                acked_ids = sorted(a["id"] for a in acked)
                for region in REGIONS:
                    reference = ids(subscribers[region][0].messages[CHANNEL])
                    for client in subscribers[region]:
                        received = client.messages[CHANNEL]
                        assert check_causal(received) == [], region
                        assert check_publisher_order(received) == [], region
                        assert ids(received) == reference, f"{region}: one order"
                        assert sorted(ids(received)) == acked_ids


async def test_a_reply_is_delivered_after_what_it_answers_everywhere(tmp_path: Path) -> None:
    with region_nats(tmp_path) as urls:
        async with running_regions(region_configs(urls)) as regions:
            east, west, south = (regions[r][0] for r in REGIONS)
            async with (
                protocol_client(south.url) as watcher,
                protocol_client(east.url) as alice,
                protocol_client(west.url) as bob,
            ):
                await watcher.subscribe("chat:thread")
                await bob.subscribe("chat:thread")
                for n in range(20):
                    question = await alice.publish("chat:thread", f"q{n}", id=f"q{n}")
                    assert question["op"] == "ack"
                    # Bob answers only after he has seen the question in his region.
                    await bob.wait_for(
                        lambda n=n: any(m["id"] == f"q{n}" for m in bob.messages["chat:thread"])
                    )
                    await bob.publish("chat:thread", f"a{n}", id=f"a{n}")
                await watcher.wait_messages("chat:thread", 40, 30)
                received = watcher.messages["chat:thread"]
                assert check_causal(received) == []
                for n in range(20):
                    order = ids(received)
                    assert order.index(f"q{n}") < order.index(f"a{n}")
