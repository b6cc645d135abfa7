"""A bare websockets broadcast server: the baseline ``relaynet bench fanout`` compares with.

It speaks just enough of protocol v1 for the benchmark (``subscribe`` and
``publish``) and keeps nothing: a publish is acked at once and its message
frame goes to every subscriber of the channel with ``websockets``' own
``broadcast``. No storage, no ordering or delivery guarantee, no backpressure
(a slow subscriber's frames pile up in its write buffer): at-most-once, like a
naive Socket.IO-style broadcaster. That is the ceiling a plain Python
websockets server reaches for fan-out.

    python -m relay.bench.peer_broadcast --port 0

prints ``ready on ws://127.0.0.1:<port>`` once listening and runs until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
from collections.abc import Sequence

import msgspec
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from relay.protocol.frames import MessageFrame  # the same frames the relay sends


class _Request(msgspec.Struct):
    op: str
    channel: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")
    ref: str | int | None = None


_decode = msgspec.json.Decoder(_Request).decode
_encode = msgspec.json.encode


async def _reply(ws: ServerConnection, op: str, ref: str | int | None, **fields: object) -> None:
    frame: dict[str, object] = {"op": op} if ref is None else {"op": op, "ref": ref}
    await ws.send(_encode(frame | fields), text=True)


class BroadcastServer:
    """Channel -> subscribed connections; nothing else is kept."""

    def __init__(self) -> None:
        self.channels: dict[str, set[ServerConnection]] = {}
        self._ids = itertools.count(1)

    async def handle(self, ws: ServerConnection) -> None:
        subscribed: set[str] = set()
        await _reply(ws, "connected", None, relay="peer-broadcast")
        try:
            async for raw in ws:
                await self._dispatch(ws, raw, subscribed)
        except ConnectionClosed:
            pass
        finally:
            for channel in subscribed:
                members = self.channels.get(channel)
                if members is not None:
                    members.discard(ws)
                    if not members:
                        del self.channels[channel]

    async def _dispatch(self, ws: ServerConnection, raw: str | bytes, subscribed: set[str]) -> None:
        try:
            request = _decode(raw)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            await _reply(ws, "error", None, code="bad_request", message=str(exc))
            return
        channel = request.channel
        if request.op == "publish":
            message_id = str(next(self._ids))
            await _reply(ws, "ack", request.ref, id=message_id, channel=channel)
            self._broadcast(channel, message_id, request.data)
        elif request.op == "subscribe":
            self.channels.setdefault(channel, set()).add(ws)
            subscribed.add(channel)
            await _reply(ws, "subscribed", request.ref, channel=channel)
        else:
            message = "this server knows only subscribe and publish"
            await _reply(ws, "error", request.ref, code="unknown_op", message=message)

    def _broadcast(self, channel: str, message_id: str, data: msgspec.Raw) -> None:
        members = self.channels.get(channel)
        if not members:
            return
        # Encoded once; broadcast() writes the same bytes to every socket without waiting.
        frame = _encode(MessageFrame(channel, message_id, data, "peer", {}, {}))
        broadcast(members, frame, text=True)


async def serve_until_signalled(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = BroadcastServer()
    # compression=None as in the relay's edge, so both servers send the same bytes.
    async with serve(server.handle, host, port, compression=None, max_size=2**20) as ws_server:
        bound = ws_server.sockets[0].getsockname()[1]
        print(f"ready on ws://{host}:{bound}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relay.bench.peer_broadcast",
        description="bare websockets broadcast server (the fan-out benchmark's baseline)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    asyncio.run(serve_until_signalled(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
