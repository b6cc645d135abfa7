"""GET /metrics exposes connections, channels and federation state (buffer depth, links)."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import anyio
import pytest

from tests.support.regions import region_configs, region_nats, running_regions
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def scrape(ws_url: str) -> str:
    url = ws_url.replace("ws://", "http://").replace("/v1/ws", "/metrics")
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


def value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in:\n{text}")


async def test_metrics_show_federation_progress(tmp_path: Path) -> None:
    with region_nats(tmp_path, ("us-east", "eu-west")) as urls:
        async with running_regions(region_configs(urls)) as regions:
            east, west = regions["us-east"][0], regions["eu-west"][0]
            async with protocol_client(west.url) as sub, protocol_client(east.url) as pub:
                await sub.subscribe("chat:m")
                for n in range(5):
                    await pub.publish("chat:m", n)
                await sub.wait_messages("chat:m", 5)
                text = await anyio.to_thread.run_sync(scrape, west.url)
            assert value(text, "relaynet_federation_applied_total") >= 5
            assert value(text, "relaynet_federation_link_up", peer="us-east") == 1
            assert value(text, "relaynet_federation_buffered_messages") == 0
            assert value(text, "relaynet_connections") >= 1
            assert re.search(r"^relaynet_channels\{.*\} 1\.0$", text, re.MULTILINE)
