"""What ``relaynet status`` shows, from what the relays answered: pure, no I/O.

Input: per relay, its ``/v1/ready`` JSON and its ``/metrics`` text (or why they
could not be read), plus the seed's ``/v1/edges`` region health. Output: rows
for three tables (regions, relays, links) and their rendering with rich. Rates
(msgs/s) are the difference to the previous snapshot, so the first one has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> Samples:
    """Sample name (``relaynet_messages_published_total``, ...) -> (labels, value)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def total(samples: Samples, name: str, **match: str) -> float | None:
    """The sum of ``name``'s samples whose labels include ``match``; None if none."""
    rows = samples.get(name, [])
    values = [v for labels, v in rows if all(labels.get(k) == w for k, w in match.items())]
    return sum(values) if values else None


@dataclass(frozen=True)
class RelaySnapshot:
    url: str
    ready: Mapping[str, Any] | None  # the /v1/ready body
    ready_status: int | None  # its HTTP status
    metrics: Samples = field(default_factory=dict)
    error: str | None = None  # why the relay could not be read
    # What the directory listed it as (a peer's public edge has no relay id there).
    listed_region: str = ""
    listed_relay: str = ""

    @property
    def region(self) -> str:
        said = (self.ready or {}).get("region") or _label(self.metrics, "region")
        return str(said or self.listed_region or "?")

    @property
    def relay(self) -> str:
        said = (self.ready or {}).get("relay") or _label(self.metrics, "relay")
        return str(said or self.listed_relay or self.url)

    @property
    def health(self) -> str:
        if self.error is not None:
            return "unreachable"
        if self.ready is None:
            return "unknown"
        if self.ready.get("draining"):
            return "draining"
        return "ready" if self.ready_status == 200 else "not ready"


def _label(samples: Samples, name: str) -> str | None:
    for rows in samples.values():
        for labels, _ in rows:
            if name in labels:
                return labels[name]
    return None


@dataclass(frozen=True)
class Snapshot:
    at: float  # monotonic seconds
    seed: str
    region_health: Mapping[str, str]  # from the seed's /v1/edges
    relays: tuple[RelaySnapshot, ...]


@dataclass(frozen=True)
class RegionRow:
    region: str
    health: str
    relays_ready: int
    relays: int
    connections: int


@dataclass(frozen=True)
class RelayRow:
    region: str
    relay: str
    url: str
    health: str
    nats: str
    connections: int | None
    subscriptions: int | None
    published_per_s: float | None
    delivered_per_s: float | None


@dataclass(frozen=True)
class LinkRow:
    region: str
    peer: str
    state: str
    pending: int | None
    lag_s: float | None
    received_per_s: float | None


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _rate(now: float | None, before: float | None, seconds: float | None) -> float | None:
    if now is None or before is None or not seconds or seconds <= 0:
        return None
    return max(0.0, (now - before) / seconds)


def _key(relay: RelaySnapshot) -> tuple[str, str]:
    return relay.region, relay.relay


def relay_rows(snap: Snapshot, previous: Snapshot | None = None) -> list[RelayRow]:
    before = {_key(r): r for r in previous.relays} if previous else {}
    elapsed = snap.at - previous.at if previous else None
    rows = []
    for r in sorted(snap.relays, key=_key):
        m, old = r.metrics, before.get(_key(r))
        om = old.metrics if old else {}
        ready = r.ready or {}
        nats = "-" if r.ready is None else (
            "ok" if ready.get("jetstream") else ("no jetstream" if ready.get("nats") else "down")
        )  # fmt: skip
        rows.append(
            RelayRow(
                region=r.region,
                relay=r.relay,
                url=r.url,
                health=r.health,
                nats=nats,
                connections=_int(total(m, "relaynet_connections")),
                subscriptions=_int(total(m, "relaynet_subscriptions")),
                published_per_s=_rate(
                    total(m, "relaynet_messages_published_total"),
                    total(om, "relaynet_messages_published_total"),
                    elapsed,
                ),
                delivered_per_s=_rate(
                    total(m, "relaynet_messages_delivered_total"),
                    total(om, "relaynet_messages_delivered_total"),
                    elapsed,
                ),
            )
        )
    return rows


def region_rows(snap: Snapshot) -> list[RegionRow]:
    regions = sorted(set(snap.region_health) | {r.region for r in snap.relays})
    rows = []
    for region in regions:
        relays = [r for r in snap.relays if r.region == region]
        rows.append(
            RegionRow(
                region=region,
                health=snap.region_health.get(region, "unknown"),
                relays_ready=sum(1 for r in relays if r.health == "ready"),
                relays=len(relays),
                connections=sum(int(total(r.metrics, "relaynet_connections") or 0) for r in relays),
            )
        )
    return rows


def link_rows(snap: Snapshot, previous: Snapshot | None = None) -> list[LinkRow]:
    """One row per (region, peer): the state its relays' readiness reports (up if any
    sees the peer), lag and pending from the instance serving the link (the largest)."""
    elapsed = snap.at - previous.at if previous else None
    states: dict[tuple[str, str], str] = {}
    for r in snap.relays:
        for peer, state in ((r.ready or {}).get("links") or {}).items():
            key = (r.region, str(peer))
            states[key] = "up" if state == "up" or states.get(key) == "up" else str(state)
    for r in snap.relays:  # a relay whose readiness did not answer still names its links
        for labels, _ in r.metrics.get("relaynet_federation_link_up", []):
            states.setdefault((r.region, labels.get("peer", "?")), "unknown")
    rows = []
    for region, peer in sorted(states):
        relays = [r for r in snap.relays if r.region == region]
        olds = [r for r in previous.relays if r.region == region] if previous else []
        pending = [total(r.metrics, "relaynet_federation_link_pending_messages", peer=peer)
                   for r in relays]  # fmt: skip
        lag = [total(r.metrics, "relaynet_federation_link_lag_seconds", peer=peer) for r in relays]
        name = "relaynet_federation_link_received_total"
        rows.append(
            LinkRow(
                region=region,
                peer=peer,
                state=states[(region, peer)],
                pending=_int(max((p for p in pending if p is not None), default=None)),
                lag_s=max((x for x in lag if x is not None), default=None),
                received_per_s=_rate(
                    _sum(total(r.metrics, name, peer=peer) for r in relays),
                    _sum(total(r.metrics, name, peer=peer) for r in olds) if olds else None,
                    elapsed,
                ),
            )
        )
    return rows


def _sum(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _show(value: float | int | None, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


_STYLE = {"ready": "green", "up": "green", "ok": "green", "draining": "yellow"}


def _styled(text: str) -> str:
    return f"[{_STYLE.get(text, 'red')}]{text}[/]"


def render(snap: Snapshot, previous: Snapshot | None = None) -> Group:
    """The three tables (regions, relays, links) as one rich renderable."""
    regions = Table(title=f"regions (directory of {snap.seed})", title_justify="left")
    for name in ("region", "health", "relays ready", "connections"):
        regions.add_column(name, justify="left" if name in ("region", "health") else "right")
    for g in region_rows(snap):
        regions.add_row(g.region, _styled(g.health), f"{g.relays_ready}/{g.relays}",
                        f"{g.connections:,}")  # fmt: skip
    relays = Table(title="relays", title_justify="left")
    for name in ("region", "relay", "url", "health", "nats", "conns", "subs", "pub/s", "deliv/s"):
        relays.add_column(name, justify="right" if name in ("conns", "subs", "pub/s",
                                                            "deliv/s") else "left")  # fmt: skip
    for r in relay_rows(snap, previous):
        relays.add_row(
            r.region, r.relay, r.url, _styled(r.health),
            r.nats if r.nats == "-" else _styled(r.nats),
            _show(r.connections), _show(r.subscriptions),
            _show(r.published_per_s, "{:,.1f}"), _show(r.delivered_per_s, "{:,.1f}"),
        )  # fmt: skip
    parts: list[Table] = [regions, relays]
    rows = link_rows(snap, previous)
    if rows:
        links = Table(title="federation links (region reads peer)", title_justify="left")
        for name in ("region", "peer", "state", "pending msgs", "lag s", "recv/s"):
            links.add_column(name, justify="left" if name in ("region", "peer", "state")
                             else "right")  # fmt: skip
        for k in rows:
            links.add_row(k.region, k.peer, _styled(k.state), _show(k.pending),
                          _show(k.lag_s, "{:.2f}"), _show(k.received_per_s, "{:,.1f}"))  # fmt: skip
        parts.append(links)
    return Group(*parts)
