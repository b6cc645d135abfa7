"""Total order stays live after a crash (issue #9, item 3): once every region is back
and linked, every acked message of a total-order channel is delivered in every region
within a bounded time, with no further publish needed."""

from __future__ import annotations

import contextlib
import os
import signal
import urllib.request
from pathlib import Path

import anyio
import pytest

from tests.support.nats import NatsProcess, nats_server
from tests.support.regions import REGIONS, region_configs
from tests.support.relays import config_file, relay_process, running_relays, timeout
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

NAMESPACES = [{"name": "room", "prefix": "room:", "ordering": "total"}]
CHANNELS = [f"room:quiet-{n}" for n in range(40)]
DELIVERY_BOUND_S = 20


async def test_a_region_killed_mid_apply_does_not_stall_quiet_channels(tmp_path: Path) -> None:
    """A burst of one message on each of 40 quiet channels from us-east; ap-south (its
    NATS and its relay) is killed with SIGKILL while applying them and restarted."""
    east, west, south = REGIONS
    south_nats = NatsProcess(tmp_path / "nats-south")
    with (
        nats_server(tmp_path / "nats-east") as east_url,
        nats_server(tmp_path / "nats-west") as west_url,
    ):
        urls = {east: east_url, west: west_url, south: south_nats.start()}
        try:
            configs = {c.region.name: c for c in region_configs(urls, namespaces=NAMESPACES)}
            south_file = config_file(tmp_path / "south.toml", configs[south])
            async with running_relays(configs[east], configs[west]) as (east_relay, west_relay):
                with relay_process(south_file, tmp_path / "south-1.log") as (proc, south_url):
                    before = await applied(south_url)
                    async with protocol_client(east_relay.url) as pub:
                        async with anyio.create_task_group() as tg:
                            for channel in CHANNELS:
                                tg.start_soon(pub.publish, channel, channel)
                    # ap-south is applying the burst once it has applied some of it.
                    await wait_until(
                        lambda: _more_than(south_url, before),
                        "ap-south applying the burst",
                        DELIVERY_BOUND_S,
                        poll_s=0.005,
                    )
                    os.kill(proc.pid, signal.SIGKILL)
                    south_nats.kill()
                # The region stays down a moment, as a crashed one does (its peers' links
                # break and retry). Not a wait for anything: the test's bound starts once
                # it is back.
                await anyio.sleep(0.5)
                south_nats.start()
                with relay_process(south_file, tmp_path / "south-2.log") as (_, south_url):
                    for url in (east_relay.url, west_relay.url, south_url):
                        await _every_channel_delivers_its_message(url)
        finally:
            south_nats.stop()


def _metrics(ws_url: str) -> str:
    url = ws_url.replace("ws://", "http://").replace("/v1/ws", "/metrics")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout(5)) as response:
        return str(response.read().decode())


async def applied(ws_url: str) -> float:
    """How many remote messages the relay has appended to its log so far."""
    text = await anyio.to_thread.run_sync(_metrics, ws_url)
    for line in text.splitlines():
        if line.startswith("relaynet_federation_applied_total{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"relaynet_federation_applied_total not in:\n{text}")


async def _more_than(ws_url: str, count: float) -> bool:
    return await applied(ws_url) > count


async def _every_channel_delivers_its_message(url: str) -> None:
    async with protocol_client(url) as sub:
        for channel in CHANNELS:
            assert (await sub.subscribe(channel, position={}))["op"] == "subscribed"
        with contextlib.suppress(TimeoutError):
            await sub.wait_for(lambda: all(sub.messages[c] for c in CHANNELS), DELIVERY_BOUND_S)
        stuck = [c for c in CHANNELS if not sub.messages[c]]
        assert not stuck, f"{url}: {len(stuck)} channels never delivered: {stuck[:5]}"
        for channel in CHANNELS:
            assert [m["data"] for m in sub.messages[channel]] == [channel]
