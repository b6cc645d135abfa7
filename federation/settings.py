"""What federation needs to know about its region, as plain values.

The relay owns the region config file (``relay.config``) and builds these from it, so federation
never imports the relay: the dependency runs one way, relay → federation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    #: Channels starting with it belong here; the longest matching prefix wins.
    prefix: str
    total_order: bool = False
    #: Retention of the namespace's streams (0: unlimited).
    max_age_s: float = 0.0
    max_messages: int = -1
    max_message_bytes: int = 65_536


@dataclass(frozen=True, slots=True)
class Peer:
    region: str
    nats_url: str
    #: Credentials on the peer's NATS ("": none); the password is read from the file at
    #: each connect.
    user: str = ""
    password_file: str = ""


@dataclass(frozen=True, slots=True)
class RegionSettings:
    region: str
    #: Every namespace of the region, one of them with prefix "" (the catch-all).
    namespaces: tuple[Namespace, ...]
    peers: tuple[Peer, ...] = ()
    connect_timeout_s: float = 5.0
    ack_wait_s: float = 10.0
    lease_ttl_s: float = 5.0
    max_buffered: int = 10_000
    duplicate_window_s: float = 120.0
    replicas: int = 1

    def __post_init__(self) -> None:
        if not any(ns.prefix == "" for ns in self.namespaces):
            raise ValueError("RegionSettings.namespaces needs a catch-all namespace (prefix '')")

    def namespace_for(self, channel: str) -> Namespace:
        best: Namespace | None = None
        for ns in self.namespaces:
            if channel.startswith(ns.prefix) and (
                best is None or len(ns.prefix) > len(best.prefix)
            ):
                best = ns
        assert best is not None  # the catch-all matches every channel
        return best

    @property
    def total_order_namespaces(self) -> frozenset[str]:
        return frozenset(ns.name for ns in self.namespaces if ns.total_order)
