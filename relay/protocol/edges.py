"""The edge directory document, ``GET /v1/edges`` (see relay/PROTOCOL.md), defined once.

The relay produces it with these Structs (``relay.adapters.directory``) and the
Python SDK decodes it with them (``relay.client.probing``); the browser client
(relay/web/client.js) reads the same JSON. A field a row does not have is left out
of the JSON (``UNSET``), so the document reads as it always has::

    {"region": "us-east", "relay": "us-east-1", "edges": [
      {"region": "us-east", "url": "ws://...", "health": "up", "relay": "us-east-1"},
      {"region": "eu-west", "url": "ws://...", "health": "down", "last_heartbeat_s_ago": 4.2},
      ...]}

The defaults are for reading: a relay always sends ``health`` and the document's
``relay``; an older one may not have.
"""

from __future__ import annotations

from typing import Final

import msgspec
from msgspec import UNSET, UnsetType


class Edge(msgspec.Struct, kw_only=True):
    """One row: an edge of ``region`` at ``url``, and that region's health."""

    region: str
    url: str
    health: str = "unknown"  # up, down or unknown; a str, so a newer relay's still decode
    relay: str | UnsetType = UNSET  # the relay's id, for rows of one relay (not a peer's edge)
    # A peer's public edge: seconds since its last beat, null if never heard from.
    last_heartbeat_s_ago: float | UnsetType | None = UNSET


class EdgesDocument(msgspec.Struct, kw_only=True):
    """Per region its public edge first, then every other relay of it that takes
    connections; the answering relay's own region first."""

    region: str  # the answering relay's region
    relay: str | None = None  # ... and its id
    edges: list[Edge]


_decoder: Final = msgspec.json.Decoder(EdgesDocument)


def decode_edges(body: bytes | str) -> EdgesDocument:
    """Raises ``msgspec.DecodeError`` (``ValidationError`` is one) for anything else."""
    return _decoder.decode(body)
