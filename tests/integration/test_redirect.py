"""Relays sending clients elsewhere, and the directory that says where "elsewhere" is.

Real relays and nats-servers: every relay beats its URL and state on the region's
NATS (and peers' links forward the beats), so ``GET /v1/edges`` lists every
relay of every region; a relay at ``limits.max_connections`` or shutting down
sends ``redirect`` to a sibling (or a healthy peer region), and the SDK goes
there at once. The SDK also refuses a publish larger than the relay announced
it accepts, instead of resending it into close 1009 forever.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from relay.client import ConnectionState, FrameTooLarge, connect
from relay.client.session import Message
from tests.support.checker import check_causal, ids
from tests.support.directory import wait_listed
from tests.support.http import http_get_ok
from tests.support.regions import region_configs, region_nats, running_regions
from tests.support.relays import make_config, running_relays, timeout
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def fast(seeds: str | list[str], **kwargs: Any) -> Any:
    return connect(seeds, backoff_base_s=0.05, backoff_max_s=0.5, **kwargs)


async def test_the_directory_lists_every_relay_of_every_region(tmp_path: Path) -> None:
    regions = ("us-east", "eu-west")
    with region_nats(tmp_path, regions) as urls:
        configs = region_configs(urls, relays_per_region=2)
        async with running_regions(configs) as nodes:
            every = {n.url for region in regions for n in nodes[region]}
            doc = await wait_listed(nodes["us-east"][0], every)
            rows = doc["edges"]
            # Per region: its public edge first (this relay; the peer's configured
            # edge_url), then the relays heard from.
            assert [(r["region"], r["url"]) for r in rows] == [
                ("us-east", nodes["us-east"][0].url),
                ("us-east", nodes["us-east"][1].url),
                ("eu-west", "ws://127.0.0.1:1/v1/ws"),
                ("eu-west", nodes["eu-west"][0].url),
                ("eu-west", nodes["eu-west"][1].url),
            ]
            assert {r["health"] for r in rows} == {"up"}
            assert [r.get("relay") for r in rows] == [
                "us-east-1", "us-east-2", None, "eu-west-1", "eu-west-2"
            ]  # fmt: skip
            # A relay that stops is gone from its siblings' and its peers' directories.
            gone = nodes["eu-west"][1]
            gone.stop()
            await gone.run_finished()
            await wait_listed(nodes["us-east"][0], set(), unlisted={gone.url})


async def test_a_full_relay_redirects_new_clients_to_a_sibling(nats_url: str) -> None:
    full_cfg = make_config(nats_url=nats_url, relay_id="r1", limits={"max_connections": 1})
    other_cfg = make_config(nats_url=nats_url, relay_id="r2")
    async with running_relays(full_cfg, other_cfg) as (full, other):
        await wait_listed(full, {other.url})
        async with protocol_client(full.url):  # takes the one place
            # A plain WebSocket client sees the frame and the close code.
            async with ws_connect(full.url) as ws:
                first = json.loads(await ws.recv())
                assert first == {
                    "op": "redirect",
                    "url": other.url,
                    "region": "us-east",
                    "reason": "overloaded",
                }
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1013
            # The SDK follows it: the full relay is first in its own directory.
            states: list[ConnectionState] = []
            with anyio.fail_after(timeout(20)):
                async with fast(full.url, on_state=states.append) as client:
                    assert client.survey is not None
                    assert client.survey.candidates[0][1] == full.url
                    assert client.relay == "r2"
                    assert client.redirects == 1
                    ack = await client.publish("chat:redirect", {"n": 1})
                    assert ack.position.to_dict() == {"us-east": 1}
            assert ConnectionState.SUSPENDED not in states
        metrics = await http_get_ok(full, "/metrics")
        assert (
            'relaynet_redirects_total{reason="overloaded",region="us-east",relay="r1",'
            'target="sibling"} 2.0'
        ) in metrics, metrics


async def test_two_full_relays_do_not_bounce_a_client_forever(nats_url: str) -> None:
    cfgs = [
        make_config(nats_url=nats_url, relay_id=f"r{i}", limits={"max_connections": 1})
        for i in (1, 2)
    ]
    async with running_relays(*cfgs) as (one, two):
        await wait_listed(one, {two.url})
        await wait_listed(two, {one.url})
        async with protocol_client(one.url), protocol_client(two.url):
            # Each beat says "full" within a second; until then each may point at the
            # other. Redirects are followed without a pause, so a cap on redirects in a
            # row is all that keeps a client from bouncing between them at full speed.
            states: list[ConnectionState] = []
            opened: list[str] = []

            def count(url: str) -> str:
                if url.endswith("/v1/ws"):
                    opened.append(url)
                return url

            with anyio.move_on_after(4):
                async with fast(one.url, on_state=states.append, dial=count):
                    pytest.fail("connected to a full relay")
            assert ConnectionState.CONNECTED not in states
            assert ConnectionState.SUSPENDED in states
            # Backoff (0.05 s base, 0.5 s cap) allows a few dozen attempts in 4 s;
            # an unbounded bounce makes thousands.
            assert 2 <= len(opened) < 200, len(opened)


async def test_draining_relay_sends_its_clients_to_a_sibling_no_gap_no_duplicate(
    nats_url: str,
) -> None:
    cfgs = [make_config(nats_url=nats_url, relay_id=f"r{i}") for i in (1, 2)]
    async with running_relays(*cfgs) as (first, second):
        await wait_listed(first, {second.url})
        received: list[dict[str, Any]] = []
        acked: list[str] = []
        states: list[ConnectionState] = []
        total = 300
        enough = anyio.Event()
        done = anyio.Event()
        published = anyio.Event()

        async def consume(sub: Any) -> None:
            async for message in sub:
                assert isinstance(message, Message)
                received.append(
                    {
                        "id": message.id,
                        "channel": message.channel,
                        "origin": message.origin,
                        "ts": message.ts.to_dict(),
                        "position": message.position.to_dict(),
                    }
                )
                if len(received) == 100:
                    enough.set()
                if len(received) == total:
                    done.set()

        async def publish() -> None:
            async with protocol_client(second.url) as pub:
                for n in range(total):
                    ack = await pub.publish("chat:drain", {"n": n})
                    acked.append(ack["id"])
            published.set()

        with anyio.fail_after(timeout(60)):
            async with fast(first.url, on_state=states.append) as client:
                assert client.relay == "r1"
                sub = await client.subscribe("chat:drain")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume, sub)
                    tg.start_soon(publish)
                    await enough.wait()
                    first.stop()
                    await done.wait()
                    await published.wait()
                    tg.cancel_scope.cancel()
                assert client.relay == "r2"
                assert client.redirects == 1
                assert client.connections == 2
        assert ids(received) == acked
        assert check_causal(received) == []
        assert ConnectionState.DISCONNECTED in states
        assert ConnectionState.SUSPENDED not in states


async def test_a_publish_above_the_relays_frame_limit_fails_at_once(nats_url: str) -> None:
    cfg = make_config(
        nats_url=nats_url,
        limits={"max_frame_bytes": 2048},
        namespaces=[{"name": "default", "prefix": "", "max_message_bytes": 1024}],
    )
    async with running_relays(cfg) as (relay,):
        with anyio.fail_after(timeout(20)):
            async with fast(relay.url) as client:
                with pytest.raises(FrameTooLarge) as refused:
                    await client.publish("chat:big", "x" * 3000)
                assert refused.value.limit == 2048
                # Nothing pending, the connection untouched: the next publish just works.
                assert client.session.pending == {}
                ack = await client.publish("chat:big", "small")
                assert ack.channel == "chat:big"
                assert client.connections == 1
