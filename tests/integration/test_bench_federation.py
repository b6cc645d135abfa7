"""``relaynet bench federation`` end to end with tiny parameters: it runs, prints its
figures and its correctness lines, and exits 0. Timings are not asserted."""

from __future__ import annotations

import pytest

from relay.cli import main

pytestmark = pytest.mark.integration


def test_bench_federation_prints_figures_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "federation", "--seconds", "1", "--latency-ms", "5"])
    out = capsys.readouterr().out
    assert code == 0, out
    for line in (
        "-- 1. cross-region latency",
        "-- 1b. the same in total order",
        "-- 2. what one link carries",
        "publish -> deliver",
        "per-origin order      identical in all 3 regions",
    ):
        assert line in out, out
    assert out.count("lost / duplicates     0 / 0") >= 3, out


def test_bench_federation_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "federation", "--seconds", "0"]) == 2
    assert "--seconds" in capsys.readouterr().err
