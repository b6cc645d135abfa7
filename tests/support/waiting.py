"""Waiting on a condition with a deadline, never for a fixed time.

For state that has no event to wait on: another process, an HTTP endpoint, a relay's
internals. (A ``ProtocolClient`` waits on its own frames: ``wait_for``.) The polling is
the toolkit's (``relay.harness.toolkit.poll_until``); what the tests add is the deadline,
scaled by ``RELAYNET_TEST_TIMEOUT_FACTOR`` through ``tests.support.relays.timeout``, and a
``TimeoutError`` that says what did not happen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from relay.harness.toolkit import clock, poll_until
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
    if not await poll_until(predicate, clock() + limit, poll_s):
        raise TimeoutError(f"not within {limit:g} s: {what}")


def wait_until_blocking(
    predicate: Callable[[], bool],
    what: str,
    timeout_s: float = 10,
    *,
    poll_s: float = POLL_S,
) -> None:
    """``wait_until`` for synchronous tests (outside any event loop)."""
    anyio.run(lambda: wait_until(predicate, what, timeout_s, poll_s=poll_s))
