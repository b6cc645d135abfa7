"""Bad input gets an error frame, never crashes the relay, never disturbs other clients."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect

from tests.support.relays import make_config, running_relays
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

BIG = "x" * 70_000

CASES: list[tuple[str | bytes, str]] = [
    ("not json", "bad_json"),
    ('{"op": "publish", "channel": "a"', "bad_json"),
    ("[1, 2, 3]", "bad_request"),
    ('"just a string"', "bad_request"),
    ("null", "bad_request"),
    ("{}", "bad_request"),
    ('{"op": 5}', "bad_request"),
    (b"\x00\x01binary", "bad_request"),
    ('{"op": "fly", "ref": 1}', "unknown_op"),
    ('{"op": "subscribe"}', "bad_request"),
    ('{"op": "subscribe", "channel": 7}', "bad_request"),
    ('{"op": "subscribe", "channel": "chat:x", "position": "yesterday"}', "bad_request"),
    ('{"op": "subscribe", "channel": "chat:x", "position": {"us-east": -1}}', "bad_request"),
    ('{"op": "publish", "channel": "chat:x"}', "bad_request"),
    ('{"op": "publish", "channel": "chat:x", "data": 1, "id": "has space"}', "bad_request"),
    ('{"op": "history", "channel": "chat:x", "limit": 0}', "bad_request"),
    ('{"op": "subscribe", "channel": ""}', "invalid_channel"),
    ('{"op": "subscribe", "channel": "a b"}', "invalid_channel"),
    ('{"op": "publish", "channel": "chat.*", "data": 1}', "invalid_channel"),
    ('{"op": "subscribe", "channel": "' + "c" * 201 + '"}', "invalid_channel"),
    ('{"op": "unsubscribe", "channel": "chat:never"}', "not_subscribed"),
    (json.dumps({"op": "publish", "channel": "chat:big", "data": BIG}), "too_large"),
    (json.dumps({"op": "publish", "channel": "dash:big", "data": "y" * 20_000}), "too_large"),
    ('{"op": "subscribe", "channel": "chat:x\\n"}', "invalid_channel"),
    ('{"op": "publish", "channel": "chat:x", "data": ' + "[" * 5000 + "]" * 5000 + "}", "bad_json"),
    ('{"op": "fly", "channel": 7,', "bad_json"),
]


async def test_every_bad_frame_gets_its_error_and_the_connection_stays_usable(
    nats_url: str,
) -> None:
    namespaces = [{"name": "dash", "prefix": "dash:", "max_message_bytes": 16384}]
    async with running_relays(make_config(nats_url=nats_url, namespaces=namespaces)) as (relay,):
        async with protocol_client(relay.url) as bystander, protocol_client(relay.url) as bad:
            await bystander.subscribe("chat:calm")
            for raw, code in CASES:
                before = len(bad.errors)
                await bad.send_raw(raw)
                await bad.wait_for(lambda before=before: len(bad.errors) > before)
                error = bad.errors[-1]
                assert error["code"] == code, (raw[:80], error)
                assert error["message"]
                assert error["temporary"] is False
            assert bad.errors[8]["ref"] == 1  # unknown_op echoes the ref
            # Still open and working after all that, and nobody else noticed.
            assert (await bad.request({"op": "ping"}))["op"] == "pong"
            ack = await bad.publish("chat:calm", "fine")
            assert ack["op"] == "ack"
            await bystander.wait_messages("chat:calm", 1)
            assert bystander.errors == []


async def test_double_subscribe_is_refused(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with protocol_client(relay.url) as client:
            assert (await client.subscribe("chat:a"))["op"] == "subscribed"
            again = await client.subscribe("chat:a")
            assert again["code"] == "already_subscribed"
            assert (await client.request({"op": "unsubscribe", "channel": "chat:a"}))["op"] == (
                "unsubscribed"
            )
            assert (await client.subscribe("chat:a"))["op"] == "subscribed"


async def test_a_flood_of_bad_frames_closes_only_that_connection(nats_url: str) -> None:
    cfg = make_config(nats_url=nats_url, limits={"max_errors_per_minute": 20})
    async with running_relays(cfg) as (relay,):
        async with protocol_client(relay.url) as bystander, protocol_client(relay.url) as flooder:
            for _ in range(50):
                try:
                    await flooder.send_raw("garbage")
                except Exception:
                    break
            await flooder.wait_closed()
            assert flooder.closed_code == 4500
            assert flooder.closed_reason == "too_many_errors"
            assert (await bystander.request({"op": "ping"}))["op"] == "pong"


async def test_oversized_frame_closes_with_1009_and_the_relay_lives_on(nats_url: str) -> None:
    cfg = make_config(nats_url=nats_url, limits={"max_frame_bytes": 70_000})
    async with running_relays(cfg) as (relay,):
        async with protocol_client(relay.url, max_size=None) as big:
            await big.send_raw(
                json.dumps({"op": "publish", "channel": "chat:x", "data": "z" * 80_000})
            )
            await big.wait_closed()
            assert big.closed_code == 1009
        async with protocol_client(relay.url) as after:
            assert (await after.request({"op": "ping"}))["op"] == "pong"


async def test_other_http_paths_get_a_plain_404(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        with pytest.raises(Exception, match="404"):
            async with connect(relay.url.replace("/v1/ws", "/elsewhere")):
                pass
