"""A frozen federation instance is taken over like a dead one (issue #9, item 4): its
link's lease expires, and the next holder takes the durable consumer on the peer even
though the frozen process still holds a subscription to it."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

import anyio
import pytest

from tests.support.checker import check_causal, ids
from tests.support.regions import FAST_FEDERATION, region_configs, region_nats
from tests.support.relays import config_file, relay_process, running_relays, timeout
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

FREEZE_S = 10.0
# Takeover within the lease TTL plus a few seconds, well inside the freeze.
TAKEOVER_BOUND_S = FAST_FEDERATION["lease_ttl_s"] + 4.0


def _metrics(ws_url: str) -> str:
    url = ws_url.replace("ws://", "http://").replace("/v1/ws", "/metrics")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout(5)) as response:
        return str(response.read().decode())


async def holder_settled(ws_url: str) -> bool:
    """The relay at ws_url no longer serves its link to us-east and buffers nothing."""
    text = await anyio.to_thread.run_sync(_metrics, ws_url)
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("relaynet_federation_link_up{") and 'peer="us-east"' in line:
            values["link_up"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("relaynet_federation_buffered_messages{"):
            values["buffered"] = float(line.rsplit(" ", 1)[1])
    return values == {"link_up": 0.0, "buffered": 0.0}


async def test_a_frozen_link_holder_is_taken_over_within_the_lease(tmp_path: Path) -> None:
    with region_nats(tmp_path, ("us-east", "eu-west")) as urls:
        configs = region_configs(urls, relays_per_region=2)
        east = [c for c in configs if c.region.name == "us-east"]
        west = [c for c in configs if c.region.name == "eu-west"]
        holder_file = config_file(tmp_path / "holder.toml", west[0])
        with relay_process(holder_file, tmp_path / "holder.log") as (holder, holder_url):
            async with running_relays(east[0]) as (east_node,):
                async with (
                    protocol_client(holder_url) as probe,
                    protocol_client(east_node.url) as pub,
                ):
                    # The holder serves the link once a message crosses to it.
                    await probe.subscribe("chat:frozen")
                    acked = [(await pub.publish("chat:frozen", "warm"))["id"]]
                    await probe.wait_messages("chat:frozen", 1, 30)
                async with running_relays(west[1]) as (other,):
                    async with (
                        protocol_client(other.url) as sub,
                        protocol_client(east_node.url) as pub,
                    ):
                        await sub.subscribe("chat:frozen", position={})
                        await sub.wait_messages("chat:frozen", 1, 30)
                        os.kill(holder.pid, signal.SIGSTOP)
                        frozen_at = time.monotonic()
                        try:
                            for n in range(20):
                                acked.append((await pub.publish("chat:frozen", n))["id"])
                            await sub.wait_messages("chat:frozen", len(acked), FREEZE_S)
                            took = time.monotonic() - frozen_at
                        finally:
                            os.kill(holder.pid, signal.SIGCONT)
                        assert took < timeout(TAKEOVER_BOUND_S), f"took {took:.1f} s"
                        # The holder thaws: nothing is applied twice, nothing lost.
                        for n in range(20, 40):
                            acked.append((await pub.publish("chat:frozen", n))["id"])
                        await sub.wait_messages("chat:frozen", len(acked), 30)
                        # The thawed holder lets go (its lease is gone): it serves the link
                        # no more and holds no remote message back. What it applied late
                        # is in the region's log by then.
                        await wait_until(
                            lambda: holder_settled(holder_url), "the thawed holder let go", 30
                        )
                        # A late duplicate is stored before this marker, so it arrives
                        # before it (one order per channel): read up to the marker.
                        acked.append((await pub.publish("chat:frozen", "end", id="end"))["id"])
                        await sub.wait_for(lambda: "end" in ids(sub.messages["chat:frozen"]), 30)
                        received = sub.messages["chat:frozen"]
                        assert ids(received) == acked
                        assert check_causal(received) == []
