"""A direct subscription against a real nats-server: every message reaches the handler in
order with the headers it named, one that raises does not stop the next, and nothing is
left queued in nats-py or delivered after unsubscribing."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import pytest

from federation.adapters.nats_client import NatsClient

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_direct_subscription_delivers_in_order_and_survives_a_raising_handler(
    nats_url: str,
) -> None:
    errors: list[BaseException] = []

    async def on_error(exc: BaseException) -> None:
        errors.append(exc)

    sub_nc, pub_nc = NatsClient(), NatsClient()
    await sub_nc.connect(nats_url, error_cb=on_error)
    await pub_nc.connect(nats_url)
    got: list[tuple[bytes, dict[str, str]]] = []
    five = anyio.Event()

    def handler(data: bytes, headers: Mapping[str, str]) -> None:
        got.append((data, dict(headers)))
        if len(got) == 5:
            five.set()
        if data == b"2":
            raise RuntimeError("the handler's own failure")

    try:
        sub = await sub_nc.subscribe_direct("direct.x", handler, ["Nats-Sequence", "Absent"])
        await sub_nc.flush()
        for i in range(5):
            headers = {"Nats-Sequence": str(i), "Other": "x"} if i != 3 else None
            await pub_nc.publish("direct.x", str(i).encode(), headers=headers)
        await pub_nc.flush()
        with anyio.move_on_after(10):
            await five.wait()
        # What a failure needs to be understood (it failed once in CI, not reproduced):
        # what arrived, what the error callback saw, and what the parser still holds.
        state = (
            f"got {[d for d, _ in got]}, errors {errors!r}, connected {sub_nc.is_connected}, "
            f"parser buffer {bytes(sub_nc._ps.buf)!r}, pending {sub._pending_queue.qsize()}"
        )
        assert [d for d, _ in got] == [b"0", b"1", b"2", b"3", b"4"], state
        assert got[1][1] == {"Nats-Sequence": "1"}  # only the names asked for
        assert got[3][1] == {}  # no headers at all
        assert [str(e) for e in errors] == ["the handler's own failure"]
        assert sub._pending_queue.qsize() == 0  # nats-py never held one

        await sub.unsubscribe()
        await pub_nc.publish("direct.x", b"late")
        await pub_nc.flush()
        await sub_nc.flush()
        assert len(got) == 5
    finally:
        await sub_nc.close()
        await pub_nc.close()
