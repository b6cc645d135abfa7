"""Subscribe, unsubscribe and resubscribe pipelined on one connection: nothing leaks from
the old subscription into the new one, nothing follows an "unsubscribed"."""

from __future__ import annotations

import json

import pytest

from tests.support.checker import check_contiguous
from tests.support.relays import make_config, running_relays
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_pipelined_churn(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with protocol_client(relay.url) as pub:
            for n in range(300):
                await pub.send_raw(json.dumps({"op": "publish", "channel": "chat:c", "data": n}))
            await pub.wait_for(lambda: sum(f["op"] == "ack" for f in pub.frames) == 300)
        async with protocol_client(relay.url) as client:
            for round_ in range(5):
                await client.send_raw(json.dumps(
                    {"op": "subscribe", "channel": "chat:c", "position": {}, "ref": f"s{round_}"}
                ))  # fmt: skip
                await client.send_raw(
                    json.dumps({"op": "unsubscribe", "channel": "chat:c", "ref": f"u{round_}"})
                )
            await client.send_raw(
                json.dumps({"op": "subscribe", "channel": "chat:c", "position": {}, "ref": "last"})
            )
            await client.wait_for(lambda: any(f.get("ref") == "last" for f in client.frames))
            frames = client.frames
            last = next(i for i, f in enumerate(frames) if f.get("ref") == "last")
            assert frames[last]["op"] == "subscribed"
            # Between each "unsubscribed" and the next "subscribed": no message at all.
            active = False
            for frame in frames[:last]:
                if frame["op"] == "subscribed":
                    active = True
                elif frame["op"] in ("unsubscribed", "error"):
                    active = False
                elif frame["op"] == "message":
                    assert active, "message outside a subscription"
            await client.wait_for(
                lambda: sum(f["op"] == "message" for f in client.frames[last:]) >= 300
            )
            after = [f for f in client.frames[last:] if f["op"] == "message"]
            assert check_contiguous(after, "us-east") == []
            assert len(after) == 300
