"""``relaynet bench fanout`` end to end with tiny parameters: both servers are measured in
the same run, the table is printed, nothing is lost, exit 0. Timings are not asserted."""

from __future__ import annotations

import pytest

from relay.cli import main

pytestmark = pytest.mark.integration


def test_bench_fanout_prints_the_comparison_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["bench", "fanout", "--subscribers", "5", "--seconds", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split() for line in out.splitlines() if line.startswith(("relaynet ", "bare "))]
    assert [row[0] for row in rows] == ["relaynet", "bare"], out
    for row in rows:
        assert row[-2] == "0", out  # the "lost" column
    assert "delivered msgs/s, relaynet / bare websockets broadcast:" in out


def test_bench_fanout_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "fanout", "--subscribers", "0"]) == 2
    assert "--subscribers" in capsys.readouterr().err
