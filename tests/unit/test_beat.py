"""The beat on ``rlyh.v1.<region>``: one Struct for federation's and relays' beats, and a
decoder that refuses anything else with ``BadBeat`` only (NATS is not trusted blindly)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.logformat import (
    MAX_BEAT_BYTES,
    BadBeat,
    Beat,
    decode_beat,
    encode_beat,
)
from relay.adapters.directory import _known_relay
from relay.core.redirect import KnownRelay

US = "us-east"


def test_federation_beat_on_the_wire() -> None:
    assert encode_beat(Beat(region=US, t=1.5)) == b'{"region":"us-east","t":1.5}'


def test_relay_beat_on_the_wire() -> None:
    beat = Beat(region=US, relay="us-2", url="ws://10.0.0.2:8701/v1/ws", state="full", t=2.0)
    assert json.loads(encode_beat(beat)) == {
        "region": US,
        "relay": "us-2",
        "url": "ws://10.0.0.2:8701/v1/ws",
        "state": "full",
        "t": 2.0,
    }
    assert decode_beat(encode_beat(beat)) == beat


def test_what_older_senders_leave_out_reads_as_meant() -> None:
    beat = decode_beat(b'{"relay":"us-2","url":"wss://x/v1/ws"}')
    assert _known_relay(beat, US) == KnownRelay(US, "us-2", "wss://x/v1/ws", "up")
    assert decode_beat(b'{"region":"us-east","t":1,"new_field":[1]}') == Beat(region=US, t=1.0)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[1,2]",
        b"null",
        b"\xff",
        b'{"region":7}',
        b'{"t":"now"}',
        b'{"relay":""}',
        b'{"relay":7,"url":"ws://x/v1/ws"}',
        b'{"relay":"r","url":"ws://x/v1/ws","state":"sleepy"}',
        b'{"relay":"' + b"r" * 129 + b'","url":"ws://x/v1/ws"}',
        b'{"relay":"r","url":"ws://x/' + b"a" * 2100 + b'"}',
        b'{"region":"' + b"x" * MAX_BEAT_BYTES + b'"}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_malformed_beats_are_refused(payload: bytes) -> None:
    with pytest.raises(BadBeat):
        decode_beat(payload)


@pytest.mark.parametrize(
    "beat",
    [
        Beat(region=US, t=1.0),  # federation's: the region is alive, no relay named
        Beat(relay="r", url="http://x/v1/ws"),
        Beat(relay="r", url="ws:///v1/ws"),
    ],
)
def test_beats_that_name_no_reachable_relay(beat: Beat) -> None:
    assert _known_relay(beat, US) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_bad_beat(payload: bytes) -> None:
    with contextlib.suppress(BadBeat):
        decode_beat(payload)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["region", "relay", "url", "state", "t", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    )
)
def test_arbitrary_objects_raise_only_bad_beat(doc: dict[str, object]) -> None:
    try:
        beat = decode_beat(json.dumps(doc).encode())
    except BadBeat:
        return
    _known_relay(beat, US)  # and what decodes never breaks the directory
