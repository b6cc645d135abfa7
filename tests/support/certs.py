"""Certificates made at test time (``cryptography``, which PyJWT[crypto] brings): a private
CA (``make_ca``), certificates it signs for 127.0.0.1 and localhost (``make_cert``), and both
at once for a TLS listener (``make_server_cert``)."""

from __future__ import annotations

import datetime
import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Ca:
    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Cert:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class ServerCert:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """What a client that trusts this CA (and nothing else) verifies with."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name) or "cert"


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{_slug(name)}.pem", directory / f"{_slug(name)}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def make_ca(directory: Path, name: str = "ca") -> Ca:
    """A self-signed CA; its certificate and key as ``<name>.pem`` / ``<name>.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"relaynet test CA {name}"))
        .issuer_name(_name(f"relaynet test CA {name}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = _write(directory, name, cert, key)
    return Ca(name, cert, key, cert_file, key_file)


def make_cert(directory: Path, ca: Ca, name: str, hosts: tuple[str, ...] = LOCAL_HOSTS) -> Cert:
    """A certificate ``ca`` signed for ``hosts`` (IP addresses or DNS names), for servers
    and clients alike; as ``<name>.pem`` / ``<name>.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    start, end = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = _write(directory, name, cert, key)
    return Cert(cert_file, key_file)


def make_server_cert(directory: Path, hosts: tuple[str, ...] = LOCAL_HOSTS) -> ServerCert:
    """A fresh CA and a server certificate it signed for ``hosts``, in ``directory``."""
    ca = make_ca(directory, "relay-ca")
    cert = make_cert(directory, ca, "relay", hosts)
    return ServerCert(ca.cert_file, cert.cert_file, cert.key_file)
