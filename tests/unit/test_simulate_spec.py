"""Simulation specs: regions, latencies, latency matrices, and their error messages."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.simulate.spec import SpecError, parse_duration_ms, parse_matrix, parse_regions, uniform

MATRIX = """\
#          us-east  eu-west  ap-south
us-east    0        80       200ms
eu-west    80       0        0.15s
ap-south   200      150      0
"""


def test_matrix_gives_every_directed_link() -> None:
    spec = parse_matrix(MATRIX)
    assert spec.regions == ("us-east", "eu-west", "ap-south")
    assert spec.link_latency("us-east", "ap-south") == 200
    assert spec.link_latency("eu-west", "ap-south") == 150
    assert spec.link_latency("ap-south", "eu-west") == 150
    assert len(spec.latency_ms) == 6


def test_uniform() -> None:
    spec = uniform(("a", "b", "c"), 80)
    assert set(spec.latency_ms.values()) == {80}
    assert len(spec.latency_ms) == 6


@pytest.mark.parametrize(
    ("text", "expected"),
    [("80ms", 80.0), ("80", 80.0), ("0.08s", 80.0), ("0", 0.0), (" 12.5ms ", 12.5)],
)
def test_durations(text: str, expected: float) -> None:
    assert parse_duration_ms(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fast", "expected a duration like 80ms"),
        ("-5ms", "expected a duration"),
        ("80 minutes", "expected a duration"),
        ("120s", "at most 60 s"),
    ],
)
def test_bad_durations(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_duration_ms(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("us-east", "at least two"),
        ("us-east,US-WEST", "region name 'US-WEST'"),
        ("us-east,us-east", "listed twice"),
        ("us-east,-x", "region name '-x'"),
    ],
)
def test_bad_regions(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_regions(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("a b\na 0 1\n", "not square: 2 regions in the header but 1 rows"),
        ("a b\na 0 1\nb 1\n", "not square: row 'b' has 1 values"),
        ("a b\na 0 -3\nb 1 0\n", "a -> b is negative"),
        ("a b\na 5 1\nb 1 0\n", "diagonal"),
        ("a b\nb 0 1\na 1 0\n", "rows must follow the header order"),
        ("a b\na 0 x\nb 1 0\n", "a -> b 'x': expected a duration"),
    ],
)
def test_bad_matrices(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_matrix(text)


@given(st.text(max_size=200))
def test_matrix_parser_raises_only_spec_errors(text: str) -> None:
    with contextlib.suppress(SpecError):
        parse_matrix(text)
