"""WebSocket frames the relay handles itself, around websockets.

Writing: server-to-client frames are not masked and the edge runs without
compression, so the bytes of a frame depend only on its payload: fan-out builds
them once per message (the cache holds the last payload, which every subscriber
of a channel asks for in turn) and each subscriber's socket gets them as they are.

Reading: a publisher's frames are final, masked text frames; those are unmasked
here and handed to websockets' message queue as its parser would have
(``read_with_shortcut``), and every other frame goes to that parser, whole and in
order. ``tests/unit/test_ws_shortcut.py`` holds this to websockets' own parser
for any stream of frames cut into reads anywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.protocol import Protocol, State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

_last_payload: bytes | None = None
_last_frame = b""


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 5.2) carrying ``payload`` (UTF-8 JSON)."""
    global _last_payload, _last_frame
    if payload is _last_payload:
        return _last_frame
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    _last_payload, _last_frame = payload, header + payload
    return _last_frame


# --- reading: client frames that need nothing of websockets' parser state -----------------

# A frame's first byte for a final text frame with no extension bits (FIN, opcode 1).
_FINAL_TEXT = 0x81
_MASKED = 0x80
# Frames above this (64-bit lengths among them) go to websockets' parser as they come.
SHORTCUT_MAX_BYTES = 0xFFFF
# What a connection may keep of a frame still arriving: the largest frame taken whole.
KEEP_MAX_BYTES = SHORTCUT_MAX_BYTES + 14


def take_text_frames(buf: bytes, limit: int) -> tuple[list[bytes], int]:
    """The complete client frames at the start of ``buf`` that any WebSocket parser in the
    open state reads the same way whatever came before: final, unextended text frames,
    masked, with at most ``limit`` bytes of payload (``limit`` <= ``SHORTCUT_MAX_BYTES``).
    Returns their unmasked payloads and the offset just after the last one."""
    payloads: list[bytes] = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        length = buf[pos + 1]
        if buf[pos] != _FINAL_TEXT or not length & _MASKED:
            break
        length &= 0x7F
        start = pos + 6
        if length == 126:
            if end - pos < 4:
                break
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            start = pos + 8
        elif length == 127:
            break
        stop = start + length
        if length > limit or stop > end:
            break
        payloads.append(apply_mask(buf[start:stop], buf[start - 4 : start]))
        pos = stop
    return payloads, pos


def frame_size(buf: bytes) -> int | None:
    """The size of the frame ``buf`` starts with, header included; None until its header
    is all there."""
    if len(buf) < 2:
        return None
    length = buf[1] & 0x7F
    head = 6 if buf[1] & _MASKED else 2
    if length == 126:
        if len(buf) < 4:
            return None
        return head + 2 + int.from_bytes(buf[2:4], "big")
    if length == 127:
        if len(buf) < 10:
            return None
        return head + 8 + int.from_bytes(buf[2:10], "big")
    return head + length


_AT_EOF = StreamReader.at_eof.__code__


def _at_frame_boundary(protocol: Protocol) -> bool:
    """websockets' parser waits for the first byte of a frame, with nothing buffered and no
    fragmented message under way: it would read the next frame from scratch."""
    if protocol.state is not State.OPEN or protocol.reader.buffer:
        return False
    if protocol.current_size is not None or protocol.parser_exc is not None:
        return False
    if protocol.extensions or protocol.debug:
        return False
    generator = protocol.parser
    # The innermost generator it waits in: at_eof at the top of its frame loop, or
    # read_exact in the middle of a frame.
    while (inner := getattr(generator, "gi_yieldfrom", None)) is not None:
        generator = inner
    return getattr(generator, "gi_code", None) is _AT_EOF


def shortcut_limit(protocol: Protocol) -> int:
    limits = [SHORTCUT_MAX_BYTES, protocol.max_message_size, protocol.max_fragment_size]
    return min(limit for limit in limits if limit is not None)


def read_with_shortcut(
    protocol: Protocol,
    data: bytes,
    deliver: Callable[[bytes], None],
    parse: Callable[[bytes], None],
) -> bytes:
    """Read ``data`` (what was kept last time first): plain text messages go to ``deliver``
    without websockets' parser, whose cost per frame (a generator per read, a Frame and
    its checks, an event) was the largest part of reading a publish; every other frame
    goes, whole and in order, to ``parse`` (websockets' own ``data_received``), so every
    error and every control frame is websockets' own. Returns what to keep for the next
    read: the start of a frame still arriving (at most ``KEEP_MAX_BYTES``).

    Whenever websockets' parser is not between frames (it holds part of a large frame,
    the connection is closing), everything goes to it, until it is between frames again.
    """
    limit = shortcut_limit(protocol)
    while data:
        if not _at_frame_boundary(protocol):
            parse(data)
            return b""
        payloads, used = take_text_frames(data, limit)
        for payload in payloads:
            deliver(payload)
        if used:
            data = data[used:]
            if not data:
                break
        size = frame_size(data)
        if size is None or len(data) < size <= KEEP_MAX_BYTES:
            return data  # a frame still arriving: read it whole next time
        if size > len(data):  # large: websockets reads it as it comes
            parse(data)
            return b""
        parse(data[:size])  # a whole frame the shortcut does not take
        data = data[size:]
    return b""
