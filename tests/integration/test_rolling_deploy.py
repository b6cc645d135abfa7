"""A rolling deploy under traffic loses nothing: ``relaynet bench rollout`` replaces both
relays of us-east one by one (SIGTERM, exit, start, ready, next) while SDK clients in
every region publish and subscribe, then checks every history. Nothing lost, duplicated
or out of order; no error raised to any application; no process or directory left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.bench.rollout import CHANNELS, REGIONS, RELAYS_PER_REGION, Window, gaps_by_phase
from relay.cli import main
from relay.harness.toolkit import start_time

pytestmark = pytest.mark.integration

CLIENTS = 2  # per region


def test_gaps_are_split_at_the_rollout() -> None:
    window = Window(measure_from=1.0, roll_start=10.0, roll_end=20.0)
    # warm-up, before, overlapping the start, during, overlapping the end, after
    arrivals = [[0.5, 1.5, 2.0, 10.5, 15.0, 21.0, 22.0]]
    gaps = gaps_by_phase(arrivals, window)
    assert gaps["before"] == [0.5]
    assert gaps["during"] == [8.5, 4.5, 6.0]


@pytest.mark.timeout(150)
def test_rolling_one_region_loses_nothing_and_raises_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "rollout.json"
    argv = ["bench", "rollout", "--region", "us-east", "--clients", str(CLIENTS)]
    argv += ["--rate", "5", "--before-s", "3", "--after-s", "2", "--json", str(report_path)]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "violations: none" in out and "errors raised to the application: none" in out, out

    report = json.loads(report_path.read_text())
    assert report["error"] is None
    assert report["violations"]["count"] == 0, report["violations"]["list"]
    clients = report["clients"]
    assert clients["application_errors"] == 0, clients["application_error_list"]
    assert clients["left_their_region"] == []
    # Each us-east client was on a relay that went away at least once, and was sent on.
    assert clients["reconnects"] >= CLIENTS and clients["redirects_followed"] >= CLIENTS
    steps = report["rollout"]["relays"]
    assert [s["relay"] for s in steps] == [f"us-east-{i + 1}" for i in range(RELAYS_PER_REGION)]
    assert all(s["exit_code"] == 0 for s in steps), steps  # drained, not killed

    traffic = report["traffic"]
    assert traffic["publishes_acked"] == traffic["publishes_sent"] > 0
    # Every client is subscribed to every channel: each acked publish reached each once.
    assert traffic["deliveries"] == traffic["publishes_acked"] * CLIENTS * len(REGIONS)
    for each in clients["each"].values():
        assert set(each["received"]) == set(CHANNELS)
    assert report["delivery_gap"]["during"]["count"] > 0

    # Nothing left: no process it started (by pid and start time), no directory.
    started = report["processes"]
    assert len(started) >= len(REGIONS) * (1 + RELAYS_PER_REGION) + RELAYS_PER_REGION
    alive = [p for p in started if p["start_time"] and start_time(p["pid"]) == p["start_time"]]
    assert alive == []
    assert not Path(report["workdir"]).exists()


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "rollout", "--clients", "0"]) == 2
    assert "--clients" in capsys.readouterr().err
    assert main(["bench", "rollout", "--before-s", "1"]) == 2
    assert "--before-s" in capsys.readouterr().err
