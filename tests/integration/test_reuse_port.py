"""One relay process per core (issue #10 item 5): with `relay.reuse_port`, several relay
processes listen on one port and the kernel spreads the connections over them; a message
published through one reaches subscribers of the other."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from relay.harness.toolkit import free_ports
from relay.simulate.client import ProtocolClient, protocol_client
from tests.support.relays import config_file, make_config, relay_process

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_two_relay_processes_share_one_port(nats_url: str, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    files = [
        config_file(
            tmp_path / f"{relay_id}.toml",
            make_config(
                nats_url=nats_url, relay_id=relay_id, port=port, relay={"reuse_port": True}
            ),
        )
        for relay_id in ("core-1", "core-2")
    ]
    with (
        relay_process(files[0], tmp_path / "core-1.log") as (_, url),
        relay_process(files[1], tmp_path / "core-2.log") as (_, same_url),
    ):
        assert url == same_url
        by_relay: dict[str, list[ProtocolClient]] = {}
        async with AsyncExitStack() as stack:
            for _ in range(40):
                client = await stack.enter_async_context(protocol_client(url))
                assert client.connected is not None
                by_relay.setdefault(client.connected["relay"], []).append(client)
            assert set(by_relay) == {"core-1", "core-2"}, {k: len(v) for k, v in by_relay.items()}
            subscriber, publisher = by_relay["core-2"][0], by_relay["core-1"][0]
            await subscriber.subscribe("chat:cores")
            assert (await publisher.publish("chat:cores", {"from": "core-1"}))["op"] == "ack"
            await subscriber.wait_messages("chat:cores", 1)
            assert subscriber.messages["chat:cores"][0]["data"] == {"from": "core-1"}
