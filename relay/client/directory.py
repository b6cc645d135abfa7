"""The edge directory and what the probes made of it, without I/O.

``Directory`` is what a relay's ``GET /v1/edges`` says (or, for relays without
one, the seeds that answered as relays); ``plan()`` combines it with RTT
samples through ``routing.choose`` into a ``Survey``: the routing choice and
every edge in the order to try. ``probing.py`` fetches and measures.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from relay.client.routing import Choice, Edge, Health, choose

Dial = Callable[[str], str]
"""Maps a relay URL (a seed, or an edge from the directory) to the URL actually opened."""


def same_url(url: str) -> str:
    return url


def health_of(raw: str) -> Health:
    return cast(Health, raw) if raw in ("up", "down", "unknown") else "unknown"


@dataclass(frozen=True)
class DirectoryEdge:
    region: str
    url: str
    health: Health


@dataclass(frozen=True)
class Directory:
    source: str
    """The relay URL the directory came from; ``"seeds"`` when no relay serves /v1/edges."""
    region: str | None
    """The region of the relay that answered (None for the seed-only fallback)."""
    relay: str | None
    edges: tuple[DirectoryEdge, ...]


@dataclass(frozen=True)
class Survey:
    """A directory, what the probes measured, and what routing made of them."""

    directory: Directory
    samples: dict[str, list[float | None]]
    """Edge URL -> RTT samples in ms (None: that probe failed)."""
    choice: Choice
    candidates: tuple[tuple[str, str], ...]
    """(region, edge URL) in the order to try them."""
    failures: dict[str, str] = field(default_factory=dict)
    """Sources that gave no directory -> why (refused, timed out, not a relay...)."""

    def edge_rtt_ms(self, url: str) -> float | None:
        """Median of the edge's successful probes (routing's ``rtt_ms`` is per region)."""
        ok = [s for s in self.samples.get(url, ()) if s is not None]
        return statistics.median(ok) if ok else None


def plan(
    directory: Directory,
    samples: Mapping[str, Sequence[float | None]],
    *,
    prefer: str | None = None,
) -> Survey:
    """Directory + probe samples -> routing's choice and the edges in the order to try.

    A region's RTT is that of its first edge (directory order) that answered a
    probe; within a region, edges that answered come first, in directory order.
    """
    by_region: dict[str, list[DirectoryEdge]] = {}
    for edge in directory.edges:
        by_region.setdefault(edge.region, []).append(edge)

    def reachable(edge: DirectoryEdge) -> bool:
        return any(s is not None for s in samples.get(edge.url, ()))

    region_samples: dict[str, Sequence[float | None]] = {}
    in_order: dict[str, list[DirectoryEdge]] = {}
    for region, edges in by_region.items():
        in_order[region] = [e for e in edges if reachable(e)] + [
            e for e in edges if not reachable(e)
        ]
        region_samples[region] = samples.get(in_order[region][0].url, ())
    choice = choose(
        [Edge.from_health(e.region, e.url, e.health) for e in directory.edges],
        region_samples,
        prefer=prefer,
    )
    candidates = tuple((region, e.url) for region in choice.order for e in in_order[region])
    return Survey(directory, {url: list(s) for url, s in samples.items()}, choice, candidates)
