from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nats import nats_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # nats-py and websockets' asyncio API


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A real nats-server with JetStream, fresh for each test."""
    with nats_server(tmp_path / "nats") as url:
        yield url
