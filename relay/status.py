"""``relaynet status --seeds URLS``: regions, relays, connections, links as tables.

Reads only what every relay serves: the first seed that answers gives the
directory (``/v1/edges``: every region's health and relays); then every relay
listed there is asked for ``/v1/ready`` and ``/metrics``, all at once. With
``--watch`` the tables are redrawn in place (rich ``Live``) every interval, and
rates (msgs/s) are taken between two rounds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
from rich.console import Console
from rich.live import Live

from relay.client.endpoints import endpoint
from relay.client.http import http_get
from relay.status_view import RelaySnapshot, Snapshot, parse_metrics, render

TIMEOUT_S = 3.0


class NoDirectory(Exception):
    """No seed answered ``/v1/edges``."""


async def _get(url: str) -> tuple[int, bytes]:
    status, body, _ = await http_get(url, timeout_s=TIMEOUT_S)
    return status, body


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {TIMEOUT_S:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


async def directory(seeds: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(the seed that answered, its /v1/edges document)."""
    failures = []
    for seed in seeds:
        base = endpoint(seed).http_base
        try:
            status, body = await _get(base + "/v1/edges")
            if status != 200:
                raise ValueError(f"HTTP {status}")
            doc = json.loads(body)
            if not isinstance(doc, dict) or not isinstance(doc.get("edges"), list):
                raise ValueError("not a relay's /v1/edges")
            return seed, doc
        except (OSError, TimeoutError, ValueError, anyio.BrokenResourceError) as exc:
            failures.append(f"{seed}: {_why(exc)}")
    raise NoDirectory("no seed answered /v1/edges: " + "; ".join(failures))


async def _relay(url: str, region: str, relay: str) -> RelaySnapshot:
    base = endpoint(url).http_base
    try:
        ready_status, ready_body = await _get(base + "/v1/ready")
        _, metrics_body = await _get(base + "/metrics")
        ready = json.loads(ready_body) if ready_status in (200, 503) else None
        metrics = parse_metrics(metrics_body.decode())
    except (OSError, TimeoutError, ValueError, anyio.BrokenResourceError) as exc:
        return RelaySnapshot(url, None, None, error=_why(exc), listed_region=region,
                             listed_relay=relay)  # fmt: skip
    return RelaySnapshot(url, ready, ready_status, metrics, listed_region=region,
                         listed_relay=relay)  # fmt: skip


async def snapshot(seeds: Sequence[str]) -> Snapshot:
    seed, doc = await directory(seeds)
    health: dict[str, str] = {}
    listed: dict[str, tuple[str, str]] = {}  # url -> (region, relay id if given)
    for edge in doc["edges"]:
        region, url = str(edge.get("region", "?")), str(edge.get("url", ""))
        health.setdefault(region, str(edge.get("health", "unknown")))
        if url and (url not in listed or edge.get("relay")):
            listed[url] = (region, str(edge.get("relay") or ""))
    # A region's public edge (no relay id) is usually a load balancer before relays the
    # directory lists by id: asked only for a region with none listed.
    with_ids = {region for region, relay in listed.values() if relay}
    listed = {u: (g, r) for u, (g, r) in listed.items() if r or g not in with_ids}
    found: list[RelaySnapshot] = []

    async def read(url: str, region: str, relay: str) -> None:
        found.append(await _relay(url, region, relay))

    async with anyio.create_task_group() as tg:
        for url, (region, relay) in listed.items():
            tg.start_soon(read, url, region, relay)
    # A peer's public edge is often one of its relays listed by id too: show it once.
    unique: dict[tuple[str, str], RelaySnapshot] = {}
    for snap in sorted(found, key=lambda s: (s.error is not None, s.url)):
        key = (snap.region, snap.relay) if snap.error is None else (snap.region, snap.url)
        unique.setdefault(key, snap)
    return Snapshot(time.monotonic(), seed, health, tuple(unique.values()))


async def run_status(
    seeds: Sequence[str], watch: bool, interval_s: float, console: Console | None = None
) -> int:
    """Print the tables once (exit 1 if no seed answers), or redraw them until stopped."""
    # Piped into a file or a script, a table folded to 80 columns helps nobody.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    if not watch:
        try:
            snap = await snapshot(seeds)
        except NoDirectory as exc:
            console.print(f"relaynet status: {exc}", style="red", highlight=False)
            return 1
        console.print(render(snap))
        return 0
    previous: Snapshot | None = None
    with Live(console=console, auto_refresh=False, screen=False) as live:
        while True:
            try:
                snap = await snapshot(seeds)
            except NoDirectory as exc:
                live.update(f"[red]relaynet status: {exc}[/]", refresh=True)
            else:
                live.update(render(snap, previous), refresh=True)
                previous = snap
            await anyio.sleep(interval_s)
