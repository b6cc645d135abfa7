"""The compose network, as local processes (tests/deploy/local_compose.py): three regions,
each a 3-node NATS JetStream cluster configured by deploy/compose's files and
deploy/nats_auth.py, relays with the compose configs. A message crosses regions; then a
NATS node of us-east dies while a client publishes there: the region's relays go on
serving and every acked message reaches subscribers in us-east and in eu-west."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NatsClient

import relay.client
from relay.adapters.embedded_nats import RELAY_USER
from relay.node import RelayNode
from tests.deploy.local_compose import LocalCompose
from tests.support.http import http_get
from tests.support.relays import running_relays, timeout
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHANNEL = "chat:deploy"


async def stream_leader(compose: LocalCompose, region: str, stream: str) -> str:
    """The server name of ``stream``'s leader in ``region``'s cluster."""
    password = (compose.auth_dir(region) / "auth" / f"{RELAY_USER}.password").read_text()
    nc = NatsClient()
    await nc.connect(
        servers=compose.nats_urls(region),
        user=RELAY_USER,
        password=password.strip(),
        allow_reconnect=False,
        connect_timeout=round(timeout(5)),
    )
    try:
        info = await nc.jetstream(timeout=timeout(5)).stream_info(stream)
    finally:
        await nc.close()
    assert info.config.num_replicas == 3, info.config
    assert info.cluster is not None and info.cluster.leader, info
    return info.cluster.leader


async def healthy(node: RelayNode) -> bool:
    try:
        status, _ = await http_get(node, "/v1/health")
    except OSError:
        return False
    return status == 200


async def test_compose_network_loses_a_nats_node_and_no_acked_message(tmp_path: Path) -> None:
    compose = LocalCompose(tmp_path)
    for node in compose.all_nodes():
        node.spawn()
    try:
        with anyio.fail_after(timeout(30)):
            for node in compose.all_nodes():
                await node.wait_ready()
        # As compose starts the relays: once every node of the region is healthy.
        for node in compose.all_nodes():
            await wait_until(node.healthy, f"{node.name} healthy", 30)
        relay_ids = ["us-east-1", "us-east-2", "eu-west-1", "ap-south-1"]
        configs = [compose.relay_config(relay_id, shutdown_grace_s=1.0) for relay_id in relay_ids]
        async with running_relays(*configs) as relays:
            east1, east2, west, _ = relays
            seeds_east = [f"ws://127.0.0.1:{east1.port}/v1/ws"]
            seeds_west = [f"ws://127.0.0.1:{west.port}/v1/ws"]
            async with (
                relay.client.connect(seeds_east, timeout_s=timeout(20), prefer="us-east") as pub,
                relay.client.connect(
                    [f"ws://127.0.0.1:{east2.port}/v1/ws"], timeout_s=timeout(20), prefer="us-east"
                ) as sub_east,
                relay.client.connect(seeds_west, timeout_s=timeout(20), prefer="eu-west") as sub_w,
            ):
                assert (pub.region, sub_east.region, sub_w.region) == (
                    "us-east",
                    "us-east",
                    "eu-west",
                )
                received: dict[str, list[str]] = {"us-east": [], "eu-west": []}
                subs = {
                    "us-east": await sub_east.subscribe(CHANNEL),
                    "eu-west": await sub_w.subscribe(CHANNEL),
                }
                acked: list[str] = []
                ack_times: list[float] = []

                async def receive(region: str) -> None:
                    async for message in subs[region]:
                        received[region].append(message.id)

                async def publish(count: int) -> None:
                    for i in range(count):
                        ack = await pub.publish(CHANNEL, {"n": len(acked), "i": i})
                        acked.append(ack.id)
                        ack_times.append(time.monotonic())

                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive, "us-east")
                    tg.start_soon(receive, "eu-west")
                    # Across regions first: the links work over the clusters.
                    await publish(5)
                    await wait_until(
                        lambda: received["eu-west"] == acked[:5],
                        "the first messages in eu-west",
                        30,
                    )
                    # Then the node that leads the channel's stream dies mid-stream: the
                    # worst one to lose (a new leader is elected, nats-py reconnects).
                    leader = await stream_leader(compose, "us-east", "RLY_US-EAST_CHAT")
                    victim = next(n for n in compose.nodes["us-east"] if n.name == leader)
                    publishing = anyio.Event()

                    async def publish_through_the_loss() -> None:
                        await publish(20)
                        publishing.set()
                        await publish(40)

                    tg.start_soon(publish_through_the_loss)
                    await publishing.wait()
                    victim.kill()
                    await wait_until(
                        lambda: len(acked) == 65, "publishes acked after the node died", 60
                    )
                    for region in ("us-east", "eu-west"):
                        await wait_until(
                            lambda region=region: set(received[region]) >= set(acked),
                            f"every acked message in {region}",
                            30,
                        )
                    tg.cancel_scope.cancel()
                for region, ids in received.items():
                    assert ids == acked, f"{region}: order or duplicates"
                gap = max(b - a for a, b in itertools.pairwise(ack_times))
                print(f"longest gap between acks: {gap:.2f} s; publisher in {pub.region}")
                # [nats] lost_grace_s = 10 in the compose configs covers the election of
                # the dead leader's successor: the relays kept their clients (with 2 s they
                # sent them to another region, and the SDK stays where it went).
                assert pub.region == "us-east"
            # The region's relays stayed up and serve clients on two nodes of three.
            for east in (east1, east2):
                await wait_until(lambda east=east: healthy(east), "us-east relays healthy", 30)
                async with relay.client.connect(
                    [f"ws://127.0.0.1:{east.port}/v1/ws"], timeout_s=timeout(20), prefer="us-east"
                ) as late:
                    assert late.region == "us-east"
                    await late.publish(CHANNEL, "after the loss")
    finally:
        with anyio.CancelScope(shield=True):
            for node in compose.all_nodes():
                await node.stop()
