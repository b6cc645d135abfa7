"""RelayNetwork: a multi-region relaynet on one machine, for demos and for tests.

Per region: a NATS (JetStream) container started with testcontainers (host
networking on its own loopback port) and relay processes; per directed
inter-region link: a delay/cut proxy (``federation.linkproxy``) that carries
one region's federation reads of the other's NATS. Everything stays on
127.0.0.1. Partitions, latency changes, region kills and restarts act on those
real parts; nothing is mocked.

Clients have locations too: each region is also a place a client can be. For
every location L and every other region R a delay proxy stands in front of each
of R's relays with the matrix's L -> R latency (each way), and L's own relays
are reached directly. ``dial(near=L)`` maps a relay's own URL to the one a
client at L opens, so a routing client (``sdk_client(near=L)``) measures the
configured map and connects to the region nearest to L.

Use it as an async context manager (``async with RelayNetwork(spec) as net``)
or, from synchronous code and the pytest fixture, through ``BlockingRelayNetwork``
which runs the same object on an event loop in a background thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal, start_blocking_portal

from federation.linkproxy import LinkProxy
from relay.adapters import child_process
from relay.client.connection import Client, Dial, connect
from relay.simulate import containers, relay_image
from relay.simulate.client import ProtocolClient, protocol_client
from relay.simulate.spec import NetworkSpec, SpecError

log = logging.getLogger("relaynet.simulate")

RELAY_START_TIMEOUT_S = 30.0


@dataclass
class _Relay:
    relay_id: str
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    container: relay_image.RelayContainer | None = None  # with relays_in_containers

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def alive(self) -> bool:
        if self.container is not None:
            return self.container.alive
        return self.proc is not None and self.proc.poll() is None


@dataclass
class _Region:
    name: str
    nats: containers.NatsContainer
    relays: list[_Relay] = field(default_factory=list)
    down: bool = False


def _relay_toml(
    region: str,
    relay: _Relay,
    nats_url: str,
    peers: Sequence[tuple[str, str, str]],
    namespaces: Sequence[dict[str, Any]],
) -> str:
    lines = [
        "[region]", f"name = {json.dumps(region)}",
        "[relay]", f"id = {json.dumps(relay.relay_id)}", 'host = "127.0.0.1"',
        f"port = {relay.port}", "shutdown_grace_s = 2.0",
        "[nats]", f"url = {json.dumps(nats_url)}",
        # Quick hand-overs and redeliveries: a simulation is about seeing effects soon.
        "[federation]", "ack_wait_s = 2.0", "lease_ttl_s = 1.5",
    ]  # fmt: skip
    for rule in namespaces:
        lines.append("[[namespaces]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in rule.items()]
    for peer, edge_url, peer_nats_url in peers:
        lines += [
            "[[peers]]", f"region = {json.dumps(peer)}",
            f"edge_url = {json.dumps(edge_url)}", f"nats_url = {json.dumps(peer_nats_url)}",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _fork_relay(relay: _Relay) -> subprocess.Popen[bytes]:
    """The relay process, its stdout a pipe to watch for "ready on" (quick: call it from the
    event loop's thread, as ``child_process.spawn`` requires)."""
    with open(relay.log, "ab") as out:
        return child_process.spawn(
            [sys.executable, "-m", "relay.cli", "relay", "--config", str(relay.config)],
            stdout=subprocess.PIPE,
            stderr=out,
            start_new_session=True,
        )


async def _read_line_with(fd: int, marker: bytes) -> bool:
    """Read a pipe without blocking the loop until a whole line with ``marker`` came (True:
    its writer is done with it) or the writer closed the pipe (False)."""
    os.set_blocking(fd, False)
    pending = b""
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            return False
        *lines, pending = (pending + chunk).split(b"\n")
        if any(marker in line for line in lines):
            return True


def _log_tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-10:])


class RelayNetwork:
    def __init__(
        self,
        spec: NetworkSpec,
        *,
        relays_per_region: int = 1,
        namespaces: Sequence[dict[str, Any]] = (),
        workdir: Path | None = None,
        relays_in_containers: bool = False,
        networking: str = "host",
    ) -> None:
        """``relays_in_containers``: each relay runs in a container of the image built from
        deploy/Dockerfile (``relay_image.ensure_relay_image``) instead of as a process.
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
        self.networking = networking
        self.bridge: str | None = None
        self.spec = spec
        self.relays_per_region = relays_per_region
        self.namespaces = list(namespaces)
        self.relays_in_containers = relays_in_containers
        self._relay_tag: str | None = None
        self.session = uuid.uuid4().hex[:8]
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"relaynet-sim-{self.session}-"))
        self.regions: dict[str, _Region] = {}
        self.proxies: dict[tuple[str, str], LinkProxy] = {}
        # (client location, region) -> relay port -> the proxy clients at that location
        # reach that relay through; none for a location's own region (direct).
        self.client_paths: dict[tuple[str, str], dict[int, LinkProxy]] = {}
        self._tg: TaskGroup | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> RelayNetwork:
        reason = await anyio.to_thread.run_sync(containers.docker_available)
        if reason is not None:
            raise RuntimeError(reason)
        if self.relays_in_containers:  # before anything starts: its errors leave nothing behind
            self._relay_tag = await anyio.to_thread.run_sync(relay_image.ensure_relay_image)
        self._stack = contextlib.AsyncExitStack()
        await self._stack.__aenter__()
        try:
            self._stack.push_async_callback(self._teardown)
            self._tg = await self._stack.enter_async_context(anyio.create_task_group())
            await self._start()
        except BaseException:
            await self._stack.__aexit__(*sys.exc_info())
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._stack.__aexit__(*exc)

    async def _start(self) -> None:
        assert self._tg is not None
        image = await anyio.to_thread.run_sync(containers.ensure_nats_image)
        if self.networking == "bridge":
            self.bridge = await anyio.to_thread.run_sync(
                containers.create_bridge_network, self.session
            )
        for name in self.spec.regions:
            store = self.workdir / name / "nats"
            store.mkdir(parents=True, exist_ok=True)
            nats = containers.NatsContainer(
                name,
                client_port=containers.free_port(),
                monitor_port=containers.free_port(),
                store_dir=store,
                image=image,
                session=self.session,
                network=self.bridge,
            )
            self.regions[name] = _Region(name, nats)
        for region in self.regions.values():
            await anyio.to_thread.run_sync(region.nats.start)
        for (a, b), latency in self.spec.latency_ms.items():
            target = self.regions[b].nats
            proxy = LinkProxy("127.0.0.1", target.client_port, latency_ms=latency, name=f"{a}<-{b}")
            await self._tg.start(proxy.run)
            self.proxies[(a, b)] = proxy
        for region in self.regions.values():
            for i in range(self.relays_per_region):
                relay_id = f"{region.name}-{i + 1}"
                region.relays.append(
                    _Relay(
                        relay_id,
                        containers.free_port(),
                        self.workdir / region.name / f"{relay_id}.toml",
                        self.workdir / region.name / f"{relay_id}.log",
                    )
                )
                if self._relay_tag is not None:
                    relay = region.relays[-1]
                    relay.container = relay_image.RelayContainer(
                        relay_id,
                        region=region.name,
                        port=relay.port,
                        config=relay.config,
                        image=self._relay_tag,
                        session=self.session,
                        start_timeout_s=RELAY_START_TIMEOUT_S,
                    )
        for region in self.regions.values():
            self._write_configs(region)
        await self._start_client_paths()
        with anyio.fail_after(RELAY_START_TIMEOUT_S):
            async with anyio.create_task_group() as tg:
                for region in self.regions.values():
                    for relay in region.relays:
                        tg.start_soon(self._start_relay, relay)
        log.info("network %s up: %s", self.session, ", ".join(self.edges().values()))

    async def _start_client_paths(self) -> None:
        """A delay proxy from every client location to every relay of every other region."""
        assert self._tg is not None
        for location in self.spec.regions:
            for region in self.regions.values():
                if region.name == location:
                    continue
                latency = self.spec.latency_ms[(location, region.name)]
                paths = self.client_paths.setdefault((location, region.name), {})
                for relay in region.relays:
                    proxy = LinkProxy(
                        "127.0.0.1",
                        relay.port,
                        latency_ms=latency,
                        name=f"client@{location}->{relay.relay_id}",
                    )
                    await self._tg.start(proxy.run)
                    paths[relay.port] = proxy

    def _write_configs(self, region: _Region) -> None:
        peers = [
            (
                peer,
                self.regions[peer].relays[0].url,
                f"nats://127.0.0.1:{self.proxies[(region.name, peer)].port}",
            )
            for peer in self.spec.regions
            if peer != region.name
        ]
        for relay in region.relays:
            relay.config.write_text(
                _relay_toml(region.name, relay, region.nats.url, peers, self.namespaces)
            )

    async def _start_relay(self, relay: _Relay) -> None:
        """Start a relay (again) and return once it serves. A process is forked here, in the
        event loop's thread: forked from a worker thread it would get SIGTERM when anyio
        retires that worker (``child_process``), about 10 s later."""
        if relay.container is not None:  # the same container again after a stop or kill
            await anyio.to_thread.run_sync(relay.container.start)
            return
        proc = relay.proc = _fork_relay(relay)
        assert proc.stdout is not None
        try:
            with anyio.fail_after(RELAY_START_TIMEOUT_S):
                ready = await _read_line_with(proc.stdout.fileno(), b"ready on ")
        except TimeoutError:
            ready = False
        finally:
            proc.stdout.close()
        if not ready:
            raise RuntimeError(f"relay {relay.relay_id} did not start:\n{_log_tail(relay.log)}")

    @staticmethod
    def _stop_relay(relay: _Relay, sig: int = signal.SIGTERM) -> None:
        if relay.container is not None:
            if sig == signal.SIGKILL:
                relay.container.kill()
            else:
                relay.container.stop()
            return
        proc = relay.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def _teardown(self) -> None:
        with anyio.CancelScope(shield=True):
            for region in self.regions.values():
                for relay in region.relays:
                    if relay.container is None:
                        await anyio.to_thread.run_sync(self._stop_relay, relay)
                        continue
                    with contextlib.suppress(Exception):  # a force-remove: a kill
                        await anyio.to_thread.run_sync(relay.container.remove)
            for region in self.regions.values():
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(region.nats.remove)
            await anyio.to_thread.run_sync(containers.remove_leftovers, self.session)
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # --- what tests use -------------------------------------------------------------------

    def edge(self, region: str) -> str:
        return self._region(region).relays[0].url

    def edges(self) -> dict[str, str]:
        return {name: self.edge(name) for name in self.regions}

    @asynccontextmanager
    async def client(self, near: str) -> AsyncIterator[ProtocolClient]:
        """A bare protocol client on ``near``'s edge, directly: no routing, no latency.

        For a client that picks its region by measuring the map, use ``sdk_client``."""
        async with protocol_client(self.edge(near)) as client:
            yield client

    def dial(self, near: str) -> Dial:
        """How a client at location ``near`` reaches the relays: a function mapping a
        relay's own URL (``ws://127.0.0.1:PORT/...``, ``http://...``) to the URL it opens
        from there. ``near``'s own relays are direct; the others go through that
        location's delay proxies (``set_latency`` changes them too). Raises
        ``SpecError`` for a URL that is not one of this network's relays."""
        self._region(near)

        def dial(url: str) -> str:
            parts = urlsplit(url)
            if parts.hostname in ("127.0.0.1", "localhost") and parts.port is not None:
                if any(relay.port == parts.port for relay in self.regions[near].relays):
                    return url
                for (location, _), paths in self.client_paths.items():
                    if location == near and parts.port in paths:
                        netloc = f"127.0.0.1:{paths[parts.port].port}"
                        return urlunsplit(parts._replace(netloc=netloc))
            raise SpecError(f"{url!r} is not a relay of this network (dialled from {near})")

        return dial

    def seeds(self, near: str) -> list[str]:
        """Every region's edge (its own URL), ``near``'s first: seeds for a client there."""
        self._region(near)
        return [self.edge(near)] + [url for name, url in self.edges().items() if name != near]

    @asynccontextmanager
    async def sdk_client(self, near: str, **kwargs: Any) -> AsyncIterator[Client]:
        """The Python SDK as a client at location ``near`` would run it: it fetches the
        directory, probes every edge over that location's paths and connects to the
        nearest under the configured latencies, failing over in that order.
        ``kwargs`` go to ``relay.client.connection.connect``. ``client.url`` and
        ``client.choice`` name the relays' own URLs (``edges()``)."""
        async with connect(self.seeds(near), dial=self.dial(near), **kwargs) as client:
            yield client

    def partition(self, a: str, b: str) -> None:
        """Cut the link between two regions, both ways (connections reset, none accepted).

        Only the regions' backbone is cut: clients at location ``a`` still reach
        ``b``'s edges (and the other way round), as a client on the open internet
        would during a partition between two datacentres."""
        for link in ((a, b), (b, a)):
            self._proxy(link).cut()

    def hold(self, a: str, b: str) -> None:
        """A silent partition: bytes stop flowing, connections stay open."""
        for link in ((a, b), (b, a)):
            self._proxy(link).hold()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def set_latency(self, a: str, b: str, ms: float) -> None:
        """One-way latency between two regions, both ways: the link between them and
        the paths of clients at ``a`` to ``b``'s edges (and at ``b`` to ``a``'s)."""
        if ms < 0:
            raise SpecError(f"latency {a} <-> {b} must not be negative (got {ms})")
        for link in ((a, b), (b, a)):
            self._proxy(link).set_latency(ms)
            for path in self.client_paths.get(link, {}).values():
                path.set_latency(ms)

    async def kill_region(self, region: str) -> None:
        """SIGKILL the region's relays and its NATS: a region burning down."""
        target = self._region(region)
        for relay in target.relays:
            await anyio.to_thread.run_sync(self._stop_relay, relay, signal.SIGKILL)
        await anyio.to_thread.run_sync(target.nats.kill)
        target.down = True

    async def restart_region(self, region: str) -> None:
        """Bring a region back: the same NATS container (and store), then its relays."""
        target = self._region(region)
        for relay in target.relays:
            await anyio.to_thread.run_sync(self._stop_relay, relay)
        await anyio.to_thread.run_sync(target.nats.start_again)
        with anyio.fail_after(RELAY_START_TIMEOUT_S):
            for relay in target.relays:
                await self._start_relay(relay)
        target.down = False

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

    def _region(self, name: str) -> _Region:
        try:
            return self.regions[name]
        except KeyError:
            known = ", ".join(self.regions)
            raise SpecError(f"unknown region {name!r} (this network has: {known})") from None

    def _proxy(self, link: tuple[str, str]) -> LinkProxy:
        self._region(link[0])
        self._region(link[1])
        if link not in self.proxies:
            raise SpecError(f"no link between {link[0]} and itself")
        return self.proxies[link]


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
