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

from federation.vclock import VectorClock
from relay.protocol.errors import ErrorCode, ProtocolError
from relay.protocol.frames import (
    MessageFrame,
    Publish,
    Subscribe,
    ack_frame,
    connected_frame,
    decode_client_frame,
    error_frame,
    subscribed_frame,
)

# The frames are the relay's own, read with its decoder (and validation) and written with its
# encoders; acks and subscriptions carry an empty position (nothing is stored).
MAX_FRAME_BYTES = 2**20
PING_INTERVAL_S = 20.0  # websockets' default, which serve() below keeps
_NO_POSITION = VectorClock()
_encode = msgspec.json.encode


class BroadcastServer:
    """Channel -> subscribed connections; nothing else is kept."""

    def __init__(self) -> None:
        self.channels: dict[str, set[ServerConnection]] = {}
        self._ids = itertools.count(1)
        self._connections = itertools.count(1)

    async def handle(self, ws: ServerConnection) -> None:
        subscribed: set[str] = set()
        connection_id = str(next(self._connections))
        await ws.send(
            connected_frame(
                "peer", "peer-broadcast", connection_id, PING_INTERVAL_S, MAX_FRAME_BYTES
            ),
            text=True,
        )
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
            request = decode_client_frame(raw)
        except ProtocolError as exc:
            await ws.send(error_frame(exc.code, exc.message, exc.ref), text=True)
            return
        if isinstance(request, Publish):
            message_id = str(next(self._ids))
            channel = request.channel
            await ws.send(ack_frame(request.ref, message_id, channel, _NO_POSITION), text=True)
            self._broadcast(channel, message_id, request.data)
        elif isinstance(request, Subscribe):
            channel = request.channel
            self.channels.setdefault(channel, set()).add(ws)
            subscribed.add(channel)
            reply = subscribed_frame(request.ref, channel, _NO_POSITION, recovered=False)
            await ws.send(reply, text=True)
        else:
            message = "this server knows only subscribe and publish"
            await ws.send(error_frame(ErrorCode.UNKNOWN_OP, message, request.ref), text=True)

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
    async with serve(
        server.handle, host, port, compression=None, max_size=MAX_FRAME_BYTES
    ) as ws_server:
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
