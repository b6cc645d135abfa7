"""Presence in the Python SDK against real relays and nats-servers (issue #13): enter,
update, leave, members and events between SDK clients; entering again after the relay
goes away (the watchers' views converge); token mode; the HTTP client; SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay.adapters.tokens import issue_token
from relay.client import (
    Client,
    HttpClient,
    Member,
    PresenceChange,
    PresenceEvent,
    PresenceSync,
    PresenceUnavailable,
    RequestRefused,
    Subscription,
    connect,
)
from relay.config.schema import AuthSection, RelayConfig
from tests.support.directory import sibling_listed
from tests.support.relays import make_config, running_relays, timeout
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

# Members of a relay that went away are given up within seconds, not half a minute.
FAST = {"leave_after_s": 0.5, "suspect_after_s": 1.0, "remove_after_s": 2.5, "snapshot_s": 0.5}


def fast_config(nats_url: str, **kwargs: Any) -> RelayConfig:
    cfg = make_config(nats_url=nats_url, **kwargs)
    return cfg.model_copy(update={"presence": cfg.presence.model_copy(update=FAST)})


def fast_connect(seeds: str | list[str], **kwargs: Any) -> AbstractAsyncContextManager[Client]:
    return connect(seeds, backoff_base_s=0.05, backoff_max_s=0.5, timeout_s=timeout(20), **kwargs)


def who(members: tuple[Member, ...]) -> list[tuple[str, Any]]:
    return sorted((m.client_id, m.data) for m in members)


class Watched:
    """Every presence event one subscription handed the application."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.events: list[PresenceEvent] = []

    async def consume(self) -> None:
        async for event in self.sub.presence:
            self.events.append(event)

    def changes(self) -> list[tuple[str, str, Any]]:
        return [
            (e.action, e.member.client_id, e.member.data)
            for e in self.events
            if isinstance(e, PresenceChange)
        ]


@asynccontextmanager
async def watching(sub: Subscription) -> AsyncIterator[Watched]:
    watched = Watched(sub)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watched.consume)
        yield watched
        tg.cancel_scope.cancel()


async def test_enter_update_leave_members_and_events_between_two_clients(nats_url: str) -> None:
    async with running_relays(fast_config(nats_url)) as (relay,):
        with anyio.fail_after(timeout(30)):
            async with fast_connect(relay.url) as watcher, fast_connect(relay.url) as ann:
                sub = await watcher.subscribe("room", presence=True)
                async with watching(sub) as watched:
                    await wait_until(lambda: sub.presence.synced, "the member list", 10)
                    presence = ann.presence("room")
                    assert not presence.entered and presence.client_id is None
                    await presence.enter({"mood": "busy"}, client_id="ann")
                    assert presence.entered and presence.client_id == "ann"
                    await presence.update({"mood": "free"})
                    await wait_until(lambda: len(watched.changes()) >= 2, "enter, update", 10)
                    (member,) = await presence.members()
                    assert (member.client_id, member.data, member.status) == (
                        "ann",
                        {"mood": "free"},
                        "present",
                    )
                    assert (member.connection, member.region, member.relay) == (
                        ann.connection_id,
                        "us-east",
                        "r1",
                    )
                    assert sub.presence.members == (member,)
                    api = HttpClient(f"http://127.0.0.1:{relay.port}", timeout_s=timeout(10))
                    assert await api.presence("room") == (member,)
                    await presence.leave()
                    await presence.leave()  # not entered: nothing to do
                    assert not presence.entered
                    await wait_until(lambda: len(watched.changes()) >= 3, "the leave", 10)
                    # Data-less members have no data; and no JSON, no enter.
                    await presence.enter()
                    with pytest.raises(ValueError, match="JSON"):
                        await presence.update(object())
                    await wait_until(lambda: len(watched.changes()) >= 4, "entered again", 10)
                assert watched.events[0] == PresenceSync("room", ())
                assert watched.changes() == [
                    ("enter", "ann", {"mood": "busy"}),
                    ("update", "ann", {"mood": "free"}),
                    ("leave", "ann", {"mood": "free"}),
                    ("enter", ann.connection_id, None),  # anonymous: the connection's id
                ]
                assert await watcher.presence("room").members() == sub.presence.members
                # A subscription without presence has no presence events.
                plain = await ann.subscribe("plain")
                with pytest.raises(ValueError, match="presence=True"):
                    aiter(plain.presence)
                with pytest.raises(ValueError, match="enter"):
                    await watcher.presence("room").update("not entered")


async def test_entered_again_after_the_relay_goes_away_and_views_converge(
    nats_url: str,
) -> None:
    """Two relays of a region. Ann and one watcher are on the first; it stops. Both move
    to the second: ann enters again (same client id and data), the watcher's subscription
    starts over with the member list; a watcher that stayed sees the same."""
    cfgs = [fast_config(nats_url, relay_id=f"r{i}") for i in (1, 2)]
    async with running_relays(*cfgs) as (first, second):
        await sibling_listed(first.url, second.url)
        with anyio.fail_after(timeout(40)):
            async with (
                fast_connect(first.url) as ann,
                fast_connect(first.url) as moving,
                fast_connect(second.url) as steady,
            ):
                assert ann.relay == moving.relay == "r1" and steady.relay == "r2"
                subs = [
                    await moving.subscribe("lobby", presence=True),
                    await steady.subscribe("lobby", presence=True),
                ]
                async with watching(subs[0]) as moved, watching(subs[1]):
                    await ann.presence("lobby").enter({"name": "Ann"}, client_id="ann")
                    before = ann.connection_id

                    def converged() -> bool:
                        return all(
                            [
                                (m.client_id, m.connection, m.data, m.status)
                                for m in s.presence.members
                            ]
                            == [("ann", ann.connection_id, {"name": "Ann"}, "present")]
                            for s in subs
                        )

                    await wait_until(converged, "both watchers see ann", 10)
                    syncs = sum(isinstance(e, PresenceSync) for e in moved.events)
                    first.stop()  # going away: both clients move to r2
                    await wait_until(
                        lambda: ann.relay == moving.relay == "r2" and ann.connection_id != before,
                        "ann and the watcher on r2",
                        20,
                    )
                    # ann's old member goes (its relay is given up), her new one stays.
                    await wait_until(converged, "views converge on ann's new connection", 20)
                    assert ann.presence("lobby").client_id == "ann"
                    # The moved watcher got the member list again from its new connection.
                    await wait_until(
                        lambda: sum(isinstance(e, PresenceSync) for e in moved.events) > syncs,
                        "a fresh member list",
                        10,
                    )
                    assert await steady.presence("lobby").members() == subs[1].presence.members


async def test_token_mode_the_member_is_the_tokens_sub(nats_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"sdk-presence-secret-0123456789abcdef")
    cfg = fast_config(nats_url).model_copy(
        update={"auth": AuthSection(mode="token", secret_file=str(secret))}
    )

    def provider(sub: str) -> Any:
        async def token() -> str:
            caps = {"room": ["subscribe", "presence"]}
            return issue_token(secret.read_bytes(), sub, caps, 300)

        return token

    async with running_relays(cfg) as (relay,):
        with anyio.fail_after(timeout(30)):
            async with (
                fast_connect(relay.url, token_provider=provider("alice")) as alice,
                fast_connect(relay.url, token_provider=provider("bob")) as bob,
            ):
                sub = await bob.subscribe("room", presence=True)
                presence = alice.presence("room")
                await presence.enter({"x": 1})
                assert presence.client_id == "alice"
                with pytest.raises(RequestRefused) as refused:
                    await presence.enter({"x": 2}, client_id="mallory")
                assert refused.value.code == "forbidden"
                assert presence.entered  # still as alice, with the data the relay has
                await wait_until(
                    lambda: who(sub.presence.members) == [("alice", {"x": 1})], "alice", 10
                )
                api = HttpClient(relay.url, token_provider=provider("bob"), timeout_s=timeout(10))
                assert who(await api.presence("room")) == [("alice", {"x": 1})]
                with pytest.raises(RequestRefused) as refused:
                    await alice.presence("elsewhere").enter()
                assert refused.value.code == "forbidden"
                assert not alice.presence("elsewhere").entered


async def test_over_sse_members_and_events_work_and_entering_says_why_not(
    nats_url: str,
) -> None:
    """A relay that refuses WebSocket (the client is on SSE) next to one that accepts it."""
    blocked = fast_config(nats_url, relay_id="r1", relay={"websocket": False})
    async with running_relays(blocked, fast_config(nats_url, relay_id="r2")) as (sse, ws):
        with anyio.fail_after(timeout(30)):
            async with fast_connect(sse.url) as watcher, fast_connect(ws.url) as ann:
                assert watcher.transport == "sse" and ann.transport == "websocket"
                sub = await watcher.subscribe("hall", presence=True)
                await ann.presence("hall").enter("here", client_id="ann")
                await wait_until(
                    lambda: who(sub.presence.members) == [("ann", "here")],
                    "ann's enter over SSE",
                    10,
                )
                assert who(await watcher.presence("hall").members()) == [("ann", "here")]
                with pytest.raises(PresenceUnavailable, match="SSE"):
                    await watcher.presence("hall").enter()
                assert not watcher.presence("hall").entered
                await watcher.presence("hall").leave()  # leaving needs no relay: fine on SSE
                await ann.presence("hall").leave()
                await wait_until(lambda: sub.presence.members == (), "ann's leave", 10)
