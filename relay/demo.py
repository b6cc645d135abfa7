"""``relaynet demo``: three regions on this machine with nothing but ``pip install``.

Each region gets an embedded nats-server (JetStream) and a relay, all in this
process; every inter-region link goes through a delay proxy so the regions
feel apart (the default latencies are a small world map). It prints each
region's demo page and runs until Ctrl-C, then stops everything it started
and removes its temporary data.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

import anyio

from federation.linkproxy import LinkProxy
from relay.config.schema import RelayConfig
from relay.node import RelayNode

REGIONS = ("us-east", "eu-west", "ap-south")
# One-way latency between regions in ms: roughly what the real routes see.
DEMO_LATENCY_MS = {
    frozenset({"us-east", "eu-west"}): 40.0,
    frozenset({"us-east", "ap-south"}): 110.0,
    frozenset({"eu-west", "ap-south"}): 70.0,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_configs(
    workdir: Path, relay_ports: dict[str, int], nats_ports: dict[str, int],
    proxy_ports: dict[tuple[str, str], int],
) -> list[RelayConfig]:  # fmt: skip
    configs = []
    for region in REGIONS:
        data: dict[str, Any] = {
            "region": {"name": region},
            "relay": {"id": f"{region}-demo", "host": "127.0.0.1", "port": relay_ports[region],
                      "shutdown_grace_s": 2.0},
            "nats": {"url": "embedded", "embedded_port": nats_ports[region],
                     "store_dir": str(workdir / region)},
            "namespaces": [{"name": "chat", "prefix": "chat:"}],
            "peers": [
                {"region": peer, "edge_url": f"ws://127.0.0.1:{relay_ports[peer]}/v1/ws",
                 "nats_url": f"nats://127.0.0.1:{proxy_ports[(region, peer)]}"}
                for peer in REGIONS if peer != region
            ],
            "federation": {"ack_wait_s": 2.0, "lease_ttl_s": 1.5},
        }  # fmt: skip
        configs.append(RelayConfig.model_validate(data))
    return configs


async def run_demo(duration_s: float | None = None, latency_scale: float = 1.0) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="relaynet-demo-"))
    try:
        relay_ports = {r: _free_port() for r in REGIONS}
        nats_ports = {r: _free_port() for r in REGIONS}
        async with anyio.create_task_group() as tg:
            proxy_ports: dict[tuple[str, str], int] = {}
            for a in REGIONS:
                for b in REGIONS:
                    if a != b:
                        latency = DEMO_LATENCY_MS[frozenset({a, b})] * latency_scale
                        proxy = LinkProxy("127.0.0.1", nats_ports[b], latency_ms=latency,
                                          name=f"{a}<-{b}")  # fmt: skip
                        proxy_ports[(a, b)] = await tg.start(proxy.run)
            nodes = [RelayNode(cfg) for cfg in demo_configs(workdir, relay_ports, nats_ports,
                                                            proxy_ports)]  # fmt: skip
            for node in nodes:
                await tg.start(node.run)
            print("relaynet demo: three regions are up. Open a page per region:", flush=True)
            for node in nodes:
                # On one machine every edge is about as near: ?prefer= puts the page in its
                # region and still lets it fail over to the others (?regions= would not).
                region = node.cfg.region.name
                print(f"  {region:<9} http://127.0.0.1:{node.port}/?prefer={region}", flush=True)
            print(
                "Links between regions are delayed (one way: us-east/eu-west 40 ms, "
                "us-east/ap-south 110 ms, eu-west/ap-south 70 ms). Ctrl-C to stop.",
                flush=True,
            )
            with (
                anyio.move_on_after(duration_s) if duration_s else contextlib.nullcontext(),
                anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
            ):
                async for _ in signals:
                    break
            for node in nodes:
                node.stop()
            for node in nodes:
                await node.run_finished()
            tg.cancel_scope.cancel()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("relaynet demo: stopped; nothing left behind", flush=True)
    return 0
