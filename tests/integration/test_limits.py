"""Limits that hold against a hostile client, with nothing lost for well-behaved ones
(issue #12): a byte-bounded outbox, publish rate limits, the authentication deadline."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from relay.client import connect
from relay.config.schema import AuthSection
from tests.support.checker import check_contiguous
from tests.support.relays import (
    config_file,
    make_config,
    relay_process,
    running_relays,
    timeout,
)
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

STORED = 400  # messages in the channel the hostile client reads pages of
PAD = "h" * 5000  # ~5 KB each: one history page of 400 is ~2 MB
HISTORY_REQUESTS = 60  # pages requested without reading: ~120 MB if nothing held
LIVE = 200  # messages a well-behaved subscriber must get meanwhile
# The relay's RSS may grow by at most this much while the hostile client asks for ~120 MB
# (before the byte bound, such a client grew a relay by 1.3 GiB in 12 s): the 4 MiB outbox,
# history pages being read from NATS and built, and the allocator's slack.
RSS_GROWTH_BOUND_BYTES = 96 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_client_that_never_reads_history_pages_is_cut_off_and_rss_holds(
    nats_url: str, tmp_path: Path
) -> None:
    cfg = make_config(
        nats_url=nats_url,
        namespaces=[{"name": "chat", "prefix": "chat:", "history_max_messages": 10_000}],
    )
    assert cfg.limits.outbox_max_bytes == 4 * 1024 * 1024  # the default is what is tested
    config = config_file(tmp_path / "relay.toml", cfg)
    with relay_process(config, tmp_path / "relay.log") as (proc, url):
        async with protocol_client(url) as pub, protocol_client(url, max_size=None) as good:
            for start in range(0, STORED, 50):  # fill the channel, 50 pipelined at a time
                refs = [await pub.send(_publish("chat:big", n)) for n in range(start, start + 50)]
                await pub.wait_for(lambda refs=refs: all(pub.reply(r) for r in refs), 30)
            assert (await good.subscribe("chat:live"))["op"] == "subscribed"
            page = await good.request({"op": "history", "channel": "chat:big", "limit": 1000})
            assert len(page["messages"]) == STORED
            baseline = rss_bytes(proc.pid)
            peak = baseline

            async with ws_connect(url, max_queue=1, max_size=None) as hostile:
                json.loads(await hostile.recv())  # connected; from now on it reads nothing
                request = json.dumps({"op": "history", "channel": "chat:big", "limit": 1000})
                with anyio.fail_after(timeout(30)):
                    for n in range(HISTORY_REQUESTS):
                        await hostile.send(request)
                        # Meanwhile a well-behaved publisher and subscriber carry on.
                        if n < LIVE:
                            await pub.send(_publish("chat:live", n))
                        peak = max(peak, rss_bytes(proc.pid))
                        await anyio.sleep(0.01)
                    for n in range(HISTORY_REQUESTS, LIVE):
                        await pub.send(_publish("chat:live", n))
                # Still reading nothing, it pings until the relay has dropped it (it closes
                # with 4000, which cannot reach a client that does not read, then aborts).
                with anyio.fail_after(timeout(60)):
                    try:
                        while True:
                            await hostile.send(json.dumps({"op": "ping"}))
                            peak = max(peak, rss_bytes(proc.pid))
                            await anyio.sleep(0.1)
                    except ConnectionClosed:
                        pass
            log = (tmp_path / "relay.log").read_text()
            assert ": slow_consumer (4000)" in log, log[-2000:]
            assert "write_timeout" not in log  # the byte bound, not the deadline, cut it

            await good.wait_messages("chat:live", LIVE, 60)
            assert check_contiguous(good.messages["chat:live"], "us-east") == []
            assert [m["data"]["n"] for m in good.messages["chat:live"]] == list(range(LIVE))
            peak = max(peak, rss_bytes(proc.pid))
        growth = peak - baseline
        print(f"relay RSS: baseline {baseline >> 20} MiB, peak {peak >> 20} MiB")
        assert growth < RSS_GROWTH_BOUND_BYTES, f"RSS grew by {growth >> 20} MiB"
        assert proc.poll() is None  # the relay is still up


def _publish(channel: str, n: int) -> dict[str, Any]:
    return {"op": "publish", "channel": channel, "data": {"n": n, "pad": PAD}}


async def test_publishes_above_the_rate_are_refused_then_the_sdk_stores_all_in_order(
    nats_url: str,
) -> None:
    cfg = make_config(nats_url=nats_url, limits={"publish_rate": 50.0, "publish_burst": 10})
    async with running_relays(cfg) as (relay,):
        # The raw protocol: past the burst, rate_limited with a retry-after, nothing stored.
        async with protocol_client(relay.url) as raw:
            refs = [
                await raw.send({"op": "publish", "channel": "chat:raw", "data": n})
                for n in range(30)
            ]
            await raw.wait_for(lambda: all(raw.reply(r) for r in refs), 30)
            replies = [raw.reply(r) for r in refs]
            acked = [r for r in replies if r and r["op"] == "ack"]
            limited = [r for r in replies if r and r.get("code") == "rate_limited"]
            assert len(acked) >= 10 and limited, replies
            assert len(acked) + len(limited) == 30
            assert all(r["temporary"] is True and 0 < r["retry_after_ms"] <= 20 for r in limited)
            page = await raw.request({"op": "history", "channel": "chat:raw", "limit": 100})
            assert len(page["messages"]) == len(acked)

        # The SDK waits as told and sends again: every publish stored once, in order.
        total = 120
        async with protocol_client(relay.url) as watcher:
            assert (await watcher.subscribe("chat:sdk"))["op"] == "subscribed"
            started = time.monotonic()
            with anyio.fail_after(timeout(60)):
                async with connect(relay.url, backoff_base_s=0.05, backoff_max_s=0.5) as client:
                    acks: list[Any] = [None] * total

                    async def publish(n: int) -> None:
                        acks[n] = await client.publish("chat:sdk", {"n": n})

                    async with anyio.create_task_group() as tg:
                        for n in range(total):  # started in order: sent in order
                            tg.start_soon(publish, n)
            elapsed = time.monotonic() - started
            await watcher.wait_messages("chat:sdk", total, 30)
            got = watcher.messages["chat:sdk"]
            assert [m["data"]["n"] for m in got] == list(range(total))
            assert check_contiguous(got, "us-east") == []
            assert [a.id for a in acks] == [m["id"] for m in got]
            # 10 at once, then 50/s: the limit held.
            assert elapsed >= (total - 10) / 50 * 0.9, elapsed


async def test_token_mode_closes_a_silent_connection_at_the_auth_deadline(
    nats_url: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"integration-test-secret-0123456789abcdef")
    auth = AuthSection(mode="token", secret_file=str(secret), auth_timeout_s=1.0)
    cfg = make_config(nats_url=nats_url).model_copy(update={"auth": auth})
    async with running_relays(cfg) as (relay,), protocol_client(relay.url) as silent:
        assert silent.connected is not None
        started = time.monotonic()
        await silent.wait_closed(10)
        waited = time.monotonic() - started
        assert (silent.closed_code, silent.closed_reason) == (4501, "unauthorized")
        assert [e["code"] for e in silent.errors] == ["unauthorized"]
        assert 0.5 <= waited < timeout(5), waited
