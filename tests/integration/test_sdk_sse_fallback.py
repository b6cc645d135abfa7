"""The Python SDK falls back to SSE + HTTP publishing when WebSocket is refused, and goes
back to WebSocket when it can (issue #13), against real relays and nats-servers.

``[relay] websocket = false`` refuses upgrades with HTTP 403, as a proxy that blocks
WebSocket would. What the application gets must not depend on the transport: every
acked message exactly once, in the order of the channel, across the switches.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup, TaskStatus

from relay.adapters.tokens import issue_token
from relay.client import Client, HttpClient, Message, Subscription, connect
from relay.client.transport import Transport
from relay.config.schema import AuthSection, RelayConfig
from relay.node import RelayNode
from tests.support.checker import check_contiguous
from tests.support.relays import config_file, make_config, relay_process, timeout
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def fast_connect(seeds: str | list[str], **kwargs: Any) -> AbstractAsyncContextManager[Client]:
    return connect(seeds, backoff_base_s=0.05, backoff_max_s=0.5, timeout_s=timeout(20), **kwargs)


def frame_of(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "channel": message.channel,
        "origin": message.origin,
        "ts": message.ts.to_dict(),
        "position": message.position.to_dict(),
        "data": message.data,
    }


class Received:
    """What the application took from one subscription."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def consume(self, sub: Subscription) -> None:
        async for message in sub:
            self.frames.append(frame_of(message))

    def data(self) -> list[Any]:
        return [frame["data"] for frame in self.frames]


class Transports:
    def __init__(self) -> None:
        self.seen: list[Transport] = []

    def __call__(self, transport: Transport) -> None:
        self.seen.append(transport)


async def start_node(tg: TaskGroup, cfg: RelayConfig) -> tuple[RelayNode, anyio.Event]:
    """A relay run in ``tg``, and an event set once it has stopped."""
    node, done = RelayNode(cfg), anyio.Event()

    async def run(*, task_status: TaskStatus[None]) -> None:
        try:
            await node.run(task_status=task_status)
        finally:
            done.set()

    await tg.start(run)
    return node, done


@asynccontextmanager
async def relay_node(cfg: RelayConfig) -> AsyncIterator[RelayNode]:
    """A relay in this event loop, stopped (gracefully) and waited for on exit."""
    node = RelayNode(cfg)
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        try:
            yield node
        finally:
            node.stop()


async def publish_series(
    url: str,
    channel: str,
    name: str,
    stop: anyio.Event,
    acked: list[int],
    finished: anyio.Event,
) -> None:
    """Another publisher, over the HTTP API, one after another until ``stop``; it retries
    each (same id) through a relay's restart. ``finished`` is set once its last publish is
    answered: compare what was received with ``acked`` only then (a publish cut off in
    flight may be stored and delivered without its ack counted: CI saw exactly that)."""
    api = HttpClient(url, timeout_s=timeout(30))
    n = 0
    try:
        while not stop.is_set():
            await api.publish(channel, {"pub": name, "n": n}, id=f"{name}-{n}")
            acked.append(n)
            n += 1
            await anyio.sleep(0.01)
    finally:
        finished.set()


def assert_exactly_once_in_order(received: Received, channel: str, expected: list[Any]) -> None:
    assert check_contiguous(received.frames, "us-east") == [], channel
    assert received.data() == expected, channel


async def test_on_a_relay_that_refuses_websocket_everything_works_over_sse(
    nats_url: str,
) -> None:
    cfg = make_config(nats_url=nats_url, relay={"websocket": False})
    transports = Transports()
    async with relay_node(cfg) as relay:
        other = HttpClient(relay.url, timeout_s=timeout(10))
        with anyio.fail_after(timeout(30)):
            async with fast_connect(relay.url, on_transport=transports) as client:
                assert client.transport == "sse"
                assert transports.seen == ["sse"]
                assert (client.region, client.relay) == ("us-east", None)  # no stream yet
                a, b = await client.subscribe("chat:a"), await client.subscribe("chat:b")
                assert client.relay == "r1"
                got_a, got_b = Received(), Received()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(got_a.consume, a)
                    tg.start_soon(got_b.consume, b)
                    expected: dict[str, list[Any]] = {"chat:a": [], "chat:b": []}
                    for n in range(20):
                        channel = "chat:a" if n % 2 else "chat:b"
                        if n % 3:
                            ack = await client.publish(channel, {"pub": "sdk", "n": n})
                            assert ack.channel == channel
                        else:
                            await other.publish(channel, {"pub": "other", "n": n})
                        expected[channel].append({"pub": "sdk" if n % 3 else "other", "n": n})
                    # Pipelined publishes: acked in order, stored in order.
                    with anyio.fail_after(timeout(20)):
                        acks = []
                        async with anyio.create_task_group() as pubs:

                            async def one(n: int) -> None:
                                acks.append(await client.publish("chat:a", {"burst": n}))

                            for n in range(10):
                                pubs.start_soon(one, n)
                    expected["chat:a"] += [{"burst": n} for n in range(10)]
                    await wait_until(
                        lambda: (
                            len(got_a.frames) == len(expected["chat:a"])
                            and len(got_b.frames) == len(expected["chat:b"])
                        ),
                        "every message received",
                        20,
                    )
                    tg.cancel_scope.cancel()
                assert_exactly_once_in_order(got_a, "chat:a", expected["chat:a"])
                assert_exactly_once_in_order(got_b, "chat:b", expected["chat:b"])
                page = await client.history("chat:a", limit=5)
                assert [m.data for m in page] == expected["chat:a"][-5:]
                assert page.more
                await a.unsubscribe()
                # Unsubscribed: the stream is reopened without it, b goes on.
                await other.publish("chat:a", "not for us")
                await other.publish("chat:b", "still")
                async for message in b:
                    assert message.data == "still"
                    break
                assert client.transport == "sse"


async def test_back_to_websocket_when_the_relay_allows_it_again(nats_url: str) -> None:
    """The relay restarts (same port, same NATS) with WebSocket on: the client leaves SSE
    for WebSocket, with nothing lost or repeated while a publisher goes on throughout."""
    off = make_config(nats_url=nats_url, relay={"websocket": False})
    transports = Transports()
    got, acked, stop, finished = Received(), list[int](), anyio.Event(), anyio.Event()
    own: list[int] = []
    with anyio.fail_after(timeout(60)):
        async with anyio.create_task_group() as relays:
            first, first_done = await start_node(relays, off)
            url = first.url
            async with fast_connect(url, on_transport=transports, websocket_retry_s=0.5) as client:
                sub = await client.subscribe("chat:switch")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(got.consume, sub)
                    tg.start_soon(publish_series, url, "chat:switch", "p", stop, acked, finished)
                    await wait_until(lambda: len(got.frames) >= 20, "messages over SSE", 20)
                    for n in range(5):
                        await client.publish("chat:switch", {"pub": "sdk", "n": n})
                        own.append(n)
                    assert client.transport == "sse"
                    first.stop()
                    await first_done.wait()
                    on = make_config(nats_url=nats_url, port=first.port)
                    second, _ = await start_node(relays, on)
                    await wait_until(
                        lambda: client.transport == "websocket", "back on WebSocket", 30
                    )
                    for n in range(5, 10):
                        await client.publish("chat:switch", {"pub": "sdk", "n": n})
                        own.append(n)
                    count = len(acked)
                    await wait_until(lambda: len(acked) >= count + 20, "more publishes", 20)
                    stop.set()
                    await wait_until(finished.is_set, "the last publish answered", 20)
                    await wait_until(
                        lambda: len(got.frames) >= len(acked) + len(own), "all received", 20
                    )
                    tg.cancel_scope.cancel()
            second.stop()
    assert transports.seen == ["sse", "websocket"]
    assert check_contiguous(got.frames, "us-east") == []
    data = got.data()
    assert len(data) == len(acked) + len(own)
    assert [d["n"] for d in data if d["pub"] == "p"] == acked
    assert [d["n"] for d in data if d["pub"] == "sdk"] == own


async def test_a_cut_stream_resumes_on_another_relay_of_the_region(
    nats_url: str, tmp_path: Path
) -> None:
    """SIGKILL of the relay serving the SSE stream: the client goes on over SSE on the
    other relay, from its positions."""
    cfgs = [
        make_config(nats_url=nats_url, relay_id=name, relay={"websocket": False})
        for name in ("one", "two")
    ]
    with (
        relay_process(config_file(tmp_path / "one.toml", cfgs[0]), tmp_path / "1.log") as (
            first,
            first_url,
        ),
        relay_process(config_file(tmp_path / "two.toml", cfgs[1]), tmp_path / "2.log") as (
            second,
            second_url,
        ),
    ):
        procs = {first_url: first, second_url: second}
        got, acked, stop, finished = Received(), list[int](), anyio.Event(), anyio.Event()
        with anyio.fail_after(timeout(60)):
            async with fast_connect([first_url, second_url], keepalive_s=1) as client:
                sub = await client.subscribe("chat:cut")
                assert client.transport == "sse" and client.url in procs
                survivor = second_url if client.url == first_url else first_url
                async with anyio.create_task_group() as tg:
                    tg.start_soon(got.consume, sub)
                    tg.start_soon(publish_series, survivor, "chat:cut", "p", stop, acked, finished)
                    await wait_until(lambda: len(got.frames) >= 20, "messages over SSE", 20)
                    victim = procs[client.url]
                    os.kill(victim.pid, signal.SIGKILL)
                    victim.wait()
                    await wait_until(lambda: client.url == survivor, "on the other relay", 30)
                    count = len(acked)
                    await wait_until(lambda: len(acked) >= count + 20, "more publishes", 20)
                    stop.set()
                    await wait_until(finished.is_set, "the last publish answered", 20)
                    await wait_until(lambda: len(got.frames) >= len(acked), "all received", 20)
                    tg.cancel_scope.cancel()
                assert client.transport == "sse"
        assert check_contiguous(got.frames, "us-east") == []
        assert [d["n"] for d in got.data()] == acked


async def test_tokens_are_renewed_by_reopening_the_stream(nats_url: str, tmp_path: Path) -> None:
    """Token mode: the provider is asked for every stream and request; a stream is reopened
    with a fresh token before its token expires, so it is never cut for expiry (4003)."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"sse-fallback-secret-0123456789abcdef")
    auth = AuthSection(mode="token", secret_file=str(secret), leeway_s=0.0)
    cfg = make_config(nats_url=nats_url, relay={"websocket": False}).model_copy(
        update={"auth": auth}
    )
    asked: list[float] = []

    async def token() -> str:
        asked.append(anyio.current_time())
        return issue_token(
            secret.read_bytes(), "alice", {"chat:*": ["subscribe", "publish", "history"]}, 3
        )

    got = Received()
    async with relay_node(cfg) as relay:
        with anyio.fail_after(timeout(40)):
            async with fast_connect(relay.url, token_provider=token) as client:
                assert client.transport == "sse"
                sub = await client.subscribe("chat:tok")
                first_connection = client.connection_id
                assert client.token_exp is not None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(got.consume, sub)
                    sent = []
                    # Longer than two tokens' lifetime: the stream must be renewed twice.
                    started = anyio.current_time()
                    while anyio.current_time() - started < 7:
                        await client.publish("chat:tok", len(sent))
                        sent.append(len(sent))
                        await anyio.sleep(0.05)
                    await wait_until(lambda: len(got.frames) == len(sent), "all received", 20)
                    tg.cancel_scope.cancel()
                assert client.connection_id != first_connection  # streams reopened
                assert client.connections == 1  # never cut: renewed in place
                assert got.data() == sent
                assert check_contiguous(got.frames, "us-east") == []
    assert len(asked) > len(sent)  # every stream, every publish
