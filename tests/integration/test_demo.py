"""`relaynet demo`: three regions from one command; messages cross regions; nothing is
left behind when it stops."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from relay.simulate.client import protocol_client
from tests.support.relays import cli_process, timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def nats_servers_of(pid: int) -> list[int]:
    """nats-server processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if name == "nats-server" and ppid == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


async def test_demo_links_three_regions_and_cleans_up(tmp_path: Path) -> None:
    args = ["demo", "--duration", "60"]
    with cli_process(args, tmp_path / "demo.log", "three regions are up") as (proc, _):
        assert proc.stdout is not None
        pages: dict[str, str] = {}
        while len(pages) < 3:
            line = proc.stdout.readline().decode()
            match = re.match(r"\s+(\S+)\s+(http://127\.0\.0\.1:\d+)/\?prefer=(\S+)$", line)
            assert match, f"the demo prints one page per region: {line!r}"
            # ?prefer=, not ?regions=: the page starts in its region and can still fail over.
            assert match.group(3) == match.group(1)
            pages[match.group(1)] = match.group(2)
        assert set(pages) == {"us-east", "eu-west", "ap-south"}
        servers = nats_servers_of(proc.pid)
        assert len(servers) == 3
        ws = {region: url.replace("http://", "ws://") + "/v1/ws" for region, url in pages.items()}
        async with protocol_client(ws["eu-west"]) as west, protocol_client(ws["us-east"]) as east:
            await west.subscribe("chat:lobby")
            ack = await east.publish("chat:lobby", "hello from the demo")
            assert ack["op"] == "ack"
            await west.wait_messages("chat:lobby", 1, 30)
            message = west.messages["chat:lobby"][0]
            assert message["origin"] == "us-east" and message["data"] == "hello from the demo"
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout(30)) == 0, (tmp_path / "demo.log").read_text()
        assert not [pid for pid in servers if alive(pid)], "orphaned nats-server"
