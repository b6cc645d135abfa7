"""Routing: which region's edge to connect to, and in which order to fail over.

Theory of operation
-------------------
Two sources of evidence are combined:

* the edge directory (``/v1/edges``): per region an edge URL and the health the
  network itself reports (up / down / unknown);
* RTT probes the client made itself: several per region, a failed probe being
  ``None``.

A region's distance is the *median* of its successful probes: one slow probe
(a retransmit, a cold DNS cache) must not send a client across an ocean. The
failover order puts first the regions the client can actually use, nearest
first, and keeps the others as a last resort rather than dropping them, since
the directory may be stale and a region that answers is better than none:

1. healthy and reachable, by median RTT;
2. healthy but not probed (no evidence either way), by name;
3. healthy but every probe failed (the directory may not know yet), by name;
4. down according to the directory: reachable ones by median RTT, then
   unprobed, then unreachable.

Ties are broken by region name so that every client given the same evidence
makes the same choice. Every region gets a one-line reason that quotes the
numbers, for logs and ``status`` output.

A caller may name one region to *prefer* (an application that keeps its users
in a home region, or a demo on one machine where every region is equally
near): it goes first whenever it is healthy and not unreachable by the
client's own probes (groups 1 and 2 above), and the other regions keep their
order behind it. Preferring is not pinning: when the preferred region fails,
the client fails over exactly as without it.

Moving back to a nearer (or the preferred) region once it recovers is a
separate decision (``should_move_back``): a failover is forced, a move back is
optional and happens only at a safe point the caller chooses.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Health = Literal["up", "down", "unknown"]
MoveBackPolicy = Literal["stay", "when-idle", "immediately"]

# Probe noise of a few ms must not bounce a client between two regions that are about as close.
DEFAULT_MIN_GAIN_MS = 5.0


@dataclass(frozen=True)
class Edge:
    region: str
    url: str
    healthy: bool

    @classmethod
    def from_health(cls, region: str, url: str, health: Health) -> Edge:
        """``unknown`` counts as healthy: no evidence it is down, and the probes will tell."""
        if health not in ("up", "down", "unknown"):
            raise ValueError(f"health must be 'up', 'down' or 'unknown', not {health!r}")
        return cls(region, url, health != "down")


@dataclass(frozen=True)
class Choice:
    order: tuple[str, ...]
    """Every region of the directory, the one to connect to first."""
    rtt_ms: dict[str, float | None]
    """Median RTT of the successful probes; None when none succeeded or none was made."""
    reasons: dict[str, str]
    healthy: frozenset[str] = frozenset()
    """Regions the directory reports up (or unknown)."""
    prefer: str | None = None
    """The region ``choose`` was asked to prefer (first in ``order`` only while usable)."""

    @property
    def nearest(self) -> str | None:
        return self.order[0] if self.order else None

    def preferred(self, region: str) -> bool:
        """Healthy and reachable: a region worth moving to."""
        return region in self.healthy and self.rtt_ms.get(region) is not None


def choose(
    edges: Sequence[Edge],
    samples: Mapping[str, Sequence[float | None]],
    *,
    prefer: str | None = None,
) -> Choice:
    """Order the directory's regions for connecting and failing over.

    A region listed by several edges is healthy when any of them is. Samples of
    regions that are not in the directory are ignored: there is nowhere to connect.
    ``prefer`` goes first while it is healthy and not unreachable by the probes.
    """
    healthy: set[str] = set()
    regions: list[str] = []
    for edge in edges:
        if edge.region not in regions:
            regions.append(edge.region)
        if edge.healthy:
            healthy.add(edge.region)

    rtt: dict[str, float | None] = {}
    probes: dict[str, tuple[int, int]] = {}  # region -> (successful, total)
    for region in regions:
        taken = list(samples.get(region, ()))
        ok = [_checked(region, s) for s in taken if s is not None]
        rtt[region] = statistics.median(ok) if ok else None
        probes[region] = (len(ok), len(taken))

    def rank(region: str) -> tuple[int, float, str]:
        median = rtt[region]
        probed = probes[region][1] > 0
        # Group first, then RTT (0 when there is none, so the name decides), then name.
        if median is not None:
            group = 0 if region in healthy else 3
        elif not probed:
            group = 1 if region in healthy else 4
        else:
            group = 2 if region in healthy else 5
        if region == prefer and group <= 1:
            group = -1  # usable, or no evidence that it is not
        return group, median if median is not None else 0.0, region

    order = tuple(sorted(regions, key=rank))
    leads = bool(order) and rank(order[0])[0] < 0  # the preferred region is first
    reasons = {
        region: _preferred_reason(rtt[region], probes[region])
        if leads and i == 0
        else _reason(region, rtt[region], probes[region], region in healthy, i == 0)
        for i, region in enumerate(order)
    }
    return Choice(order, rtt, reasons, frozenset(healthy), prefer)


def should_move_back(
    current: str,
    choice: Choice,
    *,
    policy: MoveBackPolicy = "stay",
    idle: bool,
    min_gain_ms: float = DEFAULT_MIN_GAIN_MS,
) -> bool:
    """Whether to leave ``current`` for the nearest region now, at a safe point.

    ``stay`` never moves (a working connection is worth more than a few ms);
    ``when-idle`` moves only when the caller says nothing is in flight;
    ``immediately`` moves at the first safe point. In every case the target must
    be healthy and reachable and, when ``current`` is itself usable, nearer by
    more than ``min_gain_ms``, unless it is the region the choice was told to
    prefer (it is first for that reason, not for its RTT).
    """
    if policy == "stay":
        return False
    if policy == "when-idle" and not idle:
        return False
    if policy not in ("when-idle", "immediately"):
        raise ValueError(f"unknown move-back policy {policy!r}")
    target = choice.nearest
    if target is None or target == current or not choice.preferred(target):
        return False
    if not choice.preferred(current):
        return True  # current is down or unreachable by our own probes: anything usable is better
    if choice.prefer is not None and target == choice.prefer:
        return True  # back to the preferred region
    target_rtt = choice.rtt_ms[target]
    current_rtt = choice.rtt_ms[current]
    assert target_rtt is not None and current_rtt is not None  # both preferred
    return current_rtt - target_rtt > min_gain_ms


def _checked(region: str, sample: float) -> float:
    # A NaN would make the sort order depend on the input order: refuse it where it comes from.
    if not (math.isfinite(sample) and sample >= 0):
        raise ValueError(f"RTT sample for {region} must be a finite number >= 0, not {sample!r}")
    return float(sample)


def _probes_text(median: float | None, probes: tuple[int, int]) -> str:
    ok, total = probes
    failed = total - ok
    if median is not None:
        over = f"median {median:.1f} ms over {ok} probes"
        if failed:
            over += f" ({failed} of {total} failed)"
        return over
    return f"all {total} probes failed" if total else "not probed"


def _preferred_reason(median: float | None, probes: tuple[int, int]) -> str:
    # A preferred region is first only when healthy and not unreachable: measured, or unprobed.
    if median is None:
        return "preferred region: healthy according to the directory, not probed"
    return f"preferred region: {_probes_text(median, probes)}"


def _reason(
    region: str, median: float | None, probes: tuple[int, int], healthy: bool, first: bool
) -> str:
    total = probes[1]
    over = _probes_text(median, probes)
    if not healthy:
        return f"down according to the directory; {over}"
    if median is None:
        if total:
            return f"unreachable: {over} (the directory says healthy)"
        return "healthy according to the directory, not probed"
    if first:
        return f"nearest healthy: {over}"
    return f"healthy: {over}"
