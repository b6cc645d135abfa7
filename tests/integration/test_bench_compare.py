"""``relaynet bench compare`` end to end with tiny parameters, through the CLI as a
subprocess: every system and the generator's ceiling are measured, the ratio lines are
printed (and the channels and spread scenarios', relaynet only), the JSON is written, exit 0, and
nothing it started is left running. The first run installs the pinned npm packages (into
the ignored .relaynet/bench-node). Timings are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_CAP_S = 540  # npm ci on a fresh machine, then 9 short runs


def _left_running(marker: str) -> list[str]:
    """Processes that inherited ``marker`` in their environment: whatever the bench
    started, however deep."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(cmdline.decode(errors="replace"))
    return found


@pytest.mark.timeout(RUN_CAP_S + 60)
def test_bench_compare_measures_every_system_and_exits_0(tmp_path: Path) -> None:
    report = tmp_path / "compare.json"
    marker = f"TMPDIR={tmp_path}"
    argv = [
        sys.executable, "-m", "relay.cli", "bench", "compare",
        "--scenarios", "fanout,idle,channels,spread", "--subscribers", "10", "--idle", "100",
        "--channels", "2", "--spread", "3",
        "--seconds", "1", "--rounds", "1", "--systems", "relaynet,socketio,ws,python",
        "--json", str(report),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv,
            cwd=REPO,
            env=os.environ | {"TMPDIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=RUN_CAP_S,
        )
    finally:
        # PR_SET_PDEATHSIG and the bench's own cleanup stop its processes; allow them a moment.
        leftovers = _left_running(marker)
        for _ in range(50):
            if not leftovers:
                break
            time.sleep(0.1)
            leftovers = _left_running(marker)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert not leftovers, leftovers
    assert "relaynet ÷ Socket.IO, deliveries/s" in out, out
    assert "relaynet ÷ Socket.IO, KB/conn" in out, out
    assert "generator ceiling" in out, out
    assert "relaynet acks/s ÷ its figure at K=2: K=2 1.00x" in out, out
    assert "relaynet acks/s ÷ its figure at K=3: K=3 1.00x" in out, out

    figures = json.loads(report.read_text())
    runs = {(run["scenario"], run["system"]): run["figures"] for run in figures["runs"]}
    assert set(runs) == {
        *(("fanout", system) for system in ("relaynet", "socketio", "ws", "python", "ceiling")),
        *(("idle", system) for system in ("relaynet", "socketio", "ws", "python")),
        ("channels", "relaynet"),
        ("spread", "relaynet"),
    }
    assert runs["fanout", "relaynet"]["lost"] == 0
    assert runs["fanout", "relaynet"]["deliveries"] > 0
    assert runs["idle", "relaynet"]["subscribers"] == 100
    spread = runs["channels", "relaynet"]
    assert spread["channels"] == 2 and spread["lost"] == 0 and spread["ack_errors"] == 0
    assert all(one["acked"] > 0 for one in spread["per_channel"])
    # One publisher over 3 channels, one subscriber of all three: each channel in order.
    over = runs["spread", "relaynet"]
    assert over["acked"] > 0 and over["deliveries"] == over["acked"]
    assert (over["lost"], over["disordered"], over["ack_errors"]) == (0, 0, 0)
    assert {r["metric"] for r in figures["ratios"]} == {"deliveries_per_s", "kb_per_connection"}


def test_bench_compare_refuses_bad_arguments() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "relay.cli", "bench", "compare", "--systems", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--systems" in done.stderr
