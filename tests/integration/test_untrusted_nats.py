"""Relays treat what they read from NATS as untrusted input (issue #12).

With the relay's own credentials (an insider, a tool, a bug) anyone can store or
republish any bytes on a channel's subjects: a malformed entry is skipped and counted,
a live frame claiming a far sequence makes nobody miss acked messages, and the channel
keeps serving. Without those credentials (a peer region's user, or none at all) each
attack of the issue is refused by the embedded nats-server, and the relay keeps serving.
What ``test_nats_auth.py`` checks of the peer user's permissions (a ``{}`` publish on the
store, live and beat subjects, stream deletion, other consumers, ``rlyl.>`` and
``_INBOX.>``) is not repeated here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from nats.aio.client import Client

from federation import logformat
from federation.logformat import Beat, StoredMessage
from relay.adapters.embedded_nats import RELAY_USER, password_file, peer_user
from relay.harness.toolkit import free_ports, relay_config
from relay.node import RelayNode
from tests.support.http import http_get_ok
from tests.support.nats import client_as, violated
from tests.support.relays import running_relays
from tests.support.wsclient import ProtocolClient, protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

REGION, PEER = "us-east", "eu-west"
STREAM = logformat.stream_name(REGION, "default")


def store_subject(channel: str) -> str:
    return logformat.store_subject(REGION, "default", channel)


def live_subject(channel: str) -> str:
    return logformat.live_subject(REGION, "default", channel)


@asynccontextmanager
async def secured_relay(store: Path) -> AsyncIterator[tuple[RelayNode, str]]:
    """A relay on the embedded nats-server (credentials on), with one peer region
    configured (its NATS is not there: the link just retries); yields (relay, NATS URL)."""
    port, peer_port = free_ports(2)
    cfg = relay_config(
        nats_url="embedded",
        region=REGION,
        relay_id=f"{REGION}-1",
        nats={"embedded_port": port, "store_dir": str(store)},
        peers=[
            {
                "region": PEER,
                "edge_url": "ws://127.0.0.1:1/v1/ws",
                "nats_url": f"nats://127.0.0.1:{peer_port}",
            }
        ],
    )
    async with running_relays(cfg) as (node,):
        yield node, f"nats://127.0.0.1:{port}"


async def as_relay(url: str, store: Path) -> Client:
    """An insider: the relay user's credentials, read from the store like a second relay."""
    return await client_as(url, RELAY_USER, password_file(store, RELAY_USER).read_text().strip())


def stored(id: str, origin: str, ts: dict[str, int], pos: dict[str, int] | None = None) -> bytes:
    return logformat.encode_stored(
        StoredMessage(id, msgspec.Raw(b'"forged"'), origin, ts, ts if pos is None else pos)
    )


async def bad_entries(node: RelayNode, source: str) -> float:
    metrics = await http_get_ok(node, "/metrics")
    found = re.search(
        rf'^relaynet_nats_bad_entries_total\{{[^}}]*source="{source}"[^}}]*\}} (\S+)$',
        metrics,
        re.MULTILINE,
    )
    assert found is not None, metrics
    return float(found.group(1))


def ids(client: ProtocolClient, channel: str) -> list[str]:
    return [m["id"] for m in client.messages[channel]]


async def history_ids(client: ProtocolClient, channel: str) -> list[str]:
    reply = await client.request({"op": "history", "channel": channel, "limit": 50}, 20)
    assert reply["op"] == "history", reply
    return [m["id"] for m in reply["messages"]]


async def publish_ok(client: ProtocolClient, channel: str, id: str) -> dict[str, Any]:
    ack = await client.publish(channel, {"n": id}, id=id)
    assert ack["op"] == "ack", ack
    return ack


async def test_malformed_stored_entries_are_skipped_and_the_channel_keeps_working(
    tmp_path: Path,
) -> None:
    store = tmp_path / "nats"
    channel, fresh = "room:poisoned", "room:bad-head"
    async with secured_relay(store) as (node, url):
        insider = await as_relay(url, store)
        js = insider.jetstream(timeout=10)
        try:
            async with protocol_client(node.url) as sub, protocol_client(node.url) as pub:
                assert (await sub.subscribe(channel))["op"] == "subscribed"
                await publish_ok(pub, channel, "m1")
                second = await publish_ok(pub, channel, "m2")
                await sub.wait_messages(channel, 2, 20)
                # Stored with the relay's credentials: an undecodable body, an origin that
                # is no region of this network, and clocks that are not clocks.
                for body in (
                    b"\xff\xfe not an entry",
                    stored("mars-1", "mars", {"mars": 424242}),
                    stored("neg-1", REGION, {REGION: -3}),
                    stored("own-0", REGION, {PEER: 1}),
                    stored("behind", REGION, {REGION: 9}, {REGION: 2}),
                ):
                    await js.publish(store_subject(channel), body, stream=STREAM)
                # The head is bad now: the writer builds on the last good entry.
                third = await publish_ok(pub, channel, "m3")
                assert third["position"] == {REGION: 3}, third
                await js.publish(store_subject(channel), b"{}", stream=STREAM)
                await publish_ok(pub, channel, "m4")
                await sub.wait_for(lambda: "m4" in ids(sub, channel), 20)
                assert ids(sub, channel) == ["m1", "m2", "m3", "m4"]
                assert sub.errors == [] and pub.errors == []
                assert await history_ids(pub, channel) == ["m1", "m2", "m3", "m4"]

                # A resume across the bad entries gets exactly what it lacks.
                async with protocol_client(node.url) as again:
                    reply = await again.subscribe(channel, second["position"])
                    assert reply["op"] == "subscribed", reply
                    await again.wait_messages(channel, 2, 20)
                    await publish_ok(pub, channel, "m5")
                    await again.wait_for(lambda: "m5" in ids(again, channel), 20)
                    assert ids(again, channel) == ["m3", "m4", "m5"]
                await sub.wait_for(lambda: "m5" in ids(sub, channel), 20)
                assert ids(sub, channel) == ["m1", "m2", "m3", "m4", "m5"]

                # A channel whose last entry is bad: opening its feed, history and the
                # next publish all build on the last good entry.
                await publish_ok(pub, fresh, "f1")
                await js.publish(store_subject(fresh), b"[1, 2", stream=STREAM)
                async with protocol_client(node.url) as late:
                    reply = await late.subscribe(fresh)
                    assert reply["op"] == "subscribed", reply
                    assert reply["position"] == {REGION: 1}, reply
                    assert await history_ids(late, fresh) == ["f1"]
                    ack = await publish_ok(pub, fresh, "f2")
                    assert ack["position"] == {REGION: 2}, ack
                    await late.wait_messages(fresh, 1, 20)
                    assert ids(late, fresh) == ["f2"]
                assert await bad_entries(node, "live") >= 1
                assert await bad_entries(node, "log") >= 1
        finally:
            await insider.close()


async def test_a_live_frame_claiming_a_far_sequence_hides_no_acked_message(
    tmp_path: Path,
) -> None:
    store = tmp_path / "nats"
    channel = "room:blackhole"
    async with secured_relay(store) as (node, url):
        insider = await as_relay(url, store)
        js = insider.jetstream(timeout=10)
        try:
            async with protocol_client(node.url) as sub, protocol_client(node.url) as pub:
                assert (await sub.subscribe(channel))["op"] == "subscribed"
                await publish_ok(pub, channel, "b1")
                await sub.wait_messages(channel, 1, 20)
                head = await js.get_last_msg(STREAM, store_subject(channel))
                assert head.data is not None
                far = {"Nats-Sequence": "1000000000", "Nats-Last-Sequence": str(head.seq)}
                # The stored entry replayed with a far sequence; then a frame that looks
                # exactly like the next entry would; then frames with bad headers.
                await insider.publish(live_subject(channel), head.data, headers=far)
                await publish_ok(pub, channel, "b2")
                await sub.wait_for(lambda: "b2" in ids(sub, channel), 20)
                mimic = stored("forged-next", REGION, {REGION: 3})
                farther = {**far, "Nats-Sequence": "2000000000"}
                await insider.publish(live_subject(channel), mimic, headers=farther)
                gap = {"Nats-Sequence": "3000000000", "Nats-Last-Sequence": "2999999999"}
                await insider.publish(live_subject(channel), mimic, headers=gap)
                await insider.publish(live_subject(channel), head.data, headers={})
                await insider.publish(
                    live_subject(channel),
                    head.data,
                    headers={"Nats-Sequence": "9" * 30, "Nats-Last-Sequence": "1"},
                )
                acked = ["b3", "b4", "b5", "b6"]
                for id in acked:
                    await publish_ok(pub, channel, id)
                await sub.wait_for(lambda: "b6" in ids(sub, channel), 20)
                got = [i for i in ids(sub, channel) if i != "forged-next"]
                # Every acked message, once, in order. (The frame that mimicked the next
                # entry exactly may reach subscribers: only NATS permissions stop that.)
                assert got == ["b1", "b2", *acked], ids(sub, channel)
                assert sub.errors == []
                assert await history_ids(pub, channel) == ["b1", "b2", *acked]
                assert await bad_entries(node, "live") >= 4
        finally:
            await insider.close()


async def test_every_nats_attack_of_the_issue_is_refused_without_the_relay_user(
    tmp_path: Path,
) -> None:
    store = tmp_path / "nats"
    channel = "room:target"
    async with secured_relay(store) as (node, url):
        # No credentials: a raw CONNECT gets no PONG, nats-py is refused.
        stream = await anyio.connect_tcp("127.0.0.1", int(url.rsplit(":", 1)[1]))
        async with stream:
            await stream.send(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
            answer = b""
            with anyio.move_on_after(10):
                while b"Authorization Violation" not in answer:
                    answer += await stream.receive()
            assert b"Authorization Violation" in answer and b"PONG" not in answer, answer
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await client_as(url)

        user = peer_user(PEER)
        peer = await client_as(url, user, password_file(store, user).read_text().strip())
        js = peer.jetstream(timeout=0.5)
        try:
            async with protocol_client(node.url) as sub, protocol_client(node.url) as pub:
                assert (await sub.subscribe(channel))["op"] == "subscribed"
                await publish_ok(pub, channel, "t1")
                await sub.wait_messages(channel, 1, 20)

                # Forge (an entry from another region, with any clock) and poison.
                for body in (stored("forged", PEER, {PEER: 424242}), b"\xff poison"):
                    with pytest.raises(Exception):  # noqa: B017 (refused: no ack comes)
                        await js.publish(store_subject(channel), body, stream=STREAM)
                    await violated(peer, store_subject(channel))
                # Blackhole: a core publish with a far sequence on the live subject.
                await peer.publish(
                    live_subject(channel),
                    stored("hole", REGION, {REGION: 2}),
                    headers={"Nats-Sequence": "1000000000", "Nats-Last-Sequence": "0"},
                )
                await violated(peer, live_subject(channel))
                # Delete: purge the stream, delete one entry, or reconfigure it.
                with pytest.raises(Exception):  # noqa: B017
                    await js.purge_stream(STREAM)
                await violated(peer, f"$JS.API.STREAM.PURGE.{STREAM}")
                with pytest.raises(Exception):  # noqa: B017
                    await js.delete_msg(STREAM, 1)
                await violated(peer, f"$JS.API.STREAM.MSG.DELETE.{STREAM}")
                info = await js.stream_info(STREAM)
                with pytest.raises(Exception):  # noqa: B017
                    await js.update_stream(info.config)
                await violated(peer, f"$JS.API.STREAM.UPDATE.{STREAM}")
                # Beat injection: a relay of this region at the attacker's URL.
                evil = Beat(region=REGION, relay="us-east-9", url="ws://evil.example/v1/ws")
                await peer.publish(logformat.heartbeat_subject(REGION), logformat.encode_beat(evil))
                await violated(peer, logformat.heartbeat_subject(REGION))
                # Reading all traffic: the store subjects, everything, or by direct get.
                for subject in ("rly.>", store_subject(channel), ">"):
                    await peer.subscribe(subject)
                    await violated(peer, subject)
                with pytest.raises(Exception):  # noqa: B017
                    await peer.request(f"$JS.API.DIRECT.GET.{STREAM}", b'{"seq":1}', timeout=0.5)
                await violated(peer, f"$JS.API.DIRECT.GET.{STREAM}")

                # The relay kept serving, and nothing of the above reached anyone.
                await publish_ok(pub, channel, "t2")
                await sub.wait_for(lambda: "t2" in ids(sub, channel), 20)
                assert ids(sub, channel) == ["t1", "t2"]
                assert await history_ids(pub, channel) == ["t1", "t2"]
                assert (await js.stream_info(STREAM)).state.messages == 2
                assert "evil.example" not in await http_get_ok(node, "/v1/edges")
                assert await bad_entries(node, "live") == 0
                assert await bad_entries(node, "log") == 0
        finally:
            await peer.close()
