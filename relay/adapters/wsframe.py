"""WebSocket text frames built once per message and shared by every subscriber.

Server-to-client frames are not masked and the edge runs without compression,
so the bytes of a frame depend only on its payload: fan-out builds them once
per message (the cache holds the last payload, which every subscriber of a
channel asks for in turn) and each subscriber's socket gets them as they are.
"""

from __future__ import annotations

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
