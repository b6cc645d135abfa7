"""Presence against real relays: members and events on one relay, and across three
regions through a partition and its heal (issue #13)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest

from relay.client.http import http_request
from relay.client.sse import sse_stream
from relay.simulate.client import ProtocolClient
from tests.support.regions import (
    link_proxies,
    proxy_urls,
    region_configs,
    region_nats,
    running_regions,
)
from tests.support.relays import (
    config_file,
    make_config,
    relay_process,
    running_relays,
    timeout,
)
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

FAST = {"leave_after_s": 0.5, "suspect_after_s": 1.0, "remove_after_s": 2.5, "snapshot_s": 0.5}


def events(client: ProtocolClient, channel: str) -> list[tuple[str, str, Any]]:
    """(action, client id, data) of the channel's presence events, in order."""
    return [
        (f["action"], f["member"]["client_id"], f["member"].get("data"))
        for f in client.frames
        if f["op"] == "presence_event" and f["channel"] == channel
    ]


def members(frame: dict[str, Any]) -> dict[str, Any]:
    return {m["client_id"]: m for m in frame["members"]}


async def watch(client: ProtocolClient, channel: str) -> dict[str, Any]:
    """Subscribe with presence; the member list that follows."""
    await client.request({"op": "subscribe", "channel": channel, "presence": True})
    await client.wait_for(
        lambda: any(f["op"] == "presence" and f["channel"] == channel for f in client.frames)
    )
    return next(f for f in client.frames if f["op"] == "presence" and f["channel"] == channel)


async def test_enter_update_leave_and_a_dropped_connection(nats_url: str) -> None:
    cfg = make_config(nats_url=nats_url).model_copy(
        update={"presence": make_config(nats_url=nats_url).presence.model_copy(update=FAST)}
    )
    async with running_relays(cfg) as (relay,), protocol_client(relay.url) as watcher:
        assert (await watch(watcher, "room"))["members"] == []
        async with protocol_client(relay.url) as ann:
            enter = {"op": "presence.enter", "channel": "room", "client_id": "ann"}
            ok = await ann.request({**enter, "data": {"mood": 1}})
            assert (ok["op"], ok.get("action"), ok.get("client_id")) == (
                "presence.ok",
                "enter",
                "ann",
            ), ok
            await ann.request({"op": "presence.update", "channel": "room", "data": {"mood": 2}})
            await watcher.wait_for(lambda: len(events(watcher, "room")) >= 2)
            got = await watcher.request({"op": "presence.get", "channel": "room"})
            assert members(got)["ann"]["data"] == {"mood": 2}
            assert members(got)["ann"]["region"] == "us-east"
            await ann.request({"op": "presence.leave", "channel": "room"})
            await watcher.wait_for(lambda: len(events(watcher, "room")) >= 3)
            assert [(a, c) for a, c, _ in events(watcher, "room")] == [
                ("enter", "ann"),
                ("update", "ann"),
                ("leave", "ann"),
            ]
            await ann.request({"op": "presence.enter", "channel": "room", "client_id": "ann"})
            await watcher.wait_for(lambda: len(events(watcher, "room")) >= 4)
        # ann's connection is gone without a leave: she leaves leave_after_s later.
        await watcher.wait_for(lambda: len(events(watcher, "room")) >= 5, seconds=10)
        assert events(watcher, "room")[-1][:2] == ("leave", "ann")
        http = await http_request(
            "GET",
            f"http://127.0.0.1:{relay.port}/v1/channels/room/presence",
            timeout_s=timeout(10),
        )
        assert http.status == 200 and json.loads(http.body)["members"] == []
        document = json.loads(
            (
                await http_request(
                    "GET", f"http://127.0.0.1:{relay.port}/v1/openapi.json", timeout_s=timeout(10)
                )
            ).body
        )
        schema = {"$ref": "#/components/schemas/PresenceFrame", **document}
        jsonschema.validate(json.loads(http.body), schema, cls=jsonschema.Draft202012Validator)
        jsonschema.validate(got, schema, cls=jsonschema.Draft202012Validator)


async def test_three_regions_converge_through_a_partition(tmp_path: Path) -> None:
    with region_nats(tmp_path) as urls:
        async with link_proxies(urls) as proxies:
            configs = region_configs(urls, peer_urls=proxy_urls(proxies))
            configs = [
                c.model_copy(update={"presence": c.presence.model_copy(update=FAST)})
                for c in configs
            ]
            async with running_regions(configs) as regions:
                east, west, south = (regions[r][0] for r in ("us-east", "eu-west", "ap-south"))
                async with (
                    protocol_client(east.url) as ann,
                    protocol_client(east.url) as bob,
                    protocol_client(south.url) as cy,
                    protocol_client(west.url) as watcher,
                ):
                    await watch(watcher, "lobby")
                    await ann.request(
                        {"op": "presence.enter", "channel": "lobby", "client_id": "ann"}
                    )
                    await cy.request(
                        {"op": "presence.enter", "channel": "lobby", "client_id": "cy"}
                    )

                    async def west_sees(expected: set[str], status: str = "present") -> None:
                        async def check() -> bool:
                            got = await watcher.request({"op": "presence.get", "channel": "lobby"})
                            found = members(got)
                            return set(found) == expected and all(
                                m["status"] == status
                                for m in found.values()
                                if m["region"] == "us-east"
                            )

                        await wait_until(check, f"eu-west sees {expected} ({status})", timeout(20))

                    await west_sees({"ann", "cy"})
                    # eu-west loses us-east: its members turn unreachable, then go.
                    proxies[("eu-west", "us-east")].cut()
                    await west_sees({"ann", "cy"}, "unreachable")
                    await west_sees({"cy"})
                    # Meanwhile in us-east: ann leaves, bob enters.
                    await ann.request({"op": "presence.leave", "channel": "lobby"})
                    await bob.request(
                        {"op": "presence.enter", "channel": "lobby", "client_id": "bob"}
                    )
                    proxies[("eu-west", "us-east")].heal()
                    await west_sees({"bob", "cy"})  # no phantom ann, no missing bob
                    actions = [(a, c) for a, c, _ in events(watcher, "lobby")]
                    assert ("enter", "bob") in actions and actions.count(("enter", "ann")) == 1


async def test_a_quiet_member_stays_present_on_its_own_relay(nats_url: str) -> None:
    """Found by ``relaynet bench presence``: a relay did not hear its own beats, so its
    own members went `unreachable`, then vanished from its own region's view."""
    base = make_config(nats_url=nats_url)
    cfg = base.model_copy(update={"presence": base.presence.model_copy(update=FAST)})
    async with running_relays(cfg) as (relay,), protocol_client(relay.url) as ann:
        await ann.request({"op": "presence.enter", "channel": "quiet", "client_id": "ann"})
        await anyio.sleep(FAST["remove_after_s"] + 1.0)  # past the removal of a silent origin
        got = members(await ann.request({"op": "presence.get", "channel": "quiet"}))
        assert got["ann"]["status"] == "present"


async def test_sse_streams_carry_presence_when_asked(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        url = f"http://127.0.0.1:{relay.port}/v1/sse?channel=room&presence=1"
        async with (
            sse_stream(url, connect_timeout_s=10, idle_timeout_s=10) as (status, events),
            protocol_client(relay.url) as ann,
        ):
            assert status == 200
            seen: list[str] = []
            with anyio.fail_after(timeout(15)):
                async for event in events:
                    seen.append(event.event)
                    if event.event == "presence":  # the member list: now enter
                        await ann.request(
                            {"op": "presence.enter", "channel": "room", "client_id": "ann"}
                        )
                    if event.event == "presence_event":
                        assert json.loads(event.data)["member"]["client_id"] == "ann"
                        break
            assert seen.index("subscribed") < seen.index("presence")


async def test_a_dead_relay_takes_its_members_with_it(nats_url: str, tmp_path: Path) -> None:
    """SIGKILL of the relay a member is on: the other relay of the region shows the member
    unreachable after suspect_after_s, then removes it after remove_after_s."""
    base = make_config(nats_url=nats_url)
    presence = base.presence.model_copy(update=FAST)
    cfgs = [
        make_config(nats_url=nats_url, relay_id=name).model_copy(update={"presence": presence})
        for name in ("one", "two")
    ]
    with (
        relay_process(config_file(tmp_path / "one.toml", cfgs[0]), tmp_path / "1.log") as (
            doomed,
            doomed_url,
        ),
        relay_process(config_file(tmp_path / "two.toml", cfgs[1]), tmp_path / "2.log") as (
            _,
            watcher_url,
        ),
    ):
        async with protocol_client(watcher_url) as watcher:
            await watch(watcher, "hall")
            async with protocol_client(doomed_url) as ann:
                await ann.request({"op": "presence.enter", "channel": "hall", "client_id": "ann"})
                await watcher.wait_for(lambda: ("enter", "ann") in actions(watcher, "hall"))
                os.kill(doomed.pid, signal.SIGKILL)
                doomed.wait()
                await watcher.wait_for(
                    lambda: any(
                        f["member"]["status"] == "unreachable"
                        for f in watcher.frames
                        if f["op"] == "presence_event" and f["action"] == "update"
                    )
                )
                await watcher.wait_for(lambda: ("leave", "ann") in actions(watcher, "hall"))
            got = await watcher.request({"op": "presence.get", "channel": "hall"})
            assert got["members"] == []


def actions(client: ProtocolClient, channel: str) -> list[tuple[str, str]]:
    return [(a, c) for a, c, _ in events(client, channel)]
