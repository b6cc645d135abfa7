"""Revocation across two federating regions, the audit log, and the warning before exp
(issue #12). Regions run on their embedded nats-servers with generated credentials; the
operator's ``relaynet token revoke`` runs as the real CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay.adapters.child_process import spawn
from relay.adapters.embedded_nats import password_file, peer_user
from relay.adapters.tokens import issue_token
from relay.client import Message, connect
from relay.config.schema import AuthSection, RelayConfig
from relay.harness.network import FAST_FEDERATION
from relay.harness.toolkit import free_ports, relay_config
from relay.node import RelayNode
from relay.protocol.errors import CloseCode
from tests.support.nats import client_as as nats_connect
from tests.support.nats import violated
from tests.support.relays import config_file, running_relays, timeout
from tests.support.waiting import wait_until
from tests.support.wsclient import ProtocolClient, protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = b"revocation-test-secret-0123456789abcdef"
CHAT = {"chat:*": ["subscribe", "publish", "history"]}
EAST, WEST = "us-east", "eu-west"


def token(sub: str, jti: str, ttl_s: float = 600, caps: dict[str, list[str]] | None = None) -> str:
    return issue_token(SECRET, sub, CHAT if caps is None else caps, ttl_s, jti=jti)


def with_auth(cfg: RelayConfig, home: Path, **auth: Any) -> RelayConfig:
    secret = home / "secret"
    secret.write_bytes(SECRET)
    section = AuthSection(
        mode="token",
        secret_file=str(secret),
        leeway_s=0.0,
        audit_file=str(home / "audit.jsonl"),
        **auth,
    )
    return cfg.model_copy(update={"auth": section})


@asynccontextmanager
async def two_regions(tmp_path: Path) -> AsyncIterator[tuple[RelayNode, RelayNode]]:
    """us-east and eu-west in token mode, federating with per-peer credentials."""
    ports = dict(zip((EAST, WEST), free_ports(2), strict=True))
    homes = {region: tmp_path / region for region in (EAST, WEST)}

    def config(region: str, other: str) -> RelayConfig:
        homes[region].mkdir(exist_ok=True)
        peer = {
            "region": other,
            "edge_url": "ws://127.0.0.1:1/v1/ws",
            "nats_url": f"nats://127.0.0.1:{ports[other]}",
            "nats_user": peer_user(region),
            # Made by the other region's relay at its start: readers retry until it exists.
            "nats_password_file": str(password_file(homes[other] / "store", peer_user(region))),
        }
        cfg = relay_config(
            nats_url="embedded",
            region=region,
            relay_id=f"{region}-1",
            nats={"embedded_port": ports[region], "store_dir": str(homes[region] / "store")},
            peers=[peer],
            federation=dict(FAST_FEDERATION),
        )
        return with_auth(cfg, homes[region])

    async with running_relays(config(EAST, WEST), config(WEST, EAST)) as (east, west):
        yield east, west


async def revoke_from(cfg: RelayConfig, home: Path, *args: str) -> str:
    """``relaynet token revoke --config`` as the operator runs it; its stdout."""
    path = config_file(home / f"{cfg.region.name}.toml", cfg)
    argv = [sys.executable, "-m", "relay.cli", "token", "revoke", "--config", str(path), *args]
    # Spawned from the loop's thread (its death signal follows the spawning thread).
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=timeout(60)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    return str(out.decode())


async def following_each_other(*nodes: RelayNode) -> None:
    """Every relay reads every region's revocation stream (the peer's once it is up)."""

    def ready() -> bool:
        for node in nodes:
            follower = node.revocations
            if follower is None or {EAST, WEST} - set(follower.reading):
                return False
        return True

    await wait_until(ready, "every relay follows both regions' revocations", 30)


def audit_lines(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (home / "audit.jsonl").read_text().splitlines()]


async def refused(url: str, tok: str) -> ProtocolClient:
    async with protocol_client(f"{url}?token={tok}") as client:
        await client.wait_closed(seconds=timeout(15))
    return client


async def test_revoking_a_sub_closes_its_connections_in_every_region(tmp_path: Path) -> None:
    """Revoked in us-east by sub and issued-before: alice's connections in both regions
    close with 4005 within seconds, her old token is refused, a fresh one works, bob is
    untouched; and both regions' audit logs say so without a token, secret or body."""
    async with two_regions(tmp_path) as (east, west):
        await following_each_other(east, west)
        old_east, old_west, bob = token("alice", "a1"), token("alice", "a2"), token("bob", "b1")
        async with (
            protocol_client(f"{east.url}?token={old_east}") as alice_east,
            protocol_client(f"{west.url}?token={old_west}") as alice_west,
            protocol_client(f"{west.url}?token={bob}") as bob_west,
        ):
            # Audit material first: a refused token, a denial, a renewal.
            forged = token("mallory", "m1")[:-3] + "AAA"
            assert (await refused(east.url, forged)).closed_code == CloseCode.UNAUTHORIZED
            denied = await alice_east.publish("news:today", {"text": "top secret body"})
            assert denied["code"] == "forbidden"
            renewed = await alice_west.request({"op": "auth", "token": token("alice", "a3")})
            assert renewed["op"] == "authed"
            assert (await alice_west.subscribe("chat:room"))["op"] == "subscribed"

            out = await revoke_from(east.cfg, tmp_path, "--sub", "alice", "--issued-before", "now")
            revoked_at = time.time()
            assert "revoked tokens of sub='alice' issued before" in out
            assert "RLYR_US-EAST" in out

            for client in (alice_east, alice_west):
                await client.wait_closed(seconds=timeout(15))
                assert client.closed_code == CloseCode.TOKEN_REVOKED
                assert client.closed_reason == "token_revoked"
                assert client.errors[-1]["code"] == "unauthorized"
            assert (await bob_west.request({"op": "ping"}))["op"] == "pong"

        # The revoked tokens are refused on connect, in both regions.
        for node, tok in ((west, old_east), (east, old_west)):
            client = await refused(node.url, tok)
            assert client.closed_code == CloseCode.UNAUTHORIZED
            assert client.errors[0]["message"] == "token revoked"
        # A token issued after the revocation (iat is whole seconds) gets in.
        await wait_until(lambda: time.time() >= math.ceil(revoked_at), "the next second", 5)
        async with protocol_client(f"{west.url}?token={token('alice', 'a4')}") as fresh:
            assert fresh.connected is not None and fresh.connected["sub"] == "alice"
            assert (await fresh.subscribe("chat:room"))["op"] == "subscribed"

    east_audit, west_audit = audit_lines(tmp_path / EAST), audit_lines(tmp_path / WEST)
    for line in east_audit + west_audit:
        assert set(line) >= {"time", "event", "region", "relay", "connection", "sub", "channel"}
        assert line["time"].endswith("+00:00")
    events = {(line["region"], line["event"]) for line in east_audit + west_audit}
    assert {
        (EAST, "auth_failed"),
        (EAST, "denied"),
        (WEST, "renewed"),
        (EAST, "revocation_received"),
        (WEST, "revocation_received"),
        (EAST, "revoked"),
        (WEST, "revoked"),
    } <= events
    denial = next(line for line in east_audit if line["event"] == "denied")
    assert (denial["op"], denial["channel"], denial["sub"]) == ("publish", "news:today", "alice")
    closed = [line for line in west_audit if line["event"] == "revoked"]
    assert [(line["sub"], line["jti"]) for line in closed] == [("alice", "a3")]
    text = (tmp_path / EAST / "audit.jsonl").read_text() + (
        tmp_path / WEST / "audit.jsonl"
    ).read_text()
    for secret in (old_east, old_west, bob, forged, SECRET.decode(), "top secret body"):
        assert secret not in text
    assert "token revoked" in text


async def test_revoking_one_jti_leaves_the_subs_other_tokens_and_the_sdk_renews(
    tmp_path: Path,
) -> None:
    """Revoked in eu-west by jti: only that token's connection in us-east closes; another
    token of the same sub keeps working; the Python SDK whose token it was reconnects with
    a fresh one from its provider and keeps its subscription."""
    issued: list[str] = []

    async def provider() -> str:
        issued.append(token("carol", f"sdk-{len(issued) + 1}"))
        return issued[-1]

    async with two_regions(tmp_path) as (east, west):
        await following_each_other(east, west)
        async with (
            protocol_client(f"{east.url}?token={token('carol', 'c1')}") as revoked,
            protocol_client(f"{east.url}?token={token('carol', 'c2')}") as kept,
            connect(east.url, token_provider=provider, backoff_base_s=0.05) as sdk,
        ):
            sub = await sdk.subscribe("chat:sdk")
            received: list[Message] = []

            async def consume() -> None:
                async for message in sub:
                    received.append(message)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                out = await revoke_from(west.cfg, tmp_path, "--jti", "c1")
                assert "revoked token jti='c1'" in out
                await revoked.wait_closed(seconds=timeout(15))
                assert revoked.closed_code == CloseCode.TOKEN_REVOKED
                assert (await kept.publish("chat:sdk", {"n": 1}))["op"] == "ack"

                await revoke_from(west.cfg, tmp_path, "--jti", "sdk-1")
                await wait_until(lambda: sdk.connections >= 2, "the SDK reconnected", 20)
                assert len(issued) >= 2
                await kept.publish("chat:sdk", {"n": 2})
                await wait_until(
                    lambda: [m.data for m in received] == [{"n": 1}, {"n": 2}],
                    "both messages, once each, across the reconnect",
                    20,
                )
                assert (await kept.request({"op": "ping"}))["op"] == "pong"
                tg.cancel_scope.cancel()

        # A peer reads eu-west's revocations but cannot forge one there.
        peer_password = password_file(tmp_path / WEST / "store", peer_user(EAST)).read_text()
        nc = await nats_connect(west.nats_url or "", peer_user(EAST), peer_password.strip())
        try:
            await nc.publish("rlyr.v1.eu-west", b'{"id":"x","at":1,"region":"eu-west","sub":"a"}')
            assert await violated(nc, "rlyr.v1.eu-west")
        finally:
            await nc.close()


@asynccontextmanager
async def one_relay(nats_url: str, tmp_path: Path, **auth: Any) -> AsyncIterator[RelayNode]:
    cfg = with_auth(relay_config(nats_url=nats_url), tmp_path, **auth)
    async with running_relays(cfg) as (node,):
        yield node


async def test_token_expiring_warns_before_exp_and_a_renewal_keeps_the_connection(
    nats_url: str, tmp_path: Path
) -> None:
    async with (
        one_relay(nats_url, tmp_path, expiry_warning_s=2.0) as relay,
        protocol_client(f"{relay.url}?token={token('dave', 'd1', ttl_s=6)}") as client,
    ):
        assert client.connected is not None
        exp = client.connected["exp"]

        def warned(n: int) -> bool:
            return sum(f["op"] == "token_expiring" for f in client.frames) >= n

        await client.wait_for(lambda: warned(1), seconds=timeout(10))
        warning = next(f for f in client.frames if f["op"] == "token_expiring")
        assert warning == {"op": "token_expiring", "exp": exp}
        assert time.time() < exp  # before the close, with time to renew
        renewed = await client.request({"op": "auth", "token": token("dave", "d2", ttl_s=6)})
        assert renewed["op"] == "authed" and renewed["exp"] > exp
        # The renewed token is warned about in turn: the connection outlived the first exp.
        await client.wait_for(lambda: warned(2), seconds=timeout(10))
        assert client.closed_code is None and time.time() > exp
    lines = audit_lines(tmp_path)
    assert [line["event"] for line in lines if line["sub"] == "dave"][:2] == ["authed", "renewed"]


async def test_the_python_sdk_renews_on_the_warning(nats_url: str, tmp_path: Path) -> None:
    """A 12 s token: the SDK's own timer renews 3 s before exp; the relay warns 6 s before
    (half the lifetime), and the SDK renews then."""

    async def provider() -> str:
        return token("erin", f"e-{time.monotonic_ns()}", ttl_s=12)

    async with (
        one_relay(nats_url, tmp_path, expiry_warning_s=30.0) as relay,
        connect(relay.url, token_provider=provider) as client,
    ):
        first_exp = client.token_exp
        assert first_exp is not None
        await wait_until(
            lambda: client.token_exp != first_exp, "the token renewed on the warning", 15
        )
        assert time.time() < first_exp - 4  # before the SDK's own renewal (exp - 3 s)
        assert client.connections == 1
