"""TLS and nkey credentials on every NATS connection (issue #12, NATS as a closed control
plane): the embedded nats-server serves TLS with a certificate made here, a peer region
links to it over tls:// with the CA and its peer user, a plaintext client is refused, a
relay trusting the wrong CA says so and exits, and a relay authenticates to an external
nats-server with an nkey seed."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import nkeys
import pytest

from federation.adapters.nats_client import NatsClient
from federation.settings import NatsConnectOptions
from relay.adapters import child_process
from relay.adapters.embedded_nats import (
    RELAY_USER,
    nats_server_argv,
    nats_url_from_ports_file,
    password_file,
    peer_user,
)
from relay.config.schema import RelayConfig
from relay.harness.network import FAST_FEDERATION
from relay.harness.toolkit import free_ports, relay_config, wait_started
from tests.support.certs import make_server_cert
from tests.support.relays import config_file, running_relays, timeout
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def region(name: str, port: int, store: Path, peer: dict[str, Any], **nats: str) -> RelayConfig:
    return relay_config(
        nats_url="embedded",
        region=name,
        relay_id=f"{name}-1",
        nats={"embedded_port": port, "store_dir": str(store), **nats},
        peers=[{"edge_url": "ws://127.0.0.1:1/v1/ws", **peer}],
        federation=dict(FAST_FEDERATION),
    )


async def plaintext_exchange(port: int, password: str) -> tuple[bytes, bytes]:
    """The server's INFO, and its answer to a plaintext CONNECT with valid credentials."""
    async with await anyio.connect_tcp("127.0.0.1", port) as sock:
        info = b""
        with anyio.fail_after(timeout(10)):
            while b"\r\n" not in info:
                info += await sock.receive()
        connect = {"user": RELAY_USER, "pass": password, "verbose": False, "pedantic": False}
        await sock.send(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        answer = b""
        with anyio.move_on_after(timeout(10)):
            try:
                while b"\r\n" not in answer:
                    answer += await sock.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass  # closed on us: refused too
    return info, answer


async def test_regions_link_over_tls_and_plaintext_is_refused(tmp_path: Path) -> None:
    pki = make_server_cert(tmp_path / "pki")  # a CA, and a certificate for 127.0.0.1
    stranger_ca = make_server_cert(tmp_path / "stranger").ca_file
    east_port, west_port = free_ports(2)
    east_store, west_store = tmp_path / "us-east", tmp_path / "eu-west"
    east = region(
        "us-east",
        east_port,
        east_store,
        {
            "region": "eu-west",
            "nats_url": f"nats://127.0.0.1:{west_port}",  # loopback: plaintext allowed
            "nats_user": peer_user("us-east"),
            "nats_password_file": str(password_file(west_store, peer_user("us-east"))),
        },
        embedded_tls_cert_file=str(pki.cert_file),
        embedded_tls_key_file=str(pki.key_file),
        tls_ca_file=str(pki.ca_file),
    )
    west = region(
        "eu-west",
        west_port,
        west_store,
        {
            "region": "us-east",
            "nats_url": f"tls://127.0.0.1:{east_port}",
            "nats_user": peer_user("eu-west"),
            # Made by us-east's relay at its start: the link retries until it exists.
            "nats_password_file": str(password_file(east_store, peer_user("eu-west"))),
            "nats_tls_ca_file": str(pki.ca_file),
        },
    )
    async with running_relays(east, west) as (east_node, west_node):
        # The embedded server serves TLS only: credentials in plaintext get no PONG.
        relay_password = password_file(east_store, RELAY_USER).read_text().strip()
        info, answer = await plaintext_exchange(east_port, relay_password)
        assert b'"tls_required":true' in info, info
        assert b"PONG" not in answer, answer

        # A message published in us-east reaches eu-west over the TLS link.
        async with protocol_client(west_node.url) as west_sub:
            await west_sub.subscribe("chat:tls")
            async with protocol_client(east_node.url) as pub:
                await pub.publish("chat:tls", {"from": "east"})
            await west_sub.wait_messages("chat:tls", 1, timeout(30))

        # Another relay of us-east over tls:// with the CA works.
        second = relay_config(
            nats_url=f"tls://127.0.0.1:{east_port}",
            region="us-east",
            relay_id="us-east-2",
            nats={
                "user": RELAY_USER,
                "password_file": str(password_file(east_store, RELAY_USER)),
                "tls_ca_file": str(pki.ca_file),
            },
        )
        async with running_relays(second) as (second_node,):
            async with protocol_client(east_node.url) as east_sub:
                await east_sub.subscribe("news")
                async with protocol_client(second_node.url) as pub:
                    await pub.publish("news", {"n": 1})
                await east_sub.wait_messages("news", 1, timeout(20))

        # Trusting another CA, a relay says why in one line and exits 1.
        stranger = second.model_copy(
            update={
                "nats": second.nats.model_copy(
                    update={"tls_ca_file": str(stranger_ca), "connect_timeout_s": 2.0}
                )
            }
        )
        path = config_file(tmp_path / "stranger.toml", stranger)
        proc = await anyio.run_process(
            [sys.executable, "-m", "relay.cli", "relay", "--config", str(path)], check=False
        )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "TLS: the server's certificate was refused" in errors[0], err
    assert f"nats.tls_ca_file ({stranger_ca})" in errors[0], err


def server_argv(folder: Path, config: dict[str, object], jetstream: bool) -> list[str]:
    (folder / "ports").mkdir(parents=True)
    conf = folder / "nats.conf"
    conf.write_text(json.dumps(config))
    argv = nats_server_argv(
        folder / "store", ports_dir=folder / "ports", log=folder / "nats-server.log", config=conf
    )
    return argv if jetstream else [arg for arg in argv if arg != "--jetstream"]


@asynccontextmanager
async def nats_server(
    folder: Path, config: dict[str, object], jetstream: bool = True
) -> AsyncIterator[str]:
    """A nats-server with ``config``; yields its URL, stops it on exit."""
    argv = server_argv(folder, config, jetstream)
    log, ports = folder / "nats-server.log", folder / "ports"
    proc = child_process.spawn(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        yield await wait_started(
            proc, lambda: nats_url_from_ports_file(ports, proc.pid), "nats-server", log, 20
        )
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(proc.wait)


async def exchange(options: NatsConnectOptions) -> bytes:
    """Connect with ``options``, and get one message through the server."""
    nc = NatsClient()
    try:
        await nc.connect_with(options, allow_reconnect=False, connect_timeout=5)
        sub = await nc.subscribe("ping")
        await nc.publish("ping", b"pong")
        return (await sub.next_msg(timeout(10))).data
    finally:
        await nc.close()


def nkey_user(folder: Path, name: str) -> tuple[str, Path]:
    """A new nkey user: its public key, and its seed in a file (mode 0600)."""
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    path = folder / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return nkeys.from_seed(bytearray(seed)).public_key.decode(), path


async def test_a_relay_authenticates_with_an_nkey(tmp_path: Path) -> None:
    public, seed_file = nkey_user(tmp_path, "relay")
    _, stranger_seed = nkey_user(tmp_path, "stranger")
    config = {"authorization": {"users": [{"nkey": public}]}}
    async with nats_server(tmp_path / "nats", config) as url:
        cfg = relay_config(nats_url=url, nats={"nkey_seed_file": str(seed_file)})
        async with running_relays(cfg) as (node,):
            async with protocol_client(node.url) as client:
                await client.subscribe("news")
                await client.publish("news", {"n": 1})
                await client.wait_messages("news", 1, timeout(20))
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await exchange(NatsConnectOptions((url,), nkey_seed_file=str(stranger_seed)))
        # TLS configured, a server without it: refused before any credentials are sent.
        ca_file = make_server_cert(tmp_path / "pki").ca_file
        with pytest.raises(Exception, match="does not require TLS"):
            await exchange(
                NatsConnectOptions((url,), nkey_seed_file=str(seed_file), tls_ca_file=str(ca_file))
            )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_jwt(issuer: Any, subject: str, kind: str, **fields: object) -> str:
    """A NATS JWT (``ed25519-nkey``) for ``subject``, signed by the ``issuer`` key pair."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {
        "jti": secrets.token_hex(16).upper(),
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "sub": subject,
        "name": kind,
        "nats": {"type": kind, "version": 2, **fields},
    }
    body = _b64(json.dumps(claims).encode())
    return f"{header}.{body}.{_b64(issuer.sign(f'{header}.{body}'.encode()))}"


def key_pair(prefix: int) -> tuple[bytes, Any]:
    seed = nkeys.encode_seed(secrets.token_bytes(32), prefix)
    return seed, nkeys.from_seed(bytearray(seed))


async def test_a_creds_file_authenticates(tmp_path: Path) -> None:
    """Decentralized auth: an operator trusts an account, which signed the user's JWT."""
    _, operator = key_pair(nkeys.PREFIX_BYTE_OPERATOR)
    _, account = key_pair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, user = key_pair(nkeys.PREFIX_BYTE_USER)
    account_public = account.public_key.decode()
    unlimited = {"subs": -1, "data": -1, "payload": -1, "conn": -1, "wildcards": True}
    config = {
        "operator": signed_jwt(operator, operator.public_key.decode(), "operator"),
        "resolver": "MEMORY",
        "resolver_preload": {
            account_public: signed_jwt(operator, account_public, "account", limits=unlimited)
        },
    }
    user_jwt = signed_jwt(
        account, user.public_key.decode(), "user", pub={}, sub={}, subs=-1, data=-1, payload=-1
    )
    creds = tmp_path / "relay.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    # JetStream in operator mode wants a system account: the connection is what is tested.
    async with nats_server(tmp_path / "nats", config, jetstream=False) as url:
        assert await exchange(NatsConnectOptions((url,), creds_file=str(creds))) == b"pong"
        # The same JWT with another key's seed cannot sign the server's nonce.
        stolen = tmp_path / "stolen.creds"
        other_seed, _ = key_pair(nkeys.PREFIX_BYTE_USER)
        stolen.write_text(creds.read_text().replace(user_seed.decode(), other_seed.decode()))
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await exchange(NatsConnectOptions((url,), creds_file=str(stolen)))
