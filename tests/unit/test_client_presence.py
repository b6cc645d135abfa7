"""Presence in the SDK's pure core: frames and events of ``ClientSession``, what it
enters again after a reconnect, and the member list kept from the events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.client.presence import Member, MemberView, PresenceChange, PresenceSync
from relay.client.session import (
    BadFrame,
    ClientSession,
    ErrorReceived,
    Event,
    MembersReceived,
    PresenceDone,
    PresenceRefused,
)
from relay.client.subscription import PresenceEvents


def frame(raw: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(raw)
    return decoded


def member(client_id: str, connection: str = "c1", **extra: Any) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "connection": connection,
        "region": "us-east",
        "relay": "r1",
        "status": "present",
        **extra,
    }


def ok(request: bytes, action: str, client_id: str) -> str:
    sent = frame(request)
    return json.dumps(
        {
            "op": "presence.ok",
            "ref": sent["ref"],
            "channel": sent["channel"],
            "action": action,
            "client_id": client_id,
        }
    )


def refusal(request: bytes, code: str = "too_large", temporary: bool = False) -> str:
    sent = frame(request)
    return json.dumps(
        {"op": "error", "ref": sent["ref"], "code": code, "message": "no", "temporary": temporary}
    )


def sub_frames(s: ClientSession, frames: list[bytes]) -> list[dict[str, Any]]:
    return [f for f in map(frame, frames) if f["op"].startswith("presence")]


# --- frames and answers ------------------------------------------------------------------


def test_enter_update_leave_frames_and_their_answers() -> None:
    s = ClientSession()
    version, raw = s.presence_enter("room", b'{"mood":1}', "ann")
    assert frame(raw) == {
        "op": "presence.enter",
        "channel": "room",
        "data": {"mood": 1},
        "client_id": "ann",
        "ref": frame(raw)["ref"],
    }
    assert s.presence_done("room") == 0 and s.presence_client_id("room") is None
    assert s.receive(ok(raw, "enter", "ann")) == [PresenceDone("room", version)]
    assert s.presence_done("room") == version and s.presence_client_id("room") == "ann"

    v2, raw = s.presence_update("room", b'{"mood":2}')
    assert v2 == version + 1
    # Entering again, as the same client: an update that cannot enter someone else.
    assert {k: v for k, v in frame(raw).items() if k != "ref"} == {
        "op": "presence.enter",
        "channel": "room",
        "data": {"mood": 2},
        "client_id": "ann",
    }
    assert s.receive(ok(raw, "update", "ann")) == [PresenceDone("room", v2)]

    left = s.presence_leave("room")
    assert left is not None
    v3, raw = left
    assert frame(raw) == {"op": "presence.leave", "channel": "room", "ref": frame(raw)["ref"]}
    assert s.receive(ok(raw, "leave", "ann")) == [PresenceDone("room", v3)]
    assert s.presence_entry("room") is None and s.presence_client_id("room") is None
    assert s.presence_leave("room") is None  # not entered: nothing to send


def test_enter_without_data_or_client_id_sends_neither() -> None:
    _, raw = ClientSession().presence_enter("room")
    assert set(frame(raw)) == {"op", "channel", "ref"}


def test_misuse_raises() -> None:
    s = ClientSession()
    with pytest.raises(ValueError, match="enter"):
        s.presence_update("room", b"1")
    with pytest.raises(ValueError, match="JSON"):
        s.presence_enter("room", b"{nope")
    assert s.presence_entry("room") is None


def test_members_request_and_reply() -> None:
    s = ClientSession()
    ref, raw = s.presence_get("room")
    assert frame(raw) == {"op": "presence.get", "channel": "room", "ref": ref}
    reply = {"op": "presence", "ref": ref, "channel": "room", "members": [member("ann", data=7)]}
    (event,) = s.receive(json.dumps(reply))
    assert isinstance(event, MembersReceived) and event.ref == ref
    (ann,) = event.members
    assert (ann.client_id, ann.connection, ann.region, ann.relay, ann.status, ann.data) == (
        "ann",
        "c1",
        "us-east",
        "r1",
        "present",
        7,
    )
    ref, raw = s.presence_get("room")
    error = {"op": "error", "ref": ref, "code": "forbidden", "message": "no", "temporary": False}
    assert s.receive(json.dumps(error)) == [ErrorReceived("forbidden", "no", ref, False, "room")]
    # A reply to nothing of this connection's (an earlier one's) is ignored.
    assert s.receive(json.dumps({**reply, "ref": 999})) == []


def test_refusals_put_the_channel_back_as_the_relay_has_it() -> None:
    s = ClientSession()
    v1, raw = s.presence_enter("room", b"1")
    assert s.receive(refusal(raw)) == [PresenceRefused("room", v1, "too_large", "no", False)]
    assert s.presence_entry("room") is None  # never entered
    _, raw = s.presence_enter("room", b"1")
    s.receive(ok(raw, "enter", "c-1"))
    v3, raw = s.presence_update("room", b"2")
    s.receive(refusal(raw))
    entry = s.presence_entry("room")
    assert entry is not None and entry.data == b"1"
    assert s.presence_done("room") == v3


def test_a_reconnect_enters_again_and_settles_leaves() -> None:
    s = ClientSession()
    s.subscribe("room", presence=True)
    _, raw = s.presence_enter("room", b'{"n":"ann"}', "ann")
    s.receive(ok(raw, "enter", "ann"))
    _, raw = s.presence_enter("hall", b"1")
    s.receive(ok(raw, "enter", "c-1"))
    v_leave, _ = s.presence_leave("hall") or (0, b"")  # in flight when the connection drops
    v_update, _ = s.presence_update("room", b'{"n":"Ann"}')  # in flight too

    frames = s.on_reconnect()
    subscribe, *rest = map(frame, frames)
    assert subscribe["op"] == "subscribe" and subscribe["presence"] is True
    (again,) = [f for f in rest if f["op"] == "presence.enter"]
    # The newest wanted state, with the same client id: the update is in it.
    assert (again["channel"], again["client_id"], again["data"]) == ("room", "ann", {"n": "Ann"})
    assert s.presence_done("hall") == v_leave  # nothing to leave on the new connection
    assert s.presence_done("room") < v_update
    raw_again = next(f for f in frames if b"presence.enter" in f)
    assert s.receive(ok(raw_again, "enter", "ann")) == [PresenceDone("room", v_update)]
    assert s.presence_done("room") == v_update


def test_entering_again_refused_for_good_forgets_and_temporarily_keeps() -> None:
    for temporary, kept in ((False, False), (True, True)):
        s = ClientSession()
        _, raw = s.presence_enter("room", b"1")
        s.receive(ok(raw, "enter", "c-1"))
        (again,) = s.on_reconnect()
        s.receive(refusal(again, "unavailable" if temporary else "forbidden", temporary))
        assert (s.presence_entry("room") is not None) is kept
        assert len(s.on_reconnect()) == int(kept)


def test_on_sse_ops_in_flight_fail_and_what_was_entered_waits_for_a_websocket() -> None:
    s = ClientSession()
    _, raw = s.presence_enter("room", b"1")
    s.receive(ok(raw, "enter", "c-1"))
    done = s.presence_done("room")
    s.presence_update("room", b"2")  # in flight
    s.presence_enter("hall", b"3")  # in flight, never accepted
    _, raw = s.presence_enter("lobby", b"4")
    s.receive(ok(raw, "enter", "c-1"))
    s.presence_leave("lobby")  # in flight: settled, nothing is entered on SSE
    assert sorted(s.presence_on_sse()) == [("hall", 0), ("room", done)]
    entry = s.presence_entry("room")
    assert entry is not None and entry.data == b"1"  # back to what the relay had
    assert s.presence_entry("hall") is None and s.presence_entry("lobby") is None
    assert [frame(f)["channel"] for f in s.on_reconnect()] == ["room"]


def test_presence_frames_of_a_subscription_become_events() -> None:
    s = ClientSession()
    s.subscribe("room", presence=True)
    s.subscribe("plain")
    listed = {"op": "presence", "channel": "room", "members": [member("ann", data={"a": 1})]}
    (sync,) = s.receive(json.dumps(listed))
    assert isinstance(sync, PresenceSync) and [m.data for m in sync.members] == [{"a": 1}]
    change = {"op": "presence_event", "channel": "room", "action": "leave", "member": member("ann")}
    (left,) = s.receive(json.dumps(change))
    assert isinstance(left, PresenceChange) and (left.action, left.member.client_id) == (
        "leave",
        "ann",
    )
    assert left.member.data_json is None and left.member.data is None
    # Not watched: a channel subscribed without presence (an SSE stream with presence=1
    # sends them for all its channels), or not subscribed at all; an unknown action.
    for channel in ("plain", "other"):
        assert s.receive(json.dumps({**listed, "channel": channel})) == []
        assert s.receive(json.dumps({**change, "channel": channel})) == []
    assert s.receive(json.dumps({**change, "action": "teleport"})) == []
    assert (
        s.receive(
            json.dumps({"op": "presence.ok", "channel": "x", "action": "enter", "client_id": "a"})
        )
        == []
    )


def test_sse_streams_ask_for_presence_when_a_channel_wants_it() -> None:
    s = ClientSession()
    s.subscribe("a")
    s.subscribe("b", presence=True)
    s.subscribe("c")
    plans = s.on_stream(2)
    assert [(p.channels, p.presence) for p in plans] == [(("a", "b"), True), (("c",), False)]


@pytest.mark.parametrize(
    "raw",
    [
        '{"op":"presence","channel":"room"}',
        '{"op":"presence","channel":"room","members":[{"client_id":1}]}',
        '{"op":"presence_event","channel":"room","action":"enter"}',
        '{"op":"presence.ok","ref":1}',
    ],
)
def test_bad_presence_frames_never_raise(raw: str) -> None:
    s = ClientSession()
    s.subscribe("room", presence=True)
    (event,) = s.receive(raw)
    assert isinstance(event, BadFrame)


def test_an_answer_of_the_wrong_kind_is_a_bad_frame() -> None:
    s = ClientSession()
    ref, _ = s.presence_get("room")
    answer = {
        "op": "presence.ok",
        "ref": ref,
        "channel": "room",
        "action": "enter",
        "client_id": "a",
    }
    (event,) = s.receive(json.dumps(answer))
    assert isinstance(event, BadFrame)


# --- the relay and the session together --------------------------------------------------


@dataclass
class FakeRelay:
    """A relay's presence ops for one connection: what it does with each frame."""

    connection: str
    entered: dict[str, tuple[str, bytes | None]] = field(default_factory=dict)

    def answer(self, raw: bytes, refuse: bool) -> str:
        sent = frame(raw)
        channel = sent["channel"]
        if refuse:
            return refusal(raw)
        data = msgspec.json.encode(sent["data"]) if "data" in sent else None
        if sent["op"] == "presence.leave":
            client_id = self.entered.pop(channel, (self.connection, None))[0]
            return ok(raw, "leave", client_id)
        before = self.entered.get(channel)
        if sent["op"] == "presence.enter":
            client_id = sent.get("client_id") or (before[0] if before else self.connection)
        else:
            client_id = before[0] if before else self.connection
        self.entered[channel] = (client_id, data)
        return ok(raw, "update" if before else "enter", client_id)


CHANNELS = ("a", "b")
_step = st.one_of(
    st.tuples(st.just("enter"), st.sampled_from(CHANNELS), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("update"), st.sampled_from(CHANNELS), st.integers(0, 3), st.just(False)),
    st.tuples(st.just("leave"), st.sampled_from(CHANNELS), st.just(0), st.just(False)),
    # the relay answers the oldest frame in flight (refusing it, or not)
    st.tuples(st.just("answer"), st.just(""), st.just(0), st.booleans()),
    st.tuples(st.just("reconnect"), st.just(""), st.just(0), st.just(False)),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_step, max_size=40))
def test_the_relay_ends_up_with_what_the_session_says_is_entered(
    steps: list[tuple[str, str, int, bool]],
) -> None:
    """Whatever the ops, refusals and dropped connections: once every frame is answered,
    the relay's members on the current connection are exactly what the session says is
    entered, and every op made is settled."""
    s = ClientSession()
    relay = FakeRelay("conn-0")
    in_flight: list[bytes] = []
    connections = 0

    def take(events: list[Event]) -> None:
        assert not any(isinstance(e, BadFrame) for e in events), events

    for op, channel, n, flag in steps:
        data = msgspec.json.encode({"n": n})
        if op == "enter":
            _, raw = s.presence_enter(channel, data, "me" if flag else None)
            in_flight.append(raw)
        elif op == "update":
            if s.presence_entry(channel) is None:
                with pytest.raises(ValueError):
                    s.presence_update(channel, data)
            else:
                in_flight.append(s.presence_update(channel, data)[1])
        elif op == "leave":
            made = s.presence_leave(channel)
            if made is not None:
                in_flight.append(made[1])
        elif op == "answer" and in_flight:
            take(s.receive(relay.answer(in_flight.pop(0), refuse=flag)))
        elif op == "reconnect":
            connections += 1
            relay = FakeRelay(f"conn-{connections}")  # the old one forgot its members
            in_flight = [f for f in s.on_reconnect() if b'"presence.' in f]
    while in_flight:
        take(s.receive(relay.answer(in_flight.pop(0), refuse=False)))
    for channel in CHANNELS:
        entry = s.presence_entry(channel)
        has = relay.entered.get(channel)
        if entry is None:
            assert has is None, channel
        else:
            assert has is not None, channel
            assert has[1] == entry.data, channel
            if entry.client_id is not None:
                assert has[0] == entry.client_id
            assert s.presence_client_id(channel) == has[0]


# --- the member list ---------------------------------------------------------------------


def _member(client_id: str, connection: str, data: int | None = None) -> Member:
    raw = None if data is None else str(data).encode()
    return Member(client_id, connection, "us-east", "r1", "present", raw)


_members = st.builds(
    _member,
    st.sampled_from(["ann", "bob", "cy"]),
    st.sampled_from(["c1", "c2"]),
    st.none() | st.integers(0, 3),
)
_events = st.one_of(
    st.builds(
        PresenceChange, st.just("room"), st.sampled_from(["enter", "update", "leave"]), _members
    ),
    st.builds(PresenceSync, st.just("room"), st.lists(_members, max_size=4).map(tuple)),
)


@given(st.lists(_events, max_size=30))
def test_member_view_is_the_latest_sync_with_the_changes_after_it(events: list[Any]) -> None:
    view = MemberView()
    model: dict[tuple[str, str], Member] = {}
    for event in events:
        view.apply(event)
        if isinstance(event, PresenceSync):
            model = {m.key: m for m in event.members}
        elif event.action == "leave":
            model.pop(event.member.key, None)
        else:
            model[event.member.key] = event.member
        assert {m.key: m for m in view.members} == model
        assert view.client_ids == {c for c, _ in model}


@given(before=st.lists(_events, max_size=20), sync=_events, after=st.lists(_events, max_size=10))
def test_whatever_came_before_a_sync_leaves_no_trace(
    before: list[Any], sync: Any, after: list[Any]
) -> None:
    """Events repeated or missed around a reconnect: the new connection's list decides."""
    if not isinstance(sync, PresenceSync):
        return
    seen, fresh = MemberView(), MemberView()
    for event in [*before, *before[: len(before) // 2], sync, *after]:
        seen.apply(event)
    for event in [sync, *after]:
        fresh.apply(event)
    assert seen.members == fresh.members


@pytest.mark.anyio
async def test_presence_events_never_block_and_collapse_into_a_sync() -> None:
    events = PresenceEvents("room", 3, enabled=True)
    ann, bob = _member("ann", "c1"), _member("bob", "c2")
    events._offer(PresenceSync("room", ()))
    events._offer(PresenceChange("room", "enter", ann))
    events._offer(PresenceChange("room", "enter", bob))
    events._offer(PresenceChange("room", "update", _member("ann", "c1", 1)))  # over the buffer
    assert events.synced and events.client_ids == {"ann", "bob"}
    events._end(None)
    got = [event async for event in events]
    assert got == [PresenceSync("room", (_member("ann", "c1", 1), bob))]


@pytest.mark.anyio
async def test_presence_events_need_presence_and_end_with_the_subscription() -> None:
    with pytest.raises(ValueError, match="presence=True"):
        aiter(PresenceEvents("room", 3, enabled=False))
    events = PresenceEvents("room", 3, enabled=True)
    error = RuntimeError("gone")

    async def end_later() -> None:
        await anyio.lowlevel.checkpoint()
        events._end(error)

    async with anyio.create_task_group() as tg:
        tg.start_soon(end_later)
        with pytest.raises(RuntimeError, match="gone"):
            async for _ in events:
                pass
