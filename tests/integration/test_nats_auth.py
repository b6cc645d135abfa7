"""The embedded nats-server is closed: generated credentials, a "relay" user for the
region's relays and federation, a read-only "peer-<region>" user per peer region for its
link, which reaches only that region's own durable consumer, and no anonymous access
(issue #12, NATS as a closed control plane)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay.adapters.embedded_nats import (
    RELAY_USER,
    auth_dir,
    ensure_passwords,
    password_file,
    peer_user,
)
from relay.config.schema import RelayConfig
from relay.harness.network import FAST_FEDERATION
from relay.harness.toolkit import free_ports, relay_config
from tests.support.nats import client_as, violated
from tests.support.relays import running_relays
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

STREAM = "RLY_US-EAST_DEFAULT"


def embedded(
    region: str, port: int, store: Path, peers: list[dict[str, str]], **sections: Any
) -> RelayConfig:
    """A relay of ``region`` on the embedded default, its server on ``port``."""
    return relay_config(
        nats_url="embedded",
        region=region,
        relay_id=f"{region}-1",
        nats={"embedded_port": port, "store_dir": str(store)},
        peers=peers,
        **sections,
    )


async def test_strangers_are_refused_and_peers_only_read(tmp_path: Path) -> None:
    port, west_port, south_port = free_ports(3)
    store = tmp_path / "us-east"
    peers = [
        {
            "region": region,
            "edge_url": "ws://127.0.0.1:1/v1/ws",
            "nats_url": f"nats://127.0.0.1:{peer_port}",  # nobody there: the link retries
        }
        for region, peer_port in (("eu-west", west_port), ("ap-south", south_port))
    ]
    first = embedded("us-east", port, store, peers)
    url = f"nats://127.0.0.1:{port}"
    west_user, south_user = peer_user("eu-west"), peer_user("ap-south")
    async with running_relays(first) as (node1,):
        # Generated once, private to the relay's user; one user per peer region, no shared
        # one.
        for path in (
            password_file(store, RELAY_USER),
            password_file(store, west_user),
            password_file(store, south_user),
            auth_dir(store) / "nats-server.conf",
        ):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(auth_dir(store).stat().st_mode) == 0o700
        assert sorted(p.name for p in auth_dir(store).glob("*.password")) == [
            "peer-ap-south.password",
            "peer-eu-west.password",
            "relay.password",
        ]
        relay_password = password_file(store, RELAY_USER).read_text().strip()
        peer_password = password_file(store, west_user).read_text().strip()
        south_password = password_file(store, south_user).read_text().strip()
        assert len(relay_password) >= 32
        assert len({relay_password, peer_password, south_password}) == 3
        # The server's config holds bcrypt hashes, not the passwords, so the server has no
        # plaintext-password warning to log.
        server_conf = (auth_dir(store) / "nats-server.conf").read_text()
        for secret in (relay_password, peer_password, south_password):
            assert secret not in server_conf
        assert server_conf.count('"$2a$') == 3
        assert "Plaintext passwords" not in (store / "nats-server.log").read_text()

        # Anonymous, with a wrong password, another user's password, or the old shared
        # "peer" user: refused.
        for user, password in (
            (None, None),
            (RELAY_USER, "wrong"),
            (west_user, relay_password),
            (west_user, south_password),
            ("peer", peer_password),
        ):
            with pytest.raises(Exception, match=r"(?i)authorization"):
                await client_as(url, user, password)

        # A second relay of the region with the relay user's password file works.
        second = relay_config(
            nats_url=url,
            region="us-east",
            relay_id="us-east-2",
            nats={"user": RELAY_USER, "password_file": str(password_file(store, RELAY_USER))},
        )
        async with running_relays(second) as (node2,):
            async with protocol_client(node1.url) as sub:
                await sub.subscribe("news")
                async with protocol_client(node2.url) as pub:
                    await pub.publish("news", {"n": 1})
                await sub.wait_messages("news", 1)

        # A peer region's user reads what its link reads, and nothing more.
        peer = await client_as(url, west_user, peer_password)
        try:
            js = peer.jetstream(timeout=2)
            info = await js.stream_info(STREAM)
            assert info.state.messages >= 1
            got = await js.subscribe(
                "rly.v1.us-east.default.>",
                stream=STREAM,
                durable="fed-eu-west",
                manual_ack=True,
            )
            msg = await got.next_msg(timeout=5)
            await msg.ack()
            await got.unsubscribe()

            async def acked() -> bool:
                consumer = await js.consumer_info(STREAM, "fed-eu-west")
                return bool(consumer.num_ack_pending == 0 and consumer.ack_floor.stream_seq >= 1)

            await wait_until(acked, "the peer's ack taken")
            # No forged entries, no beats, no stream deletion, no other consumer.
            await peer.publish("rly.v1.us-east.default.news", b"{}")
            assert await violated(peer, "rly.v1.us-east.default.news")
            await peer.publish("rlyh.v1.us-east", b"{}")
            assert await violated(peer, "rlyh.v1.us-east")
            await peer.publish("rlyl.v1.us-east.default.news", b"{}")
            assert await violated(peer, "rlyl.v1.us-east.default.news")
            with pytest.raises(Exception):  # noqa: B017 (refused: no answer at all)
                await js.delete_stream(STREAM)
            assert await violated(peer, f"$JS.API.STREAM.DELETE.{STREAM}")
            assert (await js.stream_info(STREAM)).state.messages >= 1
            with pytest.raises(Exception):  # noqa: B017
                await js.add_consumer(STREAM, durable_name="spy")
            # Live traffic and the relays' inboxes are not the peer's to read.
            await peer.subscribe("rlyl.>")
            assert await violated(peer, "rlyl.>")
            await peer.subscribe("_INBOX.>")
            assert await violated(peer, "_INBOX.>")
            # Another peer region's durable consumer is not its to read, make, ack or
            # delete: it could otherwise take that region's messages or its position.
            other = "fed-ap-south"
            with pytest.raises(Exception):  # noqa: B017 (refused: no answer at all)
                await js.consumer_info(STREAM, other)
            assert await violated(peer, f"$JS.API.CONSUMER.INFO.{STREAM}.{other}")
            with pytest.raises(Exception):  # noqa: B017
                await js.add_consumer(STREAM, durable_name=other)
            assert await violated(peer, f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{other}")
            await peer.publish(f"$JS.ACK.{STREAM}.{other}.1.1.1.1.1.0", b"")
            assert await violated(peer, f"$JS.ACK.{STREAM}.{other}")
            with pytest.raises(Exception):  # noqa: B017
                await js.delete_consumer(STREAM, other)
            assert await violated(peer, f"$JS.API.CONSUMER.DELETE.{STREAM}.{other}")
        finally:
            await peer.close()
        # ... while ap-south's user may: each region reaches its own.
        south = await client_as(url, south_user, south_password)
        try:
            js = south.jetstream(timeout=2)
            got = await js.subscribe(
                "rly.v1.us-east.default.>", stream=STREAM, durable="fed-ap-south", manual_ack=True
            )
            await (await got.next_msg(timeout=5)).ack()
            await got.unsubscribe()
            await js.delete_consumer(STREAM, "fed-ap-south")
        finally:
            await south.close()
    # A restart keeps the passwords (a second relay and the peers keep their files).
    assert ensure_passwords(store, ["eu-west", "ap-south"]) == {
        RELAY_USER: relay_password,
        west_user: peer_password,
        south_user: south_password,
    }


async def test_regions_federate_with_peer_credentials(tmp_path: Path) -> None:
    east_port, west_port = free_ports(2)
    east_store, west_store = tmp_path / "us-east", tmp_path / "eu-west"

    def peer(region: str, port: int, store: Path, reader: str) -> dict[str, str]:
        return {
            "region": region,
            "edge_url": "ws://127.0.0.1:1/v1/ws",
            "nats_url": f"nats://127.0.0.1:{port}",
            "nats_user": peer_user(reader),
            # Made by that region's relay at its start: the link retries until it exists.
            "nats_password_file": str(password_file(store, peer_user(reader))),
        }

    fast = dict(FAST_FEDERATION)
    east_peers = [peer("eu-west", west_port, west_store, "us-east")]
    west_peers = [peer("us-east", east_port, east_store, "eu-west")]
    east = embedded("us-east", east_port, east_store, east_peers, federation=fast)
    west = embedded("eu-west", west_port, west_store, west_peers, federation=fast)
    async with running_relays(east, west) as (east_node, west_node):
        async with (
            protocol_client(west_node.url) as west_sub,
            protocol_client(east_node.url) as east_sub,
        ):
            await west_sub.subscribe("chat:x")
            await east_sub.subscribe("chat:x")
            async with protocol_client(east_node.url) as pub:
                await pub.publish("chat:x", {"from": "east"})
            async with protocol_client(west_node.url) as pub:
                await pub.publish("chat:x", {"from": "west"})
            with anyio.fail_after(30):
                await west_sub.wait_messages("chat:x", 2, 30)
                await east_sub.wait_messages("chat:x", 2, 30)
