"""Network: several regions of relaynet on one machine, for the demo, the simulator,
benchmarks and tests.

Theory of operation
-------------------
A region is a NATS with JetStream and one or more relays. Its NATS is a local
nats-server process (``toolkit.NatsServerProcess``) or anything else with the same
``RegionNats`` methods (the simulator's containers). Its relays run in this
process (``RelayNode`` in the network's task group), as processes (``relay.cli``,
tied to us by ``PR_SET_PDEATHSIG``) or as anything else with the ``Relay``
methods (the simulator's containers). Every relay listens on a port picked once,
so a restarted relay comes back where clients and peers look for it.

Between regions, each directed link (region ``a`` reading region ``b``'s NATS)
goes through a ``LinkProxy`` with the latency ``latency_ms(a, b)``, which also
cuts and holds it; ``links=False`` lets regions read each other's NATS directly.
Clients can have a location too: ``add_client_paths`` puts a delay proxy in front
of every relay a client at that location reaches, and ``dial(near)`` maps a
relay's own URL to the one such a client opens.

``async with Network(...) as net`` starts NATS first, then the link proxies, then
every relay (concurrently) and stops everything on the way out, whatever happened:
relays first (frozen ones continued), then the proxies, then NATS. The network is
the only code that signals what it started.

Every region's NATS is closed as a relay's embedded one is (``embedded_nats``): no
anonymous client; the region's relays connect as the relay user, and each peer
region's link as that region's own user, which may only read through its own durable
consumer. The passwords are generated in each NATS's store directory at its first
start; relays' configs name those files (``[nats] password_file``,
``[[peers]] nats_password_file``), and ``credentials`` gives them to a tool's own
connections.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import anyio
from anyio.abc import TaskGroup

from relay.adapters.embedded_nats import (
    RELAY_USER,
    NatsCredentials,
    password_file,
    peer_user,
    read_password_file,
    region_peer_permissions,
)
from relay.config.schema import RelayConfig
from relay.harness import toolkit
from relay.harness.linkproxy import LinkProxy
from relay.harness.toolkit import HarnessError, NatsServerProcess, ServerProcess, edge_url

RELAY_START_TIMEOUT_S = 30.0
# Quick hand-overs and redeliveries: tools want to see effects soon.
FAST_FEDERATION = {"ack_wait_s": 2.0, "lease_ttl_s": 1.5}

Latency = Callable[[str, str], float]
RelayMode = Literal["process", "in-process"]


class RegionNats(Protocol):
    """A region's NATS: a local ``NatsServerProcess`` or a container."""

    @property
    def url(self) -> str: ...
    # On this machine: where its generated passwords are kept. None: a NATS of someone
    # else's (an operator's own, a test's), taken as it is, without credentials.
    @property
    def store_dir(self) -> Path | None: ...
    @property
    def running(self) -> bool: ...
    @property
    def pid(self) -> int | None: ...
    async def up(self) -> str: ...
    async def down(self, *, kill: bool = False) -> None: ...


class Relay(Protocol):
    relay_id: str
    region: str
    port: int

    @property
    def url(self) -> str: ...
    @property
    def alive(self) -> bool: ...
    @property
    def pid(self) -> int | None: ...
    async def up(self) -> None: ...
    async def down(self, *, kill: bool = False) -> None: ...


@dataclass
class ProcessRelay:
    """A relay process; each start is an incarnation with files of its own."""

    net: Network
    relay_id: str
    region: str
    port: int
    process: ServerProcess | None = None
    retired: list[ServerProcess] = field(default_factory=list)  # earlier incarnations

    @property
    def url(self) -> str:
        return edge_url(self.port)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.proc.pid if self.alive and self.process is not None else None

    @property
    def logs(self) -> list[Path]:
        runs = [*self.retired, *([self.process] if self.process else [])]
        return [log for run in runs for log in run.logs]

    def spawn(self) -> ServerProcess:
        """Fork the next incarnation (from the event loop's thread: ``child_process``)."""
        if self.process is not None:
            self.retired.append(self.process)
        home = self.net.workdir / f"relay-{self.relay_id}.{len(self.retired) + 1}"
        # SIGKILL when we die: a frozen relay would not act on SIGTERM.
        self.process = toolkit.start_relay(
            f"relay {self.relay_id}", self.net.config(self), home, death_signal=signal.SIGKILL
        )
        return self.process

    async def up(self) -> None:
        try:
            await self.spawn().wait_ready()
        except BaseException:
            await self.down(kill=True)
            raise

    async def down(self, *, kill: bool = False) -> None:
        process = self.process
        if process is None or process.proc.poll() is not None:
            return
        self.net.frozen.discard(process.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.proc.pid, signal.SIGCONT)  # a frozen one acts on nothing else
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.proc.pid, signal.SIGKILL)
            process.proc.wait()  # a killed process is gone at once; reap it
        else:
            await process.stop()


@dataclass
class NodeRelay:
    """A relay in this process, run in the network's task group."""

    net: Network
    relay_id: str
    region: str
    port: int
    node: Any = None  # relay.node.RelayNode, imported when one starts

    @property
    def url(self) -> str:
        return edge_url(self.port)

    @property
    def alive(self) -> bool:
        return self.node is not None

    @property
    def pid(self) -> int | None:
        return None

    async def up(self) -> None:
        from relay.node import RelayNode

        node = RelayNode(self.net.config(self))
        await self.net.task_group.start(node.run)
        self.node = node

    async def down(self, *, kill: bool = False) -> None:
        if kill:
            raise HarnessError(f"{self.relay_id} runs in this process: it cannot be killed")
        node, self.node = self.node, None
        if node is not None:
            node.stop()
            with anyio.CancelScope(shield=True):
                await node.run_finished()


@dataclass
class Region:
    name: str
    nats: RegionNats
    relays: list[Relay] = field(default_factory=list)
    down: bool = False


def local_nats(net: Network, region: str) -> RegionNats:
    return NatsServerProcess(
        net.workdir / f"nats-{region}", name=f"{net.name}-{region}", peers=net.nats_peers(region)
    )


async def start_link_proxies(
    tg: TaskGroup, nats_urls: Mapping[str, str], latency_ms: Latency | float = 0.0
) -> dict[tuple[str, str], LinkProxy]:
    """A proxy for every directed link, serving in ``tg``: ``proxies[(a, b)]`` carries a's
    reads of b's NATS."""
    proxies: dict[tuple[str, str], LinkProxy] = {}
    for a in nats_urls:
        for b, url in nats_urls.items():
            if a != b:
                latency = latency_ms(a, b) if callable(latency_ms) else latency_ms
                host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 4222
                proxy = LinkProxy(host, port, latency_ms=latency, name=f"{a}<-{b}")
                await tg.start(proxy.run)
                proxies[(a, b)] = proxy
    return proxies


def proxy_url(proxy: LinkProxy) -> str:
    return f"nats://127.0.0.1:{proxy.port}"


class Network:
    # What a misuse raises (an unknown region, a negative latency, a foreign URL).
    usage_error: type[Exception] = HarnessError

    def __init__(
        self,
        regions: Sequence[str],
        workdir: Path,
        *,
        relays: int | Mapping[str, int] = 1,
        relay_mode: RelayMode = "process",
        links: bool = True,
        latency_ms: Latency | float = 0.0,
        settings: Mapping[str, Any] | None = None,
        name: str = "net",
        nats: Callable[[Network, str], RegionNats] = local_nats,
        relay: Callable[[Network, str, str, int], Relay] | None = None,
    ) -> None:
        """``relays``: how many per region; ``settings``: sections of every relay's config
        (``toolkit.relay_config``'s arguments: namespaces, limits, federation, relay,
        nats); ``nats`` and ``relay`` make a region's NATS and a relay (default: a local
        nats-server, relays as ``relay_mode`` says)."""
        self.workdir = workdir
        self.name = name
        self.links = links
        self.latency_ms = latency_ms
        self.settings = dict(settings or {"federation": FAST_FEDERATION})
        self.region_names = tuple(regions)
        self.regions = {r: Region(r, nats(self, r)) for r in regions}
        counts = relays if isinstance(relays, Mapping) else dict.fromkeys(regions, relays)
        ids = [(r, f"{r}-{i + 1}") for r in regions for i in range(counts[r])]
        make = relay or (ProcessRelay if relay_mode == "process" else NodeRelay)
        for (region, relay_id), port in zip(ids, toolkit.free_ports(len(ids)), strict=True):
            self.regions[region].relays.append(make(self, relay_id, region, port))
        self.proxies: dict[tuple[str, str], LinkProxy] = {}
        # (client location, relay port) -> the proxy clients there reach that relay through
        self.client_paths: dict[tuple[str, int], LinkProxy] = {}
        self.frozen: set[int] = set()
        self._tg: TaskGroup | None = None
        self._stack = contextlib.AsyncExitStack()

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def task_group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("the network is not running")
        return self._tg

    async def __aenter__(self) -> Network:
        await self._stack.__aenter__()
        try:
            self._stack.push_async_callback(self.stop)
            self._tg = await self._stack.enter_async_context(anyio.create_task_group())
            await self.start()
        except BaseException:
            await self._stack.__aexit__(*sys.exc_info())
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.stop()  # relays first, while their links and NATS are still there
        finally:
            self.task_group.cancel_scope.cancel()
            await self._stack.__aexit__(*exc)

    async def start(self) -> None:
        async with anyio.create_task_group() as tg:
            for region in self.regions.values():
                tg.start_soon(region.nats.up)
        if self.links:
            urls = {name: region.nats.url for name, region in self.regions.items()}
            self.proxies = await start_link_proxies(self.task_group, urls, self.latency_ms)
        with anyio.fail_after(RELAY_START_TIMEOUT_S):
            async with anyio.create_task_group() as tg:
                for relay in self.relays():
                    tg.start_soon(relay.up)

    async def stop(self) -> None:
        """Everything this network started, gone; shielded, and calling it again does
        nothing more."""
        with anyio.CancelScope(shield=True):
            for pid in self.frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            self.frozen.clear()
            async with anyio.create_task_group() as tg:
                for relay in self.relays():
                    tg.start_soon(relay.down)
            for proxy in self.proxies.values():
                proxy.heal()
            async with anyio.create_task_group() as tg:
                for region in self.regions.values():
                    tg.start_soon(region.nats.down)

    # --- what relays are configured with ------------------------------------------------

    def config(self, relay: Relay) -> RelayConfig:
        region = relay.region
        peers = [
            {
                "region": peer,
                "edge_url": self.edge(peer),
                "nats_url": proxy_url(self.proxies[(region, peer)])
                if self.links
                else self.regions[peer].nats.url,
                **self._login(peer, peer_user(region), "nats_"),
            }
            for peer in self.regions
            if peer != region
        ]
        settings = dict(self.settings)
        settings["nats"] = {**settings.get("nats", {}), **self._login(region, RELAY_USER, "")}
        return toolkit.relay_config(
            nats_url=self.regions[region].nats.url,
            region=region,
            relay_id=relay.relay_id,
            port=relay.port,
            peers=peers,
            **settings,
        )

    def nats_peers(self, region: str) -> dict[str, dict[str, object]]:
        """What each other region's user may do on ``region``'s NATS (by region): worked
        out from a config of the region's relays as ``config`` makes them, before any URL
        is known (the permissions name streams, not addresses)."""
        somewhere = "nats://127.0.0.1:4222"
        peers = [
            {"region": peer, "edge_url": edge_url(1), "nats_url": somewhere}
            for peer in self.region_names
            if peer != region
        ]
        cfg = toolkit.relay_config(nats_url=somewhere, region=region, peers=peers, **self.settings)
        return region_peer_permissions(cfg)

    def _login(self, region: str, user: str, prefix: str) -> dict[str, str]:
        """Config fields logging in to ``region``'s NATS as ``user`` (none for a NATS of
        someone else's)."""
        if self.region(region).nats.store_dir is None:
            return {}
        return {
            f"{prefix}user": user,
            f"{prefix}password_file": str(self.password_file(region, user)),
        }

    def password_file(self, region: str, user: str = RELAY_USER) -> Path:
        """Where ``region``'s NATS keeps ``user``'s password (there once it started)."""
        store_dir = self.region(region).nats.store_dir
        if store_dir is None:
            raise ValueError(f"{region}'s NATS is not one of this network's: no passwords")
        return password_file(store_dir, user).absolute()

    def credentials(self, region: str, user: str = RELAY_USER) -> NatsCredentials:
        """What a tool connects to ``region``'s NATS with (default: as its relays do)."""
        return NatsCredentials(user, read_password_file(self.password_file(region, user)))

    # --- addresses ----------------------------------------------------------------------

    def relays(self) -> list[Relay]:
        return [relay for region in self.regions.values() for relay in region.relays]

    def relay(self, relay_id: str) -> Relay:
        return next(r for r in self.relays() if r.relay_id == relay_id)

    def region(self, name: str) -> Region:
        try:
            return self.regions[name]
        except KeyError:
            known = ", ".join(self.regions)
            raise self.usage_error(f"unknown region {name!r} (this network has: {known})") from None

    def edge(self, region: str) -> str:
        return self.region(region).relays[0].url

    def edges(self) -> dict[str, str]:
        return {name: self.edge(name) for name in self.regions}

    def region_edges(self, region: str) -> list[str]:
        return [relay.url for relay in self.region(region).relays]

    def seeds(self, near: str) -> list[str]:
        """Every region's edge (its own URL), ``near``'s first: seeds for a client there."""
        return [self.edge(near)] + [url for name, url in self.edges().items() if name != near]

    def pids(self) -> dict[str, int]:
        """The processes running now, by name: for CPU and memory figures."""
        found = {f"relay {r.relay_id}": r.pid for r in self.relays()}
        found |= {f"nats {name}": region.nats.pid for name, region in self.regions.items()}
        return {name: pid for name, pid in found.items() if pid is not None}

    def logs(self) -> list[Path]:
        logs = [log for r in self.relays() if isinstance(r, ProcessRelay) for log in r.logs]
        nats = [region.nats for region in self.regions.values()]
        return logs + [n.log for n in nats if isinstance(n, NatsServerProcess)]

    # --- clients with a location --------------------------------------------------------

    async def add_client_paths(self, location: str, latency_ms: Latency) -> None:
        """A delay proxy (``latency_ms(location, region)`` each way) from ``location`` to
        every relay of every other region."""
        for region in self.regions.values():
            if region.name == location:
                continue
            for relay in region.relays:
                proxy = LinkProxy(
                    "127.0.0.1",
                    relay.port,
                    latency_ms=latency_ms(location, region.name),
                    name=f"client@{location}->{relay.relay_id}",
                )
                await self.task_group.start(proxy.run)
                self.client_paths[(location, relay.port)] = proxy

    def dial(self, near: str) -> Callable[[str], str]:
        """How a client at ``near`` reaches the relays: maps a relay's own URL
        (``ws://127.0.0.1:PORT/...``, ``http://...``) to the one it opens from there;
        ``near``'s own relays are direct. Raises ``HarnessError`` for any other URL."""
        own = {relay.port for relay in self.region(near).relays}

        def dial(url: str) -> str:
            parts = urlsplit(url)
            if parts.hostname in ("127.0.0.1", "localhost") and parts.port is not None:
                if parts.port in own:
                    return url
                if (path := self.client_paths.get((near, parts.port))) is not None:
                    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{path.port}"))
            raise self.usage_error(f"{url!r} is not a relay of this network (dialled from {near})")

        return dial

    # --- faults -------------------------------------------------------------------------

    def link(self, a: str, b: str) -> LinkProxy:
        self.region(a)
        self.region(b)
        if (a, b) not in self.proxies:
            raise self.usage_error(f"no link between {a} and itself")
        return self.proxies[(a, b)]

    def partition(self, a: str, b: str) -> None:
        """Cut the link between two regions, both ways (connections reset, none accepted)."""
        for link in ((a, b), (b, a)):
            self.link(*link).cut()

    def hold(self, a: str, b: str) -> None:
        """A silent partition: bytes stop flowing, connections stay open."""
        for link in ((a, b), (b, a)):
            self.link(*link).hold()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def set_latency(self, a: str, b: str, ms: float) -> None:
        """One-way latency between two regions, both ways: the link and the paths of
        clients at either to the other's relays."""
        if ms < 0:
            raise self.usage_error(f"latency {a} <-> {b} must not be negative (got {ms})")
        for x, y in ((a, b), (b, a)):
            self.link(x, y).set_latency(ms)
            for relay in self.regions[y].relays:
                if (path := self.client_paths.get((x, relay.port))) is not None:
                    path.set_latency(ms)

    def freeze(self, pid: int | None) -> bool:
        """SIGSTOP a process of this network (``thaw`` or ``stop`` continues it)."""
        if pid is None:
            return False
        self.frozen.add(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        return True

    def thaw(self, pid: int | None) -> None:
        if pid is not None:
            self.frozen.discard(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def kill_region(self, region: str) -> None:
        """SIGKILL the region's relays and its NATS: a region burning down."""
        target = self.region(region)
        for relay in target.relays:
            await relay.down(kill=True)
        await target.nats.down(kill=True)
        target.down = True

    async def restart_region(self, region: str) -> None:
        """Bring a region back: the same NATS (port and store), then its relays."""
        target = self.region(region)
        for relay in target.relays:
            await relay.down()
        await target.nats.up()
        with anyio.fail_after(RELAY_START_TIMEOUT_S):
            for relay in target.relays:
                await relay.up()
        target.down = False
