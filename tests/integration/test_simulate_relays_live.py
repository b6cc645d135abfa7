"""The simulator's relay processes live as long as the simulator (issue #9 item 7).

They get PR_SET_PDEATHSIG, which the kernel sends when the *thread* that forked them
exits. Forked from an anyio worker thread, a relay got SIGTERM as soon as anyio retired
that worker (idle for 10 s, or at the end of the loop). Here the network's own region
restart starts a relay against a local nats-server (no Docker: the region's NATS
container is replaced by one that is already running), the loop's worker threads are
retired, and the relay must still serve.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest
from websockets.asyncio.client import connect

from relay.simulate import containers
from relay.simulate.client import timeout
from relay.simulate.network import RelayNetwork, _Region, _Relay, _relay_toml
from relay.simulate.spec import uniform

pytestmark = pytest.mark.integration


def anyio_workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "AnyIO worker thread"}


def test_a_relay_restarted_by_the_network_outlives_the_worker_threads(
    nats_url: str, tmp_path: Path
) -> None:
    network = RelayNetwork(uniform(("us-east",), 0), workdir=tmp_path)
    relay = _Relay(
        "us-east-1", containers.free_port(), tmp_path / "us-east-1.toml", tmp_path / "us-east-1.log"
    )
    relay.config.write_text(_relay_toml("us-east", relay, nats_url, [], []))
    already_running = SimpleNamespace(start_again=lambda: None)
    network.regions["us-east"] = _Region("us-east", already_running, [relay])  # type: ignore[arg-type]

    async def restart() -> set[threading.Thread]:
        before = anyio_workers()
        await network.restart_region("us-east")
        return anyio_workers() - before

    # When the loop ends anyio stops its worker threads: the same exit as a retirement
    # after 10 idle seconds, without the wait. The thread that ran the loop lives on.
    workers = anyio.run(restart)
    try:
        proc = relay.proc
        assert proc is not None
        assert workers, "restart_region used no worker thread: nothing to retire"
        for worker in workers:
            worker.join(timeout(10))
        assert not any(w.is_alive() for w in workers)

        # A death signal would have reached the relay as the threads exited; it logs
        # "SIGTERM: shutting down" and stops. Give it time to show.
        deadline = time.monotonic() + timeout(2)
        while time.monotonic() < deadline:
            assert proc.poll() is None, relay.log.read_text()
            assert "shutting down" not in relay.log.read_text(), relay.log.read_text()
            time.sleep(0.05)

        async def greeting() -> dict[str, object]:
            async with connect(relay.url, open_timeout=timeout(5)) as ws:
                frame: dict[str, object] = json.loads(await ws.recv())
                return frame

        assert asyncio.run(greeting())["op"] == "connected"
    finally:
        RelayNetwork._stop_relay(relay)
