"""deploy/: the compose file, the Kubernetes manifests, the NATS configs and the image agree
with each other and with the config schema (no Docker, no cluster needed)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
import pytest
import yaml

from relay.adapters.embedded_nats import (
    RELAY_USER,
    find_nats_server,
    peer_user,
    region_peer_permissions,
)
from relay.config.loader import load_config
from relay.config.schema import RelayConfig, RelaySection
from tests.deploy.local_compose import COMPOSE, DEPLOY, REGIONS, compose_configs, deploy_script

KUBERNETES = DEPLOY / "kubernetes"
NATS_NODES = 3
# What a SIGTERMed relay takes beyond relay.shutdown_grace_s: the acks of publishes in flight
# (relay/node.py waits shutdown_grace_s + 3) and closing NATS.
DRAIN_MARGIN_S = 3 + 2


def compose() -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def services(kind: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if name.startswith(kind)}


def assert_env_overrides_exist(env: dict[str, str], config: Path) -> None:
    """Every RELAYNET_* variable is a real override of the schema (the loader says which
    are not), and the config still validates with them."""
    relaynet = {k: v for k, v in env.items() if k.startswith("RELAYNET_")}
    load_config(config, env=relaynet)


# --- compose ---------------------------------------------------------------------------------


def test_compose_has_three_regions_of_three_nats_nodes_and_two_relays() -> None:
    nats = services("nats-")
    nats.pop("nats-auth")
    relays = services("relay-")
    assert sorted(nats) == sorted(
        f"nats-{r}-{i}" for r in REGIONS for i in range(1, NATS_NODES + 1)
    )
    assert sorted(relays) == sorted(f"relay-{r}-{i}" for r in REGIONS for i in (1, 2))
    configs = compose_configs()
    assert sorted(configs) == sorted(name.removeprefix("relay-") for name in relays)
    for cfg in configs.values():
        assert cfg.nats.replicas == NATS_NODES


def test_compose_relays_publish_their_config_port_and_advertise_it() -> None:
    configs = compose_configs()
    for name, service in services("relay-").items():
        cfg = configs[name.removeprefix("relay-")]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts["/config/relay.toml"] == f"./config/{cfg.relay.id}.toml"
        assert (COMPOSE / mounts["/config/relay.toml"]).is_file()
        assert service["ports"] == [f"{cfg.relay.port}:{cfg.relay.port}"]
        assert cfg.relay.host == "0.0.0.0"
        assert urlsplit(cfg.relay.effective_public_url).port == cfg.relay.port
        assert mounts["/auth"] == "nats-auth"
        env = service.get("environment", {})
        assert_env_overrides_exist(env, COMPOSE / mounts["/config/relay.toml"])


def test_compose_relays_reach_their_cluster_and_their_peers() -> None:
    configs = compose_configs()
    nats = services("nats-")
    public: dict[str, set[str]] = {cfg.region.name: set() for cfg in configs.values()}
    for cfg in configs.values():
        public[cfg.region.name].add(cfg.relay.effective_public_url)
    for cfg in configs.values():
        region = cfg.region.name
        hosts = [urlsplit(url) for url in cfg.nats.servers]
        assert [(u.hostname, u.port) for u in hosts] == [
            (f"nats-{region}-{i}", 4222) for i in range(1, NATS_NODES + 1)
        ]
        assert all(u.hostname in nats for u in hosts)
        assert cfg.nats.user == RELAY_USER
        assert cfg.nats.password_file == f"/auth/{region}/auth/{RELAY_USER}.password"
        assert sorted(p.region for p in cfg.peers) == sorted(set(REGIONS) - {region})
        for peer in cfg.peers:
            assert urlsplit(peer.nats_url).hostname in nats
            assert urlsplit(peer.nats_url).hostname.startswith(f"nats-{peer.region}-")  # type: ignore[union-attr]
            assert peer.edge_url in public[peer.region]
            assert peer.nats_user == peer_user(region)
            assert peer.nats_password_file == (
                f"/auth/{peer.region}/auth/{peer_user(region)}.password"
            )


def test_compose_nats_nodes_run_the_generated_config_of_their_region() -> None:
    nats = services("nats-")
    auth = nats.pop("nats-auth")
    configs = sorted(f"/config/{relay_id}.toml" for relay_id in compose_configs())
    assert sorted(a for a in auth["command"] if not a.startswith("--")) == configs
    assert "--uid=10001" in auth["command"]  # the image's USER: relays read the passwords
    for name, service in nats.items():
        region = name.removeprefix("nats-").rsplit("-", 1)[0]
        assert f"--config=/auth/{region}/nats.conf" in service["command"]
        assert f"--server_name={name}" in service["command"]
        assert f"--client_advertise={name}:4222" in service["command"]
        assert service["depends_on"]["nats-auth"]["condition"] == "service_completed_successfully"
        assert f"{name}:/data" in service["volumes"]


def test_compose_nats_templates_form_one_cluster_per_region() -> None:
    configs = compose_configs()
    for region in REGIONS:
        template = json.loads((COMPOSE / "nats" / f"{region}.json").read_text())
        cluster = template["cluster"]
        assert cluster["name"] == region
        assert cluster["routes"] == [
            f"nats://nats-{region}-{i}:{cluster['port']}" for i in range(1, NATS_NODES + 1)
        ]
        assert template["port"] == 4222
        assert template["jetstream"]["store_dir"] == "/data"
        for cfg in configs.values():
            if cfg.region.name == region:
                # The embedded server's max_file_store is store_budget_bytes; so here.
                assert template["jetstream"]["max_file_store"] == cfg.nats.store_budget_bytes
                assert cfg.reserved_store_bytes <= cfg.nats.store_budget_bytes


def test_nats_auth_makes_the_users_and_permissions_the_relays_need(tmp_path: Path) -> None:
    nats_auth = deploy_script("nats_auth")
    paths = sorted(str(p) for p in (COMPOSE / "config").glob("*.toml"))
    argv = ["--out", str(tmp_path), "--nats-dir", str(COMPOSE / "nats"), *paths]
    assert nats_auth.main(argv) == 0
    by_region: dict[str, RelayConfig] = {c.region.name: c for c in compose_configs().values()}
    for region, cfg in by_region.items():
        conf = tmp_path / region / "nats.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        server = json.loads(conf.read_text())
        users = {u["user"]: u for u in server["authorization"]["users"]}
        assert sorted(users) == sorted([RELAY_USER, *(peer_user(p.region) for p in cfg.peers)])
        assert "permissions" not in users[RELAY_USER]
        permissions = region_peer_permissions(cfg)
        for peer in cfg.peers:
            assert users[peer_user(peer.region)]["permissions"] == permissions[peer.region]
        for user, entry in users.items():
            password = tmp_path / region / "auth" / f"{user}.password"
            # The config holds a bcrypt hash of the password, never the password itself.
            secret = password.read_text().strip()
            assert entry["password"].startswith("$2a$") and secret not in entry["password"]
            assert bcrypt.checkpw(secret.encode(), entry["password"].encode())
            assert stat.S_IMODE(password.stat().st_mode) == 0o600
        check = subprocess.run(
            [find_nats_server(), "-c", str(conf), "-t"], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
    # A second run keeps the passwords (a restarted compose network keeps working).
    before = (tmp_path / "us-east" / "auth" / "relay.password").read_text()
    assert nats_auth.main(argv) == 0
    assert (tmp_path / "us-east" / "auth" / "relay.password").read_text() == before


def test_nats_auth_refuses_relays_of_one_region_that_disagree(tmp_path: Path) -> None:
    nats_auth = deploy_script("nats_auth")
    other = tmp_path / "us-east-3.toml"
    text = (COMPOSE / "config" / "us-east-1.toml").read_text()
    # Another stream name: the peers' permissions name the streams.
    text = text.replace('id = "us-east-1"', 'id = "us-east-3"')
    other.write_text(text.replace('name = "dash"', 'name = "dashboards"'))
    with pytest.raises(nats_auth.DeployError, match="same ones"):
        nats_auth.region_configs([COMPOSE / "config" / "us-east-1.toml", other])
    with pytest.raises(nats_auth.DeployError, match="makes the users itself"):
        nats_auth.server_conf({"authorization": {}}, {})


# --- the image -------------------------------------------------------------------------------


def test_the_image_checks_its_health_and_exposes_the_relay_port() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    exposed = re.search(r"^EXPOSE (.+)$", final, re.M)
    assert exposed is not None
    default_port = RelaySection.model_fields["port"].default
    assert str(default_port) in exposed.group(1).split()
    assert re.search(
        r"^HEALTHCHECK .*\\\n\s+CMD \[\"python\", \"/opt/relaynet/healthcheck.py\"\]$", final, re.M
    )
    assert "COPY deploy/healthcheck.py deploy/nats_auth.py /opt/relaynet/" in final
    assert 'CMD ["relay", "--config", "/config/relay.toml"]' in final


def test_healthcheck_asks_the_configured_port() -> None:
    health = deploy_script("healthcheck")
    assert health.health_url({}, {}) == "http://127.0.0.1:8701/v1/health"
    assert health.health_url({"port": 8702, "host": "0.0.0.0"}, {}) == (
        "http://127.0.0.1:8702/v1/health"
    )
    assert health.health_url({"port": 8702}, {"RELAYNET_RELAY_PORT": "9000"}) == (
        "http://127.0.0.1:9000/v1/health"
    )
    assert health.health_url({"host": "::1", "tls_cert_file": "c.pem"}, {}) == (
        "https://[::1]:8701/v1/health"
    )
    relay_table = health.read_relay_table(str(COMPOSE / "config" / "eu-west-2.toml"))
    assert health.health_url(relay_table, {}) == "http://127.0.0.1:8712/v1/health"
    assert health.read_relay_table("/nonexistent/relay.toml") == {}


# --- Kubernetes ------------------------------------------------------------------------------


def base_documents() -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all((KUBERNETES / "base" / "relay.yaml").read_text()))
    return {doc["kind"]: doc for doc in docs}


def region_config(region: str) -> RelayConfig:
    return load_config(KUBERNETES / region / "relay.toml", env={})


def test_kubernetes_deployment_probes_ports_and_drain_fit_every_region() -> None:
    docs = base_documents()
    assert sorted(docs) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/ping"
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    for kind in ("PodDisruptionBudget",):
        assert (
            docs[kind]["spec"]["selector"]["matchLabels"]
            == (docs["Deployment"]["spec"]["selector"]["matchLabels"])
        )
    assert (
        docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == (docs["Deployment"]["metadata"]["name"])
    )
    assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    assert container["args"][-1] == "/config/relay.toml"
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    prestop_s = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", prestop[-1]).group(1))  # type: ignore[union-attr]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for region in REGIONS:
        cfg = region_config(region)
        assert cfg.relay.port == port
        assert cfg.relay.host == "0.0.0.0"
        assert pod["terminationGracePeriodSeconds"] >= (
            prestop_s + cfg.relay.shutdown_grace_s + DRAIN_MARGIN_S
        )
        assert cfg.nats.replicas == NATS_NODES
        files = [cfg.nats.password_file, cfg.nats.tls_ca_file]
        files += [p.nats_password_file for p in cfg.peers] + [p.nats_tls_ca_file for p in cfg.peers]
        for file in files:
            assert any(file.startswith(path + "/") for path in mounts.values()), file
        # RELAYNET_RELAY_ID as the pod makes it: a valid relay id of that region.
        pod_env = {"RELAYNET_RELAY_ID": f"relaynet-{region}-relay-5d8f7b9c4-x2x9z"}
        assert_env_overrides_exist(pod_env, KUBERNETES / region / "relay.toml")
        assert_env_overrides_exist(
            {k: v for k, v in env.items() if "$(" not in v}, KUBERNETES / region / "relay.toml"
        )
    assert mounts["config"] == "/config"


def test_kubernetes_peers_use_tls_and_their_own_user() -> None:
    for region in REGIONS:
        cfg = region_config(region)
        assert all(url.startswith("tls://") for url in cfg.nats.servers)
        assert sorted(p.region for p in cfg.peers) == sorted(set(REGIONS) - {region})
        for peer in cfg.peers:
            assert peer.nats_url.startswith("tls://") and peer.nats_tls_ca_file
            assert not peer.nats_allow_plaintext
            assert peer.nats_user == peer_user(region)
            assert peer.edge_url.startswith("wss://")


def test_nats_chart_values_carry_the_users_and_permissions_the_relays_need() -> None:
    for region in REGIONS:
        cfg = region_config(region)
        values = yaml.safe_load((KUBERNETES / region / "nats-values.yaml").read_text())
        config = values["config"]
        assert config["cluster"] == {"enabled": True, "replicas": NATS_NODES}
        assert config["jetstream"]["enabled"] is True
        max_size = config["jetstream"]["fileStore"]["maxSize"]
        assert int(max_size.removesuffix("Gi")) << 30 == cfg.nats.store_budget_bytes
        assert config["nats"]["tls"]["enabled"] is True
        users = {u["user"]: u for u in config["merge"]["authorization"]["users"]}
        assert sorted(users) == sorted([RELAY_USER, *(peer_user(p.region) for p in cfg.peers)])
        permissions = region_peer_permissions(cfg)
        for peer in cfg.peers:
            assert users[peer_user(peer.region)]["permissions"] == permissions[peer.region], (
                f"{region}/nats-values.yaml: peer-{peer.region}'s permissions drifted from "
                "relay.adapters.embedded_nats.peer_permissions"
            )
        env = values["container"]["env"]
        for user in users.values():
            variable = re.fullmatch(r"<< \$([A-Z_]+) >>", user["password"])
            assert variable is not None, user["user"]
            ref = env[variable.group(1)]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "relaynet-nats-users", "key": user["user"]}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for kustomize) missing")
@pytest.mark.parametrize("region", REGIONS)
def test_kustomize_renders_each_region(region: str) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / region)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(rendered)}
    assert {doc["metadata"]["namespace"] for doc in docs.values()} == {f"relaynet-{region}"}
    config_map = docs["ConfigMap"]
    assert config_map["data"]["relay.toml"] == (KUBERNETES / region / "relay.toml").read_text()
    volumes = docs["Deployment"]["spec"]["template"]["spec"]["volumes"]
    config_volume = next(v for v in volumes if v["name"] == "config")
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
