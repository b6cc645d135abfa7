"""Where a relay sends a client it will not keep (draining, or at its connection limit).

Pure: the edge directory hands in the relays it has heard from (their presence
beats) and gets back one of them, or None.

Only another relay of this region that is up and accepting qualifies: the
client keeps its region, so its RTT and ordering stay the same. Targets are
spread by a per-connection key so that a draining relay does not pile every
client onto one sibling. Never another region: a relay does not know where its
clients are, and a client's own measured failover order (which it falls back
to when there is no redirect) is the better guide across regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from federation.logformat import RelayState as RelayState  # what relays' beats say


@dataclass(frozen=True)
class KnownRelay:
    region: str
    relay: str
    url: str
    state: RelayState


def redirect_target(
    region: str, relay: str, relays: Sequence[KnownRelay], spread: int
) -> KnownRelay | None:
    """``relays``: the ones heard from recently (any region, this one included);
    ``spread``: any integer that differs between connections (their counter)."""
    siblings = sorted(
        (r for r in relays if r.region == region and r.relay != relay and r.state == "up"),
        key=lambda r: r.relay,
    )
    return siblings[spread % len(siblings)] if siblings else None
