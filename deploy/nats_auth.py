"""NATS server configs with relaynet's users, for a region that runs on a NATS cluster.

    python nats_auth.py --out DIR --nats-dir TEMPLATES [--uid UID] CONFIG...

For each region named by the relay configs (``CONFIG``: the region's relay TOML files),
this writes into ``DIR/<region>/``:

* ``auth/relay.password`` and ``auth/peer-<peer>.password``: a random password per user,
  made on the first run and kept after (mode 0600, owned by ``--uid``: the relays' user);
* ``nats.conf``: the region's template ``TEMPLATES/<region>.json`` (cluster, JetStream,
  ports: what the operator writes) with ``authorization`` added: the ``relay`` user and one
  ``peer-<region>`` user per ``[[peers]]`` region, with the permissions a relay's embedded
  nats-server gives them.

The users and permissions come from ``relay.adapters.embedded_nats`` (the functions the
embedded server and every tool's nats-server are configured with), run from the installed
relaynet of the same image as the relays, so they cannot drift from what the relays need.
No secret is written anywhere but ``DIR``. The compose file runs this as a one-shot service;
in Kubernetes it makes the Secrets (deploy/kubernetes/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from relay.adapters.embedded_nats import (
    auth_dir,
    ensure_passwords,
    region_peer_permissions,
    server_config,
)
from relay.config.loader import ConfigError, load_config
from relay.config.schema import RelayConfig

#: Keys ``nats_auth`` owns in the server config; a template that sets them is refused.
OWNED_KEYS = ("authorization", "accounts", "no_auth_user")


class DeployError(Exception):
    """A config or template that cannot make a working region; the message says why."""


def region_configs(paths: list[Path]) -> dict[str, RelayConfig]:
    """The relay configs by region; every relay of a region must give its peers the same
    permissions (same namespaces, same peers), since they share one NATS."""
    by_region: dict[str, RelayConfig] = {}
    for path in paths:
        try:
            # The file as written: the relays' environment overrides are not ours to guess.
            cfg = load_config(path, env={})
        except ConfigError as exc:
            raise DeployError(str(exc)) from None
        region = cfg.region.name
        first = by_region.setdefault(region, cfg)
        if region_peer_permissions(first) != region_peer_permissions(cfg):
            raise DeployError(
                f"{path}: region {region!r} has relays with different [[namespaces]] or "
                "[[peers]]: every relay of a region must list the same ones"
            )
    return by_region


def authorization(cfg: RelayConfig, passwords: dict[str, str]) -> dict[str, object]:
    """The ``authorization`` block for ``cfg``'s region: exactly the embedded server's."""
    peers = region_peer_permissions(cfg)
    block = json.loads(server_config(passwords, peers))["authorization"]
    assert isinstance(block, dict)
    return block


def server_conf(template: dict[str, object], block: dict[str, object]) -> str:
    """The template with ``block`` as its ``authorization`` (nats-server reads JSON)."""
    owned = [key for key in OWNED_KEYS if key in template]
    if owned:
        raise DeployError(
            f"the NATS template sets {', '.join(owned)}: nats_auth makes the users itself"
        )
    return json.dumps({**template, "authorization": block}, indent=2) + "\n"


def _write_private(path: Path, text: str, uid: int | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that existed
    if uid is not None:
        os.chown(path, uid, uid)


def render_region(cfg: RelayConfig, out: Path, templates: Path, uid: int | None = None) -> Path:
    """Passwords and ``nats.conf`` of ``cfg``'s region under ``out``; returns the conf."""
    region = cfg.region.name
    template_file = templates / f"{region}.json"
    try:
        template = json.loads(template_file.read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"NATS template {template_file}: {exc}") from None
    if not isinstance(template, dict):
        raise DeployError(f"NATS template {template_file}: a JSON object expected")
    folder = out / region
    passwords = ensure_passwords(folder, (peer.region for peer in cfg.peers))
    if uid is not None:
        for path in (folder, auth_dir(folder), *auth_dir(folder).iterdir()):
            os.chown(path, uid, uid)
    conf = folder / "nats.conf"
    _write_private(conf, server_conf(template, authorization(cfg, passwords)), uid)
    return conf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG")
    parser.add_argument("--out", type=Path, required=True, help="where the files go")
    parser.add_argument(
        "--nats-dir", type=Path, required=True, help="folder of the <region>.json templates"
    )
    parser.add_argument("--uid", type=int, help="owner of the files (the relays' uid)")
    args = parser.parse_args(argv)
    try:
        for region, cfg in sorted(region_configs(args.configs).items()):
            conf = render_region(cfg, args.out, args.nats_dir, args.uid)
            print(f"{region}: {conf}, users relay and " + ", ".join(
                f"peer-{peer.region}" for peer in cfg.peers
            ))  # fmt: skip
    except DeployError as exc:
        print(f"nats_auth: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
