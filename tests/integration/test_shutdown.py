"""The embedded default, SIGTERM, and what survives a restart."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.support.relays import config_file, make_config, relay_process, timeout
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and "nats-server" in cmdline:
            found.append(int(pid))
    return found


async def test_sigterm_flushes_acks_closes_1001_stops_nats_and_data_survives(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    cfg = make_config(nats_url="embedded", nats={"store_dir": str(store), "embedded_port": 0})
    path = config_file(tmp_path / "relay.toml", cfg)
    acked: list[str] = []
    with relay_process(path, tmp_path / "relay.log") as (proc, url):
        assert processes_mentioning(str(store)), "embedded nats-server should be running"
        async with protocol_client(url) as client:
            for n in range(300):  # pipelined: many publishes in flight at SIGTERM
                await client.send_raw(
                    json.dumps({"op": "publish", "channel": "chat:keep", "id": f"m{n}", "data": n})
                )
            await client.wait_for(lambda: any(f["op"] == "ack" for f in client.frames))
            os.kill(proc.pid, signal.SIGTERM)
            await client.wait_closed()
            assert client.closed_code == 1001
            acked = [f["id"] for f in client.frames if f["op"] == "ack"]
        assert proc.wait(timeout(15)) == 0
    assert processes_mentioning(str(store)) == [], "embedded nats-server left running"

    # Same store, new process: everything acknowledged is still there, nothing else.
    with relay_process(path, tmp_path / "relay2.log") as (proc, url):
        async with protocol_client(url) as client:
            page = await client.request({"op": "history", "channel": "chat:keep", "limit": 1000})
            stored = [m["id"] for m in page["messages"]]
            assert stored == acked
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout(15)) == 0


async def test_sigterm_with_publishes_held_for_their_context_exits_cleanly(
    tmp_path: Path,
) -> None:
    """Found by bench chaos: at shutdown the writer fails what it still holds, the failure
    reaches a connection whose socket is gone, and queueing the error frame started a writer
    task in the edge's finished task group: RuntimeError, exit code 1."""
    cfg = make_config(
        nats_url="embedded", nats={"store_dir": str(tmp_path / "s"), "embedded_port": 0}
    )
    path = config_file(tmp_path / "relay.toml", cfg)
    log = tmp_path / "relay.log"
    with relay_process(path, log) as (proc, url):
        async with protocol_client(url) as client:
            for n in range(20):  # a context no region will ever reach: held until shutdown
                await client.send_raw(
                    json.dumps(
                        {
                            "op": "publish",
                            "channel": "chat:held",
                            "id": f"h{n}",
                            "data": n,
                            "after": {"eu-west": 1_000_000},
                            "ref": n,
                        }
                    )
                )
            pong = await client.request({"op": "ping"})
            assert pong["op"] == "pong"
            assert not [f for f in client.frames if f["op"] in ("ack", "error")]
        # The client is gone; its connection still waits for the held publishes' answers.
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout(30)) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
