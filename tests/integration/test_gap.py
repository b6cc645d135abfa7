"""No silent gap (issue #9, item 5): a relay whose live feed missed messages that the
stream no longer holds closes its subscribers with a reconnectable code instead of
carrying on past the hole; they resume from their positions and are told plainly."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from relay.harness.linkproxy import LinkProxy
from relay.protocol.errors import CloseCode
from relay.simulate.client import protocol_client
from tests.support.nats import nats_server
from tests.support.relays import make_config, running_relays, timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHANNEL = "tiny:gap"


async def test_a_gap_the_stream_no_longer_holds_closes_subscribers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Three messages of history: what is published while the relay is cut off from NATS
    # pushes the first of them out of the stream before it can read them.
    namespaces = [{"name": "tiny", "prefix": "tiny:", "history_max_messages": 3}]
    with nats_server(tmp_path / "nats") as url:
        port = int(url.rsplit(":", 1)[1])
        async with anyio.create_task_group() as tg:
            proxy = LinkProxy("127.0.0.1", port, name="nats-of-a")
            await tg.start(proxy.run)
            behind_proxy = make_config(
                nats_url=f"nats://127.0.0.1:{proxy.port}", relay_id="a", namespaces=namespaces
            )
            direct = make_config(nats_url=url, relay_id="b", namespaces=namespaces)
            async with running_relays(behind_proxy, direct) as (a, b):
                async with protocol_client(a.url) as sub, protocol_client(b.url) as pub:
                    await sub.subscribe(CHANNEL)
                    first = await pub.publish(CHANNEL, 0, id="m0")
                    await sub.wait_messages(CHANNEL, 1)
                    proxy.cut()
                    for n in range(1, 8):
                        await pub.publish(CHANNEL, n, id=f"m{n}")
                    with caplog.at_level(logging.ERROR, logger="relaynet.feeds"):
                        proxy.heal()
                        await sub.wait_closed(seconds=30)
                    assert sub.closed_code == CloseCode.GAP, sub.closed_code
                    # Nothing after m0 was shown: no message past the hole.
                    assert [m["id"] for m in sub.messages[CHANNEL]] == ["m0"]
                    assert any("cannot be filled" in r.message for r in caplog.records)
                    # Resuming from m0 is refused plainly, on either relay.
                    for relay in (a, b):
                        async with protocol_client(relay.url) as again:
                            with anyio.fail_after(timeout(15)):
                                reply = await again.subscribe(CHANNEL, first["position"])
                            assert reply["op"] == "error", reply
                            assert reply["code"] == "position_expired", reply
            tg.cancel_scope.cancel()
