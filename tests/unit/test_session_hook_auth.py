"""ServerSession in hook mode: the backend checks credentials, the session keeps the rules."""

from __future__ import annotations

import json
from typing import Any

from relay.core.capabilities import Credentials, parse_capabilities
from relay.core.channels import Channel
from relay.protocol.errors import ErrorCode
from relay.protocol.frames import Auth
from relay.protocol.session import (
    Audit,
    AuthRequest,
    Detach,
    Reply,
    ServerSession,
    SessionAuth,
    SessionLimits,
    SubscribeRequest,
)

HOOKED = SessionAuth(external=True)


def session() -> ServerSession:
    return ServerSession(SessionLimits(10, 100, lambda _: 1000), HOOKED, now=0.0)


def creds(sub: str, caps: dict[str, list[str]]) -> Credentials:
    return Credentials(sub, exp=1e10, capabilities=parse_capabilities(caps), iat=0.0)


def replies(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.frame) for a in actions if isinstance(a, Reply)]


def send(s: ServerSession, **fields: Any) -> list[Any]:
    return s.receive(json.dumps(fields), 1.0)


def test_an_auth_frame_becomes_a_request_and_nothing_is_allowed_before() -> None:
    s = session()
    (refused,) = replies(send(s, op="subscribe", channel="chat:a", ref=1))
    assert refused["code"] == ErrorCode.UNAUTHORIZED
    (request,) = send(s, op="auth", token="session-1", ref=2)
    assert isinstance(request, AuthRequest) and request.frame.token == "session-1"
    assert s.credentials is None  # nothing granted until the backend answers


def test_accepted_grants_caps_and_answers_authed() -> None:
    s = session()
    frame = Auth("session-1", ref=2)
    actions = s.auth_accepted(frame, creds("alice", {"chat:*": ["subscribe"]}), 1.0)
    (authed,) = replies(actions)
    assert (authed["op"], authed["sub"], authed["ref"]) == ("authed", "alice", 2)
    assert any(isinstance(a, Audit) and a.event == "authed" for a in actions)
    assert isinstance(send(s, op="subscribe", channel="chat:a")[0], SubscribeRequest)
    (forbidden,) = replies(send(s, op="subscribe", channel="news:a"))
    assert forbidden["code"] == ErrorCode.FORBIDDEN


def test_a_renewal_narrows_and_must_keep_the_sub() -> None:
    s = session()
    s.grant(creds("alice", {"*": ["subscribe"]}))
    sub = send(s, op="subscribe", channel="news:a")[0]
    assert isinstance(sub, SubscribeRequest)
    s.subscribe_succeeded(sub.subscription)
    other = s.auth_accepted(Auth("t", ref=3), creds("bob", {"*": ["subscribe"]}), 1.0)
    assert replies(other)[0]["code"] == ErrorCode.UNAUTHORIZED
    narrowed = s.auth_accepted(Auth("t", ref=4), creds("alice", {"chat:*": ["subscribe"]}), 1.0)
    assert any(isinstance(a, Detach) for a in narrowed)
    assert s.subscription(Channel("news:a")) is None


def test_refused_is_an_audited_unauthorized_error() -> None:
    s = session()
    actions = s.auth_refused(Auth("t", ref=5), "no such session", 1.0)
    (error,) = replies(actions)
    assert (error["code"], error["message"], error["ref"]) == (
        ErrorCode.UNAUTHORIZED,
        "no such session",
        5,
    )
    assert any(isinstance(a, Audit) and a.event == "auth_failed" for a in actions)
