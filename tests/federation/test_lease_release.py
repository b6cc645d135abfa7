"""A stopping federation instance gives its lease up: another takes the link over at its
next attempt, not a whole TTL later (what stalled cross-region delivery in rolling
deploys, found by ``relaynet bench rollout``)."""

from __future__ import annotations

import time

import anyio
import pytest
from nats.aio.client import Client as NatsClient

from federation.adapters.lease import Lease
from tests.support.relays import timeout
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TTL_S = 6.0  # each tries every 2 s; taking over after release must not wait for the TTL


async def test_a_cancelled_holder_releases_and_a_sibling_takes_over_before_the_ttl(
    nats_url: str,
) -> None:
    nc = NatsClient()
    await nc.connect(nats_url)
    try:
        first = Lease(nc, "RLY_TEST_LEASE", "link-x", "first", TTL_S)
        second = Lease(nc, "RLY_TEST_LEASE", "link-x", "second", TTL_S)
        async with anyio.create_task_group() as tg:
            holder = anyio.CancelScope()

            async def run_first() -> None:
                with holder:
                    await first.run()

            tg.start_soon(run_first)
            await wait_until(lambda: first.held, "first holds the lease", timeout(10))
            tg.start_soon(second.run)
            assert not second.held  # its create finds the first's key: it waits
            stopped = time.monotonic()
            holder.cancel()
            await wait_until(lambda: second.held, "second takes the lease over", timeout(10))
            taken_after = time.monotonic() - stopped
            assert not first.held
            tg.cancel_scope.cancel()
        # Its next attempt (every TTL/3), not the TTL: generous for a loaded machine.
        assert taken_after < TTL_S * 0.6, taken_after
    finally:
        await nc.close()
