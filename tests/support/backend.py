"""A small application backend for hook tests: a real HTTP/1.1 server on 127.0.0.1.

h11 over anyio, one request per connection (as the relay's hook client sends them).
Each POST body is decoded, recorded (with its headers) and handed to the test's
``answer`` function, whose ``(status, body)`` is sent back; it may sleep first (a
slow backend). ``stop()`` closes the listener (the relay then gets "connection
refused", a backend that is down) and ``start()`` listens again on the same port.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import h11
from anyio.abc import SocketStream, TaskGroup

Answer = Callable[[dict[str, Any]], Awaitable[tuple[int, bytes]]]


def accept(**fields: Any) -> tuple[int, bytes]:
    return 200, json.dumps({"result": "accept", **fields}).encode()


def reject(reason: str) -> tuple[int, bytes]:
    return 200, json.dumps({"result": "reject", "reason": reason}).encode()


class Backend:
    def __init__(self, answer: Answer, tg: TaskGroup) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []  # every body received, in order
        self.headers: list[dict[str, str]] = []  # each request's headers (lower-cased names)
        self.port = 0
        self._tg = tg
        self._scope: anyio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def of(self, hook: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("hook") == hook]

    async def start(self) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        scope = self._scope = anyio.CancelScope()

        async def serve() -> None:
            with scope:
                async with listener:
                    await listener.serve(self._handle)

        self._tg.start_soon(serve)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _handle(self, stream: SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        request: h11.Request | None = None
        async with stream:
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError, h11.ProtocolError):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive())
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
                assert request is not None
                decoded = json.loads(body)
                self.requests.append(decoded)
                self.headers.append({k.decode().lower(): v.decode() for k, v in request.headers})
                status, reply = await self.answer(decoded)
                headers = [("Content-Length", str(len(reply))), ("Connection", "close")]
                out = conn.send(h11.Response(status_code=status, headers=headers))
                out += conn.send(h11.Data(data=reply)) + conn.send(h11.EndOfMessage())
                await stream.send(out)


@asynccontextmanager
async def running_backend(answer: Answer) -> AsyncIterator[Backend]:
    async with anyio.create_task_group() as tg:
        backend = Backend(answer, tg)
        await backend.start()
        try:
            yield backend
        finally:
            tg.cancel_scope.cancel()
