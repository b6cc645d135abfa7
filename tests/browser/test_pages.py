"""The browser client (relay/web/client.js) and the demo page in a real headless Chromium,
loaded from a relay, against relays of two regions federated over real nats-servers.

Every region is on loopback, so RTT probes alone cannot tell regions apart: each page gets
network latency toward the other region's relays (its requests to them are held for a while
before they go out, through the DevTools protocol), and the client must pick by its own
measurements. Nothing in the page is mocked. The JS core's conformance to the Python SDK is
in test_conformance.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from relay.harness.toolkit import free_ports
from relay.node import RelayNode
from tests.browser.chromium import chromium
from tests.browser.pages import (
    FAR_MS,
    federated_configs,
    open_chat,
    page_url,
    regions,
    type_and_send,
    wait_texts,
    watched_page,
    where,
    ws_url,
)
from tests.support.directory import sibling_listed, wait_listed
from tests.support.regions import region_nats
from tests.support.relays import (
    config_file,
    make_config,
    relay_process,
    running_relays,
    timeout,
)
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


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
                # Pongs counted: the positive sign that protocol pings keep an idle page up.
                " window.pongs = 0;"
                " class Counted extends WebSocket { constructor(...a) { super(...a);"
                "   this.addEventListener('message', (e) => {"
                "     if (JSON.parse(e.data).op === 'pong') pongs += 1; }); } }"
                f" window.c = m.createClient({seeds}, {{maxMs: 1000, WebSocket: Counted}});"
                " window.states = [];"
                " c.on('state', (s, info) => states.push([s, info.reason ?? null]));"
                " window.got = []; c.subscribe('chat:outage', (msg) => got.push(msg.data));"
                " await c.ready; })()"
            )
            assert await page.evaluate("[c.relay, c.heartbeatS]") == ["hung", 1.0]
            # Idle for 3 heartbeats: each time a protocol ping, answered, keeps it up.
            await page.wait_for("pongs >= 3", 20, "three pongs while idle")
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
                first = await page.evaluate("c.publish('chat:outage', 'on spare').id")
            os.kill(proc.pid, signal.SIGKILL)  # the hung relay never comes back
            await page.wait_for("c.state === 'suspended'", 20, "suspended")
            pending = await page.evaluate("c.publish('chat:outage', 'queued').id")
            async with running_relays(spare):
                await page.wait_for("c.state === 'connected'", 30, "recovery")
                await page.wait_for("got.length === 2", 10, "the queued message")
            assert await page.evaluate("got") == ["on spare", "queued"]
            # Random per message (128 bits), not a prefix and a counter.
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in (first, pending))
    assert pending != first


# The supervisor's order of attempts, as the page sees it: every WebSocket the client opens
# (through options.WebSocket), every backoff pause ("retry", with the edge it precedes), every
# drop and every connection, in one list.
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
            # A duplicate would come before a message published after all of them: wait for
            # that one, then look at everything before it.
            async with protocol_client(second.url) as pub:
                last = await pub.publish("chat:drain", {"text": "the end", "name": "pub"})
            await page.wait_for(
                f"relaynetDemo.messages.some((m) => m.id === {json.dumps(last['id'])})",
                20,
                "the message published after all the others",
            )
            got = await page.evaluate(
                "({ids: relaynetDemo.messages.map((m) => m.id),"
                " relay: relaynetDemo.client.relay, redirects: relaynetDemo.client.redirects,"
                " connections: relaynetDemo.client.connections,"
                " seen: relaynetDemo.redirects.map((r) => [r.region, r.url, r.reason, r.followed]),"
                " states: relaynetDemo.states.map((s) => s.state),"
                " log: document.querySelector('[data-testid=log]').textContent,"
                " errors: relaynetDemo.errors})"
            )
            assert got["ids"] == [*acked, last["id"]]  # no loss, no duplicate, in order
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
