"""Writing a config back out as a TOML file that the loader reads to the same config.

Tools that start relays (tests, the simulator, benchmarks, the demo) build a
``RelayConfig`` in code and hand relay processes a file: one writer, built on
tomli-w, so no tool writes TOML by hand.
"""

from __future__ import annotations

from pathlib import Path

import tomli_w

from relay.config.schema import RelayConfig


def dump_toml(cfg: RelayConfig) -> str:
    """Only what differs from the defaults, so the file reads like one a person wrote."""
    data = cfg.model_dump(mode="json", exclude_defaults=True, by_alias=True)
    return tomli_w.dumps(data)


def write_config(path: Path, cfg: RelayConfig) -> Path:
    path.write_text(dump_toml(cfg))
    return path
