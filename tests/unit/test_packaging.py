"""What `pip install relaynet` puts on a user's machine, and that it does not collide with them."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import relay

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "config" / "examples" / "us-east.toml"


def test_wheel_installs_only_relay_and_federation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), "."],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("relaynet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {
        name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")
    }
    assert top == {"relay", "federation"}
    assert {"relay/py.typed", "federation/py.typed"} <= set(names)
    assert any(name.endswith("licenses/LICENSE") for name in names)


def test_a_users_config_module_does_not_shadow_ours(tmp_path: Path) -> None:
    # An application folder with its own config.py, run from there, as the issue reported.
    (tmp_path / "config.py").write_text("raise SystemExit('the user config module was imported')\n")
    done = subprocess.run(
        [sys.executable, "-m", "relay", "config", "check", str(EXAMPLE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "us-east" in done.stdout


def test_version_is_the_distributions() -> None:
    assert relay.__version__ == importlib.metadata.version("relaynet")
    done = subprocess.run(
        [sys.executable, "-m", "relay", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"relaynet {relay.__version__}"
