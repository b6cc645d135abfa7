"""A subscriber that stops reading is cut off with slow_consumer; others are not held up;
it resumes from its last position with nothing lost."""

from __future__ import annotations

import json

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.checker import check_contiguous
from tests.support.relays import make_config, running_relays, timeout
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TOTAL = 1500
PAYLOAD = "p" * 8000


async def test_slow_consumer_is_disconnected_and_resumes_without_loss(nats_url: str) -> None:
    cfg = make_config(
        nats_url=nats_url,
        limits={"outbox_max_messages": 50},
        namespaces=[{"name": "chat", "prefix": "chat:", "history_max_messages": 10_000}],
    )
    async with running_relays(cfg) as (relay,):
        async with (
            protocol_client(relay.url) as fast,
            connect(relay.url, max_queue=1, max_size=None) as slow,
        ):
            await fast.subscribe("chat:flood")
            json.loads(await slow.recv())  # connected
            await slow.send(json.dumps({"op": "subscribe", "channel": "chat:flood"}))
            assert json.loads(await slow.recv())["op"] == "subscribed"

            async with protocol_client(relay.url) as pub:
                # Pipelined publishes: acks come back while the slow one stops reading.
                for n in range(TOTAL):
                    await pub.send_raw(
                        json.dumps(
                            {
                                "op": "publish",
                                "channel": "chat:flood",
                                "data": {"n": n, "pad": PAYLOAD},
                            }
                        )
                    )
                await pub.wait_for(lambda: sum(f["op"] == "ack" for f in pub.frames) == TOTAL, 60)

            await fast.wait_messages("chat:flood", TOTAL, 60)
            assert check_contiguous(fast.messages["chat:flood"], "us-east") == []

            # The slow client read nothing after subscribing; what reached it before the
            # cut is in its queue, then the close.
            got: list[dict[str, object]] = []
            with anyio.fail_after(timeout(30)):
                try:
                    while True:
                        frame = json.loads(await slow.recv())
                        if frame["op"] == "message":
                            got.append(frame)
                except ConnectionClosed:
                    pass
            assert slow.close_code == 4000
            assert slow.close_reason == "slow_consumer"
            assert len(got) < TOTAL

        position = got[-1]["position"] if got else {}
        async with protocol_client(relay.url, max_size=None) as again:
            reply = await again.subscribe("chat:flood", position=position)  # type: ignore[arg-type]
            assert reply["op"] == "subscribed", reply
            await again.wait_messages("chat:flood", TOTAL - len(got), 60)
            assert check_contiguous(got + again.messages["chat:flood"], "us-east") == []


async def test_a_subscriber_whose_socket_takes_nothing_is_cut_at_the_write_deadline(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Far below the byte bound, but no progress for ``write_timeout_s``: closed as a slow
    consumer all the same; it resumes from its position with nothing lost."""
    total = 2500  # ~20 MB: more than the loopback socket buffers take
    cfg = make_config(
        nats_url=nats_url,
        limits={
            "outbox_max_messages": 100_000,
            "outbox_max_bytes": 256 * 1024 * 1024,
            "write_timeout_s": 1.0,
        },
        namespaces=[{"name": "chat", "prefix": "chat:", "history_max_messages": 10_000}],
    )
    caplog.set_level("INFO", logger="relaynet.conn")
    async with running_relays(cfg) as (relay,):
        async with connect(relay.url, max_queue=1, max_size=None) as stuck:
            json.loads(await stuck.recv())  # connected
            await stuck.send(json.dumps({"op": "subscribe", "channel": "chat:stuck"}))
            assert json.loads(await stuck.recv())["op"] == "subscribed"
            async with protocol_client(relay.url) as pub:
                for n in range(total):
                    await pub.send_raw(
                        json.dumps(
                            {
                                "op": "publish",
                                "channel": "chat:stuck",
                                "data": {"n": n, "pad": PAYLOAD},
                            }
                        )
                    )
                await pub.wait_for(lambda: sum(f["op"] == "ack" for f in pub.frames) == total, 60)
            # The deadline (1 s) passes, then the close (2 s) that cannot reach it.
            await wait_until(lambda: "write_timeout" in caplog.text, "write deadline", timeout(30))
            got: list[dict[str, object]] = []
            with anyio.fail_after(timeout(30)):
                try:
                    while True:
                        frame = json.loads(await stuck.recv())
                        if frame["op"] == "message":
                            got.append(frame)
                except ConnectionClosed:
                    pass
            assert 0 < len(got) < total
        assert ": write_timeout (4000)" in caplog.text

        position = got[-1]["position"]
        async with protocol_client(relay.url, max_size=None) as again:
            reply = await again.subscribe("chat:stuck", position=position)  # type: ignore[arg-type]
            assert reply["op"] == "subscribed", reply
            await again.wait_messages("chat:stuck", total - len(got), 60)
            assert check_contiguous(got + again.messages["chat:stuck"], "us-east") == []
