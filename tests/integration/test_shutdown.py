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
