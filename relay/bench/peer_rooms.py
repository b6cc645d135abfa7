"""What both bare broadcast peers of the benchmarks do, without their WebSocket library.

``peer_broadcast`` (websockets) and ``peer_picows`` (picows) speak the same subset of protocol
v1 (subscribe, publish) with the relay's own frames and keep nothing: a publish is acked at once
and its message goes to every subscriber of the channel. Only how bytes reach the sockets
differs, so that is all each of them keeps; the rooms and the replies are here, once.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

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

MAX_FRAME_BYTES = 2**20
PING_INTERVAL_S = 20.0  # websockets' default, which both peers keep
# Acks and subscriptions carry an empty position: nothing is stored.
_NO_POSITION = VectorClock()

C = TypeVar("C", bound=Hashable)


class PeerRooms(Generic[C]):
    """Channel -> subscribed connections (``C``: whatever the library calls a connection)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.channels: dict[str, set[C]] = {}
        self._ids = itertools.count(1)
        self._connection_ids = itertools.count(1)

    def hello(self) -> bytes:
        """The ``connected`` frame for a new connection."""
        connection_id = str(next(self._connection_ids))
        return connected_frame("peer", self.name, connection_id, PING_INTERVAL_S, MAX_FRAME_BYTES)

    def receive(
        self, connection: C, raw: str | bytes, subscribed: set[str]
    ) -> tuple[bytes, tuple[set[C], MessageFrame] | None]:
        """The reply to send to ``connection`` first, then what to send to whom, if anything
        (the members are the live set: send before the next ``receive``)."""
        try:
            request = decode_client_frame(raw)
        except ProtocolError as exc:
            return error_frame(exc.code, exc.message, exc.ref), None
        if isinstance(request, Publish):
            message_id = str(next(self._ids))
            channel = request.channel
            ack = ack_frame(request.ref, message_id, channel, _NO_POSITION)
            members = self.channels.get(channel)
            if not members:
                return ack, None
            return ack, (members, MessageFrame(channel, message_id, request.data, "peer", {}, {}))
        if isinstance(request, Subscribe):
            channel = request.channel
            self.channels.setdefault(channel, set()).add(connection)
            subscribed.add(channel)
            return subscribed_frame(request.ref, channel, _NO_POSITION, recovered=False), None
        message = "this server knows only subscribe and publish"
        return error_frame(ErrorCode.UNKNOWN_OP, message, request.ref), None

    def forget(self, connection: C, subscribed: set[str]) -> None:
        for channel in subscribed:
            members = self.channels.get(channel)
            if members is not None:
                members.discard(connection)
                if not members:
                    del self.channels[channel]


def stop_signal() -> asyncio.Event:
    """Set on SIGTERM or SIGINT (the benchmark stops its peer with SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def peer_main(
    prog: str,
    description: str,
    serve_until_signalled: Callable[[str, int], Awaitable[None]],
    argv: Sequence[str] | None,
) -> int:
    """The command line both peers share: ``--host``, ``--port``; prints ``ready on ...``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)

    async def run() -> None:
        await serve_until_signalled(args.host, args.port)

    asyncio.run(run())
    return 0
