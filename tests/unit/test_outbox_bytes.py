"""Outbox: bounded in bytes as well as frames, counted without per-frame allocations."""

from __future__ import annotations

import anyio
import pytest

from relay.adapters.outbox import Outbox
from relay.protocol.errors import CloseCode


def test_queued_bytes_over_the_bound_fail_as_slow_consumer() -> None:
    box = Outbox(1000, max_bytes=1000)
    for _ in range(9):
        box.offer(b"x" * 100)
    assert box.queued_bytes == 900 and not box.failed
    box.offer(b"x" * 100)  # exactly at the bound: still fine
    assert box.queued_bytes == 1000 and not box.failed
    box.offer(b"x")
    assert box.failed and box.close_code == (CloseCode.SLOW_CONSUMER, "slow_consumer")
    assert box.queued_bytes == 0 and len(box) == 0


def test_one_frame_bigger_than_the_bound_is_taken_when_nothing_waits() -> None:
    box = Outbox(1000, max_bytes=1000)
    box.offer(b"h" * 5000)  # a big history page
    assert not box.failed and box.queued_bytes == 5000
    box.offer(b"m")
    assert box.failed


def test_direct_writes_are_not_counted() -> None:
    written: list[bytes] = []

    def write_now(frame: bytes) -> bool:
        written.append(frame)
        return True

    box = Outbox(10, write_now, max_bytes=1000)
    for _ in range(100):
        box.offer(b"x" * 100)
    assert len(written) == 100 and box.queued_bytes == 0 and not box.failed


@pytest.mark.anyio
async def test_a_batch_being_sent_counts_until_it_is_sent() -> None:
    box = Outbox(1000, max_bytes=1000)
    for _ in range(6):
        box.offer(b"x" * 100)
    batch = await box.get_batch()
    assert len(batch) == 6 and box.queued_bytes == 600
    for _ in range(4):
        box.offer(b"y" * 100)
    assert box.queued_bytes == 1000 and not box.failed
    box.batch_sent()
    assert box.queued_bytes == 400
    box.offer(b"z" * 600)
    assert not box.failed and box.queued_bytes == 1000


@pytest.mark.anyio
async def test_put_waits_for_room_in_bytes_instead_of_failing() -> None:
    box = Outbox(1000, max_bytes=1000)
    box.offer(b"x" * 900)
    sent: list[int] = []

    async def catch_up() -> None:
        for _ in range(5):
            await box.put(b"r" * 400)
            sent.append(box.queued_bytes)

    async with anyio.create_task_group() as tg:
        tg.start_soon(catch_up)
        await anyio.wait_all_tasks_blocked()  # catch_up ran until it had to wait
        assert sent == []  # 900 + 400 > 1000: it waits
        for _ in range(6):
            batch = await box.get_batch()
            assert batch
            await anyio.wait_all_tasks_blocked()
            box.batch_sent()
            await anyio.wait_all_tasks_blocked()
            if len(sent) == 5:
                break
    assert not box.failed and len(sent) == 5 and max(sent) <= 1000
