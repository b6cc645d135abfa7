"""Schema of a relaynet region config file (TOML), as pydantic v2 models.

Pure data: no I/O here. ``relay.config.loader`` reads the file, applies ``RELAYNET_*`` environment
overrides and turns validation errors into readable ``ConfigError`` issues.

All models are strict (TOML already has types, so ``port = "8701"`` is an error rather than a
silent coercion), reject unknown keys, and are frozen (hashable, safe to share across tasks).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from federation.settings import Namespace, NatsConnectOptions, Peer, RegionSettings
from relay.core.origins import PATTERN_SYNTAX as ORIGIN_PATTERN_SYNTAX
from relay.core.origins import parse_pattern

__all__ = [
    "CROSS_FIELD_ERROR_TYPE",
    "DEFAULT_NAMESPACE",
    "DEFAULT_NAMESPACE_MAX_BYTES",
    "DEFAULT_NAMESPACE_NAME",
    "DEFAULT_STORE_BUDGET_BYTES",
    "FIELD_ERROR_TYPE",
    "FRAME_OVERHEAD_BYTES",
    "MIN_STREAM_BYTES",
    "PATTERN_DESCRIPTIONS",
    "AuthSection",
    "FederationSection",
    "HookSection",
    "LimitsSection",
    "NamespaceRule",
    "NatsSection",
    "PeerSection",
    "RegionSection",
    "RelayConfig",
    "RelaySection",
]

REGION_NAME_PATTERN = r"^[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?$"
RELAY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
NAMESPACE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
NAMESPACE_PREFIX_PATTERN = r"^[A-Za-z0-9_\-:@/=+!~.,]{0,100}$"
HOOK_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"

#: Human-readable text for each pattern, used in error messages and the config reference.
PATTERN_DESCRIPTIONS: dict[str, str] = {
    REGION_NAME_PATTERN: (
        "a region name: 1-32 lowercase letters, digits or '-', starting with a letter "
        "and not ending with '-'"
    ),
    RELAY_ID_PATTERN: (
        "a relay id: 1-64 letters, digits, '_' or '-', starting with a letter or digit"
    ),
    NAMESPACE_NAME_PATTERN: (
        "a namespace name: 1-32 lowercase letters, digits or '_', starting with a letter"
    ),
    HOOK_NAME_PATTERN: (
        "a hook name: 1-32 lowercase letters, digits, '_' or '-', starting with a letter"
    ),
    NAMESPACE_PREFIX_PATTERN: (
        'a channel prefix: "" or up to 100 letters, digits and characters from "_-:@/=+!~.,"'
    ),
}

#: Error ``type`` of custom field errors; their ``msg`` is the readable "expected" text.
FIELD_ERROR_TYPE = "relaynet_field"
#: Error ``type`` of ``RelayConfig``'s cross-field check. Its ``ctx["problems"]`` is a tuple of
#: ``(field_path, value, expected)`` triples, e.g. ``("namespaces[1].prefix", "chat:", "...")``.
CROSS_FIELD_ERROR_TYPE = "relaynet_cross_field"

#: Bytes of a WebSocket frame reserved for the envelope around a publish's ``data``.
FRAME_OVERHEAD_BYTES = 1024

DEFAULT_NAMESPACE_NAME = "default"

#: Stream byte limits (``[[namespaces]] max_bytes``) and the region's store budget
#: (``[nats] store_budget_bytes``). 1 GiB per namespace: a default region (one namespace)
#: reserves a tenth of the 10 GiB budget, so a few namespaces fit without tuning.
DEFAULT_NAMESPACE_MAX_BYTES = 1 << 30
DEFAULT_STORE_BUDGET_BYTES = 10 << 30
#: Smallest byte limit: room for a few largest messages (1 MiB) with JetStream's overhead.
MIN_STREAM_BYTES = 4 << 20


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    """Raise a field error unless ``value`` is ``<scheme>://host...`` with an allowed scheme."""
    parts = urlsplit(value)
    if parts.scheme not in schemes or not value.startswith(parts.scheme + "://"):
        wanted = " or ".join(f"{s}://" for s in schemes)
        raise PydanticCustomError(FIELD_ERROR_TYPE, f"a URL starting with {wanted}")
    if not parts.hostname:
        raise PydanticCustomError(FIELD_ERROR_TYPE, f"a {parts.scheme}:// URL with a host name")
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise PydanticCustomError(
            FIELD_ERROR_TYPE, f"a {parts.scheme}:// URL with a port from 0 to 65535"
        ) from None
    return value


def _split_nats_urls(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(","))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RegionSection(_Section):
    """``[region]``: which region this relay serves."""

    name: str = Field(
        pattern=REGION_NAME_PATTERN,
        description=(
            "Name of the region this relay belongs to, e.g. `us-east`. Every relay of a region "
            "uses the same name; peers refer to the region by this name."
        ),
    )


class RelaySection(_Section):
    """``[relay]``: this relay process and its WebSocket listener."""

    id: str = Field(
        pattern=RELAY_ID_PATTERN,
        description=(
            "Identifier of this relay process, unique across all regions (e.g. `us-east-1`). "
            "Shows up in logs and in the `connected` frame."
        ),
    )
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the WebSocket server listens on (`0.0.0.0` for all interfaces).",
    )
    port: int = Field(
        default=8701,
        ge=0,
        le=65535,
        description="TCP port of the WebSocket server; 0 picks a free port (used by tests).",
    )
    public_url: str | None = Field(
        default=None,
        description=(
            "URL clients and peers use to reach this relay (`ws://` or `wss://`), e.g. behind "
            "a proxy. Unset: `ws://<host>:<port>/v1/ws` (`wss://` with `tls_cert_file`)."
        ),
    )
    tls_cert_file: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "PEM file with this relay's TLS certificate (and any intermediates after it): "
            "the listener then speaks only TLS (`wss://`, `https://` for `/v1/health`, "
            "`/v1/edges`, `/metrics` and the pages), and its advertised URL is `wss://`. "
            "Set together with `tls_key_file`; both are read once, at start (a relay whose "
            "files cannot be read or do not match does not start). Unset: plain `ws://`, "
            "for loopback or behind a TLS proxy."
        ),
    )
    tls_key_file: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "PEM file with the private key of `tls_cert_file` (unencrypted; keep it mode "
            "0600). Set together with `tls_cert_file`."
        ),
    )
    allowed_origins: tuple[str, ...] = Field(
        default=("*",),
        strict=False,  # TOML arrays arrive as lists
        description=(
            "Browser origins that may connect (the `Origin` header of the WebSocket "
            'upgrade): exact origins (`"https://app.example.com"`, '
            '`"http://localhost:8080"`), `"https://*.example.com"` for any '
            'subdomain (not the domain itself), `"null"` for file:// pages, `"*"` '
            "for any. A request from another origin gets HTTP 403. Requests without "
            "`Origin` (the Python SDK, servers, command-line clients) are always let "
            "through: the check keeps other sites' pages out, tokens keep everyone else out. "
            "`[]`: no browser at all."
        ),
    )
    websocket: bool = Field(
        default=True,
        description=(
            "Accept WebSocket upgrades. `false` refuses them with HTTP 403, as a proxy that "
            "blocks WebSocket would, while the HTTP API and SSE keep working: for trying the "
            "SDKs' fallback to SSE and HTTP publishing."
        ),
    )
    reuse_port: bool = Field(
        default=False,
        description=(
            "Let several relay processes on this host listen on the same host and port "
            "(SO_REUSEPORT): the kernel spreads new connections over them, one process per "
            "core. Each needs its own `relay.id`; one runs the embedded nats-server, the "
            "others set `nats.url` to it."
        ),
    )
    heartbeat_s: float = Field(
        default=15.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds between server pings to each client; sent to clients in the `connected` frame."
        ),
    )
    shutdown_grace_s: float = Field(
        default=5.0,
        ge=0,
        allow_inf_nan=False,
        description=(
            "Seconds a stopping relay waits for connections to drain before closing them."
        ),
    )

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, ("ws", "wss"))

    @field_validator("allowed_origins")
    @classmethod
    def _check_allowed_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                parse_pattern(pattern)
            except ValueError:
                raise PydanticCustomError(
                    FIELD_ERROR_TYPE,
                    f"origin patterns: {ORIGIN_PATTERN_SYNTAX} (not {pattern[:80]!r})",
                ) from None
        return value

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            raise PydanticCustomError(
                FIELD_ERROR_TYPE,
                f"tls_cert_file and tls_key_file set together ({missing} is missing)",
            )
        return self

    @property
    def tls(self) -> bool:
        """Whether the listener speaks TLS."""
        return self.tls_cert_file is not None

    @property
    def ws_scheme(self) -> str:
        return "wss" if self.tls else "ws"

    @property
    def effective_public_url(self) -> str:
        """``public_url`` if set, else the URL of the listen address (IPv6 hosts bracketed)."""
        if self.public_url is not None:
            return self.public_url
        return self.listen_url(self.port)

    def listen_url(self, port: int) -> str:
        """The WebSocket URL of the listen address on ``port`` (the bound one, with 0)."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{self.ws_scheme}://{host}:{port}/v1/ws"


class NatsSection(_Section):
    """``[nats]``: the NATS JetStream server that stores and fans out messages."""

    url: str = Field(
        default="embedded",
        description=(
            '`"embedded"`: the relay starts its own nats-server (see `embedded_*` and '
            "`store_dir`). Otherwise the URL of an existing server (`nats://` or `tls://`); "
            "several comma-separated URLs of one cluster are allowed."
        ),
    )
    embedded_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description='Address the embedded nats-server listens on (only with `url = "embedded"`).',
    )
    embedded_port: int = Field(
        default=4222,
        ge=0,
        le=65535,
        description=(
            "Client port of the embedded nats-server; 0 picks a free port. Other relays of the "
            "region and peer regions connect here."
        ),
    )
    store_dir: str = Field(
        default=".relaynet/data",
        min_length=1,
        description=(
            "JetStream store directory of the embedded nats-server. A relative path is relative "
            "to the current working directory of the relay process, not to the config file."
        ),
    )
    duplicate_window_s: float = Field(
        default=120.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "JetStream deduplication window in seconds: a publish id seen again within this "
            "window is stored only once (safe client retries, federation loops)."
        ),
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="JetStream stream replicas; more than 1 needs a NATS cluster of that size.",
    )
    store_budget_bytes: int = Field(
        default=DEFAULT_STORE_BUDGET_BYTES,
        ge=MIN_STREAM_BYTES,
        description=(
            "Bytes of JetStream file store this region's streams may take on one NATS server. "
            "With `embedded` it is the server's `max_file_store`; with an existing server, set "
            "it to what that server (or the account) allows. The namespaces' `max_bytes` must "
            "add up to at most this (a total-order namespace counts twice: it has two streams), "
            "since JetStream reserves each stream's `max_bytes` when it creates the stream."
        ),
    )
    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds to wait for the NATS connection at startup before giving up.",
    )
    lost_grace_s: float = Field(
        default=2.0,
        ge=0.5,
        le=300,
        allow_inf_nan=False,
        description=(
            "Seconds NATS or JetStream may be unavailable before the relay sends its clients "
            "away (close 4001: they go to another relay, maybe another region). Shorter "
            "outages only fail publishes with `unavailable`, which the SDKs retry. A region "
            "on a NATS cluster, whose JetStream takes a few seconds to elect a new leader "
            "when a node is lost, wants about 10."
        ),
    )
    user: str = Field(
        default="",
        description=(
            "NATS user for an existing server (not with `embedded`, which makes its own "
            "credentials in `<store_dir>/auth/`). A second relay of a region that shares "
            "another relay's embedded server uses `\"relay\"` with that server's "
            "`auth/relay.password`."
        ),
    )
    password_file: str = Field(
        default="",
        description=(
            "File holding the password of `user` (surrounding whitespace ignored); required "
            "with `user`. Secrets are never inline in the config."
        ),
    )
    nkey_seed_file: str = Field(
        default="",
        description=(
            "File holding an nkey user seed (`SU…`, e.g. from `nk -gen user`) to authenticate "
            "with, instead of `user`/`password_file`; the server lists the user by its public "
            "key. One way to authenticate per URL."
        ),
    )
    creds_file: str = Field(
        default="",
        description=(
            "A NATS `.creds` file (user JWT and nkey seed, decentralized auth, e.g. from "
            "`nsc`) to authenticate with, instead of `user`/`password_file` or "
            "`nkey_seed_file`."
        ),
    )
    tls_ca_file: str = Field(
        default="",
        description=(
            "CA certificates (PEM) the server's certificate must be signed by; empty: the "
            "system's (or, on the embedded server with TLS, `embedded_tls_cert_file` itself, "
            "for a self-signed one). Any `tls_*` setting or a `tls://` URL makes TLS "
            "required: a server that does not require it is refused."
        ),
    )
    tls_cert_file: str = Field(
        default="",
        description=(
            "Client certificate (PEM) for a server that verifies clients; with `tls_key_file`."
        ),
    )
    tls_key_file: str = Field(
        default="",
        description="Private key (PEM) of `tls_cert_file`.",
    )
    embedded_tls_cert_file: str = Field(
        default="",
        description=(
            "Certificate (PEM, with its chain) the embedded nats-server serves TLS with; with "
            "`embedded_tls_key_file`. Then every client of it (this relay, the region's other "
            "relays, peers) must use TLS; its names must include the host clients connect to."
        ),
    )
    embedded_tls_key_file: str = Field(
        default="",
        description="Private key (PEM) of `embedded_tls_cert_file`.",
    )

    @field_validator("url")
    @classmethod
    def _check_nats_url(cls, value: str) -> str:
        if value == "embedded":
            return value
        for part in _split_nats_urls(value):
            if not part:
                raise PydanticCustomError(
                    FIELD_ERROR_TYPE, '"embedded" or comma-separated URLs without empty entries'
                )
            if not part.startswith(("nats://", "tls://")):
                raise PydanticCustomError(
                    FIELD_ERROR_TYPE, '"embedded" or URLs starting with nats:// or tls://'
                )
            _check_url(part, ("nats", "tls"))
        return value

    @property
    def is_embedded(self) -> bool:
        """True when the relay runs its own nats-server."""
        return self.url == "embedded"

    @property
    def servers(self) -> tuple[str, ...]:
        """The URLs of ``url`` split on commas and stripped; empty when embedded."""
        return () if self.is_embedded else _split_nats_urls(self.url)


class NamespaceRule(_Section):
    """``[[namespaces]]``: storage and size rules for channels whose name starts with a prefix."""

    name: str = Field(
        pattern=NAMESPACE_NAME_PATTERN,
        description=(
            "Name of the namespace; part of its JetStream stream name, so it must be unique."
        ),
    )
    prefix: str = Field(
        pattern=NAMESPACE_PREFIX_PATTERN,
        description=(
            'Channels starting with this prefix belong to the namespace (`""` matches every '
            "channel). The longest matching prefix wins; channels matching none use an implicit "
            '`default` namespace with prefix `""` and default limits.'
        ),
    )
    history_max_age_s: float = Field(
        default=86400.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a message stays in the channel history.",
    )
    history_max_messages: int = Field(
        default=1000,
        ge=1,
        description="Messages kept in the history of each channel; older ones are dropped.",
    )
    max_message_bytes: int = Field(
        default=65536,
        ge=1,
        le=1048576,
        description=(
            "Largest allowed publish, measured as the size of its JSON-encoded `data`. Must be "
            f"at most `limits.max_frame_bytes` - {FRAME_OVERHEAD_BYTES}."
        ),
    )
    max_bytes: int = Field(
        default=DEFAULT_NAMESPACE_MAX_BYTES,
        description=(
            "Bytes the namespace's stream may hold in this region (a total-order namespace has "
            "two streams of this size). When it is full, publishes to the namespace are refused "
            "with the temporary error `unavailable` (reason: out of space) until history "
            "expires; stored history is never dropped to make room, reads go on, and other "
            "namespaces are unaffected. `0`: no limit of its own (only the server's store "
            f"bounds it). Otherwise at least {MIN_STREAM_BYTES}; all of them must fit in "
            "`nats.store_budget_bytes`."
        ),
    )
    ordering: Literal["causal", "total"] = Field(
        default="causal",
        description=(
            '`"causal"`: every region delivers a channel in an order consistent with causality '
            '(regions may interleave concurrent messages differently). `"total"`: every region '
            "delivers the channel in one identical order, at the cost of waiting until every "
            "region has been heard from (a down region stalls these channels). All regions "
            "must agree."
        ),
    )
    subscribe_hook: str | None = Field(
        default=None,
        description=(
            "Name of a `[[hooks]]` entry asked before a subscription to a channel of the "
            "namespace is attached (WebSocket and SSE alike): the backend accepts, or rejects "
            "(the client gets `forbidden` with its reason). Unset: no hook."
        ),
    )
    publish_hook: str | None = Field(
        default=None,
        description=(
            "Name of a `[[hooks]]` entry asked before a publish to the namespace is stored "
            "(WebSocket and HTTP API alike): the backend accepts, accepts with `data` that "
            "replaces the message's (what is stored and delivered), or rejects (`forbidden`). "
            "A connection's publishes to a channel still keep their order. Unset: no hook."
        ),
    )

    @field_validator("max_bytes")
    @classmethod
    def _check_max_bytes(cls, value: int) -> int:
        if value < 0 or 0 < value < MIN_STREAM_BYTES:
            raise PydanticCustomError(
                FIELD_ERROR_TYPE, f"0 (no limit of its own) or at least {MIN_STREAM_BYTES}"
            )
        return value

    @property
    def reserved_bytes(self) -> int:
        """Store bytes JetStream reserves for the namespace's streams in a region."""
        return self.max_bytes * (2 if self.ordering == "total" else 1)


#: The implicit catch-all namespace used when no configured rule has prefix ``""``.
DEFAULT_NAMESPACE = NamespaceRule(name=DEFAULT_NAMESPACE_NAME, prefix="")


class AuthSection(_Section):
    """``[auth]``: how clients authenticate."""

    mode: Literal["anonymous", "token", "hook"] = Field(
        default="anonymous",
        description=(
            '`"anonymous"`: every client gets the `anonymous` capabilities (for local use). '
            '`"token"`: a client must present a JWT (`?token=` or an `auth` frame) before '
            "anything but `ping`, and may do what the token's `caps` claim allows. "
            '`"hook"`: the backend says who a client is and what it may do (`connect_hook`), '
            "from the credentials string it gives (`?token=`, an `auth` frame, a bearer "
            "token) and the headers the hook forwards (e.g. its session cookie)."
        ),
    )
    connect_hook: str | None = Field(
        default=None,
        description=(
            'With mode = "hook" (and only then): name of the `[[hooks]]` entry asked when a '
            "client connects with `?token=` or a forwarded header (else when it sends an "
            "`auth` frame), and for every HTTP API request. It answers the client's `sub`, "
            "`caps` (as a JWT's `caps` claim) and optional `exp`, or rejects it (error "
            "`unauthorized` with its reason, close 4501). While the backend cannot answer, "
            "clients get `unavailable` (close 4001: they retry)."
        ),
    )
    secret_file: str | None = Field(
        default=None,
        description=(
            "File holding the HS256 shared secret (surrounding whitespace ignored). Secrets "
            "are never written inline in the config."
        ),
    )
    secret_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="Name of an environment variable holding the HS256 shared secret.",
    )
    public_key_files: tuple[str, ...] = Field(
        default=(),
        strict=False,  # TOML arrays arrive as lists
        description=(
            "PEM files of public keys that verify tokens: Ed25519 keys for EdDSA, RSA keys "
            "for RS256 (relays need not hold the signing key)."
        ),
    )
    jwks_file: str | None = Field(
        default=None,
        description="A JWKS (JSON Web Key Set) file of public keys; tokens pick one by `kid`.",
    )
    leeway_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        allow_inf_nan=False,
        description="Seconds of clock skew tolerated when checking a token's `exp` and `iat`.",
    )
    auth_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description=(
            'With mode = "token": a connection without an accepted token this long after '
            "connecting is closed with 4501 `unauthorized`."
        ),
    )
    expiry_warning_s: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        allow_inf_nan=False,
        description=(
            "A `token_expiring` event goes to a client this long before its token's `exp` "
            "(at most half the token's lifetime, `exp` - `iat`), so it can renew with an "
            "`auth` frame; 0: no warning. The close at `exp` (4003) stays."
        ),
    )
    revocation_retention_s: float = Field(
        default=7 * 86400.0,
        ge=60,
        le=10 * 365 * 86400,
        allow_inf_nan=False,
        description=(
            "How long a revocation (`relaynet token revoke`) is kept: the max age of the "
            "region's revocation stream, and when relays forget it. Set it above the longest "
            "lifetime of the tokens you issue: a revoked token still valid after this is "
            "accepted again. All regions should use the same value."
        ),
    )
    audit_file: str | None = Field(
        default=None,
        description=(
            "File the audit log (JSON lines: auth failures, denials, auths and renewals, "
            "revocations) is appended to. Default: the logger `relaynet.audit` at INFO, "
            "one JSON object per message."
        ),
    )
    # Written as a TOML table; kept as (pattern, operations) pairs so the config stays hashable.
    anonymous: tuple[tuple[str, tuple[str, ...]], ...] = Field(
        default=(("*", ("subscribe", "publish", "history", "presence")),),
        strict=False,  # TOML arrays arrive as lists
        description=(
            'A TOML table: in `"anonymous"` mode, what every client may do: channel pattern '
            "(a name, `prefix*` or `*`) to operations (`subscribe`, `publish`, `history`, "
            '`presence`), e.g. `{ "news:*" = ["subscribe", "history"] }`. Default: everything.'
        ),
    )

    @field_validator("anonymous", mode="before")
    @classmethod
    def _table_to_pairs(cls, value: object) -> object:
        if isinstance(value, dict):
            return tuple(
                (pattern, tuple(ops) if isinstance(ops, list) else ops)
                for pattern, ops in value.items()
            )
        if isinstance(value, tuple):  # already pairs (a model built in Python)
            return value
        raise PydanticCustomError(
            FIELD_ERROR_TYPE,
            'a table of channel pattern = [operations], e.g. { "*" = ["subscribe"] }',
        )

    @field_validator("anonymous")
    @classmethod
    def _check_anonymous(
        cls, value: tuple[tuple[str, tuple[str, ...]], ...]
    ) -> tuple[tuple[str, tuple[str, ...]], ...]:
        ops = {"subscribe", "publish", "history", "presence"}
        for pattern, granted in value:
            body = pattern[:-1] if pattern.endswith("*") else pattern
            if (
                not pattern
                or len(body) > 200
                or not re.fullmatch(r"[A-Za-z0-9_\-:@/=+!~.,]*", body)
            ):
                raise PydanticCustomError(
                    FIELD_ERROR_TYPE,
                    f"channel patterns: a channel name, 'prefix*' or '*' (not {pattern[:40]!r})",
                )
            if not set(granted) <= ops:
                raise PydanticCustomError(
                    FIELD_ERROR_TYPE,
                    "operations from subscribe, publish, history, presence "
                    f"(not {sorted(set(granted) - ops)[:3]!r})",
                )
        return value

    @model_validator(mode="after")
    def _check_keys(self) -> Self:
        if self.mode == "token" and not (
            self.secret_file or self.secret_env or self.public_key_files or self.jwks_file
        ):
            raise PydanticCustomError(
                FIELD_ERROR_TYPE,
                'with mode = "token", at least one of secret_file, secret_env, '
                "public_key_files, jwks_file",
            )
        return self


class HookSection(_Section):
    """``[[hooks]]``: an HTTP endpoint of the application's backend that relays ask
    (``auth.connect_hook``, ``namespaces[].subscribe_hook`` / ``publish_hook``)."""

    name: str = Field(
        pattern=HOOK_NAME_PATTERN,
        description=(
            "Name the hook is referred to by; each named hook has its own circuit breaker."
        ),
    )
    url: str = Field(
        description=(
            "URL the relay POSTs each request to (`http://` or `https://`, verified with the "
            "system's CAs): a JSON object whose `hook` is `connect`, `subscribe` or "
            '`publish`. The backend answers 200 with `{"result": "accept"}` or '
            '`{"result": "reject", "reason": "..."}`; any other answer is a failure.'
        ),
    )
    timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="Seconds one attempt may take, connecting included; a timeout is a failure.",
    )
    retries: int = Field(
        default=1,
        ge=0,
        le=5,
        description=(
            "Attempts after the first when the connection fails or the backend answers 5xx "
            "(not after a timeout or a bad answer)."
        ),
    )
    retry_backoff_s: float = Field(
        default=0.1,
        ge=0,
        le=10,
        allow_inf_nan=False,
        description="Seconds before the first retry, doubling for each next one (with jitter).",
    )
    breaker_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description=(
            "Consecutive failed calls (after their retries) that open the circuit breaker: "
            "then no request goes to the backend for `breaker_open_s`, and every call fails "
            "at once; after that one trial call goes, and closes the breaker if it succeeds "
            "(else it stays open for another `breaker_open_s`)."
        ),
    )
    breaker_open_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Seconds the breaker stays open before a trial call.",
    )
    fail_open: bool = Field(
        default=False,
        description=(
            "What a failed call (timeout, error, bad answer, open breaker) means. `false` "
            "(fail closed): the request is refused with the temporary error `unavailable` "
            "(the SDKs retry it). `true`: it is let through as if accepted (the publish "
            "stored as sent). Not allowed for a connect hook (there is no identity to give)."
        ),
    )
    forward_headers: tuple[str, ...] = Field(
        default=(),
        strict=False,  # TOML arrays arrive as lists
        description=(
            "Connect calls only: request headers of the client's WebSocket upgrade, SSE or "
            'HTTP API request passed on in the request\'s `headers` (e.g. `["cookie", '
            '"origin"]`). They may hold the client\'s session: they go to this URL only, are '
            "kept in memory only for a connection's renewals, and are never logged."
        ),
    )
    secret_file: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "File holding a secret (surrounding whitespace ignored) sent as "
            "`Authorization: Bearer <secret>` with every call, so the backend can tell the "
            "relay's calls from anyone else's. Read once, at start."
        ),
    )

    @field_validator("url")
    @classmethod
    def _check_hook_url(cls, value: str) -> str:
        return _check_url(value, ("http", "https"))

    @field_validator("forward_headers")
    @classmethod
    def _check_forward_headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}", name):
                raise PydanticCustomError(
                    FIELD_ERROR_TYPE, f"HTTP header names (not {name[:40]!r})"
                )
        return tuple(name.lower() for name in value)


class PeerSection(_Section):
    """``[[peers]]``: another region this region federates with."""

    region: str = Field(
        pattern=REGION_NAME_PATTERN,
        description="Region name of the peer (its `[region] name`).",
    )
    edge_url: str = Field(
        description="WebSocket URL of a relay in the peer region (`ws://` or `wss://`).",
    )
    nats_url: str = Field(
        description=(
            "URL of the peer region's NATS server (`nats://` or `tls://`). Off loopback it "
            "needs TLS (a `tls://` URL or `nats_tls_ca_file`) unless `nats_allow_plaintext`."
        ),
    )
    nats_user: str = Field(
        default="",
        description=(
            "NATS user on the peer's server: for a peer's embedded server, "
            '`"peer-<this region>"` (read-only on its streams, through this region\'s own '
            "durable consumer only; the peer makes it for each region in its `[[peers]]`)."
        ),
    )
    nats_password_file: str = Field(
        default="",
        description=(
            "File holding the password of `nats_user` (for a peer's embedded server: its "
            "`<store_dir>/auth/peer-<this region>.password`); required with `nats_user`."
        ),
    )
    nats_nkey_seed_file: str = Field(
        default="",
        description=(
            "File holding an nkey user seed to authenticate on the peer's NATS with, instead "
            "of `nats_user`/`nats_password_file`."
        ),
    )
    nats_creds_file: str = Field(
        default="",
        description=(
            "A NATS `.creds` file to authenticate on the peer's NATS with, instead of "
            "`nats_user`/`nats_password_file` or `nats_nkey_seed_file`."
        ),
    )
    nats_tls_ca_file: str = Field(
        default="",
        description=(
            "CA certificates (PEM) the peer's NATS certificate must be signed by; empty: the "
            "system's. Any `nats_tls_*` setting or a `tls://` URL makes TLS required."
        ),
    )
    nats_tls_cert_file: str = Field(
        default="",
        description="Client certificate (PEM) for a peer NATS that verifies clients.",
    )
    nats_tls_key_file: str = Field(
        default="",
        description="Private key (PEM) of `nats_tls_cert_file`.",
    )
    nats_allow_plaintext: bool = Field(
        default=False,
        description=(
            "Allow a `nats://` URL without TLS to a peer that is not on loopback (its "
            "credentials and every message then cross the network readable and alterable). "
            "Without it such a peer is a config error."
        ),
    )

    @field_validator("edge_url")
    @classmethod
    def _check_edge_url(cls, value: str) -> str:
        return _check_url(value, ("ws", "wss"))

    @field_validator("nats_url")
    @classmethod
    def _check_peer_nats_url(cls, value: str) -> str:
        return _check_url(value, ("nats", "tls"))


class LimitsSection(_Section):
    """``[limits]``: resource limits, per connection and for the relay."""

    max_connections: int = Field(
        default=20000,
        ge=0,
        description=(
            "Connections this relay holds at most (0: as many as the file-descriptor limit "
            "allows; the limit in effect is never above the descriptor limit less 64). Past "
            "it a new client gets a `redirect` to another relay of the region that takes "
            "connections, if there is one, and close code 1013."
        ),
    )
    max_connections_per_sub: int = Field(
        default=100,
        ge=0,
        description=(
            "Connections one token subject (`sub`) may hold on this relay at once (0: no "
            "limit); anonymous connections are not counted. One more is refused when its "
            "token is accepted: error `limit_exceeded`, then close 4004 (the SDKs retry with "
            "backoff, so a client whose old connection the relay has not yet seen drop gets "
            "in once it has)."
        ),
    )

    max_frame_bytes: int = Field(
        default=1048576,
        ge=1024,
        le=16777216,
        description=(
            "Largest WebSocket frame accepted from a client; a bigger frame closes the "
            "connection with code 1009."
        ),
    )
    outbox_max_messages: int = Field(
        default=1024,
        ge=1,
        description=(
            "Size of each connection's bounded send queue; a client that lets it overflow is "
            "disconnected with `slow_consumer`."
        ),
    )
    outbox_max_bytes: int = Field(
        default=4194304,
        ge=65536,
        le=1073741824,
        description=(
            "Bytes each connection's send queue holds at most (messages, history pages, "
            "resume replay); past it the client is closed with 4000 `slow_consumer` and "
            "resumes from its position. One reply larger than this is still sent when "
            "nothing else waits."
        ),
    )
    write_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description=(
            "A connection whose queued frames make no progress into its socket for this "
            "long is closed with 4000 `slow_consumer` (reason `write_timeout`)."
        ),
    )
    publish_rate: float = Field(
        default=10000.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Publishes per second one connection may sustain (a token bucket); above it a "
            "publish gets the temporary error `rate_limited` with `retry_after_ms` and is "
            "not stored (the SDKs wait and resend it, in order, same id). The default is "
            "about what one connection can get stored; lower it for untrusted clients."
        ),
    )
    publish_burst: int = Field(
        default=20000,
        ge=1,
        description="Publishes one connection may send at once above `publish_rate`.",
    )
    subscribe_rate: float = Field(
        default=100.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Subscribe requests per second one connection may sustain; above it a subscribe "
            "gets `rate_limited` with `retry_after_ms`."
        ),
    )
    subscribe_burst: int = Field(
        default=1000,
        ge=1,
        description=(
            "Subscribe requests one connection may send at once (a reconnect resubscribes "
            "everything: keep it at least `max_subscriptions`)."
        ),
    )
    max_subscriptions: int = Field(
        default=1000,
        ge=1,
        description="Channels one connection may subscribe to at the same time.",
    )
    max_errors_per_minute: int = Field(
        default=100,
        ge=1,
        description="Bad frames a client may send per minute before it is disconnected.",
    )
    publish_context_wait_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How long a publish may wait for its causal context (messages its publisher had "
            "seen or sent, from another region) to reach this region before it is refused "
            "as `unavailable`; the SDKs then retry it, same id."
        ),
    )


class FederationSection(_Section):
    """``[federation]``: how this region exchanges messages with its ``[[peers]]``."""

    run_in_relay: bool = Field(
        default=True,
        description=(
            "Run the federation links inside this relay process (when there are peers). "
            "Any number of relays of a region may do so: a lease lets one of them serve each "
            "peer link at a time, and appends are idempotent anyway. Set false to run "
            "`relaynet federate --config FILE` separately."
        ),
    )
    ack_wait_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Seconds a peer waits for this region to confirm a message before sending it "
            "again (bounds catch-up after a link drops mid-delivery)."
        ),
    )
    lease_ttl_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Seconds a federation instance holds a peer link without renewing its lease; "
            "another instance takes the link over after this when one dies or stops "
            "responding (a frozen holder's consumer binding is taken from it)."
        ),
    )
    max_buffered: int = Field(
        default=10000,
        ge=1,
        description=(
            "Remote messages per channel that may wait for their causal predecessors; "
            "beyond it the link pauses (the peer keeps them)."
        ),
    )


_Problem = tuple[str, object, str]


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _connection_problems(owner: str, section: BaseModel, name: str) -> list[_Problem]:
    """The credentials and client TLS files of one NATS URL: ``owner`` is the path before
    the section's fields (``nats.``, ``peers[0].``), ``name`` the prefix of their names in
    it (``""``, ``nats_``)."""

    def get(field: str) -> str:
        return str(getattr(section, name + field))

    def pair(a: str, b: str) -> str:
        return f"{'' if name else owner}{name}{a}/{name}{b}"

    problems: list[_Problem] = []
    for a, b in (("user", "password_file"), ("tls_cert_file", "tls_key_file")):
        if bool(get(a)) != bool(get(b)):
            missing = b if get(a) else a
            problems.append(
                (f"{owner}{name}{missing}", "", f"set together with the other of {pair(a, b)}")
            )
    methods = [field for field in ("user", "nkey_seed_file", "creds_file") if get(field)]
    if len(methods) > 1:
        problems.append(
            (
                f"{owner}{name}{methods[1]}",
                get(methods[1]),
                f"one way to authenticate: {name}user with {name}password_file, "
                f"{name}nkey_seed_file or {name}creds_file (not also {name}{methods[0]})",
            )
        )
    return problems


def _nats_problems(nats: NatsSection) -> list[_Problem]:
    if not nats.is_embedded:
        return _connection_problems("nats.", nats, "") + [
            (f"nats.{field}", value, 'only with url = "embedded"')
            for field in ("embedded_tls_cert_file", "embedded_tls_key_file")
            if (value := getattr(nats, field))
        ]
    problems: list[_Problem] = []
    credentials = ("user", "password_file", "nkey_seed_file", "creds_file")
    if given := [field for field in credentials if getattr(nats, field)]:
        problems.append(
            (
                f"nats.{given[0]}",
                getattr(nats, given[0]),
                'no credentials with url = "embedded" (it makes its own)',
            )
        )
    problems += [
        (
            f"nats.{field}",
            value,
            'no client certificate with url = "embedded" (its server does not ask for one)',
        )
        for field in ("tls_cert_file", "tls_key_file")
        if (value := getattr(nats, field))
    ]
    if bool(nats.embedded_tls_cert_file) != bool(nats.embedded_tls_key_file):
        missing = "key" if nats.embedded_tls_cert_file else "cert"
        problems.append(
            (
                f"nats.embedded_tls_{missing}_file",
                "",
                "set together with the other of nats.embedded_tls_cert_file/embedded_tls_key_file",
            )
        )
    if nats.tls_ca_file and not nats.embedded_tls_cert_file:
        problems.append(
            (
                "nats.tls_ca_file",
                nats.tls_ca_file,
                'with url = "embedded", only together with embedded_tls_cert_file (the '
                "embedded server serves TLS only then)",
            )
        )
    return problems


def _peer_nats_problems(i: int, peer: PeerSection) -> list[_Problem]:
    owner = f"peers[{i}]."
    problems = _connection_problems(owner, peer, "nats_")
    tls = peer.nats_url.startswith("tls://") or bool(
        peer.nats_tls_ca_file or peer.nats_tls_cert_file or peer.nats_tls_key_file
    )
    if tls and peer.nats_allow_plaintext:
        problems.append(
            (
                f"{owner}nats_allow_plaintext",
                True,
                "false when TLS is configured for the peer (a tls:// URL or nats_tls_* files)",
            )
        )
    elif not tls and not peer.nats_allow_plaintext and not _is_loopback_url(peer.nats_url):
        problems.append(
            (
                f"{owner}nats_url",
                peer.nats_url,
                "TLS to a peer that is not on loopback: a tls:// URL or nats_tls_ca_file "
                "(else its credentials and every message cross the network readable and "
                "alterable); nats_allow_plaintext = true accepts that",
            )
        )
    return problems


class PresenceSection(_Section):
    """``[presence]``: who is on a channel, across relays and regions (not stored)."""

    leave_after_s: float = Field(
        default=15.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description=(
            "Seconds after a connection ends unannounced before its members leave: a client "
            "that reconnects within them does not flicker out of everyone's list."
        ),
    )
    suspect_after_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description=(
            "Seconds without a beat from a relay (or its region) before its members are "
            "shown as `unreachable`."
        ),
    )
    remove_after_s: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        allow_inf_nan=False,
        description=(
            "Seconds without a beat from a relay (or its region) before its members are "
            "removed; they come back with its next snapshot once it is heard again."
        ),
    )
    snapshot_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description=(
            "Seconds between a relay's snapshots of its members (what repairs a lost "
            "change, and fills in a region after a partition heals)."
        ),
    )

    @model_validator(mode="after")
    def _check_order(self) -> Self:
        if self.remove_after_s < self.suspect_after_s:
            raise PydanticCustomError(
                FIELD_ERROR_TYPE,
                f"remove_after_s ({self.remove_after_s:g}) at least suspect_after_s "
                f"({self.suspect_after_s:g})",
            )
        return self


class RelayConfig(_Section):
    """A whole region config file."""

    region: RegionSection = Field(description="The region this relay belongs to. Required.")
    relay: RelaySection = Field(description="This relay process and its WebSocket listener.")
    nats: NatsSection = Field(
        default_factory=NatsSection,
        description="The NATS JetStream server that stores and fans out messages.",
    )
    namespaces: tuple[NamespaceRule, ...] = Field(
        default=(),
        strict=False,  # TOML arrays arrive as lists
        description=(
            "Channel namespaces: history and size rules by channel prefix. One JetStream stream "
            "per namespace."
        ),
    )
    auth: AuthSection = Field(default_factory=AuthSection, description="How clients authenticate.")
    hooks: tuple[HookSection, ...] = Field(
        default=(),
        strict=False,  # TOML arrays arrive as lists
        description=(
            "HTTP hooks to the application's backend, referred to by name from "
            "`auth.connect_hook` and `namespaces[].subscribe_hook` / `publish_hook`."
        ),
    )
    peers: tuple[PeerSection, ...] = Field(
        default=(),
        strict=False,  # TOML arrays arrive as lists
        description="Other regions this region exchanges messages with.",
    )
    limits: LimitsSection = Field(
        default_factory=LimitsSection,
        description="Resource limits, per connection and for the relay as a whole.",
    )
    federation: FederationSection = Field(
        default_factory=FederationSection,
        description="How this region exchanges messages with its peers.",
    )
    presence: PresenceSection = Field(
        default_factory=PresenceSection,
        description="Who is on a channel: timeouts of the member lists.",
    )

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Self:
        problems: list[tuple[str, Any, str]] = []
        has_catch_all = any(rule.prefix == "" for rule in self.namespaces)
        names: dict[str, int] = {}
        prefixes: dict[str, int] = {}
        max_bytes = self.limits.max_frame_bytes - FRAME_OVERHEAD_BYTES
        for i, rule in enumerate(self.namespaces):
            if rule.name in names:
                problems.append(
                    (
                        f"namespaces[{i}].name",
                        rule.name,
                        f"a unique namespace name (namespaces[{names[rule.name]}] has it too)",
                    )
                )
            else:
                names[rule.name] = i
            if rule.name == DEFAULT_NAMESPACE_NAME and not has_catch_all:
                problems.append(
                    (
                        f"namespaces[{i}].name",
                        rule.name,
                        f"a name other than {DEFAULT_NAMESPACE_NAME!r} (reserved for the implicit "
                        'catch-all namespace unless this rule has prefix "")',
                    )
                )
            if rule.prefix in prefixes:
                problems.append(
                    (
                        f"namespaces[{i}].prefix",
                        rule.prefix,
                        f"a unique prefix (namespaces[{prefixes[rule.prefix]}] has it too)",
                    )
                )
            else:
                prefixes[rule.prefix] = i
            if rule.max_message_bytes > max_bytes:
                problems.append(
                    (
                        f"namespaces[{i}].max_message_bytes",
                        rule.max_message_bytes,
                        f"at most {max_bytes} (limits.max_frame_bytes "
                        f"{self.limits.max_frame_bytes} - {FRAME_OVERHEAD_BYTES})",
                    )
                )
        if not has_catch_all and DEFAULT_NAMESPACE.max_message_bytes > max_bytes:
            needed = DEFAULT_NAMESPACE.max_message_bytes + FRAME_OVERHEAD_BYTES
            problems.append(
                (
                    "limits.max_frame_bytes",
                    self.limits.max_frame_bytes,
                    f"at least {needed} (the implicit default namespace allows "
                    f"{DEFAULT_NAMESPACE.max_message_bytes}-byte messages; add a [[namespaces]] "
                    'rule with prefix = "" and a smaller max_message_bytes)',
                )
            )
        problems += self._store_budget_problems()
        problems += self._hook_problems()
        problems += _nats_problems(self.nats)
        for i, peer in enumerate(self.peers):
            problems += _peer_nats_problems(i, peer)
        peer_regions: dict[str, int] = {}
        for i, peer in enumerate(self.peers):
            if peer.region == self.region.name:
                problems.append(
                    (
                        f"peers[{i}].region",
                        peer.region,
                        f"a region other than this relay's own region {self.region.name!r}",
                    )
                )
            elif peer.region in peer_regions:
                problems.append(
                    (
                        f"peers[{i}].region",
                        peer.region,
                        f"a unique peer region (peers[{peer_regions[peer.region]}] has it too)",
                    )
                )
            else:
                peer_regions[peer.region] = i
        if problems:
            summary = "; ".join(
                f"{path}: expected {exp}, got {val!r}" for path, val, exp in problems
            )
            raise PydanticCustomError(
                CROSS_FIELD_ERROR_TYPE,
                "{summary}",
                {"summary": summary, "problems": tuple(problems)},
            )
        return self

    def _hook_problems(self) -> list[tuple[str, Any, str]]:
        """Hook names unique and defined; the connect hook exactly in hook mode, and closed."""
        problems: list[tuple[str, Any, str]] = []
        named: dict[str, int] = {}
        for i, hook in enumerate(self.hooks):
            if hook.name in named:
                problems.append(
                    (
                        f"hooks[{i}].name",
                        hook.name,
                        f"a unique hook name (hooks[{named[hook.name]}] has it too)",
                    )
                )
            named.setdefault(hook.name, i)
        defined = f"one of the [[hooks]] names ({', '.join(named) or 'none defined'})"
        refs = [
            (f"namespaces[{i}].{kind}_hook", getattr(rule, f"{kind}_hook"))
            for i, rule in enumerate(self.namespaces)
            for kind in ("subscribe", "publish")
        ]
        connect = self.auth.connect_hook
        refs.append(("auth.connect_hook", connect))
        problems += [(path, ref, defined) for path, ref in refs if ref and ref not in named]
        if self.auth.mode == "hook" and connect is None:
            problems.append(("auth.connect_hook", None, 'set with mode = "hook"'))
        elif self.auth.mode != "hook" and connect is not None:
            problems.append(("auth.connect_hook", connect, 'unset unless mode = "hook"'))
        elif connect in named and self.hooks[named[connect]].fail_open:
            problems.append(
                (
                    f"hooks[{named[connect]}].fail_open",
                    True,
                    "false for the connect hook (a failed connect has no identity to give)",
                )
            )
        return problems

    def hook(self, name: str | None) -> HookSection | None:
        """The ``[[hooks]]`` entry named ``name``; None for None."""
        return next((hook for hook in self.hooks if hook.name == name), None)

    def _store_budget_problems(self) -> list[tuple[str, Any, str]]:
        """JetStream reserves every stream's ``max_bytes`` out of the server's store when it
        creates the stream, and refuses one that does not fit: say so here, by field, rather
        than as "insufficient storage resources" from a relay that then cannot start."""
        budget = self.nats.store_budget_bytes
        parts: list[str] = []
        for i, rule in enumerate(self.all_namespaces):
            if rule.reserved_bytes:
                field = (
                    f"namespaces[{i}].max_bytes"
                    if i < len(self.namespaces)
                    else "the implicit default namespace's"
                )
                twice = " x 2 (total order)" if rule.ordering == "total" else ""
                parts.append(f"{field} {rule.max_bytes}{twice}")
        reserved = self.reserved_store_bytes
        if reserved <= budget:
            return []
        implicit = (
            ""
            if self.all_namespaces == self.namespaces
            else '; a [[namespaces]] rule with prefix = "" sets the default one\'s'
        )
        return [
            (
                "nats.store_budget_bytes",
                budget,
                f"at least {reserved}, what the namespaces' max_bytes add up to "
                f"({' + '.join(parts)}); raise nats.store_budget_bytes or lower those "
                f"max_bytes{implicit}",
            )
        ]

    @property
    def reserved_store_bytes(self) -> int:
        """Store bytes this region's streams reserve on its NATS server (their max_bytes)."""
        return sum(rule.reserved_bytes for rule in self.all_namespaces)

    def namespace_for(self, channel: str) -> NamespaceRule:
        """The rule with the longest prefix ``channel`` starts with, else ``DEFAULT_NAMESPACE``."""
        best: NamespaceRule | None = None
        for rule in self.namespaces:
            if channel.startswith(rule.prefix) and (
                best is None or len(rule.prefix) > len(best.prefix)
            ):
                best = rule
        return DEFAULT_NAMESPACE if best is None else best

    @property
    def all_namespaces(self) -> tuple[NamespaceRule, ...]:
        """Configured rules, plus ``DEFAULT_NAMESPACE`` last if no rule has prefix ``""``."""
        if any(rule.prefix == "" for rule in self.namespaces):
            return self.namespaces
        return (*self.namespaces, DEFAULT_NAMESPACE)

    def region_settings(self) -> RegionSettings:
        """What federation and the region log need from this file."""
        return RegionSettings(
            region=self.region.name,
            namespaces=tuple(
                Namespace(
                    rule.name,
                    rule.prefix,
                    total_order=rule.ordering == "total",
                    max_age_s=rule.history_max_age_s,
                    max_messages=rule.history_max_messages,
                    max_message_bytes=rule.max_message_bytes,
                    max_bytes=rule.max_bytes,
                )
                for rule in self.all_namespaces
            ),
            peers=tuple(
                Peer(
                    peer.region,
                    NatsConnectOptions(
                        servers=(peer.nats_url,),
                        user=peer.nats_user,
                        password_file=peer.nats_password_file,
                        nkey_seed_file=peer.nats_nkey_seed_file,
                        creds_file=peer.nats_creds_file,
                        tls_ca_file=peer.nats_tls_ca_file,
                        tls_cert_file=peer.nats_tls_cert_file,
                        tls_key_file=peer.nats_tls_key_file,
                        config_prefix=f"peers[{i}].nats_",
                    ),
                )
                for i, peer in enumerate(self.peers)
            ),
            connect_timeout_s=self.nats.connect_timeout_s,
            ack_wait_s=self.federation.ack_wait_s,
            lease_ttl_s=self.federation.lease_ttl_s,
            max_buffered=self.federation.max_buffered,
            duplicate_window_s=self.nats.duplicate_window_s,
            replicas=self.nats.replicas,
        )
