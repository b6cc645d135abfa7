"""Presence in the browser client and the demo page (issue #13), in a real headless Chromium.

A page in each of two regions enters the demo chat: each lists both people with their
regions. A page whose connection drops enters again on its new one and gets a fresh list;
its old connection leaves after ``[presence] leave_after_s``; a page that is closed drops
out of the other's list. On the SSE fallback a client lists members and follows their
changes but cannot enter (a clear, temporary "presence_unavailable" error); back on a
WebSocket it enters again by itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chromium import Page, chromium
from tests.browser.pages import open_chat, regions
from tests.support.relays import make_config, running_relays

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

# Short, so that a dropped connection's member leaves within the test; the relays' other
# presence timings stay at their defaults (a loaded machine must not make a region look
# unreachable).
PRESENCE = {"leave_after_s": 1.0}


async def online(page: Page) -> dict[str, Any]:
    """Who the page shows, from its DOM: {client id: [regions]}, and the statuses."""
    rows = await page.evaluate(
        "[...document.querySelectorAll('[data-testid=member]')].map((li) =>"
        " [li.dataset.clientId, li.dataset.regions, li.dataset.status])"
    )
    assert isinstance(rows, list)
    return {client_id: (spots.split(","), status) for client_id, spots, status in rows}


def listing(expected: dict[str, list[str]]) -> str:
    """A page expression: the page's online list is exactly ``expected`` ({name: regions})."""
    return (
        "(() => { const want = " + json.dumps(expected) + "; const have = relaynetDemo.online;"
        " return have.length === Object.keys(want).length && have.every((p) =>"
        " JSON.stringify(p.regions.map((r) => r.region)) === JSON.stringify(want[p.name])"
        " && p.status === 'present'); })()"
    )


async def test_who_is_online_in_two_regions(tmp_path: Path) -> None:
    async with regions(tmp_path, {"us-east": 1, "eu-west": 1}, PRESENCE) as (_, ports):
        east, west = ports["us-east"][0], ports["eu-west"][0]
        async with chromium(tmp_path / "chromium.log") as browser:
            alice = await open_chat(browser, east, [east], [west], "who", "alice")
            bob = await open_chat(browser, west, [west], [east], "who", "bob")
            both = {"alice": ["us-east"], "bob": ["eu-west"]}
            for page, name in ((alice, "alice"), (bob, "bob")):
                await page.wait_for(listing(both), 20, f"{name} to list alice and bob")
                assert await online(page) == {
                    "alice": (["us-east"], "present"),
                    "bob": (["eu-west"], "present"),
                }
                members = await page.evaluate("relaynetDemo.members")
                assert [(m["clientId"], m["region"], m["data"]) for m in members] == [
                    ("alice", "us-east", {"name": "alice"}),
                    ("bob", "eu-west", {"name": "bob"}),
                ]
            shown = await alice.evaluate(
                "document.querySelector('[data-testid=members]').textContent"
            )
            assert "alice (you)" in shown and "eu-west" in shown

            # Bob's connection drops (the relay sees it end without a leave): his client
            # reconnects, enters again and gets a fresh list; his old connection is listed
            # until leave_after_s, and he shows once all along (one row per person).
            first = await bob.evaluate("relaynetDemo.client.connectionId")
            await bob.evaluate("relaynetDemo.client._ws.close(4000, 'test: connection dropped')")
            await bob.wait_for(
                "relaynetDemo.client.connections === 2 && relaynetDemo.state === 'connected'",
                20,
                "bob to reconnect",
            )
            second = await bob.evaluate("relaynetDemo.client.connectionId")
            assert second != first
            bob_on = (
                "relaynetDemo.members.filter((m) => m.clientId === 'bob')"
                ".map((m) => m.connection).join(',') === " + json.dumps(second)
            )
            await bob.wait_for(bob_on, 20, "bob to list only his new connection")
            await alice.wait_for(bob_on, 20, "alice to list only bob's new connection")
            syncs = await bob.evaluate(
                "relaynetDemo.presenceEvents.filter((e) => e.action === 'sync').length"
            )
            assert syncs >= 2  # one list per connection
            for page in (alice, bob):
                await page.wait_for(listing(both), 10, "both listed after the reconnect")

            # Bob closes his page: alice's list drops him.
            await bob.close()
            await alice.wait_for(listing({"alice": ["us-east"]}), 20, "bob to leave")
            assert await online(alice) == {"alice": (["us-east"], "present")}
            await alice.screenshot(tmp_path / "alice.png")
            assert await alice.evaluate("relaynetDemo.errors") == []


# A client (clientId sam) whose WebSockets fail while `blocked` (they go to a path the
# relay refuses): it then runs on the SSE fallback, and goes back to WebSocket about 300 ms
# after `blocked` is cleared. It starts on WebSocket and enters.
SSE_CLIENT = """(async () => {
  const m = await import('/v1/client.js');
  window.blocked = false;
  class Blockable extends WebSocket {
    constructor(url, ...rest) {
      super(blocked ? String(url).replace('/v1/ws', '/v1/blocked') : url, ...rest);
    }
  }
  window.events = [];
  window.errors = [];
  window.c = m.createClient([location.origin],
    {WebSocket: Blockable, websocketRetryMs: 300, clientId: 'sam', probes: 1, maxMs: 500});
  c.on('error', (e) => errors.push([e.code, e.message]));
  window.sub = c.subscribe('chat:sse', () => {}, {presence: true, onPresence: (e) =>
    events.push([e.action, e.member?.clientId ?? null, e.members.map((x) => x.clientId)])});
  await c.ready;
  const entered = await c.presence('chat:sse').enter({name: 'sam'});
  return {transport: c.transport, entered};
})()"""

WHO = "events.length && events.at(-1)[2].slice().sort().join() === "


async def test_presence_over_the_sse_fallback(tmp_path: Path, nats_url: str) -> None:
    cfg = make_config(nats_url=nats_url, presence=PRESENCE)
    async with running_relays(cfg) as (relay,), chromium(tmp_path / "chromium.log") as browser:
        ann = await open_chat(browser, relay.port, [relay.port], [], "sse", "ann")
        sam = await browser.new_page(f"http://127.0.0.1:{relay.port}/v1/ping")
        got = await sam.evaluate(SSE_CLIENT, timeout_s=30)
        assert got == {
            "transport": "websocket",
            "entered": {"channel": "chat:sse", "clientId": "sam"},
        }
        await ann.wait_for(listing({"ann": ["us-east"], "sam": ["us-east"]}), 20, "sam entered")
        await sam.wait_for(WHO + json.dumps("ann,sam"), 20, "sam to list ann and himself")

        # WebSocket is blocked and sam's connection drops: his client goes on over SSE. The
        # list and the changes come over the stream (presence=1); members() is a GET; his
        # old connection leaves (nothing can enter him over SSE).
        await sam.evaluate("blocked = true; c._ws.close(4000, 'test: connection dropped')")
        await sam.wait_for("c.transport === 'sse' && c.state === 'connected'", 20, "sam on SSE")
        await ann.wait_for(listing({"ann": ["us-east"]}), 20, "sam's old connection to leave")
        await sam.wait_for(WHO + json.dumps("ann"), 20, "sam to see himself leave, over SSE")
        members = await sam.evaluate(
            "c.presence('chat:sse').members().then((ms) => ms.map((m) => [m.clientId, m.region]))"
        )
        assert members == [["ann", "us-east"]]
        refused = await sam.evaluate(
            "c.presence('chat:sse').update({name: 'sam', typing: true}).then(() => null,"
            " (e) => ({code: e.code, temporary: e.temporary, message: e.message}))"
        )
        assert refused["code"] == "presence_unavailable" and refused["temporary"] is True
        assert "need a WebSocket" in refused["message"]
        assert await sam.evaluate("c.presence('chat:sse').entered") is True

        # WebSocket works again: the client moves to it and enters again by itself.
        await sam.evaluate("blocked = false")
        await sam.wait_for(
            "c.transport === 'websocket' && c.state === 'connected'", 20, "sam on WebSocket"
        )
        await ann.wait_for(listing({"ann": ["us-east"], "sam": ["us-east"]}), 20, "sam back")
        await sam.wait_for(WHO + json.dumps("ann,sam"), 20, "sam to list himself again")

        # Ann closes her page: sam sees her leave.
        await ann.close()
        await sam.wait_for(
            "events.some((e) => e[0] === 'leave' && e[1] === 'ann') && " + WHO + "'sam'",
            20,
            "ann to leave",
        )
        assert await sam.evaluate("errors") == []
        assert await sam.evaluate("sub.presence.clientIds") == ["sam"]
        await sam.evaluate("c.close()")
