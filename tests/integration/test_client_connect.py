"""The Python SDK's ``connect(timeout_s=...)``, seeds that are not relays, and ``history()``.

Against real relays and real nats-servers where a relay is needed; the seeds that are
not relays are small TCP servers on 127.0.0.1 that answer what a wrong URL would.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from relay import client as sdk
from relay.client import NoEdgeReachable, RequestRefused, fetch_directory
from tests.support.relays import make_config, running_relays, timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@asynccontextmanager
async def answering(response: bytes | None) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that reads a request and sends ``response`` (None: it
    accepts and never answers); yields its URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)

    async def serve(stream: SocketStream) -> None:
        async with stream:
            if response is None:
                await anyio.sleep_forever()
            await stream.receive()
            await stream.send(response)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"ws://127.0.0.1:{port}/v1/ws"
        tg.cancel_scope.cancel()


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/ws"  # nothing listens there now


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
BAD_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{not json"


async def test_connect_names_why_each_seed_failed_when_no_edge_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = refused_url()
    async with (
        answering(NOT_FOUND) as not_found,
        answering(BAD_JSON) as bad_json,
        answering(None) as silent,
    ):
        seeds = [refused, not_found, bad_json, silent]
        started = anyio.current_time()
        with (
            caplog.at_level(logging.WARNING, "relaynet.client"),
            pytest.raises(NoEdgeReachable) as raised,
        ):
            async with sdk.connect(seeds, timeout_s=2.0, probe_timeout_s=0.5):
                pytest.fail("connected to no relay")
        assert anyio.current_time() - started < timeout(5)
        failures = raised.value.failures
        assert failures[refused] == "connection refused"
        assert failures[not_found] == "HTTP 404: not a relay"
        assert failures[bad_json].startswith("bad JSON in /v1/edges")
        assert failures[silent] == "timed out after 0.5 s"
        text = str(raised.value)
        assert text.startswith("no relay reachable within 2 s")
        for url in seeds:
            assert url in text
        # Said above DEBUG while it happens, not only when the timeout expires.
        assert any("no edge answered" in r.getMessage() for r in caplog.records)
        # Not a relay: never a pseudo-region (a relay without /v1/edges answers /v1/ping).
        failed: dict[str, str] = {}
        assert await fetch_directory([not_found, bad_json], failures=failed) is None
        assert set(failed) == {not_found, bad_json}


async def test_a_timeout_bounds_connecting_not_the_body(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        with anyio.fail_after(timeout(20)):
            async with sdk.connect(relay.url, timeout_s=1.0) as client:
                assert client.state is sdk.ConnectionState.CONNECTED
                assert client.region == "us-east"
                sub = await client.subscribe("chat:bounded")
                await anyio.sleep(1.5)  # the body outlives the connect timeout
                assert client.state is sdk.ConnectionState.CONNECTED
                await client.publish("chat:bounded", "still here")
                assert (await anext(sub)).data == "still here"
        with pytest.raises(ValueError, match="timeout_s"):
            async with sdk.connect(relay.url, timeout_s=0):
                pass


async def test_history_pages_back_through_stored_messages(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        with anyio.fail_after(timeout(20)):
            async with sdk.connect(relay.url, timeout_s=timeout(10)) as client:
                acks = [await client.publish("chat:past", {"n": n}) for n in range(5)]
                newest = await client.history("chat:past", limit=2)
                assert newest.channel == "chat:past" and newest.more
                assert [m.id for m in newest] == [a.id for a in acks[3:]]
                assert [m.data for m in newest] == [{"n": 3}, {"n": 4}]
                assert newest[0].data_json == b'{"n":3}'
                assert [m.position.to_dict() for m in newest] == [
                    a.position.to_dict() for a in acks[3:]
                ]
                older = await client.history(
                    "chat:past", limit=10, before=newest[0].position.to_dict()
                )
                assert [m.data for m in older] == [{"n": 0}, {"n": 1}, {"n": 2}]
                assert not older.more and len(older) == 3
                assert len(await client.history("chat:nothing-yet")) == 0
                # History is not a subscription: nothing of it is delivered again.
                sub = await client.subscribe("chat:past")
                await client.publish("chat:past", {"n": 5})
                assert (await anext(sub)).data == {"n": 5}
                with pytest.raises(RequestRefused) as refused:
                    await client.history("no spaces")
                assert refused.value.code == "invalid_channel" and not refused.value.temporary
                with pytest.raises(ValueError, match="limit"):
                    await client.history("chat:past", limit=0)
