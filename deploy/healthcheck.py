"""The relay image's HEALTHCHECK: exit 0 if the relay in this container answers
``GET /v1/health`` with 200, else 1 (503 while NATS or JetStream is unavailable).

    python healthcheck.py [CONFIG]

The image has no curl, and importing relaynet's config schema every few seconds would cost
more than the check: this reads only what it needs, with the standard library. The port and
scheme come from ``RELAYNET_RELAY_PORT`` / ``RELAYNET_RELAY_TLS_CERT_FILE`` when set (the
relay applies the same overrides), else from ``[relay]`` of ``CONFIG`` (default
``/config/relay.toml``, the image's default command), else 8701 over plain HTTP. A relay
listening on one specific address is asked there, any other on 127.0.0.1. With TLS the
certificate is not verified: the check talks to its own container.
"""

from __future__ import annotations

import os
import ssl
import sys
import tomllib
import urllib.error
import urllib.request

DEFAULT_CONFIG = "/config/relay.toml"
DEFAULT_PORT = 8701
TIMEOUT_S = 3.0
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def health_url(relay: dict[str, object], env: dict[str, str]) -> str:
    """The URL of ``/v1/health`` for the ``[relay]`` table ``relay`` and environment ``env``."""
    port = env.get("RELAYNET_RELAY_PORT") or relay.get("port", DEFAULT_PORT)
    host = str(env.get("RELAYNET_RELAY_HOST") or relay.get("host", "127.0.0.1"))
    tls = env.get("RELAYNET_RELAY_TLS_CERT_FILE") or relay.get("tls_cert_file")
    if host in _WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/v1/health"


def read_relay_table(path: str) -> dict[str, object]:
    """``[relay]`` of the config at ``path``; empty if there is no such file or table."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get("relay", {})
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return table if isinstance(table, dict) else {}


def check(url: str) -> tuple[bool, str]:
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as answer:
            return answer.status == 200, f"{url}: {answer.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code} {exc.read(200).decode(errors='replace').strip()}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def main(argv: list[str]) -> int:
    config = argv[1] if len(argv) > 1 else DEFAULT_CONFIG
    healthy, said = check(health_url(read_relay_table(config), dict(os.environ)))
    print(said)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
