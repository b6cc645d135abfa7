"""Channel names: what a client may name, validated in one place.

A channel name is 1-200 characters from ``A-Z a-z 0-9 _ - : @ / = + ! ~ . ,``;
how a channel maps onto NATS subjects and streams is the region log's format,
``federation.logformat``, re-exported here for the relay's convenience.
"""

from __future__ import annotations

import re
from typing import NewType

from federation.logformat import (
    decode_token,
    dedupe_key,
    encode_token,
    live_subject,
    live_subjects,
    store_subject,
    stream_name,
    stream_subjects,
    total_stream_name,
    total_subjects,
)

Channel = NewType("Channel", str)

MAX_CHANNEL_LENGTH = 200
_CHANNEL_RE = re.compile(rf"[A-Za-z0-9_\-:@/=+!~.,]{{1,{MAX_CHANNEL_LENGTH}}}")
_ALLOWED_DESCRIPTION = "1-200 characters from A-Z a-z 0-9 _ - : @ / = + ! ~ . ,"


class InvalidChannel(ValueError):
    """The client named a channel we cannot serve."""


def validate_channel(name: object) -> Channel:
    if not isinstance(name, str):
        raise InvalidChannel("channel must be a string")
    if not _CHANNEL_RE.fullmatch(name):  # not match(): '$' would let a final newline in
        raise InvalidChannel(f"invalid channel name {name[:60]!r}: use {_ALLOWED_DESCRIPTION}")
    return Channel(name)


__all__ = [
    "MAX_CHANNEL_LENGTH",
    "Channel",
    "InvalidChannel",
    "decode_token",
    "dedupe_key",
    "encode_token",
    "live_subject",
    "live_subjects",
    "store_subject",
    "stream_name",
    "stream_subjects",
    "total_stream_name",
    "total_subjects",
    "validate_channel",
]
