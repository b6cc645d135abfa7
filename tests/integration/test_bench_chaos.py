"""``relaynet bench chaos`` end to end: a short seeded fault run through the CLI, as a
subprocess. It must find no violation, inject faults of several kinds, and leave no
process and no temporary directory behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relay.bench.chaos import plan_faults
from relay.harness.toolkit import start_time
from relay.simulate.client import timeout
from tests.support.leftovers import cmdlines_mentioning

pytestmark = pytest.mark.integration

SEED = 3
SECONDS = 20


def test_the_plan_is_the_seed_s() -> None:
    assert plan_faults(SEED, SECONDS) == plan_faults(SEED, SECONDS)
    assert plan_faults(SEED, SECONDS) != plan_faults(SEED + 1, SECONDS)
    kinds = {fault.kind for seed in range(20) for fault in plan_faults(seed, 60)}
    assert kinds == {
        "cut",
        "hold",
        "kill-relay",
        "kill-nats",
        "kill-region",
        "freeze-relay",
        "freeze-nats",
    }


def _running(pid: int, started: str | None) -> bool:
    return started is not None and start_time(pid) == started


@pytest.mark.timeout(240)
def test_a_short_fault_run_finds_nothing_and_leaves_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "chaos.json"
    argv = [sys.executable, "-m", "relay.cli", "bench", "chaos"]
    argv += ["--seconds", str(SECONDS), "--seed", str(SEED), "--json", str(report_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout(200), check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"seed {SEED}" in done.stdout and "violations: none" in done.stdout, output

    report = json.loads(report_path.read_text())
    assert report["seed"] == SEED and report["error"] is None
    assert report["violations"]["count"] == 0, report["violations"]["list"]
    faults = report["faults"]["by_kind"]
    assert len(faults) >= 3 and sum(faults.values()) >= 5, faults
    operations = report["operations"]
    assert operations["publishes_acked"] == operations["publishes_sent"] > 0
    subscribers = len(operations["deliveries_per_subscriber"])
    assert operations["deliveries"] == operations["publishes_acked"] * subscribers
    assert report["converge_s"] is not None and report["converge_s"] <= 60

    # Nothing left: no process it started (by pid and start time), no process using its
    # directory, no directory.
    started = report["processes"]
    assert len(started) >= 7  # 3 nats-servers, 4 relays, plus restarts
    alive = [p for p in started if _running(p["pid"], p["start_time"])]
    assert alive == []
    workdir = report["workdir"]
    assert cmdlines_mentioning(workdir) == []
    assert not Path(workdir).exists()


def test_bad_arguments_exit_2() -> None:
    argv = [sys.executable, "-m", "relay.cli", "bench", "chaos", "--seconds", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout(60), check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "fault window" in done.stderr
