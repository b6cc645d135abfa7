"""`relaynet federate` as its own process, with relays that do not federate themselves."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from relay.config.schema import RelayConfig
from tests.support.regions import region_configs, region_nats, running_regions
from tests.support.relays import federate_process
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def federate_config(path: Path, relay: RelayConfig) -> Path:
    """A config of its own for ``relaynet federate`` in ``relay``'s region, with the NATS
    credentials the region's relays have (the region's NATS is closed)."""
    region, nats = relay.region.name, relay.nats
    lines = [
        "[region]", f'name = "{region}"',
        "[relay]", f'id = "{region}-fed"',
        "[nats]", f'url = "{nats.url}"', f'user = "{nats.user}"',
        f'password_file = "{nats.password_file}"',
        "[federation]", "ack_wait_s = 2.0", "lease_ttl_s = 1.5",
    ]  # fmt: skip
    for peer in relay.peers:
        lines += ["[[peers]]", f'region = "{peer.region}"', 'edge_url = "ws://127.0.0.1:1/v1/ws"',
                  f'nats_url = "{peer.nats_url}"', f'nats_user = "{peer.nats_user}"',
                  f'nats_password_file = "{peer.nats_password_file}"']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_standalone_federate_processes_link_two_regions(tmp_path: Path) -> None:
    regions = ("us-east", "eu-west")
    with region_nats(tmp_path, regions) as urls:
        configs = region_configs(urls, federation={"run_in_relay": False})
        with ExitStack() as stack:
            for relay in configs:
                region = relay.region.name
                path = federate_config(tmp_path / f"{region}.toml", relay)
                stack.enter_context(federate_process(path, tmp_path / f"{region}-federate.log"))
            async with running_regions(configs) as nodes:
                east, west = nodes["us-east"][0], nodes["eu-west"][0]
                assert east.federation is None and west.federation is None
                async with protocol_client(west.url) as sub, protocol_client(east.url) as pub:
                    await sub.subscribe("chat:far")
                    for n in range(5):
                        await pub.publish("chat:far", n)
                    await sub.wait_messages("chat:far", 5, 30)
                    assert [m["data"] for m in sub.messages["chat:far"]] == list(range(5))
