"""What a simulated network looks like: regions and the latency of every link. Pure.

``--latency 80ms`` gives every link the same one-way latency; a latency matrix
file gives each directed link its own::

    #          us-east  eu-west  ap-south
    us-east    0        80       200
    eu-west    80       0        150
    ap-south   200      150      0

(row = from, column = to; the diagonal must be 0; values in ms, ``80ms`` and
``0.08s`` work too). Every error names what is wrong and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_REGION_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s)?")
MAX_LATENCY_MS = 60_000.0


class SpecError(ValueError):
    """A one-line explanation of a bad simulation spec."""


@dataclass(frozen=True)
class NetworkSpec:
    regions: tuple[str, ...]
    # (from, to) -> one-way latency in ms, for every ordered pair of distinct regions
    latency_ms: dict[tuple[str, str], float]

    def link_latency(self, a: str, b: str) -> float:
        return self.latency_ms[(a, b)]


def parse_regions(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if len(names) < 2:
        raise SpecError(f"--regions needs at least two names, e.g. us-east,eu-west (got {text!r})")
    for name in names:
        if not _REGION_RE.fullmatch(name):
            raise SpecError(
                f"region name {name!r}: use 1-32 lowercase letters, digits and '-', "
                "starting with a letter (e.g. us-east)"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"region {duplicates[0]!r} is listed twice in --regions")
    return names


def parse_duration_ms(text: str, what: str = "latency") -> float:
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise SpecError(f"{what} {text!r}: expected a duration like 80ms, 0.08s or 80")
    value = float(match.group(1))
    ms = value * 1000 if match.group(2) == "s" else value
    if ms > MAX_LATENCY_MS:
        raise SpecError(f"{what} {text!r}: at most {MAX_LATENCY_MS / 1000:g} s")
    return ms


def uniform(regions: Sequence[str], latency_ms: float) -> NetworkSpec:
    return NetworkSpec(
        tuple(regions),
        {(a, b): latency_ms for a in regions for b in regions if a != b},
    )


def parse_matrix(text: str, source: str = "latency matrix") -> NetworkSpec:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise SpecError(f"{source}: empty; the first line names the regions (columns)")
    header = lines[0].lstrip("#").split()
    regions = parse_regions(",".join(header))
    rows = [line.split() for line in lines[1:]]
    if len(rows) != len(regions):
        raise SpecError(
            f"{source}: not square: {len(regions)} regions in the header but {len(rows)} rows"
        )
    latency: dict[tuple[str, str], float] = {}
    for i, row in enumerate(rows):
        name, cells = row[0], row[1:]
        if name != regions[i]:
            raise SpecError(
                f"{source}: row {i + 1} is {name!r}; rows must follow the header order "
                f"({', '.join(regions)})"
            )
        if len(cells) != len(regions):
            raise SpecError(
                f"{source}: not square: row {name!r} has {len(cells)} values, "
                f"expected {len(regions)}"
            )
        for j, cell in enumerate(cells):
            if cell.startswith("-"):
                raise SpecError(f"{source}: {name} -> {regions[j]} is negative ({cell})")
            ms = parse_duration_ms(cell, f"{source}: {name} -> {regions[j]}")
            if i == j:
                if ms != 0:
                    raise SpecError(f"{source}: the diagonal ({name} -> {name}) must be 0")
                continue
            latency[(name, regions[j])] = ms
    return NetworkSpec(regions, latency)
