"""The simulator's relay processes live as long as the simulator (issue #9 item 7).

They get PR_SET_PDEATHSIG, which the kernel sends when the *thread* that forked them
exits. Forked from an anyio worker thread, a relay got SIGTERM as soon as anyio retired
that worker (idle for 10 s, or at the end of the loop). Here the network's own region
restart (``relay.harness.network``, which ``RelayNetwork`` is) starts a relay against a
local nats-server (no Docker: the region's NATS is one that is already running), the
loop's worker threads are retired, and the relay must still serve.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import connect

from relay.harness.network import Network, ProcessRelay
from relay.simulate.client import timeout

pytestmark = pytest.mark.integration


def anyio_workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "AnyIO worker thread"}


class AlreadyRunning:
    """A region's NATS that is up already (the test's nats-server)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running = True
        self.pid = None
        self.store_dir = None  # open: the network logs in without credentials

    async def up(self) -> str:
        # Blocking work in a worker thread, as a container's start is: a worker that
        # anyio retires when the loop ends.
        await anyio.to_thread.run_sync(time.sleep, 0)
        return self.url

    async def down(self, *, kill: bool = False) -> None:
        return None


def test_a_relay_restarted_by_the_network_outlives_the_worker_threads(
    nats_url: str, tmp_path: Path
) -> None:
    network = Network(("us-east",), tmp_path, nats=lambda net, region: AlreadyRunning(nats_url))
    (relay,) = network.region("us-east").relays
    assert isinstance(relay, ProcessRelay)

    async def restart() -> set[threading.Thread]:
        before = anyio_workers()
        await network.restart_region("us-east")
        return anyio_workers() - before

    # When the loop ends anyio stops its worker threads: the same exit as a retirement
    # after 10 idle seconds, without the wait. The thread that ran the loop lives on.
    workers = anyio.run(restart)
    try:
        assert relay.process is not None
        proc, log = relay.process.proc, relay.process.logs[0]
        assert workers, "restart_region used no worker thread: nothing to retire"
        for worker in workers:
            worker.join(timeout(10))
        assert not any(w.is_alive() for w in workers)

        # A death signal would have reached the relay as the threads exited; it logs
        # "SIGTERM: shutting down" and stops. Give it time to show.
        deadline = time.monotonic() + timeout(2)
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            assert "shutting down" not in log.read_text(), log.read_text()
            time.sleep(0.05)

        async def greeting() -> dict[str, object]:
            async with connect(relay.url, open_timeout=timeout(5)) as ws:
                frame: dict[str, object] = json.loads(await ws.recv())
                return frame

        assert asyncio.run(greeting())["op"] == "connected"
    finally:
        anyio.run(relay.down)
