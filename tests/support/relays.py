"""Relays for tests: in-process (RelayNode in the test's event loop) or as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio

from relay.adapters.child_process import spawn
from relay.config.schema import RelayConfig
from relay.config.writer import write_config
from relay.harness.toolkit import relay_config
from relay.node import RelayNode

# Waits in tests scale with RELAYNET_TEST_TIMEOUT_FACTOR (slow machines set it higher).
from relay.simulate.client import timeout as timeout

make_config = relay_config  # a relay on 127.0.0.1, any free port, 2 s shutdown grace


@asynccontextmanager
async def running_relays(*configs: RelayConfig) -> AsyncIterator[list[RelayNode]]:
    """Start relays in this event loop; stop them (gracefully) on exit."""
    nodes = [RelayNode(cfg) for cfg in configs]
    async with anyio.create_task_group() as tg:
        for node in nodes:
            await tg.start(node.run)
        try:
            yield nodes
        finally:
            for node in nodes:
                node.stop()


def config_file(path: Path, cfg: RelayConfig) -> Path:
    """The config as a TOML file for a relay subprocess."""
    return write_config(path, cfg)


@contextmanager
def cli_process(
    args: list[str], log: Path, ready: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m relay.cli ARGS`` as a child process, once it printed a line containing
    ``ready``; yields (process, that line). SIGKILLed on exit if still running."""
    with open(log, "wb") as out:
        # spawn: the child gets SIGTERM when this process dies, even if pytest is killed.
        proc = spawn([sys.executable, "-m", "relay.cli", *args], stdout=subprocess.PIPE, stderr=out)
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + timeout(20)
        while time.monotonic() < deadline and ready not in line:
            line = proc.stdout.readline().decode()
            if not line:
                break
        if ready not in line:
            raise RuntimeError(f"{args[0]} did not start:\n{log.read_text()}")
        yield proc, line.strip()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@contextmanager
def relay_process(config: Path, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``relaynet relay --config`` as a child process; yields (process, ws url)."""
    with cli_process(["relay", "--config", str(config)], log, "ready on ") as (proc, line):
        yield proc, line.rsplit("ready on ", 1)[1]


@contextmanager
def federate_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``relaynet federate --config`` as a child process, stopped with SIGTERM (exit 0)."""
    with cli_process(["federate", "--config", str(config)], log, "ready") as (proc, _):
        yield proc
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout(10)) == 0, log.read_text()
