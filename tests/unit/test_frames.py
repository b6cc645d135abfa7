"""Client frame decoding (error codes, typed results) and server frame encoding."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.logformat import StoredMessage, decode_stored, encode_stored
from federation.vclock import MAX_COUNTER, VectorClock
from relay.core.channels import Channel
from relay.protocol.errors import TEMPORARY_ERRORS, ErrorCode, ProtocolError
from relay.protocol.frames import (
    DEFAULT_HISTORY_LIMIT,
    KNOWN_OPS,
    MAX_HISTORY_LIMIT,
    MAX_REF_LENGTH,
    AckFrame,
    ConnectedFrame,
    ErrorFrame,
    History,
    HistoryFrame,
    MessageFrame,
    Ping,
    PongFrame,
    Publish,
    RedirectFrame,
    ServerFrame,
    Subscribe,
    SubscribedFrame,
    Unsubscribe,
    UnsubscribedFrame,
    ack_frame,
    connected_frame,
    decode_client_frame,
    error_frame,
    history_frame,
    message_frame,
    pong_frame,
    redirect_frame,
    subscribed_frame,
    unsubscribed_frame,
)


def _j(**fields: object) -> str:
    return json.dumps(fields)


def _decode_error(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(raw)
    return info.value


# --- malformed input -> exact error code ------------------------------------------------

BAD_JSON = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("not json", id="words"),
    pytest.param("{", id="open-brace"),
    pytest.param('{"op":"ping"', id="truncated-object"),
    pytest.param('{"op":"ping",}', id="trailing-comma"),
    pytest.param('{"op":"ping"}}', id="trailing-brace"),
    pytest.param("{'op':'ping'}", id="single-quotes"),
    pytest.param("NaN", id="nan"),
    pytest.param("Infinity", id="infinity"),
    pytest.param('{"op":"ping","ref":NaN}', id="nan-in-object"),
    pytest.param("1 2", id="two-values"),
    pytest.param(b"\xff\xfe", id="bytes-not-utf8"),
    # Truncated documents whose first bytes already fail typed validation: the typed
    # decoder stops before reaching the truncation, the generic re-decode must not escape.
    pytest.param("[", id="truncated-array"),
    pytest.param("[1,", id="truncated-array-item"),
    pytest.param('"ping', id="truncated-string"),
    pytest.param('{"op":5,', id="truncated-after-bad-op"),
    pytest.param('{"op":"nope",', id="truncated-after-unknown-op"),
    pytest.param('{"op":"ping","ref":true,', id="truncated-after-bad-ref"),
    pytest.param('{"op":"subscribe","channel":7,"ref":1', id="truncated-after-bad-field"),
]


@pytest.mark.parametrize("raw", BAD_JSON)
def test_bad_json(raw: str | bytes) -> None:
    assert _decode_error(raw).code is ErrorCode.BAD_JSON


BAD_REQUEST: list[Any] = [
    # not an object / no usable op
    pytest.param("1", None, id="number"),
    pytest.param('"ping"', None, id="string"),
    pytest.param("[]", None, id="array"),
    pytest.param("null", None, id="null"),
    pytest.param("true", None, id="bool"),
    pytest.param("{}", None, id="empty-object"),
    pytest.param(_j(ref=3), 3, id="missing-op"),
    pytest.param(_j(op=None, ref=3), 3, id="null-op"),
    pytest.param(_j(op=5, ref="r"), "r", id="int-op"),
    pytest.param(_j(op=["ping"], ref=3), 3, id="list-op"),
    # ref itself
    pytest.param(_j(op="ping", ref=True), None, id="bool-ref"),
    pytest.param(_j(op="ping", ref=1.5), None, id="float-ref"),
    pytest.param(_j(op="ping", ref={"a": 1}), None, id="object-ref"),
    pytest.param(_j(op="ping", ref="x" * (MAX_REF_LENGTH + 1)), None, id="ref-too-long"),
    # missing / wrongly typed fields
    pytest.param(_j(op="subscribe", ref=1), 1, id="subscribe-no-channel"),
    pytest.param(_j(op="subscribe", channel=5, ref=1), 1, id="subscribe-int-channel"),
    pytest.param(_j(op="subscribe", channel=None, ref=1), 1, id="subscribe-null-channel"),
    pytest.param(_j(op="unsubscribe", ref=1), 1, id="unsubscribe-no-channel"),
    pytest.param(_j(op="unsubscribe", channel=["a"], ref=1), 1, id="unsubscribe-list-chan"),
    pytest.param(_j(op="publish", channel="a", ref=1), 1, id="publish-no-data"),
    pytest.param(_j(op="publish", data=1, ref=1), 1, id="publish-no-channel"),
    pytest.param(_j(op="history", ref="h"), "h", id="history-no-channel"),
    # publish id
    pytest.param(_j(op="publish", channel="a", data=1, id="a b", ref=1), 1, id="id-space"),
    pytest.param(_j(op="publish", channel="a", data=1, id="", ref=1), 1, id="id-empty"),
    pytest.param(_j(op="publish", channel="a", data=1, id="x" * 129, ref=1), 1, id="id-129"),
    pytest.param(_j(op="publish", channel="a", data=1, id=5, ref=1), 1, id="id-int"),
    pytest.param(_j(op="publish", channel="a", data=1, id="é", ref=1), 1, id="id-unicode"),
    pytest.param(_j(op="publish", channel="a", data=1, id="a\tb", ref=1), 1, id="id-tab"),
    pytest.param(_j(op="publish", channel="a", data=1, id="ab\n", ref=1), 1, id="id-newline"),
    # history limit
    pytest.param(_j(op="history", channel="a", limit=0, ref=1), 1, id="limit-0"),
    pytest.param(_j(op="history", channel="a", limit=-1, ref=1), 1, id="limit-negative"),
    pytest.param(_j(op="history", channel="a", limit=MAX_HISTORY_LIMIT + 1, ref=1), 1, id="lim+1"),
    pytest.param(_j(op="history", channel="a", limit="10", ref=1), 1, id="limit-str"),
    pytest.param(_j(op="history", channel="a", limit=5.5, ref=1), 1, id="limit-float"),
    pytest.param(_j(op="history", channel="a", limit=True, ref=1), 1, id="limit-bool"),
    # positions
    pytest.param(_j(op="subscribe", channel="a", position={"r1": -1}, ref=1), 1, id="pos-neg"),
    pytest.param(_j(op="subscribe", channel="a", position={"r1": 1.5}, ref=1), 1, id="pos-float"),
    pytest.param(_j(op="subscribe", channel="a", position={"r1": "1"}, ref=1), 1, id="pos-str"),
    pytest.param(_j(op="subscribe", channel="a", position={"r1": True}, ref=1), 1, id="pos-bool"),
    pytest.param(_j(op="subscribe", channel="a", position={"r1": None}, ref=1), 1, id="pos-null"),
    pytest.param(
        _j(op="subscribe", channel="a", position={"r1": MAX_COUNTER + 1}, ref=1), 1, id="pos-big"
    ),
    pytest.param(_j(op="subscribe", channel="a", position=[1], ref=1), 1, id="pos-array"),
    pytest.param(_j(op="subscribe", channel="a", position=3, ref=1), 1, id="pos-int"),
    pytest.param(_j(op="subscribe", channel="a", position={"US": 1}, ref=1), 1, id="region-upper"),
    pytest.param(_j(op="subscribe", channel="a", position={"1r": 1}, ref=1), 1, id="region-digit"),
    pytest.param(_j(op="subscribe", channel="a", position={"": 1}, ref=1), 1, id="region-empty"),
    pytest.param(_j(op="subscribe", channel="a", position={"r" * 33: 1}, ref=1), 1, id="region-33"),
    pytest.param(_j(op="subscribe", channel="a", position={"r 1": 1}, ref=1), 1, id="region-space"),
    pytest.param(_j(op="subscribe", channel="a", position={"r1\n": 1}, ref=1), 1, id="region-nl"),
    pytest.param(_j(op="history", channel="a", before={"r1": -3}, ref=1), 1, id="before-neg"),
    pytest.param(_j(op="history", channel="a", before={"R1": 3}, ref=1), 1, id="before-region"),
    pytest.param(_j(op="history", channel="a", before="r1", ref=1), 1, id="before-str"),
]


@pytest.mark.parametrize(("raw", "ref"), BAD_REQUEST)
def test_bad_request(raw: str, ref: object) -> None:
    err = _decode_error(raw)
    assert err.code is ErrorCode.BAD_REQUEST
    assert err.ref == ref
    assert type(err.ref) is type(ref)


@pytest.mark.parametrize(
    ("raw", "ref"),
    [
        pytest.param(_j(op="bogus", ref="r1"), "r1", id="str-ref"),
        pytest.param(_j(op="PING", ref=3), 3, id="case-sensitive"),
        pytest.param(_j(op="", ref=0), 0, id="empty-op"),
        pytest.param(_j(op="message", channel="a", ref=-2), -2, id="server-op"),
        pytest.param(_j(op="bogus"), None, id="no-ref"),
        pytest.param(_j(op="bogus", ref=True), None, id="bool-ref-not-echoed"),
    ],
)
def test_unknown_op_echoes_ref(raw: str, ref: object) -> None:
    err = _decode_error(raw)
    assert err.code is ErrorCode.UNKNOWN_OP
    assert err.ref == ref
    assert type(err.ref) is type(ref)


BAD_CHANNELS = [
    pytest.param("", id="empty"),
    pytest.param("a" * 201, id="201-chars"),
    pytest.param("a b", id="space"),
    pytest.param("a*", id="star"),
    pytest.param("*", id="lone-star"),
    pytest.param(">", id="gt"),
    pytest.param("a.>", id="wildcard-tail"),
    pytest.param("a%2Eb", id="percent"),
    pytest.param("é", id="unicode"),
    pytest.param("日本", id="cjk"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\n", id="trailing-newline"),
    pytest.param("a" * 200 + "\n", id="200-chars-then-newline"),
]


@pytest.mark.parametrize("name", BAD_CHANNELS)
@pytest.mark.parametrize("op", ["subscribe", "unsubscribe", "publish", "history"])
def test_invalid_channel(op: str, name: str) -> None:
    frame: dict[str, object] = {"op": op, "channel": name, "ref": "c"}
    if op == "publish":
        frame["data"] = {"x": 1}
    err = _decode_error(json.dumps(frame))
    assert err.code is ErrorCode.INVALID_CHANNEL
    assert err.ref == "c"


@pytest.mark.parametrize("depth", [3000])
@pytest.mark.parametrize(
    "template",
    [
        pytest.param("{}", id="bare"),
        pytest.param('{{"op":"publish","channel":"a","data":{}}}', id="publish-data"),
        pytest.param('{{"op":"ping","ref":{}}}', id="ref"),
    ],
)
def test_deeply_nested_json_is_a_protocol_error(template: str, depth: int) -> None:
    raw = template.format("[" * depth + "]" * depth)
    with pytest.raises(ProtocolError):
        decode_client_frame(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("1e400", id="bare"),
        pytest.param('{"op":"ping","ref":1e400}', id="ref"),
        pytest.param('{"op":"history","channel":"a","limit":1e400}', id="limit"),
    ],
)
def test_out_of_range_number_is_a_protocol_error(raw: str) -> None:
    err = _decode_error(raw)
    assert err.code in (ErrorCode.BAD_JSON, ErrorCode.BAD_REQUEST)


def test_invalid_utf8_inside_a_string_is_a_protocol_error() -> None:
    err = _decode_error(b'{"op":"ping","ref":"\xff"}')
    assert err.code is ErrorCode.BAD_JSON


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_j(op="ping", ref="x" * 1000), id="ping"),
        pytest.param(_j(op="bogus", ref="x" * 1000), id="unknown-op"),
        pytest.param(_j(op="subscribe", channel=5, ref="x" * 1000), id="bad-field"),
        pytest.param(_j(ref="x" * 1000), id="missing-op"),
    ],
)
def test_overlong_ref_is_never_echoed(raw: str) -> None:
    err = _decode_error(raw)
    assert err.ref is None


# --- valid frames -----------------------------------------------------------------------


def test_subscribe_minimal() -> None:
    frame = decode_client_frame(_j(op="subscribe", channel="room.1"))
    assert frame == Subscribe(channel="room.1", position=None, ref=None)


def test_subscribe_with_position_and_ref() -> None:
    raw = _j(op="subscribe", channel="a:b/c", position={"us-east": 3, "eu-west": 0}, ref=9)
    frame = decode_client_frame(raw)
    assert isinstance(frame, Subscribe)
    assert frame.channel == "a:b/c"
    assert frame.position == {"us-east": 3, "eu-west": 0}
    assert frame.ref == 9


def test_unsubscribe() -> None:
    frame = decode_client_frame(_j(op="unsubscribe", channel="x", ref="u1"))
    assert frame == Unsubscribe(channel="x", ref="u1")


def test_publish_keeps_raw_data_bytes_exactly() -> None:
    data = '{ "a" : [1,  2 ,3],\n\t"b":"\\u00e9 x" }'
    raw = '{"op":"publish","channel":"c","id":"m-1","data":' + data + ',"ref":4}'
    frame = decode_client_frame(raw)
    assert isinstance(frame, Publish)
    assert bytes(frame.data) == data.encode()
    assert len(frame.data) == len(data.encode())
    assert frame.id == "m-1"
    assert frame.channel == "c"
    assert frame.ref == 4


@pytest.mark.parametrize("data", ["null", "0", '"s"', "[]", "-1.5e3", "true", "{}"])
def test_publish_any_json_value_as_data(data: str) -> None:
    frame = decode_client_frame('{"op":"publish","channel":"c","data":' + data + "}")
    assert isinstance(frame, Publish)
    assert bytes(frame.data) == data.encode()
    assert frame.id is None


def test_publish_from_bytes_input() -> None:
    frame = decode_client_frame(b'{"op":"publish","channel":"c","data":[1, 2]}')
    assert isinstance(frame, Publish)
    assert bytes(frame.data) == b"[1, 2]"


def test_history_defaults() -> None:
    frame = decode_client_frame(_j(op="history", channel="c"))
    assert frame == History(channel="c", limit=DEFAULT_HISTORY_LIMIT, before=None, ref=None)


def test_history_with_limit_and_before() -> None:
    frame = decode_client_frame(_j(op="history", channel="c", limit=7, before={"r1": 4}, ref="h"))
    assert frame == History(channel="c", limit=7, before={"r1": 4}, ref="h")


@pytest.mark.parametrize("ref", [0, 17, -3, 2**63, "", "abc", "x" * MAX_REF_LENGTH])
def test_ping_echoes_ref(ref: str | int) -> None:
    frame = decode_client_frame(_j(op="ping", ref=ref))
    assert frame == Ping(ref=ref)
    assert type(frame.ref) is type(ref)


def test_unknown_fields_are_ignored_and_key_order_is_free() -> None:
    assert decode_client_frame('{"ref":1,"extra":[1],"op":"ping"}') == Ping(ref=1)


@pytest.mark.parametrize(
    "raw",
    [
        _j(op="subscribe", channel="a" * 200),
        _j(op="subscribe", channel="AZaz09_-:@/=+!~.,"),
        _j(op="publish", channel="a", data=1, id="x" * 128),
        _j(op="publish", channel="a", data=1, id="!~"),
        _j(op="history", channel="a", limit=1),
        _j(op="history", channel="a", limit=MAX_HISTORY_LIMIT),
        _j(op="subscribe", channel="a", position={}),
        _j(op="subscribe", channel="a", position={"r" * 32: MAX_COUNTER, "a-1": 0}),
    ],
)
def test_boundary_values_are_accepted(raw: str) -> None:
    decode_client_frame(raw)


# --- hypothesis: nothing but ProtocolError ----------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)

channels = st.one_of(
    st.sampled_from(["a", "room.1", "x" * 200, "x" * 201, "", "a b", "*", ">", "é"]),
    st.text(max_size=8),
    json_values,
)
refs = st.one_of(st.integers(), st.text(max_size=130), json_values)
positions = st.one_of(
    st.dictionaries(
        st.sampled_from(["r1", "us-east", "R1", "", "r1\n"]),
        st.one_of(st.integers(min_value=-5, max_value=2**60), json_values),
        max_size=3,
    ),
    json_values,
)
known_op_objects = st.fixed_dictionaries(
    {"op": st.sampled_from([*sorted(KNOWN_OPS), "bogus"])},
    optional={
        "channel": channels,
        "ref": refs,
        "data": json_values,
        "id": st.one_of(st.text(max_size=130), json_values),
        "limit": st.one_of(st.integers(min_value=-2, max_value=1002), json_values),
        "position": positions,
        "before": positions,
        "extra": json_values,
    },
)


def _check_decode(raw: str | bytes) -> None:
    try:
        frame = decode_client_frame(raw)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        return
    assert frame.__struct_config__.tag in KNOWN_OPS


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_raises_only_protocol_error(raw: str) -> None:
    _check_decode(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_arbitrary_bytes_raise_only_protocol_error(raw: bytes) -> None:
    _check_decode(raw)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_raises_only_protocol_error(value: object) -> None:
    _check_decode(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=0, max_value=60))
def test_truncated_json_raises_only_protocol_error(value: object, cut: int) -> None:
    raw = json.dumps(value)
    _check_decode(raw[: max(0, len(raw) - 1 - cut)])


@settings(max_examples=250, deadline=None)
@given(known_op_objects)
def test_frames_with_known_ops_raise_only_protocol_error(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj)
    try:
        frame = decode_client_frame(raw)
    except ProtocolError as exc:
        ref = obj.get("ref")
        valid_ref = (isinstance(ref, int) and not isinstance(ref, bool)) or (
            isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH
        )
        if valid_ref:
            assert exc.ref == ref
        elif exc.ref is not None:
            assert isinstance(ref, str)  # only an over-long string ref could be echoed
        return
    assert frame.__struct_config__.tag == obj["op"]
    assert frame.ref == obj.get("ref")


# --- server frames ----------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_frame_fields_and_temporary_flag(code: ErrorCode) -> None:
    body = json.loads(error_frame(code, "why", "r7"))
    assert body == {
        "op": "error",
        "ref": "r7",
        "code": code.value,
        "message": "why",
        "temporary": code in {ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED},
    }


def test_temporary_errors_are_exactly_the_retryable_ones() -> None:
    assert {ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED} == TEMPORARY_ERRORS


def test_error_frame_without_ref_and_with_details() -> None:
    body = json.loads(
        error_frame(ErrorCode.POSITION_EXPIRED, "gone", channel="c", earliest={"r1": 3})
    )
    assert "ref" not in body
    assert body["op"] == "error"
    assert body["code"] == "position_expired"
    assert body["temporary"] is False
    assert body["channel"] == "c"
    assert body["earliest"] == {"r1": 3}


def test_error_frame_int_ref() -> None:
    assert json.loads(error_frame(ErrorCode.BAD_JSON, "x", 0))["ref"] == 0


def test_connected_frame() -> None:
    body = json.loads(connected_frame("us-east", "relay-1", "c-42", 15.0, 65536))
    assert body == {
        "op": "connected",
        "region": "us-east",
        "relay": "relay-1",
        "connection_id": "c-42",
        "heartbeat_s": 15.0,
        "max_frame_bytes": 65536,
    }


def test_redirect_frame() -> None:
    body = json.loads(redirect_frame("ws://10.0.0.2:8701/v1/ws", "us-east", "draining"))
    assert body == {
        "op": "redirect",
        "url": "ws://10.0.0.2:8701/v1/ws",
        "region": "us-east",
        "reason": "draining",
    }


def test_subscribed_frame() -> None:
    body = json.loads(subscribed_frame(3, "c", VectorClock({"r1": 2, "r2": 0}), True))
    assert body == {
        "op": "subscribed",
        "ref": 3,
        "channel": "c",
        "position": {"r1": 2},
        "recovered": True,
    }


def test_unsubscribed_frame() -> None:
    assert json.loads(unsubscribed_frame("u", "c")) == {
        "op": "unsubscribed",
        "ref": "u",
        "channel": "c",
    }
    assert "ref" not in json.loads(unsubscribed_frame(None, "c"))


def test_ack_frame() -> None:
    body = json.loads(ack_frame(1, "m-1", "c", VectorClock({"r1": 5})))
    assert body == {"op": "ack", "ref": 1, "id": "m-1", "channel": "c", "position": {"r1": 5}}


def test_pong_frame() -> None:
    assert json.loads(pong_frame("p")) == {"op": "pong", "ref": "p"}
    assert json.loads(pong_frame(None)) == {"op": "pong"}


def _stored(k: int, data: bytes = b'{"n": 1}') -> StoredMessage:
    return StoredMessage(f"m{k}", msgspec.Raw(data), "r1", {"r1": k}, {"r1": k, "r2": 1})


@pytest.mark.parametrize("count", [0, 1, 3])
@pytest.mark.parametrize("ref", [None, 5, "h"])
@pytest.mark.parametrize("more", [False, True])
def test_history_frame_splices_messages_into_valid_json(
    count: int, ref: str | int | None, more: bool
) -> None:
    messages = [message_frame(Channel("c"), _stored(k)) for k in range(1, count + 1)]
    body = json.loads(history_frame(ref, "c", messages, more))
    assert body["op"] == "history"
    assert body["channel"] == "c"
    assert body["more"] is more
    assert body.get("ref") == ref
    assert ("ref" in body) is (ref is not None)
    assert body["messages"] == [json.loads(m) for m in messages]
    assert [m["id"] for m in body["messages"]] == [f"m{k}" for k in range(1, count + 1)]


def test_message_frame_fields() -> None:
    msg = StoredMessage("id-1", msgspec.Raw(b'{ "x" : 1 }'), "r2", {"r1": 3, "r2": 4}, {"r2": 4})
    frame = message_frame(Channel("a.b"), msg)
    assert b'"data":{ "x" : 1 }' in frame  # raw bytes forwarded unchanged
    assert json.loads(frame) == {
        "op": "message",
        "channel": "a.b",
        "id": "id-1",
        "data": {"x": 1},
        "origin": "r2",
        "ts": {"r1": 3, "r2": 4},
        "position": {"r2": 4},
    }


def test_stored_message_round_trip() -> None:
    msg = StoredMessage("m", msgspec.Raw(b'[1, "two" ,{}]'), "eu-west", {"eu-west": 2}, {"a": 1})
    encoded = encode_stored(msg)
    decoded = decode_stored(encoded)
    assert decoded == msg
    assert bytes(decoded.data) == b'[1, "two" ,{}]'
    assert encode_stored(decoded) == encoded


@settings(max_examples=100, deadline=None)
@given(
    st.text(min_size=1, max_size=20),
    json_values,
    st.dictionaries(st.sampled_from(["r1", "r2", "r3"]), st.integers(0, 2**53 - 1)),
    st.dictionaries(st.sampled_from(["r1", "r2", "r3"]), st.integers(0, 2**53 - 1)),
)
def test_stored_message_round_trip_random(
    msg_id: str, data: object, ts: dict[str, int], pos: dict[str, int]
) -> None:
    raw = json.dumps(data).encode()
    msg = StoredMessage(msg_id, msgspec.Raw(raw), "r1", ts, pos)
    decoded = decode_stored(encode_stored(msg))
    assert decoded == msg
    assert bytes(decoded.data) == raw


# --- one definition per frame: exact bytes, and both directions through the same Structs --


def _message(k: int) -> bytes:
    return message_frame(Channel("c"), _stored(k))


# The wire as relays have always written it: keys, their order, and what is left out.
EXACT_SERVER_FRAMES = [
    pytest.param(
        connected_frame("us-east", "us-east-1", "c-1", 15.0, 1048576),
        b'{"op":"connected","region":"us-east","relay":"us-east-1","connection_id":"c-1",'
        b'"heartbeat_s":15.0,"max_frame_bytes":1048576}',
        id="connected",
    ),
    pytest.param(
        redirect_frame("ws://10.0.0.2:8701/v1/ws", "us-east", "overloaded"),
        b'{"op":"redirect","url":"ws://10.0.0.2:8701/v1/ws","region":"us-east",'
        b'"reason":"overloaded"}',
        id="redirect",
    ),
    pytest.param(
        subscribed_frame(1, "chat:lobby", VectorClock({}), False),
        b'{"op":"subscribed","ref":1,"channel":"chat:lobby","position":{},"recovered":false}',
        id="subscribed",
    ),
    pytest.param(
        subscribed_frame(None, "c", VectorClock({"r1": 2}), True),
        b'{"op":"subscribed","channel":"c","position":{"r1":2},"recovered":true}',
        id="subscribed-no-ref",
    ),
    pytest.param(
        unsubscribed_frame("u", "c"), b'{"op":"unsubscribed","ref":"u","channel":"c"}', id="unsub"
    ),
    pytest.param(
        ack_frame(2, "hello-1", "chat:lobby", VectorClock({"us-east": 1})),
        b'{"op":"ack","ref":2,"id":"hello-1","channel":"chat:lobby","position":{"us-east":1}}',
        id="ack",
    ),
    pytest.param(pong_frame(0), b'{"op":"pong","ref":0}', id="pong-zero-ref"),
    pytest.param(pong_frame(None), b'{"op":"pong"}', id="pong"),
    pytest.param(
        error_frame(ErrorCode.INVALID_CHANNEL, "bad", 5),
        b'{"op":"error","ref":5,"code":"invalid_channel","message":"bad","temporary":false}',
        id="error",
    ),
    pytest.param(
        error_frame(ErrorCode.UNAVAILABLE, "m", "p", channel="c", id=None, behind="p1"),
        b'{"op":"error","ref":"p","code":"unavailable","message":"m","temporary":true,'
        b'"channel":"c","id":null,"behind":"p1"}',
        id="error-fenced-without-id",
    ),
    pytest.param(
        error_frame(ErrorCode.POSITION_EXPIRED, "gone", channel="c", earliest={"r1": 3}),
        b'{"op":"error","code":"position_expired","message":"gone","temporary":false,'
        b'"channel":"c","earliest":{"r1":3}}',
        id="error-expired",
    ),
    pytest.param(
        history_frame(4, "c", [b'{"op":"message"}'], True),
        b'{"op":"history","ref":4,"channel":"c","more":true,"messages":[{"op":"message"}]}',
        id="history",
    ),
    pytest.param(
        history_frame(None, "c", [], False),
        b'{"op":"history","channel":"c","more":false,"messages":[]}',
        id="history-empty",
    ),
]


@pytest.mark.parametrize(("frame", "wire"), EXACT_SERVER_FRAMES)
def test_server_frames_byte_for_byte(frame: bytes, wire: bytes) -> None:
    assert frame == wire


_server_decoder = msgspec.json.Decoder(ServerFrame)


def test_server_frames_decode_into_their_structs() -> None:
    """What the SDK reads is what the relay wrote, through the same Structs."""
    assert _server_decoder.decode(connected_frame("r", "r-1", "c", 15.0, 99)) == ConnectedFrame(
        region="r", relay="r-1", connection_id="c", heartbeat_s=15.0, max_frame_bytes=99
    )
    assert _server_decoder.decode(redirect_frame("ws://x/v1/ws", "r", "draining")) == (
        RedirectFrame(url="ws://x/v1/ws", region="r", reason="draining")
    )
    assert _server_decoder.decode(subscribed_frame(None, "c", VectorClock({"r": 1}), True)) == (
        SubscribedFrame(ref=msgspec.UNSET, channel="c", position={"r": 1}, recovered=True)
    )
    assert _server_decoder.decode(unsubscribed_frame(3, "c")) == UnsubscribedFrame(
        ref=3, channel="c"
    )
    assert _server_decoder.decode(ack_frame("a", "m", "c", VectorClock({"r": 2}))) == AckFrame(
        ref="a", id="m", channel="c", position={"r": 2}
    )
    assert _server_decoder.decode(pong_frame(None)) == PongFrame()
    expired = error_frame(ErrorCode.POSITION_EXPIRED, "gone", 7, channel="c", earliest={"r": 1})
    assert _server_decoder.decode(expired) == ErrorFrame(
        ref=7,
        code="position_expired",
        message="gone",
        temporary=False,
        channel="c",
        earliest={"r": 1},
    )
    page = _server_decoder.decode(history_frame(1, "c", [_message(1), _message(2)], True))
    assert isinstance(page, HistoryFrame)
    assert (page.ref, page.channel, page.more) == (1, "c", True)
    assert [m.id for m in page.messages] == ["m1", "m2"]
    assert all(isinstance(m, MessageFrame) for m in page.messages)
    message = _server_decoder.decode(_message(3))
    assert isinstance(message, MessageFrame)
    assert bytes(message.data) == b'{"n": 1}'


def test_server_frames_read_leniently_what_older_relays_left_out() -> None:
    assert _server_decoder.decode(b'{"op":"error","code":"x"}') == ErrorFrame(
        code="x", message="", temporary=False
    )
    assert _server_decoder.decode(b'{"op":"subscribed","channel":"c","position":{}}') == (
        SubscribedFrame(channel="c", position={}, recovered=False)
    )


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        pytest.param(
            Subscribe(channel="c", ref=1), b'{"op":"subscribe","channel":"c","ref":1}', id="sub"
        ),
        pytest.param(
            Subscribe(channel="c", position={"r1": 4}, ref=2),
            b'{"op":"subscribe","channel":"c","position":{"r1":4},"ref":2}',
            id="sub-position",
        ),
        pytest.param(Unsubscribe(channel="c"), b'{"op":"unsubscribe","channel":"c"}', id="unsub"),
        pytest.param(
            Publish(channel="c", data=msgspec.Raw(b"[1,  2]"), id="m-1", ref=3),
            b'{"op":"publish","channel":"c","data":[1,  2],"id":"m-1","ref":3}',
            id="publish",
        ),
        pytest.param(
            Publish(channel="c", data=msgspec.Raw(b"1"), id="m", ref=4, after={"r1": 2}),
            b'{"op":"publish","channel":"c","data":1,"id":"m","ref":4,"after":{"r1":2}}',
            id="publish-after",
        ),
        pytest.param(History(channel="c", ref=5), b'{"op":"history","channel":"c","ref":5}'),
        pytest.param(Ping(), b'{"op":"ping"}', id="ping"),
    ],
)
def test_client_frames_encode_without_absent_fields_and_decode_back(
    frame: Subscribe | Unsubscribe | Publish | History | Ping, wire: bytes
) -> None:
    """The SDK encodes with the Structs the relay decodes with."""
    assert msgspec.json.encode(frame) == wire
    back = decode_client_frame(wire)
    assert back == frame
