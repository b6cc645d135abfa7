"""Channel names and their mapping onto NATS subjects and JetStream stream names."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.core.channels import (
    MAX_CHANNEL_LENGTH,
    Channel,
    InvalidChannel,
    decode_token,
    dedupe_key,
    encode_token,
    live_subject,
    live_subjects,
    store_subject,
    stream_name,
    stream_subjects,
    validate_channel,
)

ALLOWED = string.ascii_letters + string.digits + "_-:@/=+!~.,"
valid_names = st.text(alphabet=ALLOWED, min_size=1, max_size=MAX_CHANNEL_LENGTH)
# Ids as the protocol accepts them: 1-128 printable ASCII characters without spaces.
valid_ids = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=128)


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "Z",
        "0",
        "room.1",
        "a" * MAX_CHANNEL_LENGTH,
        ALLOWED,
        "user:42/inbox",
        "a..b",
        ".",
        "...",
        "x=y+z!~,",
        "@home",
        "-_-",
    ],
)
def test_accepts(name: str) -> None:
    assert validate_channel(name) == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * (MAX_CHANNEL_LENGTH + 1), id="201"),
        pytest.param("a b", id="space"),
        pytest.param(" a", id="leading-space"),
        pytest.param("a\t", id="tab"),
        pytest.param("a\n", id="trailing-newline"),
        pytest.param("a\r\n", id="crlf"),
        pytest.param("\n", id="newline-only"),
        pytest.param("a" * MAX_CHANNEL_LENGTH + "\n", id="200-then-newline"),
        pytest.param("a\nb", id="inner-newline"),
        pytest.param("*", id="star"),
        pytest.param("a.*", id="star-token"),
        pytest.param(">", id="gt"),
        pytest.param("a.>", id="gt-token"),
        pytest.param("%", id="percent"),
        pytest.param("a%2Eb", id="encoded-dot"),
        pytest.param("é", id="e-acute"),
        pytest.param("ａ", id="fullwidth"),
        pytest.param("a\x00", id="nul"),
        pytest.param("a#b", id="hash"),
        pytest.param("a\\b", id="backslash"),
        pytest.param('a"b', id="quote"),
        pytest.param("a$b", id="dollar"),
    ],
)
def test_rejects(name: str) -> None:
    with pytest.raises(InvalidChannel):
        validate_channel(name)


@pytest.mark.parametrize("value", [None, 5, b"abc", ["a"], 1.5])
def test_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidChannel):
        validate_channel(value)


def test_invalid_channel_is_a_value_error() -> None:
    assert issubclass(InvalidChannel, ValueError)


@settings(max_examples=300, deadline=None)
@given(valid_names)
def test_valid_names_are_accepted(name: str) -> None:
    assert validate_channel(name) == name


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=MAX_CHANNEL_LENGTH + 5))
@example("a\n")
def test_acceptance_matches_the_documented_alphabet(name: str) -> None:
    documented = 1 <= len(name) <= MAX_CHANNEL_LENGTH and all(c in ALLOWED for c in name)
    try:
        validate_channel(name)
    except InvalidChannel:
        assert not documented
    else:
        assert documented


@settings(max_examples=300, deadline=None)
@given(valid_names)
def test_token_round_trip(name: str) -> None:
    token = encode_token(Channel(name))
    assert decode_token(token) == name


@settings(max_examples=300, deadline=None)
@given(valid_names)
def test_tokens_are_single_nats_tokens(name: str) -> None:
    token = encode_token(Channel(name))
    assert token
    for forbidden in ".*>":
        assert forbidden not in token
    assert not any(c.isspace() for c in token)
    assert token.isascii() and token.isprintable()


@settings(max_examples=200, deadline=None)
@given(valid_names, valid_names)
def test_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_token(Channel(a)) != encode_token(Channel(b))


@pytest.mark.parametrize(
    ("name", "token"),
    [("a.b", "a%2Eb"), (".", "%2E"), ("a..b", "a%2E%2Eb"), ("plain", "plain"), ("2E", "2E")],
)
def test_token_examples(name: str, token: str) -> None:
    assert encode_token(Channel(name)) == token
    assert decode_token(token) == name


def test_subjects_and_stream_names() -> None:
    ch = Channel("room.1")
    assert store_subject("us-east", "chat", ch) == "rly.v1.us-east.chat.room%2E1"
    assert live_subject("us-east", "chat", ch) == "rlyl.v1.us-east.chat.room%2E1"
    assert stream_subjects("us-east", "chat") == "rly.v1.us-east.chat.>"
    assert live_subjects("us-east", "chat") == "rlyl.v1.us-east.chat.>"
    assert stream_name("us-east", "chat") == "RLY_US-EAST_CHAT"


def _subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` matches one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


@settings(max_examples=200, deadline=None)
@given(valid_names)
def test_subjects_have_five_tokens_and_match_their_wildcards(name: str) -> None:
    ch = Channel(name)
    store = store_subject("eu-west", "ns", ch)
    live = live_subject("eu-west", "ns", ch)
    assert store.split(".") == ["rly", "v1", "eu-west", "ns", encode_token(ch)]
    assert live.split(".") == ["rlyl", "v1", "eu-west", "ns", encode_token(ch)]
    assert _subject_matches(stream_subjects("eu-west", "ns"), store)
    assert _subject_matches(live_subjects("eu-west", "ns"), live)
    # The live republish space never overlaps the stored space (no feedback loop).
    assert not _subject_matches(stream_subjects("eu-west", "ns"), live)
    assert not _subject_matches(live_subjects("eu-west", "ns"), store)
    # The channel is recoverable from the last token.
    assert decode_token(store.split(".")[-1]) == name


def test_subjects_of_different_regions_and_namespaces_differ() -> None:
    ch = Channel("c")
    subjects = {store_subject(r, n, ch) for r in ("r1", "r2") for n in ("a", "b")}
    assert len(subjects) == 4
    assert not _subject_matches(stream_subjects("r1", "a"), store_subject("r2", "a", ch))
    assert not _subject_matches(stream_subjects("r1", "a"), store_subject("r1", "b", ch))


def test_dedupe_key_example() -> None:
    assert dedupe_key(Channel("room.1"), "m-1") == "room.1 m-1"


@settings(max_examples=200, deadline=None)
@given(valid_names, valid_ids)
def test_dedupe_key_splits_back_into_channel_and_id(name: str, message_id: str) -> None:
    key = dedupe_key(Channel(name), message_id)
    assert key.split(" ") == [name, message_id]
    assert key.isprintable() and "\r" not in key and "\n" not in key


@settings(max_examples=200, deadline=None)
@given(valid_names, valid_ids, valid_names, valid_ids)
def test_dedupe_key_is_injective(a: str, ida: str, b: str, idb: str) -> None:
    if (a, ida) != (b, idb):
        assert dedupe_key(Channel(a), ida) != dedupe_key(Channel(b), idb)
