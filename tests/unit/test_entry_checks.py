"""What readers accept from NATS as a log entry (``federation.entry_checks``)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.entry_checks import BadEntry, _plainly_valid, decode_checked, sequence_header
from federation.logformat import StoredMessage, encode_stored
from federation.vclock import ClockError, VectorClock

REGIONS = frozenset({"us-east", "eu-west"})


def body(origin: str, ts: dict[str, int], pos: dict[str, int] | None = None) -> bytes:
    return encode_stored(StoredMessage("m", msgspec.Raw(b"1"), origin, ts, pos or ts))


@given(
    origin=st.sampled_from(sorted(REGIONS)),
    own=st.integers(1, 2**53 - 1),
    other=st.integers(0, 2**53 - 1),
    ahead=st.integers(0, 5),
)
def test_what_writers_store_is_accepted(origin: str, own: int, other: int, ahead: int) -> None:
    (peer,) = REGIONS - {origin}
    ts = {origin: own, peer: other}
    pos = {origin: own, peer: min(other + ahead, 2**53 - 1)}
    msg = decode_checked(body(origin, ts, pos), REGIONS, known_dependencies=True)
    assert msg.origin == origin and msg.ts == ts


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "undecodable"),
        (b"{}", "undecodable"),
        (b'{"id":"m","data":1,"origin":"us-east","ts":{"us-east":"1"},"pos":{}}', "undecodable"),
        (body("mars", {"mars": 424242}), "origin 'mars'"),
        (body("us-east", {"us-east": -1}), "ts is not a vector clock"),
        (body("us-east", {"us-east": 2**53}), "ts is not a vector clock"),
        (body("us-east", {"US EAST": 1, "us-east": 1}), "ts is not a vector clock"),
        (body("us-east", {"us-east": 1}, {"us-east": 1, "x y": 1}), "pos is not a vector clock"),
        (body("us-east", {"eu-west": 1}), "no counter for its origin"),
        (body("us-east", {"us-east": 5}, {"us-east": 4}), "does not include the entry"),
    ],
)
def test_malformed_entries_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadEntry, match=reason) as refused:
        decode_checked(raw, REGIONS)
    assert len(str(refused.value)) < 300


def test_a_peer_message_depending_on_an_unknown_region_is_refused() -> None:
    raw = body("eu-west", {"eu-west": 1, "mars": 3}, {"eu-west": 1, "mars": 3})
    assert decode_checked(raw, REGIONS).origin == "eu-west"  # the region's own log: kept
    with pytest.raises(BadEntry, match="depends on 'mars'"):
        decode_checked(raw, REGIONS, known_dependencies=True)


@pytest.mark.parametrize("raw", [None, "", "-1", "1e9", " 7", "9" * 30, "٣"])
def test_sequence_headers_are_plain_numbers(raw: str | None) -> None:
    headers = {} if raw is None else {"Nats-Sequence": raw}
    with pytest.raises(BadEntry):
        sequence_header(headers, "Nats-Sequence", minimum=1)
    assert sequence_header({"Nats-Sequence": "42"}, "Nats-Sequence", minimum=1) == 42


_keys = st.one_of(
    st.sampled_from(["us-east", "eu-west", "a", "a" * 32, "a" * 33, "US", "x y", "1a", "é", ""]),
    st.text(max_size=6),
)
_counters = st.one_of(st.integers(-3, 3), st.sampled_from([2**53 - 1, 2**53, -(2**60)]))


@given(st.dictionaries(_keys, _counters, max_size=4))
def test_the_quick_clock_check_accepts_exactly_what_parse_accepts(clock: dict[str, int]) -> None:
    try:
        VectorClock.parse(clock)
        parses = True
    except ClockError:
        parses = False
    assert _plainly_valid(clock) == parses
