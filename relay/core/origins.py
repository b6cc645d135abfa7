"""Which browser origins may open a connection to this relay (``[relay] allowed_origins``).

Pure: the edge hands in the request's ``Origin`` header and gets a yes or no.

A browser sends ``Origin`` with every WebSocket upgrade, and a page cannot forge
it; other clients (the Python SDK, websocat, servers) usually send none. A
request without ``Origin`` is always let through: it does not come from a page
running in someone's browser, which is all the check can tell apart (a program
can send any header it likes, so this is not authentication; tokens are).

Patterns, as written in the config:

* ``*``: any origin (the default: the relay's demo page and pages of other
  regions' relays connect cross-origin);
* an exact origin, ``https://app.example.com`` or ``http://localhost:8080``:
  scheme (http or https), host and port, nothing after them; the default port
  may be left out;
* ``https://*.example.com``: any subdomain of ``example.com``, at any depth,
  with that scheme and port; not ``example.com`` itself (list it as well);
* ``null``: the opaque origin of ``file://`` pages and sandboxed frames, only
  when listed.

Scheme and host compare case-insensitively, and an explicit default port equals
none (``https://a.example:443`` is ``https://a.example``). An ``Origin`` that is
not a well-formed origin (a path, user info, odd characters in the host) matches
nothing but ``*``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

ANY: Final = "*"
NULL_ORIGIN: Final = "null"
DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# DNS names (letters, digits, '-', dots between labels) or an IPv6 literal: anything else
# in a host (a backslash, '%', '_') is no origin a browser sends, and could trick a suffix match.
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.?")
_IPV6 = re.compile(r"[0-9a-f:.]+")
WILDCARD_PREFIX: Final = "*."
PATTERN_SYNTAX: Final = (
    "'*', 'null', an origin such as 'https://app.example.com' or 'http://localhost:8080' "
    "(http or https, host, optional port, nothing after it), or 'https://*.example.com' "
    "for its subdomains"
)


@dataclass(frozen=True)
class Origin:
    """A parsed ``scheme://host:port``, lowercased, with the port always present."""

    scheme: str
    host: str
    port: int


def parse_origin(text: str) -> Origin | None:
    """The origin ``text`` names, or None if it is not a well-formed http(s) origin."""
    if not text.isascii() or text != text.strip():
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    default = DEFAULT_PORTS.get(scheme)
    if default is None or not text[len(scheme) :].startswith("://"):
        return None
    if parts.path or parts.query or parts.fragment or "?" in text or "#" in text:
        return None
    if "@" in parts.netloc or not parts.hostname:
        return None
    host = parts.hostname  # lowercased, IPv6 without its brackets
    if ":" in host:
        if not _IPV6.fullmatch(host):
            return None
    elif not _HOST.fullmatch(host):
        return None
    return Origin(scheme, host.rstrip("."), default if port is None else port)


@dataclass(frozen=True)
class OriginPattern:
    """One entry of ``allowed_origins`` other than ``*`` and ``null``."""

    origin: Origin
    wildcard: bool
    """``origin.host`` is a suffix: any subdomain of it matches."""

    def matches(self, origin: Origin) -> bool:
        mine = self.origin
        if origin.scheme != mine.scheme or origin.port != mine.port:
            return False
        if not self.wildcard:
            return origin.host == mine.host
        return origin.host.endswith("." + mine.host)


def parse_pattern(text: str) -> OriginPattern | str:
    """``ANY``, ``NULL_ORIGIN`` or an ``OriginPattern``; ``ValueError`` saying what is
    expected for anything else."""
    if text in (ANY, NULL_ORIGIN):
        return text
    wildcard = False
    candidate = text
    scheme, sep, rest = text.partition("://")
    if sep and rest.startswith(WILDCARD_PREFIX):
        wildcard = True
        candidate = f"{scheme}://{rest[len(WILDCARD_PREFIX) :]}"
    origin = parse_origin(candidate)
    if origin is None or "*" in candidate:
        raise ValueError(f"{text!r} is not an origin pattern ({PATTERN_SYNTAX})")
    if wildcard and ":" in origin.host:
        raise ValueError(f"{text!r}: a wildcard needs a domain name, not an IP address")
    return OriginPattern(origin, wildcard)


class OriginPolicy:
    """``allowed_origins`` made ready to answer ``allows()`` per request."""

    def __init__(self, patterns: Iterable[str]) -> None:
        """Raises ``ValueError`` for a malformed pattern (``parse_pattern``)."""
        self.any = False
        self.null = False
        self._exact: set[Origin] = set()
        self._wildcards: list[OriginPattern] = []
        for text in patterns:
            parsed = parse_pattern(text)
            if parsed == ANY:
                self.any = True
            elif parsed == NULL_ORIGIN:
                self.null = True
            elif isinstance(parsed, OriginPattern):
                if parsed.wildcard:
                    self._wildcards.append(parsed)
                else:
                    self._exact.add(parsed.origin)

    def allows(self, origin: str | None) -> bool:
        """Whether a request with this ``Origin`` header (None: none sent) may connect."""
        if origin is None or self.any:
            return True
        if origin == NULL_ORIGIN:
            return self.null
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        return parsed in self._exact or any(w.matches(parsed) for w in self._wildcards)
