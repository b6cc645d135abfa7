"""Waiting for a relay's edge directory (GET /v1/edges) to list, or drop, other relays.

Relays beat their URL every second, so a relay learns of a sibling within a second or
two of its start: tests that need a redirect target or a failover edge wait here first.
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from relay.client.probing import fetch_directory
from relay.node import RelayNode
from tests.support.http import http_get_ok
from tests.support.relays import timeout


async def edges_of(node: RelayNode) -> dict[str, Any]:
    """The directory document of a relay in this event loop."""
    doc: dict[str, Any] = json.loads(await http_get_ok(node, "/v1/edges"))
    return doc


async def wait_listed(
    node: RelayNode,
    urls: set[str],
    seconds: float = 15,
    unlisted: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    """Until ``node``'s directory lists every URL of ``urls`` and none of ``unlisted``."""
    with anyio.fail_after(timeout(seconds)):
        while True:
            doc = await edges_of(node)
            listed = {edge["url"] for edge in doc["edges"]}
            if urls <= listed and not listed & unlisted:
                return doc
            await anyio.sleep(0.1)  # the next look; beats come every second


async def sibling_listed(url: str, sibling: str, seconds: float = 15) -> None:
    """Until the relay at ``url`` (any relay, a subprocess too) lists ``sibling``."""
    with anyio.fail_after(timeout(seconds)):
        while True:
            directory = await fetch_directory([url])
            if directory and sibling in {e.url for e in directory.edges}:
                return
            await anyio.sleep(0.1)  # the next look; beats come every second
