"""A minimal protocol-v1 client over a plain WebSocket, as any user could write it.

What ``RelayNetwork.client()`` hands to tests: it records every frame it gets (as
the JSON objects they are, so that a test sees exactly what came), matches replies
to requests by ``ref``, and waits on conditions with a bound (scaled by
``RELAYNET_TEST_TIMEOUT_FACTOR`` on slow machines), never with fixed sleeps.
The frames it builds itself are the protocol's own (``relay.protocol.frames``);
``send`` and ``request`` also take a plain dict, for frames a test makes up.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay.protocol.frames import ClientFrame, Publish, Subscribe

TIMEOUT_FACTOR = float(os.environ.get("RELAYNET_TEST_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


_encode = msgspec.json.Encoder().encode


class ProtocolClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.errors: list[dict[str, Any]] = []
        self.connected: dict[str, Any] | None = None
        self.closed_code: int | None = None
        self.closed_reason: str | None = None
        self._replies: dict[Any, dict[str, Any]] = {}
        self._changed = anyio.Event()
        self._refs = itertools.count(1)
        self._done = anyio.Event()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                op = frame.get("op")
                if op == "connected":
                    self.connected = frame
                elif op == "message":
                    self.messages[frame["channel"]].append(frame)
                elif op == "error":
                    self.errors.append(frame)
                if "ref" in frame:
                    self._replies[frame["ref"]] = frame
                self._wake()
        except ConnectionClosed:
            pass
        finally:
            self.closed_code = self.ws.close_code
            self.closed_reason = self.ws.close_reason
            self._done.set()
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Any, seconds: float = 10) -> None:
        with anyio.fail_after(timeout(seconds)):
            while not predicate():
                if self._done.is_set():
                    raise ConnectionError(
                        f"connection closed ({self.closed_code} {self.closed_reason})"
                    )
                await self._changed.wait()

    async def wait_closed(self, seconds: float = 10) -> None:
        with anyio.fail_after(timeout(seconds)):
            await self._done.wait()

    async def request(
        self, frame: ClientFrame | dict[str, Any], seconds: float = 10
    ) -> dict[str, Any]:
        ref = await self.send(frame)
        await self.wait_for(lambda: ref in self._replies, seconds)
        return self._replies.pop(ref)

    async def send(self, frame: ClientFrame | dict[str, Any]) -> str:
        """Send a request without waiting for its reply; returns its ref (see ``reply``).
        The frame's own ref, if any, is replaced."""
        ref = f"c{next(self._refs)}"
        if isinstance(frame, dict):
            await self.ws.send(json.dumps({**frame, "ref": ref}))
        else:
            await self.ws.send(_encode(msgspec.structs.replace(frame, ref=ref)), text=True)
        return ref

    def reply(self, ref: str) -> dict[str, Any] | None:
        """The reply to a request sent with ``send``, once it has come."""
        return self._replies.get(ref)

    async def send_raw(self, raw: str | bytes) -> None:
        await self.ws.send(raw)

    async def subscribe(
        self, channel: str, position: dict[str, int] | None = None
    ) -> dict[str, Any]:
        return await self.request(Subscribe(channel, position))

    async def publish(self, channel: str, data: Any, id: str | None = None) -> dict[str, Any]:
        return await self.request(Publish(channel, msgspec.Raw(_encode(data)), id))

    async def wait_messages(self, channel: str, count: int, seconds: float = 10) -> None:
        await self.wait_for(lambda: len(self.messages[channel]) >= count, seconds)


@asynccontextmanager
async def protocol_client(url: str, **kwargs: Any) -> AsyncIterator[ProtocolClient]:
    async with connect(url, **kwargs) as ws, anyio.create_task_group() as tg:
        client = ProtocolClient(ws)
        tg.start_soon(client._read)
        await client.wait_for(lambda: client.connected is not None or client._done.is_set())
        try:
            yield client
        finally:
            await ws.close()
            tg.cancel_scope.cancel()
