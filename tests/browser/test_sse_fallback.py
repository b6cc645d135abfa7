"""The browser client's SSE fallback (issue #13) in a real headless Chromium: when no WebSocket
can be opened, a real EventSource and fetch carry the same API, and once WebSocket works again
the page goes back to it, with nothing lost and nothing repeated across either switch.

A relay with ``[relay] websocket = false`` refuses upgrades with HTTP 403 as a blocking proxy
would; the second test blocks the page's WebSockets itself (they go to a path the relay
refuses) so that WebSocket comes back while the stream is still up, with no drop between.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay.adapters.tokens import issue_token
from relay.client import HttpClient
from relay.config.schema import AuthSection
from relay.harness.toolkit import free_ports
from tests.browser.chromium import Page, chromium
from tests.browser.pages import open_chat, page_url
from tests.support.relays import make_config, running_relays, timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


class Publisher:
    """A backend publishing over the HTTP API until stopped, through relay restarts (its
    client retries a publish with the same id until stored): every acked id, in order."""

    def __init__(self, url: str, channel: str) -> None:
        self.api = HttpClient(url, timeout_s=timeout(30), request_timeout_s=2)
        self.channel = channel
        self.acked: list[str] = []
        self._stop = anyio.Event()
        self._done = anyio.Event()

    async def run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                ack = await self.api.publish(self.channel, {"text": f"pub {n}", "name": "pub"})
                self.acked.append(ack.id)
                n += 1
                await anyio.sleep(0.02)  # a steady trickle, not a flood
        finally:
            self._done.set()

    async def stop(self) -> None:
        self._stop.set()
        with anyio.fail_after(timeout(30)):
            await self._done.wait()

    async def stored(self) -> list[str]:
        """Every id stored on the channel, in the channel's order."""
        page = await self.api.history(self.channel, limit=1000)
        assert not page.more
        return [m.id for m in page.messages]


async def received(page: Page) -> list[str]:
    ids = await page.evaluate("relaynetDemo.messages.map((m) => m.id)")
    assert isinstance(ids, list)
    return ids


async def transport(page: Page) -> dict[str, Any]:
    info = await page.evaluate(
        "({transport: relaynetDemo.client.transport, state: relaynetDemo.state,"
        " shown: document.querySelector('[data-testid=transport]').textContent,"
        " errors: relaynetDemo.errors})"
    )
    assert isinstance(info, dict)
    return info


async def test_a_page_falls_back_to_sse_and_back_to_websocket(
    tmp_path: Path, nats_url: str
) -> None:
    """Against a relay that refuses WebSocket, the demo page subscribes, publishes and
    receives over EventSource + fetch, reads history and subscribes to a second channel (the
    stream reopened from its positions); the relay restarts with WebSocket on, and the page
    is back on WebSocket. A backend publishes throughout; the page sends some while the relay
    is down. What the page shows is exactly the channel's stored log, in order."""
    (port,) = free_ports(1)
    off = make_config(nats_url=nats_url, port=port, relay={"websocket": False})
    on = make_config(nats_url=nats_url, port=port)
    publisher = Publisher(f"http://127.0.0.1:{port}", "chat:fallback")
    async with chromium(tmp_path / "chromium.log") as browser, anyio.create_task_group() as tg:
        async with running_relays(off):
            page = await open_chat(
                browser, port, [port], [], "fallback", "sam", websocket_retry_ms="300"
            )
            assert await transport(page) == {
                "transport": "sse",
                "state": "connected",
                "shown": "sse",
                "errors": [],
            }
            tg.start_soon(publisher.run)
            mine = [await page.evaluate(f"relaynetDemo.send('sam {n}')") for n in range(3)]
            assert all(ack["channel"] == "chat:fallback" for ack in mine)
            await page.wait_for("relaynetDemo.messages.length >= 20", 20, "messages over SSE")

            # History over fetch: the newest stored messages, the page has them all.
            history = await page.evaluate(
                "relaynetDemo.client.history('chat:fallback', {limit: 5})"
                ".then((p) => ({more: p.more, ids: p.messages.map((m) => m.id)}))"
            )
            assert history["more"] is True and len(history["ids"]) == 5
            await page.wait_for(
                f"{json.dumps(history['ids'])}.every((id) =>"
                " relaynetDemo.messages.some((m) => m.id === id))",
                10,
                "the page to have every message history lists",
            )

            # A second channel: the stream is reopened with both, each from its position.
            await page.evaluate(
                "(window.side = [], relaynetDemo.client.subscribe('chat:side',"
                " (m) => side.push(m.data)).ready)"
            )
            await publisher.api.publish("chat:side", "side 1")
            await page.wait_for("side.length === 1", 10, "the second channel's message")
            assert await page.evaluate("relaynetDemo.client.connections") == 1
            count = len(await received(page))
            await page.wait_for(
                f"relaynetDemo.messages.length >= {count + 10}", 10, "more after the reopen"
            )

        # The relay is down: what the page sends now waits, then goes over the new transport.
        waiting = [await page.evaluate(f"relaynetDemo.send('sam down {n}').id") for n in range(2)]
        async with running_relays(on):
            await page.wait_for(
                "relaynetDemo.state === 'connected'"
                " && relaynetDemo.client.transport === 'websocket'",
                20,
                "the page back on WebSocket",
            )
            await publisher.api.publish("chat:side", "side 2")
            await page.evaluate(f"relaynetDemo.send('sam {len(mine)}')")
            await page.wait_for(
                "Object.keys(relaynetDemo.client.pending).length === 0",
                20,
                "the sends made while the relay was down",
            )
            count = len(await received(page))
            await page.wait_for(
                f"relaynetDemo.messages.length >= {count + 10}", 10, "more over WebSocket"
            )
            await publisher.stop()
            # Nothing more is published: once the page has the last one, it has everything.
            stored = await publisher.stored()
            await page.wait_for(
                f"relaynetDemo.messages.some((m) => m.id === {json.dumps(stored[-1])})",
                20,
                "the last message stored",
            )
            got = await received(page)
            assert got == stored  # nothing lost, nothing repeated, in the channel's order
            assert set(publisher.acked) | set(waiting) <= set(stored)
            assert len(set(stored)) == len(stored)
            assert await page.evaluate("side") == ["side 1", "side 2"]
            info = await transport(page)
            # The page's only relay was down for the restart: a directory refresh then may
            # find no edge (a temporary error, as it is). Nothing else may have gone wrong.
            down = {"code": "directory", "message": "no seed or known edge answered"}
            info["errors"] = [e for e in info["errors"] if e != down]
            assert info == {
                "transport": "websocket",
                "state": "connected",
                "shown": "websocket",
                "errors": [],
            }
            states = await page.evaluate(
                "relaynetDemo.states.filter((s) => s.state === 'connected').map((s) => s.transport)"
            )
            assert states[0] == "sse" and states[-1] == "websocket", states
            await page.screenshot(tmp_path / "sam.png")


# WebSockets of this page go to a path the relay refuses (HTTP 404) while `blocked`: a real
# failed upgrade, from a relay that still answers everything else.
BLOCKABLE_CLIENT = """(async () => {
  const m = await import('/v1/client.js');
  window.blocked = true;
  window.opened = [];  // every WebSocket (blocked or not) and every EventSource, in order
  class Blockable extends WebSocket {
    constructor(url, ...rest) {
      opened.push(['ws', blocked]);
      super(blocked ? String(url).replace('/v1/ws', '/v1/blocked') : url, ...rest);
    }
  }
  class Watched extends EventSource {
    constructor(url, ...rest) {
      const query = new URL(url).searchParams;
      opened.push(['sse', query.get('channels'), query.get('last_event_id')]);
      super(url, ...rest);
    }
  }
  window.c = m.createClient([location.origin],
    {WebSocket: Blockable, EventSource: Watched, websocketRetryMs: 500, baseMs: 50, maxMs: 200});
  window.states = [];
  c.on('state', (s, info) => states.push([s, info.transport ?? null]));
  window.got = {a: [], b: []};
  await c.subscribe('chat:a', (msg) => got.a.push(msg.id)).ready;
})()"""

STREAMS = "opened.filter((e) => e[0] === 'sse')"


async def test_websocket_back_while_the_stream_is_up(tmp_path: Path, nats_url: str) -> None:
    """WebSocket opens fail while the relay answers: after two the page is on SSE. It
    subscribes and unsubscribes there (each time the stream reopens with the channel set and
    the positions reached), and once WebSocket opens again the client moves to it beside the
    working stream: no drop, no message lost or repeated on either channel."""
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        publisher = Publisher(f"http://127.0.0.1:{relay.port}", "chat:a")
        async with chromium(tmp_path / "chromium.log") as browser:
            page = await browser.new_page(page_url(relay.port, room="blocked"))
            await page.evaluate(BLOCKABLE_CLIENT, timeout_s=20)
            assert await page.evaluate("[c.transport, c.state]") == ["sse", "connected"]
            # Two (or, should a ping go unanswered under load, more) refused upgrades first.
            opened = await page.evaluate("opened")
            first = opened.index(["sse", "chat:a", None])
            assert first >= 2 and opened[:first] == [["ws", True]] * first, opened
            async with anyio.create_task_group() as tg:
                tg.start_soon(publisher.run)
                await page.wait_for("got.a.length >= 5", 10, "chat:a over SSE")
                # chat:b joins: one stream for both, chat:a resumed from where the page is.
                await page.evaluate(
                    "(window.subB = c.subscribe('chat:b', (msg) => got.b.push(msg.data)))"
                    ".ready.then(() => c.publish('chat:b', 'b1'))"
                )
                await page.wait_for("got.b.length === 1", 10, "chat:b")
                # chat:b leaves again: the stream goes back to chat:a alone.
                await page.evaluate("subB.unsubscribe()")
                await page.wait_for(f"{STREAMS}.length === 3", 10, "the stream reopened twice")
                reopened = await page.evaluate(f"{STREAMS}.slice(1)")
                assert [e[:2] for e in reopened] == [["sse", "chat:a,chat:b"], ["sse", "chat:a"]]
                assert all(e[2] for e in reopened)  # each from the positions reached
                count = await page.evaluate("got.a.length")
                await page.wait_for(f"got.a.length >= {count + 5}", 10, "chat:a after reopening")

                await page.evaluate("blocked = false")
                await page.wait_for("c.transport === 'websocket'", 10, "WebSocket again")
                count = await page.evaluate("got.a.length")
                await page.wait_for(f"got.a.length >= {count + 5}", 10, "chat:a on WebSocket")
                await publisher.stop()
            stored = await publisher.stored()
            await page.wait_for(
                f"got.a[got.a.length - 1] === {json.dumps(stored[-1])}", 10, "the last message"
            )
            assert await page.evaluate("got.a") == stored
            assert await page.evaluate("got.b") == ["b1"]
            assert await page.evaluate("states") == [
                ["connecting", None],
                ["connected", "sse"],
                ["connecting", None],  # the move: no "disconnected" in between
                ["connected", "websocket"],
            ]
            assert await page.evaluate(f"{STREAMS}.length") == 3


TOKEN_CLIENT = """(async () => {
  const m = await import('/v1/client.js');
  let asked = 0;
  const c = await m.connect([location.origin],
    {tokenProvider: async () => { asked += 1; return %s; }, baseMs: 50, maxMs: 200});
  const got = [];
  await c.subscribe('chat:t', (msg) => got.push(msg.data)).ready;
  const ack = await c.publish('chat:t', 'with a token');
  for (let i = 0; i < 400 && !got.length; i++) await new Promise((r) => setTimeout(r, 25));
  const page = await c.history('chat:t', {limit: 10});
  const forbidden = await c.publish('secret:1', 'no').then(() => null, (e) => e.code);
  const result = {transport: c.transport, exp: c.tokenExp !== null, got,
    acked: ack.channel, history: page.messages.map((msg) => msg.data), forbidden, asked};
  c.close();
  return result;
})()"""


async def test_a_token_goes_on_the_stream_and_on_every_request(
    tmp_path: Path, nats_url: str
) -> None:
    """In token mode the provider's token opens the stream (?token=) and authorizes the
    publishes and history reads (Authorization: Bearer), with the token's capabilities."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"sse-fallback-test-secret-0123456789")
    auth = AuthSection(mode="token", secret_file=str(secret), leeway_s=0.0)
    cfg = make_config(nats_url=nats_url, relay={"websocket": False})
    token = issue_token(
        secret.read_bytes(), "tess", {"chat:*": ["subscribe", "publish", "history"]}, 600
    )
    async with (
        running_relays(cfg.model_copy(update={"auth": auth})) as (relay,),
        chromium(tmp_path / "chromium.log") as browser,
    ):
        page = await browser.new_page(f"http://127.0.0.1:{relay.port}/v1/ping")
        got = await page.evaluate(TOKEN_CLIENT % json.dumps(token), timeout_s=20)
    # One per connection attempt: the stream opened right after a WebSocket failed is part
    # of that attempt, with its token.
    assert got.pop("asked") >= 2
    assert got == {
        "transport": "sse",
        "exp": True,  # the stream's `connected` says when the token expires
        "got": ["with a token"],
        "acked": "chat:t",
        "history": ["with a token"],
        "forbidden": "forbidden",
    }
