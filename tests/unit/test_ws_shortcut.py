"""The read shortcut for client text frames (``relay.adapters.wsframe``) against websockets'
own parser: for any stream of client frames, cut into reads anywhere, the messages, the
order, the replies (pongs, closes) and the error that ends the connection are websockets'
own. Frames are drawn to hit every way out of the shortcut: control frames, fragments,
extension bits, unmasked frames, 16- and 64-bit lengths, oversized frames, bad UTF-8."""

from __future__ import annotations

import itertools
import os

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame
from websockets.protocol import SERVER, Protocol, State
from websockets.speedups import apply_mask

from relay.adapters import wsframe
from relay.adapters.http_server import HttpConnection, edge_connections

MAX_SIZE = 400  # the protocol's limit in these runs: frames above it are refused

OPCODES = [1, 1, 1, 1, 2, 0, 8, 9, 10, 3]


@st.composite
def client_frames(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):  # half are what a publisher sends: final masked text frames
        opcode, fin, rsv, masked = 1, True, 0, True
    else:
        opcode = draw(st.sampled_from(OPCODES))
        fin = draw(st.booleans()) if opcode in (0, 1, 2) else True
        fin = fin if draw(st.integers(0, 3)) else not fin
        rsv = draw(st.sampled_from([0, 0, 0, 0, 0x40, 0x20, 0x10]))
        masked = draw(st.integers(0, 15)) > 0
    if opcode == 8:
        payload = draw(
            st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8bye", b"\x03\xe8\xff", b"\x00"])
        )
    elif opcode in (9, 10):
        payload = draw(st.binary(max_size=20))
    else:
        text = draw(st.text(max_size=60)).encode()
        payload = draw(st.sampled_from([text, text * 8, text + b"\xc3", b"\xff" + text]))
        if draw(st.integers(0, 9)) == 0:
            payload = b"x" * draw(st.integers(MAX_SIZE - 2, MAX_SIZE + 2))
    width = draw(st.sampled_from([None, None, None, 126, 127]))
    size = len(payload)
    if width is None:
        width = 127 if size > 0xFFFF else 126 if size > 125 else size
    head = bytes((0x80 * fin | rsv | opcode,))
    if width == 126:
        head += bytes(((0x80 if masked else 0) | 126,)) + size.to_bytes(2, "big")
    elif width == 127:
        head += bytes(((0x80 if masked else 0) | 127,)) + size.to_bytes(8, "big")
    else:
        head += bytes(((0x80 if masked else 0) | size,))
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


def _events(protocol: Protocol) -> list[tuple[int, bytes, bool]]:
    out = []
    for event in protocol.events_received():
        assert isinstance(event, Frame)
        out.append((int(event.opcode), bytes(event.data), event.fin))
    return out


def _new() -> Protocol:
    return Protocol(SERVER, state=State.OPEN, max_size=MAX_SIZE)


@settings(max_examples=400, deadline=None)
@given(
    frames=st.lists(client_frames(), max_size=12),
    cuts=st.lists(st.integers(0, 5000), max_size=8),
)
def test_reads_through_the_shortcut_are_websockets_own(
    frames: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(frames)
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    reads = [stream[a:b] for a, b in itertools.pairwise(points)]

    reference = _new()
    expected: list[tuple[int, bytes, bool]] = []
    for data in reads:
        reference.receive_data(data)
        expected += _events(reference)
    reference.receive_eof()
    expected += _events(reference)

    tried = _new()
    got: list[tuple[int, bytes, bool]] = []

    def parse(data: bytes) -> None:
        tried.receive_data(data)
        got.extend(_events(tried))

    kept = b""
    for data in reads:
        kept = wsframe.read_with_shortcut(
            tried, kept + data, lambda p: got.append((1, p, True)), parse
        )
        assert len(kept) <= wsframe.KEEP_MAX_BYTES
    if kept:  # the end of the stream: what was kept goes to the parser, then the EOF
        parse(kept)
    tried.receive_eof()
    got += _events(tried)

    assert got == expected
    assert type(tried.parser_exc) is type(reference.parser_exc)
    assert str(tried.parser_exc) == str(reference.parser_exc)
    assert tried.data_to_send() == reference.data_to_send()
    assert tried.state is reference.state
    assert tried.close_rcvd == reference.close_rcvd


def _read(protocol: Protocol, data: bytes) -> tuple[list[bytes], list[bytes], bytes]:
    """(delivered payloads, bytes given to the parser, kept)"""
    delivered: list[bytes] = []
    parsed: list[bytes] = []

    def parse(chunk: bytes) -> None:
        parsed.append(chunk)
        protocol.receive_data(chunk)

    kept = wsframe.read_with_shortcut(protocol, data, delivered.append, parse)
    return delivered, parsed, kept


def test_a_stream_of_plain_publishes_skips_the_parser_whole() -> None:
    """What the shortcut is for: a pipelining publisher's reads, cut mid-frame, with a
    pong now and then (the relay's keepalive): only the pongs reach the parser."""
    payload = b'{"op":"publish","channel":"news","data":"' + b"x" * 100 + b'"}'
    mask = b"\x01\x02\x03\x04"
    head = bytes((0x81, 0x80 | 126)) + len(payload).to_bytes(2, "big")
    frame = head + mask + apply_mask(payload, mask)
    pong = bytes((0x8A, 0x84)) + mask + apply_mask(b"ping", mask)
    stream = (frame * 10 + pong) * 5
    protocol = _new()
    taken: list[bytes] = []
    parsed: list[bytes] = []
    kept = b""
    for start in range(0, len(stream), 1000):
        delivered, to_parser, kept = _read(protocol, kept + stream[start : start + 1000])
        taken += delivered
        parsed += to_parser
    assert taken == [payload] * 50 and kept == b""
    assert b"".join(parsed) == pong * 5
    assert _events(protocol) == [(10, b"ping", True)] * 5


def test_the_shortcut_waits_for_websockets_parser_to_finish_a_frame() -> None:
    """A frame websockets started (a large one, given to it as it came) is its to finish,
    and so is what follows in the same read; the shortcut starts again once the parser is
    between frames."""
    protocol = Protocol(SERVER, state=State.OPEN, max_size=1 << 20)
    mask = b"\x00\x00\x00\x00"
    big = b"y" * 70_000
    large = bytes((0x81, 0x80 | 127)) + len(big).to_bytes(8, "big") + mask + big
    text = bytes((0x81, 0x82)) + mask + b"hi"
    assert _read(protocol, large[:1000]) == ([], [large[:1000]], b"")
    assert _read(protocol, large[1000:] + text) == ([], [large[1000:] + text], b"")
    assert [(op, len(data)) for op, data, _ in _events(protocol)] == [
        (1, 70_000),
        (1, 2),
    ]
    assert _read(protocol, text + text[:3]) == ([b"hi"], [], text[:3])


@pytest.mark.anyio
async def test_a_real_connection_reads_through_the_shortcut() -> None:
    """With the websockets installed, over a real socket: the parser's state is what the
    shortcut looks for (an upgrade that changed it would quietly turn the shortcut off),
    and messages arrive whole and in order."""
    taken: list[bytes] = []

    def no_http() -> HttpConnection:
        raise AssertionError("a WebSocket upgrade is never plain HTTP")

    class Counting(edge_connections(no_http, 10.0)):  # type: ignore[misc]
        """The relay's connection class, counting what the shortcut hands over."""

        __slots__ = ()

        def _put_text(self, payload: bytes) -> None:
            taken.append(payload)
            super()._put_text(payload)

    got: list[str] = []
    done = anyio.Event()
    sent = [f'{{"n": {i}, "pad": "{"x" * (i % 300)}"}}' for i in range(500)]

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            got.append(str(message))
            if len(got) == len(sent):
                done.set()

    listening = serve(handler, "127.0.0.1", 0, create_connection=Counting, compression=None)
    async with listening as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            for message in sent:
                await client.send(message)
            await client.ping()
            with anyio.fail_after(10):
                await done.wait()
    assert got == sent
    assert [payload.decode() for payload in taken] == sent
