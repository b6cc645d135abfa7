"""Running an async command from a CLI entry point, shared by the relay's and the SDK's CLIs.

Depends on nothing server-side, so ``relay.client.cli`` can use it without
importing the relay (``relay/cli.py`` can import it from here too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio


def event_loop_options() -> dict[str, object]:
    """uvloop where it is installed (Linux and macOS): the same code, a faster loop."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def run_async(func: Callable[..., Awaitable[int]], *args: object) -> int:
    """Run an async command to its exit code; Ctrl-C is 130 without a traceback (every
    command stops what it started on the way out)."""
    try:
        code: int = anyio.run(func, *args, backend_options=event_loop_options())
    except KeyboardInterrupt:
        return 130
    return code
