"""Many channels at once on two relays of one NATS, with publishers that do not wait for
acks: the writers' groups of different channels share JetStream atomic batches (and the
other relay's writes refuse some of them), and still every subscriber sees one order per
channel, every publisher's messages in its order, nothing lost or repeated, and every ack
names the position its message was delivered at."""

from __future__ import annotations

import urllib.request

import anyio
import pytest

from tests.support.checker import check_contiguous, check_publisher_order, ids
from tests.support.relays import make_config, running_relays
from tests.support.wsclient import ProtocolClient, protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHANNELS = [f"chat:room{i}" for i in range(8)]
PER_PUBLISHER = 400  # spread over the channels, sent without waiting


async def test_channels_sharing_batches_keep_every_guarantee(nats_url: str) -> None:
    cfgs = [make_config(nats_url=nats_url, relay_id=f"r{i}") for i in (1, 2)]
    async with running_relays(*cfgs) as (a, b):
        async with (
            protocol_client(a.url) as sub_a,
            protocol_client(b.url) as sub_b,
            protocol_client(a.url) as pub_a1,
            protocol_client(a.url) as pub_a2,
            protocol_client(b.url) as pub_b1,
            protocol_client(b.url) as pub_b2,
        ):
            for sub in (sub_a, sub_b):
                for channel in CHANNELS:
                    assert (await sub.subscribe(channel))["op"] == "subscribed"
            refs: list[tuple[ProtocolClient, str]] = []

            async def publish(client: ProtocolClient, name: str, own: list[str]) -> None:
                counts = dict.fromkeys(CHANNELS, 0)
                for n in range(PER_PUBLISHER):
                    # Mostly its relay's channels, sometimes any: both relays write some.
                    channel = CHANNELS[n % len(CHANNELS)] if n % 10 == 0 else own[n % len(own)]
                    frame = {"op": "publish", "channel": channel,
                             "data": {"pub": name, "n": counts[channel]}}  # fmt: skip
                    counts[channel] += 1
                    refs.append((client, await client.send(frame)))
                    if n % 20 == 19:  # in bursts: groups of several channels meet
                        await anyio.sleep(0.005)

            async with anyio.create_task_group() as tg:
                for client, name in ((pub_a1, "a1"), (pub_a2, "a2")):
                    tg.start_soon(publish, client, name, CHANNELS[0::2])
                for client, name in ((pub_b1, "b1"), (pub_b2, "b2")):
                    tg.start_soon(publish, client, name, CHANNELS[1::2])
            for client, ref in refs:
                await client.wait_for(lambda c=client, r=ref: c.reply(r) is not None, 30)
            acks = [client.reply(ref) for client, ref in refs]
            assert all(ack is not None and ack["op"] == "ack" for ack in acks), [
                ack for ack in acks if ack is None or ack["op"] != "ack"
            ][:3]

            total = {ch: sum(1 for ack in acks if ack and ack["channel"] == ch) for ch in CHANNELS}
            for sub in (sub_a, sub_b):
                for channel in CHANNELS:
                    await sub.wait_messages(channel, total[channel], 30)
            for channel in CHANNELS:
                reference = ids(sub_a.messages[channel])
                assert len(reference) == total[channel]
                for sub in (sub_a, sub_b):
                    received = sub.messages[channel]
                    assert check_contiguous(received, "us-east") == []
                    assert check_publisher_order(received) == []
                    assert ids(received) == reference
            delivered = {
                (ch, m["id"]): m["position"] for ch in CHANNELS for m in sub_a.messages[ch]
            }
            for ack in acks:
                assert ack is not None
                assert delivered[(ack["channel"], ack["id"])] == ack["position"]
            # What the writers did shows in /metrics: batches were shared.
            shared = 0.0
            for node in (a, b):
                text = await anyio.to_thread.run_sync(metrics, node.url)
                shared += counter(text, "relaynet_writer_shared_batches_total")
                assert counter(text, "relaynet_writer_batches_total") >= 1
                counter(text, "relaynet_writer_shared_refused_total")
            assert shared > 0, "no batch was shared"


def metrics(ws_url: str) -> str:
    url = ws_url.replace("ws://", "http://").replace("/v1/ws", "/metrics")
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")
