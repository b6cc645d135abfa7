"""SSE against real relays: the same messages as the WebSocket, resumable with
Last-Event-ID on any relay of any region (issue #13)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay.adapters.tokens import issue_token
from relay.client import HttpClient
from relay.client.sse import SseEvent, sse_stream
from relay.config.schema import AuthSection
from relay.node import RelayNode
from tests.support.regions import region_configs, region_nats, running_regions
from tests.support.relays import make_config, running_relays, timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def sse_url(relay: RelayNode, query: str) -> str:
    return f"http://127.0.0.1:{relay.port}/v1/sse?{query}"


async def take(events: AsyncIterator[SseEvent], count: int, kind: str = "message") -> list[Any]:
    """The data of the next ``count`` events of ``kind`` (others skipped), and the id."""
    got: list[Any] = []
    with anyio.fail_after(timeout(15)):
        async for event in events:
            if event.event == kind:
                got.append((json.loads(event.data), event.id))
                if len(got) == count:
                    return got
    raise AssertionError(f"the stream ended after {got}")


async def test_messages_arrive_and_last_event_id_resumes_without_loss_or_repeat(
    nats_url: str,
) -> None:
    cfg = make_config(nats_url=nats_url, relay={"heartbeat_s": 0.3})
    async with running_relays(cfg) as (relay,):
        api = HttpClient(relay.url, timeout_s=timeout(10))
        await api.publish("a", "before")  # before the stream: not delivered live
        async with sse_stream(
            sse_url(relay, "channels=a,b"), connect_timeout_s=10, idle_timeout_s=10
        ) as (status, events):
            assert status == 200
            subscribed = await take(events, 2, "subscribed")
            assert sorted(frame["channel"] for frame, _ in subscribed) == ["a", "b"]
            await api.publish("a", 1)
            await api.publish("b", 2)
            received = await take(events, 2)
            assert [(f["channel"], f["data"]) for f, _ in received] == [("a", 1), ("b", 2)]
            last_id = received[-1][1]
            assert last_id
        # Gone for a while: three more, then resume from the last id seen.
        for channel, n in (("a", 3), ("b", 4), ("a", 5)):
            await api.publish(channel, n)
        async with sse_stream(
            sse_url(relay, "channels=a,b"),
            headers=[("Last-Event-ID", last_id)],
            connect_timeout_s=10,
            idle_timeout_s=10,
        ) as (status, events):
            assert status == 200
            resumed = await take(events, 3)
            assert sorted(f["data"] for f, _ in resumed) == [3, 4, 5]
            await api.publish("a", 6)
            ((live, _),) = await take(events, 1)
            assert live["data"] == 6  # and nothing repeated before it


async def test_resume_on_another_region(tmp_path: Path) -> None:
    with region_nats(tmp_path, ("us-east", "eu-west")) as urls:
        async with running_regions(region_configs(urls)) as regions:
            east, west = regions["us-east"][0], regions["eu-west"][0]
            east_api = HttpClient(east.url, timeout_s=timeout(15))
            async with sse_stream(
                sse_url(east, "channels=room"), connect_timeout_s=10, idle_timeout_s=15
            ) as (_, events):
                await take(events, 1, "subscribed")
                await east_api.publish("room", "first")
                ((_, last_id),) = await take(events, 1)
            for n in range(3):
                await east_api.publish("room", n)
            # The browser's reconnect lands in the other region, with the id of the first.
            async with sse_stream(
                sse_url(west, "channels=room"),
                headers=[("Last-Event-ID", last_id)],
                connect_timeout_s=10,
                idle_timeout_s=15,
            ) as (status, events):
                assert status == 200
                resumed = await take(events, 3)
                assert [f["data"] for f, _ in resumed] == [0, 1, 2]


async def test_tokens_and_bad_requests(nats_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"sse-test-secret-0123456789abcdef0123")
    auth = AuthSection(mode="token", secret_file=str(secret), leeway_s=0.0)
    cfg = make_config(nats_url=nats_url).model_copy(update={"auth": auth})
    reader = issue_token(secret.read_bytes(), "viewer", {"news:*": ["subscribe"]}, 600)
    async with running_relays(cfg) as (relay,):
        for query, status in (
            ("channels=news:1", 401),  # no token
            ("channels=news:1&token=garbage", 401),
            ("channels=bad%20name&token=" + reader, 400),
            ("token=" + reader, 400),  # no channels
        ):
            async with sse_stream(
                sse_url(relay, query), connect_timeout_s=10, idle_timeout_s=10
            ) as (got, _):
                assert got == status, query
        async with sse_stream(
            sse_url(relay, "channels=news:1,secret:1&token=" + reader),
            headers=[("Last-Event-ID", "not-an-id")],
            connect_timeout_s=10,
            idle_timeout_s=10,
        ) as (got, _):
            assert got == 400
        async with sse_stream(
            sse_url(relay, "channels=news:1,secret:1&token=" + reader),
            connect_timeout_s=10,
            idle_timeout_s=10,
        ) as (got, events):
            assert got == 200
            replies: dict[str, Any] = {}
            with anyio.fail_after(timeout(15)):
                async for event in events:
                    if event.event in ("subscribed", "error"):
                        replies[event.event] = json.loads(event.data)
                    if len(replies) == 2:
                        break
            allowed, refused = replies["subscribed"], replies["error"]
            assert allowed["channel"] == "news:1"
            assert (refused["code"], refused["channel"]) == ("forbidden", "secret:1")


async def test_idle_streams_get_heartbeat_comments(nats_url: str) -> None:
    cfg = make_config(nats_url=nats_url, relay={"heartbeat_s": 0.2})
    async with (
        running_relays(cfg) as (relay,),
        await anyio.connect_tcp("127.0.0.1", relay.port) as stream,
    ):
        await stream.send(b"GET /v1/sse?channels=quiet HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        with anyio.fail_after(timeout(10)):
            while received.count(b": ping\n\n") < 2:
                received += await stream.receive()
        assert received.startswith(b"HTTP/1.1 200")
