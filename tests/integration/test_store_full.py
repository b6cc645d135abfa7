"""A full JetStream store (issue #9, item 6): publishes are refused as `unavailable`
with the reason, the relay logs it once per interval instead of once per publish, and
reads keep working."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from tests.support.nats import NatsProcess
from tests.support.relays import make_config, running_relays, timeout
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_a_full_store_refuses_publishes_plainly_and_reads_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = NatsProcess(tmp_path / "nats", max_file_store=256 * 1024)
    url = server.start()
    try:
        # No byte limit of the stream's own: this is about the server's store running out.
        unlimited = [{"name": "default", "prefix": "", "max_bytes": 0}]
        cfg = make_config(nats_url=url, nats={"connect_timeout_s": 5}, namespaces=unlimited)
        async with running_relays(cfg) as (relay,):
            refused: list[dict[str, object]] = []
            acked = 0
            with caplog.at_level(logging.WARNING):
                async with protocol_client(relay.url) as pub:
                    with anyio.fail_after(timeout(60)):
                        for n in range(3000):
                            reply = await pub.publish("chat:full", "x" * 200, id=f"m{n}")
                            if reply["op"] != "ack":
                                refused.append(reply)
                                break
                            acked += 1
                        # Full for every channel: fresh publishes elsewhere get the reason.
                        for n in range(30):
                            refused.append(await pub.publish(f"chat:other-{n}", "x" * 200))
            assert acked > 0 and len(refused) == 31
            for reply in refused:
                assert reply["code"] == "unavailable" and reply["temporary"] is True, reply
                assert "insufficient resources" in str(reply["message"]), reply
            problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(problems) <= 3, [r.getMessage() for r in problems]
            assert not any(r.exc_info for r in problems), "a traceback per failure"
            # Reads keep working: history and a replay from the start.
            async with protocol_client(relay.url) as reader:
                history = await reader.request(
                    {"op": "history", "channel": "chat:full", "limit": 5}
                )
                assert history["op"] == "history" and len(history["messages"]) == 5
                await reader.subscribe("chat:full", position={})
                await reader.wait_messages("chat:full", acked, 30)
    finally:
        server.stop()
