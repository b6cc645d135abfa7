"""Waiting for a relay's edge directory (GET /v1/edges) to list, or drop, other relays.

Relays beat their URL every second, so a relay learns of a sibling within a second or
two of its start: tests that need a redirect target or a failover edge wait here first.
"""

from __future__ import annotations

import json
from typing import Any

from relay.client.probing import fetch_directory
from relay.node import RelayNode
from tests.support.http import http_get_ok
from tests.support.waiting import wait_until

POLL_S = 0.1  # the next look; beats come every second


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
    docs: list[dict[str, Any]] = []

    async def listed() -> bool:
        docs[:] = [await edges_of(node)]
        urls_listed = {edge["url"] for edge in docs[-1]["edges"]}
        return urls <= urls_listed and not urls_listed & unlisted

    await wait_until(
        listed, f"{node.url} lists {urls} and none of {set(unlisted)}", seconds, poll_s=POLL_S
    )
    return docs[-1]


async def sibling_listed(url: str, sibling: str, seconds: float = 15) -> None:
    """Until the relay at ``url`` (any relay, a subprocess too) lists ``sibling``."""

    async def listed() -> bool:
        directory = await fetch_directory([url])
        return directory is not None and sibling in {e.url for e in directory.edges}

    await wait_until(listed, f"{url} lists {sibling}", seconds, poll_s=POLL_S)
