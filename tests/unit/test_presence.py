"""The presence merge: any delivery order converges, liveness marks and removes, no phantom."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.presence import (
    Action,
    Change,
    ChannelPresence,
    LocalPresence,
    Member,
    MemberKey,
    PresenceEvent,
    Snapshot,
    Status,
)

CLIENTS = ("ann", "bob", "cy")
CONNECTIONS = ("c1", "c2")


def key(client: str = "ann", conn: str = "c1") -> MemberKey:
    return MemberKey(client, conn)


# An origin's life: enter/update (0), leave (1), connection closed (2), time passes (3),
# and a snapshot taken (4).
op = st.tuples(
    st.integers(0, 4), st.sampled_from(CLIENTS), st.sampled_from(CONNECTIONS), st.integers(0, 3)
)


def run_origin(
    origin: LocalPresence, ops: list[tuple[int, str, str, int]]
) -> tuple[list[Change | Snapshot], float]:
    sent: list[Change | Snapshot] = []
    now = 0.0
    for kind, client, local_conn, n in ops:
        conn = f"{origin.origin}:{local_conn}"  # connection ids are unique across relays
        if kind == 0:
            sent.append(origin.enter(MemberKey(client, conn), f'{{"n":{n}}}'.encode()))
        elif kind == 1:
            change = origin.leave(MemberKey(client, conn))
            if change is not None:
                sent.append(change)
        elif kind == 2:
            origin.connection_closed(conn, now)
        elif kind == 3:
            now += n
            sent += origin.due(now)
        else:
            sent.append(origin.snapshot())
    return sent, now


def deliver(view: ChannelPresence, item: Change | Snapshot, now: float) -> list[PresenceEvent]:
    if isinstance(item, Change):
        return view.apply(item, now)
    return view.apply_snapshot(item, now)


def replay(events: list[PresenceEvent]) -> dict[MemberKey, Member]:
    """What a subscriber that only reads events believes."""
    seen: dict[MemberKey, Member] = {}
    for event in events:
        if event.action is Action.ENTER:
            assert event.member.key not in seen, f"enter of a member already in: {event}"
            seen[event.member.key] = event.member
        elif event.action is Action.UPDATE:
            assert event.member.key in seen, f"update of a member not in: {event}"
            seen[event.member.key] = event.member
        else:
            assert seen.pop(event.member.key, None) is not None, f"leave of a stranger: {event}"
    return seen


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(op, max_size=40),
    data=st.data(),
    finish_with_snapshot=st.booleans(),
)
def test_any_delivery_of_changes_and_snapshots_converges_to_the_origin(
    ops: list[tuple[int, str, str, int]], data: st.DataObject, finish_with_snapshot: bool
) -> None:
    origin = LocalPresence("us-east/r1", epoch=1, region="us-east", leave_after_s=2)
    sent, _ = run_origin(origin, ops)
    # The wire loses, repeats and reorders; then either everything arrives late, or a
    # fresh snapshot does (anti-entropy).
    early = data.draw(st.lists(st.sampled_from(sent), max_size=60) if sent else st.just([]))
    late = [origin.snapshot()] if finish_with_snapshot else data.draw(st.permutations(sent))
    view = ChannelPresence(suspect_after_s=5, remove_after_s=10)
    events: list[PresenceEvent] = []
    for item in [*early, *late]:
        events += deliver(view, item, now=0.0)
    assert view.members() == origin.members()
    assert replay(events) == {m.key: m for m in view.members()}


@settings(max_examples=200, deadline=None)
@given(
    a_ops=st.lists(op, max_size=25),
    b_ops=st.lists(op, max_size=25),
    data=st.data(),
)
def test_origins_merge_independently_into_one_view(
    a_ops: list[tuple[int, str, str, int]],
    b_ops: list[tuple[int, str, str, int]],
    data: st.DataObject,
) -> None:
    a = LocalPresence("us-east/r1", epoch=1, region="us-east", leave_after_s=1)
    b = LocalPresence("eu-west/r1", epoch=7, region="eu-west", leave_after_s=1)
    sent = run_origin(a, a_ops)[0] + run_origin(b, b_ops)[0]
    view = ChannelPresence(suspect_after_s=5, remove_after_s=10)
    events: list[PresenceEvent] = []
    for item in data.draw(st.permutations(sent)):
        events += deliver(view, item, 0.0)
    assert view.members() == sorted(a.members() + b.members(), key=lambda m: m.key)
    assert replay(events) == {m.key: m for m in view.members()}


def test_a_silent_origin_is_marked_unreachable_then_removed_and_a_heal_restores_it() -> None:
    origin = LocalPresence("ap-south/r1", epoch=3, region="ap-south", leave_after_s=2)
    view = ChannelPresence(suspect_after_s=3, remove_after_s=8)
    events = view.apply(origin.enter(key("ann"), b"1"), now=0.0)
    events += view.apply(origin.enter(key("bob"), None), now=0.0)
    assert view.tick(2.9) == []
    marked = view.tick(3.0)
    assert [(e.action, e.member.status) for e in marked] == [
        (Action.UPDATE, Status.UNREACHABLE)
    ] * 2
    assert {m.status for m in view.members()} == {Status.UNREACHABLE}
    removed = view.tick(8.0)
    assert sorted(e.member.key.client_id for e in removed if e.action is Action.LEAVE) == [
        "ann",
        "bob",
    ]
    assert view.members() == []
    # During the partition bob left; a late copy of ann's enter must not matter, and the
    # heal (a beat, then the snapshot) shows exactly who is there.
    gone = origin.leave(key("bob"))
    assert gone is not None
    assert view.wants_snapshot() == []
    healed = view.heard("ap-south/r1", 3, now=20.0)
    assert healed == []  # what is held may be stale: nothing listed before the snapshot
    assert view.wants_snapshot() == ["ap-south/r1"]
    healed += view.apply_snapshot(origin.snapshot(), now=20.0)
    assert view.wants_snapshot() == []
    assert [(e.action, e.member.key.client_id) for e in healed] == [(Action.ENTER, "ann")]
    assert view.members() == origin.members()
    assert replay(events + marked + removed + healed) == {m.key: m for m in view.members()}


def test_a_late_change_from_before_a_snapshot_is_not_a_phantom() -> None:
    origin = LocalPresence("us-east/r1", epoch=1, region="us-east", leave_after_s=1)
    view = ChannelPresence(suspect_after_s=5, remove_after_s=10)
    entered = origin.enter(key("ann"), None)
    left = origin.leave(key("ann"))
    assert left is not None
    view.apply_snapshot(origin.snapshot(), 0.0)  # ann came and went before it
    assert view.apply(entered, 0.0) == []
    assert view.members() == []


def test_a_restarted_origin_ends_its_previous_incarnation() -> None:
    old = LocalPresence("us-east/r1", epoch=1, region="us-east", leave_after_s=1)
    view = ChannelPresence(suspect_after_s=5, remove_after_s=10)
    view.apply(old.enter(key("ann"), None), 0.0)
    new = LocalPresence("us-east/r1", epoch=2, region="us-east", leave_after_s=1)
    events = view.apply(new.enter(key("bob", "c9"), None), 1.0)
    assert [(e.action, e.member.key.client_id) for e in events] == [
        (Action.LEAVE, "ann"),
        (Action.ENTER, "bob"),
    ]
    # The old incarnation's stragglers change nothing.
    assert view.apply(old.enter(key("cy"), None), 2.0) == []
    assert [m.key.client_id for m in view.members()] == ["bob"]


def test_a_closed_connection_leaves_only_after_the_timeout_unless_it_comes_back() -> None:
    origin = LocalPresence("us-east/r1", epoch=1, region="us-east", leave_after_s=15)
    origin.enter(key("ann", "c1"), None)
    origin.enter(key("bob", "c2"), None)
    origin.connection_closed("c1", now=100.0)
    assert origin.due(114.9) == []
    # bob's connection is unaffected; ann enters again before the timeout: she stays.
    origin.enter(key("ann", "c1"), b'"back"')
    assert origin.due(200.0) == []
    origin.connection_closed("c2", now=200.0)
    leaves = origin.due(215.0)
    assert [(c.key.client_id, c.member) for c in leaves] == [("bob", None)]
    assert [m.key.client_id for m in origin.members()] == ["ann"]


def test_updates_and_repeats() -> None:
    origin = LocalPresence("us-east/r1", epoch=1, region="us-east", leave_after_s=1)
    view = ChannelPresence(suspect_after_s=5, remove_after_s=10)
    first = origin.enter(key(), b"1")
    second = origin.enter(key(), b"2")
    assert [e.action for e in view.apply(first, 0)] == [Action.ENTER]
    assert [e.action for e in view.apply(second, 0)] == [Action.UPDATE]
    assert view.apply(first, 0) == []  # older than what is kept
    assert view.apply(second, 0) == []  # a repeat
    assert view.members()[0].data == b"2"


def test_timeouts_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="suspect_after_s"):
        ChannelPresence(suspect_after_s=10, remove_after_s=5)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=30), data=st.data())
def test_events_always_match_the_view_through_partitions_and_heals(
    ops: list[tuple[int, str, str, int]], data: st.DataObject
) -> None:
    origin = LocalPresence("eu-west/r2", epoch=4, region="eu-west", leave_after_s=2)
    sent, _ = run_origin(origin, ops)
    view = ChannelPresence(suspect_after_s=3, remove_after_s=6)
    events: list[PresenceEvent] = []
    now = 0.0
    # Deliveries interleaved with silences of random length (ticks) and beats.
    steps = data.draw(
        st.lists(st.one_of(st.sampled_from(sent) if sent else st.nothing(), st.floats(0, 8)))
    )
    for step in steps:
        if isinstance(step, float):
            now += step
            events += view.tick(now)
        else:
            events += deliver(view, step, now)
        assert replay(events) == {m.key: m for m in view.members()}
    now += 1
    events += view.heard("eu-west/r2", 4, now)
    events += view.apply_snapshot(origin.snapshot(), now)
    assert view.members() == origin.members()
    assert replay(events) == {m.key: m for m in view.members()}


def test_a_heal_relists_from_a_snapshot_the_view_had_seen_before() -> None:
    """Found by the property above: the origin changed nothing during the partition, so
    its next snapshot has the seq of the last one seen; it must still list the members."""
    origin = LocalPresence("eu-west/r2", epoch=4, region="eu-west", leave_after_s=2)
    view = ChannelPresence(suspect_after_s=3, remove_after_s=6)
    origin.enter(key("ann"), b"1")
    view.apply_snapshot(origin.snapshot(), 0.0)
    assert [e.action for e in view.tick(6.0)] == [Action.LEAVE]
    assert view.heard("eu-west/r2", 4, 7.0) == []
    events = view.apply_snapshot(origin.snapshot(), 7.0)
    assert [(e.action, e.member.key.client_id) for e in events] == [(Action.ENTER, "ann")]
    assert view.members() == origin.members()
