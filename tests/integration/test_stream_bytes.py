"""Stream byte limits (issue #12): a namespace whose stream reached its ``max_bytes``
refuses publishes as `unavailable`, saying it is out of space, while its history and
subscriptions keep working and the region's other namespaces still take publishes."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from relay.config.schema import MIN_STREAM_BYTES
from tests.support.relays import make_config, running_relays, timeout
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PAYLOAD = "x" * 60_000  # ~70 of these fill the smallest stream allowed (4 MiB)


async def test_a_full_namespace_refuses_publishes_and_reads_go_on(nats_url: str) -> None:
    namespaces = [
        # history_max_messages above what fits: the byte limit is what refuses.
        {
            "name": "flood",
            "prefix": "flood:",
            "max_bytes": MIN_STREAM_BYTES,
            "history_max_messages": 10_000,
        },
        {"name": "chat", "prefix": "chat:"},
    ]
    cfg = make_config(nats_url=nats_url, namespaces=namespaces)
    async with running_relays(cfg) as (relay,), protocol_client(relay.url) as pub:
        acked = 0
        refused: dict[str, object] | None = None
        with anyio.fail_after(timeout(60)):
            for n in range(2 * MIN_STREAM_BYTES // len(PAYLOAD)):
                reply = await pub.publish("flood:a", PAYLOAD, id=f"a{n}")
                if reply["op"] != "ack":
                    refused = reply
                    break
                acked += 1
        assert refused is not None, f"{acked} publishes of 60 kB all fit in 4 MiB"
        assert acked * len(PAYLOAD) > MIN_STREAM_BYTES // 2, acked
        assert refused["code"] == "unavailable" and refused["temporary"] is True, refused
        assert "out of space" in str(refused["message"]), refused
        assert "RLY_US-EAST_FLOOD" in str(refused["message"]), refused

        # The whole namespace is full, not one channel; a small message does not fit either.
        async with protocol_client(relay.url) as other:
            reply = await other.publish("flood:b", PAYLOAD, id="b0")
            assert reply["code"] == "unavailable", reply
            assert "out of space" in str(reply["message"]), reply
            # Another namespace of the region is unaffected.
            for n in range(20):
                reply = await other.publish("chat:room", {"n": n}, id=f"c{n}")
                assert reply["op"] == "ack", reply

        # Nothing acked was dropped to make room: history and a replay from the start have
        # every acked message, and the subscription stays live.
        async with protocol_client(relay.url, max_size=None) as reader:
            history = await reader.request({"op": "history", "channel": "flood:a", "limit": 5})
            assert history["op"] == "history", history
            assert [m["id"] for m in history["messages"]] == [
                f"a{n}" for n in range(acked - 5, acked)
            ]
            await reader.subscribe("flood:a", position={})
            await reader.wait_messages("flood:a", acked, 30)
            assert [m["id"] for m in reader.messages["flood:a"]] == [f"a{n}" for n in range(acked)]
            await reader.subscribe("chat:room", position={})
            await reader.wait_messages("chat:room", 20, 30)
            reply = await pub.publish("chat:room", {"n": 20}, id="c20")
            assert reply["op"] == "ack", reply
            await reader.wait_messages("chat:room", 21, 30)


async def test_the_embedded_server_takes_the_store_budget(tmp_path: Path) -> None:
    budget = 32 * 1024 * 1024
    cfg = make_config(
        nats_url="embedded",
        nats={
            "embedded_port": 0,
            "store_dir": str(tmp_path / "nats"),
            "store_budget_bytes": budget,
        },
        namespaces=[
            {"name": "all", "prefix": "", "max_bytes": 8 * 1024 * 1024},
            # Two streams of 8 MiB: 24 MiB reserved of 32, so the relay starts.
            {"name": "game", "prefix": "game:", "ordering": "total", "max_bytes": 8 * 1024 * 1024},
        ],
    )
    async with running_relays(cfg) as (relay,), protocol_client(relay.url) as client:
        assert (await client.publish("all:x", "fits"))["op"] == "ack"
        log = (tmp_path / "nats" / "nats-server.log").read_text()
        assert "Max Storage:     32.00 MB" in log, log
