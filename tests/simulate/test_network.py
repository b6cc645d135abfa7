"""The simulation itself, for real: NATS in Docker containers, relay processes, delay
proxies. Partitions, latencies and a region restart, checked with the federation
checker; teardown leaves no container (asked of the Docker API)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import docker
import pytest

from relay.simulate import containers
from relay.simulate.network import RelayNetwork
from relay.simulate.spec import SpecError, parse_matrix
from tests.support.checker import check_causal, ids

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

MATRIX = """\
#         us-east  eu-west  ap-south
us-east   0        30       60
eu-west   30       0        45
ap-south  60       45       0
"""


@pytest.fixture(autouse=True)
def docker_engine() -> None:
    reason = containers.docker_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the simulation tests: {reason}")
        pytest.skip(reason)


def our_containers(session: str) -> list[Any]:
    client = docker.from_env()
    try:
        return list(
            client.containers.list(all=True, filters={"label": f"relaynet.simulate={session}"})
        )
    finally:
        client.close()


async def test_partition_heal_and_region_restart_in_containers() -> None:
    spec = parse_matrix(MATRIX)
    network = RelayNetwork(spec)
    async with network:
        assert len(our_containers(network.session)) == 3
        async with (
            network.client(near="us-east") as east,
            network.client(near="eu-west") as west,
            network.client(near="ap-south") as south,
        ):
            for client in (east, west, south):
                await client.subscribe("chat:sim")
            acked = [(await east.publish("chat:sim", n))["id"] for n in range(10)]
            # The requested latencies are what the links measure.
            await south.wait_messages("chat:sim", 10, 30)
            rows = {row["link"]: row for row in network.status()}
            measured = rows["ap-south <- us-east"]["measured_ms"]
            assert measured is not None and 55 <= measured < 60 + 40, rows

            network.partition("us-east", "eu-west")
            network.partition("ap-south", "eu-west")
            acked += [(await east.publish("chat:sim", n))["id"] for n in range(10, 20)]
            acked += [(await west.publish("chat:sim", n))["id"] for n in range(20, 30)]
            await south.wait_for(
                lambda: set(acked[10:20]) <= set(ids(south.messages["chat:sim"])), 30
            )  # the others keep talking while eu-west is cut off
            assert not set(acked[20:30]) & set(ids(east.messages["chat:sim"]))
            network.heal()
            for client in (east, west, south):
                await client.wait_messages("chat:sim", 30, 60)

        # ap-south burns down while the others publish; it comes back with its store.
        await network.kill_region("ap-south")
        async with network.client(near="us-east") as east:
            acked += [(await east.publish("chat:sim", n))["id"] for n in range(30, 40)]
        await network.restart_region("ap-south")
        async with network.client(near="ap-south") as south:
            await south.subscribe("chat:sim", position={})
            await south.wait_messages("chat:sim", 40, 60)
            received = south.messages["chat:sim"]
            assert check_causal(received) == []
            assert sorted(ids(received)) == sorted(acked)
    assert our_containers(network.session) == [], "teardown left containers"


async def test_operations_name_what_is_wrong() -> None:
    async with RelayNetwork(parse_matrix(MATRIX)) as network:
        with pytest.raises(SpecError, match="unknown region 'mars'"):
            network.partition("us-east", "mars")
        with pytest.raises(SpecError, match="must not be negative"):
            network.set_latency("us-east", "eu-west", -1)
        network.set_latency("us-east", "eu-west", 5)
        assert {
            r["requested_ms"]
            for r in network.status()
            if "eu-west" in r["link"] and "us-east" in r["link"]
        } == {5}


def test_the_fixture_from_a_synchronous_test(relay_network: Any) -> None:
    edges = relay_network.edges()
    assert set(edges) == {"us-east", "eu-west", "ap-south"}
    relay_network.partition("us-east", "eu-west")
    assert {r["state"] for r in relay_network.status() if "ap-south" not in r["link"]} == {"cut"}
    relay_network.heal()


def test_cli_simulate_runs_and_leaves_nothing(tmp_path: Any) -> None:
    before = {c.id for c in _all_simulation_containers()}
    proc = subprocess.run(
        [sys.executable, "-m", "relay.cli", "simulate", "--regions", "us-east,eu-west",
         "--latency", "10ms", "--duration", "3", "--refresh", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "us-east" in proc.stdout and "ws://127.0.0.1:" in proc.stdout
    assert "eu-west <- us-east" in proc.stdout  # the status table
    assert {c.id for c in _all_simulation_containers()} == before


def _all_simulation_containers() -> list[Any]:
    client = docker.from_env()
    try:
        return list(client.containers.list(all=True, filters={"label": "relaynet.simulate"}))
    finally:
        client.close()
