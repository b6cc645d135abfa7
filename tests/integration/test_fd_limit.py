"""Out of file descriptors (issue #9, item 6): a relay whose process may open few files
refuses the clients past what they leave room for (close 1013) instead of running out:
no accept storm in its log, and its health endpoint keeps answering."""

from __future__ import annotations

import resource
import subprocess
import sys
import urllib.request
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay.adapters.ws_edge import RESERVED_FDS
from tests.support.relays import config_file, make_config, timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

FD_LIMIT = 256
CLIENTS = 300  # more than the relay has descriptors for


def _low_fd_limit() -> None:  # in the relay process, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


async def test_a_relay_short_of_descriptors_refuses_instead_of_running_out(
    nats_url: str, tmp_path: Path
) -> None:
    path = config_file(tmp_path / "relay.toml", make_config(nats_url=nats_url))
    log = tmp_path / "relay.log"
    proc = _start_relay(path, log)
    try:
        assert proc.stdout is not None
        ready = await anyio.to_thread.run_sync(proc.stdout.readline)
        url = ready.decode().rsplit("ready on ", 1)[1].strip()
        health = url.replace("ws://", "http://").replace("/v1/ws", "/v1/health")
        accepted: list[ClientConnection] = []
        refused = 0
        async with AsyncExitStack() as stack:
            with anyio.fail_after(timeout(60)):
                for _ in range(CLIENTS):
                    ws = await stack.enter_async_context(connect(url))
                    try:
                        await ws.recv()  # connected, or a refusal's close
                        accepted.append(ws)
                    except ConnectionClosed:
                        assert ws.close_code == 1013, ws.close_code
                        refused += 1
            assert len(accepted) == FD_LIMIT - RESERVED_FDS
            assert refused == CLIENTS - len(accepted)
            status = await anyio.to_thread.run_sync(_get, health)
            assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout(10))
        if proc.stdout is not None:
            proc.stdout.close()
    text = log.read_text()
    assert "Traceback" not in text and "out of system resource" not in text, text[-2000:]
    assert len(text.splitlines()) < 50


def _start_relay(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "relay", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            preexec_fn=_low_fd_limit,
        )


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return int(response.status)
