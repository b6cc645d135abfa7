"""The client listener's TLS context, from ``[relay] tls_cert_file`` / ``tls_key_file``.

Read once, when the edge is built (and by ``relaynet relay`` before it starts
anything): a relay that cannot load its certificate refuses to start with an
error naming the field and the file, rather than serving plain text or failing
at the first handshake. Replacing the files takes a restart.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from relay.config.schema import RelaySection

PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
PEM_PRIVATE_KEY = b"PRIVATE KEY-----"  # PKCS#8, RSA or EC, all PEM private keys end so


class TlsConfigError(Exception):
    """The configured certificate or key cannot be used."""


def _read(field: str, path: str, marker: bytes, what: str) -> None:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"relay.{field}: cannot read {path}: {exc.strerror}") from None
    if marker not in data:
        raise TlsConfigError(f"relay.{field}: {path} holds no PEM {what}")
    if what == "private key" and b"ENCRYPTED" in data:
        raise TlsConfigError(
            f"relay.{field}: {path} is encrypted; the relay needs the key unencrypted "
            "(protect it with file permissions)"
        )


def server_ssl_context(relay: RelaySection) -> ssl.SSLContext | None:
    """The listener's TLS context, or None when TLS is not configured. Raises
    ``TlsConfigError``."""
    if relay.tls_cert_file is None or relay.tls_key_file is None:
        return None
    _read("tls_cert_file", relay.tls_cert_file, PEM_CERTIFICATE, "certificate")
    _read("tls_key_file", relay.tls_key_file, PEM_PRIVATE_KEY, "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(relay.tls_cert_file, relay.tls_key_file)
    except ssl.SSLError as exc:
        why = (
            "the key does not belong to the certificate"
            if "KEY_VALUES_MISMATCH" in str(exc)
            else f"not a usable certificate and key ({exc.reason or exc})"
        )
        raise TlsConfigError(
            f"relay.tls_cert_file / relay.tls_key_file: {relay.tls_cert_file}, "
            f"{relay.tls_key_file}: {why}"
        ) from None
    return context
