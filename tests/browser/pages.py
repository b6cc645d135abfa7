"""Pages for the browser tests: relays of several regions, the demo chat page opened with
latency toward far regions, and a client whose every WebSocket and pause is written down."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from relay.config.schema import RelayConfig
from relay.harness.toolkit import free_ports
from relay.node import RelayNode
from tests.browser.chromium import Browser, Page
from tests.support.regions import FAST_FEDERATION, region_nats, running_regions
from tests.support.relays import make_config

FAR_MS = 100  # latency added toward the other region's relays


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/ws"


def federated_configs(
    nats_urls: dict[str, str],
    ports: dict[str, list[int]],
    presence: dict[str, Any] | None = None,
) -> list[RelayConfig]:
    """Relays on fixed ports; each peer's edge_url is the first relay of that region, so
    that GET /v1/edges lists edges a browser can actually reach. ``presence``: the
    ``[presence]`` section."""
    configs = []
    for region, url in nats_urls.items():
        peers = [
            {"region": peer, "edge_url": ws_url(ports[peer][0]), "nats_url": peer_nats}
            for peer, peer_nats in nats_urls.items()
            if peer != region
        ]
        for i, port in enumerate(ports[region]):
            configs.append(
                make_config(
                    nats_url=url,
                    region=region,
                    relay_id=f"{region}-{i + 1}",
                    port=port,
                    peers=peers,
                    federation=FAST_FEDERATION,
                    presence=presence,
                )
            )
    return configs


@asynccontextmanager
async def regions(
    tmp_path: Path, relays: dict[str, int], presence: dict[str, Any] | None = None
) -> AsyncIterator[tuple[dict[str, list[RelayNode]], dict[str, list[int]]]]:
    ports_list = free_ports(sum(relays.values()))
    ports = {r: [ports_list.pop() for _ in range(n)] for r, n in relays.items()}
    with region_nats(tmp_path, tuple(relays)) as nats_urls:
        async with running_regions(federated_configs(nats_urls, ports, presence)) as nodes:
            yield nodes, ports


def page_url(port: int, **params: str) -> str:
    return f"http://127.0.0.1:{port}/?{urlencode(params)}"


async def open_chat(
    browser: Browser,
    port: int,
    seeds: list[int],
    far: list[int],
    room: str,
    name: str,
    **params: str,
) -> Page:
    """The demo page served by the relay on ``port``, with latency toward ``far`` ports."""
    page = await browser.new_page("about:blank")
    for far_port in far:
        await page.delay_requests(f"http://127.0.0.1:{far_port}/*", FAR_MS / 1000)
    seed_list = ",".join(ws_url(p) for p in seeds)
    await page.goto(page_url(port, room=room, seeds=seed_list, name=name, **params))
    await page.wait_for("window.relaynetDemo?.state === 'connected'", 20, f"{name} to connect")
    # Subscribed: the channel has a position (live subscriptions start at the channel's head).
    await page.wait_for(
        "relaynetDemo.client.position(relaynetDemo.channel) !== null", 10, f"{name} to subscribe"
    )
    return page


async def where(page: Page) -> dict[str, Any]:
    info = await page.evaluate(
        "({region: relaynetDemo.client.region, relay: relaynetDemo.client.relay,"
        " choice: relaynetDemo.client.choice, survey: relaynetDemo.client.survey,"
        " state: relaynetDemo.state,"
        " shown: {region: document.querySelector('[data-testid=region]').textContent,"
        " relay: document.querySelector('[data-testid=relay]').textContent,"
        " reason: document.querySelector('[data-testid=choice-reason]').textContent,"
        " rows: document.querySelectorAll('[data-testid=rtt-row]').length}})"
    )
    assert isinstance(info, dict)
    return info


async def type_and_send(page: Page, text: str) -> None:
    """Through the page's own form, as a person would."""
    await page.evaluate(
        "(() => { const input = document.querySelector('[data-testid=input]');"
        f" input.value = {json.dumps(text)};"
        " document.querySelector('[data-testid=send]').click(); })()"
    )


async def wait_texts(page: Page, expected: list[str], timeout_s: float, what: str) -> None:
    wanted = json.dumps(expected)
    await page.wait_for(
        f"(() => {{ const have = new Set(relaynetDemo.messages.map((m) => m.text));"
        f" return {wanted}.every((t) => have.has(t)); }})()",
        timeout_s,
        what,
    )


WATCHED_CLIENT = """(async () => {
  const m = await import('/v1/client.js');
  window.log = [];
  class Watched extends WebSocket {
    constructor(url, ...rest) {
      log.push(['open', String(url)]);
      super(url, ...rest);
    }
  }
  window.c = m.createClient(%s, {WebSocket: Watched, maxMs: 1000});
  c.on('retry', (r) => log.push(['retry', r.url ?? null]));
  c.on('state', (s, info) => { if (s === 'disconnected') log.push([s, info.reason ?? null]); });
  c.on('connected', (e) => log.push(['connected', e.url]));
  await c.ready;
})()"""


async def watched_page(browser: Browser, origin_port: int, seed: str) -> Page:
    """A page (served by the relay on ``origin_port``) whose client, seeded with ``seed``
    only, is connected and writes down what it does in ``log``."""
    page = await browser.new_page(f"http://127.0.0.1:{origin_port}/v1/ping")
    await page.evaluate(WATCHED_CLIENT % json.dumps([seed]), timeout_s=20)
    return page
