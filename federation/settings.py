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
    #: Bytes each of the namespace's streams may hold (0: unlimited). Full means new
    #: appends are refused (JetStream DiscardNew), never that stored history is dropped.
    max_bytes: int = 0


@dataclass(frozen=True, slots=True)
class NatsConnectOptions:
    """How to reach one NATS (the region's own, or a peer's): where, as whom, over what.

    Files are named here, not read: ``federation.adapters.nats_client`` reads them when it
    makes a connection (``connect_with``; nats-py reads a seed or creds file again at each
    reconnect). At most one way to authenticate is set (the config schema checks that).
    """

    servers: tuple[str, ...]
    user: str = ""
    password_file: str = ""
    nkey_seed_file: str = ""
    #: A NATS decentralized-auth ``.creds`` file (user JWT and nkey seed).
    creds_file: str = ""
    #: CA certificates to trust ("": the system's); any TLS setting or a ``tls://`` URL
    #: makes TLS required on this connection, whatever the server offers.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: What the config file calls these fields, before their names: error messages name
    #: the field to fix (``"nats."``, ``"peers[0].nats_"``).
    config_prefix: str = ""

    @property
    def requires_tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file or self.tls_key_file) or any(
            url.startswith("tls://") for url in self.servers
        )

    @property
    def url(self) -> str:
        return ",".join(self.servers)


@dataclass(frozen=True, slots=True)
class Peer:
    region: str
    nats: NatsConnectOptions

    @property
    def nats_url(self) -> str:
        return self.nats.url


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
