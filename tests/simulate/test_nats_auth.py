"""`relaynet simulate`'s NATS containers are closed like a relay's embedded server (issue
#12): an anonymous CONNECT is refused, relays and links log in with the generated
credentials (also from relay containers, which get the password files mounted), and the
status reads link lag as the relay user."""

from __future__ import annotations

import os

import pytest

from relay.adapters.embedded_nats import RELAY_USER, peer_user
from relay.simulate import containers
from relay.simulate.network import RelayNetwork
from relay.simulate.spec import uniform
from relay.simulate.status import link_lag
from tests.support.nats import anonymous_connect, logs_in
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture(autouse=True)
def docker_engine() -> None:
    reason = containers.docker_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the simulation tests: {reason}")
        pytest.skip(reason)


async def test_the_nats_containers_refuse_strangers() -> None:
    network = RelayNetwork(uniform(["us-east", "eu-west"], 5.0))
    async with network:
        for region in network.regions:
            url = network.region(region).nats.url
            answer = await anonymous_connect(url)
            assert "Authorization Violation" in answer and "PONG" not in answer, answer
            assert await logs_in(url, network.credentials(region))
            cfg = network.config(network.region(region).relays[0])
            assert cfg.nats.user == RELAY_USER
            assert [p.nats_user for p in cfg.peers] == [peer_user(region)]
        async with network.client("eu-west") as west:
            await west.subscribe("chat:x")
            async with network.client("us-east") as east:
                await east.publish("chat:x", "closed")
            await west.wait_messages("chat:x", 1, 30)

        # The status logs in too (an anonymous one would know no lag at all: None), and
        # sees the link catch up once its acks are in.
        async def caught_up() -> bool:
            return await link_lag(network, "eu-west", "us-east") == 0

        await wait_until(caught_up, "eu-west's link to us-east without lag", 30)
