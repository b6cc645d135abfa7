"""Plain HTTP GETs against a relay in this event loop (its /v1/* endpoints)."""

from __future__ import annotations

import anyio

from relay.node import RelayNode


async def http_get(node: RelayNode, path: str) -> tuple[int, str]:
    """(status, body) of ``GET path`` on the relay, over a fresh connection."""
    async with await anyio.connect_tcp("127.0.0.1", node.port) as stream:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        await stream.send(request.encode())
        raw = b""
        try:
            while True:
                raw += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def http_get_ok(node: RelayNode, path: str) -> str:
    """The body of ``GET path``, which must answer 200."""
    status, body = await http_get(node, path)
    assert status == 200, (path, status, body)
    return body
