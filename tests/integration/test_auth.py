"""Token mode against a real relay: JWTs with capabilities, renewal, expiry (issue #12)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay.adapters.tokens import issue_token
from relay.client import Message, RequestRefused, connect
from relay.config.schema import AuthSection, RelayConfig
from relay.node import RelayNode
from relay.protocol.errors import CloseCode
from tests.support.relays import make_config, running_relays, timeout
from tests.support.waiting import wait_until
from tests.support.wsclient import ProtocolClient, protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = b"integration-test-secret-0123456789abcdef"
CHAT = {"chat:*": ["subscribe", "publish", "history"]}


def token(sub: str = "alice", caps: dict[str, list[str]] | None = None, ttl_s: float = 600) -> str:
    return issue_token(SECRET, sub, CHAT if caps is None else caps, ttl_s)


def token_config(nats_url: str, tmp_path: Path, **auth: Any) -> RelayConfig:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    section = AuthSection(mode="token", secret_file=str(secret), leeway_s=0.0, **auth)
    return make_config(nats_url=nats_url).model_copy(update={"auth": section})


@asynccontextmanager
async def token_relay(nats_url: str, tmp_path: Path) -> AsyncIterator[RelayNode]:
    async with running_relays(token_config(nats_url, tmp_path)) as (relay,):
        yield relay


async def authenticate(client: ProtocolClient, tok: str) -> dict[str, Any]:
    return await client.request({"op": "auth", "token": tok})


async def test_token_in_the_url(nats_url: str, tmp_path: Path) -> None:
    async with (
        token_relay(nats_url, tmp_path) as relay,
        protocol_client(f"{relay.url}?token={token()}") as client,
    ):
        assert client.connected is not None
        assert client.connected["sub"] == "alice"
        assert client.connected["exp"] > time.time()
        assert (await client.subscribe("chat:lobby"))["op"] == "subscribed"
        assert (await client.publish("chat:lobby", "hi"))["op"] == "ack"
        await client.wait_messages("chat:lobby", 1)


async def test_auth_frame_first_and_nothing_before_it(nats_url: str, tmp_path: Path) -> None:
    async with token_relay(nats_url, tmp_path) as relay, protocol_client(relay.url) as client:
        assert client.connected is not None
        assert "sub" not in client.connected
        refused = await client.subscribe("chat:lobby")
        assert refused["code"] == "unauthorized"
        assert (await client.request({"op": "ping"}))["op"] == "pong"
        bad = await authenticate(client, token()[:-4] + "AAAA")
        assert (bad["code"], bad["message"]) == ("unauthorized", "bad signature")
        authed = await authenticate(client, token())
        assert authed["op"] == "authed"
        assert authed["sub"] == "alice"
        assert (await client.subscribe("chat:lobby"))["op"] == "subscribed"


async def test_capabilities_forbid_per_channel_and_op(nats_url: str, tmp_path: Path) -> None:
    caps = {"chat:*": ["subscribe", "publish"], "news:*": ["subscribe", "history"]}
    async with (
        token_relay(nats_url, tmp_path) as relay,
        protocol_client(f"{relay.url}?token={token(caps=caps)}") as client,
    ):
        forbidden = await client.publish("news:today", "spoof")
        assert (forbidden["code"], forbidden["channel"]) == ("forbidden", "news:today")
        forbidden = await client.request({"op": "history", "channel": "chat:lobby"})
        assert (forbidden["code"], forbidden["channel"]) == ("forbidden", "chat:lobby")
        forbidden = await client.subscribe("private:x")
        assert (forbidden["code"], forbidden["channel"]) == ("forbidden", "private:x")
        assert (await client.subscribe("news:today"))["op"] == "subscribed"
        assert (await client.request({"op": "history", "channel": "news:today"}))["op"] == "history"
        assert (await client.publish("chat:lobby", 1))["op"] == "ack"


async def test_expired_or_bad_token_is_refused_at_connect(nats_url: str, tmp_path: Path) -> None:
    expired = issue_token(SECRET, "alice", CHAT, 60, now=time.time() - 3600)
    async with token_relay(nats_url, tmp_path) as relay:
        async with protocol_client(f"{relay.url}?token={expired}") as client:
            await client.wait_closed()
        assert client.closed_code == CloseCode.TOKEN_EXPIRED
        assert client.errors[0]["code"] == "unauthorized"
        assert client.errors[0]["message"] == "token expired"
        assert client.connected is None
        forged = issue_token(b"another-secret-0123456789abcdefghij", "alice", CHAT, 60)
        async with protocol_client(f"{relay.url}?token={forged}") as client:
            await client.wait_closed()
        assert client.closed_code == CloseCode.UNAUTHORIZED
        assert client.errors[0]["message"] == "bad signature"


async def test_renewal_on_a_live_connection_narrows_at_once(nats_url: str, tmp_path: Path) -> None:
    async with (
        token_relay(nats_url, tmp_path) as relay,
        protocol_client(f"{relay.url}?token={token()}") as client,
        protocol_client(f"{relay.url}?token={token('bob')}") as publisher,
    ):
        await client.subscribe("chat:lobby")
        await client.subscribe("chat:secret")
        renewed = await authenticate(client, token(caps={"chat:lobby": ["subscribe"]}, ttl_s=900))
        assert renewed["op"] == "authed"
        await client.wait_for(lambda: any(e.get("channel") == "chat:secret" for e in client.errors))
        ended = next(e for e in client.errors if e.get("channel") == "chat:secret")
        assert ended["code"] == "forbidden"
        assert "ended" in ended["message"]
        await publisher.publish("chat:secret", "not for you")
        await publisher.publish("chat:lobby", "for you")
        await client.wait_messages("chat:lobby", 1)
        assert client.messages["chat:secret"] == []
        assert (await client.publish("chat:lobby", "x"))["code"] == "forbidden"
        other = await authenticate(client, token("mallory"))
        assert other["code"] == "unauthorized"  # a renewal keeps the sub


async def test_expiry_closes_with_token_expired(nats_url: str, tmp_path: Path) -> None:
    async with (
        token_relay(nats_url, tmp_path) as relay,
        protocol_client(f"{relay.url}?token={token(ttl_s=2)}") as client,
    ):
        assert (await client.subscribe("chat:lobby"))["op"] == "subscribed"
        await client.wait_closed(seconds=10)
        assert client.closed_code == CloseCode.TOKEN_EXPIRED
        assert client.closed_reason == "token_expired"


async def test_python_sdk_with_a_token_provider_connects_renews_and_receives(
    nats_url: str, tmp_path: Path
) -> None:
    issued: list[str] = []

    async def provider() -> str:
        issued.append(token("sdk", ttl_s=3))
        return issued[-1]

    async with (
        token_relay(nats_url, tmp_path) as relay,
        connect(relay.url, token_provider=provider, backoff_base_s=0.05) as client,
        protocol_client(f"{relay.url}?token={token('bob')}") as publisher,
    ):
        sub = await client.subscribe("chat:sdk")
        first_exp = client.token_exp
        assert first_exp is not None
        received: list[Message] = []

        async def consume() -> None:
            async for message in sub:
                received.append(message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            # Past the first token's expiry: renewed on the live connection, not reconnected.
            await wait_until(
                lambda: client.token_exp is not None and client.token_exp > first_exp + 2,
                "the token renewed on the live connection",
                15,
            )
            await anyio.sleep(max(0.0, first_exp - time.time()) + 0.5)
            assert client.connections == 1
            assert len(issued) >= 2
            ack = await client.publish("chat:sdk", {"n": 1})
            await publisher.publish("chat:sdk", {"n": 2})
            await wait_until(lambda: len(received) >= 2, "both messages received")
            assert received[0].id == ack.id
            tg.cancel_scope.cancel()


async def test_sdk_reconnects_with_a_fresh_token_after_expiry(
    nats_url: str, tmp_path: Path
) -> None:
    """A provider that renews too late: the relay closes with 4003, the SDK reconnects with
    a fresh token and resubscribes."""
    calls = 0

    async def provider() -> str | None:
        nonlocal calls
        calls += 1
        if calls == 2:
            await anyio.sleep(5)  # the renewal misses the expiry
        return token("late", ttl_s=2)

    async with (
        token_relay(nats_url, tmp_path) as relay,
        connect(relay.url, token_provider=provider, backoff_base_s=0.05) as client,
    ):
        await client.subscribe("chat:late")
        await wait_until(lambda: client.connections >= 2, "a reconnect after 4003", 20)
        assert (await client.publish("chat:late", 1)).channel == "chat:late"


async def test_python_sdk_subscription_ends_when_a_renewal_narrows_it(
    nats_url: str, tmp_path: Path
) -> None:
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        caps = CHAT if calls == 1 else {"chat:open": ["subscribe", "publish"]}
        return token("narrowed", caps=caps, ttl_s=2 if calls == 1 else 600)

    async with (
        token_relay(nats_url, tmp_path) as relay,
        connect(relay.url, token_provider=provider, backoff_base_s=0.05) as client,
    ):
        secret = await client.subscribe("chat:secret")
        still = await client.subscribe("chat:open")
        with pytest.raises(RequestRefused) as refused, anyio.fail_after(timeout(15)):
            async for _ in secret:
                pass
        assert (refused.value.code, refused.value.channel) == ("forbidden", "chat:secret")
        assert client.connections == 1
        ack = await client.publish("chat:open", "still here")
        with anyio.fail_after(timeout(10)):
            assert (await anext(aiter(still))).id == ack.id
