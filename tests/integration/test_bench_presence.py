"""``relaynet bench presence`` end to end with tiny settings: it runs through the CLI,
measures every kind of convergence with sane figures, exits 0, and leaves no process,
listening socket or directory behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from relay.bench.presence import MEASURES, Report, _failed, format_report
from relay.cli import main
from relay.config.schema import PresenceSection
from tests.support.leftovers import cmdlines_mentioning

pytestmark = pytest.mark.integration

SUSPECT_S, REMOVE_S, SNAPSHOT_S = 1.0, 2.5, 0.5
ROUNDS, LATENCY_MS = 2, 5.0


def _children() -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        found |= {int(pid) for pid in (task / "children").read_text().split()}
    return found


def _listening_inodes() -> set[str]:
    """The inodes of TCP sockets listening on this machine (state 0A)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def _own_listening_sockets() -> set[str]:
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[len("socket:[") : -1])
    return mine & _listening_inodes()


@pytest.mark.timeout(120)
def test_a_short_run_converges_with_sane_figures_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    children, listening = _children(), _own_listening_sockets()
    report_path = tmp_path / "presence.json"
    argv = ["bench", "presence", "--rounds", str(ROUNDS), "--heal-rounds", "1"]
    argv += ["--latency-ms", str(LATENCY_MS), "--suspect-after-s", str(SUSPECT_S)]
    argv += ["--remove-after-s", str(REMOVE_S), "--snapshot-s", str(SNAPSHOT_S)]
    code = main([*argv, "--json", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "converged             yes, within every bound" in out, out
    for label in ("enter -> event, other regions", "heal -> presence.get = truth"):
        assert label in out, out

    report = json.loads(report_path.read_text())
    assert report["failures"] == [] and report["cut"] == ["ap-south"]
    assert report["presence"]["suspect_after_s"] == SUSPECT_S
    summary = report["summary_ms"]
    counts = {
        "ack": ROUNDS,
        "enter": 2 * ROUNDS,
        "update": 2 * ROUNDS,
        "leave": 2 * ROUNDS,
        "unreachable": 3,
        "removed": 3,
        "healed": 3,
    }
    assert set(summary) == set(MEASURES)
    for name, count in counts.items():
        figures = summary[name]
        assert figures["count"] == count, (name, figures)
        assert 0 <= figures["p50"] <= figures["p99"] <= figures["max"], (name, figures)
    # Timings under load stretch upwards only; the lower bounds are what the design says.
    for name in ("enter", "update", "leave"):
        assert summary[name]["max"] < 10_000, summary[name]
    unreachable, removed = report["samples_ms"]["unreachable"], report["samples_ms"]["removed"]
    assert all(0 < u < r for u, r in zip(sorted(unreachable), sorted(removed), strict=True))
    # A region's members are removed only after remove_after_s without its beats
    # (beats every second: the last one came at most a second before the cut).
    assert min(removed) >= 1000 * (REMOVE_S - 1.0) - 50, removed
    assert summary["healed"]["max"] < 1000 * (2.0 + SNAPSHOT_S + 10), summary["healed"]

    # Nothing left: no child process, no proxy listening, no process using its directory,
    # no directory.
    assert _children() - children == set()
    assert _own_listening_sockets() - listening == set()
    assert cmdlines_mentioning(report["workdir"]) == []
    assert not Path(report["workdir"]).exists()


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "presence", "--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err
    assert main(["bench", "presence", "--suspect-after-s", "3", "--remove-after-s", "2"]) == 2
    assert "remove_after_s (2) at least suspect_after_s (3)" in capsys.readouterr().err
    assert main(["bench", "presence", "--snapshot-s", "0"]) == 2
    assert "--snapshot-s" in capsys.readouterr().err


def test_a_run_that_did_not_converge_fails() -> None:
    timing = PresenceSection()
    stuck = Report(50.0, timing, rounds=1, heal_rounds=1)
    stuck.failures.append("heal round 1: us-east still answers missing ['ann'] 17.0 s after")
    assert _failed(stuck) == stuck.failures
    assert "converged             NO" in format_report(stuck)
    short = Report(50.0, timing, rounds=1, heal_rounds=0)
    short.samples["ack"].append(0.001)
    assert _failed(short) == ["missing samples: enter, update, leave"]
