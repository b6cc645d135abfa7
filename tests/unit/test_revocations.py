"""Revocations (pure): the record, the set every relay checks, and what a session does
with them -- refuse a revoked token, close a live connection, warn before exp, audit."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from relay.core.capabilities import Capabilities, Credentials, TokenRejected
from relay.core.channels import Channel
from relay.core.revocations import (
    BadRevocation,
    Revocation,
    RevocationSet,
    decode_revocation,
    encode_revocation,
    revocation_stream,
    revocation_subject,
)
from relay.protocol.errors import CloseCode
from relay.protocol.session import (
    Action,
    Audit,
    Close,
    Reply,
    ServerSession,
    SessionAuth,
    SessionLimits,
)

RETENTION_S = 1000.0
subs = st.sampled_from(["alice", "bob", "carol"])
jtis = st.sampled_from(["j1", "j2", "j3", "j4"])
times = st.floats(min_value=0, max_value=5000, allow_nan=False)


def creds(
    sub: str = "alice", jti: str | None = "j1", iat: float | None = 100.0, exp: float = 10_000.0
) -> Credentials:
    return Credentials(sub=sub, exp=exp, capabilities=Capabilities.everything(), iat=iat, jti=jti)


def rev(
    n: int = 0,
    *,
    at: float = 0.0,
    jti: str | None = None,
    sub: str | None = None,
    issued_before: float | None = None,
) -> Revocation:
    return Revocation(
        id=f"r{n}", at=at, region="us-east", jti=jti, sub=sub, issued_before=issued_before
    )


credentials = st.builds(
    creds, sub=subs, jti=st.one_of(st.none(), jtis), iat=st.one_of(st.none(), times)
)
revocations = st.one_of(
    st.builds(lambda j, at: rev(jti=j, at=at), jtis, times),
    st.builds(
        lambda s, t, at: rev(sub=s, issued_before=t, at=at),
        subs,
        st.one_of(st.none(), times),
        times,
    ),
)


# --- one record ---------------------------------------------------------------------------


def test_a_jti_revocation_matches_only_that_token() -> None:
    r = rev(jti="j1")
    assert r.matches(creds(jti="j1"))
    assert r.matches(creds(sub="bob", jti="j1"))  # a jti names one token, whoever's
    assert not r.matches(creds(jti="j2"))
    assert not r.matches(creds(jti=None))


def test_a_sub_revocation_matches_every_token_of_the_sub() -> None:
    r = rev(sub="alice")
    assert r.matches(creds(jti="j1")) and r.matches(creds(jti=None, iat=None))
    assert not r.matches(creds(sub="bob"))


def test_issued_before_spares_tokens_issued_at_or_after_it() -> None:
    r = rev(sub="alice", issued_before=200.5)
    assert r.matches(creds(iat=200.0))  # iat is whole seconds: same second counts as before
    assert not r.matches(creds(iat=201.0))
    assert r.matches(creds(iat=None))  # a token that cannot show it is fresh
    assert not r.matches(creds(sub="bob", iat=100.0))


@given(revocations)
def test_records_round_trip(r: Revocation) -> None:
    assert decode_revocation(encode_revocation(r)) == r


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "malformed"),
        (b'{"id":"x","at":1,"region":"r"}', "exactly one of jti and sub"),
        (b'{"id":"x","at":1,"region":"r","jti":"a","sub":"b"}', "exactly one of jti and sub"),
        (b'{"id":"x","at":1,"region":"r","jti":"a","issued_before":3}', "goes with sub"),
        (b'{"id":"","at":1,"region":"r","jti":"a"}', "id must be"),
        (b'{"id":"x","at":1,"region":"r","jti":"' + b"a" * 300 + b'"}', "jti must be"),
        (b'{"id":"x","at":"soon","region":"r","jti":"a"}', "Expected `float`"),
        (b"{" + b" " * 5000 + b"}", "at most"),
    ],
)
def test_bad_records_are_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(BadRevocation) as caught:
        decode_revocation(raw)
    assert why in str(caught.value) or why == "malformed"


def test_stream_and_subject_names() -> None:
    assert revocation_stream("us-east") == "RLYR_US-EAST"
    assert revocation_subject("us-east") == "rlyr.v1.us-east"


# --- the set ------------------------------------------------------------------------------


def test_add_is_idempotent_and_refuses_what_is_already_expired() -> None:
    s = RevocationSet(RETENTION_S)
    assert s.add(rev(1, jti="j1", at=10.0), now=20.0)
    assert not s.add(rev(1, jti="j1", at=10.0), now=20.0)
    assert not s.add(rev(2, jti="j2", at=10.0), now=10.0 + RETENTION_S + 1)
    assert len(s) == 1


def test_expire_forgets_revocations_past_the_retention() -> None:
    s = RevocationSet(RETENTION_S)
    s.add(rev(1, jti="j1", at=0.0), now=0.0)
    s.add(rev(2, sub="alice", at=500.0), now=500.0)
    assert s.matches(creds(jti="j1")) and s.matches(creds(sub="alice", jti="x"))
    assert s.expire(RETENTION_S + 1) == 1
    assert not s.matches(creds(sub="bob", jti="j1"))
    assert s.matches(creds(sub="alice", jti="x"))
    assert s.expire(RETENTION_S + 501) == 1
    assert len(s) == 0
    assert not s.matches(creds(sub="alice"))


class RevocationSetMachine(RuleBasedStateMachine):
    """The set answers like the plain list of the revocations not yet expired."""

    def __init__(self) -> None:
        super().__init__()
        self.set = RevocationSet(RETENTION_S)
        self.model: dict[str, Revocation] = {}
        self.now = 0.0
        self.n = 0

    @rule(r=revocations, age=st.floats(min_value=0, max_value=1500))
    def add(self, r: Revocation, age: float) -> None:
        self.n += 1
        r = Revocation(
            id=f"r{self.n}",
            at=self.now - age,
            region=r.region,
            jti=r.jti,
            sub=r.sub,
            issued_before=r.issued_before,
        )
        added = self.set.add(r, self.now)
        assert added is (r.at + RETENTION_S >= self.now)
        if added:
            self.model[r.id] = r

    @rule(r=revocations)
    def add_again(self, r: Revocation) -> None:
        for known in list(self.model.values())[:1]:
            assert not self.set.add(known, self.now)

    @rule(dt=st.floats(min_value=0, max_value=800))
    def tick_and_expire(self, dt: float) -> None:
        self.now += dt
        dropped = self.set.expire(self.now)
        expired = [k for k, r in self.model.items() if r.at + RETENTION_S < self.now]
        assert dropped == len(expired)
        for k in expired:
            del self.model[k]

    @rule(c=credentials)
    def check(self, c: Credentials) -> None:
        assert self.set.matches(c) is any(r.matches(c) for r in self.model.values())

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.set) == len(self.model)


TestRevocationSet = RevocationSetMachine.TestCase


# --- a session ----------------------------------------------------------------------------

NOW = 1_000_000.0


def _limit(channel: Channel) -> int:
    return 1000


def session(
    revoked: RevocationSet | None = None, warning_s: float = 30.0, iat: float | None = None
) -> ServerSession:
    def verify(token: str) -> Credentials:
        if token == "bad":
            raise TokenRejected("bad signature")
        sub, jti, exp = token.split("/")
        return creds(sub=sub, jti=jti, iat=iat, exp=float(exp))

    auth = SessionAuth(
        verify,
        revoked=None if revoked is None else revoked.matches,
        expiry_warning_s=warning_s,
    )
    return ServerSession(SessionLimits(3, 50, _limit), auth, NOW)


def replies(actions: list[Action]) -> list[dict[str, Any]]:
    return [json.loads(a.frame) for a in actions if isinstance(a, Reply)]


def audits(actions: list[Action]) -> list[Audit]:
    return [a for a in actions if isinstance(a, Audit)]


def auth(s: ServerSession, token: str) -> list[Action]:
    return s.receive(json.dumps({"op": "auth", "token": token, "ref": 1}), 0.0)


def test_a_revoked_token_is_refused_at_connect_and_in_an_auth_frame() -> None:
    revoked = RevocationSet(RETENTION_S)
    revoked.add(rev(jti="j1", at=NOW), NOW)
    s = session(revoked)
    with pytest.raises(TokenRejected, match="token revoked"):
        s.authenticate(f"alice/j1/{NOW + 600}")
    actions = auth(s, f"alice/j1/{NOW + 600}")
    [error] = replies(actions)
    assert (error["code"], error["message"]) == ("unauthorized", "token revoked")
    [event] = audits(actions)
    assert (event.event, event.reason, event.op) == ("auth_failed", "token revoked", "auth")
    assert replies(auth(s, f"alice/j2/{NOW + 600}"))[0]["op"] == "authed"


def test_a_revocation_closes_a_live_connection_with_4005() -> None:
    revoked = RevocationSet(RETENTION_S)
    s = session(revoked)
    s.authenticate(f"alice/j1/{NOW + 600}")
    assert s.check_revoked() == []
    revoked.add(rev(sub="bob", at=NOW), NOW)
    assert s.check_revoked() == []  # someone else's
    revoked.add(rev(1, sub="alice", issued_before=NOW, at=NOW), NOW)
    actions = s.check_revoked()
    assert [a for a in actions if isinstance(a, Close)] == [
        Close(CloseCode.TOKEN_REVOKED, "token_revoked")
    ]
    assert replies(actions)[0]["code"] == "unauthorized"
    [event] = audits(actions)
    assert (event.event, event.sub, event.jti) == ("revoked", "alice", "j1")
    assert s.closed and s.check_revoked() == [] and s.receive('{"op":"ping"}', 0.0) == []


def test_no_revocation_check_for_a_session_without_a_token() -> None:
    revoked = RevocationSet(RETENTION_S)
    revoked.add(rev(sub="alice", at=NOW), NOW)
    assert session(revoked).check_revoked() == []


def test_denials_failures_auths_and_renewals_are_audited() -> None:
    s = session()
    [failed] = audits(auth(s, "bad"))
    assert (failed.event, failed.reason, failed.sub) == ("auth_failed", "bad signature", None)
    [before] = audits(s.receive('{"op":"subscribe","channel":"chat:a"}', 0.0))
    assert (before.event, before.op, before.channel) == ("denied", "subscribe", "chat:a")
    [authed] = audits(auth(s, f"alice/j1/{NOW + 600}"))
    assert (authed.event, authed.sub, authed.jti) == ("authed", "alice", "j1")
    [renewed] = audits(auth(s, f"alice/j2/{NOW + 900}"))
    assert (renewed.event, renewed.sub, renewed.jti) == ("renewed", "alice", "j2")
    [other] = audits(auth(s, f"mallory/j3/{NOW + 900}"))
    assert other.event == "auth_failed" and "same sub" in (other.reason or "")


def test_a_forbidden_operation_is_audited_with_op_and_channel() -> None:
    def verify(token: str) -> Credentials:
        return Credentials("alice", NOW + 600, Capabilities.nothing(), jti="j1")

    s = ServerSession(SessionLimits(3, 50, _limit), SessionAuth(verify), NOW)
    s.authenticate("t")
    actions = s.receive('{"op":"publish","channel":"news:x","data":"secret body"}', 0.0)
    [event] = audits(actions)
    assert (event.event, event.op, event.channel, event.sub) == (
        "denied",
        "publish",
        "news:x",
        "alice",
    )
    assert "secret body" not in repr(event)


# --- the warning before exp ----------------------------------------------------------------


def test_token_expiring_is_sent_once_warning_s_before_exp_then_the_close_at_exp() -> None:
    s = session(warning_s=30.0)
    exp = NOW + 600
    s.authenticate(f"alice/j1/{exp}")
    assert s.deadline == exp - 30
    assert s.tick(exp - 31) == []
    [warning] = replies(s.tick(exp - 30))
    assert warning == {"op": "token_expiring", "exp": exp}
    assert s.deadline == exp
    assert s.tick(exp - 10) == []  # once per token
    actions = s.tick(exp)
    assert Close(CloseCode.TOKEN_EXPIRED, "token_expired") in actions
    assert [a.event for a in audits(actions)] == ["expired"]


def test_a_renewal_moves_the_warning_to_the_new_token() -> None:
    s = session(warning_s=30.0)
    s.authenticate(f"alice/j1/{NOW + 600}")
    replies(s.tick(NOW + 570))
    auth(s, f"alice/j2/{NOW + 1200}")
    assert s.deadline == NOW + 1170
    assert replies(s.tick(NOW + 1170))[0]["op"] == "token_expiring"


@given(
    lifetime=st.floats(min_value=1, max_value=10_000), warning=st.floats(min_value=0, max_value=300)
)
def test_the_warning_is_capped_at_half_the_token_lifetime(lifetime: float, warning: float) -> None:
    s = session(warning_s=warning, iat=NOW)
    exp = NOW + lifetime
    s.authenticate(f"alice/j1/{exp!r}")
    if warning == 0:
        assert s.deadline == exp
    else:
        assert s.deadline is not None
        assert math.isclose(exp - s.deadline, min(warning, lifetime / 2), abs_tol=1e-6)
