"""RelayNetwork: a multi-region relaynet on one machine in Docker, for tests and
``relaynet simulate``.

It is a ``relay.harness.network.Network`` whose regions' NATS are containers
(testcontainers; host networking on their own loopback ports, or a bridge network
of the session's own) and whose relays are processes or, with
``relays_in_containers``, containers of the image built from deploy/Dockerfile.
Every directed inter-region link goes through a delay/cut proxy
(``relay.harness.linkproxy``); every region is also a place a client can be, with
a delay proxy in front of every other region's relays (``dial``, ``sdk_client``).
Everything stays on 127.0.0.1. Partitions, latency changes, region kills and
restarts act on those real parts; nothing is mocked.

Use it as an async context manager (``async with RelayNetwork(spec) as net``)
or, from synchronous code and the pytest fixture, through ``BlockingRelayNetwork``
which runs the same object on an event loop in a background thread.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from relay.client.connection import Client, Dial, connect
from relay.config.writer import write_config
from relay.harness import toolkit
from relay.harness.network import RELAY_START_TIMEOUT_S, Network
from relay.harness.toolkit import edge_url
from relay.simulate import containers, relay_image
from relay.simulate.client import ProtocolClient, protocol_client
from relay.simulate.spec import NetworkSpec, SpecError

log = logging.getLogger("relaynet.simulate")


class ContainerNats:
    """A region's NATS in a container: created at the first ``up()``, started again (same
    store) at the next ones. Closed like a local one (``relay.harness.network``): its
    config and passwords are in the bind-mounted store, ``/data/auth`` inside."""

    def __init__(self, net: RelayNetwork, region: str) -> None:
        self.net, self.region = net, region
        self.store_dir = net.workdir / region / "nats"
        client_port, monitor_port = toolkit.free_ports(2)
        self.ports = client_port, monitor_port
        self.container: containers.NatsContainer | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.ports[0]}"

    @property
    def running(self) -> bool:
        return self.container is not None and not self.net.regions[self.region].down

    @property
    def pid(self) -> int | None:
        return None

    async def up(self) -> str:
        if self.container is None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            assert self.net.nats_image is not None
            config = toolkit.write_nats_config(self.store_dir, self.net.nats_peers(self.region))
            self.container = containers.NatsContainer(
                self.region,
                client_port=self.ports[0],
                monitor_port=self.ports[1],
                store_dir=self.store_dir,
                image=self.net.nats_image,
                extra_args=["-c", f"/data/{config.relative_to(self.store_dir)}"],
                session=self.net.session,
                network=self.net.bridge,
            )
            await anyio.to_thread.run_sync(self.container.start)
        else:
            await anyio.to_thread.run_sync(self.container.start_again)
        return self.url

    async def down(self, *, kill: bool = False) -> None:
        if self.container is not None:
            await anyio.to_thread.run_sync(self.container.kill if kill else self.container.stop)


@dataclass
class ContainerRelay:
    """A relay in a container on the host network, its config bind-mounted."""

    net: RelayNetwork
    relay_id: str
    region: str
    port: int
    container: relay_image.RelayContainer | None = None

    @property
    def url(self) -> str:
        return edge_url(self.port)

    @property
    def alive(self) -> bool:
        return self.container is not None and self.container.alive

    @property
    def pid(self) -> int | None:
        return None

    async def up(self) -> None:
        cfg = self.net.config(self)
        if self.container is None:
            assert self.net.relay_image is not None
            passwords = [cfg.nats.password_file, *(p.nats_password_file for p in cfg.peers)]
            self.container = relay_image.RelayContainer(
                self.relay_id,
                region=self.region,
                port=self.port,
                config=self.net.workdir / self.region / f"{self.relay_id}.toml",
                image=self.net.relay_image,
                session=self.net.session,
                start_timeout_s=RELAY_START_TIMEOUT_S,
                files=[Path(path) for path in passwords if path],
            )
        self.container.config.parent.mkdir(parents=True, exist_ok=True)
        write_config(self.container.config, cfg)
        await anyio.to_thread.run_sync(self.container.start)

    async def down(self, *, kill: bool = False) -> None:
        if self.container is not None:
            await anyio.to_thread.run_sync(self.container.kill if kill else self.container.stop)


class RelayNetwork(Network):
    usage_error = SpecError

    def __init__(
        self,
        spec: NetworkSpec,
        *,
        relays_per_region: int = 1,
        namespaces: Sequence[dict[str, Any]] = (),
        workdir: Path | None = None,
        relays_in_containers: bool = False,
        networking: str = "host",
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """``relays_in_containers``: each relay runs in a container of the image built from
        deploy/Dockerfile (``relay_image.ensure_relay_image``) instead of as a process.
        ``progress(step)`` is told each start-up step as it begins (maybe from a thread).
        ``networking``: ``"host"`` (default: each NATS container on its own loopback port
        of the host's network) or ``"bridge"`` (the NATS containers on a bridge network of
        their own, each published on a loopback port; relays stay local processes)."""
        if relays_per_region < 1:
            raise SpecError("relays_per_region must be at least 1")
        if networking not in ("host", "bridge"):
            raise SpecError(f"networking must be host or bridge, not {networking!r}")
        if networking == "bridge" and relays_in_containers:
            raise SpecError(
                "bridge networking runs relays as local processes: relays in containers use "
                "host networking (they reach the links' proxies on 127.0.0.1)"
            )
        self.spec = spec
        self.networking = networking
        self.bridge: str | None = None
        self.namespaces = list(namespaces)
        self.relays_in_containers = relays_in_containers
        self._progress = progress or (lambda step: None)
        self.nats_image: str | None = None
        self.relay_image: str | None = None
        self.session = uuid.uuid4().hex[:8]
        self._own_workdir = workdir is None
        self._docker = False  # an engine answered: there may be containers to remove
        settings: dict[str, Any] = {"federation": {"ack_wait_s": 2.0, "lease_ttl_s": 1.5}}
        if self.namespaces:
            settings["namespaces"] = self.namespaces
        super().__init__(
            spec.regions,
            workdir or Path(tempfile.gettempdir()) / f"relaynet-sim-{self.session}",
            relays=relays_per_region,
            latency_ms=spec.link_latency,
            settings=settings,
            name=f"sim-{self.session}",
            nats=lambda net, region: ContainerNats(self, region),
            relay=(lambda net, *a: ContainerRelay(self, *a)) if relays_in_containers else None,
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> RelayNetwork:
        try:
            self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)  # here: removed on exit
            self._progress("checking the Docker engine")
            reason = await anyio.to_thread.run_sync(containers.docker_available)
            if reason is not None:
                raise RuntimeError(reason)
            self._docker = True
            if self.relays_in_containers:  # before anything starts: its errors leave nothing
                self.relay_image = await anyio.to_thread.run_sync(
                    lambda: relay_image.ensure_relay_image(progress=self._progress)
                )
            self._progress("getting the NATS image")
            self.nats_image = await anyio.to_thread.run_sync(containers.ensure_nats_image)
            self._progress(
                f"starting {len(self.spec.regions)} regions (NATS containers, relays, links)"
            )
            if self.networking == "bridge":
                self.bridge = await anyio.to_thread.run_sync(
                    containers.create_bridge_network, self.session
                )
            await super().__aenter__()
        except BaseException:
            await self._remove()
            raise
        try:
            for location in self.regions:
                await self.add_client_paths(location, self.spec.link_latency)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        log.info("network %s up: %s", self.session, ", ".join(self.edges().values()))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            await self._remove()

    async def _remove(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._docker:
                await anyio.to_thread.run_sync(containers.remove_leftovers, self.session)
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # --- what tests use -------------------------------------------------------------------

    @asynccontextmanager
    async def client(self, near: str) -> AsyncIterator[ProtocolClient]:
        """A bare protocol client on ``near``'s edge, directly: no routing, no latency.

        For a client that picks its region by measuring the map, use ``sdk_client``."""
        async with protocol_client(self.edge(near)) as client:
            yield client

    @asynccontextmanager
    async def sdk_client(self, near: str, **kwargs: Any) -> AsyncIterator[Client]:
        """The Python SDK as a client at location ``near`` would run it: it fetches the
        directory, probes every edge over that location's paths and connects to the
        nearest under the configured latencies, failing over in that order.
        ``kwargs`` go to ``relay.client.connection.connect``. ``client.url`` and
        ``client.choice`` name the relays' own URLs (``edges()``)."""
        async with connect(self.seeds(near), dial=self.dial(near), **kwargs) as client:
            yield client

    def status(self) -> list[dict[str, Any]]:
        """One row per directed link: state, requested and measured latency."""
        rows = []
        for (a, b), proxy in self.proxies.items():
            measured = proxy.measured_latency_ms()
            rows.append(
                {
                    "link": f"{a} <- {b}",
                    "state": "down" if self.regions[b].down else proxy.state,
                    "requested_ms": proxy.latency_ms,
                    "measured_ms": None if measured is None else measured[0],
                }
            )
        return rows


class BlockingRelayNetwork:
    """The same network for synchronous code: runs it on a loop in a background thread."""

    def __init__(self, network: RelayNetwork, portal: BlockingPortal) -> None:
        self.network = network
        self._portal = portal

    def edge(self, region: str) -> str:
        return self.network.edge(region)

    def edges(self) -> dict[str, str]:
        return self.network.edges()

    def dial(self, near: str) -> Dial:
        """As ``RelayNetwork.dial``: e.g. ``connect(net.seeds(near=L), dial=net.dial(near=L))``
        in the test's own event loop (the SDK is async; there is no blocking ``sdk_client``)."""
        return self.network.dial(near)

    def seeds(self, near: str) -> list[str]:
        return self.network.seeds(near)

    def partition(self, a: str, b: str) -> None:
        self._portal.call(self.network.partition, a, b)

    def hold(self, a: str, b: str) -> None:
        self._portal.call(self.network.hold, a, b)

    def heal(self) -> None:
        self._portal.call(self.network.heal)

    def set_latency(self, a: str, b: str, ms: float) -> None:
        self._portal.call(self.network.set_latency, a, b, ms)

    def kill_region(self, region: str) -> None:
        self._portal.call(self.network.kill_region, region)

    def restart_region(self, region: str) -> None:
        self._portal.call(self.network.restart_region, region)

    def status(self) -> list[dict[str, Any]]:
        return self._portal.call(self.network.status)


@contextlib.contextmanager
def relay_network(spec: NetworkSpec, **kwargs: Any) -> Iterator[BlockingRelayNetwork]:
    """A plain (synchronous) context manager, for any test runner."""
    with start_blocking_portal() as portal:
        network = RelayNetwork(spec, **kwargs)
        with portal.wrap_async_context_manager(network):
            yield BlockingRelayNetwork(network, portal)
