"""Where a relay sends clients it will not keep, and what relay beats it believes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.adapters.directory import _relay_beat
from relay.core.redirect import KnownRelay, redirect_target

US, EU, AP = "us-east", "eu-west", "ap-south"


def relay(name: str, state: str = "up", region: str = US) -> KnownRelay:
    return KnownRelay(region, name, f"ws://{name}:8701/v1/ws", state)  # type: ignore[arg-type]


def test_a_sibling_that_takes_connections_and_nothing_else() -> None:
    relays = [
        relay("us-2", "full"),
        relay("us-3"),
        relay("us-4", "draining"),
        relay("eu-1", region=EU),
    ]
    assert redirect_target(US, "us-1", relays, 0) == relay("us-3")


def test_never_to_itself_nor_to_another_region() -> None:
    assert redirect_target(US, "us-1", [relay("us-1"), relay("eu-1", region=EU)], 0) is None


def test_clients_are_spread_over_the_siblings() -> None:
    relays = [relay("us-3"), relay("us-2"), relay("us-4")]
    targets = {redirect_target(US, "us-1", relays, n) for n in range(6)}
    assert targets == {relay(f"us-{i}") for i in (2, 3, 4)}


@given(
    st.lists(
        st.tuples(
            st.sampled_from([US, EU, AP]),
            st.sampled_from(["a", "b", "c", "us-1"]),
            st.sampled_from(["up", "full", "draining"]),
        ),
        max_size=8,
    ),
    st.integers(0, 1000),
)
def test_the_target_is_always_a_sibling_that_takes_clients(
    raw_relays: list[tuple[str, str, str]], spread: int
) -> None:
    relays = [relay(name, state, region) for region, name, state in raw_relays]
    target = redirect_target(US, "us-1", relays, spread)
    siblings = [r for r in relays if r.region == US and r.relay != "us-1" and r.state == "up"]
    if siblings:
        assert target in siblings
    else:
        assert target is None


def beat(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_relay_beats() -> None:
    ok = beat(region=US, relay="us-2", url="ws://10.0.0.2:8701/v1/ws", state="full", t=1.0)
    assert _relay_beat(ok, US) == KnownRelay(US, "us-2", "ws://10.0.0.2:8701/v1/ws", "full")
    default_state = beat(relay="us-2", url="wss://x/v1/ws")
    assert _relay_beat(default_state, US) == KnownRelay(US, "us-2", "wss://x/v1/ws", "up")


@pytest.mark.parametrize(
    "payload",
    [
        beat(region=US, t=1.0),  # a federation beat: the region is alive, no relay named
        b"not json",
        b"[1,2]",
        beat(relay="r", url="http://x/v1/ws"),
        beat(relay="r", url="ws:///v1/ws"),
        beat(relay="r", url="ws://x/v1/ws", state="sleepy"),
        beat(relay="", url="ws://x/v1/ws"),
        beat(relay=7, url="ws://x/v1/ws"),
        beat(relay="r", url="ws://x/" + "a" * 5000),
    ],
)
def test_beats_that_name_no_usable_relay(payload: bytes) -> None:
    assert _relay_beat(payload, US) is None
