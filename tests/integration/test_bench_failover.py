"""``relaynet bench failover`` end to end with tiny parameters: it runs, prints its figures
and its correctness line, and exits 0. The figures themselves are not asserted (timings)."""

from __future__ import annotations

import pytest

from relay.cli import main

pytestmark = pytest.mark.integration


def test_bench_failover_prints_figures_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "failover", "--connects", "3", "--trials", "2", "--stop-trials", "0"]
    code = main([*argv, "--latency-ms", "5"])
    out = capsys.readouterr().out
    assert code == 0, out
    for line in (
        "SDK connect -> connected",
        "directory: GET /v1/edges from the seed",
        "baseline: bare websockets.connect",
        "detected: connection end seen",
        "first message on the new connection",
        "caught up: first message published after it",
    ):
        assert line in out, out
    assert "lost 0, duplicates 0, unexpected 0, out of order 0" in out, out
    assert "SIGSTOP" not in out  # --stop-trials 0: no frozen-relay section


def test_bench_failover_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "failover", "--trials", "-1"]) == 2
    assert "--trials" in capsys.readouterr().err
