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

import sys
from collections.abc import Sequence

import msgspec
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from relay.bench.peer_rooms import MAX_FRAME_BYTES, PeerRooms, peer_main, stop_signal

_encode = msgspec.json.encode


class BroadcastServer:
    """The rooms, on websockets."""

    def __init__(self) -> None:
        self.rooms: PeerRooms[ServerConnection] = PeerRooms("peer-broadcast")

    async def handle(self, ws: ServerConnection) -> None:
        subscribed: set[str] = set()
        await ws.send(self.rooms.hello(), text=True)
        try:
            async for raw in ws:
                reply, fan_out = self.rooms.receive(ws, raw, subscribed)
                await ws.send(reply, text=True)
                if fan_out is not None:
                    members, message = fan_out
                    # Encoded once; broadcast() writes the same bytes to every socket
                    # without waiting.
                    broadcast(members, _encode(message), text=True)
        except ConnectionClosed:
            pass
        finally:
            self.rooms.forget(ws, subscribed)


async def serve_until_signalled(host: str, port: int) -> None:
    stop = stop_signal()
    server = BroadcastServer()
    # compression=None as in the relay's edge, so both servers send the same bytes.
    async with serve(
        server.handle, host, port, compression=None, max_size=MAX_FRAME_BYTES
    ) as ws_server:
        bound = ws_server.sockets[0].getsockname()[1]
        print(f"ready on ws://{host}:{bound}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    return peer_main(
        "python -m relay.bench.peer_broadcast",
        "bare websockets broadcast server (the fan-out benchmark's baseline)",
        serve_until_signalled,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
