"""The edge directory served at ``GET /v1/edges``: every region's edges and health.

Two kinds of beat (``federation.logformat.Beat``) arrive on ``rlyh.v1.<region>``
(core NATS, every second, on each region's own NATS; the instance serving the
link to a peer forwards that peer's beats onto this region's NATS):

* federation beats (``region``, ``t``) say a region is alive;
* relay beats (also ``relay``, ``url``, ``state``) also say which relay is
  reachable where and whether it takes connections (``up``), is at its
  connection limit (``full``) or is shutting down (``draining``).

A payload that is not a beat is ignored (logged at debug level, throttled):
it says nothing, not even that its region is alive.

A region heard from within ``DOWN_AFTER_S`` is up; one heard from before but
not since is down (its beats stopped, or the link to it is cut); one never
heard from is unknown. This region is up while this relay answers and reaches
its NATS and JetStream. A relay
not heard from within ``DOWN_AFTER_S`` is left out.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from federation import logformat
from federation.logformat import BadBeat, Beat
from federation.throttled_log import ThrottledLog
from relay.config.schema import RelayConfig
from relay.core.redirect import KnownRelay, RelayState, redirect_target
from relay.protocol.edges import Edge, EdgesDocument

log = logging.getLogger("relaynet.directory")
_bad_beats = ThrottledLog(log)

HEARTBEAT_SUBJECTS = "rlyh.v1.*"  # federation.logformat.heartbeat_subject(<any region>)
DOWN_AFTER_S = 3.5
BEAT_INTERVAL_S = 1.0
# Beats come from our own NATS, but a peer's beats are forwarded as they are: bound
# what one peer can make this relay remember (and a beat's size: logformat.MAX_BEAT_BYTES).
MAX_RELAYS_PER_REGION = 256


@dataclass
class _Heard:
    relay: KnownRelay
    at: float


def _known_relay(beat: Beat, region: str) -> KnownRelay | None:
    """The relay a beat describes, if it names one clients can reach (a WebSocket URL
    with a host); None for a federation beat."""
    if beat.relay is None or beat.url is None:
        return None
    parts = urlsplit(beat.url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return None
    return KnownRelay(region, beat.relay, beat.url, beat.state or "up")


def _relay_beat(payload: bytes, region: str) -> KnownRelay | None:
    """The relay a beat payload describes, or None (a federation beat, or not a beat)."""
    try:
        return _known_relay(logformat.decode_beat(payload), region)
    except BadBeat:
        return None


class EdgeDirectory:
    def __init__(
        self,
        cfg: RelayConfig,
        own_url: str | None = None,
        state: Callable[[], RelayState] = lambda: "up",
        available: Callable[[], bool] = lambda: True,
    ) -> None:
        self.cfg = cfg
        # False while this relay cannot reach its NATS/JetStream: its own row says "down".
        self._available = available
        # The URL this relay is reachable at (the bound port when the config said 0).
        self.own_url = own_url or cfg.relay.effective_public_url
        self._state = state
        self._last_seen: dict[str, float] = {}
        self._relays: dict[str, dict[str, _Heard]] = {}
        self._sub: Subscription | None = None
        self._nc: NatsClient | None = None

    async def start(self, nc: NatsClient) -> None:
        self._nc = nc

        async def heard(msg: Msg) -> None:
            region = msg.subject.rsplit(".", 1)[-1]
            try:
                beat = logformat.decode_beat(msg.data)
            except BadBeat as exc:
                _bad_beats.log(
                    logging.DEBUG, region, "ignoring a malformed beat on %s: %s", msg.subject, exc
                )
                return
            now = time.monotonic()
            self._last_seen[region] = now
            relay = _known_relay(beat, region)
            if relay is None or relay.relay == self.cfg.relay.id:
                return
            known = self._relays.setdefault(region, {})
            if relay.relay not in known and len(known) >= MAX_RELAYS_PER_REGION:
                self._forget_silent(known, now)
                if len(known) >= MAX_RELAYS_PER_REGION:
                    return
            known[relay.relay] = _Heard(relay, now)

        self._sub = await nc.subscribe(HEARTBEAT_SUBJECTS, cb=heard)

    async def run(self) -> None:
        """Beat every second; a change of state (draining, full) goes out at once."""
        while True:
            await self.beat()
            await anyio.sleep(BEAT_INTERVAL_S)

    async def beat(self) -> None:
        if self._nc is None:
            return
        beat = Beat(
            region=self.cfg.region.name,
            relay=self.cfg.relay.id,
            url=self.own_url,
            state=self._state(),
            t=time.time(),
        )
        with contextlib.suppress(Exception):  # NATS away: silence is the signal
            await self._nc.publish(
                logformat.heartbeat_subject(self.cfg.region.name), logformat.encode_beat(beat)
            )

    @staticmethod
    def _forget_silent(known: dict[str, _Heard], now: float) -> None:
        for relay_id in [k for k, h in known.items() if now - h.at > DOWN_AFTER_S]:
            del known[relay_id]

    def health(self, region: str, now: float | None = None) -> str:
        if region == self.cfg.region.name:
            return "up" if self._available() else "down"
        seen = self._last_seen.get(region)
        if seen is None:
            return "unknown"
        now = time.monotonic() if now is None else now
        return "up" if now - seen <= DOWN_AFTER_S else "down"

    def relays(self, now: float | None = None) -> list[KnownRelay]:
        """Relays (other than this one) heard from recently, by region then relay id."""
        now = time.monotonic() if now is None else now
        heard = [
            h.relay
            for known in self._relays.values()
            for h in known.values()
            if now - h.at <= DOWN_AFTER_S
        ]
        return sorted(heard, key=lambda r: (r.region, r.relay))

    def redirect(self, spread: int) -> KnownRelay | None:
        """Where to send a client this relay will not keep: a sibling, if any."""
        return redirect_target(self.cfg.region.name, self.cfg.relay.id, self.relays(), spread)

    def edges(self) -> dict[str, Any]:
        """The ``GET /v1/edges`` document (``relay.protocol.edges``), as JSON-ready values:
        per region its public edge first (this relay, or the peer's configured
        ``edge_url``), then every other relay of it that takes connections."""
        now = time.monotonic()
        own = self.cfg.region.name
        relays = self.relays(now)
        own_health = self.health(own, now)
        rows = [Edge(region=own, url=self.own_url, health=own_health, relay=self.cfg.relay.id)]
        rows += self._relay_rows(own, relays, {self.own_url}, own_health)
        for peer in self.cfg.peers:
            seen = self._last_seen.get(peer.region)
            health = self.health(peer.region, now)
            rows.append(
                Edge(
                    region=peer.region,
                    url=peer.edge_url,
                    health=health,
                    last_heartbeat_s_ago=None if seen is None else round(now - seen, 3),
                )
            )
            rows += self._relay_rows(peer.region, relays, {peer.edge_url}, health)
        doc = EdgesDocument(region=own, relay=self.cfg.relay.id, edges=rows)
        builtins: dict[str, Any] = msgspec.to_builtins(doc)  # fields left out stay out
        return builtins

    @staticmethod
    def _relay_rows(
        region: str, relays: list[KnownRelay], listed: set[str], health: str
    ) -> list[Edge]:
        return [
            Edge(region=region, url=r.url, health=health, relay=r.relay)
            for r in relays
            if r.region == region and r.state == "up" and r.url not in listed
        ]
