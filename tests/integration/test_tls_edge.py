"""The client edge facing the internet (issue #12): TLS on the listener with the Python SDK
over wss:// and a private CA, the Origin allow-list for browsers, and connections per token
subject. Real relays and nats-servers; certificates made at test time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidMessage, InvalidStatus, WebSocketException
from websockets.typing import Origin

from relay.adapters.tokens import issue_token
from relay.client import Message, NoEdgeReachable, connect
from relay.client.http import http_get
from relay.config.schema import AuthSection
from relay.protocol.errors import CloseCode
from tests.support.certs import ServerCert, make_server_cert
from tests.support.relays import make_config, running_relays, timeout
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = b"tls-edge-test-secret-0123456789abcdefgh"


def tls_config(nats_url: str, pki: ServerCert) -> Any:
    return make_config(
        nats_url=nats_url,
        relay={"tls_cert_file": str(pki.cert_file), "tls_key_file": str(pki.key_file)},
    )


async def test_the_sdk_over_wss_with_a_private_ca(nats_url: str, tmp_path: Path) -> None:
    pki = make_server_cert(tmp_path / "pki")
    trusted = pki.client_context()
    async with running_relays(tls_config(nats_url, pki)) as (relay,):
        assert relay.url.startswith("wss://127.0.0.1:")
        base = relay.url.removesuffix("/v1/ws").replace("wss://", "https://")
        # The same listener serves the HTTP endpoints over https.
        status, body, _ = await http_get(
            base + "/v1/health", timeout_s=timeout(10), ssl_context=trusted
        )
        assert (status, body) == (200, b"ok\n")
        status, body, _ = await http_get(
            base + "/v1/edges", timeout_s=timeout(10), ssl_context=trusted
        )
        assert json.loads(body)["edges"][0]["url"] == relay.url  # advertised as wss://

        with anyio.fail_after(timeout(30)):
            async with connect(relay.url, ssl_context=trusted, timeout_s=timeout(20)) as client:
                assert client.url == relay.url
                assert client.survey is not None
                assert [url for _, url in client.survey.candidates] == [relay.url]
                sub = await client.subscribe("chat:tls")
                ack = await client.publish("chat:tls", {"over": "tls"})
                async for message in sub:
                    assert isinstance(message, Message)
                    assert (message.id, message.data) == (ack.id, {"over": "tls"})
                    break

        # A client that does not trust the CA gets nowhere, and is told why.
        with pytest.raises(NoEdgeReachable, match="TLS certificate not trusted"):
            async with connect(relay.url, timeout_s=timeout(3), backoff_max_s=0.5):
                pytest.fail("connected without trusting the relay's certificate")

        # Plain text on the TLS port: no WebSocket (the TLS handshake fails).
        plain = relay.url.replace("wss://", "ws://")
        with pytest.raises((InvalidMessage, OSError, WebSocketException)):
            async with ws_connect(plain, open_timeout=timeout(10)):
                pytest.fail("a plain ws:// connection was accepted on the TLS listener")


async def test_browser_origins_outside_the_allow_list_get_403(nats_url: str) -> None:
    allowed = ["https://app.example.com", "https://*.example.org"]
    cfg = make_config(nats_url=nats_url, relay={"allowed_origins": allowed})
    async with running_relays(cfg) as (relay,):
        for origin in ("https://app.example.com", "https://chat.example.org", None):
            # None: no Origin header at all, as non-browser clients do.
            async with protocol_client(relay.url, origin=origin) as client:
                assert client.connected is not None, origin
                assert (await client.subscribe("chat:origin"))["op"] == "subscribed"
        for origin in ("https://evil.example", "https://example.org", "http://app.example.com"):
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(relay.url, origin=Origin(origin), open_timeout=timeout(10)):
                    pytest.fail(f"{origin} was let in")
            response = refused.value.response
            assert response.status_code == 403, origin
            assert f"origin '{origin}' is not allowed" in response.body.decode()
        assert relay.edge is not None and relay.edge.refused_origins == 3


def token(sub: str) -> str:
    return issue_token(SECRET, sub, {"chat:*": ["subscribe", "publish"]}, 600)


async def test_connections_per_sub_past_the_limit_are_refused(
    nats_url: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    cfg = make_config(nats_url=nats_url, limits={"max_connections_per_sub": 2})
    cfg = cfg.model_copy(
        update={"auth": AuthSection(mode="token", secret_file=str(secret), leeway_s=0.0)}
    )
    async with running_relays(cfg) as (relay,):
        assert relay.edge is not None
        per_sub = relay.edge.per_sub
        alice = f"{relay.url}?token={token('alice')}"
        async with protocol_client(alice) as one, protocol_client(alice) as two:
            assert one.connected is not None and two.connected is not None
            # The third with ?token=: an error instead of `connected`, then 4004.
            async with protocol_client(alice) as three:
                await three.wait_closed()
                assert three.connected is None
                [error] = three.errors
                assert error["code"] == "limit_exceeded"
                assert "limits.max_connections_per_sub" in error["message"]
                assert three.closed_code == CloseCode.TOO_MANY_CONNECTIONS
            # The same with an `auth` frame: no `authed`, the same error and close.
            async with protocol_client(relay.url) as late:
                await late.send({"op": "auth", "token": token("alice")})
                await late.wait_closed()
                assert [f["op"] for f in late.frames] == ["connected", "error"]
                assert late.errors[0]["code"] == "limit_exceeded"
                assert late.closed_code == CloseCode.TOO_MANY_CONNECTIONS
            # Another subject has its own budget.
            async with protocol_client(f"{relay.url}?token={token('bob')}") as bob:
                assert bob.connected is not None
            # The SDK says why it could not connect.
            with pytest.raises(NoEdgeReachable, match="refused: limit_exceeded"):
                async with connect(
                    relay.url, token_provider=_provider("alice"), timeout_s=timeout(10)
                ):
                    pytest.fail("a third connection of alice was let in")
            assert per_sub.held("alice") == 2
        # Once one ends, its place is free again (the relay notices the close first).
        await wait_until(lambda: per_sub.held("alice") == 0, "alice's connections released")
        async with protocol_client(alice) as again:
            assert again.connected is not None
            assert (await again.subscribe("chat:limit"))["op"] == "subscribed"


def _provider(sub: str) -> Any:
    async def provide() -> str:
        return token(sub)

    return provide
