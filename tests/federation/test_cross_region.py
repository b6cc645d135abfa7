"""Positions are vector timestamps, valid in every region; publish ids are too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.checker import check_causal, ids
from tests.support.regions import REGIONS, region_configs, region_nats, running_regions
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_resume_in_another_region_from_a_vector_position(tmp_path: Path) -> None:
    with region_nats(tmp_path) as urls:
        async with running_regions(region_configs(urls)) as regions:
            east, west, _ = (regions[r][0] for r in REGIONS)
            total_per_region = 150
            acked: list[str] = []

            async def publisher(url: str, name: str) -> None:
                async with protocol_client(url) as pub:
                    for n in range(total_per_region):
                        ack = await pub.publish("chat:move", {"pub": name, "n": n})
                        acked.append(ack["id"])

            received: list[dict[str, Any]] = []
            async with anyio.create_task_group() as tg:
                async with protocol_client(east.url) as first:
                    await first.subscribe("chat:move")
                    tg.start_soon(publisher, east.url, "east")
                    tg.start_soon(publisher, west.url, "west")
                    await first.wait_messages("chat:move", 60)
                    received.extend(first.messages["chat:move"])
                position = received[-1]["position"]
                assert set(position) <= {"us-east", "eu-west"}
                async with protocol_client(west.url) as second:
                    reply = await second.subscribe("chat:move", position=position)
                    assert reply["op"] == "subscribed"
                    await second.wait_messages(
                        "chat:move", 2 * total_per_region - len(received), 60
                    )
                    received.extend(second.messages["chat:move"])
            assert check_causal(received) == []
            assert sorted(ids(received)) == sorted(acked)


async def test_republishing_an_id_in_another_region_delivers_it_once(tmp_path: Path) -> None:
    with region_nats(tmp_path) as urls:
        async with running_regions(region_configs(urls)) as regions:
            nodes = [regions[r][0] for r in REGIONS]
            async with (
                protocol_client(nodes[0].url) as sub_east,
                protocol_client(nodes[1].url) as sub_west,
                protocol_client(nodes[2].url) as sub_south,
                protocol_client(nodes[0].url) as pub_east,
                protocol_client(nodes[1].url) as pub_west,
            ):
                subs = [sub_east, sub_west, sub_south]
                for sub in subs:
                    await sub.subscribe("chat:once")
                # 1. After replication: the other region recognises the id.
                first = await pub_east.publish("chat:once", "hello", id="after-1")
                await sub_west.wait_messages("chat:once", 1)
                again = await pub_west.publish("chat:once", "hello", id="after-1")
                assert again["op"] == "ack"
                assert again["position"]["us-east"] == first["position"]["us-east"]
                # 2. A race: the lost-ack-then-failover case, both regions accept it.
                for n in range(10):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(pub_east.publish, "chat:once", f"race-{n}", f"race-{n}")
                        tg.start_soon(pub_west.publish, "chat:once", f"race-{n}", f"race-{n}")
                sentinel = await pub_east.publish("chat:once", "end", id="sentinel")
                assert sentinel["op"] == "ack"
                for sub in subs:
                    await sub.wait_for(
                        lambda sub=sub: "sentinel" in ids(sub.messages["chat:once"]), 30
                    )
                    # Let any straggler copy arrive before counting.
                    late = await pub_west.publish("chat:once", "late", id="late-probe")
                    assert late["op"] == "ack"
                for sub in subs:
                    await sub.wait_for(
                        lambda sub=sub: "late-probe" in ids(sub.messages["chat:once"]), 30
                    )
                    got = ids(sub.messages["chat:once"])
                    expected = {"after-1", "sentinel", "late-probe"} | {
                        f"race-{n}" for n in range(10)
                    }
                    assert sorted(got) == sorted(expected), got
