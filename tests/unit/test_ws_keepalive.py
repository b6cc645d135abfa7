"""WsWire.keepalive: one ping per turn, written as a frame; a ping still unanswered at the
next turn means the client is gone; a backed-up socket is neither pinged nor judged."""

from __future__ import annotations

from typing import cast

from websockets.frames import Frame, Opcode
from websockets.protocol import State

from relay.adapters.http_server import EdgeConnection
from relay.adapters.wire import PING_FRAME, WsWire


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        self.written.append(data)


class _Protocol:
    state = State.OPEN


class _Ws:
    def __init__(self) -> None:
        self.protocol = _Protocol()
        self.transport = _Transport()
        self.pongs = 0


def _wire() -> tuple[WsWire, _Ws]:
    ws = _Ws()
    return WsWire(cast(EdgeConnection, ws)), ws


def test_an_answered_ping_is_followed_by_the_next_and_an_unanswered_one_fails() -> None:
    wire, ws = _wire()
    assert wire.keepalive()
    assert ws.transport.written == [PING_FRAME]
    ws.pongs += 1  # the pong
    assert wire.keepalive()
    assert ws.transport.written == [PING_FRAME, PING_FRAME]
    assert not wire.keepalive()  # no pong since the last turn
    assert ws.transport.written == [PING_FRAME, PING_FRAME]


def test_a_backed_up_socket_is_not_pinged_nor_judged() -> None:
    wire, ws = _wire()
    assert wire.keepalive()
    ws.pongs += 1
    ws.transport.buffered = 70_000  # what it has not read yet: a pong would wait behind it
    assert wire.keepalive()  # not pinged (the writer's deadline is what judges it now)
    assert wire.keepalive()  # and so not judged on a ping it never got
    assert ws.transport.written == [PING_FRAME]
    ws.transport.buffered = 0
    assert wire.keepalive()  # pinged again, from now on judged again
    assert ws.transport.written == [PING_FRAME, PING_FRAME]
    assert not wire.keepalive()


def test_a_closing_connection_is_left_alone() -> None:
    wire, ws = _wire()
    ws.protocol.state = State.CLOSING
    assert wire.keepalive()
    ws.protocol.state = State.OPEN
    ws.transport.closing = True  # aborted by the relay, websockets not told yet
    assert wire.keepalive()
    assert ws.transport.written == []


def test_the_ping_frame_is_what_websockets_would_send() -> None:
    assert Frame(Opcode.PING, b"").serialize(mask=False) == PING_FRAME
