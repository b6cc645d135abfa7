"""Publish is idempotent by id: same ack position, delivered once, on any relay."""

from __future__ import annotations

import pytest

from tests.support.checker import check_contiguous
from tests.support.relays import make_config, running_relays
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_republish_same_id_on_same_and_other_relay_and_after_reconnect(nats_url: str) -> None:
    cfgs = [make_config(nats_url=nats_url, relay_id=f"r{i}") for i in (1, 2)]
    async with running_relays(*cfgs) as (a, b), protocol_client(b.url) as sub:
        await sub.subscribe("chat:idem")
        async with protocol_client(a.url) as pub:
            first = await pub.publish("chat:idem", {"v": 1}, id="order-42")
            again = await pub.publish("chat:idem", {"v": 1}, id="order-42")
            other = await pub.publish("chat:idem", {"v": 2}, id="order-43")
        async with protocol_client(b.url) as pub2:  # a new connection, another relay
            elsewhere = await pub2.publish("chat:idem", {"v": 1}, id="order-42")
            last = await pub2.publish("chat:idem", {"v": 3}, id="order-44")
        assert first["op"] == again["op"] == elsewhere["op"] == "ack"
        assert first["position"] == again["position"] == elsewhere["position"] == {"us-east": 1}
        assert other["position"] == {"us-east": 2}
        assert last["position"] == {"us-east": 3}
        await sub.wait_messages("chat:idem", 3)
        received = sub.messages["chat:idem"]
        assert [m["id"] for m in received] == ["order-42", "order-43", "order-44"]
        assert check_contiguous(received, "us-east") == []
        # Nothing more trickles in: a sentinel after the duplicates is the 4th message.
        async with protocol_client(a.url) as pub3:
            await pub3.publish("chat:idem", "sentinel", id="sentinel")
        await sub.wait_messages("chat:idem", 4)
        assert [m["id"] for m in sub.messages["chat:idem"]][-1] == "sentinel"
        assert len(sub.messages["chat:idem"]) == 4


async def test_ids_are_scoped_per_channel(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with protocol_client(relay.url) as pub:
            one = await pub.publish("chat:one", 1, id="same")
            two = await pub.publish("chat:two", 2, id="same")
            assert one["position"] == two["position"] == {"us-east": 1}
            assert one["channel"] == "chat:one" and two["channel"] == "chat:two"


async def test_server_assigns_ids_when_missing(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with protocol_client(relay.url) as pub:
            a = await pub.publish("chat:x", 1)
            b = await pub.publish("chat:x", 1)
            assert a["id"] != b["id"]
            assert b["position"] == {"us-east": 2}
