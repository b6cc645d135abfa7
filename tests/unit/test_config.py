"""Unit tests for the config package: schema, loader (file + environment), reference."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from relay.adapters.ws_edge import RESERVED_FDS, connection_limit
from relay.config.loader import MISSING, ConfigError, ConfigIssue, load_config
from relay.config.reference import render_reference
from relay.config.schema import (
    DEFAULT_NAMESPACE,
    AuthSection,
    LimitsSection,
    NamespaceRule,
    NatsSection,
    PeerSection,
    RegionSection,
    RelayConfig,
    RelaySection,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "config" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.toml"))

MINIMAL = """\
[region]
name = "us-east"

[relay]
id = "us-east-1"
"""


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    return info.value


def only_issue(err: ConfigError) -> ConfigIssue:
    assert len(err.issues) == 1, str(err)
    return err.issues[0]


def make(**sections: object) -> RelayConfig:
    data: dict[str, object] = {"region": {"name": "us-east"}, "relay": {"id": "r1"}}
    data.update(sections)
    return RelayConfig.model_validate(data)


# --- examples and defaults -------------------------------------------------------------------


def test_there_are_four_examples() -> None:
    assert [p.name for p in EXAMPLES] == [
        "ap-south.toml",
        "eu-west.toml",
        "us-east-2.toml",
        "us-east.toml",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads(path: Path) -> None:
    cfg = load_config(path, env={})
    assert cfg.region.name == path.stem.removesuffix("-2")
    assert [ns.name for ns in cfg.namespaces] == ["chat", "dash"]


def test_us_east_example_values() -> None:
    cfg = load_config(EXAMPLES_DIR / "us-east.toml", env={})
    assert cfg.relay.id == "us-east-1"
    assert cfg.relay.port == 8701
    assert cfg.nats.is_embedded and cfg.nats.embedded_port == 4222
    assert cfg.nats.store_dir == ".relaynet/us-east"
    chat, dash = cfg.namespaces
    assert (chat.prefix, chat.history_max_age_s, chat.history_max_messages) == (
        "chat:",
        86400,
        1000,
    )
    assert (dash.prefix, dash.history_max_age_s, dash.history_max_messages) == ("dash:", 3600, 100)
    assert dash.max_message_bytes == 16384
    assert [(p.region, p.edge_url, p.nats_url) for p in cfg.peers] == [
        ("eu-west", "ws://127.0.0.1:8702/v1/ws", "nats://127.0.0.1:4223"),
        ("ap-south", "ws://127.0.0.1:8703/v1/ws", "nats://127.0.0.1:4224"),
    ]


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), env={})
    assert cfg.relay == RelaySection(id="us-east-1")
    assert (cfg.relay.host, cfg.relay.port, cfg.relay.public_url) == ("127.0.0.1", 8701, None)
    assert (cfg.relay.heartbeat_s, cfg.relay.shutdown_grace_s) == (15.0, 5.0)
    assert cfg.nats == NatsSection()
    assert (cfg.nats.url, cfg.nats.embedded_host, cfg.nats.embedded_port) == (
        "embedded",
        "127.0.0.1",
        4222,
    )
    assert cfg.nats.store_dir == ".relaynet/data"
    assert (cfg.nats.duplicate_window_s, cfg.nats.replicas, cfg.nats.connect_timeout_s) == (
        120.0,
        1,
        5.0,
    )
    assert cfg.namespaces == ()
    assert cfg.peers == ()
    assert cfg.auth == AuthSection(mode="anonymous")
    assert cfg.limits == LimitsSection(
        max_frame_bytes=1048576,
        outbox_max_messages=1024,
        max_subscriptions=1000,
        max_errors_per_minute=100,
    )
    rule = NamespaceRule(name="x", prefix="x:")
    assert (rule.history_max_age_s, rule.history_max_messages, rule.max_message_bytes) == (
        86400.0,
        1000,
        65536,
    )


def test_limits_that_hold_have_finite_defaults(tmp_path: Path) -> None:
    """Issue #12: every limit a hostile client could otherwise push is finite by default."""
    cfg = load_config(write(tmp_path, MINIMAL), env={})
    limits = cfg.limits
    assert limits.max_connections == 20000
    assert (limits.outbox_max_bytes, limits.write_timeout_s) == (4 * 1024 * 1024, 15.0)
    assert (limits.publish_rate, limits.publish_burst) == (10000.0, 20000)
    assert (limits.subscribe_rate, limits.subscribe_burst) == (100.0, 1000)
    assert limits.subscribe_burst >= limits.max_subscriptions  # a reconnect resubscribes all
    assert cfg.auth.auth_timeout_s == 10.0


@pytest.mark.parametrize(
    ("section", "text", "field"),
    [
        ("limits", "outbox_max_bytes = 1024", "limits.outbox_max_bytes"),
        ("limits", "write_timeout_s = 0", "limits.write_timeout_s"),
        ("limits", "publish_rate = 0", "limits.publish_rate"),
        ("limits", "publish_rate = inf", "limits.publish_rate"),
        ("limits", "publish_burst = 0", "limits.publish_burst"),
        ("limits", "subscribe_rate = -1.0", "limits.subscribe_rate"),
        ("limits", "subscribe_burst = 0", "limits.subscribe_burst"),
        ("limits", "max_connections = -1", "limits.max_connections"),
        ("auth", "auth_timeout_s = 0", "auth.auth_timeout_s"),
    ],
)
def test_bad_limits_are_rejected(tmp_path: Path, section: str, text: str, field: str) -> None:
    issue = only_issue(load_error(write(tmp_path, MINIMAL + f"[{section}]\n{text}\n")))
    assert issue.field == field


def test_the_connection_limit_in_effect_is_below_the_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = connection_limit(LimitsSection().max_connections)
    assert 1 <= limit <= LimitsSection().max_connections
    if soft != resource.RLIM_INFINITY:
        assert limit <= resource.getrlimit(resource.RLIMIT_NOFILE)[0] - RESERVED_FDS


def test_effective_public_url() -> None:
    assert RelaySection(id="a").effective_public_url == "ws://127.0.0.1:8701/v1/ws"
    assert RelaySection(id="a", host="::1", port=9).effective_public_url == "ws://[::1]:9/v1/ws"
    explicit = RelaySection(id="a", public_url="wss://relay.example.com/v1/ws")
    assert explicit.effective_public_url == "wss://relay.example.com/v1/ws"


def test_nats_servers() -> None:
    assert NatsSection().servers == ()
    nats = NatsSection(url="nats://a:4222, tls://b:4222")
    assert not nats.is_embedded
    assert nats.servers == ("nats://a:4222", "tls://b:4222")


def test_nats_and_peer_credentials() -> None:
    cfg = make(
        nats={"url": "nats://a:4222", "user": "relay", "password_file": "/run/relay.password"},
        peers=[
            {
                "region": "eu-west",
                "edge_url": "ws://b:1/v1/ws",
                "nats_url": "tls://b:4222",
                "nats_user": "peer",
                "nats_password_file": "/run/eu-west.password",
            },
            {"region": "ap-south", "edge_url": "ws://c:1/v1/ws", "nats_url": "tls://c:4222"},
        ],
    )
    assert (cfg.nats.user, cfg.nats.password_file) == ("relay", "/run/relay.password")
    west, south = cfg.region_settings().peers
    assert (west.nats.user, west.nats.password_file) == ("peer", "/run/eu-west.password")
    assert west.nats.config_prefix == "peers[0].nats_"
    assert (south.nats.user, south.nats.password_file) == ("", "")


def test_models_are_frozen_and_hashable() -> None:
    cfg = make(namespaces=[{"name": "chat", "prefix": "chat:"}])
    with pytest.raises(ValidationError):
        setattr(cfg.relay, "port", 1)  # noqa: B010 - assignment must fail at runtime
    assert hash(cfg) == hash(make(namespaces=[{"name": "chat", "prefix": "chat:"}]))


def test_region_name_single_letter_and_max_length() -> None:
    assert RegionSection(name="a").name == "a"
    assert RegionSection(name="a" * 32).name == "a" * 32
    for bad in ("a" * 33, "1abc", "abc-", "Abc", "a_b", ""):
        with pytest.raises(ValidationError):
            RegionSection(name=bad)


def test_every_field_has_a_description() -> None:
    models: list[type[BaseModel]] = [
        RelayConfig,
        RegionSection,
        RelaySection,
        NatsSection,
        NamespaceRule,
        AuthSection,
        PeerSection,
        LimitsSection,
    ]
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"


# --- validation: one bad config per rule ------------------------------------------------------

BAD_CONFIGS = [
    pytest.param(
        '[region]\nname = "US_East"\n[relay]\nid = "r1"\n',
        "region.name",
        "a region name: 1-32 lowercase letters",
        "US_East",
        id="bad-region-name",
    ),
    pytest.param(
        MINIMAL + "port = 70000\n",
        "relay.port",
        "an integer from 0 to 65535",
        70000,
        id="port-out-of-range",
    ),
    pytest.param(
        'colour = "red"\n' + MINIMAL,
        "colour",
        "no such field (known fields: region, relay, nats, namespaces, auth, hooks, peers, "
        "limits, federation, presence)",
        "red",
        id="unknown-top-level-key",
    ),
    pytest.param(
        MINIMAL + "prot = 8702\n",
        "relay.prot",
        "no such field (known fields: id, host, port, public_url, tls_cert_file, "
        "tls_key_file, allowed_origins, websocket, reuse_port, heartbeat_s, shutdown_grace_s)",
        8702,
        id="unknown-nested-key",
    ),
    pytest.param(
        MINIMAL + '[[namespaces]]\nname = "chat"\nprefix = "chat:"\nhistory = 5\n',
        "namespaces[0].history",
        "no such field (known fields: name, prefix, history_max_age_s,",
        5,
        id="unknown-key-in-array-item",
    ),
    pytest.param(
        MINIMAL + 'port = "8701"\n',
        "relay.port",
        "an integer",
        "8701",
        id="wrong-type-int",
    ),
    pytest.param(
        MINIMAL + "heartbeat_s = true\n",
        "relay.heartbeat_s",
        "a number",
        True,
        id="wrong-type-float",
    ),
    pytest.param(
        MINIMAL + "heartbeat_s = inf\n",
        "relay.heartbeat_s",
        "a finite number",
        float("inf"),
        id="infinite-float",
    ),
    pytest.param(
        MINIMAL + "heartbeat_s = 0\n",
        "relay.heartbeat_s",
        "a number > 0",
        0,
        id="zero-heartbeat",
    ),
    pytest.param(
        'relay = "r1"\n[region]\nname = "us-east"\n',
        "relay",
        "a table ([relay])",
        "r1",
        id="section-not-a-table",
    ),
    pytest.param(
        '[region]\nname = "us-east"\n',
        "relay",
        "a [relay] table (required field)",
        MISSING,
        id="missing-section",
    ),
    pytest.param(
        '[region]\nname = "us-east"\n[relay]\nport = 1\n',
        "relay.id",
        "a value (required field)",
        MISSING,
        id="missing-field",
    ),
    pytest.param(
        MINIMAL + '[namespaces]\nname = "chat"\nprefix = "chat:"\n',
        "namespaces",
        "an array of tables ([[namespaces]])",
        {"name": "chat", "prefix": "chat:"},
        id="namespaces-as-single-table",
    ),
    pytest.param(
        MINIMAL + '[[namespaces]]\nname = "Chat"\nprefix = "chat:"\n',
        "namespaces[0].name",
        "a namespace name",
        "Chat",
        id="bad-namespace-name",
    ),
    pytest.param(
        MINIMAL + '[[namespaces]]\nname = "chat"\nprefix = "chat room"\n',
        "namespaces[0].prefix",
        "a channel prefix",
        "chat room",
        id="bad-prefix-chars",
    ),
    pytest.param(
        MINIMAL
        + '[[namespaces]]\nname = "chat"\nprefix = "chat:"\n'
        + '[[namespaces]]\nname = "talk"\nprefix = "chat:"\n',
        "namespaces[1].prefix",
        "a unique prefix (namespaces[0] has it too)",
        "chat:",
        id="duplicate-prefix",
    ),
    pytest.param(
        MINIMAL
        + '[[namespaces]]\nname = "chat"\nprefix = "chat:"\n'
        + '[[namespaces]]\nname = "chat"\nprefix = "talk:"\n',
        "namespaces[1].name",
        "a unique namespace name (namespaces[0] has it too)",
        "chat",
        id="duplicate-namespace-name",
    ),
    pytest.param(
        MINIMAL + '[[namespaces]]\nname = "default"\nprefix = "x:"\n',
        "namespaces[0].name",
        "a name other than 'default'",
        "default",
        id="reserved-default-name",
    ),
    pytest.param(
        MINIMAL + '[[namespaces]]\nname = "chat"\nprefix = "chat:"\nmax_message_bytes = 1048576\n',
        "namespaces[0].max_message_bytes",
        "at most 1047552 (limits.max_frame_bytes 1048576 - 1024)",
        1048576,
        id="message-too-large-for-frame-cap",
    ),
    pytest.param(
        MINIMAL + "[limits]\nmax_frame_bytes = 16384\n",
        "limits.max_frame_bytes",
        "at least 66560 (the implicit default namespace allows 65536-byte messages",
        16384,
        id="frame-cap-too-small-for-implicit-default",
    ),
    pytest.param(
        MINIMAL
        + '[[peers]]\nregion = "us-east"\nedge_url = "ws://h:1/v1/ws"\nnats_url = "tls://h:2"\n',
        "peers[0].region",
        "a region other than this relay's own region 'us-east'",
        "us-east",
        id="peer-is-own-region",
    ),
    pytest.param(
        MINIMAL
        + '[[peers]]\nregion = "eu-west"\nedge_url = "ws://h:1/v1/ws"\nnats_url = "tls://h:2"\n'
        + '[[peers]]\nregion = "eu-west"\nedge_url = "ws://g:1/v1/ws"\nnats_url = "tls://g:2"\n',
        "peers[1].region",
        "a unique peer region (peers[0] has it too)",
        "eu-west",
        id="duplicate-peer",
    ),
    pytest.param(
        MINIMAL
        + '[[peers]]\nregion = "eu-west"\nedge_url = "http://h:1/v1/ws"\nnats_url = "nats://h:2"\n',
        "peers[0].edge_url",
        "a URL starting with ws:// or wss://",
        "http://h:1/v1/ws",
        id="bad-edge-url-scheme",
    ),
    pytest.param(
        MINIMAL
        + '[[peers]]\nregion = "eu-west"\nedge_url = "ws://h:1/v1/ws"\nnats_url = "ws://h:2"\n',
        "peers[0].nats_url",
        "a URL starting with nats:// or tls://",
        "ws://h:2",
        id="bad-peer-nats-url-scheme",
    ),
    pytest.param(
        MINIMAL + '[nats]\nuser = "relay"\npassword_file = "p"\n',
        "nats.user",
        'no credentials with url = "embedded"',
        "relay",
        id="credentials-for-embedded-nats",
    ),
    pytest.param(
        MINIMAL + '[nats]\nurl = "nats://h:1"\nuser = "relay"\n',
        "nats.password_file",
        "set together with the other of nats.user/password_file",
        "",
        id="nats-user-without-password-file",
    ),
    pytest.param(
        MINIMAL
        + '[[peers]]\nregion = "eu-west"\nedge_url = "ws://h:1/v1/ws"\nnats_url = "tls://h:2"\n'
        + 'nats_user = "peer"\n',
        "peers[0].nats_password_file",
        "set together with the other of nats_user/nats_password_file",
        "",
        id="peer-user-without-password-file",
    ),
    pytest.param(
        MINIMAL + 'public_url = "https://relay.example.com"\n',
        "relay.public_url",
        "a URL starting with ws:// or wss://",
        "https://relay.example.com",
        id="bad-public-url-scheme",
    ),
    pytest.param(
        MINIMAL + '[nats]\nurl = "nats://a:4222,http://b:4222"\n',
        "nats.url",
        '"embedded" or URLs starting with nats:// or tls://',
        "nats://a:4222,http://b:4222",
        id="bad-nats-url-in-list",
    ),
    pytest.param(
        MINIMAL + '[nats]\nurl = "nats://"\n',
        "nats.url",
        "a nats:// URL with a host name",
        "nats://",
        id="nats-url-without-host",
    ),
    pytest.param(
        MINIMAL + "[nats]\nreplicas = 0\n",
        "nats.replicas",
        "an integer from 1 to 5",
        0,
        id="zero-replicas",
    ),
    pytest.param(
        MINIMAL + '[auth]\nmode = "password"\n',
        "auth.mode",
        "'anonymous', 'token' or 'hook'",
        "password",
        id="unknown-auth-mode",
    ),
    pytest.param(
        MINIMAL + '[auth]\nmode = "token"\n',
        "auth",
        'with mode = "token", at least one of secret_file, secret_env, public_key_files, jwks_file',
        {"mode": "token"},
        id="token-mode-without-keys",
    ),
    pytest.param(
        MINIMAL + '[auth]\nanonymous = { "a b" = ["subscribe"] }\n',
        "auth.anonymous",
        "channel patterns: a channel name, 'prefix*' or '*' (not 'a b')",
        {"a b": ["subscribe"]},
        id="anonymous-bad-pattern",
    ),
    pytest.param(
        MINIMAL + '[auth]\nanonymous = { "news:*" = ["subscribe", "fly"] }\n',
        "auth.anonymous",
        "operations from subscribe, publish, history, presence (not ['fly'])",
        {"news:*": ["subscribe", "fly"]},
        id="anonymous-unknown-op",
    ),
    pytest.param(
        MINIMAL + '[auth]\nanonymous = ["subscribe"]\n',
        "auth.anonymous",
        "a table of channel pattern = [operations]",
        ["subscribe"],
        id="anonymous-not-a-table",
    ),
]


def test_token_mode_with_key_files_and_anonymous_capabilities(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + '[auth]\nmode = "token"\nsecret_env = "RELAY_SECRET"\n'
        + 'public_key_files = ["a.pem", "b.pem"]\nleeway_s = 2.0\n'
        + 'anonymous = { "news:*" = ["subscribe", "history"] }\n',
    )
    auth = load_config(path, env={}).auth
    assert auth.mode == "token"
    assert auth.secret_env == "RELAY_SECRET"
    assert auth.public_key_files == ("a.pem", "b.pem")
    assert auth.leeway_s == 2.0
    assert auth.anonymous == (("news:*", ("subscribe", "history")),)
    assert hash(auth) == hash(load_config(path, env={}).auth)


@pytest.mark.parametrize(("text", "field", "expected", "value"), BAD_CONFIGS)
def test_bad_config_is_rejected(
    tmp_path: Path, text: str, field: str, expected: str, value: object
) -> None:
    path = write(tmp_path, text)
    issue = only_issue(load_error(path))
    assert issue.file == str(path)
    assert issue.field == field
    assert expected in issue.expected
    assert issue.value == value or issue.value is value
    assert issue.source == "file"


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[region]\nname = "Bad"\n[relay]\nid = "r1"\nport = -1\n[limits]\nmax_subscriptions = 0\n',
    )
    fields = [issue.field for issue in load_error(path).issues]
    assert fields == ["region.name", "relay.port", "limits.max_subscriptions"]


def test_catch_all_namespace_allows_a_small_frame_cap(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + "[limits]\nmax_frame_bytes = 16384\n"
        + '[[namespaces]]\nname = "all"\nprefix = ""\nmax_message_bytes = 15360\n',
    )
    cfg = load_config(path, env={})
    assert cfg.all_namespaces == cfg.namespaces


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[region]\nname = "us-east"\n[relay]\nid = \n')
    issue = only_issue(load_error(path))
    assert issue.field == "-"
    assert issue.expected == "valid TOML"
    assert "line 4" in str(issue.value) and "column" in str(issue.value)
    assert str(issue) == f"{path}: -: expected valid TOML, got {issue.value}"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    err = load_error(path)
    assert err.path == str(path)
    issue = only_issue(err)
    assert (issue.field, issue.expected, issue.value) == (
        "-",
        "an existing config file",
        "no such file",
    )
    assert str(err) == f"{path}: -: expected an existing config file, got no such file"


def test_directory_and_non_utf8_file(tmp_path: Path) -> None:
    assert only_issue(load_error(tmp_path)).expected == "a config file"
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[region]\nname = "caf\xe9"\n')
    issue = only_issue(load_error(path))
    assert (issue.field, issue.expected) == ("-", "UTF-8 text")


def test_python_construction_uses_the_same_rules() -> None:
    with pytest.raises(ValidationError, match=r"namespaces\[1\]\.prefix: expected a unique prefix"):
        make(namespaces=[{"name": "a", "prefix": "x:"}, {"name": "b", "prefix": "x:"}])


# --- environment overrides -------------------------------------------------------------------


def test_env_overrides_parse_toml_values(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "port = 8701\n")
    cfg = load_config(
        path,
        env={
            "RELAYNET_RELAY_PORT": "8702",
            "RELAYNET_RELAY_HEARTBEAT_S": "2.5",
            "RELAYNET_RELAY_SHUTDOWN_GRACE_S": "3",
            "RELAYNET_NATS_URL": "nats://127.0.0.1:4222",
            "RELAYNET_NATS_STORE_DIR": "/data",
            "RELAYNET_LIMITS_MAX_SUBSCRIPTIONS": "10",
            "RELAYNET_CONFIG": "/etc/relaynet.toml",
            "PATH": "/usr/bin",
        },
    )
    assert cfg.relay.port == 8702
    assert cfg.relay.heartbeat_s == 2.5
    assert cfg.relay.shutdown_grace_s == 3.0
    assert cfg.nats.url == "nats://127.0.0.1:4222"
    assert cfg.nats.store_dir == "/data"
    assert cfg.limits.max_subscriptions == 10  # [limits] is absent from the file


def test_env_string_fields_are_taken_verbatim(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, MINIMAL),
        env={"RELAYNET_RELAY_ID": "123", "RELAYNET_REGION_NAME": "eu-west"},
    )
    assert cfg.relay.id == "123"
    assert cfg.region.name == "eu-west"


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYNET_RELAY_PORT", "9999")
    assert load_config(write(tmp_path, MINIMAL)).relay.port == 9999


@pytest.mark.parametrize(
    ("var", "field", "expected"),
    [
        ("RELAYNET_RELAY_PROT", "relay.prot", "no such field (known fields: id, host, port,"),
        ("RELAYNET_FOO_BAR", "foo.bar", "no such section (overridable sections: region, relay,"),
        ("RELAYNET_NAMESPACES_PREFIX", "namespaces.prefix", "no environment override"),
        ("RELAYNET_PEERS", "peers", "no environment override"),
        ("RELAYNET_relay_port", "relay.port", "an upper-case variable name (RELAYNET_RELAY_PORT)"),
    ],
)
def test_env_unknown_variable_is_an_error(
    tmp_path: Path, var: str, field: str, expected: str
) -> None:
    path = write(tmp_path, MINIMAL)
    err = load_error(path, env={var: "1"})
    issue = only_issue(err)
    assert (issue.field, issue.source, issue.value) == (field, var, "1")
    assert expected in issue.expected
    assert str(err).endswith(f"(from environment {var})")


@pytest.mark.parametrize(
    ("value", "expected", "got"),
    [
        ("abc", "an integer", "'abc'"),
        ("70000", "an integer from 0 to 65535", "70000"),
        ("1\nid = 'x'", "an integer", "\"1\\nid = 'x'\""),
    ],
)
def test_env_bad_value_says_from_environment(
    tmp_path: Path, value: str, expected: str, got: str
) -> None:
    path = write(tmp_path, MINIMAL)
    err = load_error(path, env={"RELAYNET_RELAY_PORT": value})
    issue = only_issue(err)
    assert (issue.field, issue.source, issue.expected) == (
        "relay.port",
        "RELAYNET_RELAY_PORT",
        expected,
    )
    assert str(err) == (
        f"{path}: relay.port: expected {expected}, got {got} (from environment RELAYNET_RELAY_PORT)"
    )


def test_env_cross_field_error_names_the_variable(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, MINIMAL), env={"RELAYNET_LIMITS_MAX_FRAME_BYTES": "2048"})
    issue = only_issue(err)
    assert (issue.field, issue.source) == (
        "limits.max_frame_bytes",
        "RELAYNET_LIMITS_MAX_FRAME_BYTES",
    )


def test_env_and_file_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "port = 70000\n")
    err = load_error(path, env={"RELAYNET_NATS_NOPE": "x"})
    assert [(i.field, i.source) for i in err.issues] == [
        ("nats.nope", "RELAYNET_NATS_NOPE"),
        ("relay.port", "file"),
    ]


# --- namespaces ------------------------------------------------------------------------------


def test_namespace_for_picks_the_longest_prefix() -> None:
    cfg = make(
        namespaces=[
            {"name": "chat", "prefix": "chat:"},
            {"name": "vip", "prefix": "chat:vip:"},
            {"name": "dash", "prefix": "dash:"},
        ]
    )
    assert cfg.namespace_for("chat:vip:lounge").name == "vip"
    assert cfg.namespace_for("chat:lobby").name == "chat"
    assert cfg.namespace_for("chat:vip").name == "chat"
    assert cfg.namespace_for("dash:cpu").name == "dash"
    assert cfg.namespace_for("news") is DEFAULT_NAMESPACE
    assert cfg.namespace_for("") is DEFAULT_NAMESPACE


def test_namespace_for_uses_a_configured_catch_all() -> None:
    cfg = make(namespaces=[{"name": "chat", "prefix": "chat:"}, {"name": "rest", "prefix": ""}])
    assert cfg.namespace_for("news").name == "rest"
    assert cfg.namespace_for("chat:x").name == "chat"


def test_default_namespace_has_default_limits() -> None:
    assert NamespaceRule(name="default", prefix="") == DEFAULT_NAMESPACE
    assert make().namespace_for("anything") == NamespaceRule(name="default", prefix="")


def test_all_namespaces() -> None:
    assert make().all_namespaces == (DEFAULT_NAMESPACE,)
    cfg = make(namespaces=[{"name": "chat", "prefix": "chat:"}])
    assert [ns.name for ns in cfg.all_namespaces] == ["chat", "default"]
    catch_all = make(namespaces=[{"name": "default", "prefix": ""}, {"name": "a", "prefix": "a:"}])
    assert catch_all.all_namespaces == catch_all.namespaces


PREFIX_CHARS = "ab:/"


@given(
    prefixes=st.sets(st.text(alphabet=PREFIX_CHARS, max_size=4), max_size=6),
    channel=st.text(alphabet=PREFIX_CHARS, max_size=8),
)
def test_namespace_for_matches_the_longest_matching_prefix(
    prefixes: set[str], channel: str
) -> None:
    rules = [{"name": f"ns{i}", "prefix": p} for i, p in enumerate(sorted(prefixes))]
    cfg = make(namespaces=rules)
    rule = cfg.namespace_for(channel)
    assert channel.startswith(rule.prefix)
    assert rule in cfg.all_namespaces
    matching = [p for p in prefixes if channel.startswith(p)]
    assert len(rule.prefix) == max((len(p) for p in matching), default=0)


# --- error format ----------------------------------------------------------------------------


def test_config_error_str_is_one_line_per_issue(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[region]\nname = "US"\n[relay]\nid = "r1"\nport = 70000\ncolour = 1\n',
    )
    err = load_error(path, env={"RELAYNET_RELAY_HOST": "0.0.0.0", "RELAYNET_X_Y": "z"})
    lines = str(err).splitlines()
    assert len(lines) == len(err.issues) == 4
    pattern = re.compile(rf"^{re.escape(str(path))}: (\S+): expected (.+), got (.+)$")
    for line, issue in zip(lines, err.issues, strict=True):
        match = pattern.match(line)
        assert match, line
        assert match.group(1) == issue.field
        assert issue.expected in match.group(2)
    assert (
        lines[0] == f"{path}: x.y: expected no such section (overridable sections: region, "
        "relay, nats, auth, limits, federation), got 'z' (from environment RELAYNET_X_Y)"
    )
    assert f"{path}: relay.port: expected an integer from 0 to 65535, got 70000" in lines
    assert err.path == str(path)


def test_missing_value_prints_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, '[region]\nname = "us-east"\n[relay]\n')
    assert (
        str(load_error(path)) == f"{path}: relay.id: expected a value (required field), got nothing"
    )


# --- reference -------------------------------------------------------------------------------


def test_reference_lists_every_section_and_field() -> None:
    text = render_reference()
    headings = re.findall(r"^### `(.+)`$", text, flags=re.MULTILINE)
    assert headings == [
        "[region]",
        "[relay]",
        "[nats]",
        "[[namespaces]]",
        "[auth]",
        "[[hooks]]",
        "[[peers]]",
        "[limits]",
        "[federation]",
        "[presence]",
    ]
    assert text.count("| field | type | default | description |") == 10
    for model in (RegionSection, RelaySection, NatsSection, NamespaceRule, PeerSection):
        for name in model.model_fields:
            assert f"| `{name}` |" in text
    assert "| `port` | integer (0 to 65535) | `8701` |" in text
    assert all(line == line.rstrip() for line in text.splitlines())


def test_reference_module_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relay.config.reference"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == render_reference()


def test_reference_file_is_up_to_date() -> None:
    text = (REPO_ROOT / "config" / "REFERENCE.md").read_text(encoding="utf-8")
    assert text == "# Region config reference\n\n" + render_reference(), (
        "config/REFERENCE.md is stale: regenerate it with "
        "`(echo '# Region config reference'; echo; python -m relay.config.reference)"
        " > config/REFERENCE.md`"
    )
