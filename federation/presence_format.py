"""Presence on NATS: what relays tell each other about who is on which channel. Pure.

Presence is not stored: every relay (an *origin*) publishes changes to its own members,
periodic snapshots of them and beats on its region's subject ``rlyp.v1.<region>``
(core NATS), every relay of the region listens, and each federation link forwards its
peer region's subject onto the local NATS as it forwards beats, so every relay hears
every origin. The merge (``relay.core.presence``) makes order, loss and repeats
harmless; this module only defines the messages and refuses anything else, since what
arrives over NATS is not trusted blindly (sizes bounded, the region must be the
subject's).
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from msgspec import UNSET, UnsetType

MAX_PRESENCE_BYTES: Final = 256 * 1024  # a snapshot of one origin's members of one channel
MAX_ID: Final = 200  # client ids, connection ids, origins, channels

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]


def presence_subject(region: str) -> str:
    return f"rlyp.v1.{region}"


PRESENCE_SUBJECTS: Final = "rlyp.v1.*"


class MemberRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    client_id: Id
    connection: Id
    seq: int  # the origin's seq of the change that last touched this member
    data: msgspec.Raw | UnsetType = UNSET  # no data: left out


class PresenceChange(msgspec.Struct, frozen=True, tag="change", kw_only=True, omit_defaults=True):
    origin: Id
    region: Id
    epoch: int
    seq: int
    channel: Id
    client_id: Id
    connection: Id
    present: bool  # false: a leave
    data: msgspec.Raw | UnsetType = UNSET  # no data: left out


class PresenceSnapshot(msgspec.Struct, frozen=True, tag="snapshot", kw_only=True):
    origin: Id
    region: Id
    epoch: int
    seq: int
    channel: Id
    members: list[MemberRecord]


class PresenceBeat(msgspec.Struct, frozen=True, tag="beat", kw_only=True):
    origin: Id
    region: Id
    epoch: int


PresenceMessage = PresenceChange | PresenceSnapshot | PresenceBeat


class BadPresence(ValueError):
    """A payload on a presence subject that is not a presence message of its region."""


_decoder: Final = msgspec.json.Decoder(PresenceMessage)
encode_presence: Final = msgspec.json.Encoder().encode


def decode_presence(payload: bytes, region: str) -> PresenceMessage:
    """The message in ``payload`` if it is one from ``region``; ``BadPresence`` otherwise."""
    if len(payload) > MAX_PRESENCE_BYTES:
        raise BadPresence(f"{len(payload)} bytes; at most {MAX_PRESENCE_BYTES}")
    try:
        message = _decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise BadPresence(str(exc)) from None
    if message.region != region:
        raise BadPresence(f"region {message.region!r} on the subject of {region!r}")
    if message.epoch < 0 or (not isinstance(message, PresenceBeat) and message.seq < 0):
        raise BadPresence("negative epoch or seq")
    return message


def region_of_subject(subject: str) -> str | None:
    parts = subject.split(".")
    return parts[2] if len(parts) == 3 and parts[:2] == ["rlyp", "v1"] else None
