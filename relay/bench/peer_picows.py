"""``peer_broadcast`` on picows: the same bare broadcast server, another WebSocket library.

``relaynet bench compare --systems python,picows`` sets the two side by side to
measure the WebSocket layer itself (issue #10): picows is a Cython asyncio
WebSocket library with a callback interface (``WSListener``) instead of
websockets' coroutine per connection. Everything else is ``peer_broadcast``'s:
the relay's own frames, decoded with its decoder (and validation) and encoded
with its encoders; ``subscribe`` and ``publish`` only; a publish is acked at
once and its message frame, encoded once, goes to every subscriber of the
channel; nothing is stored; no backpressure towards subscribers (a slow one's
frames pile up in its write buffer); a keepalive ping every 20 s, 20 s to
answer, as websockets' defaults; text frames decoded to ``str`` as websockets
hands them over; a fragmented message reassembled up to the same 1 MiB limit.

The fan-out writes one buffer to every subscriber with
``WSTransport.send_reuse_external_bytearray``: picows writes the frame header
into the headroom in front of the payload and sends header and payload
straight from that buffer, the documented way to send without copying the
payload (``send`` copies it into the library's write buffer first).

    python -m relay.bench.peer_picows --port 0

prints ``ready on ws://127.0.0.1:<port>`` once listening and runs until
SIGTERM or SIGINT, then says goodbye (close code 1001) to every client.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import msgspec
from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSProtocolError,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

from relay.bench.peer_rooms import (
    MAX_FRAME_BYTES,
    PING_INTERVAL_S,
    PeerRooms,
    peer_main,
    stop_signal,
)

PING_TIMEOUT_S = 20.0  # websockets' default, which peer_broadcast keeps
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 10.0
# picows keeps a read buffer per connection, 16 KiB to start with by default: that doubled the
# memory of an idle connection (29.9 KB against websockets' 15.1, 10,000 idle connections of
# `bench compare`). It grows as needed, so start it at picows' minimum; websockets keeps none
# between reads.
READ_BUFFER_BYTES = 2048
HEADROOM = 14  # bytes picows needs in front of a payload for the longest frame header
_encode_into = msgspec.json.Encoder().encode_into
_TEXT = WSMsgType.TEXT


class BroadcastServer:
    """The rooms, on picows, and every open connection (to close at exit)."""

    def __init__(self) -> None:
        self.rooms: PeerRooms[WSTransport] = PeerRooms("peer-picows")
        self.connections: set[WSTransport] = set()

    def listener(self, request: WSUpgradeRequest) -> Connection:
        return Connection(self)

    def dispatch(self, transport: WSTransport, raw: str | bytes, subscribed: set[str]) -> None:
        reply, fan_out = self.rooms.receive(transport, raw, subscribed)
        transport.send(_TEXT, reply)
        if fan_out is None:
            return
        members, message = fan_out
        # Encoded once, behind room for the header; every send writes its (same) header there
        # and sends from this buffer, copying only what the socket does not take at once.
        frame = bytearray(HEADROOM)
        _encode_into(message, frame, HEADROOM)
        for member in members:
            member.send_reuse_external_bytearray(_TEXT, frame, HEADROOM)

    def forget(self, transport: WSTransport, subscribed: set[str]) -> None:
        self.connections.discard(transport)
        self.rooms.forget(transport, subscribed)


class Connection(WSListener):
    """One client: picows calls these back from the event loop, one frame at a time."""

    def __init__(self, server: BroadcastServer) -> None:
        super().__init__()
        self.server = server
        self.subscribed: set[str] = set()
        self.transport: WSTransport | None = None
        self._fragments = bytearray()  # of a fragmented message (or a binary one)
        self._assembling: WSMsgType | None = None  # the type of the message being reassembled

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.server.connections.add(transport)
        transport.send(_TEXT, self.server.rooms.hello())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if frame.fin and msg_type is _TEXT and self._assembling is None:  # a whole text message
            try:
                raw = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                raise WSProtocolError(WSCloseCode.INVALID_TEXT, "invalid UTF-8") from None
            self.server.dispatch(transport, raw, self.subscribed)
        elif msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            self._data_frame(transport, frame)
        # PONGs are picows' own (auto ping); PINGs it answers itself.

    def _data_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """A binary message, or a fragment: reassembled as websockets does."""
        if frame.msg_type is WSMsgType.CONTINUATION:
            if self._assembling is None:
                raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
        elif self._assembling is not None:
            raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "expected a continuation frame")
        else:
            self._assembling = frame.msg_type
        if len(self._fragments) + frame.payload_size > MAX_FRAME_BYTES:
            raise WSProtocolError(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
        self._fragments += frame.get_payload_as_memoryview()
        if not frame.fin:
            return
        payload, msg_type = bytes(self._fragments), self._assembling
        self._fragments.clear()
        self._assembling = None
        if msg_type is _TEXT:
            try:
                raw: str | bytes = payload.decode()
            except UnicodeDecodeError:
                raise WSProtocolError(WSCloseCode.INVALID_TEXT, "invalid UTF-8") from None
        else:
            raw = payload
        self.server.dispatch(transport, raw, self.subscribed)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.server.forget(transport, self.subscribed)

    # As websockets' awaited send: while this client's write buffer is over the limit,
    # read nothing more from it (a publisher that does not read its acks stops publishing).
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.underlying_transport.resume_reading()


async def _close_all(server: BroadcastServer) -> None:
    """Close code 1001 to every client, then wait (bounded) for them to be gone."""
    transports = list(server.connections)
    for transport in transports:
        transport.send_close(WSCloseCode.GOING_AWAY)
        transport.disconnect()
    if transports:
        waits = [asyncio.ensure_future(t.wait_disconnected()) for t in transports]
        _, pending = await asyncio.wait(waits, timeout=CLOSE_TIMEOUT_S)
        for transport in transports:
            if not transport.is_disconnected:
                transport.disconnect(graceful=False)
        for wait in pending:
            wait.cancel()


async def serve_until_signalled(host: str, port: int) -> None:
    stop = stop_signal()
    server = BroadcastServer()
    ws_server = await ws_create_server(
        server.listener,
        host,
        port,
        websocket_handshake_timeout=OPEN_TIMEOUT_S,
        enable_auto_ping=True,
        auto_ping_idle_timeout=PING_INTERVAL_S,
        auto_ping_reply_timeout=PING_TIMEOUT_S,
        auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
        max_frame_size=MAX_FRAME_BYTES,
        read_buffer_init_size=READ_BUFFER_BYTES,
    )
    try:
        bound = ws_server.sockets[0].getsockname()[1]
        print(f"ready on ws://{host}:{bound}", flush=True)
        await stop.wait()
    finally:
        ws_server.close()
        await _close_all(server)
        await ws_server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    return peer_main(
        "python -m relay.bench.peer_picows",
        "bare picows broadcast server (peer_broadcast on another WebSocket library)",
        serve_until_signalled,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
