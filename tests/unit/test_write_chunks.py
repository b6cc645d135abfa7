"""A backed-up connection's queue goes out in runs of at most the direct-write limit:
one write per run, in order, nothing dropped or split."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from relay.adapters.connection import _chunks

frames = st.lists(st.binary(min_size=0, max_size=300), max_size=60)


@given(frames, st.integers(min_value=1, max_value=1000))
def test_runs_keep_every_frame_in_order_within_the_limit(batch: list[bytes], limit: int) -> None:
    runs = list(_chunks(batch, limit))
    assert [frame for run in runs for frame in run] == batch
    for run in runs:
        assert run  # never an empty write
        # Over the limit only as a frame alone: a frame is never split.
        assert sum(map(len, run)) <= limit or len(run) == 1


@given(frames, st.integers(min_value=1, max_value=1000))
def test_a_run_is_cut_only_where_the_next_frame_would_not_fit(
    batch: list[bytes], limit: int
) -> None:
    runs = list(_chunks(batch, limit))
    for run, following in itertools.pairwise(runs):
        assert sum(map(len, run)) + len(following[0]) > limit


def test_a_typical_backlog_is_a_few_writes() -> None:
    backlog = [b"m" * 200] * 1000  # a subscriber 1,000 messages behind
    assert len(list(_chunks(backlog, 64 * 1024))) == 4
