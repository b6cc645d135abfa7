"""Presence messages on NATS: round trips, and refusal of what is not one of the region's."""

from __future__ import annotations

import msgspec
import pytest

from federation.presence_format import (
    BadPresence,
    MemberRecord,
    PresenceBeat,
    PresenceChange,
    PresenceSnapshot,
    decode_presence,
    encode_presence,
    region_of_subject,
)
from relay.core.presence import Member, MemberKey
from relay.protocol.frames import PresenceEventFrame, presence_event_frame, presence_frame


def test_round_trips_with_and_without_data() -> None:
    change = PresenceChange(
        origin="us-east/r1",
        region="us-east",
        epoch=7,
        seq=3,
        channel="room",
        client_id="ann",
        connection="c1",
        present=False,
    )
    snapshot = PresenceSnapshot(
        origin="us-east/r1",
        region="us-east",
        epoch=7,
        seq=4,
        channel="room",
        members=[
            MemberRecord("bob", "c2", 4),
            MemberRecord("cy", "c3", 2, msgspec.Raw(b'{"a":1}')),
        ],
    )
    beat = PresenceBeat(origin="us-east/r1", region="us-east", epoch=7)
    for message in (change, snapshot, beat):
        decoded = decode_presence(encode_presence(message), "us-east")
        assert msgspec.json.encode(decoded) == encode_presence(message)
    decoded_snapshot = decode_presence(encode_presence(snapshot), "us-east")
    assert isinstance(decoded_snapshot, PresenceSnapshot)
    assert decoded_snapshot.members[0].data is msgspec.UNSET
    assert bytes(decoded_snapshot.members[1].data) == b'{"a":1}'  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b'{"type":"beat","origin":"x/1","region":"eu-west","epoch":1}',  # another region's
        b'{"type":"beat","origin":"","region":"us-east","epoch":1}',
        b'{"type":"change","origin":"x","region":"us-east","epoch":-1,"seq":1,"channel":"c",'
        b'"client_id":"a","connection":"b","present":true}',
        b"x" * 300_000,
    ],
)
def test_what_is_not_a_presence_message_of_the_region_is_refused(payload: bytes) -> None:
    with pytest.raises(BadPresence):
        decode_presence(payload, "us-east")


def test_subjects() -> None:
    assert region_of_subject("rlyp.v1.us-east") == "us-east"
    assert region_of_subject("rlyp.v1.us-east.extra") is None
    assert region_of_subject("rlyh.v1.us-east") is None


def test_client_frames_leave_out_absent_data() -> None:
    member = Member(MemberKey("ann", "c1"), "us-east", "r1")
    assert b'"data"' not in presence_frame(None, "room", [member])
    with_data = Member(MemberKey("ann", "c1"), "us-east", "r1", b'{"mood":1}')
    from relay.core.presence import Action, PresenceEvent

    frame = presence_event_frame("room", PresenceEvent(Action.ENTER, with_data))
    decoded = msgspec.json.decode(frame, type=PresenceEventFrame)
    assert bytes(decoded.member.data) == b'{"mood":1}'
