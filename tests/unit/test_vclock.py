"""Laws of vector clocks, checked on random clocks (hypothesis)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.vclock import EMPTY, ClockError, VectorClock

regions = st.sampled_from(["us-east", "eu-west", "ap-south", "sa-east"])
clocks = st.dictionaries(regions, st.integers(min_value=0, max_value=50)).map(VectorClock)


@given(clocks, clocks)
def test_merge_is_commutative(a: VectorClock, b: VectorClock) -> None:
    assert a.merge(b) == b.merge(a)


@given(clocks, clocks, clocks)
def test_merge_is_associative(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(clocks)
def test_merge_is_idempotent(a: VectorClock) -> None:
    assert a.merge(a) == a


@given(clocks, clocks)
def test_merge_is_least_upper_bound(a: VectorClock, b: VectorClock) -> None:
    m = a.merge(b)
    assert a <= m and b <= m
    for k in set(a) | set(b):
        assert m.get(k) == max(a.get(k), b.get(k))


@given(clocks, clocks)
def test_order_is_antisymmetric_and_total_on_comparable(a: VectorClock, b: VectorClock) -> None:
    if a <= b and b <= a:
        assert a == b and hash(a) == hash(b)
    assert (a < b) + (b < a) + (a == b) + a.concurrent(b) == 1


@given(clocks, clocks, clocks)
def test_order_is_transitive(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    if a <= b and b <= c:
        assert a <= c


@given(clocks, regions)
def test_increment_is_strictly_greater_by_one(a: VectorClock, r: str) -> None:
    b = a.increment(r)
    assert a < b
    assert b.total() == a.total() + 1


@given(clocks)
def test_round_trip_through_dict(a: VectorClock) -> None:
    assert VectorClock.parse(a.to_dict()) == a
    assert 0 not in a.to_dict().values()


def test_zero_entries_do_not_matter() -> None:
    assert VectorClock({"us-east": 0}) == EMPTY
    assert VectorClock({"us-east": 2, "eu-west": 0}).to_dict() == {"us-east": 2}


def test_covers() -> None:
    p = VectorClock({"us-east": 3})
    assert p.covers("us-east", {"us-east": 3})
    assert not p.covers("us-east", {"us-east": 4})
    assert not p.covers("eu-west", {"eu-west": 1, "us-east": 1})


@pytest.mark.parametrize(
    "raw",
    [[], "x", {"US": 1}, {"us-east": -1}, {"us-east": 1.5}, {"us-east": True}, {"us-east": 2**60}],
)
def test_parse_rejects_malformed(raw: object) -> None:
    with pytest.raises(ClockError):
        VectorClock.parse(raw)


@given(clocks, st.dictionaries(regions, st.integers(min_value=0, max_value=50)))
def test_equals_a_raw_mapping_as_a_clock_built_from_it(a: VectorClock, raw: dict[str, int]) -> None:
    assert a.equals(raw) == (a == VectorClock(raw))
    assert a.equals(a.to_dict())
