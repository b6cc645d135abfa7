"""Two relays on one NATS, concurrent publishers on both: one order everywhere, no gap, no dup."""

from __future__ import annotations

import anyio
import pytest

from tests.support.checker import check_contiguous, check_publisher_order, ids
from tests.support.relays import make_config, running_relays
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHANNEL = "chat:race"
PER_PUBLISHER = 150


async def test_concurrent_publishers_on_two_relays_see_one_order(nats_url: str) -> None:
    cfgs = [make_config(nats_url=nats_url, relay_id=f"r{i}") for i in (1, 2)]
    async with running_relays(*cfgs) as (a, b):
        async with (
            protocol_client(a.url) as sub_a1,
            protocol_client(a.url) as sub_a2,
            protocol_client(b.url) as sub_b1,
            protocol_client(b.url) as pub_a,
            protocol_client(a.url) as pub_b,
        ):
            subscribers = [sub_a1, sub_a2, sub_b1]
            for sub in subscribers:
                reply = await sub.subscribe(CHANNEL)
                assert reply["op"] == "subscribed"

            acked: list[dict[str, object]] = []

            async def publish(client: object, name: str) -> None:
                for n in range(PER_PUBLISHER):
                    ack = await client.publish(CHANNEL, {"pub": name, "n": n})  # type: ignore[attr-defined]
                    assert ack["op"] == "ack", ack
                    acked.append(ack)

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish, pub_a, "a")
                tg.start_soon(publish, pub_b, "b")

            total = 2 * PER_PUBLISHER
            for sub in subscribers:
                await sub.wait_messages(CHANNEL, total)

            reference = ids(sub_a1.messages[CHANNEL])
            assert len(reference) == total
            for sub in subscribers:
                received = sub.messages[CHANNEL]
                assert check_contiguous(received, "us-east") == []
                assert check_publisher_order(received) == []
                assert ids(received) == reference
            # Every ack names the position at which its message was delivered.
            by_id = {m["id"]: m["position"] for m in sub_a1.messages[CHANNEL]}
            for ack in acked:
                assert by_id[ack["id"]] == ack["position"]
