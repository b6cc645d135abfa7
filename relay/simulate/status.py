"""The live status of a simulated network: what `relaynet simulate` prints.

Reads real sources only: each relay's ``/metrics`` (connections, federation
link state) and each peer's JetStream consumer info for the federation
durable (``fed-<reader>``): messages not yet delivered or not yet
acknowledged over the link are its forwarding lag.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

import nats
import nats.errors

from federation import logformat
from relay.simulate.network import RelayNetwork


@dataclass(frozen=True)
class LinkRow:
    link: str
    state: str
    requested_ms: float
    measured_ms: float | None
    lag: int | None


@dataclass(frozen=True)
class RegionRow:
    region: str
    relays_up: int
    relays: int
    connections: int | None
    edge: str


def _metric(text: str, name: str) -> float | None:
    total = None
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def scrape(url: str) -> str | None:
    http = url.replace("ws://", "http://").replace("/v1/ws", "/metrics")
    try:
        with urllib.request.urlopen(http, timeout=1) as response:
            return str(response.read().decode())
    except OSError:
        return None


def region_rows(network: RelayNetwork) -> list[RegionRow]:
    rows = []
    for name, region in network.regions.items():
        up = [r for r in region.relays if r.alive]
        connections = 0
        for relay in up:
            text = scrape(relay.url)
            value = None if text is None else _metric(text, "relaynet_connections")
            connections += int(value or 0)
        rows.append(
            RegionRow(name, len(up), len(region.relays), connections if up else None,
                      network.edge(name))
        )  # fmt: skip
    return rows


async def link_lag(network: RelayNetwork, reader: str, source: str) -> int | None:
    """Messages of ``source``'s log not yet applied by ``reader`` (None if unknown)."""
    region = network.regions[source]
    if region.down:
        return None
    namespaces = [str(rule.get("name")) for rule in network.namespaces] or ["default"]
    if "default" not in namespaces:
        namespaces.append("default")
    try:
        credentials = network.credentials(source)  # the relay user's: it reads any consumer
        nc = await nats.connect(
            region.nats.url,
            user=credentials.user,
            password=credentials.password,
            connect_timeout=1,
            max_reconnect_attempts=0,
        )
    except Exception:
        return None
    try:
        js = nc.jetstream(timeout=1)
        lag = 0
        for namespace in namespaces:
            stream = logformat.stream_name(source, namespace)
            try:
                info = await js.consumer_info(stream, f"fed-{reader}")
            except Exception:  # not created yet (nothing read so far)
                continue
            lag += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return lag
    finally:
        await nc.close()


async def link_rows(network: RelayNetwork) -> list[LinkRow]:
    rows = []
    for (a, b), proxy in network.proxies.items():
        measured = proxy.measured_latency_ms()
        state = "down" if network.regions[b].down or network.regions[a].down else proxy.state
        rows.append(
            LinkRow(f"{a} <- {b}", state, proxy.latency_ms,
                    None if measured is None else measured[0], await link_lag(network, a, b))
        )  # fmt: skip
    return rows


def render(regions: list[RegionRow], links: list[LinkRow]) -> str:
    out = [f"{'region':<12} {'relays':>7} {'connections':>12}  edge"]
    for r in regions:
        conns = "-" if r.connections is None else str(r.connections)
        out.append(f"{r.region:<12} {r.relays_up:>3}/{r.relays:<3} {conns:>12}  {r.edge}")
    out.append("")
    out.append(f"{'link (reader <- source)':<26} {'state':<6} {'requested':>10} {'measured':>9} "
               f"{'lag msgs':>9}")  # fmt: skip
    for link in links:
        measured = "-" if link.measured_ms is None else f"{link.measured_ms:.1f} ms"
        lag = "-" if link.lag is None else str(link.lag)
        out.append(f"{link.link:<26} {link.state:<6} {link.requested_ms:>7.1f} ms "
                   f"{measured:>9} {lag:>9}")  # fmt: skip
    return "\n".join(out)
