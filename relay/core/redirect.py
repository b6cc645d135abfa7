"""Where a relay sends a client it will not keep (draining, or at its connection limit).

Pure: the edge directory hands in what it has heard (relays' presence beats and
the regions' health) and gets back one URL, or None when there is nowhere better
to go, in which case the client falls back to its own failover order.

Preference: another relay of this region that is up and accepting (the client
keeps its region, so its RTT and ordering stay the same), spread over those
relays by a per-connection key so a draining relay does not pile every client
onto one sibling; then the first healthy peer region in config order (the
operator lists peers nearest first), through that region's public edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RelayState = Literal["up", "full", "draining"]


@dataclass(frozen=True)
class KnownRelay:
    region: str
    relay: str
    url: str
    state: RelayState


@dataclass(frozen=True)
class PeerEdge:
    region: str
    url: str
    healthy: bool


@dataclass(frozen=True)
class Redirect:
    region: str
    url: str


def redirect_target(
    region: str,
    relay: str,
    relays: Sequence[KnownRelay],
    peers: Sequence[PeerEdge],
    spread: int,
) -> Redirect | None:
    """``relays``: the ones heard from recently (any region, this one included);
    ``peers``: the configured peer regions in config order; ``spread``: any integer
    that differs between connections (their counter)."""
    siblings = sorted(
        (r for r in relays if r.region == region and r.relay != relay and r.state == "up"),
        key=lambda r: r.relay,
    )
    if siblings:
        chosen = siblings[spread % len(siblings)]
        return Redirect(chosen.region, chosen.url)
    for peer in peers:
        if peer.region != region and peer.healthy:
            return Redirect(peer.region, peer.url)
    return None
