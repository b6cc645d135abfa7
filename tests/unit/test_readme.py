"""The README shows code that the suite runs, not a copy that can rot."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_simulation_example_is_the_tested_one() -> None:
    example = (ROOT / "tests/simulate/test_example.py").read_text().split("\n", 1)[1].rstrip()
    assert example in (ROOT / "README.md").read_text()
