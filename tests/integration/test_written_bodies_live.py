"""The live feed against a real nats-server: entries this process stored come back from
the bodies it sent (not decoded again, and each only once); entries another writer stored
are decoded and checked as always, and arrive all the same."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from federation.adapters.nats_client import NatsClient
from federation.adapters.nats_region_log import NatsRegionLog
from federation.logformat import StoredMessage, entry_key
from relay.adapters.nats_broker import NatsBroker
from relay.core.channels import Channel
from relay.core.feed import LogEntry
from relay.harness.toolkit import relay_config

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def _message(n: int) -> StoredMessage:
    ts = {"us-east": n}
    return StoredMessage(f"m{n}", msgspec.Raw(b'"x"'), "us-east", ts, ts)


async def test_own_entries_come_back_from_their_bodies_and_others_are_decoded(
    nats_url: str,
) -> None:
    cfg = relay_config(nats_url=nats_url)
    relay_nc, other_nc = NatsClient(), NatsClient()
    await relay_nc.connect(nats_url)
    await other_nc.connect(nats_url)
    try:
        relay_log = NatsRegionLog(relay_nc, cfg.region_settings())
        broker = NatsBroker(relay_nc, cfg, relay_log)
        await broker.ensure_streams()
        other_log = NatsRegionLog(other_nc, cfg.region_settings())  # keeps no bodies
        assert other_log.written is None and relay_log.written is broker.written

        channel = Channel("chat:written")
        got: list[LogEntry] = []
        four = anyio.Event()

        def on_entry(entry: LogEntry) -> None:
            got.append(entry)
            if len(got) == 4:
                four.set()

        sub = await broker.subscribe_live(channel, on_entry)
        await relay_nc.flush()
        ours = [(_message(1), entry_key(channel, _message(1))), (_message(2), "k2")]
        last = await relay_log.append_group(channel, ours, 0)
        assert isinstance(last, int)
        theirs = [(_message(3), "k3"), (_message(4), "k4")]
        assert isinstance(await other_log.append_group(channel, theirs, last), int)
        with anyio.fail_after(10):
            await four.wait()
        await sub.unsubscribe()

        assert [e.msg for e in got] == [_message(n) for n in (1, 2, 3, 4)]
        assert got[0].msg is ours[0][0] and got[1].msg is ours[1][0]  # as built
        assert got[2].msg is not theirs[0][0]  # decoded from what NATS carried
        assert len(broker.written) == 0  # each taken once
    finally:
        await relay_nc.close()
        await other_nc.close()
