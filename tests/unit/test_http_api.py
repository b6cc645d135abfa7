"""HTTP requests become the same frames a WebSocket client sends; replies become statuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.vclock import VectorClock
from relay.protocol import http_api
from relay.protocol.errors import ErrorCode, ProtocolError
from relay.protocol.frames import History, Publish, decode_client_frame, error_frame


def test_routes_split_before_decoding_so_an_encoded_slash_stays_in_the_channel() -> None:
    assert http_api.route("/v1/channels/chat:lobby/messages") == http_api.ChannelRoute(
        "messages", "chat:lobby"
    )
    assert http_api.route("/v1/channels/a%2Fb/presence") == http_api.ChannelRoute("presence", "a/b")
    for path in ("/v1/channels//messages", "/v1/channels/x/other", "/v1/ws", "/v1/channels/x"):
        assert http_api.route(path) is None


def test_a_post_is_the_publish_frame_with_its_data_untouched() -> None:
    raw = http_api.publish_request("chat:1", b'{"data": {"t": "hi",  "n": 1}, "id": "m-1"}', None)
    frame = decode_client_frame(raw)
    assert isinstance(frame, Publish)
    assert (frame.channel, frame.id) == ("chat:1", "m-1")
    assert bytes(frame.data) == b'{"t": "hi",  "n": 1}'  # byte for byte, as sent
    keyed = decode_client_frame(http_api.publish_request("c", b'{"data":1}', "key-9"))
    assert isinstance(keyed, Publish) and keyed.id == "key-9"
    same = http_api.publish_request("c", b'{"data":1,"id":"k"}', "k")
    assert decode_client_frame(same) == decode_client_frame(same)


@pytest.mark.parametrize(
    ("body", "key", "code", "words"),
    [
        (b"{", None, ErrorCode.BAD_JSON, "not valid JSON"),
        (b"[]", None, ErrorCode.BAD_REQUEST, "body"),
        (b"{}", None, ErrorCode.BAD_REQUEST, "data"),
        (b'{"data":1,"extra":2}', None, ErrorCode.BAD_REQUEST, "extra"),
        (b'{"data":1,"id":"a"}', "b", ErrorCode.BAD_REQUEST, "Idempotency-Key"),
    ],
)
def test_bad_bodies_are_refused_with_what_is_wrong(
    body: bytes, key: str | None, code: ErrorCode, words: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        http_api.publish_request("c", body, key)
    assert caught.value.code is code
    assert words in caught.value.message


def test_history_query_parameters() -> None:
    frame = decode_client_frame(
        http_api.history_request("c", {"limit": ["5"], "before": ['{"us-east":41}']})
    )
    assert isinstance(frame, History)
    assert (frame.limit, frame.before) == (5, {"us-east": 41})
    with pytest.raises(ProtocolError, match="integer"):
        http_api.history_request("c", {"limit": ["many"]})
    with pytest.raises(ProtocolError, match="position as JSON"):
        http_api.history_request("c", {"before": ["41"]})
    with pytest.raises(ProtocolError, match="limit"):  # the session's own check, via decode
        decode_client_frame(http_api.history_request("c", {"limit": ["0"]}))


def test_reply_statuses() -> None:
    assert http_api.reply_status(b'{"op":"ack","id":"x"}', ok=201) == (201, ())
    assert http_api.reply_status(error_frame(ErrorCode.FORBIDDEN, "no"))[0] == 403
    assert http_api.reply_status(error_frame(ErrorCode.UNAVAILABLE, "down"))[0] == 503
    status, headers = http_api.reply_status(
        error_frame(ErrorCode.RATE_LIMITED, "slow", retry_after_ms=1200)
    )
    assert (status, headers) == (429, (("Retry-After", "2"),))
    status, headers = http_api.reply_status(error_frame(ErrorCode.UNAUTHORIZED, "who"))
    assert status == 401 and headers[0][0] == "WWW-Authenticate"


def test_bearer_tokens() -> None:
    assert http_api.bearer_token(None) is None
    assert http_api.bearer_token("Bearer abc.def") == "abc.def"
    assert http_api.bearer_token("bearer  abc ") == "abc"
    for bad in ("Basic abc", "Bearer", "abc"):
        with pytest.raises(ProtocolError) as caught:
            http_api.bearer_token(bad)
        assert caught.value.code is ErrorCode.UNAUTHORIZED


channels = st.from_regex(r"[a-z0-9:_\-]{1,20}", fullmatch=True)
clocks = st.dictionaries(st.sampled_from(["us-east", "eu-west", "ap-south"]), st.integers(1, 10**9))


@given(st.dictionaries(channels, clocks.filter(bool), max_size=5))
def test_event_ids_round_trip(positions: dict[str, dict[str, int]]) -> None:
    clocks_by_channel = {c: VectorClock(p) for c, p in positions.items()}
    event_id = http_api.encode_event_id(clocks_by_channel)
    assert event_id.isascii() and "\n" not in event_id
    assert http_api.decode_event_id(event_id) == clocks_by_channel


@pytest.mark.parametrize(
    "event_id", ["", "not base64 !", "W10", "e30", "x" * 9000, "WzEsMl0", "W3siYiBhZCI6e319XQ"]
)
def test_event_ids_we_never_sent_are_refused(event_id: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        http_api.decode_event_id(event_id)
    assert caught.value.code is ErrorCode.BAD_REQUEST


def test_sse_channels_and_events() -> None:
    assert http_api.sse_channels({"channels": ["a,b,a"], "channel": ["c"]}) == ["a", "b", "c"]
    assert http_api.sse_channels({"channel": ["x,y", "z"]}) == ["x,y", "z"]  # names with commas
    assert http_api.wants_presence({"presence": ["1"]})
    assert not http_api.wants_presence({})
    with pytest.raises(ProtocolError, match="name the channels"):
        http_api.sse_channels({})
    with pytest.raises(ProtocolError, match="at most"):
        http_api.sse_channels({"channels": [",".join(f"c{i}" for i in range(40))]})
    assert http_api.sse_event("message", b'{"a":1}', "ID") == (
        b'id: ID\nevent: message\ndata: {"a":1}\n\n'
    )
    assert http_api.sse_comment("ping") == b": ping\n\n"
