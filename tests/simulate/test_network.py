"""The simulation itself, for real: NATS in Docker containers, relay processes, delay
proxies. Partitions, latencies and a region restart, checked with the federation
checker; teardown leaves no container (asked of the Docker API)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import anyio
import docker
import pytest

from relay.client.connection import ConnectionState, Subscription, data_of
from relay.simulate import containers
from relay.simulate.client import timeout
from relay.simulate.network import RelayNetwork
from relay.simulate.spec import SpecError, parse_matrix, uniform
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


def our_networks(session: str) -> list[Any]:
    client = docker.from_env()
    try:
        return list(client.networks.list(filters={"label": f"relaynet.simulate={session}"}))
    finally:
        client.close()


async def test_bridge_networking_a_network_of_their_own_removed_at_the_end() -> None:
    """networking="bridge": the NATS containers sit on a bridge network made for the
    session (not the host's), reached through ports published on 127.0.0.1; federation,
    a cut and a region restart work the same; teardown removes the network too."""
    network = RelayNetwork(uniform(("us-east", "eu-west"), 10), networking="bridge")
    async with network:
        (bridge,) = our_networks(network.session)
        containers_now = our_containers(network.session)
        assert len(containers_now) == 2
        for container in containers_now:
            settings = container.attrs["NetworkSettings"]
            assert list(settings["Networks"]) == [bridge.name]
            published = [b["HostIp"] for b in settings["Ports"]["4222/tcp"]]
            assert published == ["127.0.0.1"]  # nothing listens beyond loopback
        async with network.client("us-east") as east, network.client("eu-west") as west:
            await west.subscribe("chat:bridge")
            acked = [(await east.publish("chat:bridge", n))["id"] for n in range(5)]
            await west.wait_messages("chat:bridge", 5, 30)
            network.partition("us-east", "eu-west")
            acked += [(await east.publish("chat:bridge", n))["id"] for n in range(5, 10)]
            network.heal()
            await west.wait_messages("chat:bridge", 10, 30)
            assert ids(west.messages["chat:bridge"]) == acked
        await network.kill_region("eu-west")
        await network.restart_region("eu-west")
        async with network.client("eu-west") as west:
            await west.subscribe("chat:bridge", position={})
            await west.wait_messages("chat:bridge", 10, 30)
    assert our_containers(network.session) == []
    assert our_networks(network.session) == []


def test_bridge_networking_and_relays_in_containers_do_not_mix() -> None:
    with pytest.raises(SpecError, match="bridge networking runs relays as local processes"):
        RelayNetwork(uniform(("us-east",), 0), networking="bridge", relays_in_containers=True)
    with pytest.raises(SpecError, match="host or bridge"):
        RelayNetwork(uniform(("us-east",), 0), networking="overlay")


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


class Changes:
    """Bounded waits on conditions that callbacks and tasks make true (no sleeps)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def wake(self, *_: object) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def until(self, predicate: Any, seconds: float = 30) -> None:
        with anyio.fail_after(timeout(seconds)):
            while not predicate():
                await self._event.wait()


async def consume(sub: Subscription, frames: list[dict[str, Any]], changes: Changes) -> None:
    async for message in sub:
        frames.append(
            {"id": message.id, "origin": message.origin, "ts": message.ts.to_dict(),
             "data": data_of(message)}
        )  # fmt: skip
        changes.wake()


async def test_sdk_clients_route_to_the_nearest_region_under_the_configured_latencies() -> None:
    """A routing client at each location measures the matrix over its own paths and
    connects to its own region; the others rank by latency. Then the client at us-east
    loses its region and fails over to the next nearest (eu-west, 30 ms before
    ap-south's 60) while ap-south publishes: nothing lost, nothing twice."""
    spec = parse_matrix(MATRIX)
    fast = {"backoff_base_s": 0.05, "backoff_max_s": 0.5, "probes": 3}
    async with RelayNetwork(spec) as network:
        for here in spec.regions:
            with anyio.fail_after(timeout(30)):
                async with network.sdk_client(near=here, **fast) as client:
                    choice = client.choice
                    assert choice is not None
                    by_matrix = sorted(
                        spec.regions, key=lambda r: (spec.latency_ms.get((here, r), 0.0), r)
                    )
                    assert list(choice.order) == by_matrix, choice.reasons
                    assert (client.region, client.url) == (here, network.edge(here))
                    for there in by_matrix[1:]:  # a probe crosses the path twice
                        rtt, one_way = choice.rtt_ms[there], spec.latency_ms[(here, there)]
                        assert rtt is not None and rtt >= 1.8 * one_way, choice.reasons

        # A latency change moves the clients' paths with the backbone: us-east falls behind.
        network.set_latency("eu-west", "us-east", 90)
        with anyio.fail_after(timeout(30)):
            async with network.sdk_client(near="eu-west", **fast) as client:
                assert client.choice is not None
                assert client.choice.order == ("eu-west", "ap-south", "us-east")
                rtt = client.choice.rtt_ms["us-east"]
                assert rtt is not None and rtt >= 1.8 * 90, client.choice.reasons
        network.set_latency("eu-west", "us-east", 30)

        changes = Changes()
        received: list[dict[str, Any]] = []
        acked: list[str] = []
        stop, stopped = anyio.Event(), anyio.Event()
        with anyio.fail_after(timeout(60)):
            async with (
                network.sdk_client(near="us-east", on_state=changes.wake, **fast) as client,
                network.client(near="ap-south") as publisher,
                anyio.create_task_group() as tg,
            ):
                sub = await client.subscribe("chat:route")
                tg.start_soon(consume, sub, received, changes)

                async def publish() -> None:
                    n = 0
                    while not stop.is_set():
                        ack = await publisher.publish("chat:route", {"pub": "south", "n": n})
                        acked.append(ack["id"])
                        n += 1
                    stopped.set()
                    changes.wake()

                tg.start_soon(publish)
                await changes.until(lambda: len(received) >= 20)
                await network.kill_region("us-east")
                await changes.until(
                    lambda: client.state is ConnectionState.CONNECTED and client.region != "us-east"
                )
                assert client.region == "eu-west"
                then = len(received)
                await changes.until(lambda: len(received) >= then + 20)
                stop.set()
                await changes.until(lambda: stopped.is_set() and len(received) >= len(acked))
                tg.cancel_scope.cancel()
        got = [frame["id"] for frame in received]
        assert len(got) == len(set(got)), "duplicate delivered"
        assert sorted(got) == sorted(acked), "lost or unexpected messages"
        assert [frame["data"]["n"] for frame in received] == list(range(len(acked)))
        assert check_causal(received) == []


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
