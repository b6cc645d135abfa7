"""Channel names, and how they map onto NATS subjects and JetStream streams.

One pure module owns the mapping so that every relay of a region, and later
every region, computes the same subject for the same channel.

A channel name is 1-200 characters from ``A-Z a-z 0-9 _ - : @ / = + ! ~ . ,``.
A NATS subject token cannot hold ``.``, so ``.`` is written ``%2E`` (``%`` is
not allowed in names, which keeps the encoding injective and reversible).

Subjects
    ``rly.v1.<region>.<namespace>.<encoded-channel>``   stored messages (stream input)
    ``rlyl.v1.<region>.<namespace>.<encoded-channel>``  JetStream's republish of what
                                                       was stored: the live feed
Streams
    ``RLY_<REGION>_<NAMESPACE>`` one per namespace rule, so each rule has its own
    retention (max age, max messages per channel).
"""

from __future__ import annotations

import re
from typing import NewType

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


def encode_token(channel: Channel) -> str:
    return channel.replace(".", "%2E")


def decode_token(token: str) -> Channel:
    return Channel(token.replace("%2E", "."))


def stream_name(region: str, namespace: str) -> str:
    return f"RLY_{region.upper()}_{namespace.upper()}"


def stream_subjects(region: str, namespace: str) -> str:
    return f"rly.v1.{region}.{namespace}.>"


def live_subjects(region: str, namespace: str) -> str:
    return f"rlyl.v1.{region}.{namespace}.>"


def store_subject(region: str, namespace: str, channel: Channel) -> str:
    return f"rly.v1.{region}.{namespace}.{encode_token(channel)}"


def live_subject(region: str, namespace: str, channel: Channel) -> str:
    return f"rlyl.v1.{region}.{namespace}.{encode_token(channel)}"


def dedupe_key(channel: Channel, message_id: str) -> str:
    """``Nats-Msg-Id`` value: ids are scoped per channel, and neither part holds a space."""
    return f"{channel} {message_id}"
