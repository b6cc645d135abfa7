"""The README's HTTP API example runs as written against a real relay (only the URL of
the quick start's relay changes), in a fresh interpreter."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from tests.support.relays import make_config, running_relays, timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
QUICK_START = "http://127.0.0.1:8701"


def http_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### From a backend", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0] + "\n"


async def test_the_readme_http_example_runs_against_a_relay(nats_url: str) -> None:
    code = http_example()
    assert code.count(QUICK_START) == 1 and "HttpClient" in code
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        url = f"http://127.0.0.1:{relay.port}"
        with anyio.fail_after(timeout(60)):
            done = await anyio.run_process(
                [sys.executable, "-c", code.replace(QUICK_START, url)], check=False, cwd=ROOT
            )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert out.splitlines() == ["stored once: True", "[{'status': 'shipped'}]"]
