"""TLS on the client listener: ``[relay] tls_cert_file`` / ``tls_key_file``, checked and
loaded once before the relay starts, the advertised URL, and the warning about plain text on a
network address."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from relay import cli
from relay.adapters.tls import TlsConfigError, server_ssl_context
from relay.config.schema import RelayConfig, RelaySection
from tests.support.certs import make_server_cert


def relay_section(**fields: Any) -> RelaySection:
    return RelaySection.model_validate({"id": "r1", **fields})


def test_without_tls_nothing_is_loaded_and_the_url_is_ws() -> None:
    section = relay_section(port=8701)
    assert server_ssl_context(section) is None
    assert section.effective_public_url == "ws://127.0.0.1:8701/v1/ws"


def test_a_certificate_and_key_make_a_server_context_and_wss_urls(tmp_path: Path) -> None:
    pki = make_server_cert(tmp_path)
    section = relay_section(
        port=8701, tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file)
    )
    context = server_ssl_context(section)
    assert context is not None
    assert section.effective_public_url == "wss://127.0.0.1:8701/v1/ws"
    assert section.listen_url(9000) == "wss://127.0.0.1:9000/v1/ws"
    assert relay_section(host="::1", tls_cert_file="c", tls_key_file="k").listen_url(1) == (
        "wss://[::1]:1/v1/ws"
    )


def test_cert_and_key_go_together() -> None:
    with pytest.raises(ValueError, match=r"set together \(tls_key_file is missing\)"):
        relay_section(tls_cert_file="cert.pem")
    with pytest.raises(ValueError, match=r"set together \(tls_cert_file is missing\)"):
        relay_section(tls_key_file="key.pem")


def test_unusable_files_are_named_with_their_field(tmp_path: Path) -> None:
    pki = make_server_cert(tmp_path / "one")
    other = make_server_cert(tmp_path / "two")
    missing = tmp_path / "missing.pem"
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_text(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    cases = [
        (missing, pki.key_file, f"relay.tls_cert_file: cannot read {missing}: No such file"),
        (pki.cert_file, missing, f"relay.tls_key_file: cannot read {missing}"),
        (pki.key_file, pki.key_file, f"relay.tls_cert_file: {pki.key_file} holds no PEM cert"),
        (pki.cert_file, pki.cert_file, "relay.tls_key_file: .* holds no PEM private key"),
        (pki.cert_file, encrypted, "relay.tls_key_file: .* is encrypted"),
        (pki.cert_file, other.key_file, "the key does not belong to the certificate"),
    ]
    for cert, key, message in cases:
        section = relay_section(tls_cert_file=str(cert), tls_key_file=str(key))
        with pytest.raises(TlsConfigError, match=message):
            server_ssl_context(section)


def _cfg(**relay: Any) -> RelayConfig:
    return RelayConfig.model_validate(
        {"region": {"name": "us-east"}, "relay": {"id": "r1", **relay}}
    )


def test_relaynet_relay_refuses_to_start_with_an_unusable_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg(tls_cert_file=str(tmp_path / "none.pem"), tls_key_file=str(tmp_path / "k"))
    assert not cli._tls_usable("f.toml", cfg)
    assert "f.toml: relay.tls_cert_file: cannot read" in capsys.readouterr().err


def test_plain_text_on_a_network_address_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_server_cert(tmp_path)
    tls = {"tls_cert_file": str(pki.cert_file), "tls_key_file": str(pki.key_file)}
    with caplog.at_level(logging.WARNING, logger="relaynet"):
        assert cli._tls_usable("f.toml", _cfg(host="0.0.0.0"))
        assert cli._tls_usable("f.toml", _cfg(host="127.0.0.1"))  # loopback
        assert cli._tls_usable("f.toml", _cfg(host="0.0.0.0", **tls))
        # Behind a TLS proxy, which says so with its public URL.
        assert cli._tls_usable("f.toml", _cfg(host="0.0.0.0", public_url="wss://relay.example"))
    [record] = caplog.records
    assert "PLAIN-TEXT RELAY ON A NON-LOOPBACK ADDRESS (0.0.0.0)" in record.getMessage()
