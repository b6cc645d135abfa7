"""Region writers run as a relay runs them, for unit tests on the in-memory log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio

from federation.adapters.region_writer import RegionWriter
from federation.service import RECHECK_INTERVAL_S


@asynccontextmanager
async def running_writers(writers: Sequence[RegionWriter]) -> AsyncIterator[None]:
    """The writers running, each re-reading the heads of channels with waiting remote
    messages twice a second, as the federation service has them do: a remote message
    offered to one writer only may wait for a predecessor that only another one has.
    Stopped on the way out."""

    async def recheck() -> None:
        while True:
            await anyio.sleep(RECHECK_INTERVAL_S)
            for writer in writers:
                writer.recheck()

    async with anyio.create_task_group() as tg:
        for writer in writers:
            await tg.start(writer.run)
        tg.start_soon(recheck)
        yield
        tg.cancel_scope.cancel()
