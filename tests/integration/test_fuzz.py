"""A seeded fuzz run (issue #12): 10,000 hostile frames over several connections at a
live relay (a real nats-server) while a well-behaved SDK client publishes to and reads its
own channel. Nothing of the good client's is lost or duplicated, the relay stays alive and
healthy with its RSS under ``RSS_BOUND_BYTES``, every close has a documented code, and the
relay's log has no traceback. A failure names the seed: ``relaynet bench fuzz --frames
10000 --seed 12`` replays the same frames."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relay.bench.fuzz import DOCUMENTED_CLOSES, RSS_BOUND_BYTES, fuzz_network, replay_command
from relay.bench.fuzz_frames import KINDS
from relay.simulate.client import timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SEED = 12
FRAMES = 10_000


async def test_ten_thousand_hostile_frames_lose_nothing_of_a_good_client() -> None:
    report = await fuzz_network(FRAMES, SEED)
    replay = f"seed {SEED}: replay with `{replay_command(SEED, FRAMES)}`"
    assert report.problems() == [], replay
    hostile = report.hostile
    assert set(hostile.sent) == set(KINDS), replay
    assert sum(hostile.sent.values()) == FRAMES
    # The relay refused what it had to, in every documented way the frames call for …
    assert {1009, 4500} <= set(hostile.closes) <= set(DOCUMENTED_CLOSES), hostile.closes
    errors = {r.removeprefix("error:") for r in hostile.replies if r.startswith("error:")}
    assert {"bad_json", "bad_request", "unknown_op", "invalid_channel", "too_large"} <= errors
    # … and served the well-formed frames among them.
    assert {"subscribed", "unsubscribed", "ack", "history", "pong"} <= set(hostile.replies)
    good = report.good
    assert len(good.acked) > 20 and good.received == good.acked, replay
    assert report.rss_peak_bytes is not None and report.rss_peak_bytes < RSS_BOUND_BYTES


def test_the_cli_prints_a_summary_and_the_seed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "bench", "fuzz", "--frames", "300", "--seed", "4"],
        capture_output=True,
        text=True,
        timeout=timeout(120),
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "seed 4 (replay: relaynet bench fuzz --frames 300 --seed 4)" in out
    assert "300 of 300 hostile frames" in out and "/v1/health 200" in out and "  OK" in out
    assert "Traceback" not in result.stderr
