"""The fuzz run's frame generator: the seed decides everything, every kind shows up, and
only the frames meant to exceed the relay's frame limit do."""

from __future__ import annotations

import json
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.bench.fuzz_frames import FUZZ_PREFIX, KINDS, generate


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 300), st.integers(4096, 1 << 20))
def test_the_seed_decides_the_frames_and_only_oversized_ones_exceed_the_limit(
    seed: int, count: int, limit: int
) -> None:
    frames = generate(seed, count, max_frame_bytes=limit)
    assert frames == generate(seed, count, max_frame_bytes=limit)
    assert len(frames) == count
    for frame in frames:
        assert (len(frame) > limit) == (frame.kind == "oversized"), frame.kind
        if isinstance(frame.payload, str):
            frame.payload.encode()  # sendable as a text frame: no lone surrogates


def test_ten_thousand_frames_have_every_kind_and_differ_by_seed() -> None:
    frames = generate(12, 10_000)
    kinds = Counter(frame.kind for frame in frames)
    assert set(kinds) == set(KINDS)
    assert kinds["oversized"] < 50  # each costs a connection and a megabyte
    assert generate(13, 200) != frames[:200]


def test_churn_is_a_subscribe_then_an_unsubscribe_of_one_fuzz_channel() -> None:
    frames = generate(5, 2_000)
    pairs = 0
    for i, frame in enumerate(frames[:-1]):
        if frame.kind == "churn" and json.loads(frame.payload)["op"] == "subscribe":
            following = json.loads(frames[i + 1].payload)
            assert following["op"] == "unsubscribe"
            assert following["channel"] == json.loads(frame.payload)["channel"]
            assert following["channel"].startswith(FUZZ_PREFIX)
            pairs += 1
    assert pairs > 50


def test_valid_frames_cover_every_op() -> None:
    ops = Counter(
        json.loads(frame.payload)["op"] for frame in generate(3, 3_000) if frame.kind == "valid"
    )
    assert set(ops) == {"subscribe", "unsubscribe", "publish", "history", "ping", "auth"}
