"""A region's own NATS crashes and comes back under load: its relays keep their clients,
federation catches up, and subscribers get every message once, in causal order, without
resubscribing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.checker import check_causal, ids
from tests.support.nats import NatsProcess
from tests.support.regions import region_configs, running_regions
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_subscriber_survives_its_regions_nats_restart(tmp_path: Path) -> None:
    servers = {r: NatsProcess(tmp_path / f"nats-{r}") for r in ("us-east", "eu-west")}
    try:
        urls = {r: s.start() for r, s in servers.items()}
        async with running_regions(region_configs(urls)) as regions:
            east, west = regions["us-east"][0], regions["eu-west"][0]
            async with protocol_client(west.url) as sub, protocol_client(east.url) as pub:
                await sub.subscribe("chat:bump")
                acked: list[str] = []
                for n in range(20):
                    acked.append((await pub.publish("chat:bump", n))["id"])
                await sub.wait_messages("chat:bump", 20)
                servers["eu-west"].kill()
                for n in range(20, 60):
                    acked.append((await pub.publish("chat:bump", n))["id"])
                # eu-west's relay has seen its NATS go: the restart below is one it lives
                # through (back within [nats] lost_grace_s, so it keeps its clients).
                await wait_until(lambda: not west.nats.available(), "eu-west's NATS lost")
                servers["eu-west"].start()
                await sub.wait_messages("chat:bump", 60, 60)
                received = sub.messages["chat:bump"]
                assert check_causal(received) == []
                assert ids(received) == acked
    finally:
        for server in servers.values():
            server.stop()
