"""A connection's publishes in flight are bounded by their bytes as well as their count:
past 8 MB waiting on the writer, the relay stops reading that connection until some are
answered (the count alone let a client park 512 MB frames per connection)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from relay.adapters.connection import MAX_PUBLISH_BYTES_IN_FLIGHT, MAX_PUBLISHES_IN_FLIGHT
from tests.support.relays import make_config, running_relays, timeout
from tests.support.wsclient import protocol_client

pytestmark = pytest.mark.integration

DATA = "x" * 1_000_000  # about 1 MB of JSON each
HELD = MAX_PUBLISH_BYTES_IN_FLIGHT // len(DATA) + 1  # the last one crosses the bound
WAIT_S = 3.0


def held(n: int) -> str:
    """A publish whose causal context never arrives: the writer holds it WAIT_S."""
    frame = {"op": "publish", "channel": "chat:big", "id": f"h{n}", "data": DATA, "ref": n}
    frame["after"] = {"eu-west": 1_000_000}
    return json.dumps(frame)


@pytest.mark.anyio
async def test_past_the_byte_bound_the_relay_stops_reading_until_answers_free_room(
    nats_url: str,
) -> None:
    cfg = make_config(
        nats_url=nats_url,
        limits={"publish_context_wait_s": WAIT_S, "max_frame_bytes": 2_000_000},
        namespaces=[{"name": "chat", "prefix": "chat:", "max_message_bytes": 1_048_576}],
    )
    async with running_relays(cfg) as (relay,), protocol_client(relay.url) as client:
        for n in range(HELD):
            await client.send_raw(held(n))
        await client.send_raw(json.dumps({"op": "publish", "channel": "chat:small", "data": 1}))
        await client.send_raw(json.dumps({"op": "ping", "ref": "p"}))
        with anyio.move_on_after(WAIT_S / 2):
            await client.wait_for(lambda: client.reply("p") is not None, WAIT_S)
        # The small publish waits for room, and the ping behind it is not read yet.
        assert client.reply("p") is None
        assert not [f for f in client.frames if f["op"] in ("ack", "error")]

        # The held publishes are refused when their wait ends; then the rest is read.
        await client.wait_for(lambda: client.reply("p") is not None, timeout(WAIT_S + 10))
        await client.wait_for(lambda: any(f["op"] == "ack" for f in client.frames), timeout(10))
        refused = [f for f in client.frames if f["op"] == "error"]
        assert len(refused) == HELD and all(f["code"] == "unavailable" for f in refused)
        acks = [f for f in client.frames if f["op"] == "ack"]
        assert [a["channel"] for a in acks] == ["chat:small"]


def test_the_protocol_document_states_the_window_the_relay_uses() -> None:
    text = " ".join((Path(__file__).parents[2] / "relay" / "PROTOCOL.md").read_text().split())
    count = f"{MAX_PUBLISHES_IN_FLIGHT:,}"
    megabytes = MAX_PUBLISH_BYTES_IN_FLIGHT // (1024 * 1024)
    assert f"up to {count} of a connection's publishes (and {megabytes} MB" in text
