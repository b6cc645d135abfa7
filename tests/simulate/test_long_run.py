"""A network that runs past 30 s, then loses a region and gets it back: every other
region's relays still serve and messages still cross regions (issue #9 item 7).

The relays got PR_SET_PDEATHSIG from the anyio worker thread that forked them; anyio
retires a worker idle for 10 s (at its next ``to_thread`` call, here the region kill's),
and the kernel then sent SIGTERM to every relay that worker had forked. The run must
outlast that timeout several times over; this test is deliberately long (about 40 s).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from relay.simulate.client import protocol_client, timeout
from tests.support.checker import ids

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

REGIONS = ["us-east", "eu-west", "ap-south"]
RUN_S = 31.0  # over 30 s: three of anyio's 10 s idle timeouts for worker threads
CHANNEL = "chat:long"


def relays(network: Any, regions: list[str]) -> list[Any]:
    return [relay for name in regions for relay in network.regions[name].relays]


async def assert_serving(network: Any, regions: list[str]) -> None:
    """Each relay of these regions is running and greets a new WebSocket client."""
    for relay in relays(network, regions):
        assert relay.alive, f"{relay.relay_id} died:\n{relay.log.read_text()}"
        with anyio.fail_after(timeout(10)):
            async with protocol_client(relay.url) as client:
                assert client.connected is not None, f"{relay.relay_id} did not greet"


@pytest.mark.relay_network(regions=REGIONS, latency_ms=10, relays_per_region=2)
async def test_relays_live_through_a_long_run_and_a_region_restart(relay_network: Any) -> None:
    network = relay_network.network
    started = anyio.current_time()  # the network came up just before
    others = ["us-east", "eu-west"]

    async with (
        protocol_client(relay_network.edge("eu-west")) as west,
        protocol_client(relay_network.edge("ap-south")) as south,
    ):
        await west.subscribe(CHANNEL)
        acked = [(await south.publish(CHANNEL, 0))["id"]]
        await west.wait_messages(CHANNEL, 1, 30)

    # The duration is the point. Watch the relays on the way: none may stop.
    while anyio.current_time() - started < RUN_S:
        assert all(relay.alive for relay in relays(network, REGIONS)), "a relay stopped"
        await anyio.sleep(0.5)
    await assert_serving(network, REGIONS)

    await anyio.to_thread.run_sync(relay_network.kill_region, "ap-south")
    await assert_serving(network, others)
    await anyio.to_thread.run_sync(relay_network.restart_region, "ap-south")
    await assert_serving(network, REGIONS)

    async with (
        protocol_client(relay_network.edge("us-east")) as east,
        protocol_client(relay_network.edge("eu-west")) as west,
        protocol_client(relay_network.edge("ap-south")) as south,
    ):
        for client in (east, west, south):
            await client.subscribe(CHANNEL, position={})
        acked.append((await south.publish(CHANNEL, 1))["id"])  # from the restarted region
        acked.append((await east.publish(CHANNEL, 2))["id"])  # into it
        for client in (east, west, south):
            await client.wait_messages(CHANNEL, 3, 30)
            assert sorted(ids(client.messages[CHANNEL])) == sorted(acked)
