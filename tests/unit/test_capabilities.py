"""Capabilities: channel pattern -> operations, parsed from a claims dict (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.capabilities import (
    ALL_OPS,
    Capabilities,
    CapabilityError,
    Op,
    parse_capabilities,
)

CHANNEL_CHARS = "abcxyz019_-:@/=+!~.,"
channels = st.text(alphabet=CHANNEL_CHARS, min_size=1, max_size=30)
ops = st.sampled_from(sorted(ALL_OPS))
op_sets = st.frozensets(ops)


def _pattern(form: str, channel: str) -> str:
    if form == "exact":
        return channel
    if form == "prefix":
        return channel[: max(1, len(channel) // 2)] + "*"
    return "*"


# --- the matrix: every op x allowed/denied x pattern form ---------------------------------


@pytest.mark.parametrize("op", sorted(ALL_OPS))
@pytest.mark.parametrize("granted", [True, False], ids=["allowed", "denied"])
@pytest.mark.parametrize("form", ["exact", "prefix", "star"])
@given(channel=channels, others=op_sets)
def test_capability_matrix(
    op: str, granted: bool, form: str, channel: str, others: frozenset[str]
) -> None:
    given_ops = (others | {op}) if granted else (others - {op})
    caps = parse_capabilities({_pattern(form, channel): sorted(given_ops)})
    assert caps.allows(op, channel) is granted
    assert caps.allows(Op(op), channel) is granted


@given(channel=channels, op=ops)
def test_star_allows_every_channel(channel: str, op: str) -> None:
    assert parse_capabilities({"*": sorted(ALL_OPS)}).allows(op, channel)
    assert Capabilities.everything().allows(op, channel)
    assert not Capabilities.nothing().allows(op, channel)


@given(prefix=channels, rest=st.text(alphabet=CHANNEL_CHARS, max_size=20), other=channels, op=ops)
def test_prefix_matches_exactly_the_channels_that_start_with_it(
    prefix: str, rest: str, other: str, op: str
) -> None:
    caps = parse_capabilities({prefix + "*": [op]})
    assert caps.allows(op, prefix + rest)
    assert caps.allows(op, other) is other.startswith(prefix)


@given(channel=channels, suffix=st.text(alphabet=CHANNEL_CHARS, min_size=1, max_size=5), op=ops)
def test_an_exact_pattern_matches_only_that_channel(channel: str, suffix: str, op: str) -> None:
    caps = parse_capabilities({channel: [op]})
    assert caps.allows(op, channel)
    assert not caps.allows(op, channel + suffix)


@given(
    grants=st.dictionaries(
        st.one_of(channels, channels.map(lambda c: c + "*"), st.just("*")), op_sets, max_size=5
    ),
    channel=channels,
    op=ops,
)
def test_grants_add_up(grants: dict[str, frozenset[str]], channel: str, op: str) -> None:
    caps = parse_capabilities({p: sorted(o) for p, o in grants.items()})
    expected = any(
        op in granted and (channel.startswith(p[:-1]) if p.endswith("*") else channel == p)
        for p, granted in grants.items()
    )
    assert caps.allows(op, channel) is expected


@given(op=st.text(max_size=12).filter(lambda o: o not in ALL_OPS))
def test_unknown_ops_are_rejected(op: str) -> None:
    with pytest.raises(CapabilityError, match="unknown operation"):
        parse_capabilities({"chat:*": ["subscribe", op]})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"a b": ["publish"]}, "bad capability pattern 'a b'"),
        ({"*chat": ["publish"]}, "bad capability pattern"),
        ({"ch*at": ["publish"]}, "bad capability pattern"),
        ({"chat.*.x": ["publish"]}, "bad capability pattern"),
        ({"x" * 201: ["publish"]}, "bad capability pattern"),
        ({"": ["publish"]}, "must not be empty"),
        ({"chat:*": "publish"}, "must be a list of strings"),
        ({"chat:*": [1]}, "unknown operation 1"),
        (["chat:*"], "must be an object"),
        ("chat:*", "must be an object"),
        ({str(i): ["publish"] for i in range(257)}, "at most 256"),
    ],
)
def test_bad_capabilities_say_what_is_wrong(raw: object, message: str) -> None:
    with pytest.raises(CapabilityError, match=message.replace("*", r"\*")):
        parse_capabilities(raw)


def test_empty_ops_and_unknown_channel_allow_nothing() -> None:
    caps = parse_capabilities({"chat:lobby": []})
    assert not any(caps.allows(op, "chat:lobby") for op in ALL_OPS)
    assert parse_capabilities({}) == Capabilities.nothing()


def test_to_dict_round_trips() -> None:
    raw = {"chat:*": ["history", "subscribe"], "news": ["presence"]}
    assert parse_capabilities(raw).to_dict() == raw
