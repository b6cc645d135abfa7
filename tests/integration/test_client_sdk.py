"""The Python SDK (relay.client) against real relays and real nats-servers.

What the application gets from a ``Subscription`` must be exactly what was acked:
no gap and no duplicate, across a relay going away, a publish in flight at that
moment, and a failover to another region.

Sections marked "(directory)" need the relays' ``GET /v1/edges`` and
``/v1/ping``: the SDK learns the other regions, and measures them, from those.
The others pass the relays of one region as seeds and also work with relays
that have no directory (the SDK then takes the seeds that answer as the
directory, as one test checks).
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay.client import (
    Client,
    ConnectionFailed,
    ConnectionState,
    Message,
    Subscription,
    connect,
    data_of,
)
from relay.client.cli import edges_command, pub_command, sub_command
from relay.config.schema import RelayConfig
from relay.harness.linkproxy import LinkProxy
from relay.harness.toolkit import free_ports
from relay.node import RelayNode
from tests.support.checker import check_causal, check_contiguous, ids
from tests.support.directory import sibling_listed
from tests.support.regions import FAST_FEDERATION, REGIONS, region_nats, running_regions
from tests.support.relays import (
    config_file,
    make_config,
    relay_process,
    running_relays,
    timeout,
)
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def fast_connect(seeds: str | list[str], **kwargs: Any) -> AbstractAsyncContextManager[Client]:
    """``connect`` with short backoffs, so that tests do not wait for the jitter."""
    return connect(seeds, backoff_base_s=0.05, backoff_max_s=0.5, **kwargs)


# --- helpers -----------------------------------------------------------------------------


def frame_of(message: Message) -> dict[str, Any]:
    """A message as the checkers (and the wire) see it."""
    return {
        "id": message.id,
        "channel": message.channel,
        "origin": message.origin,
        "ts": message.ts.to_dict(),
        "position": message.position.to_dict(),
        "data": data_of(message),
    }


class Received:
    """What the application processed from one subscription, with bounded waits."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self._changed = anyio.Event()

    async def consume(self, sub: Subscription) -> None:
        async for message in sub:
            self.frames.append(frame_of(message))
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_count(self, count: int, seconds: float = 30) -> None:
        with anyio.fail_after(timeout(seconds)):
            while len(self.frames) < count:
                await self._changed.wait()


class States:
    def __init__(self) -> None:
        self.seen: list[ConnectionState] = []
        self._changed = anyio.Event()

    def __call__(self, state: ConnectionState) -> None:
        self.seen.append(state)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, state: ConnectionState, seconds: float = 30, times: int = 1) -> None:
        """Until ``state`` was entered ``times`` times in all."""
        with anyio.fail_after(timeout(seconds)):
            while self.seen.count(state) < times:
                await self._changed.wait()


def edge_configs(
    nats_urls: dict[str, str], ports: dict[str, int], public: dict[str, str] | None = None
) -> list[RelayConfig]:
    """One relay per region on a fixed port, each naming the others' real edges
    (``public[region]``: the URL clients use, e.g. a proxy; default the relay itself)."""
    public = public or {r: f"ws://127.0.0.1:{port}/v1/ws" for r, port in ports.items()}
    configs = []
    for region, url in nats_urls.items():
        peers = [
            {"region": peer, "edge_url": public[peer], "nats_url": peer_url}
            for peer, peer_url in nats_urls.items()
            if peer != region
        ]
        configs.append(
            make_config(
                nats_url=url,
                region=region,
                relay_id=f"{region}-1",
                port=ports[region],
                relay={"public_url": public[region]},
                peers=peers,
                federation=FAST_FEDERATION,
            )
        )
    return configs


@asynccontextmanager
async def three_regions(tmp_path: Path) -> AsyncIterator[dict[str, RelayNode]]:
    with region_nats(tmp_path) as urls:
        ports = dict(zip(REGIONS, free_ports(len(REGIONS)), strict=True))
        async with running_regions(edge_configs(urls, ports)) as regions:
            yield {region: nodes[0] for region, nodes in regions.items()}


def node_of(client: Client, nodes: list[RelayNode]) -> RelayNode:
    (node,) = [n for n in nodes if n.cfg.relay.id == client.relay]
    return node


async def publish_series(url: str, channel: str, name: str, total: int, acked: list[str]) -> None:
    """``total`` publishes over a plain WebSocket, one after another, each acked."""
    async with protocol_client(url) as pub:
        for n in range(total):
            ack = await pub.publish(channel, {"pub": name, "n": n})
            assert ack["op"] == "ack", ack
            acked.append(ack["id"])


# --- (a) one region ------------------------------------------------------------------------


async def test_subscribe_and_publish_in_order(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        states = States()
        with anyio.fail_after(timeout(20)):
            async with fast_connect(relay.url, on_state=states) as client:
                assert client.state is ConnectionState.CONNECTED
                assert (client.region, client.relay) == ("us-east", "r1")
                sub = await client.subscribe("chat:sdk")
                acks = [await client.publish("chat:sdk", {"pub": "me", "n": n}) for n in range(50)]
                received = []
                async for message in sub:
                    received.append(frame_of(message))
                    if len(received) == 50:
                        break
                assert [a.id for a in acks] == ids(received)
                assert [f["data"] for f in received] == [{"pub": "me", "n": n} for n in range(50)]
                assert check_contiguous(received, "us-east") == []
                assert sub.position == received[-1]["position"]
                # Acks carry where each one was stored, in publish order.
                assert [a.position["us-east"] for a in acks] == list(range(1, 51))
                await sub.unsubscribe()
                assert not sub.active
            # Another client (a restarted application) resumes from a saved position:
            # exactly what follows it.
            async with fast_connect(relay.url) as again:
                resumed = await again.subscribe("chat:sdk", position=received[24]["position"])
                replay = []
                async for message in resumed:
                    replay.append(frame_of(message))
                    if len(replay) == 25:
                        break
                assert ids(replay) == ids(received[25:])
        assert states.seen == [
            ConnectionState.CONNECTING,
            ConnectionState.CONNECTED,
            ConnectionState.CLOSED,
        ]


# --- (b) the relay goes away ---------------------------------------------------------------


async def test_relay_going_away_no_gap_no_duplicate(nats_url: str) -> None:
    cfgs = [make_config(nats_url=nats_url, relay_id=f"r{i}") for i in (1, 2)]
    async with running_relays(*cfgs) as nodes:
        states = States()
        total = 300
        acked: list[str] = []
        received = Received()
        with anyio.fail_after(timeout(60)):
            async with fast_connect([n.url for n in nodes], on_state=states) as client:
                on = node_of(client, nodes)
                (other,) = [n for n in nodes if n is not on]
                sub = await client.subscribe("chat:away")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(received.consume, sub)
                    async with anyio.create_task_group() as publisher:
                        publisher.start_soon(
                            publish_series, other.url, "chat:away", "p", total, acked
                        )
                        await received.wait_count(100)
                        on.stop()  # drains: 1001 going_away
                        await states.wait_for(ConnectionState.DISCONNECTED)
                    await received.wait_count(total)
                    tg.cancel_scope.cancel()
                assert client.relay == other.cfg.relay.id
                assert client.connections == 2
        assert len(acked) == total
        assert ids(received.frames) == acked  # one publisher: its order, no gap, no duplicate
        assert check_causal(received.frames) == []
        assert states.seen[:4] == [
            ConnectionState.CONNECTING,
            ConnectionState.CONNECTED,
            ConnectionState.DISCONNECTED,
            ConnectionState.CONNECTING,
        ]
        assert ConnectionState.SUSPENDED not in states.seen


async def test_relays_without_a_directory_the_seeds_are_the_directory(nats_url: str) -> None:
    """An older relay (no /v1/edges): every seed that answers is an edge of its own."""
    cfgs = [make_config(nats_url=nats_url, relay_id=f"r{i}") for i in (1, 2)]
    async with running_relays(*cfgs) as nodes:
        for node in nodes:
            assert node.edge is not None
            node.edge.directory = None  # GET /v1/edges is now a 404, as on an older relay
        states = States()
        tokens: list[str] = []

        async def token() -> str:
            tokens.append(f"t{len(tokens)}")
            return tokens[-1]

        with anyio.fail_after(timeout(30)):
            async with fast_connect(
                [n.url for n in nodes], token_provider=token, on_state=states
            ) as client:
                assert client.survey is not None and client.survey.directory.source == "seeds"
                assert set(client.survey.choice.order) == {n.url for n in nodes}
                assert client.survey.choice.order[0] == client.url
                on = node_of(client, nodes)
                (other,) = [n for n in nodes if n is not on]
                sub = await client.subscribe("chat:old")
                first = await client.publish("chat:old", "before")
                on.stop()
                await states.wait_for(ConnectionState.DISCONNECTED)
                await client.wait_connected()
                second = await client.publish("chat:old", "after")
                got = [await anext(sub), await anext(sub)]
                assert client.relay == other.cfg.relay.id
                assert client.connections == 2
        assert [m.id for m in got] == [first.id, second.id]
        assert [data_of(m) for m in got] == ["before", "after"]
        assert len(tokens) >= 2  # asked before every connection attempt


async def test_a_terminal_close_code_fails_the_client(nats_url: str) -> None:
    cfg = make_config(nats_url=nats_url, limits={"max_errors_per_minute": 3})
    async with running_relays(cfg) as (relay,):
        states = States()
        with anyio.fail_after(timeout(20)):
            async with fast_connect(relay.url, on_state=states) as client:
                sub = await client.subscribe("chat:fail")
                ws = client._ws
                assert ws is not None
                for _ in range(5):  # bad frames until the relay gives up on us: 4500
                    await ws.send("not json")
                await states.wait_for(ConnectionState.FAILED)
                assert client.close_code == 4500
                with pytest.raises(ConnectionFailed):
                    await anext(sub)
                with pytest.raises(ConnectionFailed):
                    await client.publish("chat:fail", 1)
                assert client.connections == 1  # no reconnect loop
        assert states.seen[-1] is ConnectionState.FAILED


async def test_suspended_while_nothing_answers_then_resumes(nats_url: str) -> None:
    """The only relay is gone for a while: rounds fail, the client is suspended, a publish
    made meanwhile waits; the relay comes back on its address: everything goes through."""
    (port,) = free_ports(1)
    cfg = make_config(nats_url=nats_url, port=port)
    states = States()
    acks: list[Any] = []
    async with anyio.create_task_group() as relays:
        first = RelayNode(cfg)
        await relays.start(first.run)
        with anyio.fail_after(timeout(60)):
            async with fast_connect(first.url, on_state=states) as client:
                sub = await client.subscribe("chat:suspend")
                acks.append(await client.publish("chat:suspend", "before"))
                first.stop()
                await first.run_finished()
                await states.wait_for(ConnectionState.SUSPENDED)
                async with anyio.create_task_group() as tg:

                    async def publish_during() -> None:
                        acks.append(await client.publish("chat:suspend", "during"))

                    tg.start_soon(publish_during)
                    await anyio.wait_all_tasks_blocked()
                    assert len(client.session.pending) == 1
                    again = RelayNode(cfg)
                    await relays.start(again.run)
                got = [await anext(sub), await anext(sub)]
                assert client.state is ConnectionState.CONNECTED
        again.stop()
    assert [m.id for m in got] == [a.id for a in acks]
    assert [data_of(m) for m in got] == ["before", "during"]
    # Suspended until the relay was back (attempts while suspended do not leave the state).
    assert states.seen[-3:] == [
        ConnectionState.SUSPENDED,
        ConnectionState.CONNECTED,
        ConnectionState.CLOSED,
    ]


# --- (c) publishes in flight during the drop -----------------------------------------------


async def test_publish_in_flight_during_the_drop_is_acked_and_delivered_once(
    nats_url: str,
) -> None:
    cfgs = [make_config(nats_url=nats_url, relay_id=f"r{i}") for i in (1, 2)]
    async with running_relays(*cfgs) as nodes:
        workers, each = 8, 40
        total = workers * each
        acks: list[Any] = []
        received = Received()
        with anyio.fail_after(timeout(60)):
            async with fast_connect([n.url for n in nodes]) as client:
                on = node_of(client, nodes)
                (other,) = [n for n in nodes if n is not on]
                # An independent observer on the relay that stays: it sees what is stored,
                # without the SDK's duplicate suppression.
                async with protocol_client(other.url) as observer:
                    await observer.subscribe("chat:inflight")
                    sub = await client.subscribe("chat:inflight")
                    ack_count = anyio.Event()
                    pending_at_stop: dict[str, str] = {}

                    async def worker(w: int) -> None:
                        for n in range(each):
                            acks.append(await client.publish("chat:inflight", {"w": w, "n": n}))
                            if len(acks) == 60:
                                ack_count.set()

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(received.consume, sub)
                        async with anyio.create_task_group() as publishers:
                            for w in range(workers):
                                publishers.start_soon(worker, w)
                            await ack_count.wait()
                            pending_at_stop.update(client.session.pending)
                            on.stop()
                        await received.wait_count(total)
                        tg.cancel_scope.cancel()
                    await observer.wait_messages("chat:inflight", total, 30)
                    stored = observer.messages["chat:inflight"]
                assert client.relay == other.cfg.relay.id
        assert pending_at_stop, "no publish was in flight when the relay went away"
        ack_ids = [a.id for a in acks]
        assert len(ack_ids) == len(set(ack_ids)) == total  # every publish acked, once
        # Stored once each: distinct positions, and the observer saw each id once.
        assert len({a.position["us-east"] for a in acks}) == total
        assert sorted(ids(stored)) == sorted(ack_ids)
        assert check_contiguous(stored, "us-east") == []
        # Delivered once each to the application, in the stored order.
        assert ids(received.frames) == ids(stored)
        assert check_causal(received.frames) == []
        # Each writer's publishes keep their order.
        for w in range(workers):
            mine = [f["data"]["n"] for f in received.frames if f["data"]["w"] == w]
            assert mine == list(range(each))


# --- (d) failover to another region (directory) --------------------------------------------


async def test_failover_to_another_region_no_loss_no_duplicate(tmp_path: Path) -> None:
    async with three_regions(tmp_path) as relays:
        total = 200
        acked: list[str] = []
        received = Received()
        states = States()
        seed = relays[REGIONS[0]].url
        with anyio.fail_after(timeout(90)):
            async with fast_connect(seed, on_state=states) as client:
                assert client.choice is not None
                assert set(client.choice.order) == set(REGIONS)
                home = client.region
                assert home is not None
                publisher_region = next(r for r in REGIONS if r != home)
                sub = await client.subscribe("chat:failover")
                before = await client.publish("chat:failover", {"pub": "sdk", "n": 0})
                acked.append(before.id)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(received.consume, sub)
                    async with anyio.create_task_group() as publisher:
                        publisher.start_soon(
                            publish_series,
                            relays[publisher_region].url,
                            "chat:failover",
                            "remote",
                            total,
                            acked,
                        )
                        await received.wait_count(60)
                        relays[home].stop()
                        await states.wait_for(ConnectionState.DISCONNECTED)
                        with anyio.fail_after(timeout(30)):
                            await client.wait_connected()
                        assert client.region != home
                        after = await client.publish("chat:failover", {"pub": "sdk", "n": 1})
                        acked.append(after.id)
                    await received.wait_count(total + 2, 60)
                    tg.cancel_scope.cancel()
                new_region = client.region
        assert new_region not in (None, home)
        assert ConnectionState.DISCONNECTED in states.seen
        got = ids(received.frames)
        assert len(got) == len(set(got)), "duplicate delivered"
        assert sorted(got) == sorted(acked), "lost or unexpected messages"
        assert check_causal(received.frames) == []
        remote = [f["data"]["n"] for f in received.frames if f["data"]["pub"] == "remote"]
        assert remote == list(range(total))


# --- (e) the choice is explained (directory) -----------------------------------------------


async def test_nearest_choice_is_the_connected_region_and_explained(tmp_path: Path) -> None:
    async with three_regions(tmp_path) as relays:
        with anyio.fail_after(timeout(30)):
            async with fast_connect(relays[REGIONS[1]].url, probes=3) as client:
                choice = client.choice
                assert choice is not None
                assert choice.order[0] == client.region
                assert set(choice.order) == set(REGIONS)
                assert set(choice.reasons) == set(REGIONS)
                assert choice.reasons[choice.order[0]].startswith("nearest healthy: median")
                for region in REGIONS:
                    assert choice.rtt_ms[region] is not None, choice.reasons[region]
                assert client.survey is not None
                assert client.survey.directory.region == REGIONS[1]


async def test_a_preferred_region_goes_first_and_still_fails_over(tmp_path: Path) -> None:
    async with three_regions(tmp_path) as relays:
        far = REGIONS[2]
        with anyio.fail_after(timeout(30)):
            async with fast_connect(relays[REGIONS[0]].url, prefer=far) as client:
                choice = client.choice
                assert choice is not None and choice.order[0] == far
                assert client.region == far
                assert "preferred" in choice.reasons[far]
                relays[far].stop()
                await relays[far].run_finished()
                await client.publish("chat:prefer", {"after": "failover"})
                assert client.region != far


# --- nearest by measured latency, and moving back when it recovers (directory) -------------


async def test_nearest_by_latency_and_moving_back_when_it_recovers(tmp_path: Path) -> None:
    """eu-west's and ap-south's edges are behind proxies adding one-way latency, so the
    probes rank the regions for real. us-east goes away (failover to eu-west, the next
    nearest) and comes back (the client moves back, policy ``immediately``)."""
    near, far = REGIONS[0], {REGIONS[1]: 15.0, REGIONS[2]: 30.0}  # one-way ms
    with region_nats(tmp_path) as urls:
        ports = dict(zip(REGIONS, free_ports(len(REGIONS)), strict=True))
        async with anyio.create_task_group() as proxies:
            public = {near: f"ws://127.0.0.1:{ports[near]}/v1/ws"}
            for region, ms in far.items():
                proxy = LinkProxy("127.0.0.1", ports[region], latency_ms=ms, name=region)
                await proxies.start(proxy.run)
                public[region] = f"ws://127.0.0.1:{proxy.port}/v1/ws"
            configs = edge_configs(urls, ports, public)
            async with running_regions(configs[1:]) as others:
                remote = others[REGIONS[2]][0]
                await _latency_and_move_back(configs[0], remote, public)
            proxies.cancel_scope.cancel()


async def _latency_and_move_back(
    near_cfg: RelayConfig, remote: RelayNode, public: dict[str, str]
) -> None:
    near = near_cfg.region.name
    states = States()
    received = Received()
    acked: list[str] = []
    stop_publishing = anyio.Event()

    async def publisher() -> None:
        async with protocol_client(remote.url) as pub:
            n = 0
            while not stop_publishing.is_set():
                ack = await pub.publish("chat:back", {"pub": "remote", "n": n})
                acked.append(ack["id"])
                n += 1
                # Paced (about 200 msgs/s), not flat out: the three regions, their links and
                # this publisher share one event loop, and an unpaced publisher outran the
                # restarted region's catch-up on a loaded machine, so the moved-back client
                # waited over 30 s for new messages (a throughput limit of this one-process
                # setup, not the guarantee under test).
                await anyio.sleep(0.005)

    async with anyio.create_task_group() as relays:
        first = RelayNode(near_cfg)
        await relays.start(first.run)
        with anyio.fail_after(timeout(90)):
            async with fast_connect(
                public[near], on_state=states, move_back="immediately", refresh_s=0.3
            ) as client:
                choice = client.choice
                assert choice is not None
                assert choice.order == REGIONS, choice.reasons
                assert client.region == near
                # Two proxy crossings per probe: at least twice the one-way latency.
                middle, farthest = choice.rtt_ms[REGIONS[1]], choice.rtt_ms[REGIONS[2]]
                assert middle is not None and middle >= 25, choice.reasons
                assert farthest is not None and farthest >= 55, choice.reasons
                assert "nearest healthy" in choice.reasons[near]
                sub = await client.subscribe("chat:back")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(received.consume, sub)
                    async with anyio.create_task_group() as publishing:
                        publishing.start_soon(publisher)
                        await received.wait_count(50)
                        first.stop()
                        await first.run_finished()
                        await states.wait_for(ConnectionState.CONNECTED, times=2)
                        assert client.region == REGIONS[1]  # the next nearest
                        await received.wait_count(len(received.frames) + 50)
                        again = RelayNode(near_cfg)
                        await relays.start(again.run)
                        await states.wait_for(ConnectionState.CONNECTED, times=3)
                        assert client.region == near  # moved back
                        await received.wait_count(len(received.frames) + 50)
                        stop_publishing.set()
                    await received.wait_count(len(acked))
                    tg.cancel_scope.cancel()
                assert client.connections == 3
        again.stop()
    assert ConnectionState.SUSPENDED not in states.seen
    got = ids(received.frames)
    assert got == acked  # one publisher: its order, nothing lost, nothing twice
    assert check_causal(received.frames) == []


# --- a frozen relay: only the keepalive can tell ------------------------------------------


async def test_a_frozen_relay_is_left_by_keepalive_and_tried_last(
    nats_url: str, tmp_path: Path
) -> None:
    """SIGSTOP: the relay's sockets stay open and its kernel still accepts connections.
    The keepalive notices; the client goes to the other relay at once instead of
    waiting out an open timeout on the frozen one; nothing is lost or repeated."""
    frozen_cfg = make_config(nats_url=nats_url, relay_id="frozen")
    with relay_process(config_file(tmp_path / "frozen.toml", frozen_cfg), tmp_path / "f.log") as (
        proc,
        frozen_url,
    ):
        async with running_relays(make_config(nats_url=nats_url, relay_id="other")) as (other,):
            await sibling_listed(frozen_url, other.url)  # else no edge to go to
            states = States()
            received = Received()
            acked: list[str] = []
            opened = Opened()
            with anyio.fail_after(timeout(60)):
                async with fast_connect(
                    frozen_url, on_state=states, keepalive_s=0.5, dial=opened
                ) as client:
                    assert client.relay == "frozen"
                    sub = await client.subscribe("chat:frozen")
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(received.consume, sub)
                        async with anyio.create_task_group() as publishing:
                            publishing.start_soon(
                                publish_series, other.url, "chat:frozen", "p", 200, acked
                            )
                            await received.wait_count(50)
                            before = len(opened.websockets)
                            os.kill(proc.pid, signal.SIGSTOP)
                            try:
                                await states.wait_for(ConnectionState.CONNECTED, times=2)
                            finally:
                                os.kill(proc.pid, signal.SIGCONT)
                            # The frozen edge is not retried first: the sibling is.
                            assert opened.websockets[before:] == [other.url]
                        await received.wait_count(len(acked))
                        tg.cancel_scope.cancel()
                    assert client.relay == "other"
                    assert client.connections == 2
    assert ids(received.frames) == acked
    assert check_causal(received.frames) == []
    assert ConnectionState.SUSPENDED not in states.seen


class Opened:
    """A ``dial`` that changes nothing and writes down every WebSocket the client opens."""

    def __init__(self) -> None:
        self.websockets: list[str] = []

    def __call__(self, url: str) -> str:
        if url.endswith("/v1/ws"):
            self.websockets.append(url)
        return url


class Jitter(random.Random):
    """The SDK's backoff randomness, counted: one draw per backoff pause."""

    def __init__(self) -> None:
        super().__init__(7)
        self.draws = 0

    def uniform(self, a: float, b: float) -> float:
        self.draws += 1
        return super().uniform(a, b)


async def test_a_crashed_relay_one_pause_then_the_next_edge_at_once(
    nats_url: str, tmp_path: Path
) -> None:
    """SIGKILL: after the drop the client waits one jittered pause (spreading a crowd),
    retries the dead edge (refused at once) and goes on to the next edge without a
    second pause."""
    dead_cfg = make_config(nats_url=nats_url, relay_id="dead")
    with relay_process(config_file(tmp_path / "dead.toml", dead_cfg), tmp_path / "d.log") as (
        proc,
        dead_url,
    ):
        async with running_relays(make_config(nats_url=nats_url, relay_id="other")) as (other,):
            await sibling_listed(dead_url, other.url)  # else no edge to go to
            states, opened, jitter = States(), Opened(), Jitter()
            with anyio.fail_after(timeout(30)):
                async with fast_connect(dead_url, on_state=states, dial=opened, rng=jitter) as c:
                    assert c.relay == "dead"
                    draws, before = jitter.draws, len(opened.websockets)
                    os.kill(proc.pid, signal.SIGKILL)
                    await states.wait_for(ConnectionState.CONNECTED, times=2)
                    assert c.relay == "other"
                    assert opened.websockets[before:] == [dead_url, other.url]
                    assert jitter.draws - draws == 1


# --- dial: a client location with its own path to every edge -------------------------------


async def test_dial_routes_through_the_clients_own_paths(tmp_path: Path) -> None:
    """The relays publish their own URLs; this client reaches each one through a delay
    proxy (its own path, as from another place on the map). The choice follows the
    proxies' latencies and still names the relays' own URLs."""
    one_way = {REGIONS[0]: 30.0, REGIONS[1]: 0.0, REGIONS[2]: 12.0}
    async with three_regions(tmp_path) as relays, anyio.create_task_group() as proxies:
        via: dict[str, str] = {}
        for region, ms in one_way.items():
            port = relays[region].cfg.relay.port
            proxy = LinkProxy("127.0.0.1", port, latency_ms=ms, name=f"client->{region}")
            await proxies.start(proxy.run)
            via[f"127.0.0.1:{port}"] = f"127.0.0.1:{proxy.port}"
        dialled: list[str] = []

        def dial(url: str) -> str:
            for real, proxied in via.items():
                if f"//{real}/" in url or url.endswith(f"//{real}"):
                    dialled.append(url)
                    return url.replace(real, proxied, 1)
            raise AssertionError(f"dialled a URL outside the map: {url}")

        with anyio.fail_after(timeout(30)):
            async with fast_connect(relays[REGIONS[0]].url, probes=3, dial=dial) as client:
                choice = client.choice
                assert choice is not None
                assert list(choice.order) == [REGIONS[1], REGIONS[2], REGIONS[0]], choice.reasons
                assert client.region == REGIONS[1]
                assert client.url == relays[REGIONS[1]].url  # the relay's own URL
                far = choice.rtt_ms[REGIONS[0]]
                assert far is not None and far >= 55, choice.reasons  # two crossings
                assert any(u.endswith("/v1/ws") for u in dialled)  # the WebSocket too
        proxies.cancel_scope.cancel()


# --- the command line (directory) ----------------------------------------------------------


async def test_cli_edges_pub_and_sub(tmp_path: Path) -> None:
    async with three_regions(tmp_path) as relays:
        seed = relays[REGIONS[0]].url
        with anyio.fail_after(timeout(60)):
            table = io.StringIO()
            assert await edges_command([seed], out=table) == 0
            rows = table.getvalue().splitlines()
            assert rows[0].split() == ["REGION", "URL", "HEALTH", "RTT", "REASON"]
            chosen = [row for row in rows if row.startswith("*")]
            assert len(chosen) == 1 and "nearest healthy: median" in chosen[0]
            for region in REGIONS:
                assert any(region in row.split()[:2] for row in rows[1:])
            assert rows[-1] == f"directory from {seed} (region {REGIONS[0]}, relay {REGIONS[0]}-1)"

            acks = []
            for data in ('{"text": "hi"}', "plain words"):
                out = io.StringIO()
                assert await pub_command("chat:cli", data, [seed], out=out) == 0
                acks.append(json.loads(out.getvalue()))
            assert all(a["op"] == "ack" and a["channel"] == "chat:cli" for a in acks)

            out, err = io.StringIO(), io.StringIO()
            code = await sub_command("chat:cli", [seed], {}, limit=2, out=out, err=err)
            assert code == 0
            lines = [json.loads(line) for line in out.getvalue().splitlines()]
            # Every edge is equally near on loopback, so each `pub` run may pick its own
            # region. Two messages from one origin keep publish order; from two origins
            # they are causally unrelated (separate clients) and may come either way.
            origins = {a["id"]: m["origin"] for a in acks for m in lines if m["id"] == a["id"]}
            if len(set(origins.values())) == 1:
                assert [m["id"] for m in lines] == [a["id"] for a in acks]
            assert sorted(m["id"] for m in lines) == sorted(a["id"] for a in acks)
            data = {m["id"]: m["data"] for m in lines}
            assert [data[a["id"]] for a in acks] == [{"text": "hi"}, "plain words"]
            assert check_causal(lines) == []
            assert all(m["region"] in REGIONS and m["origin"] in REGIONS for m in lines)
            # Where the subscriber ended: exactly both messages, however they were stored.
            both = {r: max(a["position"].get(r, 0) for a in acks) for r in REGIONS}
            assert lines[-1]["position"] == {r: n for r, n in both.items() if n}
            resume = f"resume with --from-position '{json.dumps(lines[-1]['position'])}'"
            assert resume in err.getvalue()

            # The argparse front end, as `relaynet pub` / `relaynet edges` will run it.
            cli = [sys.executable, "-m", "relay.client.cli"]
            done = await anyio.run_process([*cli, "pub", "chat:cli", "3", "--seeds", seed])
            assert json.loads(done.stdout)["position"]
            done = await anyio.run_process([*cli, "edges", "--seeds", f"{seed},{seed}"])
            assert b"nearest healthy" in done.stdout
            bad = await anyio.run_process(
                [*cli, "sub", "chat:cli", "--from-position", "[1]"], check=False
            )
            assert bad.returncode == 2 and b"--from-position" in bad.stderr
