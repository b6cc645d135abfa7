"""The README's "Issuing a token" commands, run as written, print a token that verifies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt

ROOT = Path(__file__).resolve().parents[2]


def readme_token_commands() -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split("**Issuing a token**", 1)[1]
    block = after.split("```", 2)[1]
    return "\n".join(line.strip() for line in block.splitlines()).strip()


def test_the_readme_token_commands_issue_a_verifiable_token(tmp_path: Path) -> None:
    commands = readme_token_commands()
    assert "relaynet token issue" in commands
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euc", commands], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip().splitlines()[-1]
    secret = (tmp_path / "secret").read_bytes().strip()
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["caps"] == {"chat:*": ["subscribe", "publish", "history", "presence"]}
    assert claims["exp"] - claims["iat"] == 3600
