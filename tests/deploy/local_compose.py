"""deploy/compose as local processes: what the compose file runs, on loopback.

Each NATS node is a nats-server process whose config is the compose region's template
(``deploy/compose/nats/<region>.json``) with only its addresses moved to free loopback ports
(cluster port, routes, monitoring port), plus the ``authorization`` that
``deploy/nats_auth.py`` makes from the region's relay configs. Each relay runs with its
compose config (``deploy/compose/config/<id>.toml``) with only addresses and file paths
moved. Everything else (cluster name, JetStream limits, replicas, namespaces, users and
permissions, peers) is what ``docker compose up`` runs.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio

from relay.adapters.embedded_nats import RELAY_USER, ensure_passwords, password_file, peer_user
from relay.config.loader import load_config
from relay.config.schema import RelayConfig
from relay.harness.network import FAST_FEDERATION
from relay.harness.toolkit import NatsServerProcess, free_ports

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
REGIONS = ("us-east", "eu-west", "ap-south")
NODES = 3


def deploy_script(name: str) -> ModuleType:
    """``deploy/<name>.py`` as a module (deploy/ is not a package: the image runs them)."""
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_configs() -> dict[str, RelayConfig]:
    """The compose relay configs by relay id, loaded as the relays load them."""
    configs = {}
    for path in sorted((COMPOSE / "config").glob("*.toml")):
        cfg = load_config(path, env={})
        configs[cfg.relay.id] = cfg
    return configs


class NodeProcess(NatsServerProcess):
    """A cluster node: the toolkit's nats-server process, with the config given here
    instead of one the toolkit writes (the flags it adds set only ports and store)."""

    def __init__(
        self, store_dir: Path, name: str, conf: Path, port: int, monitor_port: int
    ) -> None:
        super().__init__(store_dir, name=name, port=port)
        self.conf = conf
        self.monitor_port = monitor_port

    def _write_config(self) -> Path:
        return self.conf

    async def healthy(self) -> bool:
        """What the compose file's NATS health check asks: ``/healthz`` answers 200 (in a
        cluster: JetStream is up and its meta group has a leader)."""
        try:
            async with await anyio.connect_tcp("127.0.0.1", self.monitor_port) as stream:
                await stream.send(b"GET /healthz HTTP/1.0\r\n\r\n")
                head = await stream.receive()
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            return False
        return head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))


@dataclass
class LocalCompose:
    """The compose network's files, moved to loopback under ``workdir``."""

    workdir: Path
    regions: tuple[str, ...] = REGIONS
    nodes: dict[str, list[NodeProcess]] = field(default_factory=dict)
    relay_ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nats_auth = deploy_script("nats_auth")
        self.configs = compose_configs()
        ports = iter(free_ports(3 * NODES * len(self.regions) + len(self.configs)))
        self.relay_ports = {relay_id: next(ports) for relay_id in self.configs}
        by_region = self.nats_auth.region_configs(sorted((COMPOSE / "config").glob("*.toml")))
        for region in self.regions:
            template = json.loads((COMPOSE / "nats" / f"{region}.json").read_text())
            client, cluster, monitor = ([next(ports) for _ in range(NODES)] for _ in range(3))
            routes = [f"nats://127.0.0.1:{port}" for port in cluster]
            cfg = by_region[region]
            passwords = ensure_passwords(self.auth_dir(region), (p.region for p in cfg.peers))
            block = self.nats_auth.authorization(cfg, passwords)
            self.nodes[region] = []
            for i in range(NODES):
                name = f"nats-{region}-{i + 1}"
                local = {
                    **template,
                    "http_port": monitor[i],
                    "cluster": {**template["cluster"], "port": cluster[i], "routes": routes},
                    # The store is the toolkit's --store_dir.
                    "jetstream": {
                        k: v for k, v in template["jetstream"].items() if k != "store_dir"
                    },
                }
                store = self.workdir / name
                store.mkdir(parents=True)
                conf = store / "nats.conf"
                conf.write_text(self.nats_auth.server_conf(local, block))
                node = NodeProcess(store, name, conf, client[i], monitor[i])
                self.nodes[region].append(node)

    def auth_dir(self, region: str) -> Path:
        """Where the region's passwords are (the compose volume's ``/auth/<region>``)."""
        return self.workdir / "auth" / region

    def all_nodes(self) -> Iterable[NodeProcess]:
        for nodes in self.nodes.values():
            yield from nodes

    def nats_urls(self, region: str) -> list[str]:
        return [f"nats://127.0.0.1:{node.port}" for node in self.nodes[region]]

    def relay_config(self, relay_id: str, **relay: Any) -> RelayConfig:
        """The compose config of ``relay_id`` with loopback addresses and local paths."""
        cfg = self.configs[relay_id]
        region = cfg.region.name
        data = cfg.model_dump()
        data["relay"].update(
            host="127.0.0.1", port=self.relay_ports[relay_id], public_url=None, **relay
        )
        data["nats"].update(
            url=",".join(self.nats_urls(region)),
            password_file=str(password_file(self.auth_dir(region), RELAY_USER)),
        )
        data["federation"].update(FAST_FEDERATION)
        first_relays = {c.region.name: i for i, c in self.configs.items() if i.endswith("-1")}
        for peer in data["peers"]:
            seed = self.nats_urls(peer["region"])[0]
            assert peer["nats_url"].endswith(f"nats-{peer['region']}-1:4222"), peer
            peer.update(
                nats_url=seed,
                edge_url=f"ws://127.0.0.1:{self.relay_ports[first_relays[peer['region']]]}/v1/ws",
                nats_password_file=str(
                    password_file(self.auth_dir(peer["region"]), peer_user(region))
                ),
            )
        return RelayConfig.model_validate(data)
