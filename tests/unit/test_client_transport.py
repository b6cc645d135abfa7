"""The SDK's fallback to SSE + HTTP, without sockets: when (``TransportPolicy``), what the
session sends and makes of the replies on SSE, and the supervisor's switch back.

The end-to-end proof is tests/integration/test_sdk_sse_fallback.py.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.vclock import VectorClock
from relay.client.session import (
    Acked,
    BadFrame,
    ClientSession,
    ErrorReceived,
    Message,
    PositionExpired,
    Subscribed,
)
from relay.client.supervisor import (
    ConnectionState,
    Finish,
    Leave,
    Open,
    SetState,
)
from relay.client.transport import (
    HANDSHAKE_FAILURES_BEFORE_SSE,
    RETRY_JITTER,
    TransportPolicy,
    WebSocketFailure,
    blocks_websocket,
)
from relay.protocol.http_api import PublishBody, encode_event_id
from tests.unit.test_client_supervisor import NEAR_EAST, kinds, supervisor, up

US = "us-east"


def policy(**kwargs: Any) -> TransportPolicy:
    kwargs.setdefault("rng", random.Random(1))
    return TransportPolicy(**kwargs)


# --- when to fall back -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "blocks"),
    [
        (400, True),
        (403, True),  # a proxy's refusal, or relay.websocket = false
        (404, True),
        (405, True),
        (426, True),
        (401, True),
        (408, False),  # request timeout: try again
        (429, False),  # too many requests: try again
        (500, False),
        (501, True),  # not implemented: the upgrade, here
        (502, False),  # a proxy's bad gateway: counted as a failed handshake
        (503, False),
        (505, True),
    ],
)
def test_statuses_that_say_websocket_is_refused(status: int, blocks: bool) -> None:
    assert blocks_websocket(status) is blocks


def test_a_refused_upgrade_on_an_edge_whose_http_answers_goes_to_sse_at_once() -> None:
    p = policy()
    assert p.transport == "websocket"
    assert p.websocket_failed(WebSocketFailure("refused", 403))  # ask /v1/ping first
    assert p.ping_answered(True)
    assert p.transport == "sse"


def test_an_edge_that_is_down_is_failover_not_a_block() -> None:
    p = policy()
    # Nothing listens: no ping needed, nothing counted.
    assert not p.websocket_failed(WebSocketFailure("unreachable"))
    # The upgrade failed and the ping too: the edge is down.
    for _ in range(5):
        assert p.websocket_failed(WebSocketFailure("refused", 403))
        assert not p.ping_answered(False)
        assert p.websocket_failed(WebSocketFailure("handshake"))
        assert not p.ping_answered(False)
    assert p.transport == "websocket"
    assert p.failures_in_a_row == 0


def test_503_is_the_relay_saying_not_now() -> None:
    p = policy()
    assert not p.websocket_failed(WebSocketFailure("refused", 503))
    assert not p.ping_answered(True)  # not asked: nothing pending
    assert p.transport == "websocket"


def test_failed_handshakes_switch_after_n_in_a_row() -> None:
    p = policy(handshake_failures=3)
    for n in range(1, 3):
        assert p.websocket_failed(WebSocketFailure("handshake"))
        assert not p.ping_answered(True)
        assert p.failures_in_a_row == n
    assert p.websocket_failed(WebSocketFailure("refused", 502))  # a proxy's error: the same
    assert p.ping_answered(True)
    assert p.transport == "sse"


def test_a_websocket_that_opens_clears_the_count() -> None:
    p = policy()
    assert HANDSHAKE_FAILURES_BEFORE_SSE == 2
    p.websocket_failed(WebSocketFailure("handshake"))
    p.ping_answered(True)
    p.websocket_opened()
    p.websocket_failed(WebSocketFailure("handshake"))
    assert not p.ping_answered(True)
    assert p.transport == "websocket"


def test_sse_that_cannot_open_puts_websocket_first_with_the_count_kept() -> None:
    p = policy()
    for _ in range(2):
        p.websocket_failed(WebSocketFailure("handshake"))
        p.ping_answered(True)
    assert p.transport == "sse"
    p.sse_failed()
    assert p.transport == "websocket"
    # Still blocked: one more failed handshake is enough to go back to SSE.
    p.websocket_failed(WebSocketFailure("handshake"))
    assert p.ping_answered(True)
    assert p.transport == "sse"


def test_disabled_never_falls_back() -> None:
    p = policy(enabled=False)
    assert not p.websocket_failed(WebSocketFailure("refused", 403))
    assert not p.ping_answered(True)
    assert p.transport == "websocket"


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="handshake_failures"):
        policy(handshake_failures=0)
    with pytest.raises(ValueError, match="websocket_retry_s"):
        policy(retry_s=0)


@given(st.floats(0.01, 3600), st.integers(0, 2**32))
def test_websocket_retries_are_jittered_around_the_setting(retry_s: float, seed: int) -> None:
    delay = policy(rng=random.Random(seed), retry_s=retry_s).retry_delay()
    assert retry_s * (1 - RETRY_JITTER) <= delay <= retry_s * (1 + RETRY_JITTER)


_failures = st.one_of(
    st.builds(WebSocketFailure, st.just("unreachable")),
    st.builds(WebSocketFailure, st.just("handshake")),
    st.builds(WebSocketFailure, st.just("refused"), st.integers(400, 599)),
)


@settings(max_examples=200)
@given(st.lists(st.tuples(_failures, st.booleans()), max_size=12))
def test_never_sse_without_an_edge_whose_http_answered(
    attempts: list[tuple[WebSocketFailure, bool]],
) -> None:
    p = policy()
    for failure, ping_ok in attempts:
        switched = p.websocket_failed(failure) and p.ping_answered(ping_ok)
        if switched:
            assert ping_ok and failure.kind != "unreachable" and failure.status != 503
            assert blocks_websocket(failure.status or 0) or p.failures_in_a_row >= 2
            assert p.transport == "sse"
            return
    assert p.transport == "websocket"


# --- the session on SSE ------------------------------------------------------------------


def subscribed(channel: str, ref: int, position: dict[str, int], recovered: bool) -> str:
    return json.dumps(
        {
            "op": "subscribed",
            "ref": ref,
            "channel": channel,
            "position": position,
            "recovered": recovered,
        }
    )


def single(channel: str, n: int) -> str:
    return json.dumps(
        {
            "op": "message",
            "channel": channel,
            "id": f"m{n}",
            "data": {"n": n},
            "origin": US,
            "ts": {US: n},
            "position": {US: n},
        }
    )


def test_streams_name_the_channels_with_their_positions_and_contiguous_refs() -> None:
    s = ClientSession()
    for channel in ("a", "b", "c"):
        s.subscribe(channel)
    s.receive(subscribed("a", 1, {US: 4}, False))
    s.subscribe("d", position={US: 7})
    s.unsubscribe("c")
    plans = s.on_stream(max_channels=2)
    assert [p.channels for p in plans] == [("a", "b"), ("d",)]
    assert plans[0].positions == {"a": VectorClock({US: 4})}  # b starts live
    assert plans[1].positions == {"d": VectorClock({US: 7})}
    # The relay numbers each stream's subscribes from 0: first_ref + that is the session's.
    first = plans[0].first_ref
    assert s.receive(subscribed("b", first + 1, {US: 9}, False)) == [
        Subscribed("b", VectorClock({US: 9}), False)
    ]
    assert s.receive(subscribed("a", first, {US: 9}, True)) == [
        Subscribed("a", VectorClock({US: 9}), True)
    ]
    # A reply to an older stream's subscribe is not this one's.
    assert s.receive(subscribed("d", first, {US: 9}, False)) == []
    expired = {"op": "error", "ref": plans[1].first_ref, "code": "position_expired"}
    assert s.receive(json.dumps({**expired, "earliest": {US: 8}})) == [
        PositionExpired("d", VectorClock({US: 8}))
    ]
    assert encode_event_id(plans[0].positions)  # what goes in Last-Event-ID
    with pytest.raises(ValueError, match="max_channels"):
        s.on_stream(0)


def test_no_channel_no_stream() -> None:
    assert ClientSession().on_stream(32) == []


def test_http_publish_carries_the_id_and_the_causal_context_of_the_websocket_frame() -> None:
    s = ClientSession()
    s.subscribe("c", position={US: 3})
    message_id, frame = s.publish("c", b'{"text":"hi"}')
    channel, body = s.http_publish(message_id)
    assert channel == "c"
    sent = json.loads(frame)
    assert (
        json.loads(body)
        == {
            "data": {"text": "hi"},
            "id": message_id,
            "after": {US: 3},
        }
        == {k: sent[k] for k in ("data", "id", "after")}
    )
    assert PublishBody.__struct_fields__ == ("data", "id", "after")  # the API's own body
    # Read more since: the context is taken again at each send.
    s.receive(single("c", 4))
    assert json.loads(s.http_publish(message_id)[1])["after"] == {US: 4}


def test_http_publish_replies() -> None:
    s = ClientSession()
    acked, _ = s.publish("c", b"1")
    busy, _ = s.publish("c", b"2")
    refused, _ = s.publish("c", b"3")
    ack = {"op": "ack", "id": acked, "channel": "c", "position": {US: 1}}
    assert s.publish_replied(acked, json.dumps(ack).encode()) == [
        Acked(acked, "c", VectorClock({US: 1}))
    ]
    rate = {
        "op": "error",
        "code": "rate_limited",
        "temporary": True,
        "channel": "c",
        "retry_after_ms": 250,
    }
    assert s.publish_replied(busy, json.dumps(rate).encode()) == [
        ErrorReceived("rate_limited", "", None, True, "c", busy, 250)
    ]
    forbidden = {"op": "error", "code": "forbidden", "message": "no", "channel": "c"}
    assert s.publish_replied(refused, json.dumps(forbidden).encode()) == [
        ErrorReceived("forbidden", "no", None, False, "c", refused, None)
    ]
    assert s.pending == {busy: "c"}  # the temporary one is sent again, the refused one not
    (bad,) = s.publish_replied(busy, b"<html>502 Bad Gateway</html>")
    assert isinstance(bad, BadFrame)
    assert s.pending == {busy: "c"}


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_no_gap_and_no_duplicate_across_switches_of_transport(data: st.DataObject) -> None:
    """Connections alternate between WebSocket and SSE at random; each replays from any
    point at or before the position the session resumes from, and stops anywhere: the
    application sees the log exactly once, in order."""
    log_length = data.draw(st.integers(1, 30))
    s = ClientSession()
    s.subscribe("c", position={})
    seen: list[str] = []
    for _ in range(data.draw(st.integers(1, 6))):
        if data.draw(st.booleans(), label="sse"):
            (plan,) = s.on_stream(32)
            resume = plan.positions["c"].get(US)
            ref = plan.first_ref
        else:
            frame = json.loads(s.on_reconnect()[0])
            resume = frame["position"].get(US, 0)
            ref = frame["ref"]
        start = data.draw(st.integers(0, resume), label="replay from")
        stop = data.draw(st.integers(start, log_length), label="stop at")
        s.receive(subscribed("c", ref, {US: log_length}, True))
        for n in range(start + 1, stop + 1):
            seen += [e.id for e in s.receive(single("c", n)) if isinstance(e, Message)]
        if stop >= resume:
            assert seen == [f"m{n}" for n in range(1, stop + 1)]
    assert len(seen) == len(set(seen))


# --- the supervisor's switch -------------------------------------------------------------


def test_back_to_websocket_leaves_and_reopens_the_same_edge_at_once() -> None:
    sup = up(supervisor())
    current = NEAR_EAST.candidates[0]
    actions = sup.transport_changed("WebSocket works again")
    assert kinds(actions) == [Leave(1000, "switching transport")]
    # Our own 1000 does not end the client: the same edge again, no backoff pause.
    after = sup.connection_ended(1000, "switching transport", now=1.0)
    assert kinds(after) == [SetState(ConnectionState.CONNECTING), Open(*current)]
    assert not any(isinstance(a, Finish) for a in after)
    assert sup.transport_changed("again") == []  # not connected now


def test_no_switch_while_already_leaving() -> None:
    sup = up(supervisor())
    assert sup.transport_changed("first")
    assert sup.transport_changed("second") == []
