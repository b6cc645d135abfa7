"""ServerSession: the per-connection protocol state machine, driven with a fake clock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.core.capabilities import Credentials, TokenRejected, parse_capabilities
from relay.core.channels import Channel
from relay.protocol.errors import CloseCode, ErrorCode
from relay.protocol.frames import History, Publish, Subscribe
from relay.protocol.session import (
    ERROR_WINDOW_S,
    Action,
    Audit,
    Close,
    Detach,
    Reply,
    ServerSession,
    SessionAuth,
    SessionLimits,
    SubscribeRequest,
    Subscription,
    SubState,
)


def _limit(channel: Channel) -> int:
    return 8 if channel.startswith("small") else 1000


def make(max_subscriptions: int = 3, max_errors: int = 5) -> ServerSession:
    return ServerSession(SessionLimits(max_subscriptions, max_errors, _limit))


def frame(**fields: object) -> str:
    return json.dumps(fields)


def no_audit(actions: list[Action]) -> list[Action]:
    """The actions but the audit lines (tests/unit/test_revocations.py checks those)."""
    return [a for a in actions if not isinstance(a, Audit)]


def only_reply(actions: list[Action]) -> dict[str, Any]:
    actions = no_audit(actions)
    assert len(actions) == 1
    assert isinstance(actions[0], Reply)
    body: dict[str, Any] = json.loads(actions[0].frame)
    return body


def subscribing(actions: list[Action]) -> Subscription:
    """The subscription a subscribe frame started (its only action)."""
    [req] = actions
    assert isinstance(req, SubscribeRequest)
    return req.subscription


def error_of(actions: list[Action]) -> dict[str, Any]:
    body = only_reply(actions)
    assert body["op"] == "error"
    return body


def test_ping_pong() -> None:
    s = make()
    assert only_reply(s.receive(frame(op="ping", ref=1), 0.0)) == {"op": "pong", "ref": 1}
    assert only_reply(s.receive(frame(op="ping"), 0.0)) == {"op": "pong"}


def test_subscribe_returns_request_then_already_subscribed() -> None:
    s = make()
    actions = s.receive(frame(op="subscribe", channel="c", ref=1), 0.0)
    [req] = actions
    assert isinstance(req, SubscribeRequest)
    assert req.frame == Subscribe(channel="c", position=None, ref=1)
    assert req.subscription.channel == "c"
    assert req.subscription.feed is None
    assert s.subscription(Channel("c")) is req.subscription
    assert s.channels == {"c": SubState.SUBSCRIBING}
    err = error_of(s.receive(frame(op="subscribe", channel="c", ref=2), 1.0))
    assert err["code"] == "already_subscribed"
    assert err["ref"] == 2
    assert err["temporary"] is False
    # also once the subscription is established
    assert s.subscribe_succeeded(req.subscription)
    err = error_of(s.receive(frame(op="subscribe", channel="c", position={"r1": 1}), 2.0))
    assert err["code"] == "already_subscribed"


def test_subscribe_with_position_passes_it_through() -> None:
    s = make()
    [req] = s.receive(frame(op="subscribe", channel="c", position={"r1": 4}), 0.0)
    assert isinstance(req, SubscribeRequest)
    assert req.frame.position == {"r1": 4}


def test_max_subscriptions() -> None:
    s = make(max_subscriptions=2)
    subscribing(s.receive(frame(op="subscribe", channel="a"), 0.0))
    subscribing(s.receive(frame(op="subscribe", channel="b"), 0.0))
    err = error_of(s.receive(frame(op="subscribe", channel="c", ref="x"), 0.0))
    assert err["code"] == "limit_exceeded"
    assert err["ref"] == "x"
    assert set(s.channels) == {"a", "b"}
    # freeing a slot allows a new subscription
    s.receive(frame(op="unsubscribe", channel="a"), 0.0)
    subscribing(s.receive(frame(op="subscribe", channel="c"), 0.0))


def test_unsubscribe_unknown() -> None:
    s = make()
    err = error_of(s.receive(frame(op="unsubscribe", channel="c", ref=7), 0.0))
    assert err["code"] == "not_subscribed"
    assert err["ref"] == 7


def test_unsubscribe_known() -> None:
    s = make()
    sub = subscribing(s.receive(frame(op="subscribe", channel="c"), 0.0))
    s.subscribe_succeeded(sub)
    actions = s.receive(frame(op="unsubscribe", channel="c", ref=3), 0.0)
    assert len(actions) == 2
    assert actions[0] == Detach(sub)
    assert not s.is_current(sub)
    assert isinstance(actions[1], Reply)
    assert json.loads(actions[1].frame) == {"op": "unsubscribed", "ref": 3, "channel": "c"}
    assert s.channels == {}
    err = error_of(s.receive(frame(op="unsubscribe", channel="c"), 0.0))
    assert err["code"] == "not_subscribed"


def test_unsubscribe_while_subscribing_then_success_reports_false() -> None:
    s = make()
    sub = subscribing(s.receive(frame(op="subscribe", channel="c"), 0.0))
    actions = s.receive(frame(op="unsubscribe", channel="c"), 0.0)
    assert actions[0] == Detach(sub)
    assert s.subscribe_succeeded(sub) is False  # node must detach
    assert s.channels == {}


def test_an_earlier_subscription_never_completes_or_fails_a_newer_one() -> None:
    """Unsubscribed and subscribed again while the first request was still in flight:
    the first one's late answer concerns that one only."""
    s = make()
    first = subscribing(s.receive(frame(op="subscribe", channel="c"), 0.0))
    s.receive(frame(op="unsubscribe", channel="c"), 0.0)
    second = subscribing(s.receive(frame(op="subscribe", channel="c"), 0.0))
    assert first is not second
    assert s.subscribe_succeeded(first) is False
    s.subscribe_failed(first)
    assert s.is_current(second) and not s.is_current(first)
    assert s.channels == {"c": SubState.SUBSCRIBING}
    assert s.subscribe_succeeded(second) is True
    assert s.channels == {"c": SubState.SUBSCRIBED}


def test_publish_within_limit_is_a_request() -> None:
    s = make()
    [req] = s.receive('{"op":"publish","channel":"small","data":"123456"}', 0.0)  # 8 bytes
    assert isinstance(req, Publish)
    assert bytes(req.data) == b'"123456"'


def test_publish_too_large_uses_the_per_channel_limit() -> None:
    s = make()
    raw = '{"op":"publish","channel":"small.x","data":"1234567","ref":5}'  # 9 bytes
    err = error_of(s.receive(raw, 0.0))
    assert err["code"] == "too_large"
    assert err["ref"] == 5
    assert "9" in err["message"] and "8" in err["message"]
    assert "small.x" in err["message"]
    # the same data is fine on a channel with a larger limit
    [req] = s.receive('{"op":"publish","channel":"big","data":"1234567"}', 0.0)
    assert isinstance(req, Publish)


def test_publish_does_not_require_a_subscription() -> None:
    s = make()
    [req] = s.receive(frame(op="publish", channel="c", data={"a": 1}), 0.0)
    assert isinstance(req, Publish)
    assert s.channels == {}


def test_history_is_a_request() -> None:
    s = make()
    [req] = s.receive(frame(op="history", channel="c", limit=5, ref=1), 0.0)
    assert req == History(channel="c", limit=5, before=None, ref=1)


@pytest.mark.parametrize("raw", [b'{"op":"ping"}', '{"op":"ping"}'])
def test_binary_frame_is_bad_request(raw: str | bytes) -> None:
    s = make()
    err = error_of(s.receive(raw, 0.0, binary=True))
    assert err["code"] == "bad_request"
    assert "ref" not in err


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("nope", "bad_json"),
        ('{"op":"bogus","ref":1}', "unknown_op"),
        ('{"op":"subscribe","channel":"a b"}', "invalid_channel"),
        ('{"op":"subscribe"}', "bad_request"),
        # truncated input whose typed decoding fails first: must still be an error frame
        ("[1,", "bad_json"),
        ('{"op":"nope",', "bad_json"),
    ],
)
def test_bad_frames_become_error_replies(raw: str, code: str) -> None:
    s = make()
    err = error_of(s.receive(raw, 0.0))
    assert err["code"] == code
    assert not s.closed


def test_error_flood_closes() -> None:
    s = make(max_errors=3)
    for i in range(3):
        assert len(s.receive("garbage", float(i))) == 1
    actions = s.receive("garbage", 3.0)
    assert len(actions) == 2
    assert error_of(actions[:1])["code"] == "bad_json"
    assert actions[1] == Close(CloseCode.TOO_MANY_ERRORS, "too_many_errors")
    assert s.closed
    assert s.receive(frame(op="ping"), 4.0) == []
    assert s.receive("garbage", 5.0) == []
    assert s.receive(frame(op="ping"), 1000.0) == []


def test_flood_counts_every_kind_of_error() -> None:
    s = make(max_errors=2)
    s.receive(frame(op="unsubscribe", channel="c"), 0.0)
    s.receive(b"bin", 0.1, binary=True)
    actions = s.receive(frame(op="bogus"), 0.2)
    assert isinstance(actions[-1], Close)


def test_successful_frames_do_not_count() -> None:
    s = make(max_errors=1)
    s.receive("garbage", 0.0)
    for t in range(50):
        assert only_reply(s.receive(frame(op="ping"), 0.1 + t / 10)) == {"op": "pong"}
    assert not s.closed
    assert isinstance(s.receive("garbage", 10.0)[-1], Close)  # the second error


def test_errors_spread_over_more_than_a_minute_do_not_close() -> None:
    s = make(max_errors=3)
    now = 0.0
    for _ in range(40):
        actions = s.receive("garbage", now)
        assert not any(isinstance(a, Close) for a in actions)
        now += ERROR_WINDOW_S / 3 + 0.01  # at most 3 errors in any 60 s window
    assert not s.closed


def test_old_errors_leave_the_window() -> None:
    s = make(max_errors=3)
    for t in (0.0, 1.0, 2.0):
        s.receive("garbage", t)
    # 61 s later the first three are outside the window
    for t in (61.0, 62.0, 63.0):
        assert not any(isinstance(a, Close) for a in s.receive("garbage", t))
    assert isinstance(s.receive("garbage", 63.5)[-1], Close)


def test_subscribe_succeeded_transitions() -> None:
    s = make()
    assert s.subscribe_succeeded(Subscription(Channel("c"))) is False  # never asked
    sub = subscribing(s.receive(frame(op="subscribe", channel="c"), 0.0))
    assert s.subscribe_succeeded(sub) is True
    assert s.channels == {"c": SubState.SUBSCRIBED}
    assert sub.state is SubState.SUBSCRIBED
    assert s.subscribe_succeeded(sub) is False  # already subscribed


def test_subscribe_failed_forgets_only_a_pending_subscription() -> None:
    s = make()
    a = subscribing(s.receive(frame(op="subscribe", channel="a"), 0.0))
    b = subscribing(s.receive(frame(op="subscribe", channel="b"), 0.0))
    s.subscribe_succeeded(b)
    s.subscribe_failed(a)
    s.subscribe_failed(b)  # established: unaffected
    s.subscribe_failed(Subscription(Channel("zzz")))  # unknown: no-op
    assert s.channels == {"b": SubState.SUBSCRIBED}
    # after a failure the client may try again
    subscribing(s.receive(frame(op="subscribe", channel="a"), 0.0))


def test_drop_subscription() -> None:
    s = make()
    s.subscribe_succeeded(subscribing(s.receive(frame(op="subscribe", channel="a"), 0.0)))
    s.receive(frame(op="subscribe", channel="b"), 0.0)
    s.drop_subscription(Channel("a"))
    s.drop_subscription(Channel("b"))
    s.drop_subscription(Channel("c"))  # unknown: no-op
    assert s.channels == {}
    err = error_of(s.receive(frame(op="unsubscribe", channel="a"), 0.0))
    assert err["code"] == "not_subscribed"


def test_error_code_enum_values_reach_the_wire() -> None:
    s = make()
    err = error_of(s.receive(frame(op="unsubscribe", channel="c", ref="r"), 0.0))
    assert err["code"] == ErrorCode.NOT_SUBSCRIBED.value
    assert err["message"]


def test_a_failed_publish_fences_its_channel_until_it_is_sent_again() -> None:
    """Per-connection order: nothing published after a failed publish is stored ahead of
    it, and refusals for that reason are not held against the client."""
    s = make(max_errors=2)
    s.publish_failed(Channel("c"), "p1")
    s.publish_failed(Channel("c"), "p2")  # failed behind p1: p1 stays the one to resend
    for n in range(5):  # more than max_errors: a fence is not the client's error
        err = error_of(s.receive(frame(op="publish", channel="c", data=n, id=f"q{n}", ref=n), 0))
        assert err["code"] == "unavailable" and err["temporary"] is True
        assert err["behind"] == "p1" and err["id"] == f"q{n}" and err["ref"] == n
    # Other channels are not held up.
    assert _published(s.receive(frame(op="publish", channel="d", data=1, id="x"), 0)) == "x"
    assert error_of(s.receive(frame(op="publish", channel="c", data=1, id="p2"), 0))
    # The failed one again: it goes, and so does everything after it.
    assert _published(s.receive(frame(op="publish", channel="c", data=1, id="p1"), 0)) == "p1"
    assert _published(s.receive(frame(op="publish", channel="c", data=1, id="p2"), 0)) == "p2"
    assert not s.closed


def _published(actions: list[Action]) -> str | None:
    assert len(actions) == 1 and isinstance(actions[0], Publish), actions
    return actions[0].id


# --- authentication and capabilities -------------------------------------------------------

NOW_EPOCH = 1_800_000_000.0


def _creds(sub: str, caps: dict[str, list[str]], exp: float = NOW_EPOCH + 60) -> Credentials:
    return Credentials(sub=sub, exp=exp, capabilities=parse_capabilities(caps))


# Tokens are verified by an injected function: here a table of known tokens.
TOKENS = {
    "full": _creds("alice", {"chat:*": ["subscribe", "publish", "history"]}),
    "narrow": _creds("alice", {"chat:lobby": ["subscribe"]}, exp=NOW_EPOCH + 120),
    "bob": _creds("bob", {"*": ["subscribe", "publish", "history"]}),
}


def _verify(token: str) -> Credentials:
    if token == "expired":
        raise TokenRejected("token expired", expired=True)
    if token not in TOKENS:
        raise TokenRejected("bad signature")
    return TOKENS[token]


def token_session() -> ServerSession:
    return ServerSession(SessionLimits(3, 50, _limit), SessionAuth(_verify))


def authed(s: ServerSession, token: str = "full", ref: int = 1) -> None:
    [reply] = no_audit(s.receive(frame(op="auth", token=token, ref=ref), 0.0))
    assert isinstance(reply, Reply)
    body = json.loads(reply.frame)
    assert body == {"op": "authed", "ref": ref, "sub": TOKENS[token].sub, "exp": TOKENS[token].exp}


@pytest.mark.parametrize(
    "request_frame",
    [
        {"op": "subscribe", "channel": "chat:lobby", "ref": 7},
        {"op": "publish", "channel": "chat:lobby", "data": 1, "ref": 7},
        {"op": "history", "channel": "chat:lobby", "ref": 7},
        {"op": "unsubscribe", "channel": "chat:lobby", "ref": 7},
    ],
)
def test_token_mode_refuses_everything_but_auth_and_ping_before_auth(
    request_frame: dict[str, object],
) -> None:
    s = token_session()
    body = error_of(s.receive(json.dumps(request_frame), 0.0))
    assert (body["code"], body["ref"]) == (ErrorCode.UNAUTHORIZED, 7)
    assert only_reply(s.receive(frame(op="ping", ref=2), 0.0))["op"] == "pong"
    authed(s)
    assert s.credentials == TOKENS["full"]
    assert s.expires_at == TOKENS["full"].exp


def test_a_refused_auth_frame_says_why_and_leaves_the_session_unauthenticated() -> None:
    s = token_session()
    body = error_of(s.receive(frame(op="auth", token="forged", ref=3), 0.0))
    assert body == {
        "op": "error",
        "ref": 3,
        "code": "unauthorized",
        "message": "bad signature",
        "temporary": False,
    }
    assert s.credentials is None
    assert error_of(s.receive(frame(op="subscribe", channel="chat:a"), 0.0))["code"] == (
        ErrorCode.UNAUTHORIZED
    )


@pytest.mark.parametrize(
    ("op", "extra"),
    [("subscribe", {}), ("publish", {"data": 1}), ("history", {})],
)
def test_capabilities_allow_and_forbid_per_channel(op: str, extra: dict[str, object]) -> None:
    s = token_session()
    authed(s)
    allowed = s.receive(frame(op=op, channel="chat:lobby", ref=1, **extra), 0.0)
    assert not any(isinstance(a, Reply) for a in allowed)
    body = error_of(s.receive(frame(op=op, channel="news:today", ref=2, **extra), 0.0))
    assert body["code"] == ErrorCode.FORBIDDEN
    assert body["channel"] == "news:today"
    assert body["ref"] == 2
    assert op in body["message"]


def test_anonymous_capabilities_apply_without_a_token() -> None:
    auth = SessionAuth(None, parse_capabilities({"news:*": ["subscribe", "history"]}))
    s = ServerSession(SessionLimits(3, 50, _limit), auth)
    assert isinstance(s.receive(frame(op="subscribe", channel="news:a"), 0.0)[0], SubscribeRequest)
    body = error_of(s.receive(frame(op="publish", channel="news:a", data=1), 0.0))
    assert (body["code"], body["channel"]) == (ErrorCode.FORBIDDEN, "news:a")
    # An anonymous relay takes no tokens.
    assert error_of(s.receive(frame(op="auth", token="full"), 0.0))["code"] == ErrorCode.BAD_REQUEST


def test_default_session_is_anonymous_with_everything_allowed() -> None:
    s = make()
    assert isinstance(
        s.receive(frame(op="subscribe", channel="any:thing"), 0.0)[0], SubscribeRequest
    )
    assert isinstance(s.receive(frame(op="publish", channel="x", data=1), 0.0)[0], Publish)


def test_renewal_narrowing_ends_a_subscription_at_once() -> None:
    s = token_session()
    authed(s, "full")
    lobby = subscribing(s.receive(frame(op="subscribe", channel="chat:lobby"), 0.0))
    other = subscribing(s.receive(frame(op="subscribe", channel="chat:other"), 0.0))
    s.subscribe_succeeded(lobby)
    s.subscribe_succeeded(other)
    actions = no_audit(s.receive(frame(op="auth", token="narrow", ref=9), 0.0))
    assert isinstance(actions[0], Reply)
    assert json.loads(actions[0].frame)["op"] == "authed"
    assert actions[1] == Detach(other)
    assert isinstance(actions[2], Reply)
    ended = json.loads(actions[2].frame)
    assert (ended["code"], ended["channel"]) == ("forbidden", "chat:other")
    assert "ended" in ended["message"]
    assert len(actions) == 3
    assert s.channels == {Channel("chat:lobby"): SubState.SUBSCRIBED}
    # The new capabilities hold from now on.
    assert error_of(s.receive(frame(op="publish", channel="chat:lobby", data=1), 0.0))["code"] == (
        ErrorCode.FORBIDDEN
    )
    assert s.expires_at == TOKENS["narrow"].exp


def test_a_renewal_must_keep_the_sub() -> None:
    s = token_session()
    authed(s, "full")
    body = error_of(s.receive(frame(op="auth", token="bob", ref=4), 0.0))
    assert body["code"] == ErrorCode.UNAUTHORIZED
    assert s.credentials == TOKENS["full"]


def test_expiry_closes_with_token_expired_unless_renewed() -> None:
    s = token_session()
    assert s.tick(NOW_EPOCH + 10_000) == []  # no token: nothing expires
    authed(s, "full")
    assert s.tick(NOW_EPOCH + 59) == []
    authed(s, "narrow", ref=2)  # renewed: expires later
    assert s.tick(NOW_EPOCH + 61) == []
    actions = no_audit(s.tick(NOW_EPOCH + 120))
    assert actions[-1] == Close(CloseCode.TOKEN_EXPIRED, "token_expired")
    assert isinstance(actions[0], Reply)
    assert json.loads(actions[0].frame)["code"] == "unauthorized"
    assert s.closed
    assert s.receive(frame(op="ping"), 0.0) == []
    assert s.tick(NOW_EPOCH + 200) == []


def test_authenticate_with_a_url_token() -> None:
    s = token_session()
    assert s.authenticate("full") == TOKENS["full"]
    assert isinstance(s.receive(frame(op="subscribe", channel="chat:a"), 0.0)[0], SubscribeRequest)
    with pytest.raises(TokenRejected) as info:
        token_session().authenticate("expired")
    assert info.value.expired
    with pytest.raises(TokenRejected):
        make().authenticate("full")  # anonymous: no tokens


# --- rate limits and the authentication deadline ------------------------------------------


def limited(publish_rate: float = 10.0, burst: int = 2) -> ServerSession:
    return ServerSession(
        SessionLimits(
            3,
            5,
            _limit,
            publish_rate=publish_rate,
            publish_burst=burst,
            subscribe_rate=1.0,
            subscribe_burst=2,
        )
    )


def test_publishes_above_the_rate_are_rate_limited_not_stored_and_not_errors() -> None:
    s = limited()
    assert _published(s.receive(frame(op="publish", channel="c", data=1, id="a"), 0.0)) == "a"
    assert _published(s.receive(frame(op="publish", channel="c", data=1, id="b"), 0.0)) == "b"
    for n in range(10):  # more than max_errors (5): a rate limit is not a bad frame
        err = error_of(s.receive(frame(op="publish", channel="d", data=1, ref=n), 0.0))
        assert err["code"] == "rate_limited" and err["temporary"] is True
        assert err["retry_after_ms"] == 100 and err["ref"] == n and err["channel"] == "d"
    assert not s.closed
    # Refilled after the wait it was told.
    assert _published(s.receive(frame(op="publish", channel="d", data=1, id="c"), 0.1)) == "c"


def test_a_rate_limited_publish_fences_its_channel_so_a_resend_keeps_order() -> None:
    s = limited(burst=1)
    assert _published(s.receive(frame(op="publish", channel="c", data=1, id="p1"), 0.0))
    err = error_of(s.receive(frame(op="publish", channel="c", data=1, id="p2", ref=2), 0.0))
    assert err["code"] == "rate_limited" and err["id"] == "p2"
    # Later: p3 may not overtake p2, even with tokens again.
    err = error_of(s.receive(frame(op="publish", channel="c", data=1, id="p3", ref=3), 1.0))
    assert err["code"] == "unavailable" and err["behind"] == "p2"
    assert _published(s.receive(frame(op="publish", channel="c", data=1, id="p2"), 1.0)) == "p2"
    assert _published(s.receive(frame(op="publish", channel="c", data=1, id="p3"), 1.1)) == "p3"


def test_a_publish_failing_in_the_writer_fences_ahead_of_a_rate_limited_one() -> None:
    """p1 was accepted, p2 rate-limited; then p1 fails to be stored: p1 must go first."""
    s = limited(burst=1)
    assert _published(s.receive(frame(op="publish", channel="c", data=1, id="p1"), 0.0))
    assert error_of(s.receive(frame(op="publish", channel="c", data=1, id="p2"), 0.0))
    s.publish_failed(Channel("c"), "p1")
    err = error_of(s.receive(frame(op="publish", channel="c", data=1, id="p2", ref=2), 1.0))
    assert err["code"] == "unavailable" and err["behind"] == "p1"
    assert _published(s.receive(frame(op="publish", channel="c", data=1, id="p1"), 1.0)) == "p1"
    assert _published(s.receive(frame(op="publish", channel="c", data=1, id="p2"), 2.0)) == "p2"
    s.publish_failed(Channel("c"), "p2")  # an ordinary failure fence again
    s.publish_failed(Channel("c"), "p3")
    assert (
        error_of(s.receive(frame(op="publish", channel="c", data=1, id="p3"), 3.0))["behind"]
        == "p2"
    )


def test_subscribes_above_the_rate_are_rate_limited_and_not_subscribed() -> None:
    s = limited()
    subscribing(s.receive(frame(op="subscribe", channel="a"), 0.0))
    subscribing(s.receive(frame(op="subscribe", channel="b"), 0.0))
    err = error_of(s.receive(frame(op="subscribe", channel="c", ref=3), 0.0))
    assert err["code"] == "rate_limited" and err["retry_after_ms"] == 1000
    assert err["channel"] == "c" and "id" not in err
    assert Channel("c") not in s.channels
    subscribing(s.receive(frame(op="subscribe", channel="c"), 1.0))


def test_token_mode_closes_a_connection_without_a_token_at_the_deadline() -> None:
    limits = SessionLimits(3, 50, _limit, auth_timeout_s=10.0)
    s = ServerSession(limits, SessionAuth(_verify), NOW_EPOCH)
    assert s.deadline == NOW_EPOCH + 10.0
    assert s.tick(NOW_EPOCH + 9.9) == []
    reply, close = s.tick(NOW_EPOCH + 10.0)
    assert isinstance(reply, Reply) and json.loads(reply.frame)["code"] == "unauthorized"
    assert close == Close(CloseCode.UNAUTHORIZED, "unauthorized")
    assert s.closed and s.tick(NOW_EPOCH + 11) == []
    assert s.deadline is None  # nothing left to decide


def test_a_token_in_time_replaces_the_deadline_with_its_expiry() -> None:
    limits = SessionLimits(3, 50, _limit, auth_timeout_s=10.0)
    s = ServerSession(limits, SessionAuth(_verify), NOW_EPOCH)
    authed(s)
    assert s.deadline == TOKENS["full"].exp
    assert s.tick(NOW_EPOCH + 30) == []


def test_anonymous_sessions_have_no_auth_deadline() -> None:
    s = ServerSession(SessionLimits(3, 50, _limit), now=NOW_EPOCH)
    assert s.deadline is None and s.tick(NOW_EPOCH + 3600) == []
