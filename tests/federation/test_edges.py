"""GET /v1/edges: every region's edge and its health from federation heartbeats; a region
whose heartbeats stop (or whose link is cut) is marked down within seconds, and up again
after the heal. GET /v1/ping answers for RTT probes."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.nats import NatsProcess
from tests.support.regions import (
    REGIONS,
    link_proxies,
    proxy_urls,
    region_configs,
    running_regions,
)
from tests.support.relays import timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def get(ws_url: str, path: str) -> tuple[str, str]:
    url = ws_url.replace("ws://", "http://").replace("/v1/ws", path)
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


async def edges(url: str) -> dict[str, Any]:
    _, body = await anyio.to_thread.run_sync(get, url, "/v1/edges")
    return dict(json.loads(body))


async def until_health(url: str, region: str, health: str) -> None:
    with anyio.fail_after(timeout(15)):
        while True:
            rows = [e for e in (await edges(url))["edges"] if e["region"] == region]
            # Every row of a region (its public edge, its relays) carries the region's health.
            if {row["health"] for row in rows} == {health}:
                return
            await anyio.sleep(0.2)  # polling an HTTP endpoint: nothing to wait on


async def test_edges_show_health_from_heartbeats(tmp_path: Path) -> None:
    servers = {r: NatsProcess(tmp_path / f"nats-{r}") for r in REGIONS}
    try:
        urls = {r: s.start() for r, s in servers.items()}
        async with link_proxies(urls) as proxies:
            configs = region_configs(urls, peer_urls=proxy_urls(proxies))
            async with running_regions(configs) as regions:
                east = regions["us-east"][0]
                kind, body = await anyio.to_thread.run_sync(get, east.url, "/v1/ping")
                assert kind.startswith("text/plain") and body.strip() == "pong"
                directory = await edges(east.url)
                assert directory["region"] == "us-east"
                # Per region its public edge first, then its relays heard from so far.
                regions_listed = [e["region"] for e in directory["edges"]]
                assert list(dict.fromkeys(regions_listed)) == list(REGIONS)
                assert directory["edges"][0]["url"] == east.url  # the bound port, not 0
                await until_health(east.url, "eu-west", "up")
                await until_health(east.url, "ap-south", "up")
                # us-east can no longer hear eu-west: down within seconds; up after the heal.
                proxies[("us-east", "eu-west")].cut()
                await until_health(east.url, "eu-west", "down")
                assert {
                    e["health"]
                    for e in (await edges(east.url))["edges"]
                    if e["region"] == "ap-south"
                } == {"up"}
                proxies[("us-east", "eu-west")].heal()
                await until_health(east.url, "eu-west", "up")
    finally:
        for server in servers.values():
            server.stop()
