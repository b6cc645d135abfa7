"""The README's Python SDK example ("### Clients") runs as written against a real relay.

Only the seed URL changes (the example names the quick start's relay); the code runs in
a fresh interpreter, exactly as a user would paste it into a file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from tests.support.relays import make_config, running_relays, timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
QUICK_START_SEED = "ws://127.0.0.1:8701/v1/ws"


def clients_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Clients\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    return code + "\n"


def test_the_example_is_in_the_clients_section_and_names_the_quick_start_relay() -> None:
    code = clients_example()
    assert code.count(QUICK_START_SEED) == 1
    assert "import relay.client" in code and "anyio.run(main)" in code
    for documented in ("timeout_s=", "move_back=", "refresh_s=", "on_state=", ".history("):
        assert documented in code, documented
    for attribute in ("client.region", "message.data", "sub.position"):
        assert attribute in code, attribute


async def test_the_readme_example_runs_against_a_relay(nats_url: str) -> None:
    code = clients_example()
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        with anyio.fail_after(timeout(60)):
            done = await anyio.run_process(
                [sys.executable, "-c", code.replace(QUICK_START_SEED, relay.url)],
                check=False,
                cwd=ROOT,
            )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    lines = out.splitlines()
    assert lines[0] == "state: connecting"
    assert lines[1] == "state: connected"
    assert lines[2].startswith("connected to us-east - nearest healthy: median")
    assert lines[3] == "stored at {'us-east': 1}"
    assert lines[4] == "us-east {'text': 'hello'}"
    assert lines[5] == "history: [{'text': 'hello'}] older stored: False"
    assert lines[6] == "resume later with {'us-east': 1}"
    assert lines[7:] == ["state: closed"]
