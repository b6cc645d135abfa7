"""What an operator sees (issue #14, "Observe"): metrics that move with real traffic, the
readiness endpoint, JSON log lines, the Grafana dashboard's queries and ``relaynet status``
against a two-region network."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from relay.node import RelayNode
from relay.status import run_status
from relay.status_view import Samples, parse_metrics, total
from tests.support.http import http_get, http_get_ok
from tests.support.nats import NatsProcess
from tests.support.regions import region_configs, region_nats, running_regions
from tests.support.relays import cli_process, config_file, make_config, running_relays, timeout
from tests.support.waiting import wait_until
from tests.support.wsclient import protocol_client

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "relaynet.json"


async def metrics(node: RelayNode) -> Samples:
    return parse_metrics(await http_get_ok(node, "/metrics"))


async def test_metrics_move_with_traffic(nats_url: str) -> None:
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with (
            protocol_client(relay.url) as sub1,
            protocol_client(relay.url) as sub2,
            protocol_client(relay.url) as pub,
        ):
            for sub in (sub1, sub2):
                await sub.subscribe("chat:obs")
            for i in range(5):
                assert (await pub.publish("chat:obs", {"n": i}, id=f"m{i}"))["op"] == "ack"
            await sub1.wait_messages("chat:obs", 5)
            await sub2.wait_messages("chat:obs", 5)
            await pub.send_raw("{not json")
            assert (await http_get(relay, "/v1/ready"))[0] == 200
            assert (await http_get(relay, "/no/such/page"))[0] == 404

            def counted(m: Samples) -> bool:
                errors = total(m, "relaynet_errors_total", code="bad_json")
                return errors is not None and errors >= 1

            seen: Samples = {}

            async def scraped() -> bool:
                nonlocal seen
                seen = await metrics(relay)
                return counted(seen)

            await wait_until(scraped, "the bad frame counted as a bad_json error")
        m = seen
        assert total(m, "relaynet_messages_published_total", namespace="default") == 5
        assert total(m, "relaynet_messages_delivered_total", namespace="default") == 10
        assert total(m, "relaynet_publish_ack_seconds_count") == 5
        ack_sum = total(m, "relaynet_publish_ack_seconds_sum")
        assert ack_sum is not None and 0 < ack_sum < timeout(10)
        # One per message this relay fanned out (the feed exists while someone subscribes).
        assert total(m, "relaynet_store_to_fanout_seconds_count") == 5
        assert total(m, "relaynet_http_requests_total", route="/v1/ready", status="200") == 1
        assert total(m, "relaynet_http_requests_total", route="other", status="404") == 1
        assert total(m, "relaynet_nats_connected") == 1
        assert total(m, "relaynet_jetstream_available") == 1
        assert total(m, "relaynet_draining") == 0
        assert total(m, "relaynet_sse_streams") == 0
        assert total(m, "relaynet_presence_members") == 0


async def test_readiness_says_what_is_missing(tmp_path: Path) -> None:
    server = NatsProcess(tmp_path / "nats")
    url = server.start()
    try:
        async with running_relays(make_config(nats_url=url, region="eu-west")) as (relay,):
            status, body = await http_get(relay, "/v1/ready")
            assert status == 200
            assert json.loads(body) == {
                "status": "ok", "nats": True, "jetstream": True, "draining": False,
                "links": {}, "region": "eu-west", "relay": "r1",
            }  # fmt: skip
            server.kill()
            answer: dict[str, object] = {}

            async def unready() -> bool:
                nonlocal answer
                status, body = await http_get(relay, "/v1/ready")
                answer = json.loads(body)
                return status == 503 and answer["nats"] is False

            await wait_until(unready, "/v1/ready answers 503 once NATS is gone", 20)
            assert answer["status"] == "unavailable" and answer["jetstream"] is False
            m = await metrics(relay)
            assert total(m, "relaynet_nats_connected") == 0
            assert total(m, "relaynet_jetstream_available") == 0
            server.start()  # same port, same store: ready again

            async def ready() -> bool:
                return (await http_get(relay, "/v1/ready"))[0] == 200

            await wait_until(ready, "/v1/ready answers 200 once NATS is back", 20)
    finally:
        server.stop()


async def test_json_logs_carry_region_and_relay(tmp_path: Path, nats_url: str) -> None:
    cfg = make_config(nats_url=nats_url, region="ap-south", relay_id="ap-south-7")
    path = config_file(tmp_path / "relay.toml", cfg)
    log = tmp_path / "relay.log"
    args = ["relay", "--config", str(path), "--log-format", "json"]
    with cli_process(args, log, "ready on ") as (proc, line):
        url = line.rsplit("ready on ", 1)[1]
        async with protocol_client(url) as client:
            await client.subscribe("chat:logs")
        proc.terminate()
        await anyio.to_thread.run_sync(proc.wait, timeout(20))
    lines = [json.loads(text) for text in log.read_text().splitlines() if text.strip()]
    assert lines, "the relay logged nothing"
    for entry in lines:
        assert entry["region"] == "ap-south" and entry["relay"] == "ap-south-7", entry
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    messages = [e["message"] for e in lines]
    assert any("listening on" in m for m in messages), messages
    assert any("shutting down" in m for m in messages), messages


async def test_status_dashboard_and_links_across_two_regions(tmp_path: Path) -> None:
    regions = ("us-east", "eu-west")
    with region_nats(tmp_path, regions) as urls:
        async with running_regions(region_configs(urls)) as nodes:
            east, west = nodes["us-east"][0], nodes["eu-west"][0]

            async def links_up() -> bool:
                for node in (east, west):
                    status, body = await http_get(node, "/v1/ready")
                    if status != 200 or "down" in json.loads(body)["links"].values():
                        return False
                return True

            await wait_until(links_up, "both regions see their link up", 30)
            async with protocol_client(west.url) as sub, protocol_client(east.url) as pub:
                await sub.subscribe("chat:status")
                await pub.publish("chat:status", "hello", id="s1")
                await sub.wait_messages("chat:status", 1, 20)

            # Every metric the dashboard queries is served by a real relay.
            served = set(await metrics(west)) | set(await metrics(east))
            queried = set(re.findall(r"\brelaynet_[a-z_]+", DASHBOARD.read_text()))
            assert queried, "the dashboard queries no relaynet metric"
            assert queried <= served, sorted(queried - served)
            received = total(await metrics(west), "relaynet_federation_link_received_total")
            assert received is not None and received >= 1
            assert total(await metrics(west), "relaynet_federation_link_lag_seconds") is not None

            console = Console(record=True, width=200, force_terminal=False)
            assert await run_status([east.url], False, 2.0, console) == 0
            out = console.export_text()
            for text in ("us-east", "eu-west", "us-east-1", "eu-west-1", "ready"):
                assert text in out, out
            link_lines = [ln for ln in out.splitlines() if "us-east" in ln and "eu-west" in ln]
            assert any(" up " in f" {ln} " for ln in link_lines), out

            # --watch redraws until stopped; rates appear from the second round on.
            live = Console(record=True, width=200, force_terminal=True)
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_status, [east.url], True, 0.1, live)
                await wait_until(
                    lambda: (
                        re.search(r"eu-west-1 .*ready.* 0\.0 ", live.export_text(clear=False))
                        is not None
                    ),
                    "--watch shows a second round, with rates",
                )
                tg.cancel_scope.cancel()

            # The command itself, as an operator runs it.
            result = await anyio.run_process(
                [sys.executable, "-m", "relay.cli", "status", "--seeds", west.url],
                check=False,
                stderr=subprocess.STDOUT,
            )
            printed = result.stdout.decode()
            assert result.returncode == 0, printed
            assert "us-east-1" in printed and "eu-west-1" in printed, printed


async def test_status_says_no_seed_answered(tmp_path: Path) -> None:
    result = await anyio.run_process(
        [sys.executable, "-m", "relay.cli", "status", "--seeds", "http://127.0.0.1:1"],
        check=False,
        stderr=subprocess.STDOUT,
    )
    assert result.returncode == 1
    assert "no seed answered /v1/edges" in result.stdout.decode()
