"""The image's HEALTHCHECK script against a real relay: 0 while it serves, 1 once its NATS
is gone (503) and when nothing listens."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from relay.config.writer import write_config
from relay.harness.toolkit import free_port
from tests.deploy.local_compose import DEPLOY
from tests.support.nats import NatsProcess, server_at
from tests.support.relays import make_config, running_relays
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def healthcheck(config: Path) -> tuple[int, str]:
    done = await anyio.run_process(
        [sys.executable, str(DEPLOY / "healthcheck.py"), str(config)], check=False
    )
    return done.returncode, done.stdout.decode().strip()


async def healthcheck_passes(config: Path) -> bool:
    return (await healthcheck(config))[0] == 0


async def test_healthcheck_follows_the_relays_health(tmp_path: Path, nats_url: str) -> None:
    port = free_port()
    cfg = make_config(nats_url=nats_url, port=port)
    config = write_config(tmp_path / "relay.toml", cfg)
    async with running_relays(cfg):
        assert await healthcheck(config) == (0, f"http://127.0.0.1:{port}/v1/health: 200")
        server = server_at(nats_url)
        assert isinstance(server, NatsProcess)
        server.stop()

        async def unhealthy() -> bool:
            code, said = await healthcheck(config)
            return code == 1 and said.endswith(": 503 nats or jetstream unavailable")

        await wait_until(unhealthy, "the health check failing with 503", 30)
        # Back before the relay stops: it closes its NATS connection on the way out.
        server.start()
        await wait_until(lambda: healthcheck_passes(config), "the health check passing", 30)
    code, said = await healthcheck(config)
    assert code == 1 and "Connection refused" in said, said
