"""NATS failures are visible and bounded (issue #9, item 6): the relay restarts the
nats-server it embeds, and while NATS or JetStream is away it says so (health 503, its
edge down in the directory), sends its clients elsewhere (4001) and refuses new ones."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from relay.node import RelayNode
from relay.protocol.errors import CloseCode
from tests.support.http import http_get
from tests.support.nats import NatsProcess
from tests.support.relays import make_config, running_relays, timeout
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def until_health(node: RelayNode, status: int, seconds: float = 15) -> None:
    with anyio.fail_after(timeout(seconds)):
        while True:  # polls HTTP: nothing to wait on in-process
            if (await http_get(node, "/v1/health"))[0] == status:
                return
            await anyio.sleep(0.1)  # the poll interval


async def test_a_killed_embedded_nats_server_is_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(
        nats_url="embedded", nats={"embedded_port": 0, "store_dir": str(tmp_path / "store")}
    )
    async with running_relays(cfg) as (relay,):
        async with protocol_client(relay.url) as sub, protocol_client(relay.url) as pub:
            await sub.subscribe("chat:nk")
            await pub.publish("chat:nk", "before", id="before")
            await sub.wait_messages("chat:nk", 1)
            assert relay.embedded is not None and relay.embedded.process is not None
            with caplog.at_level(logging.ERROR, logger="relaynet.nats"):
                os.kill(relay.embedded.process.pid, signal.SIGKILL)
                with anyio.fail_after(timeout(20)):
                    while True:  # publishes fail (temporary) until NATS is back
                        reply = await pub.publish("chat:nk", "after", id="after")
                        if reply["op"] == "ack":
                            break
                        assert reply["temporary"], reply
                        # A client's pause before retrying; the loop ends on the ack.
                        await anyio.sleep(0.2)
            assert any("starting it again" in r.message for r in caplog.records)
            # The subscriber's feed resynced: it gets the message, once, after the first.
            await sub.wait_messages("chat:nk", 2, 20)
            assert [m["id"] for m in sub.messages["chat:nk"]] == ["before", "after"]
            await until_health(relay, 200)


async def test_without_nats_a_relay_says_so_and_sends_clients_elsewhere(tmp_path: Path) -> None:
    server = NatsProcess(tmp_path / "nats")
    url = server.start()
    try:
        async with running_relays(make_config(nats_url=url)) as (relay,):
            assert (await http_get(relay, "/v1/health"))[0] == 200
            async with protocol_client(relay.url) as client:
                server.kill()
                await client.wait_closed(seconds=relay.cfg.nats.lost_grace_s + 10)
                assert client.closed_code == CloseCode.UNAVAILABLE
            status, body = await http_get(relay, "/v1/health")
            assert status == 503 and "unavailable" in body
            edges = json.loads((await http_get(relay, "/v1/edges"))[1])
            assert edges["edges"][0]["relay"] == relay.cfg.relay.id
            assert edges["edges"][0]["health"] == "down"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(relay.url):
                    pass
            assert refused.value.response.status_code == 503
            server.start()  # same port, same store
            await until_health(relay, 200, 20)
            async with protocol_client(relay.url) as client:
                assert (await client.publish("chat:back", 1))["op"] == "ack"
    finally:
        server.stop()
