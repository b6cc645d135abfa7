"""Validation of backends' hook answers and the hooks' config (pure, no sockets)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config.schema import RelayConfig
from relay.core.hooks import (
    DEFAULT_REJECT_REASON,
    MAX_REASON_CHARS,
    Accepted,
    BadAnswer,
    PublishHookRequest,
    Rejected,
    connect_verdict,
    decode_answer,
    encode_request,
    publish_verdict,
    retry_delay_s,
    retryable,
    subscribe_verdict,
)

NOW = 1_700_000_000.0


def answer(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_connect_accept_gives_identity_caps_and_expiry() -> None:
    body = answer(result="accept", sub="alice", caps={"chat:*": ["subscribe"]}, exp=NOW + 60)
    verdict = connect_verdict(decode_answer(200, body), NOW)
    assert isinstance(verdict, Accepted) and verdict.credentials is not None
    creds = verdict.credentials
    assert (creds.sub, creds.exp, creds.iat) == ("alice", NOW + 60, NOW)
    assert creds.capabilities.allows("subscribe", "chat:x")
    assert not creds.capabilities.allows("publish", "chat:x")


def test_connect_accept_without_caps_or_exp_may_do_nothing_and_does_not_expire() -> None:
    verdict = connect_verdict(decode_answer(200, answer(result="accept", sub="bob")), NOW)
    assert isinstance(verdict, Accepted) and verdict.credentials is not None
    assert not verdict.credentials.capabilities.allows("subscribe", "any")
    assert verdict.credentials.exp > NOW + 365 * 86400


@pytest.mark.parametrize(
    "fields",
    [
        {"result": "accept"},  # no sub
        {"result": "accept", "sub": ""},
        {"result": "accept", "sub": 42},
        {"result": "accept", "sub": "x" * 300},
        {"result": "accept", "sub": "a", "caps": {"chat:*": ["fly"]}},
        {"result": "accept", "sub": "a", "caps": ["subscribe"]},
        {"result": "accept", "sub": "a", "caps": {"bad pattern": ["subscribe"]}},
        {"result": "accept", "sub": "a", "exp": NOW - 1},
        {"result": "accept", "sub": "a", "exp": "tomorrow"},
    ],
)
def test_a_wrong_connect_accept_is_a_bad_answer(fields: dict[str, Any]) -> None:
    with pytest.raises(BadAnswer):
        connect_verdict(decode_answer(200, answer(**fields)), NOW)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"<html>"),
        (200, b"[]"),
        (200, b'{"result": "maybe"}'),
        (200, b'{"accept": true}'),
        (200, b""),
        (500, answer(result="accept")),
        (403, answer(result="reject")),
    ],
)
def test_anything_but_a_200_json_answer_is_a_bad_answer(status: int, body: bytes) -> None:
    with pytest.raises(BadAnswer):
        decode_answer(status, body)


@given(st.binary(max_size=200))
def test_decoding_raises_nothing_but_bad_answer(body: bytes) -> None:
    try:
        decoded = decode_answer(200, body)
    except BadAnswer:
        return
    assert decoded.result in ("accept", "reject")


def test_rejections_carry_a_clean_bounded_reason() -> None:
    verdict = subscribe_verdict(decode_answer(200, answer(result="reject", reason="no\nway")))
    assert verdict == Rejected("no way")
    long = subscribe_verdict(decode_answer(200, answer(result="reject", reason="x" * 999)))
    assert isinstance(long, Rejected) and len(long.reason) == MAX_REASON_CHARS
    silent = publish_verdict(decode_answer(200, answer(result="reject")), 100)
    assert silent == Rejected(DEFAULT_REJECT_REASON)


def test_publish_accept_may_replace_data_within_the_limit() -> None:
    kept = publish_verdict(decode_answer(200, answer(result="accept")), 100)
    assert kept == Accepted()
    replaced = publish_verdict(decode_answer(200, b'{"result":"accept","data":{"a": [1]}}'), 100)
    assert isinstance(replaced, Accepted) and replaced.data is not None
    assert bytes(replaced.data) == b'{"a": [1]}'
    nulled = publish_verdict(decode_answer(200, b'{"result":"accept","data":null}'), 100)
    assert (
        isinstance(nulled, Accepted) and nulled.data is not None and bytes(nulled.data) == b"null"
    )
    with pytest.raises(BadAnswer):
        publish_verdict(decode_answer(200, answer(result="accept", data="x" * 200)), 100)


def test_publish_request_embeds_the_data_as_sent() -> None:
    body = encode_request(
        PublishHookRequest(
            region="r",
            relay="r1",
            connection_id="c",
            sub=None,
            channel="chat:x",
            id="m-1",
            data=msgspec.Raw(b'{"k": 1}'),
        )
    )
    assert json.loads(body) == {
        "hook": "publish",
        "region": "r",
        "relay": "r1",
        "connection_id": "c",
        "sub": None,
        "channel": "chat:x",
        "id": "m-1",
        "data": {"k": 1},
    }


def test_retries_only_for_connection_failures_and_server_errors() -> None:
    assert retryable(None) and retryable(500) and retryable(503)
    assert not retryable(200) and not retryable(404) and not retryable(429)
    assert retry_delay_s(1, 0.1, 1.0) == 0.1
    assert retry_delay_s(3, 0.1, 0.5) == pytest.approx(0.2)


# --- config ----------------------------------------------------------------------------

BASE: dict[str, Any] = {"region": {"name": "us-east"}, "relay": {"id": "r1"}}
HOOK = {"name": "app", "url": "http://127.0.0.1:9000/hooks"}


def config(**sections: Any) -> RelayConfig:
    return RelayConfig.model_validate({**BASE, **sections})


def problems(**sections: Any) -> str:
    with pytest.raises(ValueError) as caught:
        config(**sections)
    return str(caught.value)


def test_hooks_config_defaults_and_references() -> None:
    cfg = config(
        hooks=[{**HOOK, "forward_headers": ["Cookie"]}],
        namespaces=[{"name": "chat", "prefix": "chat:", "publish_hook": "app"}],
        auth={"mode": "hook", "connect_hook": "app"},
    )
    (hook,) = cfg.hooks
    assert (hook.timeout_s, hook.retries, hook.breaker_failures, hook.fail_open) == (
        2.0,
        1,
        5,
        False,
    )
    assert hook.forward_headers == ("cookie",)
    assert cfg.hook("app") is hook and cfg.hook(None) is None


def test_hooks_config_errors_name_the_field() -> None:
    assert "namespaces[0].publish_hook: expected one of the [[hooks]] names (app)" in problems(
        hooks=[HOOK], namespaces=[{"name": "chat", "prefix": "chat:", "publish_hook": "nope"}]
    )
    assert "auth.connect_hook" in problems(hooks=[HOOK], auth={"mode": "hook"})
    assert 'unset unless mode = "hook"' in problems(hooks=[HOOK], auth={"connect_hook": "app"})
    assert "hooks[0].fail_open" in problems(
        hooks=[{**HOOK, "fail_open": True}], auth={"mode": "hook", "connect_hook": "app"}
    )
    assert "hooks[1].name" in problems(hooks=[HOOK, HOOK])
    assert "http:// or https://" in problems(hooks=[{**HOOK, "url": "ftp://x/y"}])
    assert "HTTP header names" in problems(hooks=[{**HOOK, "forward_headers": ["bad header"]}])
