"""Credentials and TLS of every NATS URL (issue #12): what the config accepts and refuses,
and what ``federation.adapters.nats_client`` makes of it (files read, TLS context, errors
that name the field and the file)."""

from __future__ import annotations

import ssl
import textwrap
from pathlib import Path

import nkeys
import pytest

from federation.adapters.nats_client import (
    NatsOptionsError,
    connect_kwargs,
    describe_failure,
    is_refusal,
)
from federation.settings import NatsConnectOptions
from relay.adapters.embedded_nats import RELAY_USER, password_file, region_nats_options
from relay.config.loader import ConfigError, load_config
from relay.config.schema import RelayConfig
from tests.support.certs import make_server_cert

MINIMAL = '[region]\nname = "us-east"\n[relay]\nid = "r1"\n'
PEER = '[[peers]]\nregion = "eu-west"\nedge_url = "ws://h:1/v1/ws"\n'
#: A user seed (of a zero key: fine where nothing is signed).
SEED = nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_USER)


def load(tmp_path: Path, text: str) -> RelayConfig:
    path = tmp_path / "relay.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, env={})


BAD = [
    pytest.param(
        PEER + 'nats_url = "nats://nats.eu-west.example:4222"\n',
        "peers[0].nats_url",
        "TLS to a peer that is not on loopback: a tls:// URL or nats_tls_ca_file",
        id="remote-peer-without-tls",
    ),
    pytest.param(
        PEER + 'nats_url = "nats://10.0.0.7:4222"\n',
        "peers[0].nats_url",
        "nats_allow_plaintext = true accepts that",
        id="remote-peer-ip-without-tls",
    ),
    pytest.param(
        PEER + 'nats_url = "tls://h:4222"\nnats_allow_plaintext = true\n',
        "peers[0].nats_allow_plaintext",
        "false when TLS is configured for the peer",
        id="plaintext-allowed-and-tls",
    ),
    pytest.param(
        '[nats]\nurl = "nats://h:4222"\nuser = "relay"\npassword_file = "p"\n'
        'nkey_seed_file = "relay.nk"\n',
        "nats.nkey_seed_file",
        "one way to authenticate: user with password_file, nkey_seed_file or creds_file "
        "(not also user)",
        id="nats-password-and-nkey",
    ),
    pytest.param(
        PEER + 'nats_url = "tls://h:4222"\nnats_nkey_seed_file = "a.nk"\n'
        'nats_creds_file = "a.creds"\n',
        "peers[0].nats_creds_file",
        "one way to authenticate: nats_user with nats_password_file, nats_nkey_seed_file or "
        "nats_creds_file (not also nats_nkey_seed_file)",
        id="peer-nkey-and-creds",
    ),
    pytest.param(
        '[nats]\nurl = "tls://h:4222"\ntls_cert_file = "c.pem"\n',
        "nats.tls_key_file",
        "set together with the other of nats.tls_cert_file/tls_key_file",
        id="client-cert-without-key",
    ),
    pytest.param(
        PEER + 'nats_url = "tls://h:4222"\nnats_tls_key_file = "k.pem"\n',
        "peers[0].nats_tls_cert_file",
        "set together with the other of nats_tls_cert_file/nats_tls_key_file",
        id="peer-key-without-cert",
    ),
    pytest.param(
        '[nats]\nnkey_seed_file = "relay.nk"\n',
        "nats.nkey_seed_file",
        'no credentials with url = "embedded" (it makes its own)',
        id="nkey-for-embedded",
    ),
    pytest.param(
        '[nats]\ntls_ca_file = "ca.pem"\n',
        "nats.tls_ca_file",
        'with url = "embedded", only together with embedded_tls_cert_file',
        id="ca-for-plaintext-embedded",
    ),
    pytest.param(
        '[nats]\nembedded_tls_cert_file = "c.pem"\n',
        "nats.embedded_tls_key_file",
        "set together with the other of nats.embedded_tls_cert_file/embedded_tls_key_file",
        id="embedded-cert-without-key",
    ),
    pytest.param(
        '[nats]\nembedded_tls_cert_file = "c.pem"\nembedded_tls_key_file = "k.pem"\n'
        'tls_cert_file = "client.pem"\ntls_key_file = "client-key.pem"\n',
        "nats.tls_cert_file",
        'no client certificate with url = "embedded"',
        id="client-cert-for-embedded",
    ),
    pytest.param(
        '[nats]\nurl = "nats://h:4222"\nembedded_tls_cert_file = "c.pem"\n'
        'embedded_tls_key_file = "k.pem"\n',
        "nats.embedded_tls_cert_file",
        'only with url = "embedded"',
        id="embedded-tls-for-external-nats",
    ),
]


@pytest.mark.parametrize(("text", "field", "expected"), BAD)
def test_bad_nats_settings_are_refused(
    tmp_path: Path, text: str, field: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, MINIMAL + text)
    issues = {issue.field: issue for issue in info.value.issues}
    assert field in issues, str(info.value)
    assert expected in issues[field].expected, str(info.value)


@pytest.mark.parametrize(
    "peer",
    [
        'nats_url = "nats://127.0.0.1:4222"\n',
        'nats_url = "nats://127.0.0.2:4222"\n',
        'nats_url = "nats://[::1]:4222"\n',
        'nats_url = "nats://localhost:4222"\n',
        'nats_url = "tls://nats.eu-west.example:4222"\n',
        'nats_url = "nats://nats.eu-west.example:4222"\nnats_tls_ca_file = "ca.pem"\n',
        'nats_url = "nats://nats.eu-west.example:4222"\nnats_allow_plaintext = true\n',
    ],
)
def test_peers_on_loopback_or_with_tls_or_plaintext_allowed_are_fine(
    tmp_path: Path, peer: str
) -> None:
    assert load(tmp_path, MINIMAL + PEER + peer).peers[0].region == "eu-west"


def test_peer_options_carry_every_setting(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL
        + PEER
        + 'nats_url = "tls://h:4222"\nnats_nkey_seed_file = "w.nk"\nnats_tls_ca_file = "ca.pem"\n'
        'nats_tls_cert_file = "c.pem"\nnats_tls_key_file = "k.pem"\n',
    )
    (peer,) = cfg.region_settings().peers
    assert peer.nats == NatsConnectOptions(
        ("tls://h:4222",),
        nkey_seed_file="w.nk",
        tls_ca_file="ca.pem",
        tls_cert_file="c.pem",
        tls_key_file="k.pem",
        config_prefix="peers[0].nats_",
    )
    assert peer.nats_url == "tls://h:4222" and peer.nats.requires_tls


def test_the_region_options_of_an_embedded_server(tmp_path: Path) -> None:
    plain = load(tmp_path, MINIMAL + f'[nats]\nstore_dir = "{tmp_path}"\n').nats
    options = region_nats_options(plain, "nats://127.0.0.1:4222")
    assert (options.user, options.password_file) == (
        RELAY_USER,
        str(password_file(tmp_path, RELAY_USER)),
    )
    assert not options.requires_tls
    served = load(
        tmp_path,
        MINIMAL + '[nats]\nembedded_tls_cert_file = "c.pem"\nembedded_tls_key_file = "k.pem"\n',
    ).nats
    # A self-signed certificate is its own CA; a CA given wins.
    assert region_nats_options(served, "nats://127.0.0.1:1").tls_ca_file == "c.pem"
    with_ca = served.model_copy(update={"tls_ca_file": "ca.pem"})
    assert region_nats_options(with_ca, "nats://127.0.0.1:1").tls_ca_file == "ca.pem"


def test_external_region_options_split_the_urls() -> None:
    nats = RelayConfig.model_validate(
        {
            "region": {"name": "us-east"},
            "relay": {"id": "r1"},
            "nats": {"url": "tls://a:1, tls://b:2", "creds_file": "r.creds"},
        }
    ).nats
    options = region_nats_options(nats, nats.url)
    assert options.servers == ("tls://a:1", "tls://b:2")
    assert (options.creds_file, options.config_prefix) == ("r.creds", "nats.")


# --- what the client makes of the options ----------------------------------------------


def options(**fields: str) -> NatsConnectOptions:
    return NatsConnectOptions(("nats://127.0.0.1:4222",), config_prefix="nats.", **fields)


def test_missing_files_are_named_with_their_field(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    for fields, field in [
        ({"user": "relay", "password_file": missing}, "nats.password_file"),
        ({"nkey_seed_file": missing}, "nats.nkey_seed_file"),
        ({"creds_file": missing}, "nats.creds_file"),
    ]:
        with pytest.raises(NatsOptionsError) as info:
            connect_kwargs(options(**fields))
        assert str(info.value) == f"{field}: cannot read {missing} (No such file or directory)"
    with pytest.raises(NatsOptionsError, match=r"^nats\.tls_ca_file: cannot use .*nope"):
        connect_kwargs(options(tls_ca_file=missing))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(NatsOptionsError, match=r"^nats\.password_file: .*empty is empty$"):
        connect_kwargs(options(user="relay", password_file=str(empty)))


def test_files_that_hold_the_wrong_thing_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    with pytest.raises(NatsOptionsError, match="does not hold an nkey user seed"):
        connect_kwargs(options(nkey_seed_file=str(junk)))
    # nats-py would read this one for ever looking for the JWT.
    with pytest.raises(NatsOptionsError, match=r"is not a NATS \.creds file"):
        connect_kwargs(options(creds_file=str(junk)))
    with pytest.raises(NatsOptionsError, match=r"^nats\.tls_ca_file: cannot use"):
        connect_kwargs(options(tls_ca_file=str(junk)))
    pki = make_server_cert(tmp_path / "pki")
    with pytest.raises(NatsOptionsError, match=r"^nats\.tls_cert_file/tls_key_file: cannot use"):
        connect_kwargs(
            options(
                tls_ca_file=str(pki.ca_file),
                tls_cert_file=str(pki.cert_file),
                tls_key_file=str(junk),
            )
        )


def test_credentials_and_tls_become_nats_py_arguments(tmp_path: Path) -> None:
    password = tmp_path / "relay.password"
    password.write_text("  s3cret \n")
    assert connect_kwargs(options(user="relay", password_file=str(password))) == {
        "servers": ["nats://127.0.0.1:4222"],
        "user": "relay",
        "password": "s3cret",
    }
    seed = tmp_path / "relay.nk"
    seed.write_bytes(SEED + b"\n")
    assert nkeys.from_seed(bytearray(SEED)).public_key.startswith(b"U")
    assert connect_kwargs(options(nkey_seed_file=str(seed)))["nkeys_seed"] == str(seed)
    creds = tmp_path / "relay.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\nx.y.z\n------END NATS USER JWT------\n"
        "-----BEGIN USER NKEY SEED-----\n" + SEED.decode() + "\n------END USER NKEY SEED------\n"
    )
    assert connect_kwargs(options(creds_file=str(creds)))["user_credentials"] == str(creds)

    pki = make_server_cert(tmp_path / "pki")
    context = connect_kwargs(
        options(
            tls_ca_file=str(pki.ca_file),
            tls_cert_file=str(pki.cert_file),
            tls_key_file=str(pki.key_file),
        )
    )["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    # A tls:// URL alone asks for TLS, checked against the system's CAs.
    system = NatsConnectOptions(("tls://nats.example:4222",))
    assert system.requires_tls and "tls" in connect_kwargs(system)
    assert "tls" not in connect_kwargs(options())


def test_failures_are_told_in_words_an_operator_can_act_on() -> None:
    refused = ssl.SSLCertVerificationError(1, "certificate verify failed")
    refused.verify_message = "unable to get local issuer certificate"
    text = describe_failure(refused, options(tls_ca_file="/etc/ca.pem"))
    assert text == (
        "TLS: the server's certificate was refused (unable to get local issuer certificate); "
        "it must be signed by a CA in nats.tls_ca_file (/etc/ca.pem) and name the host of "
        "the URL"
    )
    assert "the system's CAs (no nats.tls_ca_file given)" in describe_failure(refused, options())
    assert is_refusal(refused)
    assert is_refusal(Exception("nats: 'Authorization Violation'"))
    assert not is_refusal(ConnectionRefusedError(111, "Connection refused"))
    assert describe_failure(TimeoutError(), options()) == "TimeoutError()"
