"""The relay pings every WebSocket once per ``relay.heartbeat_s`` from one task: a client
that stops answering (it reads nothing) is closed, one that answers stays connected."""

from __future__ import annotations

import base64
import os

import anyio
import pytest
from websockets.asyncio.client import connect

from tests.support.relays import make_config, running_relays, timeout
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

HEARTBEAT_S = 0.5


async def _silent_websocket(port: int) -> anyio.abc.SocketStream:
    """A WebSocket handshake by hand, after which nothing is ever read again."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send(
        (
            f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive()
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return stream


async def test_a_client_that_never_answers_pings_is_closed_and_one_that_does_stays(
    nats_url: str,
) -> None:
    cfg = make_config(nats_url=nats_url, relay={"heartbeat_s": HEARTBEAT_S})
    async with running_relays(cfg) as (relay,):
        edge = relay.edge
        assert edge is not None
        port = int(relay.url.split(":")[2].split("/")[0])
        async with connect(relay.url) as alive:  # answers pings as it reads
            silent = await _silent_websocket(port)
            assert len(edge.connections) == 2
            await wait_until(lambda: len(edge.connections) == 1, "the silent client closed", 5)
            # Closed by the relay: the TCP stream ends once its close handshake times out.
            with anyio.fail_after(timeout(10)):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    while True:
                        await silent.receive()
            await silent.aclose()
            # The one that answered was pinged as often and is still there.
            await anyio.sleep(4 * HEARTBEAT_S)
            assert len(edge.connections) == 1
            pong = await alive.ping()
            with anyio.fail_after(timeout(5)):
                await pong
