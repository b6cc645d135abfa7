"""The client's pure core: backoff schedule, region choice, and the session state machine."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.vclock import VectorClock
from relay.client import data_of
from relay.client.backoff import Backoff
from relay.client.routing import Choice, Edge, choose, should_move_back
from relay.client.session import (
    Acked,
    Authed,
    BadFrame,
    ClientSession,
    Connected,
    ErrorReceived,
    Event,
    FrameTooLarge,
    HistoryReceived,
    Message,
    PositionExpired,
    Redirected,
    Subscribed,
    close_policy,
    renewal_delay_s,
)

# --- backoff -----------------------------------------------------------------------------


class _Top(random.Random):
    """Always draws the upper bound, to observe the cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


def backoff(
    base_s: float = 0.5, max_s: float = 30.0, reset_after_s: float = 60.0, rng: Any = None
) -> Backoff:
    return Backoff(
        base_s=base_s,
        max_s=max_s,
        reset_after_s=reset_after_s,
        rng=rng if rng is not None else random.Random(0),
    )


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0.001, 10.0),
    factor=st.floats(1.0, 1000.0),
    seed=st.integers(0, 2**32),
    attempts=st.integers(1, 80),
)
def test_delays_stay_within_the_cap(base: float, factor: float, seed: int, attempts: int) -> None:
    b = backoff(base, base * factor, rng=random.Random(seed))
    for n in range(attempts):
        cap = min(base * factor, base * 2**n)
        assert b.cap() == pytest.approx(cap)
        delay = b.next_delay()
        assert 0.0 <= delay <= cap * (1 + 1e-12)
        assert b.attempt == n + 1


@given(base=st.floats(0.001, 10.0), factor=st.floats(1.0, 1e6))
def test_cap_doubles_until_max(base: float, factor: float) -> None:
    max_s = base * factor
    b = backoff(base, max_s, rng=_Top())
    delays = [b.next_delay() for _ in range(40)]
    assert delays[0] == base
    for prev, cur in itertools.pairwise(delays):
        assert cur == pytest.approx(min(max_s, 2 * prev))
    assert delays[-1] == max_s


def test_huge_attempt_counts_do_not_overflow() -> None:
    b = backoff(1.0, 60.0, rng=_Top())
    assert b.cap(5000) == 60.0


@pytest.mark.parametrize(
    ("up_for", "reset"),
    [(0.0, False), (59.9, False), (60.0, True), (3600.0, True)],
)
def test_a_connection_resets_the_schedule_only_if_it_lasted(up_for: float, reset: bool) -> None:
    b = backoff(reset_after_s=60.0)
    for _ in range(4):
        b.next_delay()
    b.connected(1000.0)
    b.disconnected(1000.0 + up_for)
    assert b.attempt == (0 if reset else 4)


def test_failed_attempts_never_reset() -> None:
    b = backoff(reset_after_s=1.0)
    b.next_delay()
    b.disconnected(10_000.0)  # never connected: an attempt that failed
    b.next_delay()
    assert b.attempt == 2
    b.connected(0.0)
    b.disconnected(5.0)
    assert b.attempt == 0
    b.next_delay()
    b.disconnected(100.0)  # the connected time was consumed by the previous disconnect
    assert b.attempt == 1


def test_same_seed_same_schedule() -> None:
    a, b = backoff(rng=random.Random(7)), backoff(rng=random.Random(7))
    assert [a.next_delay() for _ in range(10)] == [b.next_delay() for _ in range(10)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_s": 0.0},
        {"base_s": -1.0},
        {"max_s": 0.1},
        {"reset_after_s": -1.0},
        {"base_s": math.nan},
        {"max_s": math.inf},
    ],
)
def test_backoff_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        backoff(**kwargs)


# --- routing -----------------------------------------------------------------------------


def edges(*specs: tuple[str, bool]) -> list[Edge]:
    return [Edge(region, f"ws://{region}.example:8701/v1/ws", healthy) for region, healthy in specs]


@pytest.mark.parametrize(
    ("specs", "samples", "order"),
    [
        # nearest healthy first, by median
        (
            [("us-east", True), ("eu-west", True), ("ap-south", True)],
            {"us-east": [80, 81, 79], "eu-west": [12, 13, 500], "ap-south": [200, 190, 210]},
            ("eu-west", "us-east", "ap-south"),
        ),
        # failures do not count toward the median; all failed -> after the reachable ones
        (
            [("us-east", True), ("eu-west", True), ("ap-south", True)],
            {"us-east": [None, None], "eu-west": [None, 30, None], "ap-south": [20, None]},
            ("ap-south", "eu-west", "us-east"),
        ),
        # down regions last even when nearest, ordered by RTT among themselves
        (
            [("a", False), ("b", True), ("c", False), ("d", False)],
            {"a": [1], "b": [100], "c": [None], "d": [5]},
            ("b", "a", "d", "c"),
        ),
        # healthy but unprobed after the reachable ones, before the unreachable ones
        (
            [("z", True), ("y", True), ("x", True), ("w", False)],
            {"z": [40], "x": [None]},
            ("z", "y", "x", "w"),
        ),
        # equal medians: the region name decides
        (
            [("us-west", True), ("us-east", True)],
            {"us-west": [10, 20], "us-east": [15, 15]},
            ("us-east", "us-west"),
        ),
        ([], {"us-east": [1]}, ()),
    ],
)
def test_failover_order(
    specs: list[tuple[str, bool]],
    samples: dict[str, list[float | None]],
    order: tuple[str, ...],
) -> None:
    assert choose(edges(*specs), samples).order == order


def test_medians_and_reasons_quote_the_numbers() -> None:
    choice = choose(
        edges(("us-east", True), ("eu-west", True), ("ap-south", False), ("sa-east", True)),
        {
            "us-east": [10.0, 14.6, 12.3, 11.0, 13.0],
            "eu-west": [80.1, None, 79.0, 90.0],
            "ap-south": [5.0],
            "sa-east": [None] * 5,
        },
    )
    assert choice.order == ("us-east", "eu-west", "sa-east", "ap-south")
    assert choice.rtt_ms == {"us-east": 12.3, "eu-west": 80.1, "ap-south": 5.0, "sa-east": None}
    assert choice.reasons["us-east"] == "nearest healthy: median 12.3 ms over 5 probes"
    assert choice.reasons["eu-west"] == "healthy: median 80.1 ms over 3 probes (1 of 4 failed)"
    assert choice.reasons["sa-east"].startswith("unreachable: all 5 probes failed")
    assert choice.reasons["ap-south"] == (
        "down according to the directory; median 5.0 ms over 1 probes"
    )
    assert choice.nearest == "us-east"


def test_directory_details() -> None:
    # Several edges of one region: usable if any is; samples of unlisted regions are ignored.
    choice = choose(
        [
            Edge("us-east", "ws://a/v1/ws", False),
            Edge("us-east", "ws://b/v1/ws", True),
            Edge("eu-west", "ws://c/v1/ws", True),
        ],
        {"us-east": [50], "eu-west": [60], "mars": [1]},
    )
    assert choice.order == ("us-east", "eu-west")
    assert set(choice.rtt_ms) == set(choice.reasons) == {"us-east", "eu-west"}
    assert Edge.from_health("r", "u", "unknown").healthy
    assert Edge.from_health("r", "u", "up").healthy
    assert not Edge.from_health("r", "u", "down").healthy
    with pytest.raises(ValueError):
        Edge.from_health("r", "u", "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        choose(edges(("a", True)), {"a": [math.nan]})


_regions = st.lists(
    st.from_regex(r"[a-z]{1,3}-[0-9]", fullmatch=True), min_size=0, max_size=6, unique=True
)
_sample = st.one_of(st.none(), st.floats(0.0, 1000.0))


@given(data=st.data(), regions=_regions)
def test_order_properties(data: st.DataObject, regions: list[str]) -> None:
    specs = [(r, data.draw(st.booleans())) for r in regions]
    samples = {
        r: data.draw(st.lists(_sample, max_size=5))
        for r in [*regions, "elsewhere"]
        if data.draw(st.booleans())
    }
    choice = choose(edges(*specs), samples)
    assert sorted(choice.order) == sorted(regions)
    healthy = {r for r, ok in specs if ok}
    preferred = [r for r in choice.order if r in healthy and choice.rtt_ms[r] is not None]
    # Healthy and reachable come first, nearest first.
    assert list(choice.order[: len(preferred)]) == preferred
    keys = [(choice.rtt_ms[r], r) for r in preferred]
    assert keys == sorted(keys)
    # Every region that is down comes after every healthy one.
    ranks = {r: i for i, r in enumerate(choice.order)}
    for up in healthy:
        for down in set(regions) - healthy:
            assert ranks[up] < ranks[down]
    # Deterministic: the order of the input does not matter.
    again = choose(list(reversed(edges(*specs))), dict(reversed(list(samples.items()))))
    assert again == choice


def _choice(**rtt: float | None) -> Choice:
    specs = [(r.replace("_", "-"), v is not None) for r, v in rtt.items()]
    samples = {r.replace("_", "-"): [v] for r, v in rtt.items() if v is not None}
    return choose(edges(*specs), samples)


@pytest.mark.parametrize(
    ("policy", "idle", "current", "moves"),
    [
        ("stay", True, "eu-west", False),
        ("when-idle", False, "eu-west", False),
        ("when-idle", True, "eu-west", True),
        ("immediately", False, "eu-west", True),
        ("immediately", False, "us-east", False),  # already on the nearest
        ("immediately", False, "ap-south", True),  # current is down
    ],
)
def test_should_move_back(policy: Any, idle: bool, current: str, moves: bool) -> None:
    choice = _choice(us_east=10.0, eu_west=90.0, ap_south=None)
    assert should_move_back(current, choice, policy=policy, idle=idle) is moves


def test_no_move_for_a_gain_within_probe_noise() -> None:
    choice = _choice(us_east=10.0, us_west=12.0)
    assert not should_move_back("us-west", choice, policy="immediately", idle=True)
    assert should_move_back("us-west", choice, policy="immediately", idle=True, min_gain_ms=1.0)
    # Nowhere better to go: everything is down.
    assert not should_move_back("a", _choice(a=None, b=None), policy="immediately", idle=True)


# --- session: helpers --------------------------------------------------------------------

US, EU = "us-east", "eu-west"


def msg(
    channel: str,
    mid: str,
    origin: str,
    ts: dict[str, int],
    position: dict[str, int],
    data: str = '{"n":1}',
) -> str:
    return (
        f'{{"op":"message","channel":"{channel}","id":"{mid}","data":{data},'
        f'"origin":"{origin}","ts":{json.dumps(ts)},"position":{json.dumps(position)}}}'
    )


def single(channel: str, n: int, region: str = US) -> str:
    """The n-th message of a one-region channel."""
    return msg(channel, f"m{n}", region, {region: n}, {region: n}, data=f'{{"n":{n}}}')


def decoded(frame: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(frame)
    return body


def reply(request: bytes, op: str, **fields: Any) -> str:
    return json.dumps({"op": op, "ref": decoded(request)["ref"], **fields})


def delivered(events: list[Event]) -> list[str]:
    return [e.id for e in events if isinstance(e, Message)]


def session() -> ClientSession:
    return ClientSession()


# --- session: the reconnect story --------------------------------------------------------


def test_reconnect_story() -> None:
    s = session()
    assert s.receive(
        '{"op":"connected","region":"us-east","relay":"us-east-1",'
        '"connection_id":"us-east-1-7-1f0c9a2e","heartbeat_s":15.0}'
    ) == [Connected(US, "us-east-1", "us-east-1-7-1f0c9a2e", 15.0)]

    sub = s.subscribe("chat:lobby")
    assert decoded(sub) == {"op": "subscribe", "channel": "chat:lobby", "ref": 1}
    events = s.receive(
        reply(sub, "subscribed", channel="chat:lobby", position={US: 40}, recovered=False)
    )
    assert events == [Subscribed("chat:lobby", VectorClock({US: 40}), False)]

    got = [e for n in (41, 42) for e in s.receive(single("chat:lobby", n))]
    assert got[0] == Message(
        "chat:lobby", "m41", b'{"n":41}', US, VectorClock({US: 41}), VectorClock({US: 41})
    )
    assert delivered(got) == ["m41", "m42"]

    first_id, first = s.publish("chat:lobby", b'{"text": "hi"}')
    second_id, second = s.publish("chat:lobby", b'["raw",  1]')
    assert decoded(first) == {
        "op": "publish",
        "channel": "chat:lobby",
        "id": first_id,
        "data": {"text": "hi"},
        "ref": 2,
        "after": {US: 42},  # what it has read: stored after that, in any region
    }
    assert b'"data":["raw",  1]' in second  # spliced, not re-encoded
    assert s.receive(reply(first, "ack", id=first_id, channel="chat:lobby", position={US: 43})) == [
        Acked(first_id, "chat:lobby", VectorClock({US: 43}))
    ]
    assert s.pending == {second_id: "chat:lobby"}
    assert not s.idle

    # The connection drops before the second publish is acknowledged.
    frames_sent = s.on_reconnect()
    assert [decoded(f) for f in frames_sent] == [
        {"op": "subscribe", "channel": "chat:lobby", "position": {US: 42}, "ref": 4},
        {
            "op": "publish",
            "channel": "chat:lobby",
            "id": second_id,
            "data": ["raw", 1],
            "ref": 5,
            # Taken again at the resend: it now covers the first publish's ack (43), so
            # another region stores it after that one (issue #9, found by bench chaos).
            "after": {US: 43},
        },
    ]

    # Another relay replays from 41 (at least once, not exactly once): 41 and 42 are dropped.
    resumed = reply(
        frames_sent[0], "subscribed", channel="chat:lobby", position={US: 44}, recovered=True
    )
    events = s.receive(resumed)
    assert events == [Subscribed("chat:lobby", VectorClock({US: 44}), True)]
    replay = [e for n in (41, 42, 43, 44) for e in s.receive(single("chat:lobby", n))]
    assert delivered(replay) == ["m43", "m44"]
    assert s.position("chat:lobby") == VectorClock({US: 44})

    ack = reply(frames_sent[1], "ack", id=second_id, channel="chat:lobby", position={US: 44})
    assert s.receive(ack) == [Acked(second_id, "chat:lobby", VectorClock({US: 44}))]
    assert s.idle
    # Acked publishes are not sent again.
    assert [decoded(f)["op"] for f in s.on_reconnect()] == ["subscribe"]


def test_a_publish_carries_what_its_client_read_and_wrote_on_the_channel() -> None:
    """Issue #9 item 2: after failing over, a client's publish must not be stored before
    what it had seen or published in the region it left."""
    s = session()
    plain = decoded(s.publish("c", b"1")[1])
    assert "after" not in plain  # nothing read or written yet: no context
    one, frame = s.publish("c", b"1")
    s.receive(reply(frame, "ack", id=one, channel="c", position={"ap-south": 1}))
    # Failed over: the next publish (to us-east) says it comes after ap-south's first.
    assert decoded(s.publish("c", b"2")[1])["after"] == {"ap-south": 1}
    sub = s.subscribe("c", position={"eu-west": 3})
    s.receive(reply(sub, "subscribed", channel="c", position={"eu-west": 3}, recovered=True))
    s.receive(single("c", 4, region="eu-west"))
    assert decoded(s.publish("c", b"3")[1])["after"] == {"ap-south": 1, "eu-west": 4}
    # Per channel: another channel's context is its own.
    assert "after" not in decoded(s.publish("other", b"1")[1])


def test_a_resent_publish_comes_after_the_earlier_publishes_acked_meanwhile() -> None:
    """Pipelined m1, m2 in us-east; m1 is stored and acked, the connection drops before
    m2's ack. m2 is sent again in eu-west: its context must cover m1, or eu-west could
    store (and a total-order channel order) m2 before m1 (bench chaos, seed 101)."""
    s = session()
    m1, f1 = s.publish("t", b"1")
    m2, f2 = s.publish("t", b"2")
    assert "after" not in decoded(f2)  # nothing acked when it was first sent
    s.receive(reply(f1, "ack", id=m1, channel="t", position={US: 7, "eu-west": 3}))
    resent = [decoded(f) for f in s.on_reconnect()]
    assert [f["id"] for f in resent] == [m2]
    assert resent[0]["after"] == {US: 7, "eu-west": 3}
    # A temporary error's resend on the same connection is taken again too.
    assert decoded(s.republish_pending()[0])["after"] == {US: 7, "eu-west": 3}


def test_ids_are_random_per_message_and_stable_across_resends() -> None:
    # Every subscriber sees publish ids: a prefix and a counter would tell anyone the next
    # ones. 128 random bits each, nothing shared between one client's ids.
    s = session()
    ids = [s.publish("c", b"1")[0] for _ in range(200)]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)
    assert len(set(ids) | {session().publish("c", b"1")[0] for _ in range(200)}) == 400
    assert len({i[:6] for i in ids}) == len(ids)  # no shared prefix
    # Made once per message: every resend, on this connection or the next, has the same id.
    assert [decoded(f)["id"] for f in s.republish_pending()] == ids
    assert [decoded(f)["id"] for f in s.on_reconnect()] == ids
    assert list(s.pending) == ids


def test_ids_come_from_new_id_and_must_be_valid_and_fresh() -> None:
    made = iter(["c7-1", "c7-2", "has space", "c7-2", ""])
    s = ClientSession(new_id=lambda: next(made))
    assert [s.publish("c", b"1")[0] for _ in range(2)] == ["c7-1", "c7-2"]
    for _ in range(3):  # not a valid id, then one still pending, then an empty one
        with pytest.raises(ValueError, match="new_id"):
            s.publish("c", b"1")
    assert list(s.pending) == ["c7-1", "c7-2"]


def test_recovered_subscribed_does_not_skip_the_replay() -> None:
    s = session()
    sub = s.subscribe("c", position={US: 10})
    # The reply carries the channel's head, the replay of 11..12 follows it.
    s.receive(reply(sub, "subscribed", channel="c", position={US: 12}, recovered=True))
    events = [e for n in (11, 12) for e in s.receive(single("c", n))]
    assert delivered(events) == ["m11", "m12"]


def test_live_subscription_adopts_the_current_position() -> None:
    s = session()
    sub = s.subscribe("c")
    s.receive(reply(sub, "subscribed", channel="c", position={US: 5}, recovered=False))
    assert s.position("c") == VectorClock({US: 5})
    assert delivered(s.receive(single("c", 5))) == []  # before we subscribed
    assert decoded(s.on_reconnect()[0])["position"] == {US: 5}


def test_failover_keeps_the_position_from_moving_backwards() -> None:
    # us-east's log: u1, e1; eu-west's log (concurrent messages, other order): e1, u1, e2.
    s = session()
    s.subscribe("c", position={})
    assert delivered(s.receive(msg("c", "u1", US, {US: 1}, {US: 1}))) == ["u1"]
    assert delivered(s.receive(msg("c", "e1", EU, {EU: 1}, {US: 1, EU: 1}))) == ["e1"]
    # Failover to eu-west, which applied u1 after e1: it replays from there, and the
    # position of e1 in its log ({eu-west: 1}) must not make us forget u1.
    assert decoded(s.on_reconnect()[0])["position"] == {US: 1, EU: 1}
    events = [
        *s.receive(msg("c", "e1", EU, {EU: 1}, {EU: 1})),
        *s.receive(msg("c", "u1", US, {US: 1}, {US: 1, EU: 1})),
        *s.receive(msg("c", "e2", EU, {US: 1, EU: 2}, {US: 1, EU: 2})),
    ]
    assert delivered(events) == ["e2"]
    assert s.position("c") == VectorClock({US: 1, EU: 2})


def test_the_same_publish_stored_in_two_regions_is_delivered_once() -> None:
    s = ClientSession(id_memory=2)
    s.subscribe("c", position={})
    s.subscribe("d", position={})
    assert delivered(s.receive(msg("c", "k-1", US, {US: 1}, {US: 1}))) == ["k-1"]
    # The retry after a failover was stored again by eu-west under the same id.
    assert delivered(s.receive(msg("c", "k-1", EU, {EU: 1}, {US: 1, EU: 1}))) == []
    assert s.position("c") == VectorClock({US: 1, EU: 1})  # still moves past it
    # Same id on another channel is another message.
    assert delivered(s.receive(msg("d", "k-1", US, {US: 1}, {US: 1}))) == ["k-1"]
    # The memory is bounded: the oldest id is forgotten.
    s.receive(msg("c", "k-2", US, {US: 2}, {US: 2, EU: 1}))
    assert delivered(s.receive(msg("c", "k-1", EU, {EU: 2}, {US: 2, EU: 2}))) == ["k-1"]


def test_another_publishers_message_with_a_delivered_id_is_not_a_repeat() -> None:
    # Relays in token mode scope ids to the publisher: two publishers' "k-1" are both stored.
    s = session()
    s.subscribe("c", position={})
    assert delivered(s.receive(msg("c", "k-1", US, {US: 1}, {US: 1}, '{"who":"a"}'))) == ["k-1"]
    assert delivered(s.receive(msg("c", "k-1", US, {US: 2}, {US: 2}, '{"who":"b"}'))) == ["k-1"]
    # A retry carries the bytes of its first copy: still one.
    assert delivered(s.receive(msg("c", "k-1", EU, {EU: 1}, {US: 2, EU: 1}, '{"who":"a"}'))) == []


def test_position_expired() -> None:
    s = session()
    sub = s.subscribe("c", position={US: 3})
    events = s.receive(
        reply(sub, "error", code="position_expired", message="gone", channel="c", earliest={US: 7})
    )
    assert events == [PositionExpired("c", VectorClock({US: 7}))]
    assert s.channels == []
    assert s.on_reconnect() == []  # nothing to restore until the application decides
    assert delivered(s.receive(single("c", 8))) == []

    # Resubscribing without a position goes live, not back to the expired position.
    assert "position" not in decoded(s.subscribe("c"))
    assert "position" not in decoded(s.on_reconnect()[0])
    # Accepting the gap: start from `earliest`.
    s2 = session()
    sub = s2.subscribe("c", position={US: 3})
    s2.receive(reply(sub, "error", code="position_expired", message="", earliest={US: 7}))
    again = s2.subscribe("c", position={US: 7})
    assert decoded(again)["position"] == {US: 7}
    assert delivered(s2.receive(single("c", 8))) == ["m8"]


def test_publish_errors() -> None:
    s = session()
    big_id, big = s.publish("c", b'"xxxxxxxx"')
    slow_id, slow = s.publish("c", b"1")
    events = s.receive(
        reply(big, "error", code="too_large", message="data is 10 bytes", temporary=False)
    )
    assert events == [
        ErrorReceived("too_large", "data is 10 bytes", 1, False, channel="c", publish_id=big_id)
    ]
    s.receive(reply(slow, "error", code="unavailable", message="no NATS", temporary=True))
    # The refused one is not resent; the temporary failure is, now or on the next connection.
    assert s.pending == {slow_id: "c"}
    assert [decoded(f)["id"] for f in s.republish_pending()] == [slow_id]
    assert [decoded(f)["id"] for f in s.on_reconnect()] == [slow_id]


def test_rate_limited_publishes_and_subscribes_stay_pending_with_the_wait_the_relay_said() -> None:
    s = session()
    first_id, first = s.publish("c", b"1")
    second_id, second = s.publish("c", b"2")
    sub = s.subscribe("d")
    [event] = s.receive(
        reply(first, "error", code="rate_limited", message="slow down", temporary=True,
              channel="c", id=first_id, retry_after_ms=250)
    )  # fmt: skip
    assert event == ErrorReceived(
        "rate_limited", "slow down", 1, True, channel="c", publish_id=first_id, retry_after_ms=250
    )
    # A fenced one behind it says no wait: the client's own backoff applies.
    fenced_reply = reply(second, "error", code="unavailable", temporary=True, behind=first_id)
    [fenced] = s.receive(fenced_reply)
    assert isinstance(fenced, ErrorReceived) and fenced.retry_after_ms is None
    # Resent in order, same ids; a hostile relay cannot park the client for long.
    assert [decoded(f)["id"] for f in s.republish_pending()] == [first_id, second_id]
    [limited] = s.receive(
        reply(sub, "error", code="rate_limited", temporary=True, retry_after_ms=10**9)
    )
    assert isinstance(limited, ErrorReceived) and limited.retry_after_ms == 60_000
    assert s.channels == ["d"]  # still wanted: subscribed again after the wait


def test_subscribe_errors() -> None:
    s = session()
    bad = s.subscribe("bad channel")
    busy = s.subscribe("busy")
    s.receive(reply(bad, "error", code="invalid_channel", message="no", temporary=False))
    s.receive(reply(busy, "error", code="unavailable", message="later", temporary=True))
    assert s.channels == ["busy"]  # retried on the next connection
    assert decoded(s.subscribe("busy"))["channel"] == "busy"  # or right now
    with pytest.raises(ValueError, match="already subscribed"):
        s.subscribe("busy")


def test_unsubscribe_forgets_the_channel() -> None:
    s = session()
    s.subscribe("c", position={})
    s.receive(single("c", 1))
    frame = decoded(s.unsubscribe("c"))
    assert frame == {"op": "unsubscribe", "channel": "c", "ref": 2}
    assert delivered(s.receive(single("c", 2))) == []  # in flight before the relay saw it
    assert s.position("c") is None
    assert "position" not in decoded(s.subscribe("c"))
    with pytest.raises(ValueError, match="not subscribed"):
        s.unsubscribe("other")


def test_replies_to_withdrawn_requests_are_ignored() -> None:
    s = session()
    old = s.subscribe("c")
    s.unsubscribe("c")
    s.subscribe("c")
    assert s.receive(reply(old, "subscribed", channel="c", position={US: 9})) == []
    assert s.position("c") is None


def test_api_misuse_raises() -> None:
    s = session()
    with pytest.raises(ValueError, match="JSON"):
        s.publish("c", b"{not json")
    with pytest.raises(ValueError):
        s.subscribe("c", position={"US": 1})


@pytest.mark.parametrize(
    ("raw", "events"),
    [
        ('{"op":"pong","ref":3}', []),  # known but not interesting
        ('{"op":"from_the_future","x":1}', []),  # newer relay
        (
            '{"op":"connected","region":"r","relay":"r-1","connection_id":"x","new":1}',
            [Connected("r", "r-1", "x", None)],
        ),
        ("[]", [BadFrame('a frame is a JSON object with an "op" field')]),
    ],
)
def test_unknown_frames_are_ignored(raw: str, events: list[Event]) -> None:
    assert session().receive(raw) == events


@pytest.mark.parametrize(
    "raw",
    [
        "{nope",
        b"\xff",
        '{"op":"message","channel":"c"}',
        msg("c", "m", US, {"US": 1}, {US: 1}),
        msg("c", "m", US, {EU: 1}, {US: 1}),  # ts without its origin
        '{"op":"ack","id":1,"channel":"c","position":{}}',
    ],
)
def test_bad_server_frames_never_raise(raw: str | bytes) -> None:
    s = session()
    s.subscribe("c", position={})
    events = s.receive(raw)
    assert len(events) == 1
    assert isinstance(events[0], BadFrame)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_no_gap_and_no_duplicate_across_reconnects(data: st.DataObject) -> None:
    """Each connection replays from any point at or before where we were (at least once),
    and stops anywhere: the application sees the log exactly once, in order."""
    log_length = data.draw(st.integers(1, 30))
    s = session()
    s.subscribe("c", position={})
    seen: list[str] = []
    for _ in range(data.draw(st.integers(1, 6))):
        s.on_reconnect()
        position = s.position("c")
        resume = position.get(US) if position is not None else 0
        start = data.draw(st.integers(0, resume), label="replay from")
        stop = data.draw(st.integers(start, log_length), label="stop at")
        for n in range(start + 1, stop + 1):
            seen += delivered(s.receive(single("c", n)))
        if stop >= resume:
            assert seen == [f"m{n}" for n in range(1, stop + 1)]
    assert len(seen) == len(set(seen))


# --- close codes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "policy"),
    [
        (1000, "stop"),
        (1001, "reconnect"),  # going_away
        (1006, "reconnect"),  # connection lost without a close frame
        (1009, "reconnect"),  # the frame was too big, not the connection
        (1011, "reconnect"),
        (1012, "reconnect"),
        (1002, "stop"),
        (1008, "stop"),
        (4000, "reconnect"),  # slow_consumer
        (4001, "reconnect"),  # unavailable
        (4499, "reconnect"),
        (4500, "stop"),  # too_many_errors
        (4999, "stop"),
    ],
)
def test_close_policy(code: int, policy: str) -> None:
    assert close_policy(code) == policy
    assert ClientSession.close_policy(code) == policy


# --- session: the relay's frame limit and redirects -----------------------------------------


def connected(limit: int | None) -> str:
    extra = f',"max_frame_bytes":{limit}' if limit is not None else ""
    return f'{{"op":"connected","region":"us-east","relay":"r-1","connection_id":"x"{extra}}}'


def test_a_publish_above_the_announced_frame_limit_is_refused_before_sending() -> None:
    s = session()
    assert s.receive(connected(1024)) == [Connected(US, "r-1", "x", None, 1024)]
    fits = json.dumps("a" * 900).encode()
    message_id, frame = s.publish("c", fits)
    assert len(frame) <= 1024
    with pytest.raises(FrameTooLarge) as refused:
        s.publish("c", json.dumps("a" * 1000).encode())
    assert refused.value.limit == 1024 and refused.value.size > 1024
    assert "1024" in str(refused.value)
    assert list(s.pending) == [message_id]  # the refused one is not pending


def test_the_limit_counts_the_longest_ref_a_frame_can_get() -> None:
    """Refs grow with every request: a frame that fits now must fit when resent later."""
    s = session()
    s.receive(connected(1024))
    for size in range(850, 1024):
        try:
            s.publish("c", json.dumps("a" * size).encode())
        except FrameTooLarge:
            break
    for _ in range(2000):
        s.on_reconnect()  # many requests later
    frames = s.on_reconnect()
    assert frames and all(len(f) <= 1024 for f in frames)


def test_pending_publishes_too_large_for_a_new_relay_are_dropped() -> None:
    s = session()
    s.receive(connected(None))  # an older relay: no limit announced, nothing refused
    big, _ = s.publish("c", json.dumps("a" * 5000).encode())
    small, _ = s.publish("c", b'"hi"')
    assert s.drop_oversized() == []
    s.receive(connected(2048))
    assert s.drop_oversized() == [big]
    assert list(s.pending) == [small]
    assert [decoded(f)["id"] for f in s.on_reconnect()] == [small]


@pytest.mark.parametrize(
    ("raw", "event"),
    [
        (
            '{"op":"redirect","url":"ws://b:1/v1/ws","region":"us-east","reason":"draining"}',
            Redirected("ws://b:1/v1/ws", US, "draining"),
        ),
        ('{"op":"redirect","url":"ws://b:1/v1/ws"}', Redirected("ws://b:1/v1/ws", None, "")),
    ],
)
def test_redirect_frames(raw: str, event: Redirected) -> None:
    assert session().receive(raw) == [event]


def test_a_redirect_without_a_url_is_a_bad_frame() -> None:
    (event,) = session().receive('{"op":"redirect","region":"us-east"}')
    assert isinstance(event, BadFrame)


# --- history and Message.data ----------------------------------------------------------


def _history_reply(ref: int, *messages: tuple[str, int], more: bool = False) -> str:
    return json.dumps(
        {
            "op": "history",
            "ref": ref,
            "channel": "chat:h",
            "more": more,
            "messages": [
                {
                    "op": "message",
                    "channel": "chat:h",
                    "id": mid,
                    "data": {"n": n},
                    "origin": "us-east",
                    "ts": {"us-east": n},
                    "position": {"us-east": n},
                }
                for mid, n in messages
            ],
        }
    )


def test_history_request_and_reply_leave_the_subscription_alone() -> None:
    s = ClientSession()
    s.subscribe("chat:h")
    s.receive(json.dumps({"op": "subscribed", "ref": 1, "channel": "chat:h", "position": {}}))
    ref, frame = s.history("chat:h", limit=2)
    assert json.loads(frame) == {"op": "history", "channel": "chat:h", "limit": 2, "ref": ref}
    _, paged = s.history("chat:h", limit=5, before={"us-east": 7})
    assert json.loads(paged)["before"] == {"us-east": 7}
    (event,) = s.receive(_history_reply(ref, ("a", 6), ("b", 7), more=True))
    assert isinstance(event, HistoryReceived)
    assert (event.ref, event.channel, event.more) == (ref, "chat:h", True)
    assert [m.data for m in event.messages] == [{"n": 6}, {"n": 7}]
    assert event.messages[1].position == VectorClock({"us-east": 7})
    # Not delivered, so not remembered: the same messages still come through the subscription.
    assert s.position("chat:h") == VectorClock()
    live = json.loads(_history_reply(0, ("b", 7)))["messages"][0]
    assert [e.id for e in s.receive(json.dumps(live)) if isinstance(e, Message)] == ["b"]
    # A second reply to the same ref, or one to nothing we asked: ignored.
    assert s.receive(_history_reply(ref, ("a", 6))) == []


def test_history_errors_and_misuse() -> None:
    s = ClientSession()
    ref, _ = s.history("bad channel", limit=1)
    (error,) = s.receive(
        json.dumps({"op": "error", "ref": ref, "code": "invalid_channel", "message": "no"})
    )
    assert isinstance(error, ErrorReceived)
    assert (error.code, error.channel, error.publish_id, error.ref) == (
        "invalid_channel",
        "bad channel",
        None,
        ref,
    )
    (bad,) = s.receive(json.dumps({"op": "history", "channel": "chat:h", "messages": 3}))
    assert isinstance(bad, BadFrame)
    for limit in (0, 1001):
        with pytest.raises(ValueError, match="limit"):
            s.history("chat:h", limit=limit)
    with pytest.raises(ValueError):
        s.history("chat:h", limit=1, before={"us-east": -1})


def test_message_data_is_the_decoded_json() -> None:
    s = ClientSession()
    s.subscribe("chat:d")
    s.receive(json.dumps({"op": "subscribed", "ref": 1, "channel": "chat:d", "position": {}}))
    raw = (
        '{"op":"message","channel":"chat:d","id":"x","data":{"text":"hi","n":[1,2.5,null]},'
        '"origin":"us-east","ts":{"us-east":1},"position":{"us-east":1}}'
    )
    (message,) = s.receive(raw)
    assert isinstance(message, Message)
    assert message.data == {"text": "hi", "n": [1, 2.5, None]}
    assert message.data_json == b'{"text":"hi","n":[1,2.5,null]}'  # the publisher's bytes
    assert data_of(message) == message.data


# --- tokens ----------------------------------------------------------------------------------


def test_connected_with_a_url_token_says_whose_and_until_when() -> None:
    s = session()
    raw = (
        '{"op":"connected","region":"us-east","relay":"r-1","connection_id":"x",'
        '"sub":"alice","exp":1800000000.0}'
    )
    assert s.receive(raw) == [Connected(US, "r-1", "x", None, None, "alice", 1800000000.0)]
    # Without a token (anonymous relay): neither.
    assert s.receive(connected(None)) == [Connected(US, "r-1", "x", None)]


def test_auth_frame_and_authed_event() -> None:
    s = session()
    assert decoded(s.auth("tok-2")) == {"op": "auth", "token": "tok-2", "ref": 1}
    assert s.receive('{"op":"authed","ref":1,"sub":"alice","exp":1800000060.0}') == [
        Authed("alice", 1800000060.0)
    ]


def test_forbidden_after_renewal_ends_the_subscription_for_good() -> None:
    s = session()
    s.subscribe("chat:secret")
    s.receive('{"op":"subscribed","ref":1,"channel":"chat:secret","position":{}}')
    events = s.receive(
        '{"op":"error","code":"forbidden","message":"subscription to chat:secret ended",'
        '"temporary":false,"channel":"chat:secret"}'
    )
    assert events == [
        ErrorReceived("forbidden", "subscription to chat:secret ended", None, False, "chat:secret")
    ]
    assert s.channels == []
    assert s.on_reconnect() == []  # not resubscribed on the next connection


@pytest.mark.parametrize(
    ("left", "delay"),
    [(3600.0, 3570.0), (120.0, 90.0), (60.0, 45.0), (4.0, 3.0), (0.0, 0.0), (-5.0, 0.0)],
)
def test_renewal_delay(left: float, delay: float) -> None:
    assert renewal_delay_s(1000.0 + left, 1000.0) == pytest.approx(delay)


@given(left=st.floats(-100.0, 10**6))
def test_renewal_comes_before_expiry(left: float) -> None:
    delay = renewal_delay_s(1000.0 + left, 1000.0)
    assert delay >= 0.0
    assert delay < left or left <= 0


@pytest.mark.parametrize(("code", "policy"), [(4003, "reconnect"), (4501, "stop")])
def test_close_policy_for_token_codes(code: int, policy: str) -> None:
    assert close_policy(code) == policy
