"""A relay whose NATS is unreachable at start (issue #9, item 6): it gives up after
nats.connect_timeout_s with one clear line and exit 1, and SIGTERM or Ctrl-C while it is
still trying stops it at once, without a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.relays import config_file, make_config, timeout
from tests.support.waiting import wait_until_blocking

pytestmark = pytest.mark.integration

UNREACHABLE = "nats://127.0.0.1:9"  # discard port: nothing listens on loopback


def _start(tmp_path: Path, connect_timeout_s: float) -> subprocess.Popen[str]:
    cfg = make_config(nats_url=UNREACHABLE, nats={"connect_timeout_s": connect_timeout_s})
    path = config_file(tmp_path / "relay.toml", cfg)
    return subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "relay", "--config", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _handles(pid: int, signum: int) -> bool:
    """Whether process pid has a handler for signum (Linux: SigCgt in /proc/PID/status).
    Python handles SIGINT from its start; SIGTERM only once the relay says so."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_unreachable_nats_ends_the_relay_with_one_line(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = _start(tmp_path, connect_timeout_s=1.0)
    _, err = proc.communicate(timeout=timeout(30))
    took = time.monotonic() - started
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1, err
    assert UNREACHABLE in errors[0] and "nats.connect_timeout_s" in errors[0]
    assert took < 1.0 + timeout(10), f"took {took:.1f} s"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_relay_still_connecting(tmp_path: Path, signum: int) -> None:
    proc = _start(tmp_path, connect_timeout_s=60.0)
    try:
        # Starting, it handles SIGTERM and Ctrl-C (one receiver for both, opened before it
        # connects); once it does, it is trying to connect (and would for a minute).
        wait_until_blocking(
            lambda: proc.poll() is not None or _handles(proc.pid, signal.SIGTERM),
            "the relay handling signals",
            20,
        )
        assert proc.poll() is None, proc.communicate()[1]
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=timeout(5))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
