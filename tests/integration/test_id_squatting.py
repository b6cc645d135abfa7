"""Publish ids cannot be squatted (issue #12).

The attack: ids are visible to every subscriber; someone who can guess a client's next
ids publishes them first, and the victim's publishes are then acked as duplicates while
their data is never stored. With tokens the relay scopes ids to the token's ``sub``; for
anonymous clients the SDKs make every id 128 random bits, kept across resends.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from relay.adapters.tokens import issue_token
from relay.client import ConnectionState, connect
from relay.config.schema import AuthSection, RelayConfig
from relay.harness.linkproxy import LinkProxy
from tests.support.checker import check_contiguous
from tests.support.relays import make_config, running_relays, timeout
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = b"squatting-test-secret-0123456789abcdef"
CHANNEL = "chat:squat"


def token(sub: str) -> str:
    return issue_token(SECRET, sub, {"chat:*": ["subscribe", "publish", "history"]}, 600)


def token_configs(nats_url: str, tmp_path: Path) -> list[RelayConfig]:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    auth = AuthSection(mode="token", secret_file=str(secret))
    return [
        make_config(nats_url=nats_url, relay_id=f"r{i}").model_copy(update={"auth": auth})
        for i in (1, 2)
    ]


async def test_another_sub_publishing_the_victims_next_ids_first_changes_nothing(
    nats_url: str, tmp_path: Path
) -> None:
    victim_ids = [f"alice-{n}" for n in range(1, 6)]  # a counter: the worst case

    async def dave_token() -> str:
        return token("dave")

    async with running_relays(*token_configs(nats_url, tmp_path)) as (a, b):
        async with (
            protocol_client(f"{b.url}?token={token('carol')}") as carol,
            connect(a.url, token_provider=dave_token) as dave,  # the SDK, which drops repeats
        ):
            assert (await carol.subscribe(CHANNEL))["op"] == "subscribed"
            sdk_sub = await dave.subscribe(CHANNEL)
            async with protocol_client(f"{a.url}?token={token('mallory')}") as mallory:
                squatted = [
                    await mallory.publish(CHANNEL, {"who": "mallory", "n": n}, id=msg_id)
                    for n, msg_id in enumerate(victim_ids)
                ]
            async with protocol_client(f"{b.url}?token={token('alice')}") as alice:
                acks = [
                    await alice.publish(CHANNEL, {"who": "alice", "n": n}, id=msg_id)
                    for n, msg_id in enumerate(victim_ids)
                ]
            # The victim's own retry (lost ack, another relay): deduplicated, as ever.
            async with protocol_client(f"{a.url}?token={token('alice')}") as again:
                retry = await again.publish(CHANNEL, {"who": "alice", "n": 2}, id="alice-3")
                sentinel = await again.publish(CHANNEL, "sentinel", id="alice-sentinel")
            await carol.wait_messages(CHANNEL, 11, 30)
            received = carol.messages[CHANNEL]
            with anyio.fail_after(timeout(30)):
                via_sdk = [await anext(sdk_sub) for _ in range(11)]
    assert [ack["op"] for ack in squatted + acks + [retry, sentinel]] == ["ack"] * 12
    positions = [ack["position"]["us-east"] for ack in squatted + acks]
    assert positions == list(range(1, 11))  # the victim's five are new messages
    assert retry["position"] == acks[2]["position"]
    assert sentinel["position"] == {"us-east": 11}
    # Everything stored is delivered once: the attacker's, then the victim's, then the end.
    assert [(m["id"], m["data"]) for m in received] == [
        *((msg_id, {"who": "mallory", "n": n}) for n, msg_id in enumerate(victim_ids)),
        *((msg_id, {"who": "alice", "n": n}) for n, msg_id in enumerate(victim_ids)),
        ("alice-sentinel", "sentinel"),
    ]
    assert [m["position"] for m in received] == [{"us-east": n} for n in range(1, 12)]
    assert [(m.id, m.data) for m in via_sdk] == [(m["id"], m["data"]) for m in received]
    # The publisher's scope stays inside the region: subscribers never see a sub.
    assert all(
        set(m) == {"op", "channel", "id", "data", "origin", "ts", "position"} for m in received
    )


async def test_anonymous_sdk_ids_are_random_and_kept_when_resent_after_a_lost_ack(
    nats_url: str,
) -> None:
    """The SDK reaches the relay through a delay proxy; the publish is stored, and the
    connection is cut while its ack is still on the way back. On the next connection the
    SDK sends it again with the same id: one message stored, acked at its position."""
    async with (
        running_relays(make_config(nats_url=nats_url)) as (relay,),
        anyio.create_task_group() as tg,
    ):
        proxy = LinkProxy("127.0.0.1", relay.port, name="sdk->relay")
        await tg.start(proxy.run)
        real = f"127.0.0.1:{relay.port}"
        states: list[ConnectionState] = []
        async with (
            protocol_client(relay.url) as observer,
            connect(
                relay.url,
                dial=lambda url: url.replace(real, f"127.0.0.1:{proxy.port}", 1),
                backoff_base_s=0.05,
                backoff_max_s=0.5,
                keepalive_s=30,
                on_state=states.append,
            ) as client,
        ):
            await observer.subscribe(CHANNEL)
            with anyio.fail_after(timeout(30)):
                ids = [(await client.publish(CHANNEL, {"n": n})).id for n in range(20)]
            await observer.wait_messages(CHANNEL, 20, 30)

            # 2.5 s each way: the ack is still in the proxy when the message is stored.
            proxy.set_latency(2500)
            acked: list[Any] = []

            async def publish() -> None:
                acked.append(await client.publish(CHANNEL, {"n": "resent"}))

            async with anyio.create_task_group() as publishing:
                publishing.start_soon(publish)
                await observer.wait_messages(CHANNEL, 21, 30)
                (in_flight,) = client.session.pending  # stored, not acked
                proxy.set_latency(0)
                proxy.cut()
                await wait_until(
                    lambda: ConnectionState.DISCONNECTED in states, "the SDK saw the cut", 30
                )
                proxy.heal()
                await wait_until(lambda: bool(acked), "the resent publish acked", 30)
            last = await client.publish(CHANNEL, "sentinel")
            await observer.wait_messages(CHANNEL, 22, 30)
            stored = observer.messages[CHANNEL]
        tg.cancel_scope.cancel()
    # 128 random bits each (URL-safe base64), nothing shared: no next id to guess.
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    assert len({i[:4] for i in ids}) > 1
    (ack,) = acked
    assert ack.id == in_flight
    assert [m["id"] for m in stored] == [*ids, in_flight, last.id]
    assert ack.position.to_dict() == stored[20]["position"]
    assert check_contiguous(stored, "us-east") == []
    assert states.count(ConnectionState.CONNECTED) >= 2
