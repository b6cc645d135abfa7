"""Several regions on one machine: NATS per region in Docker, relays, links with latency.

Needs the ``simulate`` extra (testcontainers, the Docker SDK): ``pip install 'relaynet[simulate]'``.
"""

from __future__ import annotations

import importlib.util

EXTRA_HINT = "pip install 'relaynet[simulate]'"


def missing_extra() -> str | None:
    """None when the simulate extra is installed, else a one-line reason naming the fix."""
    absent = [
        name for name in ("testcontainers", "docker") if importlib.util.find_spec(name) is None
    ]
    if not absent:
        return None
    return f"{' and '.join(absent)} not installed: {EXTRA_HINT}"
