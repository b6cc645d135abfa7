"""The tools' nats-servers are closed like a relay's embedded one (issue #12): the regions
of ``relaynet demo`` (``relay.harness.network``, also under simulate and the benchmarks)
and of the multi-region tests (``tests.support.regions``) refuse an anonymous CONNECT,
and their relays and links run on the generated credentials, each peer region as its
own user."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.adapters.embedded_nats import RELAY_USER, peer_user
from relay.demo import demo_network
from tests.support.nats import anonymous_connect, logs_in
from tests.support.regions import region_configs, region_nats, running_regions
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_the_demos_nats_refuses_strangers_and_its_regions_federate(tmp_path: Path) -> None:
    async with demo_network(tmp_path, latency_scale=0.0) as net:
        for region in net.regions:
            url = net.region(region).nats.url
            answer = await anonymous_connect(url)
            assert "Authorization Violation" in answer and "PONG" not in answer, answer
            # The relays log in as the relay user, every other region as its own user.
            relay = net.region(region).relays[0]
            cfg = net.config(relay)
            assert cfg.nats.user == RELAY_USER
            assert {(p.region, p.nats_user) for p in cfg.peers} == {
                (peer, peer_user(region)) for peer in net.regions if peer != region
            }
            assert await logs_in(url, net.credentials(region))
            for peer in net.regions:
                if peer != region:
                    assert await logs_in(url, net.credentials(region, peer_user(peer)))
        # Federation works on those users: a message crosses every link.
        async with (
            protocol_client(net.edge("eu-west")) as west,
            protocol_client(net.edge("ap-south")) as south,
        ):
            await west.subscribe("chat:lobby")
            await south.subscribe("chat:lobby")
            async with protocol_client(net.edge("us-east")) as east:
                assert (await east.publish("chat:lobby", "closed"))["op"] == "ack"
            await west.wait_messages("chat:lobby", 1, 30)
            await south.wait_messages("chat:lobby", 1, 30)


async def test_the_test_regions_nats_is_closed_once_configured(tmp_path: Path) -> None:
    regions = ("us-east", "eu-west")
    with region_nats(tmp_path, regions) as urls:
        configs = region_configs(urls)
        for url in urls.values():
            answer = await anonymous_connect(url)
            assert "Authorization Violation" in answer and "PONG" not in answer, answer
        east, west = configs
        assert east.nats.user == RELAY_USER
        assert [(p.region, p.nats_user) for p in east.peers] == [("eu-west", "peer-us-east")]
        assert [(p.region, p.nats_user) for p in west.peers] == [("us-east", "peer-eu-west")]
        async with running_regions(configs) as nodes:
            async with protocol_client(nodes["eu-west"][0].url) as sub:
                await sub.subscribe("chat:x")
                async with protocol_client(nodes["us-east"][0].url) as pub:
                    await pub.publish("chat:x", {"from": "east"})
                await sub.wait_messages("chat:x", 1, 30)
