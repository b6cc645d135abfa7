"""The relay's direct write path (relay/adapters/connection.py) uses websockets internals:
``ServerConnection.send_in_progress`` (new in 16.0), ``.transport`` and ``.protocol.state``.
pyproject bounds websockets to the versions that have them; this fails when the installed one
is outside the bound or no longer has them (14.x/15.x raised AttributeError on every write)."""

from __future__ import annotations

import importlib.metadata

import anyio
import pytest
import websockets
from packaging.requirements import Requirement
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.protocol import State

pytestmark = pytest.mark.anyio


def test_installed_websockets_is_within_the_declared_bound() -> None:
    requirements = [Requirement(r) for r in importlib.metadata.requires("relaynet") or ()]
    (declared,) = [r for r in requirements if r.name == "websockets"]
    assert declared.specifier.contains(websockets.__version__), (
        f"websockets {websockets.__version__} is outside {declared.specifier}"
    )
    assert not declared.specifier.contains("15.0.1"), "15.x lacks send_in_progress"


async def test_a_server_connection_has_what_the_direct_write_path_uses() -> None:
    seen: list[ServerConnection] = []
    opened, done = anyio.Event(), anyio.Event()

    async def handler(ws: ServerConnection) -> None:
        seen.append(ws)
        opened.set()
        await done.wait()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}"):
            with anyio.fail_after(10):
                await opened.wait()
            ws = seen[0]
            assert ws.send_in_progress is None
            assert ws.protocol.state is State.OPEN
            assert ws.transport.get_write_buffer_size() == 0
            done.set()
