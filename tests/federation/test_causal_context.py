"""Causality survives a client changing region (issue #9, item 2).

C publishes c1 in ap-south and D, in ap-south too, reads it; no peer has read c1 yet
(ap-south's outgoing links are cut). C fails over to us-east and publishes c2, D fails
over to eu-west and publishes d1, each with its causal context (what it had read and
published there: the SDKs always send it). Neither may be delivered anywhere before c1:
a region holds a publish until its log covers the publish's context, then stores it
after what it depends on."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from relay.node import RelayNode
from tests.support.regions import (
    link_proxies,
    proxy_urls,
    region_configs,
    region_nats,
    running_regions,
)
from tests.support.waiting import wait_until
from tests.support.wsclient import ProtocolClient, protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHANNEL = "chat:causal"


async def test_publishes_after_a_failover_wait_for_what_their_clients_had_seen(
    tmp_path: Path,
) -> None:
    with region_nats(tmp_path) as urls:
        async with link_proxies(urls) as proxies:
            configs = region_configs(urls, peer_urls=proxy_urls(proxies))
            async with running_regions(configs) as regions, AsyncExitStack() as stack:
                east, west, south = (regions[r][0] for r in ("us-east", "eu-west", "ap-south"))
                watchers: dict[str, ProtocolClient] = {}
                for name, node in (("us-east", east), ("eu-west", west), ("ap-south", south)):
                    watchers[name] = await stack.enter_async_context(protocol_client(node.url))
                    await watchers[name].subscribe(CHANNEL)
                for reader in ("us-east", "eu-west"):  # nothing of ap-south's gets out
                    proxies[(reader, "ap-south")].cut()

                async with protocol_client(south.url) as c, protocol_client(south.url) as d:
                    await d.subscribe(CHANNEL)
                    c1 = await c.publish(CHANNEL, "c1", id="c1")
                    await d.wait_messages(CHANNEL, 1)
                    d_read = d.messages[CHANNEL][-1]["position"]

                async with (
                    protocol_client(east.url) as c_east,
                    protocol_client(west.url) as d_west,
                ):
                    c2 = await c_east.send(_publish("c2", after=c1["position"]))
                    d1 = await d_west.send(_publish("d1", after=d_read))
                    # Held, not refused: their regions do not have c1. Each relay shows it
                    # holds the publish (or answers it, wrongly: then the asserts say so).
                    for node, client, ref in ((east, c_east, c2), (west, d_west, d1)):
                        await wait_until(
                            lambda node=node, client=client, ref=ref: (
                                held_for_context(node) >= 1 or client.reply(ref) is not None
                            ),
                            f"{node.cfg.region.name} holding the publish",
                        )
                    assert c_east.reply(c2) is None and d_west.reply(d1) is None
                    for name in ("us-east", "eu-west"):
                        assert watchers[name].messages[CHANNEL] == [], name
                    for reader in ("us-east", "eu-west"):
                        proxies[(reader, "ap-south")].heal()
                    await c_east.wait_for(lambda: c_east.reply(c2) is not None, 30)
                    await d_west.wait_for(lambda: d_west.reply(d1) is not None, 30)
                    assert (c_east.reply(c2) or {}).get("op") == "ack", c_east.reply(c2)
                    assert (d_west.reply(d1) or {}).get("op") == "ack", d_west.reply(d1)

                for name, watcher in watchers.items():
                    await watcher.wait_messages(CHANNEL, 3, 30)
                    got = [m["id"] for m in watcher.messages[CHANNEL]]
                    assert sorted(got) == ["c1", "c2", "d1"], (name, got)
                    assert got.index("c1") < got.index("c2"), (name, got)
                    assert got.index("c1") < got.index("d1"), (name, got)
                    for message in watcher.messages[CHANNEL]:
                        if message["id"] in ("c2", "d1"):  # stamped after what it depends on
                            assert message["ts"].get("ap-south", 0) >= 1, (name, message)


def held_for_context(node: RelayNode) -> int:
    """Publishes the relay holds until its region's log covers their causal context."""
    assert node.edge is not None
    return node.edge.writer.waiting_for_context()


def _publish(message_id: str, *, after: dict[str, Any]) -> dict[str, Any]:
    """A publish with its causal context (the SDKs send ``after`` with every publish)."""
    frame = {"op": "publish", "channel": CHANNEL, "data": message_id, "id": message_id}
    return {**frame, "after": after}
