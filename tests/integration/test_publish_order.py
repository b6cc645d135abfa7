"""Per-connection publish order survives failed publishes (issue #9, item 1).

A client pipelines publishes on one channel while the region's nats-server is
frozen (SIGSTOP) for longer than the relay's NATS timeout, so some publishes fail
with ``unavailable``. The client does what the SDKs do: after a temporary error it
publishes every unacked message again, same ids, in its original order. Whatever
failed, the channel must hold every message once, in the order the client sent
them: nothing published after a failed publish may be stored ahead of it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from relay.simulate.client import protocol_client
from tests.support.nats import NatsProcess
from tests.support.relays import make_config, running_relays, timeout
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

MESSAGES = 400
WINDOW = 64
CHANNEL = "chat:order"
FREEZE_S = 1.5


async def test_publishes_after_a_failed_one_are_never_stored_ahead_of_it(tmp_path: Path) -> None:
    server = NatsProcess(tmp_path / "nats")
    url = server.start()
    try:
        cfg = make_config(nats_url=url, nats={"connect_timeout_s": 0.5})
        async with running_relays(cfg) as (relay,):
            ws_url = f"ws://127.0.0.1:{relay.port}/v1/ws"
            async with protocol_client(ws_url) as sub:
                await sub.subscribe(CHANNEL)
                errors = await _publish_through_a_freeze(ws_url, server)
                # A duplicate is stored before this marker, so it arrives before it (one
                # order per channel): read up to the marker.
                async with protocol_client(ws_url) as marker:
                    assert (await marker.publish(CHANNEL, "end", id="end"))["op"] == "ack"
                await sub.wait_for(lambda: "end" in _ids(sub.messages[CHANNEL]), 30)
            got = _ids(sub.messages[CHANNEL])
    finally:
        server.stop()
    assert errors > 0, "the freeze made no publish fail: the test proved nothing"
    assert got == [f"m{n}" for n in range(MESSAGES)] + ["end"]


def _ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages]


async def _publish_through_a_freeze(ws_url: str, server: NatsProcess) -> int:
    """Publish MESSAGES ids in order, pipelined, resending unacked ones after errors;
    freeze NATS once in the middle. Returns how many publishes failed."""
    pending: dict[str, int] = {}  # id -> n, in first-send order (dicts keep it)
    acked: set[str] = set()
    errors = 0
    retry = anyio.Event()
    answered = anyio.Event()  # set (and replaced) at each frame the relay sends
    quarter_acked = anyio.Event()
    next_n = 0
    assert server.proc is not None
    pid = server.proc.pid

    async with connect(ws_url) as ws:
        await ws.recv()  # connected

        async def send(message_id: str) -> None:
            frame = {"op": "publish", "channel": CHANNEL, "data": pending[message_id]}
            await ws.send(json.dumps({**frame, "id": message_id, "ref": message_id}))

        async def reader() -> None:
            nonlocal errors, answered
            async for raw in ws:
                answered.set()
                answered = anyio.Event()
                frame = json.loads(raw)
                if frame["op"] == "ack":
                    acked.add(frame["id"])
                    pending.pop(frame["id"], None)
                    if len(acked) >= MESSAGES // 4:
                        quarter_acked.set()
                elif frame["op"] == "error":
                    assert frame["temporary"], frame
                    errors += 1
                    retry.set()

        async def freeze() -> None:
            await quarter_acked.wait()
            os.kill(pid, signal.SIGSTOP)
            try:
                # The fault's shape, not a wait: NATS stays away three times the relay's
                # NATS timeout (0.5 s), so publishes and the resends after them fail...
                await anyio.sleep(FREEZE_S)
                # ...and in any case until a publish has failed, or nothing is tested.
                await wait_until(lambda: errors > 0, "a publish failing in the freeze", 30)
            finally:
                os.kill(pid, signal.SIGCONT)

        with anyio.fail_after(timeout(60)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                tg.start_soon(freeze)
                while len(acked) < MESSAGES:
                    if retry.is_set():
                        # Shaping, as the SDKs do: they pause before resending.
                        await anyio.sleep(0.2)
                        retry = anyio.Event()
                        for message_id in list(pending):
                            await send(message_id)
                    elif next_n < MESSAGES and len(pending) < WINDOW:
                        message_id = f"m{next_n}"
                        pending[message_id] = next_n
                        next_n += 1
                        await send(message_id)
                    else:
                        await answered.wait()  # the window is full: until an ack or error
                tg.cancel_scope.cancel()
    return errors
