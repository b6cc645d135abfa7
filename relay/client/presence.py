"""Presence in the SDK, without I/O: members and their events, the member list kept from
them (``MemberView``), and what the application entered (``PresenceBook``).

Theory of operation
-------------------
**Watching.** A subscription with ``presence`` gets a ``PresenceSync`` first (the
channel's whole member list as the relay has it), then one ``PresenceChange`` per
enter, update or leave. Every new connection (a reconnect, a failover, a reopened SSE
stream) subscribes again and brings a new ``PresenceSync``: it *replaces* the view, so a
change that came twice (before the drop, and again inside the new list) or not at all
(while disconnected) leaves no trace. ``MemberView`` is that rule, and nothing else.

A member is one client on one connection: a client that reconnects is, for a while,
two members (its old connection leaves ``[presence] leave_after_s`` later, or, when its
relay died, once the relay is given up). ``MemberView.client_ids`` is "who is here".

**Entering.** The relay forgets a connection's members when the connection ends, so
the session remembers what the application entered (``PresenceBook``) and enters it
again, with the same client id and data, on every new WebSocket connection. Each
enter/update/leave gets a version per channel; the relay answers a connection's ops in
order, so its ``presence.ok`` for version ``v`` settles every op up to ``v``. A new
connection settles the rest: what is entered is sent again (its ``ok`` settles it),
and a leave is done already (the new connection entered nothing). A refused op puts the
channel back as the relay has it: as it last accepted it, or not entered when what was
refused is the entering again (unless the refusal is temporary: the next connection
tries again). An update is sent as entering again with the same client id, so that it
means the same whether or not the enter before it was accepted. The SSE wire carries
nothing from client to relay: there, ops in flight fail (``on_sse``), and what was
entered waits for the next WebSocket connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import msgspec

from relay.protocol.frames import MemberFrame, PresenceFrame

PresenceAction = Literal["enter", "update", "leave"]


@dataclass(frozen=True)
class Member:
    """One client on one connection in a channel's presence set."""

    client_id: str
    connection: str
    region: str
    relay: str
    status: str
    """``present``, or ``unreachable``: its relay or region is not heard from (it is
    removed if that lasts)."""
    data_json: bytes | None = None
    """The member's data as the client sent it (JSON); None: entered without data."""

    @cached_property
    def data(self) -> Any:
        """The member's data, decoded (None when it has none)."""
        return None if self.data_json is None else msgspec.json.decode(self.data_json)

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the member: (client id, connection)."""
        return (self.client_id, self.connection)


@dataclass(frozen=True)
class PresenceSync:
    """The channel's whole member list: replace your view with it (it comes first on a
    subscription, and again after every reconnect or failover)."""

    channel: str
    members: tuple[Member, ...]


@dataclass(frozen=True)
class PresenceChange:
    """A member entered, changed (data or ``status``), or left."""

    channel: str
    action: PresenceAction
    member: Member


PresenceEvent = PresenceSync | PresenceChange


def member_of(frame: MemberFrame) -> Member:
    data = None if isinstance(frame.data, msgspec.UnsetType) else bytes(frame.data)
    return Member(frame.client_id, frame.connection, frame.region, frame.relay, frame.status, data)


def members_of(frame: PresenceFrame) -> tuple[Member, ...]:
    return tuple(member_of(m) for m in frame.members)


def action_of(raw: str) -> PresenceAction | None:
    """The action of a ``presence_event``; None for one this version does not know."""
    return _ACTIONS.get(raw)


_ACTIONS: dict[str, PresenceAction] = {"enter": "enter", "update": "update", "leave": "leave"}


class MemberView:
    """A channel's members as its events tell them: a sync replaces, a change applies."""

    def __init__(self, members: Iterable[Member] = ()) -> None:
        self._members: dict[tuple[str, str], Member] = {m.key: m for m in members}

    def apply(self, event: PresenceEvent) -> None:
        if isinstance(event, PresenceSync):
            self._members = {m.key: m for m in event.members}
        elif event.action == "leave":
            self._members.pop(event.member.key, None)
        else:
            self._members[event.member.key] = event.member

    @property
    def members(self) -> tuple[Member, ...]:
        """The members, in the order they entered."""
        return tuple(self._members.values())

    @property
    def client_ids(self) -> set[str]:
        """Who is here: the client ids of the members (present or unreachable)."""
        return {client_id for client_id, _ in self._members}


# --- what the application entered --------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """What to be in a channel's presence set as."""

    client_id: str | None
    """None: the relay decides (the token's ``sub``, else the connection id)."""
    data: bytes | None
    """JSON; None: no data."""


@dataclass
class _Channel:
    wanted: Entry | None = None  # entered (or being entered); None: not
    accepted: Entry | None = None  # as the relay last accepted it
    client_id: str | None = None  # the member's client id, as the relay named it
    made: int = 0  # versions of the ops made
    done: int = 0  # ops up to this version are settled


@dataclass
class PresenceBook:
    """Per channel: what the application entered, and which of its ops are settled."""

    _channels: dict[str, _Channel] = field(default_factory=dict)

    # --- queries --------------------------------------------------------------------------

    def entered(self, channel: str) -> Entry | None:
        state = self._channels.get(channel)
        return state.wanted if state is not None else None

    def client_id(self, channel: str) -> str | None:
        """The client id the relay last confirmed for our member (None: not entered)."""
        state = self._channels.get(channel)
        return state.client_id if state is not None and state.wanted is not None else None

    def done(self, channel: str) -> int:
        """Every op of ``channel`` up to this version is settled."""
        state = self._channels.get(channel)
        return state.done if state is not None else 0

    # --- the application's ops ------------------------------------------------------------

    def enter(self, channel: str, client_id: str | None, data: bytes | None) -> tuple[int, Entry]:
        """(version, entry) to send. Entering again changes the data (or the client id)."""
        state = self._channels.setdefault(channel, _Channel())
        state.wanted = Entry(client_id, data)
        state.made += 1
        return state.made, state.wanted

    def update(self, channel: str, data: bytes | None) -> tuple[int, Entry]:
        state = self._channels.get(channel)
        if state is None or state.wanted is None:
            raise ValueError(f"not entered in {channel!r}: enter() first")
        return self.enter(channel, state.wanted.client_id, data)

    def leave(self, channel: str) -> int | None:
        """The version of the leave to send; None: not entered, nothing to do."""
        state = self._channels.get(channel)
        if state is None or state.wanted is None:
            return None
        state.wanted = None
        state.made += 1
        return state.made

    # --- answers --------------------------------------------------------------------------

    def accepted(self, channel: str, version: int, entry: Entry | None, client_id: str) -> None:
        """The relay said ``ok`` to the op of ``version``, which sent ``entry`` (None: a
        leave); the relay answers in order, so every op before it is settled too."""
        state = self._channels.get(channel)
        if state is None or (version <= state.done and version != state.made):
            return  # an answer overtaken by a reconnect's
        state.accepted = entry
        state.done = max(state.done, version)
        state.client_id = client_id if entry is not None else None

    def refused(self, channel: str, version: int, *, temporary: bool, again: bool = False) -> None:
        """The relay refused the op of ``version`` (``again``: entering again on a new
        connection, which then has nothing). If it is the newest op, the channel goes
        back to what the relay has: as it last accepted it, or, for a refused entering
        again, not entered (unless the refusal is temporary: the next connection tries
        again)."""
        state = self._channels.get(channel)
        if state is None:
            return
        state.done = max(state.done, version)
        if again:
            state.accepted = None
        if version != state.made or (again and temporary):
            return
        state.wanted = state.accepted
        if state.wanted is None:
            state.client_id = None

    # --- connections ----------------------------------------------------------------------

    def reconnected(self) -> list[tuple[str, int, Entry]]:
        """A new WebSocket connection: (channel, version, entry) to enter again. Leaves are
        settled: the new connection has entered nothing."""
        again: list[tuple[str, int, Entry]] = []
        for channel, state in self._channels.items():
            if state.wanted is None:
                state.accepted = state.client_id = None
                state.done = state.made
            else:
                again.append((channel, state.made, state.wanted))
        return again

    def on_sse(self) -> list[tuple[str, int]]:
        """A connection over SSE, which cannot carry ops: (channel, version) after which
        the channel's ops failed (they are undone). Leaves are settled; what was entered
        before stays wanted and is entered again on the next WebSocket connection."""
        failed: list[tuple[str, int]] = []
        for channel, state in self._channels.items():
            if state.wanted is None:
                state.accepted = state.client_id = None
            elif state.done < state.made:
                failed.append((channel, state.done))
                state.wanted = state.accepted
            state.done = state.made
        return failed
