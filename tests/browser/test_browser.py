"""The browser client (relay/web/client.js) and the demo page in a real headless Chromium,
loaded from a relay, against relays of two regions federated over real nats-servers.

Every region is on loopback, so RTT probes alone cannot tell regions apart: each page gets
network latency toward the other region's relays (its requests to them are held for a while
before they go out, through the DevTools protocol), and the client must pick by its own
measurements. Nothing in the page is mocked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import pytest

from relay.client.backoff import Backoff
from relay.client.connection import Client, Directory, DirectoryEdge, fetch_directory, plan
from relay.client.routing import Edge, MoveBackPolicy, choose, should_move_back
from relay.client.session import (
    ClientSession,
    FrameTooLarge,
    Redirected,
    _Pending,
    _publish_size,
    close_policy,
)
from relay.config.schema import RelayConfig
from relay.node import RelayNode
from tests.browser.chromium import CHROMIUM, Browser, Page, chromium, chromium_available
from tests.integration.test_redirect import wait_listed
from tests.support.regions import FAST_FEDERATION, region_nats, running_regions
from tests.support.relays import (
    config_file,
    make_config,
    relay_process,
    running_relays,
    timeout,
)
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

MOVE_POLICIES: list[MoveBackPolicy] = ["stay", "when-idle", "immediately"]
FAR_MS = 100  # latency added toward the other region's relays


@pytest.fixture(autouse=True)
def _need_chromium() -> None:
    if chromium_available():
        return
    message = f"{CHROMIUM} is missing: apt-get install -y chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_ports(n: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held together, so they are distinct)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/ws"


def federated_configs(nats_urls: dict[str, str], ports: dict[str, list[int]]) -> list[RelayConfig]:
    """Relays on fixed ports; each peer's edge_url is the first relay of that region, so
    that GET /v1/edges lists edges a browser can actually reach."""
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
                )
            )
    return configs


@asynccontextmanager
async def regions(
    tmp_path: Path, relays: dict[str, int]
) -> AsyncIterator[tuple[dict[str, list[RelayNode]], dict[str, list[int]]]]:
    ports_list = free_ports(sum(relays.values()))
    ports = {r: [ports_list.pop() for _ in range(n)] for r, n in relays.items()}
    with region_nats(tmp_path, tuple(relays)) as nats_urls:
        async with running_regions(federated_configs(nats_urls, ports)) as nodes:
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


async def test_two_regions_chat(tmp_path: Path) -> None:
    """(a) A page in each region picks its own region by RTT, explains why, and the two
    exchange messages both ways; each message shows its origin and vector timestamp."""
    async with regions(tmp_path, {"us-east": 1, "eu-west": 1}) as (_, ports):
        east, west = ports["us-east"][0], ports["eu-west"][0]
        async with chromium(tmp_path / "chromium.log") as browser:
            alice = await open_chat(browser, east, [east], [west], "duo", "alice")
            bob = await open_chat(browser, west, [west], [east], "duo", "bob")

            for page, region, relay in (
                (alice, "us-east", "us-east-1"),
                (bob, "eu-west", "eu-west-1"),
            ):
                info = await where(page)
                assert (info["region"], info["relay"]) == (region, relay)
                assert info["shown"]["region"] == region and info["shown"]["relay"] == relay
                choice = info["choice"]
                assert choice["order"][0] == region
                assert choice["reasons"][region].startswith("nearest healthy: median")
                other = next(r for r in choice["order"] if r != region)
                assert choice["rttMs"][other] >= FAR_MS
                edge = next(url for r, url in info["survey"]["candidates"] if r == region)
                assert len(info["survey"]["samples"][edge]) == 3
                assert info["shown"]["rows"] == 2
                assert "nearest healthy" in info["shown"]["reason"]

            await type_and_send(alice, "hello from alice")
            await wait_texts(bob, ["hello from alice"], 20, "alice's message in eu-west")
            # Bob answers after he has seen alice's message: its ts says so.
            await type_and_send(bob, "hi alice, bob here")
            await wait_texts(alice, ["hi alice, bob here"], 20, "bob's message in us-east")
            await wait_texts(alice, ["hello from alice"], 10, "alice's own message")
            await wait_texts(bob, ["hi alice, bob here"], 10, "bob's own message")

            for page in (alice, bob):
                messages = await page.evaluate("relaynetDemo.messages")
                by_text = {m["text"]: m for m in messages}
                assert len(messages) == 2, messages
                assert by_text["hello from alice"]["origin"] == "us-east"
                assert by_text["hello from alice"]["ts"] == {"us-east": 1}
                assert by_text["hi alice, bob here"]["origin"] == "eu-west"
                assert by_text["hi alice, bob here"]["ts"] == {"eu-west": 1, "us-east": 1}
                shown = await page.evaluate(
                    "[...document.querySelectorAll('[data-testid=message]')].map((li) => ({"
                    " text: li.querySelector('[data-testid=message-text]').textContent,"
                    " origin: li.querySelector('[data-testid=message-origin]').textContent,"
                    " ts: li.querySelector('[data-testid=message-ts]').textContent}))"
                )
                assert shown == [
                    {"text": "hello from alice", "origin": "us-east", "ts": "{us-east:1}"},
                    {
                        "text": "hi alice, bob here",
                        "origin": "eu-west",
                        "ts": "{eu-west:1, us-east:1}",
                    },
                ]
            # ?regions= restricts the directory: this page goes to the far region it was told.
            erin = await open_chat(browser, east, [east], [west], "duo", "erin", regions="eu-west")
            info = await where(erin)
            assert info["region"] == "eu-west" and info["choice"]["order"] == ["eu-west"]
            await type_and_send(erin, "erin was pinned")
            await wait_texts(alice, ["erin was pinned"], 20, "erin's message in us-east")
            await alice.screenshot(tmp_path / "alice.png")
            await bob.screenshot(tmp_path / "bob.png")
            for page in (alice, bob):
                assert await page.evaluate("relaynetDemo.errors") == []


async def test_reconnect_and_failover_resume(tmp_path: Path) -> None:
    """(b) Carol's relay (the only one of us-east) stops: with no sibling to redirect her to,
    she fails over to eu-west by her own order and resumes there; then her eu-west relay
    stops and redirects her to its sibling (dave's eu-west-2), which she ignores (eu-west is
    not her first choice: her own order decides) and reaches anyway. Everything dave published
    meanwhile reaches her exactly once and in order, and what she published while cut off
    reaches him exactly once."""
    async with regions(tmp_path, {"us-east": 1, "eu-west": 2}) as (nodes, ports):
        east = ports["us-east"][0]
        west1, west2 = ports["eu-west"]  # the directory lists eu-west-1 for eu-west
        east_node = nodes["us-east"][0]
        west1_node = nodes["eu-west"][0]
        async with AsyncExitStack() as stack:
            browser = await stack.enter_async_context(chromium(tmp_path / "chromium.log"))
            carol = await open_chat(browser, east, [east], [west1, west2], "failover", "carol")
            dave = await open_chat(browser, west2, [west2], [east], "failover", "dave")
            assert (await where(carol))["relay"] == "us-east-1"
            assert (await where(dave))["relay"] == "eu-west-2"

            sent: list[str] = []
            carol_sent: list[str] = []

            async def dave_says(n: int) -> None:
                for _ in range(n):
                    sent.append(f"dave {len(sent) + 1}")
                    ack = await dave.evaluate(f"relaynetDemo.send({json.dumps(sent[-1])})")
                    assert ack["channel"] == "chat:failover"

            async def carol_says() -> None:
                carol_sent.append(f"carol {len(carol_sent) + 1}")
                # Not awaited: while she is cut off the publish waits for the next connection.
                await carol.evaluate(f"relaynetDemo.send({json.dumps(carol_sent[-1])}).id")

            async def cut_off(stop: RelayNode, then_on: str) -> None:
                stop.stop()  # graceful: a redirect to a sibling if any, then 1001 going_away
                await dave_says(3)
                await carol_says()
                await dave_says(2)
                await carol.wait_for(
                    "relaynetDemo.state === 'connected'"
                    f" && relaynetDemo.client.relay === {json.dumps(then_on)}",
                    30,
                    f"carol on {then_on}",
                )
                await dave_says(2)
                await wait_texts(carol, sent, 30, f"dave's messages on {then_on}")

            await dave_says(3)
            await wait_texts(carol, sent, 20, "the first messages in us-east")
            await cut_off(east_node, "eu-west-1")
            assert await carol.evaluate("relaynetDemo.client.redirects") == 0
            await wait_listed(west1_node, {ws_url(west2)})
            await cut_off(west1_node, "eu-west-2")
            assert await carol.evaluate("relaynetDemo.client.redirects") == 0
            seen = await carol.evaluate(
                "relaynetDemo.redirects.map((r) => [r.from, r.url, r.followed, r.ignored])"
            )
            assert seen and all(not followed for _, _, followed, _ in seen), seen
            assert "not our first choice (us-east)" in seen[0][3], seen

            await wait_texts(dave, carol_sent, 30, "carol's messages")
            await carol.wait_for(
                "Object.keys(relaynetDemo.client.pending).length === 0", 10, "carol's acks"
            )
            assert await carol.evaluate("relaynetDemo.client.connections") == 3
            states = [s["state"] for s in await carol.evaluate("relaynetDemo.states")]
            assert states.count("disconnected") == 2 and states[-1] == "connected", states

            # Exactly once, in order: dave's messages in carol's page, carol's in dave's.
            got = await carol.evaluate("relaynetDemo.messages")
            from_dave = [m for m in got if m["name"] == "dave"]
            assert [m["text"] for m in from_dave] == sent
            assert all(m["origin"] == "eu-west" for m in from_dave)
            counters = [m["ts"]["eu-west"] for m in from_dave]
            assert counters == sorted(set(counters)), counters
            assert len({m["id"] for m in got}) == len(got)
            got = await dave.evaluate("relaynetDemo.messages")
            assert [m["text"] for m in got if m["name"] == "carol"] == carol_sent
            assert len({m["id"] for m in got}) == len(got)
            await carol.screenshot(tmp_path / "carol.png")


async def test_hung_relay_outage_and_recovery(tmp_path: Path, nats_url: str) -> None:
    """A browser cannot see WebSocket pings: the client notices a relay that stopped answering
    (SIGSTOP) after twice heartbeat_s and moves to another relay; with every relay gone it is
    suspended, and it comes back by itself when a relay of its seeds does."""
    hung_port, spare_port = free_ports(2)
    config = tmp_path / "hung.toml"
    config.write_text(
        f'[region]\nname = "us-east"\n[relay]\nid = "hung"\nhost = "127.0.0.1"\n'
        f'port = {hung_port}\nheartbeat_s = 1.0\n[nats]\nurl = "{nats_url}"\n'
    )
    seeds = json.dumps([ws_url(hung_port), ws_url(spare_port)])
    with relay_process(config, tmp_path / "hung.log") as (proc, _):
        async with chromium(tmp_path / "chromium.log") as browser:
            page = await browser.new_page(page_url(hung_port, room="outage"))
            await page.evaluate(
                "(async () => { const m = await import('/v1/client.js');"
                f" window.c = m.createClient({seeds}, {{maxMs: 1000}});"
                " window.states = [];"
                " c.on('state', (s, info) => states.push([s, info.reason ?? null]));"
                " window.got = []; c.subscribe('chat:outage', (msg) => got.push(msg.data));"
                " await c.ready; })()"
            )
            assert await page.evaluate("[c.relay, c.heartbeatS]") == ["hung", 1.0]
            await anyio.sleep(3)  # idle for 3 heartbeats: protocol pings keep it up
            assert await page.evaluate("states.map((s) => s[0])") == ["connecting", "connected"]

            spare = make_config(nats_url=nats_url, relay_id="spare", port=spare_port)
            async with running_relays(spare):
                os.kill(proc.pid, signal.SIGSTOP)
                started = time.monotonic()
                await page.wait_for("c.state === 'connected' && c.relay === 'spare'", 20, "spare")
                # 2 heartbeats to notice, the open timeout (5 s) on the hung relay, then a new
                # directory (after the hung seed's 2 s timeout) lists the spare relay.
                assert time.monotonic() - started < timeout(20)
                reasons = [r for s, r in await page.evaluate("states") if s == "disconnected"]
                assert reasons and reasons[0].startswith("no frame for"), reasons
                await page.evaluate("c.publish('chat:outage', 'on spare')")
            os.kill(proc.pid, signal.SIGKILL)  # the hung relay never comes back
            await page.wait_for("c.state === 'suspended'", 20, "suspended")
            pending = await page.evaluate("c.publish('chat:outage', 'queued').id")
            async with running_relays(spare):
                await page.wait_for("c.state === 'connected'", 30, "recovery")
                await page.wait_for("got.length === 2", 10, "the queued message")
            assert await page.evaluate("got") == ["on spare", "queued"]
            assert pending.endswith("-2")


# The supervisor's order of attempts, as the page sees it: every WebSocket the client opens
# (through options.WebSocket), every backoff pause ("retry", with the edge it precedes), every
# drop and every connection, in one list.
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


async def sibling_listed(url: str, sibling: str) -> None:
    """Until the relay at ``url`` lists ``sibling`` in /v1/edges (beats: every second)."""
    with anyio.fail_after(timeout(15)):
        while True:
            directory = await fetch_directory([url])
            if directory and sibling in {e.url for e in directory.edges}:
                return
            await anyio.sleep(0.1)


async def watched_page(browser: Browser, origin_port: int, seed: str) -> Page:
    """A page (served by the relay on ``origin_port``) whose client, seeded with ``seed``
    only, is connected and writes down what it does in ``log``."""
    page = await browser.new_page(f"http://127.0.0.1:{origin_port}/v1/ping")
    await page.evaluate(WATCHED_CLIENT % json.dumps([seed]), timeout_s=20)
    return page


async def test_a_crashed_relay_one_pause_then_the_next_edge_at_once(
    tmp_path: Path, nats_url: str
) -> None:
    """SIGKILL: after the drop the page's client waits one jittered pause (spreading a
    crowd), retries the dead edge (refused at once) and goes on to the next edge of the
    round without a second pause."""
    dead_cfg = make_config(nats_url=nats_url, relay_id="dead")
    with relay_process(config_file(tmp_path / "dead.toml", dead_cfg), tmp_path / "d.log") as (
        proc,
        dead_url,
    ):
        async with running_relays(make_config(nats_url=nats_url, relay_id="other")) as (other,):
            await sibling_listed(dead_url, other.url)
            async with chromium(tmp_path / "chromium.log") as browser:
                page = await watched_page(browser, other.port, dead_url)
                assert await page.evaluate("[c.relay, c.survey.candidates.map((e) => e[1])]") == [
                    "dead",
                    [dead_url, other.url],
                ]
                before = await page.evaluate("log.length")
                os.kill(proc.pid, signal.SIGKILL)
                await page.wait_for("c.connections === 2", 20, "the page on the other relay")
                assert await page.evaluate("c.relay") == "other"
                assert await page.evaluate(f"log.slice({before})") == [
                    ["disconnected", "connection lost"],
                    ["retry", dead_url],  # the one pause, before the dead edge
                    ["open", dead_url],  # refused at once
                    ["open", other.url],  # no pause in between
                    ["connected", other.url],
                ]


async def test_a_frozen_relay_is_left_by_liveness_and_tried_last(
    tmp_path: Path, nats_url: str
) -> None:
    """SIGSTOP: the relay's sockets stay open and its kernel still accepts connections. The
    page's liveness check (a protocol ping with no frame back within heartbeat_s) gives it
    up, and the next round tries it last: the next WebSocket the page opens is the
    sibling's, not one more handshake left hanging on the frozen relay."""
    config = tmp_path / "frozen.toml"
    config.write_text(
        f'[region]\nname = "us-east"\n[relay]\nid = "frozen"\nhost = "127.0.0.1"\n'
        f'port = 0\nheartbeat_s = 0.5\n[nats]\nurl = "{nats_url}"\n'
    )
    with relay_process(config, tmp_path / "f.log") as (proc, frozen_url):
        async with running_relays(make_config(nats_url=nats_url, relay_id="other")) as (other,):
            await sibling_listed(frozen_url, other.url)
            async with chromium(tmp_path / "chromium.log") as browser:
                page = await watched_page(browser, other.port, frozen_url)
                assert await page.evaluate(
                    "[c.relay, c.heartbeatS, c.survey.candidates.map((e) => e[1])]"
                ) == ["frozen", 0.5, [frozen_url, other.url]]
                before = await page.evaluate("log.length")
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    await page.wait_for("c.connections === 2", 30, "the page on the other relay")
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
                assert await page.evaluate("c.relay") == "other"
                (state, reason), *after = await page.evaluate(f"log.slice({before})")
                assert state == "disconnected" and reason.startswith("no frame for"), reason
                assert after == [
                    ["retry", other.url],  # one pause, then the sibling first
                    ["open", other.url],
                    ["connected", other.url],
                ]


async def test_moves_back_to_a_nearer_region(tmp_path: Path) -> None:
    """With moveBack "immediately" the client surveys again while connected and leaves for a
    nearer region once it is up (us-east starts after the client settled on the far eu-west)."""
    east_port, west_port = free_ports(2)
    with region_nats(tmp_path, ("us-east", "eu-west")) as nats_urls:
        ports = {"us-east": [east_port], "eu-west": [west_port]}
        east_cfg, west_cfg = federated_configs(nats_urls, ports)
        async with running_relays(west_cfg):
            async with chromium(tmp_path / "chromium.log") as browser:
                page = await browser.new_page("about:blank")
                await page.delay_requests(f"http://127.0.0.1:{west_port}/*", FAR_MS / 1000)
                await page.goto(f"http://127.0.0.1:{west_port}/v1/ping")
                await page.evaluate(
                    "(async () => {"
                    f" const m = await import('http://127.0.0.1:{west_port}/v1/client.js');"
                    f" window.c = m.createClient({json.dumps([ws_url(west_port)])},"
                    "   {moveBack: 'immediately', refreshMs: 1000});"
                    " window.got = []; c.subscribe('chat:move', (msg) => got.push(msg.data));"
                    " await c.ready; })()",
                    timeout_s=20,
                )
                assert await page.evaluate("c.region") == "eu-west"
                assert (await page.evaluate("c.choice.reasons['us-east']")).startswith(
                    "unreachable: all 3 probes failed"
                )
                await page.evaluate("c.publish('chat:move', 'before')")
                async with running_relays(east_cfg):
                    await page.wait_for(
                        "c.state === 'connected' && c.region === 'us-east'", 20, "move"
                    )
                    reasons = await page.evaluate("c.choice.reasons")
                    assert reasons["us-east"].startswith("nearest healthy")
                    await page.evaluate("c.publish('chat:move', 'after')")
                    await page.wait_for("got.length === 2", 20, "both messages")
                    assert await page.evaluate("got") == ["before", "after"]
                    assert await page.evaluate("c.connections") == 2


async def test_a_draining_relay_sends_the_page_to_its_sibling(
    tmp_path: Path, nats_url: str
) -> None:
    """Relay A of a region with two relays stops (gracefully, it drains): the page follows
    A's redirect to B at once, and of what a publisher on B sent meanwhile it misses
    nothing and gets nothing twice."""
    cfgs = [make_config(nats_url=nats_url, relay_id=f"r{i}") for i in (1, 2)]
    async with running_relays(*cfgs) as (first, second):
        await wait_listed(first, {second.url})  # else A has no sibling to send the page to
        async with chromium(tmp_path / "chromium.log") as browser:
            page = await open_chat(browser, first.port, [first.port], [], "drain", "ivy")
            assert (await where(page))["relay"] == "r1"
            total = 240
            acked: list[str] = []

            async def publish() -> None:
                async with protocol_client(second.url) as pub:
                    for n in range(total):
                        ack = await pub.publish("chat:drain", {"text": f"m{n}", "name": "pub"})
                        acked.append(ack["id"])
                        await anyio.sleep(0.01)  # still publishing while the page moves

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                await page.wait_for("relaynetDemo.messages.length >= 40", 20, "the first messages")
                first.stop()
            await page.wait_for(
                f"relaynetDemo.messages.length >= {total}", 30, "every message on r2"
            )
            await anyio.sleep(0.3)  # a duplicate would come right behind the last one
            got = await page.evaluate(
                "({ids: relaynetDemo.messages.map((m) => m.id),"
                " relay: relaynetDemo.client.relay, redirects: relaynetDemo.client.redirects,"
                " connections: relaynetDemo.client.connections,"
                " seen: relaynetDemo.redirects.map((r) => [r.region, r.url, r.reason, r.followed]),"
                " states: relaynetDemo.states.map((s) => s.state),"
                " log: document.querySelector('[data-testid=log]').textContent,"
                " errors: relaynetDemo.errors})"
            )
            assert got["ids"] == acked  # no loss, no duplicate, in order
            assert (got["relay"], got["redirects"], got["connections"]) == ("r2", 1, 2)
            assert got["seen"] == [["us-east", second.url, "draining", True]]
            assert got["states"] == [
                "connecting",
                "connected",
                "disconnected",
                "connecting",
                "connected",
            ]
            assert f"redirected to {second.url} (us-east): draining" in got["log"]
            assert got["errors"] == []


async def test_a_full_relay_redirects_the_page_to_its_sibling(
    tmp_path: Path, nats_url: str
) -> None:
    """A relay at limits.max_connections answers the page's WebSocket with a redirect
    instead of `connected`: the page goes to the sibling without a backoff pause."""
    full_cfg = make_config(nats_url=nats_url, relay_id="r1", limits={"max_connections": 1})
    other_cfg = make_config(nats_url=nats_url, relay_id="r2")
    async with running_relays(full_cfg, other_cfg) as (full, other):
        await wait_listed(full, {other.url})
        async with protocol_client(full.url), chromium(tmp_path / "chromium.log") as browser:
            page = await open_chat(browser, full.port, [full.port], [], "full", "jay")
            info = await where(page)
            assert info["relay"] == "r2"
            assert info["survey"]["candidates"][0][1] == full.url  # tried first, refused
            got = await page.evaluate(
                "({redirects: relaynetDemo.client.redirects,"
                " connections: relaynetDemo.client.connections,"
                " seen: relaynetDemo.redirects.map((r) => [r.url, r.reason, r.followed]),"
                " states: relaynetDemo.states.map((s) => s.state)})"
            )
            assert got == {
                "redirects": 1,
                "connections": 1,
                "seen": [[other.url, "overloaded", True]],
                "states": ["connecting", "connected"],  # the redirect is part of connecting
            }
            await type_and_send(page, "made it")
            await wait_texts(page, ["made it"], 10, "the page's message on r2")


async def test_prefer_puts_a_far_region_first_without_pinning_it(tmp_path: Path) -> None:
    """?prefer=eu-west: the page connects to eu-west although us-east is nearer, and when
    the eu-west relay is killed it fails over to us-east (prefer is not ?regions=)."""
    east, west = free_ports(2)
    with region_nats(tmp_path, ("us-east", "eu-west")) as nats_urls:
        east_cfg, west_cfg = federated_configs(nats_urls, {"us-east": [east], "eu-west": [west]})
        config = tmp_path / "west.toml"
        config.write_text(
            f'[region]\nname = "eu-west"\n[relay]\nid = "{west_cfg.relay.id}"\n'
            f'host = "127.0.0.1"\nport = {west}\n[nats]\nurl = "{nats_urls["eu-west"]}"\n'
            f'[[peers]]\nregion = "us-east"\nedge_url = "{ws_url(east)}"\n'
            f'nats_url = "{nats_urls["us-east"]}"\n'
        )
        with relay_process(config, tmp_path / "west.log") as (proc, _):
            async with running_relays(east_cfg), chromium(tmp_path / "chromium.log") as browser:
                page = await open_chat(
                    browser, east, [east], [west], "prefer", "kim", prefer="eu-west"
                )
                info = await where(page)
                assert info["region"] == "eu-west"
                choice = info["choice"]
                assert choice["order"] == ["eu-west", "us-east"]
                assert choice["prefer"] == "eu-west"
                assert choice["rttMs"]["eu-west"] >= FAR_MS > choice["rttMs"]["us-east"]
                assert choice["reasons"]["eu-west"].startswith("preferred region: median")
                assert "because it is the preferred region" in info["shown"]["reason"]

                os.kill(proc.pid, signal.SIGKILL)
                await page.wait_for(
                    "relaynetDemo.state === 'connected'"
                    " && relaynetDemo.client.region === 'us-east'",
                    20,
                    "failover to us-east",
                )
                states = [s["state"] for s in await page.evaluate("relaynetDemo.states")]
                assert states.count("disconnected") == 1, states
                assert await page.evaluate("relaynetDemo.client.redirects") == 0
                await type_and_send(page, "still chatting")
                await wait_texts(page, ["still chatting"], 10, "the page's message on us-east")


async def test_a_publish_above_the_announced_frame_limit_rejects_at_once(
    tmp_path: Path, nats_url: str
) -> None:
    """The relay announces max_frame_bytes in `connected`; from then on it wins over
    options.maxFrameBytes both ways: a bigger publish rejects with too_large at once (the
    connection stays up), and a publish queued before connecting that this relay would not
    take rejects instead of being sent."""
    cfg = make_config(
        nats_url=nats_url,
        limits={"max_frame_bytes": 2048},
        namespaces=[{"name": "default", "prefix": "", "max_message_bytes": 1024}],
    )
    async with running_relays(cfg) as (relay,), chromium(tmp_path / "chromium.log") as browser:
        page = await browser.new_page(page_url(relay.port, room="big"))
        got = await page.evaluate(FRAME_LIMIT, timeout_s=20)
    assert got["small"] == {"code": "too_large", "limit": 1024}  # options.maxFrameBytes
    assert got["fits"] == "chat:big"  # the relay's 2048 wins over the option's 1024
    assert got["big"]["code"] == "too_large" and got["big"]["limit"] == 2048
    assert got["big"]["size"] > 3000 and got["big"]["ms"] < 50
    assert got["after"] == "chat:big"
    assert got["queued"] == {"code": "too_large", "limit": 2048}
    for client in got["clients"]:
        assert client == {
            "state": "connected",
            "connections": 1,
            "maxFrameBytes": 2048,
            "pending": {},
            "errors": [],
        }


FRAME_LIMIT = """(async () => {
  const m = await import('/v1/client.js');
  const refused = (p) => p.then(() => null, (e) => ({code: e.code, limit: e.limit}));
  const errors = [[], []];
  // An option below the relay's limit: held to it until the relay says more.
  const c = m.createClient([location.origin], {maxFrameBytes: 1024});
  c.on('error', (e) => errors[0].push(e.code));
  const small = await refused(c.publish('chat:big', 'm'.repeat(1000)));
  await c.ready;
  const fits = (await c.publish('chat:big', 'm'.repeat(1000))).channel;
  const t0 = performance.now();
  const big = await c.publish('chat:big', 'x'.repeat(3000)).then(
    () => null, (e) => ({code: e.code, limit: e.limit, size: e.size}));
  big.ms = performance.now() - t0;
  const after = (await c.publish('chat:big', 'small')).channel;
  // The default (1 MiB) lets a big publish queue before the first connection; the relay
  // announces 2048 and the publish is refused, not sent into a 1009 close.
  const d = m.createClient([location.origin]);
  d.on('error', (e) => errors[1].push(e.code));
  const queued = refused(d.publish('chat:big', 'x'.repeat(3000)));
  await d.ready;
  const clients = [c, d].map((x, i) => ({state: x.state, connections: x.connections,
    maxFrameBytes: x.maxFrameBytes, pending: x.pending, errors: errors[i]}));
  c.close();
  d.close();
  return {small, fits, big, after, queued: await queued, clients};
})()"""


def _python_case(
    rng: random.Random,
) -> tuple[list[dict[str, str]], dict[str, list[float | None]], str | None]:
    regions = rng.sample(
        ["us-east", "eu-west", "ap-south", "sa-east", "af-south", "me-1"], rng.randint(0, 5)
    )
    edges = [
        {
            "region": r,
            "url": f"ws://{r}.example/v1/ws",
            "health": rng.choice(["up", "down", "unknown"]),
        }
        for r in regions
    ]
    samples: dict[str, list[float | None]] = {}
    for r in [*regions, "elsewhere"]:
        if rng.random() < 0.8:
            samples[r] = [
                None
                if rng.random() < 0.3
                else rng.choice([round(rng.uniform(0, 300), 1), 10.0, 20.0])
                for _ in range(rng.randint(0, 5))
            ]
    prefer = rng.choice([None, None, *regions, "elsewhere"])
    return edges, samples, prefer


# Strings that JSON escapes (or does not) differently from what one might guess: the size of a
# publish frame must come out the same in both clients, byte for byte.
_TRICKY = ["a", "é", "\u2028", "😀", '"', "\\", "/", "\x7f", "\x01", "\n", "\t", " ", "z9"]


def _size_case(rng: random.Random) -> tuple[str, str, str, dict[str, int] | None]:
    def text(n: int) -> str:
        return "".join(rng.choice(_TRICKY) for _ in range(n))

    channel = "chat:" + text(rng.randint(0, 12))
    message_id = f"{text(rng.randint(1, 6))}-{rng.randint(1, 10**9)}"
    data = rng.choice([text(rng.randint(0, 40)), {"k": text(5), "n": [1, 2.5, None]}, 7])
    regions = ["ap-south", "eu-west", "us-east"][: rng.randint(0, 3)]
    after = {r: rng.randint(1, 2**53 - 1) for r in regions} or None  # a causal context
    return channel, message_id, json.dumps(data, ensure_ascii=rng.random() < 0.5), after


# Redirect targets against a survey whose first choice is us-east, and one where it is eu-west:
# known URLs in any spelling, relays started since (unknown URLs naming a region), and what
# must be ignored (a target in another region than the redirecting relay's, a redirecting
# relay whose region is not the first choice, not a relay URL, relative, past the cap of
# redirects in a row).
_REDIRECT_EDGES = [
    ("us-east", "ws://a.example:8701/v1/ws"),
    ("us-east", "ws://b.example:8701/v1/ws"),
    ("eu-west", "wss://e.example/prefix/v1/ws"),
]
_REDIRECT_TARGETS: list[tuple[str, str | None]] = [
    ("ws://b.example:8701/v1/ws", "us-east"),
    ("http://b.example:8701", None),
    ("http://b.example:8701/v1/ping", "eu-west"),
    ("wss://e.example/prefix", None),
    ("https://e.example/prefix/v1/ws/", "us-east"),
    ("https://e.example/prefix/v1/ws/", "eu-west"),
    ("ws://e.example/prefix/v1/ws", "eu-west"),  # not secure: another HTTP base
    ("ws://c.example:8701/v1/ws", "us-east"),  # a relay that started since the survey
    ("ws://c.example:8701", "eu-west"),
    ("ws://c.example:8701/v1/ws", "ap-south"),
    ("ws://c.example:8701/v1/ws", None),
    ("ftp://b.example:8701/v1/ws", "us-east"),
    ("/v1/ws", "us-east"),
    ("ws:///v1/ws", "us-east"),
    ("b.example:8701", "us-east"),
]
# (url, region the redirect names, the redirecting relay's region, redirects followed in a row,
# the nearest region of the survey)
_REDIRECTS: list[tuple[str, str | None, str | None, int, str]] = [
    (url, region, source_region, in_a_row, nearest)
    for nearest in ("us-east", "eu-west")
    for source_region in ("us-east", "eu-west", "ap-south", None)
    for url, region in _REDIRECT_TARGETS
    for in_a_row in (0, 2, 3)
]


def _python_redirects() -> list[list[str] | None]:
    # Only the rule is wanted, not a running client: a bare instance with a survey (the
    # constructor's keyword arguments change with the SDK; the rule reads only these two).
    client = Client.__new__(Client)
    edges = tuple(DirectoryEdge(region, url, "up") for region, url in _REDIRECT_EDGES)
    targets = []
    for url, region, source_region, in_a_row, nearest in _REDIRECTS:
        client.survey = plan(
            Directory("ws://a.example:8701/v1/ws", "us-east", None, edges),
            {u: [1.0 if r == nearest else 50.0] for r, u in _REDIRECT_EDGES},
        )
        assert client.survey.choice.order[0] == nearest
        client._redirects_in_a_row = in_a_row
        targets.append(client._redirect_target(Redirected(url, region, ""), "x", source_region))
    return [list(t) if t is not None else None for t in targets]


async def test_js_core_follows_the_python_reference(tmp_path: Path, nats_url: str) -> None:
    """The client.js that a relay serves makes the same choices as relay/client/: region
    order, medians and reasons; moving back; backoff caps; close policy; and session decisions
    on one script of frames (resume positions, duplicates dropped, republished ids)."""
    rng = random.Random(20240611)
    cases = [_python_case(rng) for _ in range(200)]
    expected_choices = []
    expected_moves = []
    for edges, samples, prefer in cases:
        c = choose(
            [Edge.from_health(e["region"], e["url"], e["health"]) for e in edges],  # type: ignore[arg-type]
            samples,
            prefer=prefer,
        )
        expected_choices.append({"order": list(c.order), "rttMs": c.rtt_ms, "reasons": c.reasons})
        expected_moves.append(
            [
                should_move_back(current, c, policy=policy, idle=idle)
                for current in [*c.order, "elsewhere"]
                for policy in MOVE_POLICIES
                for idle in (True, False)
            ]
        )
    b = Backoff(base_s=0.5, max_s=30.0, reset_after_s=60.0, rng=random.Random(1))
    caps = [b.cap(n) * 1000 for n in range(12)]
    codes = [1000, 1001, 1002, 1006, 1009, 1011, 4000, 4001, 4499, 4500, 4999, 3000]

    script = _session_script()
    py = ClientSession(random.Random(3), id_prefix="p")
    py_out = _run_python_session(py, script)
    sizes = [_size_case(rng) for _ in range(200)]
    expected_sizes = [_publish_size(i, _Pending(c, d.encode(), a)) for c, i, d, a in sizes]
    expected_redirects = _python_redirects()

    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with chromium(tmp_path / "chromium.log") as browser:
            page = await browser.new_page(f"http://127.0.0.1:{relay.port}/?room=core")
            js = await page.evaluate(
                "(async () => { const m = await import('/v1/client.js');"
                f" const cases = {json.dumps(cases)};"
                " const b = new m.Backoff({baseMs: 500, maxMs: 30000, resetAfterMs: 60000});"
                " const s = new m.Session({idPrefix: 'p'});"
                f" const script = {json.dumps(script)};"
                " const out = [];"
                " for (const [kind, arg] of script) {"
                "   if (kind === 'subscribe') out.push(['frame', JSON.parse(s.subscribe(arg))]);"
                "   else if (kind === 'publish') { try { const [id, f] = s.publish(arg[0], arg[1]);"
                "     out.push(['frame', JSON.parse(f)]); } catch (e) {"
                "     if (e.code !== 'too_large') throw e;"
                "     out.push(['refused', {size: e.size, limit: e.limit}]); } }"
                "   else if (kind === 'drop') out.push(['dropped', s.dropOversized()]);"
                "   else if (kind === 'reconnect')"
                "     out.push(['frames', s.onReconnect().map((f) => JSON.parse(f))]);"
                "   else out.push(['events', s.receive(arg).map(({type, ...e}) =>"
                "     [type, type === 'bad_frame' ? {} : e])]);"
                " }"
                f" const sizes = {json.dumps(sizes)};"
                f" const edges = {json.dumps(_REDIRECT_EDGES)};"
                f" const redirects = {json.dumps(_REDIRECTS)};"
                # A bare client with a survey, as the Python side: the rule reads only these.
                " const rc = Object.create(m.Client.prototype);"
                " rc._listeners = new Map();"
                " const survey = (nearest) => m.plan({source: edges[0][1], region: 'us-east',"
                "   relay: null,"
                "   edges: edges.map(([region, url]) => ({region, url, health: 'up'}))},"
                "   Object.fromEntries(edges.map(([r, u]) => [u, [r === nearest ? 1.0 : 50.0]])));"
                " return {"
                "   sizes: sizes.map(([c, i, d, a]) => m.publishSize(c, i, d, a)),"
                "   redirects: redirects.map(([url, region, source, inARow, nearest]) => {"
                "     rc.survey = survey(nearest);"
                "     rc._redirectsInARow = inARow;"
                "     return rc._redirectTarget({url, region, reason: ''}, 'x', source); }),"
                "   choices: cases.map(([edges, samples, prefer]) => {"
                "     const c = m.choose(edges, samples, {prefer});"
                "     return {order: c.order, rttMs: c.rttMs, reasons: c.reasons}; }),"
                "   moves: cases.map(([edges, samples, prefer]) => {"
                "     const c = m.choose(edges, samples, {prefer});"
                "     return [...c.order, 'elsewhere'].flatMap((current) =>"
                f"       {json.dumps(MOVE_POLICIES)}.flatMap((policy) =>"
                "         [true, false].map((idle) =>"
                "           m.shouldMoveBack(current, c, {policy, idle}))));"
                "   }),"
                "   caps: [...Array(12).keys()].map((n) => b.cap(n)),"
                f"   policies: {json.dumps(codes)}.map(m.closePolicy),"
                "   session: out, pending: s.pending,"
                "   position: s.position('chat:a'),"
                " }; })()"
            )
            api = await page.evaluate(API_ROUNDTRIP, timeout_s=30)
    assert api["where"] == ["us-east", "r1", "connected"]
    assert api["order"] == ["us-east"]
    assert api["reason"].startswith("nearest healthy: median")
    assert api["got"] == [[api["ack"]["id"], {"n": 1}, "us-east", {"us-east": 1}]]
    assert api["ack"]["channel"] == "chat:api" and api["ack"]["position"] == {"us-east": 1}
    assert api["ack"]["id"].startswith(api["prefix"] + "-")
    assert len(api["prefix"]) == 24  # 96 random bits in hex
    assert api["badPublish"] == {"code": "invalid_channel", "temporary": False}
    assert api["badSubscribe"] == "invalid_channel"
    assert api["afterClose"] == "closed"
    assert api["states"][-1] == "closed"
    for i, (want, got) in enumerate(zip(expected_choices, js["choices"], strict=True)):
        assert got == want, (i, cases[i])
    assert js["moves"] == expected_moves
    assert js["caps"] == caps
    assert js["policies"] == [close_policy(c) for c in codes]
    assert js["session"] == py_out
    assert js["sizes"] == expected_sizes
    assert js["redirects"] == expected_redirects
    assert js["pending"] == py.pending
    position = py.position("chat:a")
    assert js["position"] == (position.to_dict() if position is not None else None)


# connect(), subscribe(), publish() and close() against the relay that served the page.
API_ROUNDTRIP = """(async () => {
  const m = await import('/v1/client.js');
  const c = await m.connect(location.origin, {probes: 2});
  const states = [];
  c.on('state', (s) => states.push(s));
  const got = [];
  await c.subscribe('chat:api', (msg) => got.push([msg.id, msg.data, msg.origin, msg.ts])).ready;
  const ack = await c.publish('chat:api', {n: 1});
  const badPublish = await c.publish('no spaces', 1).then(
    () => null, (e) => ({code: e.code, temporary: e.temporary}));
  const badSubscribe = await c.subscribe('no spaces', () => {}).ready.then(
    () => null, (e) => e.code);
  for (let i = 0; i < 200 && got.length < 1; i++) await new Promise((r) => setTimeout(r, 25));
  const where = [c.region, c.relay, c.state];
  c.close();
  const afterClose = await c.publish('chat:api', 2).then(() => null, (e) => e.code);
  return {where, order: c.choice.order, reason: c.choice.reasons[where[0]], ack, got,
          prefix: c.idPrefix, badPublish, badSubscribe, afterClose, states};
})()"""


def _session_script() -> list[tuple[str, Any]]:
    def msg(mid: str, origin: str, ts: dict[str, int], pos: dict[str, int]) -> str:
        return json.dumps(
            {
                "op": "message",
                "channel": "chat:a",
                "id": mid,
                "data": {"t": mid},
                "origin": origin,
                "ts": ts,
                "position": pos,
            }
        )

    return [
        (
            "receive",
            json.dumps(
                {
                    "op": "connected",
                    "region": "us-east",
                    "relay": "r1",
                    "connection_id": "c1",
                    "heartbeat_s": 15.0,
                }
            ),
        ),
        ("subscribe", "chat:a"),
        (
            "receive",
            json.dumps(
                {
                    "op": "subscribed",
                    "ref": 1,
                    "channel": "chat:a",
                    "position": {"us-east": 2},
                    "recovered": False,
                }
            ),
        ),
        ("receive", msg("m3", "us-east", {"us-east": 3}, {"us-east": 3})),
        ("publish", ["chat:a", '{"text":"one"}']),
        ("publish", ["chat:a", "[1,2]"]),
        (
            "receive",
            json.dumps(
                {
                    "op": "ack",
                    "ref": 2,
                    "id": "p-1",
                    "channel": "chat:a",
                    "position": {"us-east": 4},
                }
            ),
        ),
        ("receive", msg("m3", "us-east", {"us-east": 3}, {"us-east": 3})),  # covered
        ("reconnect", None),
        (
            "receive",
            json.dumps(
                {
                    "op": "subscribed",
                    "ref": 4,
                    "channel": "chat:a",
                    "position": {"us-east": 3},
                    "recovered": True,
                }
            ),
        ),
        (
            "receive",
            msg("w1", "eu-west", {"eu-west": 1, "us-east": 3}, {"eu-west": 1, "us-east": 3}),
        ),
        # Another region's order: its position may be behind in one entry; the max is kept.
        ("receive", msg("m4", "us-east", {"us-east": 4}, {"us-east": 4})),
        ("receive", msg("x1", "eu-west", {"eu-west": 2}, {"eu-west": 2, "us-east": 2})),
        ("receive", msg("x1", "us-east", {"us-east": 5}, {"us-east": 5, "eu-west": 2})),  # same id
        (
            "receive",
            json.dumps(
                {
                    "op": "error",
                    "ref": 5,
                    "code": "unavailable",
                    "message": "later",
                    "temporary": True,
                }
            ),
        ),
        ("receive", json.dumps({"op": "error", "ref": 99, "code": "internal", "temporary": True})),
        ("receive", "not json"),
        ("receive", json.dumps({"op": "from-the-future"})),
        ("receive", json.dumps({"op": "message", "channel": "chat:a"})),
        (
            "receive",
            json.dumps(
                {
                    "op": "ack",
                    "ref": 5,
                    "id": "p-2",
                    "channel": "chat:a",
                    "position": {"us-east": 5},
                }
            ),
        ),
        (
            "receive",
            json.dumps(
                {
                    "op": "ack",
                    "ref": 5,
                    "id": "p-2",
                    "channel": "chat:a",
                    "position": {"us-east": 5},
                }
            ),
        ),
        # The relay's frame limit: none announced so far, so anything goes; a new relay
        # announces 1024 bytes: what is pending above it is dropped, and a publish above it
        # is refused without using up an id.
        ("publish", ["chat:a", json.dumps("x" * 1500)]),
        ("drop", None),
        (
            "receive",
            json.dumps(
                {
                    "op": "connected",
                    "region": "eu-west",
                    "relay": "w1",
                    "connection_id": "c2",
                    "max_frame_bytes": 1024,
                }
            ),
        ),
        ("drop", None),
        ("publish", ["chat:a", json.dumps("y" * 1000)]),
        ("publish", ["chat:a", json.dumps("z" * 900)]),
        (
            "receive",
            json.dumps(
                {
                    "op": "redirect",
                    "url": "ws://w2:8701/v1/ws",
                    "region": "eu-west",
                    "reason": "draining",
                }
            ),
        ),
        ("receive", json.dumps({"op": "redirect", "url": "ws://w2:8701/v1/ws"})),
        ("receive", json.dumps({"op": "redirect", "region": "eu-west"})),
        ("receive", json.dumps({"op": "connected", "region": "eu-west", "relay": "w1"})),
    ]


def _run_python_session(session: ClientSession, script: list[tuple[str, Any]]) -> list[Any]:
    """The Python session's outputs in the shape the JavaScript one reports them."""
    out: list[Any] = []
    for kind, arg in script:
        if kind == "subscribe":
            out.append(["frame", json.loads(session.subscribe(arg))])
        elif kind == "publish":
            try:
                _, frame = session.publish(arg[0], arg[1].encode())
            except FrameTooLarge as exc:
                out.append(["refused", {"size": exc.size, "limit": exc.limit}])
            else:
                out.append(["frame", json.loads(frame)])
        elif kind == "drop":
            out.append(["dropped", session.drop_oversized()])
        elif kind == "reconnect":
            out.append(["frames", [json.loads(f) for f in session.on_reconnect()]])
        else:
            out.append(["events", [_event(e) for e in session.receive(arg)]])
    return out


def _event(event: Any) -> list[Any]:
    name = type(event).__name__
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    kinds = {
        "Connected": "connected",
        "Redirected": "redirected",
        "Subscribed": "subscribed",
        "Message": "message",
        "Acked": "acked",
        "ErrorReceived": "error",
        "PositionExpired": "expired",
        "BadFrame": "bad_frame",
    }
    renames = {
        "connection_id": "connectionId",
        "heartbeat_s": "heartbeatS",
        "max_frame_bytes": "maxFrameBytes",
        "publish_id": "publishId",
        "data_json": "data",
    }
    result: dict[str, Any] = {}
    if name == "BadFrame":
        return ["bad_frame", {}]  # the reason's wording differs between the two
    for key, value in fields.items():
        if key == "data_json":
            value = json.loads(value)
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        result[renames.get(key, key)] = value
    return [kinds[name], result]
