"""Backend hooks against a real relay and a real small HTTP backend (issue #13).

The backend (``tests.support.backend``) answers each hook as the test says; the relay
asks it on connect (``auth.mode = "hook"``), before attaching subscriptions and before
storing publishes, over WebSocket, SSE and the HTTP API alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay.client.http import http_request
from relay.client.sse import sse_stream
from relay.config.schema import RelayConfig
from relay.node import RelayNode
from relay.protocol.errors import CloseCode
from tests.support.backend import Answer, Backend, accept, reject, running_backend
from tests.support.http import http_get_ok
from tests.support.relays import make_config, running_relays, timeout
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHAT_CAPS = {"chat:*": ["subscribe", "publish", "history"]}


def hooked_config(
    nats_url: str, backend: Backend, *, hook_mode: bool = False, **hook: Any
) -> RelayConfig:
    """A relay whose `chat:` namespace has subscribe and publish hooks on ``backend``
    (and, with ``hook_mode``, its connect hook); `open:` has a fail-open publish hook on
    a port nothing listens on."""
    data = make_config(nats_url=nats_url).model_dump(mode="json", exclude_defaults=True)
    data["namespaces"] = [
        {"name": "chat", "prefix": "chat:", "subscribe_hook": "app", "publish_hook": "app"},
        {"name": "open", "prefix": "open:", "publish_hook": "lenient"},
    ]
    data["hooks"] = [
        {"name": "app", "url": backend.url, "forward_headers": ["cookie"], **hook},
        {"name": "lenient", "url": "http://127.0.0.1:9/down", "fail_open": True, "retries": 0},
    ]
    if hook_mode:
        data["auth"] = {"mode": "hook", "connect_hook": "app"}
    return RelayConfig.model_validate(data)


@asynccontextmanager
async def hooked_relay(
    nats_url: str, answer: Answer, *, hook_mode: bool = False, **hook: Any
) -> AsyncIterator[tuple[RelayNode, Backend]]:
    async with running_backend(answer) as backend:
        cfg = hooked_config(nats_url, backend, hook_mode=hook_mode, **hook)
        async with running_relays(cfg) as (relay,):
            yield relay, backend


async def app(request: dict[str, Any]) -> tuple[int, bytes]:
    """The test application: sessions by credentials (or cookie), channel rules, and a
    publish rule that refuses "spam" and writes "shout" messages in capitals."""
    hook = request["hook"]
    if hook == "connect":
        session = request["credentials"] or request["headers"].get("cookie", "")
        if session.endswith("alice-session"):
            return accept(sub="alice", caps=CHAT_CAPS, exp=time.time() + 600)
        if session == "bad-caps":
            return accept(sub="mallory", caps={"chat:*": ["fly"]})
        return reject("no such session")
    if hook == "subscribe":
        if request["channel"] == "chat:secret":
            return reject("members only")
        return accept()
    data = request["data"]
    if data == "spam":
        return reject("no spam here")
    if isinstance(data, dict) and "shout" in data:
        return accept(data={"text": data["shout"].upper(), "by": request["sub"]})
    if data == "garbage":
        return 200, b"<html>oops</html>"
    return accept()


async def test_connect_hook_accepts_with_caps_or_refuses(nats_url: str) -> None:
    async with hooked_relay(nats_url, app, hook_mode=True) as (relay, backend):
        async with protocol_client(f"{relay.url}?token=alice-session") as alice:
            assert alice.connected is not None and alice.connected["sub"] == "alice"
            assert (await alice.subscribe("chat:lobby"))["op"] == "subscribed"
            refused = await alice.subscribe("news:today")  # not in the backend's caps
            assert (refused["code"], refused["channel"]) == ("forbidden", "news:today")
        (asked,) = backend.of("connect")
        assert asked["credentials"] == "alice-session"
        assert asked["transport"] == "websocket" and asked["remote_addr"] == "127.0.0.1"
        # A session cookie alone, forwarded (forward_headers), is enough.
        cookie = [("Cookie", "sid=alice-session")]
        async with protocol_client(relay.url, additional_headers=cookie) as by_cookie:
            assert by_cookie.connected is not None and by_cookie.connected["sub"] == "alice"
        assert backend.of("connect")[-1]["headers"] == {"cookie": "sid=alice-session"}
        # No credentials at all: connected as nobody, then an auth frame.
        async with protocol_client(relay.url) as later:
            assert later.connected is not None and "sub" not in later.connected
            unauthorized = await later.subscribe("chat:lobby")
            assert unauthorized["code"] == "unauthorized"
            bad = await later.request({"op": "auth", "token": "stolen"})
            assert (bad["code"], bad["message"]) == ("unauthorized", "no such session")
            authed = await later.request({"op": "auth", "token": "alice-session"})
            assert (authed["op"], authed["sub"]) == ("authed", "alice")
            assert (await later.subscribe("chat:lobby"))["op"] == "subscribed"
        async with protocol_client(f"{relay.url}?token=stolen") as refused_client:
            await refused_client.wait_closed()
        assert refused_client.closed_code == CloseCode.UNAUTHORIZED
        assert refused_client.errors[0]["message"] == "no such session"
        # Capabilities the relay cannot parse are the backend's failure, not an accept.
        async with protocol_client(f"{relay.url}?token=bad-caps") as odd:
            await odd.wait_closed()
        assert odd.closed_code == CloseCode.UNAVAILABLE
        assert odd.errors[0]["code"] == "unavailable" and odd.errors[0]["temporary"]
        # The HTTP API asks the same hook (a bearer token).
        base = f"http://127.0.0.1:{relay.port}/v1/channels/chat:lobby/messages"
        ok = await http_request(
            "POST",
            base,
            body=b'{"data": 1}',
            headers=[("Authorization", "Bearer alice-session")],
            timeout_s=timeout(10),
        )
        assert ok.status == 201, ok.body
        nope = await http_request(
            "POST",
            base,
            body=b'{"data": 1}',
            headers=[("Authorization", "Bearer stolen")],
            timeout_s=timeout(10),
        )
        assert nope.status == 401 and json.loads(nope.body)["message"] == "no such session"
        assert backend.of("connect")[-1]["transport"] == "http"


async def test_subscribe_hook_refuses_over_websocket_and_sse(nats_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "hook-secret"
    secret.write_text("s3cret-for-the-backend\n")
    async with hooked_relay(nats_url, app, secret_file=str(secret)) as (relay, backend):
        async with protocol_client(relay.url) as client:
            refused = await client.subscribe("chat:secret")
            assert (refused["code"], refused["message"]) == ("forbidden", "members only")
            assert refused["channel"] == "chat:secret"
            assert (await client.subscribe("chat:lobby"))["op"] == "subscribed"
            assert (await client.subscribe("plain"))["op"] == "subscribed"  # no hook there
        assert [r["channel"] for r in backend.of("subscribe")] == ["chat:secret", "chat:lobby"]
        assert backend.of("subscribe")[0]["sub"] is None  # anonymous
        # The backend can tell the relay's calls from anyone else's.
        assert backend.headers[0]["authorization"] == "Bearer s3cret-for-the-backend"
        url = f"http://127.0.0.1:{relay.port}/v1/sse?channels=chat:secret"
        async with sse_stream(url, connect_timeout_s=10, idle_timeout_s=10) as (status, events):
            assert status == 200
            with anyio.fail_after(timeout(10)):
                async for event in events:
                    if event.event == "error":
                        assert json.loads(event.data)["code"] == "forbidden"
                        break


async def test_publish_hook_rejects_and_replaces_data(nats_url: str) -> None:
    async with (
        hooked_relay(nats_url, app) as (relay, backend),
        protocol_client(relay.url) as sub,
        protocol_client(relay.url) as pub,
    ):
        await sub.subscribe("chat:lobby")
        spam = await pub.publish("chat:lobby", "spam", id="m-1")
        assert (spam["code"], spam["message"], spam["id"]) == ("forbidden", "no spam here", "m-1")
        ack = await pub.publish("chat:lobby", {"shout": "hello"}, id="m-2")
        assert ack["op"] == "ack"
        # A rejection is final: the publishes after it are not held back.
        assert (await pub.publish("chat:lobby", "plain", id="m-3"))["op"] == "ack"
        over_http = await http_request(
            "POST",
            f"http://127.0.0.1:{relay.port}/v1/channels/chat:lobby/messages",
            body=b'{"data": {"shout": "via http"}, "id": "m-4"}',
            timeout_s=timeout(10),
        )
        assert over_http.status == 201, over_http.body
        refused = await http_request(
            "POST",
            f"http://127.0.0.1:{relay.port}/v1/channels/chat:lobby/messages",
            body=b'{"data": "spam"}',
            timeout_s=timeout(10),
        )
        assert refused.status == 403 and json.loads(refused.body)["code"] == "forbidden"
        await sub.wait_messages("chat:lobby", 3)
        delivered = [(m["id"], m["data"]) for m in sub.messages["chat:lobby"]]
        expected = [
            ("m-2", {"text": "HELLO", "by": None}),
            ("m-3", "plain"),
            ("m-4", {"text": "VIA HTTP", "by": None}),
        ]
        assert delivered == expected
        history = await sub.request({"op": "history", "channel": "chat:lobby"})
        assert [(m["id"], m["data"]) for m in history["messages"]] == expected
        assert [r["id"] for r in backend.of("publish")][:3] == ["m-1", "m-2", "m-3"]
        assert all(r["id"] for r in backend.of("publish"))  # the relay's id when none given


async def test_a_slow_publish_hook_keeps_the_connections_order(nats_url: str) -> None:
    async def slow_first(request: dict[str, Any]) -> tuple[int, bytes]:
        if request["hook"] == "publish" and request["data"] == 0:
            await anyio.sleep(0.5)  # later publishes arrive meanwhile
        return accept()

    async with (
        hooked_relay(nats_url, slow_first) as (relay, backend),
        protocol_client(relay.url) as client,
    ):
        await client.subscribe("chat:order")
        await client.subscribe("plain")
        refs = [await client.send(publish_frame("chat:order", i)) for i in range(6)]
        other = await client.publish("plain", "not held up")  # another channel, no hook
        assert other["op"] == "ack" and client.reply(refs[0]) is None
        await client.wait_for(lambda: all(client.reply(ref) for ref in refs), 15)
        assert [(client.reply(ref) or {}).get("op") for ref in refs] == ["ack"] * 6
        await client.wait_messages("chat:order", 6)
        assert [m["data"] for m in client.messages["chat:order"]] == list(range(6))
        assert [r["data"] for r in backend.of("publish")] == list(range(6))


def publish_frame(channel: str, data: Any, id: str | None = None) -> dict[str, Any]:
    frame = {"op": "publish", "channel": channel, "data": data}
    return frame if id is None else {**frame, "id": id}


async def test_backend_down_fails_closed_and_the_breaker_opens_then_closes(
    nats_url: str,
) -> None:
    async with (
        hooked_relay(
            nats_url, app, retries=0, breaker_failures=2, breaker_open_s=4.0, timeout_s=5.0
        ) as (relay, backend),
        protocol_client(relay.url) as client,
    ):
        assert (await client.publish("chat:lobby", "up", id="p-0"))["op"] == "ack"
        backend.stop()
        for _ in range(2):  # two failures in a row open the breaker
            down = await client.publish("chat:lobby", "x", id="p-1")
            assert (down["code"], down["temporary"], down["id"]) == ("unavailable", True, "p-1")
        await backend.start()  # back, but the breaker keeps it unasked while open
        seen = len(backend.requests)
        still = await client.publish("chat:lobby", "x", id="p-1")
        assert still["code"] == "unavailable" and "circuit open" in still["message"]
        # A later publish on the channel waits for p-1 (never stored ahead of it).
        fenced = await client.publish("chat:lobby", "y", id="p-2")
        assert (fenced["code"], fenced["behind"]) == ("unavailable", "p-1")
        metrics = await http_get_ok(relay, "/metrics")
        assert (
            'relaynet_hook_breaker_state{hook="app",region="us-east",relay="r1",state="open"} 1.0'
            in metrics
        )
        assert len(backend.requests) == seen

        async def stored() -> bool:
            return (await client.publish("chat:lobby", "x", id="p-1"))["op"] == "ack"

        await wait_until(stored, "the breaker's trial call after breaker_open_s", 20, poll_s=0.2)
        assert len(backend.requests) == seen + 1  # one trial, which closed it
        assert (await client.publish("chat:lobby", "y", id="p-2"))["op"] == "ack"
        metrics = await http_get_ok(relay, "/metrics")
        assert 'state="closed"} 1.0' in metrics.split('relaynet_hook_breaker_state{hook="app"')[1]
        assert 'outcome="circuit_open"' in metrics and 'outcome="error"' in metrics


async def test_fail_open_hook_lets_publishes_through(nats_url: str) -> None:
    async with (
        hooked_relay(nats_url, app) as (relay, _),
        protocol_client(relay.url) as client,
    ):
        await client.subscribe("open:x")
        assert (await client.publish("open:x", {"as": "sent"}))["op"] == "ack"
        await client.wait_messages("open:x", 1)
        assert client.messages["open:x"][0]["data"] == {"as": "sent"}


async def test_a_backend_answering_garbage_is_a_failure_not_a_crash(nats_url: str) -> None:
    async with (
        hooked_relay(nats_url, app) as (relay, _),
        protocol_client(relay.url) as client,
    ):
        await client.subscribe("chat:lobby")
        garbage = await client.publish("chat:lobby", "garbage", id="g-1")
        assert (garbage["code"], garbage["temporary"]) == ("unavailable", True)
        assert (await client.publish("plain", "still serving"))["op"] == "ack"
        assert (await client.subscribe("chat:other"))["op"] == "subscribed"
        assert client.messages["chat:lobby"] == []
