"""Proves ordering guarantees from whole received sequences, not spot checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_contiguous(
    received: Sequence[dict[str, Any]], region: str, start_after: int = 0
) -> list[str]:
    """One region: positions must run start_after+1, start_after+2, ... with no gap or repeat."""
    problems: list[str] = []
    expected = start_after + 1
    seen_ids: set[str] = set()
    for i, frame in enumerate(received):
        got = frame["position"].get(region, 0)
        if frame["id"] in seen_ids:
            problems.append(f"#{i}: id {frame['id']} delivered twice")
        seen_ids.add(frame["id"])
        if got != expected:
            kind = "repeat" if got < expected else "gap"
            problems.append(f"#{i}: {kind}: position {got}, expected {expected}")
            expected = got
        expected += 1
    return problems


def check_publisher_order(received: Sequence[dict[str, Any]]) -> list[str]:
    """Messages whose data is {"pub": P, "n": k}: each publisher's k must increase by one."""
    last: dict[str, int] = {}
    problems = []
    for frame in received:
        data = frame["data"]
        pub, n = data["pub"], data["n"]
        if n != last.get(pub, -1) + 1:
            problems.append(f"publisher {pub}: got n={n} after {last.get(pub)}")
        last[pub] = n
    return problems


def ids(received: Sequence[dict[str, Any]]) -> list[str]:
    return [frame["id"] for frame in received]


def check_causal(received: Sequence[dict[str, Any]]) -> list[str]:
    """Every message after everything it causally depends on (its ts), each exactly once.

    Uses only what the subscriber saw: the i-th message from origin o must have
    ts[o] == i, and every other entry of its ts must already be reached.
    """
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, frame in enumerate(received):
        origin, ts = frame["origin"], frame["ts"]
        own = ts[origin]
        if own != seen.get(origin, 0) + 1:
            problems.append(f"#{i}: {origin}:{own} after {origin}:{seen.get(origin, 0)}")
        for region, count in ts.items():
            if region != origin and count > seen.get(region, 0):
                problems.append(f"#{i}: {origin}:{own} before its dependency {region}:{count}")
        seen[origin] = max(seen.get(origin, 0), own)
    return problems


def check_happened_before(received: Sequence[dict[str, Any]], before: str, after: str) -> bool:
    order = [frame["id"] for frame in received]
    return order.index(before) < order.index(after)


def check_total_order(received: Sequence[dict[str, Any]]) -> list[str]:
    """Sorted by (vector total, origin): the order every region must share. Sorting by the
    total also respects causality, since a causal successor has a larger vector."""
    problems = []
    keys = [(sum(f["ts"].values()), f["origin"]) for f in received]
    for i in range(1, len(keys)):
        if keys[i] <= keys[i - 1]:
            problems.append(f"#{i}: key {keys[i]} after {keys[i - 1]}")
    return problems
