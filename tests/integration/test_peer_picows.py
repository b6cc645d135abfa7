"""The picows broadcaster of ``bench compare`` (``relay.bench.peer_picows``) as a process:
plain websockets clients subscribe and publish, the subscriber gets the message frame, the
publisher its ack, and SIGTERM closes the clients with 1001 and ends the server (exit 0)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def _frame(ws: ClientConnection) -> dict[str, object]:
    with anyio.fail_after(5):
        frame = json.loads(await ws.recv())
    assert isinstance(frame, dict)
    return frame


async def test_peer_picows_acks_broadcasts_and_stops_on_sigterm() -> None:
    argv = [sys.executable, "-m", "relay.bench.peer_picows", "--port", "0"]
    async with await anyio.open_process(argv, stderr=subprocess.STDOUT) as proc:
        try:
            assert proc.stdout is not None
            out = b""
            with anyio.fail_after(20):
                while b"\n" not in out:
                    out += await proc.stdout.receive()
            line = out.decode().splitlines()[0]
            assert line.startswith("ready on ws://127.0.0.1:"), out
            url = line.split()[-1]

            async with connect(url) as subscriber, connect(url) as publisher:
                for ws in (subscriber, publisher):
                    assert (await _frame(ws))["op"] == "connected"
                await subscriber.send(json.dumps({"op": "subscribe", "channel": "c", "ref": 1}))
                assert await _frame(subscriber) == {
                    "op": "subscribed", "ref": 1, "channel": "c", "position": {},
                    "recovered": False,
                }  # fmt: skip
                publish = {"op": "publish", "channel": "c", "data": {"n": 1}, "ref": "p1"}
                await publisher.send(json.dumps(publish))
                ack = await _frame(publisher)
                assert ack["op"] == "ack" and ack["ref"] == "p1", ack
                message = await _frame(subscriber)
                assert message["op"] == "message", message
                assert message["channel"] == "c" and message["id"] == ack["id"], message
                assert message["data"] == {"n": 1}, message

                proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(15):
                    with pytest.raises(ConnectionClosed) as closed:
                        await subscriber.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            with anyio.fail_after(15):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
