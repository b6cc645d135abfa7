"""Reconnecting to a frozen nats-server leaks no socket.

A frozen (SIGSTOP) nats-server still accepts TCP connections, so each reconnect attempt
connects and then waits in vain for INFO. nats-py reused its transport and overwrote the
attempt's stream without closing it: one leaked socket per attempt, for as long as the freeze
lasted (a relay would run out of descriptors; the suite saw ResourceWarnings)."""

from __future__ import annotations

import gc
import os
import signal
import warnings
from pathlib import Path

import anyio
import pytest

from federation.adapters.nats_client import NatsClient
from tests.support.nats import NatsProcess
from tests.support.relays import timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

FREEZE_S = 3.0  # the fault: long enough for several timed-out attempts at 0.3 s each


async def test_attempts_against_a_frozen_server_leave_no_socket_open(tmp_path: Path) -> None:
    server = NatsProcess(tmp_path / "nats")
    url = server.start()
    assert server.proc is not None
    failed_attempts = 0
    reconnected = anyio.Event()

    async def on_error(exc: Exception) -> None:
        nonlocal failed_attempts
        failed_attempts += 1

    async def on_reconnected() -> None:
        reconnected.set()

    nc = NatsClient()
    try:
        await nc.connect(
            servers=[url],
            ping_interval=0.2,
            max_outstanding_pings=1,
            connect_timeout=0.3,
            reconnect_time_wait=0.05,  # type: ignore[arg-type]  # a float works; typed int
            max_reconnect_attempts=-1,
            error_cb=on_error,
            reconnected_cb=on_reconnected,
        )
        os.kill(server.proc.pid, signal.SIGSTOP)
        await anyio.sleep(FREEZE_S)
        os.kill(server.proc.pid, signal.SIGCONT)
        with anyio.fail_after(timeout(10)):
            await reconnected.wait()
        assert failed_attempts >= 3, "the freeze should have failed several attempts"
    finally:
        await nc.close()
        server.stop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del nc
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []
