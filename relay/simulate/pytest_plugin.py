"""pytest plugin (entry point ``relaynet``): the ``relay_network`` fixture.

    @pytest.mark.relay_network(regions=["us-east", "eu-west"], latency_ms=80)
    def test_my_app(relay_network):
        url = relay_network.edge("eu-west")
        relay_network.partition("us-east", "eu-west")
        ...

Without a Docker engine the fixture skips with the reason; when ``CI=true`` it
fails instead, so a CI that forgot to start Docker cannot pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from relay.simulate.spec import NetworkSpec, parse_matrix, parse_regions, uniform

DEFAULT_REGIONS = ("us-east", "eu-west", "ap-south")
DEFAULT_LATENCY_MS = 20.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "relay_network(regions=None, latency_ms=20, matrix=None, relays_per_region=1, "
        "namespaces=(), relays_in_containers=False, networking='host'): the shape of the "
        "relay_network "
        "fixture's network",
    )


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("relay_network")
    return dict(marker.kwargs) if marker else {}


@pytest.fixture
def relay_network_spec(request: pytest.FixtureRequest) -> NetworkSpec:
    options = _options(request)
    if options.get("matrix"):
        return parse_matrix(str(options["matrix"]), "relay_network(matrix=...)")
    regions = options.get("regions") or DEFAULT_REGIONS
    return uniform(
        parse_regions(",".join(regions)), float(options.get("latency_ms", DEFAULT_LATENCY_MS))
    )


@pytest.fixture
def relay_network(request: pytest.FixtureRequest, relay_network_spec: NetworkSpec) -> Iterator[Any]:
    from relay.simulate import missing_extra

    if (reason := missing_extra()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"relay_network needs the simulate extra: {reason}")
        pytest.skip(f"relay_network needs the simulate extra: {reason}")
    from relay.simulate import containers
    from relay.simulate.network import relay_network as network_context

    reason = containers.docker_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"relay_network needs a Docker engine: {reason}")
        pytest.skip(f"relay_network needs a Docker engine: {reason}")
    options = _options(request)
    with network_context(
        relay_network_spec,
        relays_per_region=int(options.get("relays_per_region", 1)),
        namespaces=list(options.get("namespaces", ())),
        relays_in_containers=bool(options.get("relays_in_containers", False)),
        networking=str(options.get("networking", "host")),
    ) as network:
        yield network
