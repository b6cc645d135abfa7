"""Connections per token subject (``limits.max_connections_per_sub``), counted per relay."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.connections_per_sub import ConnectionsPerSub


def test_the_one_past_the_limit_is_refused_until_one_ends() -> None:
    counts = ConnectionsPerSub(2)
    assert counts.admit("alice") and counts.admit("alice")
    assert not counts.admit("alice")
    assert counts.admit("bob")  # per subject
    counts.release("alice")
    assert counts.admit("alice")
    assert counts.held("alice") == 2


def test_zero_is_no_limit_and_nothing_is_kept_for_subjects_gone() -> None:
    counts = ConnectionsPerSub(0)
    assert all(counts.admit("alice") for _ in range(1000))
    for _ in range(1000):
        counts.release("alice")
    assert len(counts) == 0 and counts.held("alice") == 0


def test_a_negative_limit_is_a_bug() -> None:
    with pytest.raises(ValueError):
        ConnectionsPerSub(-1)


@given(
    st.integers(0, 4),
    st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c"])), max_size=60),
)
def test_held_never_exceeds_the_limit_and_matches_a_model(
    limit: int, steps: list[tuple[bool, str]]
) -> None:
    counts = ConnectionsPerSub(limit)
    model: dict[str, int] = {}
    for opening, sub in steps:
        if opening:
            admitted = counts.admit(sub)
            assert admitted == (limit == 0 or model.get(sub, 0) < limit)
            if admitted:
                model[sub] = model.get(sub, 0) + 1
        elif model.get(sub, 0):  # only connections that were admitted end
            counts.release(sub)
            model[sub] -= 1
        assert counts.held(sub) == model.get(sub, 0)
        assert limit == 0 or counts.held(sub) <= limit
    assert len(counts) == sum(1 for n in model.values() if n)
