"""Resume from a position on any relay of the region: exactly the missed messages, then live."""

from __future__ import annotations

import anyio
import pytest

from tests.support.checker import check_contiguous
from tests.support.relays import make_config, running_relays
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_resume_on_another_relay_while_publishing_continues(nats_url: str) -> None:
    cfgs = [make_config(nats_url=nats_url, relay_id=f"r{i}") for i in (1, 2)]
    async with running_relays(*cfgs) as (a, b):
        total = 400
        done = anyio.Event()
        published = 0

        async def publisher() -> None:
            nonlocal published
            async with protocol_client(a.url) as pub:
                for n in range(total):
                    ack = await pub.publish("chat:resume", {"n": n})
                    assert ack["op"] == "ack"
                    published += 1
            done.set()

        received: list[dict[str, object]] = []
        async with anyio.create_task_group() as tg:
            async with protocol_client(a.url) as first:
                await first.subscribe("chat:resume")
                tg.start_soon(publisher)
                await first.wait_messages("chat:resume", 50)
                received.extend(first.messages["chat:resume"])
            # Gone while publishing goes on: back on the other relay once it missed some.
            missed = min(total, len(received) + 20)
            await wait_until(lambda: published >= missed, "publishes while gone")
            position = received[-1]["position"]
            async with protocol_client(b.url) as second:
                reply = await second.subscribe("chat:resume", position=position)  # type: ignore[arg-type]
                assert reply["op"] == "subscribed" and reply["recovered"] is True
                await done.wait()
                await second.wait_messages("chat:resume", total - len(received))
                received.extend(second.messages["chat:resume"])
        assert check_contiguous(received, "us-east") == []
        assert len(received) == total
        assert [m["data"]["n"] for m in received] == list(range(total))  # type: ignore[index]


async def test_resume_from_empty_position_replays_everything(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with protocol_client(relay.url) as pub:
            for n in range(5):
                await pub.publish("chat:all", n)
        async with protocol_client(relay.url) as sub:
            await sub.subscribe("chat:all", position={})
            await sub.wait_messages("chat:all", 5)
            assert [m["data"] for m in sub.messages["chat:all"]] == [0, 1, 2, 3, 4]
            await pub_one(relay.url, "chat:all", 5)
            await sub.wait_messages("chat:all", 6)
            assert check_contiguous(sub.messages["chat:all"], "us-east") == []


async def pub_one(url: str, channel: str, data: object) -> None:
    async with protocol_client(url) as pub:
        await pub.publish(channel, data)


async def test_resume_at_head_and_ahead_sends_nothing_old(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        for n in range(3):
            await pub_one(relay.url, "chat:head", n)
        async with protocol_client(relay.url) as sub:
            reply = await sub.subscribe("chat:head", position={"us-east": 3})
            assert reply["position"] == {"us-east": 3}
            await pub_one(relay.url, "chat:head", 3)
            await sub.wait_messages("chat:head", 1)
            assert [m["data"] for m in sub.messages["chat:head"]] == [3]


async def test_expired_position_is_refused_with_the_earliest_position(nats_url: str) -> None:
    namespaces = [{"name": "tiny", "prefix": "tiny:", "history_max_messages": 5}]
    async with running_relays(make_config(nats_url=nats_url, namespaces=namespaces)) as (relay,):
        for n in range(12):
            await pub_one(relay.url, "tiny:x", n)
        async with protocol_client(relay.url) as sub:
            reply = await sub.subscribe("tiny:x", position={"us-east": 2})
            assert reply["op"] == "error" and reply["code"] == "position_expired"
            assert reply["earliest"] == {"us-east": 7}
            # The earliest position is accepted and yields everything still stored.
            reply = await sub.subscribe("tiny:x", position=reply["earliest"])
            assert reply["op"] == "subscribed"
            await sub.wait_messages("tiny:x", 5)
            assert [m["data"] for m in sub.messages["tiny:x"]] == [7, 8, 9, 10, 11]


async def test_history_pages_backwards(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with protocol_client(relay.url) as client:
            for n in range(25):
                await client.publish("chat:hist", n)
            page = await client.request({"op": "history", "channel": "chat:hist", "limit": 10})
            assert [m["data"] for m in page["messages"]] == list(range(15, 25))
            assert page["more"] is True
            before = page["messages"][0]["position"]
            page = await client.request(
                {"op": "history", "channel": "chat:hist", "limit": 10, "before": before}
            )
            assert [m["data"] for m in page["messages"]] == list(range(5, 15))
            before = page["messages"][0]["position"]
            page = await client.request(
                {"op": "history", "channel": "chat:hist", "limit": 10, "before": before}
            )
            assert [m["data"] for m in page["messages"]] == list(range(5))
            assert page["more"] is False
            empty = await client.request({"op": "history", "channel": "chat:nothing"})
            assert empty["messages"] == [] and empty["more"] is False
