"""Resume-position rules (expiry, coverage) and history paging."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.logformat import StoredMessage
from federation.vclock import EMPTY, VectorClock
from relay.core.recovery import (
    PositionExpired,
    check_not_expired,
    history_window,
    position_before,
    uncovered,
)

REGIONS = ("r1", "r2", "r3")


def build_log(origins: list[str]) -> tuple[list[StoredMessage], list[VectorClock]]:
    """Messages of one region's log and the applied vectors A_0 (empty) .. A_n."""
    applied = [EMPTY]
    messages: list[StoredMessage] = []
    for i, origin in enumerate(origins):
        after = applied[-1].increment(origin)
        # ts: the origin's own counter, plus some (possibly stale) view of the others.
        ts = {r: max(0, applied[-1].get(r) - (i % 2)) for r in REGIONS if r != origin}
        ts[origin] = after[origin]
        messages.append(StoredMessage(f"m{i + 1}", msgspec.Raw(b"1"), origin, ts, after.to_dict()))
        applied.append(after)
    return messages, applied


def covered(msg: StoredMessage, position: VectorClock) -> bool:
    return position.get(msg.origin) >= msg.ts[msg.origin]


# --- position_before ---------------------------------------------------------------------


def test_position_before_single_region() -> None:
    msg = StoredMessage("m", msgspec.Raw(b"1"), "r1", {"r1": 5}, {"r1": 5})
    assert position_before(msg) == VectorClock({"r1": 4})


def test_position_before_first_message_is_empty() -> None:
    msg = StoredMessage("m", msgspec.Raw(b"1"), "r1", {"r1": 1}, {"r1": 1})
    assert position_before(msg) == EMPTY


def test_position_before_multi_region() -> None:
    msg = StoredMessage("m", msgspec.Raw(b"1"), "r2", {"r1": 3, "r2": 2}, {"r1": 5, "r2": 2})
    assert position_before(msg) == VectorClock({"r1": 5, "r2": 1})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(REGIONS), min_size=1, max_size=30))
def test_position_before_is_the_previous_applied_vector(origins: list[str]) -> None:
    messages, applied = build_log(origins)
    for i, msg in enumerate(messages):
        assert position_before(msg) == applied[i]
        assert applied[i + 1].total() == i + 1


# --- check_not_expired -------------------------------------------------------------------


def test_expired_when_retention_removed_something_uncovered() -> None:
    messages, applied = build_log(["r1", "r1", "r2", "r1", "r2"])
    oldest = messages[3]  # entries 1..3 removed by retention
    with pytest.raises(PositionExpired) as info:
        check_not_expired(oldest, VectorClock({"r1": 2}))  # lacks r2#1 (entry 3)
    assert info.value.earliest == applied[3] == VectorClock({"r1": 2, "r2": 1})
    assert "earliest" in str(info.value)


def test_expired_for_an_empty_position() -> None:
    messages, _ = build_log(["r1", "r1", "r1"])
    with pytest.raises(PositionExpired) as info:
        check_not_expired(messages[1], EMPTY)
    assert info.value.earliest == VectorClock({"r1": 1})


def test_not_expired_when_position_covers_everything_before_the_oldest() -> None:
    messages, applied = build_log(["r1", "r1", "r2", "r1", "r2"])
    oldest = messages[3]
    check_not_expired(oldest, applied[3])
    check_not_expired(oldest, applied[5])
    check_not_expired(oldest, VectorClock({"r1": 2, "r2": 7}))  # ahead in r2: fine


def test_nothing_removed_never_expires() -> None:
    messages, _ = build_log(["r2", "r1"])
    check_not_expired(messages[0], EMPTY)


positions = st.dictionaries(st.sampled_from(REGIONS), st.integers(0, 12)).map(VectorClock)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(REGIONS), min_size=1, max_size=25),
    st.integers(0, 24),
    positions,
)
def test_expiry_iff_a_removed_entry_is_uncovered(
    origins: list[str], removed: int, position: VectorClock
) -> None:
    messages, applied = build_log(origins)
    removed = min(removed, len(messages) - 1)
    oldest = messages[removed]
    lost = [m for m in messages[:removed] if not covered(m, position)]
    if lost:
        with pytest.raises(PositionExpired) as info:
            check_not_expired(oldest, position)
        assert info.value.earliest == applied[removed]
    else:
        check_not_expired(oldest, position)


# --- uncovered ---------------------------------------------------------------------------


def test_uncovered_examples() -> None:
    assert not uncovered(VectorClock({"r1": 2}), VectorClock({"r1": 2}))
    assert not uncovered(VectorClock({"r1": 2}), VectorClock({"r1": 3, "r2": 1}))
    assert uncovered(VectorClock({"r1": 3}), VectorClock({"r1": 2}))
    assert uncovered(VectorClock({"r1": 1, "r2": 1}), VectorClock({"r1": 5}))
    assert not uncovered(EMPTY, EMPTY)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(REGIONS), min_size=0, max_size=25), positions)
def test_uncovered_is_monotone_and_starts_at_the_first_uncovered_entry(
    origins: list[str], position: VectorClock
) -> None:
    messages, applied = build_log(origins)
    flags = [uncovered(applied[i + 1], position) for i in range(len(messages))]
    # monotone: False ... False True ... True (so it can be binary-searched)
    assert flags == sorted(flags)
    first_uncovered = next((i for i, m in enumerate(messages) if not covered(m, position)), None)
    first_flag = next((i for i, f in enumerate(flags) if f), None)
    assert first_flag == first_uncovered


# --- history_window ----------------------------------------------------------------------


def test_history_latest_page() -> None:
    assert history_window(1, 10, 3, None) == (8, 10)


def test_history_before_in_the_middle() -> None:
    assert history_window(1, 10, 3, 6) == (3, 5)


def test_history_limit_larger_than_available() -> None:
    assert history_window(4, 10, 100, None) == (4, 10)
    assert history_window(4, 10, 100, 7) == (4, 6)


def test_history_before_at_the_oldest_is_empty() -> None:
    assert history_window(4, 10, 5, 4) is None
    assert history_window(4, 10, 5, 1) is None


def test_history_before_after_the_newest_is_the_latest_page() -> None:
    assert history_window(1, 10, 3, 50) == (8, 10)
    assert history_window(1, 10, 3, 11) == (8, 10)


def test_history_single_entry() -> None:
    assert history_window(7, 7, 1, None) == (7, 7)
    assert history_window(7, 7, 10, 8) == (7, 7)
    assert history_window(7, 7, 10, 7) is None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(0, 30),
    st.integers(1, 40),
    st.none() | st.integers(0, 70),
)
def test_history_window_is_the_newest_limit_entries_before(
    first: int, extra: int, limit: int, before: int | None
) -> None:
    last = first + extra
    wanted = [i for i in range(first, last + 1) if before is None or i < before][-limit:]
    window = history_window(first, last, limit, before)
    if not wanted:
        assert window is None
    else:
        assert window == (wanted[0], wanted[-1])
