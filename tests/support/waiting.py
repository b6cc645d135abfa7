"""Waiting on a condition with a deadline, never for a fixed time.

For state that has no event to wait on: another process, an HTTP endpoint, a relay's
internals. (A ``ProtocolClient`` waits on its own frames: ``wait_for``.) Deadlines scale
with ``RELAYNET_TEST_TIMEOUT_FACTOR`` through ``tests.support.relays.timeout``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import anyio

from tests.support.relays import timeout

POLL_S = 0.02


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout_s: float = 10,
    *,
    poll_s: float = POLL_S,
) -> None:
    """Return as soon as ``predicate()`` (a function or a coroutine function) is true;
    ``TimeoutError`` naming ``what`` if it is not within ``timeout(timeout_s)``."""
    limit = timeout(timeout_s)
    with anyio.move_on_after(limit) as scope:
        while True:
            result = predicate()
            if await result if inspect.isawaitable(result) else result:
                return
            await anyio.sleep(poll_s)  # the poll interval, not a wait for anything
    assert scope.cancelled_caught
    raise TimeoutError(f"not within {limit:g} s: {what}")


def wait_until_blocking(
    predicate: Callable[[], bool],
    what: str,
    timeout_s: float = 10,
    *,
    poll_s: float = POLL_S,
) -> None:
    """``wait_until`` for synchronous tests."""
    limit = timeout(timeout_s)
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not within {limit:g} s: {what}")
        time.sleep(poll_s)  # the poll interval, not a wait for anything
