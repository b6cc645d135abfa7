"""A relay killed with SIGKILL mid-stream: subscribers and publishers move to another relay
and the subscriber's whole sequence has no gap and no duplicate."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.checker import check_contiguous, check_publisher_order
from tests.support.relays import (
    config_file,
    make_config,
    relay_process,
    running_relays,
    timeout,
)
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHANNEL = "chat:kill"
PER_PUBLISHER = 300


async def resilient_publisher(urls: list[str], name: str, acked: list[str]) -> None:
    """Publishes n = 0..N-1 with ids name-n; on a dead connection, moves to the next URL
    and republishes the unacknowledged message with the same id."""
    n = 0
    for url in urls:
        try:
            async with protocol_client(url) as pub:
                while n < PER_PUBLISHER:
                    ack = await pub.publish(CHANNEL, {"pub": name, "n": n}, id=f"{name}-{n}")
                    assert ack["op"] == "ack", ack
                    acked.append(ack["id"])
                    n += 1
        except* (ConnectionError, OSError, ConnectionClosed):
            pass  # the relay died under us: next URL, same n, same id
        if n == PER_PUBLISHER:
            return
    raise AssertionError(f"publisher {name} ran out of relays at n={n}")


async def test_sigkill_mid_stream_then_resume_elsewhere(nats_url: str, tmp_path: Path) -> None:
    killed_cfg = make_config(nats_url=nats_url, relay_id="doomed")
    with relay_process(
        config_file(tmp_path / "doomed.toml", killed_cfg), tmp_path / "doomed.log"
    ) as (
        proc,
        doomed_url,
    ):
        async with running_relays(make_config(nats_url=nats_url, relay_id="survivor")) as (
            survivor,
        ):
            received: list[dict[str, Any]] = []
            acked: list[str] = []
            async with anyio.create_task_group() as tg:
                async with protocol_client(doomed_url) as sub:
                    await sub.subscribe(CHANNEL)
                    tg.start_soon(resilient_publisher, [doomed_url, survivor.url], "p1", acked)
                    tg.start_soon(resilient_publisher, [survivor.url], "p2", acked)
                    await sub.wait_messages(CHANNEL, 100)
                    os.kill(proc.pid, signal.SIGKILL)
                    await sub.wait_closed()
                    received.extend(sub.messages[CHANNEL])
                assert proc.wait(timeout(5)) == -signal.SIGKILL
                position = received[-1]["position"]
                async with protocol_client(survivor.url) as resumed:
                    reply = await resumed.subscribe(CHANNEL, position=position)
                    assert reply["op"] == "subscribed"
                    await resumed.wait_messages(CHANNEL, 2 * PER_PUBLISHER - len(received), 30)
                    received.extend(resumed.messages[CHANNEL])
            assert check_contiguous(received, "us-east") == []
            assert check_publisher_order(received) == []
            assert len(received) == 2 * PER_PUBLISHER
            assert sorted(m["id"] for m in received) == sorted(set(acked))
