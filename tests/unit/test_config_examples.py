"""The shipped example configs: their summaries, and that they fit together as one setup."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config.loader import load_config
from relay.config.schema import RelayConfig
from relay.config.summary import describe, format_duration

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "config" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.toml"))


def load(name: str) -> RelayConfig:
    return load_config(EXAMPLES_DIR / name, env={})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_describe_mentions_region_relay_and_every_namespace(path: Path) -> None:
    cfg = load_config(path, env={})
    text = describe(cfg)
    assert cfg.region.name in text
    assert cfg.relay.id in text
    assert cfg.relay.effective_public_url in text
    for rule in cfg.all_namespaces:
        assert rule.name in text
        assert f'prefix "{rule.prefix}"' in text
    for peer in cfg.peers:
        assert peer.region in text and peer.edge_url in text
    assert len(text.splitlines()) > 10


def test_describe_embedded_and_external_nats() -> None:
    embedded = describe(load("us-east.toml"))
    assert "embedded nats-server on 127.0.0.1:4222" in embedded
    assert ".relaynet/us-east" in embedded
    assert "(implicit)" in embedded
    external = describe(load("us-east-2.toml"))
    assert "nats://127.0.0.1:4222 (existing server)" in external
    assert "embedded" not in external


def test_describe_without_peers_and_free_port() -> None:
    cfg = RelayConfig.model_validate(
        {"region": {"name": "solo"}, "relay": {"id": "solo-1", "port": 0}}
    )
    text = describe(cfg)
    assert "a free port is picked at startup" in text
    assert "none (single region)" in text


def test_format_duration() -> None:
    assert format_duration(86400) == "1d"
    assert format_duration(5400) == "1h30m"
    assert format_duration(120) == "2m"
    assert format_duration(2.5) == "2.5s"
    assert format_duration(0) == "0s"


def test_three_regions_point_at_each_other() -> None:
    regions = {name: load(f"{name}.toml") for name in ("us-east", "eu-west", "ap-south")}
    for name, cfg in regions.items():
        assert cfg.nats.is_embedded
        assert {peer.region for peer in cfg.peers} == set(regions) - {name}
        for peer in cfg.peers:
            other = regions[peer.region]
            assert peer.edge_url == other.relay.effective_public_url
            assert peer.nats_url == f"nats://127.0.0.1:{other.nats.embedded_port}"
    assert len({cfg.relay.port for cfg in regions.values()}) == 3
    assert len({cfg.nats.embedded_port for cfg in regions.values()}) == 3
    assert len({cfg.nats.store_dir for cfg in regions.values()}) == 3
    assert len({cfg.namespaces for cfg in regions.values()}) == 1  # same rules everywhere


def test_second_us_east_relay_shares_the_region() -> None:
    first, second = load("us-east.toml"), load("us-east-2.toml")
    assert second.region == first.region
    assert (second.relay.id, second.relay.port) == ("us-east-2", 8711)
    assert second.nats.servers == (f"nats://127.0.0.1:{first.nats.embedded_port}",)
    assert second.namespaces == first.namespaces
    assert second.peers == first.peers


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_section_is_commented(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("[") and not line.startswith("[[peers]]"):
            before = [prev for prev in lines[:i] if prev.strip()]
            assert before and before[-1].startswith("#"), f"{path.name}: {line} has no comment"
