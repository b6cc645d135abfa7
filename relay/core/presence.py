"""Who is on a channel, across relays and regions: the merge, with no I/O.

Theory of operation
-------------------
Every relay process is an *origin*: the only authority on the members entered through
its own connections. It numbers its changes to a channel's members with a version
``(epoch, seq)``: ``epoch`` is the process's incarnation (it starts higher after a
restart), ``seq`` increases with every change within the incarnation (one numbering
for all of the origin's channels, so a channel it forgot once empty goes on from
there). Origins send their changes, and now and then a snapshot of all their members
with the version it covers, to every other relay (the wire is someone else's business,
and may lose, repeat or reorder either kind).

A receiver keeps, per origin, each member with the ``seq`` of the change that last
touched it, and a *tombstone* (the seq of the leave) for a member that left. A change
wins over what is kept for its member if its seq is higher; a snapshot at ``seq = v``
says "these, and no others, as of v": a kept member or tombstone at or below ``v`` that
the snapshot does not list is gone, anything above ``v`` stays (it is newer than the
snapshot), and a late change at or below ``v`` for a member not kept is stale. So the
merged view depends only on *which* changes and snapshots arrived, not on their order or
repeats: once every change, or a later snapshot, of an origin has arrived, the receiver
holds exactly the origin's members (the property tests check this for any delivery
order). A newer epoch ends the older one: the members of a previous incarnation left
with its connections.

Liveness comes from beats (``heard``): an origin not heard for ``suspect_after_s``
has its members marked ``unreachable`` (still listed, so a short partition does not
flap the member list); not heard for ``remove_after_s`` they are removed. The
origin's version is kept, so a late change from before the removal cannot bring a
member back. What is held for a removed origin may be stale (members may leave during
the partition), so nothing of it is listed again until the origin's next snapshot
(``wants_snapshot`` names the origins to ask): then exactly its members reappear, no
phantom and none missing.

On the origin itself, ``LocalPresence`` turns enter/update/leave requests into
numbered changes, and a connection that dies makes its members leave only
``leave_after_s`` later, as Ably does, so a client that reconnects at once does not
flicker out of everyone's list.

Every method returns the ``PresenceEvent``s subscribers should see: ``enter`` for a
member new to the view, ``update`` for new data or a change of status, ``leave``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Status(StrEnum):
    PRESENT = "present"
    UNREACHABLE = "unreachable"  # its relay or region has not been heard for a while


class Action(StrEnum):
    ENTER = "enter"
    UPDATE = "update"
    LEAVE = "leave"


@dataclass(frozen=True, order=True)
class MemberKey:
    """A member is one client on one connection (a client on two tabs is two members)."""

    client_id: str
    connection: str


@dataclass(frozen=True)
class Member:
    key: MemberKey
    region: str
    relay: str
    data: bytes | None = None  # the client's JSON, as sent
    status: Status = Status.PRESENT


@dataclass(frozen=True, order=True)
class Version:
    epoch: int
    seq: int


@dataclass(frozen=True)
class Change:
    """One origin's change to one member: ``member`` None is a leave of ``key``."""

    origin: str
    version: Version
    key: MemberKey
    member: Member | None


@dataclass(frozen=True)
class Snapshot:
    """All of an origin's members as of ``version`` (their own last seqs alongside)."""

    origin: str
    version: Version
    members: Mapping[MemberKey, tuple[int, Member]]


@dataclass(frozen=True)
class PresenceEvent:
    action: Action
    member: Member


@dataclass
class _Kept:
    seq: int
    member: Member | None  # None: a tombstone


@dataclass
class _Origin:
    epoch: int
    seq: int = 0  # the highest seq seen in this epoch
    kept: dict[MemberKey, _Kept] = field(default_factory=dict)
    snap_seq: int = 0  # the newest snapshot's seq: it lists all members up to there
    last_heard: float = 0.0
    status: Status = Status.PRESENT
    removed: bool = False  # not heard for remove_after_s: members dropped from the view
    removed_at: float = 0.0


class ChannelPresence:
    """The merged member set of one channel, as one relay sees it."""

    def __init__(self, suspect_after_s: float, remove_after_s: float) -> None:
        if not 0 < suspect_after_s <= remove_after_s:
            raise ValueError("presence needs 0 < suspect_after_s <= remove_after_s")
        self.suspect_after_s = suspect_after_s
        self.remove_after_s = remove_after_s
        self._origins: dict[str, _Origin] = {}

    # --- what the view holds

    def members(self) -> list[Member]:
        """Everyone listed now, present or unreachable, in a stable order."""
        return sorted(
            (m for o in self._origins.values() if not o.removed for m in self._live(o)),
            key=lambda m: m.key,
        )

    def version(self, origin: str) -> Version | None:
        state = self._origins.get(origin)
        return None if state is None else Version(state.epoch, state.seq)

    # --- input

    def apply(self, change: Change, now: float) -> list[PresenceEvent]:
        state, events = self._origin_for(change.origin, change.version.epoch, now)
        if state is None:
            return events
        state.seq = max(state.seq, change.version.seq)
        kept = state.kept.get(change.key)
        if kept is not None and kept.seq >= change.version.seq:
            return events  # a repeat, or older than what is kept
        if kept is None and change.version.seq <= state.snap_seq:
            return events  # a newer snapshot did not list it: it is gone since
        before = self._shown(state, kept)
        state.kept[change.key] = _Kept(change.version.seq, change.member)
        return events + self._diff(before, self._shown(state, state.kept[change.key]))

    def apply_snapshot(self, snap: Snapshot, now: float) -> list[PresenceEvent]:
        state, events = self._origin_for(snap.origin, snap.version.epoch, now)
        if state is None:
            return events
        state.seq = max(state.seq, snap.version.seq)
        newer = snap.version.seq > state.snap_seq
        if not newer and not (state.removed and snap.version.seq == state.snap_seq):
            return events  # a newer snapshot already said all this one says
        state.snap_seq = snap.version.seq
        healed, state.removed = state.removed, False
        if healed:
            state.status = Status.PRESENT
        for key in set(state.kept) | set(snap.members):
            kept = state.kept.get(key)
            listed = snap.members.get(key)
            new = kept
            if listed is not None and (kept is None or listed[0] > kept.seq):
                new = _Kept(listed[0], listed[1])
            elif listed is None and kept is not None and kept.seq <= snap.version.seq:
                new = None  # gone by the snapshot's version: forget it, tombstone too
            before = None if healed else self._shown(state, kept)
            if new is None:
                state.kept.pop(key, None)
            else:
                state.kept[key] = new
            events += self._diff(before, self._shown(state, new))
        return events

    def heard(self, origin: str, epoch: int, now: float) -> list[PresenceEvent]:
        """A beat from ``origin``: it is alive (and which incarnation)."""
        _, events = self._origin_for(origin, epoch, now)
        return events

    def tick(self, now: float) -> list[PresenceEvent]:
        """Mark or remove the members of origins not heard from in time."""
        events: list[PresenceEvent] = []
        for state in self._origins.values():
            silent = now - state.last_heard
            if not state.removed and silent >= self.remove_after_s:
                events += [PresenceEvent(Action.LEAVE, m) for m in self._live(state)]
                state.removed, state.removed_at = True, now
            elif not state.removed and silent >= self.suspect_after_s:
                events += self._set_status(state, Status.UNREACHABLE)
        return events

    # --- internals

    def _origin_for(
        self, origin: str, epoch: int, now: float
    ) -> tuple[_Origin | None, list[PresenceEvent]]:
        """The origin's state for ``epoch`` (None if that epoch is over), marked heard."""
        state = self._origins.get(origin)
        events: list[PresenceEvent] = []
        if state is not None and epoch < state.epoch:
            return None, events  # a previous incarnation: its members are gone
        if state is None or epoch > state.epoch:
            if state is not None and not state.removed:
                events += [PresenceEvent(Action.LEAVE, m) for m in self._live(state)]
            state = self._origins[origin] = _Origin(epoch)
        state.last_heard = max(state.last_heard, now)
        # Removed after a partition: what is held may be stale (members may have left
        # meanwhile), so nothing is listed again until the origin's next snapshot.
        if not state.removed and state.status is not Status.PRESENT:
            events += self._set_status(state, Status.PRESENT)
        return state, events

    def wants_snapshot(self) -> list[str]:
        """Origins heard again after their members were removed: ask them for a snapshot."""
        return sorted(
            name
            for name, state in self._origins.items()
            if state.removed and state.last_heard > state.removed_at
        )

    def _set_status(self, state: _Origin, status: Status) -> list[PresenceEvent]:
        if state.status is status:
            return []
        state.status = status
        return [PresenceEvent(Action.UPDATE, m) for m in self._live(state)]

    def _live(self, state: _Origin) -> Iterable[Member]:
        for kept in state.kept.values():
            if kept.member is not None:
                yield replace(kept.member, status=state.status)

    def _shown(self, state: _Origin, kept: _Kept | None) -> Member | None:
        if state.removed or kept is None or kept.member is None:
            return None
        return replace(kept.member, status=state.status)

    @staticmethod
    def _diff(before: Member | None, after: Member | None) -> list[PresenceEvent]:
        if before is None and after is not None:
            return [PresenceEvent(Action.ENTER, after)]
        if before is not None and after is None:
            return [PresenceEvent(Action.LEAVE, before)]
        if before is not None and after is not None and before != after:
            return [PresenceEvent(Action.UPDATE, after)]
        return []


class LocalPresence:
    """One origin's own members on one channel, and the numbered changes it sends."""

    def __init__(
        self,
        origin: str,
        epoch: int,
        region: str,
        leave_after_s: float,
        relay: str | None = None,
        numbering: Callable[[], int] | None = None,
    ) -> None:
        self.origin = origin
        self.epoch = epoch
        self.region = region
        self.relay = relay or origin  # what members show as their relay
        self.leave_after_s = leave_after_s
        # Where change numbers come from: increasing within the epoch is all that matters,
        # so an origin that forgets an empty channel shares one numbering among them all.
        self._numbering = numbering or itertools.count(1).__next__
        self._seq = 0  # this channel's last change number
        self._members: dict[MemberKey, tuple[int, Member]] = {}
        self._leaving: dict[MemberKey, float] = {}  # key -> when its leave is due

    def enter(self, key: MemberKey, data: bytes | None) -> Change:
        """Enter or update (a second enter is an update, as in Ably)."""
        self._leaving.pop(key, None)
        member = Member(key, self.region, self.relay, data)
        return self._change(key, member)

    def leave(self, key: MemberKey) -> Change | None:
        self._leaving.pop(key, None)
        if key not in self._members:
            return None
        return self._change(key, None)

    def connection_closed(self, connection: str, now: float) -> None:
        """Its members leave ``leave_after_s`` from now (``due``), unless they leave first."""
        for key in self._members:
            if key.connection == connection:
                self._leaving.setdefault(key, now + self.leave_after_s)

    def due(self, now: float) -> list[Change]:
        leaves = []
        for key, at in list(self._leaving.items()):
            if at <= now:
                change = self.leave(key)
                if change is not None:
                    leaves.append(change)
        return leaves

    def snapshot(self) -> Snapshot:
        return Snapshot(self.origin, Version(self.epoch, self._seq), dict(self._members))

    def members(self) -> list[Member]:
        return sorted((m for _, m in self._members.values()), key=lambda m: m.key)

    def _change(self, key: MemberKey, member: Member | None) -> Change:
        self._seq = self._numbering()
        if member is None:
            self._members.pop(key, None)
        else:
            self._members[key] = (self._seq, member)
        return Change(self.origin, Version(self.epoch, self._seq), key, member)
