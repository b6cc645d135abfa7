"""A relay's URLs: its WebSocket endpoint and HTTP base from any URL of it, without I/O.

A seed, a directory entry or a redirect may name a relay as ws://, wss://,
http:// or https://, with or without the ``/v1/...`` path. ``endpoint()``
normalizes all of them, so that two spellings of one relay compare equal
(by ``http_base``) and the SDK opens ``ws_url`` and GETs ``http_base + path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

WS_PATH: Final = "/v1/ws"
EDGES_PATH: Final = "/v1/edges"
PING_PATH: Final = "/v1/ping"


@dataclass(frozen=True)
class Endpoint:
    ws_url: str
    """ws(s)://host:port[/prefix]/v1/ws"""
    http_base: str
    """http(s)://host:port[/prefix]"""


def endpoint(url: str) -> Endpoint:
    """A relay's WebSocket URL and HTTP base from any of its URLs (ws, wss, http, https).
    Raises ``ValueError`` for anything else."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not a ws://, wss://, http:// or https:// URL of a relay")
    secure = scheme in ("wss", "https")
    path = parts.path.rstrip("/")
    for suffix in (WS_PATH, EDGES_PATH, PING_PATH):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return Endpoint(
        urlunsplit(("wss" if secure else "ws", parts.netloc, path + WS_PATH, "", "")),
        urlunsplit(("https" if secure else "http", parts.netloc, path, "", "")),
    )


def is_secure(url: str) -> bool:
    """Whether a relay URL is TLS (wss:// or https://)."""
    return urlsplit(url.strip()).scheme.lower() in ("wss", "https")


def relay_ws_url(url: str) -> str:
    """The WebSocket URL of a relay from any of its URLs (ws, wss, http, https; with or
    without the /v1/... path). Raises ``ValueError`` for anything else."""
    return endpoint(url).ws_url


def with_token(url: str, token: str | None) -> str:
    """``url`` with the ``token`` query parameter (for the relay's auth hook), if any."""
    if token is None:
        return url
    return f"{url}{'&' if '?' in url else '?'}token={quote(token, safe='')}"
