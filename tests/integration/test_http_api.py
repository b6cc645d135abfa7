"""The HTTP API against a real relay: publish and history without a WebSocket (issue #13)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest

from relay.adapters.tokens import issue_token
from relay.client import HttpClient, RequestRefused, connect
from relay.client.http import HttpResult, http_request
from relay.config.schema import AuthSection
from relay.node import RelayNode
from tests.support.regions import region_configs, region_nats, running_regions
from tests.support.relays import make_config, running_relays, timeout
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = b"http-api-test-secret-0123456789abcdef"


def base(relay: RelayNode) -> str:
    return f"http://127.0.0.1:{relay.port}"


async def call(
    relay: RelayNode,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> HttpResult:
    return await http_request(
        method, base(relay) + path, body=body, headers=headers or [], timeout_s=timeout(10)
    )


async def openapi_validator(relay: RelayNode) -> Any:
    document = json.loads((await call(relay, "GET", "/v1/openapi.json")).body)
    assert document["openapi"] == "3.1.0"

    def check(body: bytes, schema_name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{schema_name}", **document}
        jsonschema.validate(json.loads(body), schema, cls=jsonschema.Draft202012Validator)

    return check


async def test_publish_and_history_over_http_reach_websocket_subscribers(
    nats_url: str,
) -> None:
    async with (
        running_relays(make_config(nats_url=nats_url)) as (relay,),
        protocol_client(relay.url) as ws,
    ):
        check = await openapi_validator(relay)
        await ws.subscribe("orders:42")
        body = b'{"data": {"status": "shipped"}, "id": "order-42-shipped"}'
        first = await call(relay, "POST", "/v1/channels/orders:42/messages", body)
        assert first.status == 201, first.body
        check(first.body, "AckFrame")
        ack = json.loads(first.body)
        assert (ack["op"], ack["id"], ack["channel"]) == ("ack", "order-42-shipped", "orders:42")
        # The same id again (a retry): the same position, stored once.
        again = await call(relay, "POST", "/v1/channels/orders:42/messages", body)
        assert again.status == 201 and json.loads(again.body)["position"] == ack["position"]
        keyed = await call(
            relay,
            "POST",
            "/v1/channels/orders%3A42/messages",
            b'{"data": 2}',
            [("Idempotency-Key", "k-2")],
        )
        assert keyed.status == 201 and json.loads(keyed.body)["id"] == "k-2"
        await ws.wait_messages("orders:42", 2)
        messages = ws.messages["orders:42"]
        assert [m["id"] for m in messages] == ["order-42-shipped", "k-2"]
        assert messages[0]["data"] == {"status": "shipped"}  # the bytes, as sent

        page = await call(relay, "GET", "/v1/channels/orders:42/messages?limit=1")
        assert page.status == 200
        check(page.body, "HistoryFrame")
        newest = json.loads(page.body)
        assert [m["id"] for m in newest["messages"]] == ["k-2"] and newest["more"] is True
        before = quote(json.dumps(newest["messages"][0]["position"]))
        older = await call(relay, "GET", f"/v1/channels/orders:42/messages?before={before}")
        assert [m["id"] for m in json.loads(older.body)["messages"]] == ["order-42-shipped"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/channels/c/messages", b"{nope", 400, "bad_json"),
        ("POST", "/v1/channels/c/messages", b'{"id": "x"}', 400, "bad_request"),
        ("POST", "/v1/channels/bad%20name/messages", b'{"data": 1}', 400, "invalid_channel"),
        ("POST", "/v1/channels/c/messages", b'{"data": "' + b"x" * 70000 + b'"}', 413, "too_large"),
        ("GET", "/v1/channels/c/messages?limit=0", None, 400, "bad_request"),
        ("GET", "/v1/channels/c/messages?before=41", None, 400, "bad_request"),
    ],
)
async def test_bad_requests_get_the_protocol_error_and_a_status(
    nats_url: str, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    cfg = make_config(
        nats_url=nats_url, namespaces=[{"name": "all", "prefix": "", "max_message_bytes": 65536}]
    )
    async with running_relays(cfg) as (relay,):
        check = await openapi_validator(relay)
        result = await call(relay, method, path, body)
        assert result.status == status, result.body
        check(result.body, "ErrorFrame")
        assert json.loads(result.body)["code"] == code
        assert (await call(relay, "DELETE", "/v1/channels/c/messages")).status == 405
        assert (await call(relay, "GET", "/v1/health")).status == 200  # still serving


async def test_tokens_and_capabilities_apply_as_on_websocket(nats_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    auth = AuthSection(mode="token", secret_file=str(secret), leeway_s=0.0)
    cfg = make_config(nats_url=nats_url).model_copy(update={"auth": auth})
    reader = issue_token(SECRET, "dash", {"news:*": ["history"]}, 600)
    backend = issue_token(SECRET, "backend", {"*": ["publish", "history"]}, 600)
    async with running_relays(cfg) as (relay,):
        body = b'{"data": "hello"}'
        anonymous = await call(relay, "POST", "/v1/channels/news:1/messages", body)
        assert anonymous.status == 401 and anonymous.header("www-authenticate")
        forged = await call(
            relay, "POST", "/v1/channels/news:1/messages", body, [("Authorization", "Bearer x.y.z")]
        )
        assert forged.status == 401
        denied = await call(
            relay,
            "POST",
            "/v1/channels/news:1/messages",
            body,
            [("Authorization", f"Bearer {reader}")],
        )
        assert denied.status == 403 and json.loads(denied.body)["code"] == "forbidden"
        api = HttpClient(relay.url, token=backend, timeout_s=timeout(10))
        ack = await api.publish("news:1", {"headline": "relaynet 0.2"})
        page = await HttpClient(relay.url, token=reader).history("news:1")
        assert [m.id for m in page] == [ack.id]
        assert page.messages[0].data == {"headline": "relaynet 0.2"}
        with pytest.raises(RequestRefused) as refused:
            await HttpClient(relay.url, token=reader).publish("news:1", 1)
        assert refused.value.code == "forbidden"


async def test_the_http_client_fails_over_and_stays_idempotent(nats_url: str) -> None:
    """Two relays of one region: the first URL is dead; the client moves on, and a retry
    of the same id is stored once."""
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        dead = "http://127.0.0.1:9"  # discard port: nothing listens
        api = HttpClient([dead, base(relay)], timeout_s=timeout(10))
        first = await api.publish("jobs:1", {"n": 1}, id="job-1-done")
        second = await api.publish("jobs:1", {"n": 1}, id="job-1-done")
        assert first.position == second.position
        page = await api.history("jobs:1")
        assert [m.id for m in page] == ["job-1-done"]
        async with connect([relay.url], timeout_s=timeout(10)) as client:
            history = await client.history("jobs:1")
            assert [m.id for m in history] == ["job-1-done"]


async def test_cors_preflight_and_origins(nats_url: str) -> None:
    cfg = make_config(nats_url=nats_url, relay={"allowed_origins": ["https://app.example"]})
    async with running_relays(cfg) as (relay,):
        preflight = await call(
            relay,
            "OPTIONS",
            "/v1/channels/c/messages",
            headers=[("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")],
        )
        assert preflight.status == 204
        assert preflight.header("access-control-allow-origin") == "https://app.example"
        assert "Authorization" in (preflight.header("access-control-allow-headers") or "")
        evil = await call(
            relay, "POST", "/v1/channels/c/messages", b'{"data":1}', [("Origin", "https://evil")]
        )
        assert evil.status == 403 and b"allowed_origins" in evil.body
        ok = await call(
            relay,
            "POST",
            "/v1/channels/c/messages",
            b'{"data":1}',
            [("Origin", "https://app.example")],
        )
        assert ok.status == 201
        assert ok.header("access-control-allow-origin") == "https://app.example"


async def test_http_publishes_and_reads_are_rate_limited_per_client(nats_url: str) -> None:
    """No connection holds a bucket over HTTP: one per client (here its address) and kind."""
    limits = {"publish_rate": 1.0, "publish_burst": 2, "subscribe_rate": 1.0, "subscribe_burst": 2}
    async with running_relays(make_config(nats_url=nats_url, limits=limits)) as (relay,):
        statuses = [
            (await call(relay, "POST", "/v1/channels/c/messages", b'{"data":1}')).status
            for _ in range(3)
        ]
        assert statuses == [201, 201, 429]
        limited = await call(relay, "POST", "/v1/channels/c/messages", b'{"data":1}')
        assert limited.status == 429 and limited.header("retry-after") == "1"
        assert json.loads(limited.body)["code"] == "rate_limited"
        reads = [(await call(relay, "GET", "/v1/channels/c/messages")).status for _ in range(3)]
        assert reads == [200, 200, 429]  # reads have their own bucket
        # The SDK's HttpClient waits as told and gets through.
        ack = await HttpClient(relay.url, timeout_s=timeout(10)).publish("c", 2)
        assert ack.channel == "c"


async def test_the_same_id_on_two_regions_is_one_message(tmp_path: Path) -> None:
    """A backend retries a publish on a relay of another region (its first answer was
    lost): every region shows one message, whichever relay of which region is asked."""
    with region_nats(tmp_path, ("us-east", "eu-west")) as urls:
        async with running_regions(region_configs(urls)) as regions:
            east, west = regions["us-east"][0], regions["eu-west"][0]
            body = b'{"data": {"invoice": 7}, "id": "invoice-7-paid"}'
            first = await call(east, "POST", "/v1/channels/billing:7/messages", body)
            second = await call(west, "POST", "/v1/channels/billing:7/messages", body)
            assert (first.status, second.status) == (201, 201)

            async def one_everywhere() -> bool:
                for relay in (east, west):
                    page = json.loads(
                        (await call(relay, "GET", "/v1/channels/billing:7/messages")).body
                    )
                    if [m["id"] for m in page["messages"]] != ["invoice-7-paid"]:
                        return False
                return True

            # Each region stored it once; federation must not add the other's copy.
            await wait_until(one_everywhere, "one message in each region", timeout(20))
            async with protocol_client(west.url) as ws:
                await ws.subscribe("billing:7", position={})
                await ws.wait_for(lambda: len(ws.messages["billing:7"]) >= 1)
                await call(east, "POST", "/v1/channels/billing:7/messages", b'{"data": 8}')
                await ws.wait_messages("billing:7", 2)
                assert [m["data"] for m in ws.messages["billing:7"]] == [{"invoice": 7}, 8]
