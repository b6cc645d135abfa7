"""Several federation instances per region: one serves each link (lease); when it stops,
another takes over the same durable consumer and nothing is lost or applied twice."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from federation.adapters.lease import Lease
from relay.node import RelayNode
from tests.support.checker import check_causal, ids
from tests.support.regions import region_configs, region_nats
from tests.support.relays import running_relays, timeout
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def lease_held(node: RelayNode, peer: str) -> bool:
    return node.federation is not None and node.federation.leases[peer].held


async def until_held(nodes: list[RelayNode], peer: str) -> RelayNode:
    with anyio.fail_after(timeout(10)):
        while True:
            held = [n for n in nodes if lease_held(n, peer)]
            if held:
                assert len(held) == 1, "two instances hold one link's lease"
                return held[0]
            async with anyio.create_task_group() as tg:  # wake on any lease change

                async def wake(lease: Lease) -> None:
                    await lease.wait_changed()
                    tg.cancel_scope.cancel()

                for node in nodes:
                    assert node.federation is not None
                    tg.start_soon(wake, node.federation.leases[peer])


async def test_link_moves_to_another_instance_when_its_holder_stops(tmp_path: Path) -> None:
    with region_nats(tmp_path, ("us-east", "eu-west")) as urls:
        configs = region_configs(urls, relays_per_region=3)
        east = [c for c in configs if c.region.name == "us-east"]
        west = [c for c in configs if c.region.name == "eu-west"]
        async with running_relays(*east) as east_nodes, running_relays(west[0]) as (first,):
            assert await until_held([first], "us-east") is first
            async with running_relays(*west[1:]) as others:
                async with (
                    protocol_client(others[0].url) as sub,
                    protocol_client(east_nodes[0].url) as pub,
                ):
                    await sub.subscribe("chat:lease")
                    acked = [(await pub.publish("chat:lease", n))["id"] for n in range(20)]
                    await sub.wait_messages("chat:lease", 20)
                    assert not any(lease_held(n, "us-east") for n in others)
                    first.stop()  # the instance serving the link goes away mid-stream
                    for n in range(20, 60):
                        acked.append((await pub.publish("chat:lease", n))["id"])
                    await sub.wait_messages("chat:lease", 60, 30)
                    received = sub.messages["chat:lease"]
                    assert check_causal(received) == []
                    assert ids(received) == acked
                    assert await until_held(others, "us-east") in others
