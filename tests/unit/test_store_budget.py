"""Stream byte limits per namespace and the region's store budget (issue #12): the config
refuses limits JetStream could not reserve, naming the fields, and carries them to the
streams and the embedded server."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.adapters.embedded_nats import server_config
from relay.config.loader import ConfigError, load_config
from relay.config.schema import (
    DEFAULT_NAMESPACE_MAX_BYTES,
    DEFAULT_STORE_BUDGET_BYTES,
    MIN_STREAM_BYTES,
    RelayConfig,
)

MINIMAL = '[region]\nname = "us-east"\n[relay]\nid = "r1"\n'
MIB = 1 << 20


def make(**sections: object) -> RelayConfig:
    data: dict[str, object] = {"region": {"name": "us-east"}, "relay": {"id": "r1"}}
    data.update(sections)
    return RelayConfig.model_validate(data)


def issues(tmp_path: Path, text: str) -> list[tuple[str | None, object, str]]:
    path = tmp_path / "relay.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return [(issue.field, issue.value, issue.expected) for issue in info.value.issues]


def test_defaults_fit_the_default_budget() -> None:
    cfg = make()
    assert cfg.nats.store_budget_bytes == DEFAULT_STORE_BUDGET_BYTES == 10 * 1024**3
    (default,) = cfg.all_namespaces
    assert default.max_bytes == DEFAULT_NAMESPACE_MAX_BYTES == 1024**3
    assert cfg.reserved_store_bytes == DEFAULT_NAMESPACE_MAX_BYTES
    assert cfg.region_settings().namespaces[0].max_bytes == DEFAULT_NAMESPACE_MAX_BYTES


def test_a_budget_too_small_for_the_namespaces_names_every_field(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.dedent(
        """\
        [nats]
        store_budget_bytes = 100000000
        [[namespaces]]
        name = "chat"
        prefix = "chat:"
        max_bytes = 50000000
        [[namespaces]]
        name = "game"
        prefix = "game:"
        ordering = "total"
        max_bytes = 20000000
        """
    )
    ((field, value, expected),) = issues(tmp_path, text)
    assert field == "nats.store_budget_bytes" and value == 100_000_000
    # chat 50 MB + game twice (its causal and its total-order stream) + the implicit default
    reserved = 50_000_000 + 2 * 20_000_000 + DEFAULT_NAMESPACE_MAX_BYTES
    assert f"at least {reserved}" in expected
    assert "namespaces[0].max_bytes 50000000" in expected
    assert "namespaces[1].max_bytes 20000000 x 2 (total order)" in expected
    assert "the implicit default namespace's 1073741824" in expected
    assert 'prefix = ""' in expected  # how to change the implicit one's


def test_namespaces_that_fit_exactly_are_accepted() -> None:
    cfg = make(
        nats={"store_budget_bytes": 3 * 8 * MIB},
        namespaces=[
            {"name": "all", "prefix": "", "max_bytes": 8 * MIB},
            {"name": "game", "prefix": "game:", "ordering": "total", "max_bytes": 8 * MIB},
        ],
    )
    assert cfg.reserved_store_bytes == 3 * 8 * MIB
    game = cfg.region_settings().namespace_for("game:1")
    assert (game.max_bytes, game.total_order) == (8 * MIB, True)


def test_zero_is_no_limit_of_its_own_and_reserves_nothing() -> None:
    cfg = make(
        nats={"store_budget_bytes": MIN_STREAM_BYTES},
        namespaces=[{"name": "all", "prefix": "", "max_bytes": 0}],
    )
    assert cfg.reserved_store_bytes == 0
    assert cfg.region_settings().namespaces[0].max_bytes == 0


@pytest.mark.parametrize("value", [1, MIN_STREAM_BYTES - 1, -1])
def test_a_tiny_or_negative_max_bytes_is_a_field_error(tmp_path: Path, value: int) -> None:
    text = MINIMAL + f'[[namespaces]]\nname = "chat"\nprefix = "chat:"\nmax_bytes = {value}\n'
    ((field, got, expected),) = issues(tmp_path, text)
    assert (field, got) == ("namespaces[0].max_bytes", value)
    assert "0" in expected and str(MIN_STREAM_BYTES) in expected


def test_a_tiny_budget_is_a_field_error(tmp_path: Path) -> None:
    ((field, got, expected),) = issues(tmp_path, MINIMAL + "[nats]\nstore_budget_bytes = 1000\n")
    assert (field, got) == ("nats.store_budget_bytes", 1000)
    assert str(MIN_STREAM_BYTES) in expected


def test_the_budget_can_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    cfg = load_config(path, env={"RELAYNET_NATS_STORE_BUDGET_BYTES": str(2 << 30)})
    assert cfg.nats.store_budget_bytes == 2 << 30


@given(
    st.lists(
        st.tuples(st.integers(0, 64), st.booleans()),
        min_size=1,
        max_size=5,
    ),
    st.integers(4, 512),
)
def test_accepted_exactly_when_the_reservations_fit(
    rules: list[tuple[int, bool]], budget_mib: int
) -> None:
    namespaces = [
        {
            "name": f"ns{i}",
            "prefix": "" if i == 0 else f"ns{i}:",
            "max_bytes": size * MIB if size == 0 or size >= 4 else 4 * MIB,
            "ordering": "total" if total else "causal",
        }
        for i, (size, total) in enumerate(rules)
    ]
    reserved = sum(ns["max_bytes"] * (2 if ns["ordering"] == "total" else 1) for ns in namespaces)
    try:
        cfg = make(nats={"store_budget_bytes": budget_mib * MIB}, namespaces=namespaces)
    except ValueError as exc:
        assert reserved > budget_mib * MIB, exc
        assert "nats.store_budget_bytes" in str(exc)
    else:
        assert reserved <= budget_mib * MIB == cfg.nats.store_budget_bytes
        assert cfg.reserved_store_bytes == reserved


def test_the_embedded_server_gets_the_budget_as_its_file_store() -> None:
    passwords = {"relay": "r", "peer": "p"}
    config = json.loads(server_config(passwords, {}, max_file_store=123 * MIB))
    assert config["jetstream"] == {"max_file_store": 123 * MIB}
    assert "jetstream" not in json.loads(server_config(passwords, {}))
