"""Finding the network: fetch the edge directory from a seed, probe every edge's RTT.

Theory of operation
-------------------
``fetch_directory`` asks the sources (seeds, then every edge known so far) one
after another for ``GET /v1/edges`` and takes the first usable answer. The
relay that answered is itself an edge of the region it reports, so its URL is
kept as that region's last-resort edge even when the directory names another
(a load balancer). A source that answers ``/v1/edges`` with an error is asked
``GET /v1/ping``: a relay answers ``pong`` (an older relay without a
directory: it becomes a pseudo-region named by its URL, used only when no
source has a directory); anything else is *not a relay* and is never
connected to. Every source that gave nothing has its reason recorded
(``failures``: "connection refused", "timed out after 2 s", "HTTP 404: not a
relay", "bad JSON in /v1/edges: ..."), which ``connect(timeout=...)`` reports.

``probe`` times ``count`` GETs of ``/v1/ping`` at once (each on its own
connection, each bounded by ``timeout_s``); ``survey`` is fetch + probe every
edge + ``directory.plan``.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

import anyio
import msgspec

from relay.client.directory import (
    Dial,
    Directory,
    DirectoryEdge,
    Survey,
    health_of,
    plan,
    same_url,
)
from relay.client.endpoints import EDGES_PATH, PING_PATH, endpoint
from relay.client.http import HttpError, http_get
from relay.protocol.edges import decode_edges

log = logging.getLogger("relaynet.client")

# What a GET or a WebSocket open raises when the other end is not there or misbehaves.
NETWORK_ERRORS: Final = (OSError, TimeoutError, anyio.BrokenResourceError, HttpError)


def describe_failure(exc: BaseException, timeout_s: float | None = None) -> str:
    """A short reason for a failed request or connection attempt, for people."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s" if timeout_s is not None else "timed out"
    causes: list[BaseException] = [exc]
    if exc.__cause__ is not None:
        causes.append(exc.__cause__)
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host name: {cause.strerror or cause}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, anyio.BrokenResourceError | ConnectionResetError):
        return "connection reset"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text if text else type(exc).__name__


async def _get(
    url: str, *, timeout_s: float, dial: Dial, ssl_context: ssl.SSLContext | None
) -> tuple[int, bytes, float]:
    """GET a relay's ``url`` through ``dial``; with https, its certificate is checked
    against the relay's own host name, wherever ``dial`` sends the request."""
    return await http_get(
        dial(url),
        timeout_s=timeout_s,
        ssl_context=ssl_context,
        server_hostname=urlsplit(url).hostname,
    )


async def fetch_directory(
    sources: Sequence[str],
    *,
    timeout_s: float = 2.0,
    dial: Dial = same_url,
    failures: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Directory | None:
    """The edge directory of the first source that serves one.

    When none does but some are relays without /v1/edges (they answer /v1/ping
    with ``pong``), those become the directory, each its own pseudo-region
    named by its URL. None when no relay answered. ``failures``, if given,
    receives source URL -> why it gave no directory.
    """
    failed: dict[str, str] = {} if failures is None else failures
    old_relays: list[str] = []
    for source in sources:
        base = endpoint(source)
        try:
            status, body, _ = await _get(
                base.http_base + EDGES_PATH, timeout_s=timeout_s, dial=dial, ssl_context=ssl_context
            )
        except NETWORK_ERRORS as exc:
            failed[base.ws_url] = describe_failure(exc, timeout_s)
            log.debug("directory from %s: %s", base.http_base, failed[base.ws_url])
            continue
        if status != 200:
            if await _is_relay(
                base.http_base, timeout_s=timeout_s, dial=dial, ssl_context=ssl_context
            ):
                log.debug("directory from %s: HTTP %d, a relay without one", base.http_base, status)
                old_relays.append(base.ws_url)
            else:
                failed[base.ws_url] = f"HTTP {status}: not a relay"
                log.debug("directory from %s: %s", base.http_base, failed[base.ws_url])
            continue
        try:
            doc = decode_edges(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            failed[base.ws_url] = f"bad JSON in {EDGES_PATH}: {exc}"
            log.warning("directory from %s is not usable: %s", base.http_base, exc)
            continue
        edges: list[DirectoryEdge] = []
        for item in doc.edges:
            try:
                url = endpoint(item.url).ws_url
            except ValueError:
                log.warning("directory from %s: bad edge URL %r", base.http_base, item.url)
                continue
            edges.append(DirectoryEdge(item.region, url, health_of(item.health)))
        if not any(e.url == base.ws_url for e in edges):
            # The relay that answered is an edge of its own region, whatever the directory
            # lists for it: keep it as that region's last resort.
            own = [e.health for e in edges if e.region == doc.region]
            edges.append(DirectoryEdge(doc.region, base.ws_url, own[0] if own else "up"))
        failed.pop(base.ws_url, None)
        return Directory(base.ws_url, doc.region, doc.relay, tuple(edges))
    if not old_relays:
        return None
    unique = list(dict.fromkeys(old_relays))
    return Directory("seeds", None, None, tuple(DirectoryEdge(u, u, "unknown") for u in unique))


async def _is_relay(
    http_base: str, *, timeout_s: float, dial: Dial, ssl_context: ssl.SSLContext | None
) -> bool:
    """Whether ``http_base`` answers ``GET /v1/ping`` like a relay (200 ``pong``)."""
    try:
        status, body, _ = await _get(
            http_base + PING_PATH, timeout_s=timeout_s, dial=dial, ssl_context=ssl_context
        )
    except NETWORK_ERRORS:
        return False
    return status == 200 and body.strip() == b"pong"


async def probe(
    url: str,
    count: int,
    *,
    timeout_s: float = 2.0,
    dial: Dial = same_url,
    ssl_context: ssl.SSLContext | None = None,
) -> list[float | None]:
    """``count`` RTT samples in ms to the relay of ``url`` (None for a failed probe). Any
    HTTP answer below 500 is a sample, so relays without /v1/ping can be measured too.

    The probes run at the same time, each on its own connection: connecting then
    waits one round trip to the farthest edge, not ``count`` of them.
    """
    target = endpoint(url).http_base + PING_PATH
    samples: list[float | None] = [None] * count

    async def one(i: int) -> None:
        try:
            status, _, elapsed = await _get(
                target, timeout_s=timeout_s, dial=dial, ssl_context=ssl_context
            )
        except NETWORK_ERRORS:
            return
        samples[i] = elapsed * 1000.0 if status < 500 else None

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
    return samples


async def probe_all(
    urls: Sequence[str],
    count: int,
    *,
    timeout_s: float = 2.0,
    dial: Dial = same_url,
    ssl_context: ssl.SSLContext | None = None,
) -> dict[str, list[float | None]]:
    """Probe every URL, all at once."""
    results: dict[str, list[float | None]] = {}

    async def one(url: str) -> None:
        results[url] = await probe(
            url, count, timeout_s=timeout_s, dial=dial, ssl_context=ssl_context
        )

    async with anyio.create_task_group() as tg:
        for url in dict.fromkeys(urls):
            tg.start_soon(one, url)
    return results


async def survey(
    sources: Sequence[str],
    *,
    probes: int = 3,
    timeout_s: float = 2.0,
    dial: Dial = same_url,
    prefer: str | None = None,
    failures: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Survey | None:
    """Fetch the directory from the first source that answers, probe every edge, plan.

    URLs stay the relays' own everywhere (directory, choice, candidates); ``dial``
    is applied only where a request is sent. ``failures`` as for ``fetch_directory``.
    ``ssl_context`` verifies https relays (default: the system's CAs).
    """
    failed: dict[str, str] = {} if failures is None else failures
    directory = await fetch_directory(
        sources, timeout_s=timeout_s, dial=dial, failures=failed, ssl_context=ssl_context
    )
    if directory is None:
        return None
    samples = await probe_all(
        [e.url for e in directory.edges],
        probes,
        timeout_s=timeout_s,
        dial=dial,
        ssl_context=ssl_context,
    )
    result = plan(directory, samples, prefer=prefer)
    return Survey(result.directory, result.samples, result.choice, result.candidates, dict(failed))
