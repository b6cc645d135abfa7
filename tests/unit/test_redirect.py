"""Where a relay sends clients it will not keep, and what relay beats it believes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.adapters.directory import _relay_beat
from relay.core.redirect import KnownRelay, PeerEdge, Redirect, redirect_target

US, EU, AP = "us-east", "eu-west", "ap-south"


def relay(name: str, state: str = "up", region: str = US) -> KnownRelay:
    return KnownRelay(region, name, f"ws://{name}:8701/v1/ws", state)  # type: ignore[arg-type]


PEERS = [PeerEdge(EU, "ws://eu:8701/v1/ws", True), PeerEdge(AP, "ws://ap:8701/v1/ws", True)]


def test_a_sibling_that_takes_connections_comes_first() -> None:
    relays = [
        relay("us-2", "full"),
        relay("us-3"),
        relay("us-4", "draining"),
        relay("eu-1", region=EU),
    ]
    assert redirect_target(US, "us-1", relays, PEERS, 0) == Redirect(US, "ws://us-3:8701/v1/ws")


def test_never_to_itself() -> None:
    assert redirect_target(US, "us-1", [relay("us-1")], PEERS, 0) == Redirect(EU, PEERS[0].url)


def test_clients_are_spread_over_the_siblings() -> None:
    relays = [relay("us-3"), relay("us-2"), relay("us-4")]
    targets = {redirect_target(US, "us-1", relays, PEERS, n) for n in range(6)}
    assert targets == {Redirect(US, f"ws://us-{i}:8701/v1/ws") for i in (2, 3, 4)}


def test_then_the_first_healthy_peer_in_config_order() -> None:
    peers = [PeerEdge(EU, "ws://eu:8701/v1/ws", False), PeerEdge(AP, "ws://ap:8701/v1/ws", True)]
    assert redirect_target(US, "us-1", [relay("us-2", "full")], peers, 7) == Redirect(
        AP, "ws://ap:8701/v1/ws"
    )


def test_nowhere_to_go() -> None:
    peers = [PeerEdge(EU, "ws://eu:8701/v1/ws", False)]
    assert redirect_target(US, "us-1", [relay("us-2", "draining")], peers, 0) is None


@given(
    st.lists(
        st.tuples(
            st.sampled_from([US, EU]),
            st.sampled_from(["a", "b", "c", "us-1"]),
            st.sampled_from(["up", "full", "draining"]),
        ),
        max_size=8,
    ),
    st.lists(st.tuples(st.sampled_from([US, EU, AP]), st.booleans()), max_size=3),
    st.integers(0, 1000),
)
def test_the_target_is_always_a_place_that_takes_clients(
    raw_relays: list[tuple[str, str, str]], raw_peers: list[tuple[str, bool]], spread: int
) -> None:
    relays = [relay(name, state, region) for region, name, state in raw_relays]
    peers = [PeerEdge(r, f"ws://{r}:1/v1/ws", ok) for r, ok in raw_peers]
    target = redirect_target(US, "us-1", relays, peers, spread)
    siblings = [r for r in relays if r.region == US and r.relay != "us-1" and r.state == "up"]
    if siblings:
        assert target is not None and target.region == US
        assert target.url in {r.url for r in siblings}
    elif any(p.healthy and p.region != US for p in peers):
        assert target is not None and target.region != US
        assert any(p.url == target.url and p.healthy for p in peers)
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
