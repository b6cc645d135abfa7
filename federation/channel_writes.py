"""ChannelWrites: what one process appends next to one channel of its region's log.

Theory of operation
-------------------
Every write to a channel in one process — local publishes and remote messages
from federation alike — goes through one ``ChannelWrites``. It owns the
channel's head as this process last saw it (stream sequence, applied vector,
origin of the last entry) and the work that waits:

* local publishes, first come first served;
* remote messages, in a ``ChannelOrderBuffer`` until they are causally ready;
* a progress announcement owed in a total-order channel.

``plan(max_entries)`` turns what waits into a group of entries to append in one
go (an atomic batch whose first entry expects the head's sequence): ready
remote messages and local publishes interleaved, each entry's vector built on
the one before it, and a progress (null) entry at the end when this batch
applied remote messages of a total-order channel. Nothing is taken out of the
queues for good until the caller reports what happened:

* ``committed(plan, last_seq)``: the group is stored; local publishes get
  their results in the order they were sent, remote messages are settled;
* ``refused(plan)``: someone else appended first (another relay of the region,
  another federation instance): the head is unknown until the caller reads it
  again with ``set_head``; the same work is planned again, in the same order,
  on the new head (remote messages the new head covers are settled, never
  appended twice);
* ``failed(plan, reason)``: the world failed (NATS away, store full). Local
  publishes of the group fail, and so does every publish queued behind them
  from the same source: a connection's publishes are never stored out of the
  order it sent them. Remote messages go back to wait.

A group that JetStream refuses because it holds a publish id already stored
(``split``) is planned one entry at a time until it is through; one entry at a
time, a repeated local id is answered with the stored entry's position
(``duplicate_local``) and a remote id already here becomes a ``dup`` entry
(``duplicate_remote``). An id is "the same" only on the same channel from the same
publisher scope (``LocalWrite.by``, kept in the entry as ``by``; ``logformat.entry_key``):
one client's id never answers another's publish.

Local publishes never starve: every group takes local publishes, whatever
federation has waiting, and one process never races itself for the head.

No I/O here: the caller reads heads and appends (``federation.adapters``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from federation import logformat
from federation.logformat import StoredMessage
from federation.ordering import BufferFull, ChannelOrderBuffer, Stamped
from federation.vclock import VectorClock

A = TypeVar("A")  # how a remote message is acknowledged to its peer; carried, never called

NULL_DATA = msgspec.Raw(b"null")


@dataclass(frozen=True)
class Head:
    """The channel's last entry as this process knows it."""

    seq: int  # stream sequence of the last entry (0: the channel is empty)
    position: VectorClock  # the region's applied vector after it
    origin: str = ""  # where the last entry came from ("" when empty)


# Made per publish (Stored, LocalWrite) or per entry (Planned): slotted and not frozen,
# which makes them 3x cheaper to build (a frozen dataclass sets each field through
# object.__setattr__); nothing changes them after they are made.
@dataclass(slots=True)
class Stored:
    """A local publish is in the log (``duplicate``: its id was, already)."""

    seq: int
    position: VectorClock
    duplicate: bool


@dataclass(frozen=True)
class Failed:
    reason: str
    # The publish itself did not fail: one before it from the same source did.
    behind: str | None = None


Result = Stored | Failed


@dataclass(eq=False, slots=True)
class LocalWrite:
    """One local publish waiting to be stored; ``done`` is called once with its result."""

    message_id: str
    data: msgspec.Raw
    source: Hashable | None  # the connection: publishes of one source keep their order
    done: Callable[[Result], None]
    # The publisher's causal context: stored only once the log covers it.
    after: VectorClock | None = None
    queued_at: float = 0.0  # when it came (the caller's clock): bounds the wait for ``after``
    # The publisher's scope (the token's ``sub``; None: anonymous): the relay sets it,
    # never the client, and its ids are deduplicated apart from everyone else's.
    by: str | None = None


@dataclass(slots=True)
class Planned:
    """One entry of a group: what to store, its ``Nats-Msg-Id``, and why."""

    entry: StoredMessage
    msg_id: str
    position: VectorClock  # ``entry.pos``, as the clock it was made from
    local: LocalWrite | None = None
    remote: Stamped[StoredMessage] | None = None


@dataclass
class Plan:
    head: Head
    entries: list[Planned]

    def __len__(self) -> int:
        return len(self.entries)


class ChannelWrites(Generic[A]):
    def __init__(self, channel: str, region: str, *, total: bool, max_buffered: int) -> None:
        self.channel = channel
        self.region = region
        self.total = total
        self.head: Head | None = None
        self.locals: deque[LocalWrite] = deque()
        self.remotes: ChannelOrderBuffer[StoredMessage] = ChannelOrderBuffer(max_buffered)
        self._acks: dict[tuple[str, int], list[A]] = {}
        # Peers' copies to acknowledge now (applied, or here already): the caller drains it.
        self.acks_due: list[A] = []
        # Remote messages whose id is already here from another origin: stored as dup entries.
        self._dups: set[tuple[str, int]] = set()
        self.owes_progress = False
        self.split_left = 0  # entries still to plan one at a time after a refused group
        self.in_flight: Plan | None = None
        # Counters for status and metrics.
        self.applied = 0
        self.dropped = 0
        self.dup_entries = 0
        self.progress_entries = 0

    # --- input ---------------------------------------------------------------------------

    def add_local(self, write: LocalWrite) -> None:
        self.locals.append(write)

    def offer_remote(self, msg: StoredMessage, ack: A) -> None:
        """Queue a message read from a peer (its ack lands in ``acks_due`` once it is
        here). Raises ``BufferFull`` when too many wait: the link should pause."""
        if msg.origin == self.region:
            self.acks_due.append(ack)  # our own message, read back from a peer's log
            return
        stamped = Stamped(msg.origin, VectorClock(msg.ts), msg)
        key = (stamped.origin, stamped.seq)
        if key in self._acks:  # waiting already (another path, or a redelivery)
            self._acks[key].append(ack)
            return
        if self.head is not None and self.head.position.covers(msg.origin, msg.ts):
            self.dropped += 1
            if self.total and not msg.null and self.head.origin != self.region:
                # A redelivery after a restart: we may never have said we passed it.
                self.owes_progress = True
            self.acks_due.append(ack)
            return
        # Without a head yet it is kept; set_head settles it if the head covers it.
        self.remotes.offer(stamped, self.head.position if self.head else VectorClock())
        self._acks[key] = [ack]

    def owe_progress(self) -> None:
        if self.total:
            self.owes_progress = True

    def set_head(self, head: Head) -> None:
        """The head as just read from the log; settles what it covers already."""
        assert self.in_flight is None, "the head moves only between groups"
        self.head = head
        self._settle_covered(head.position)

    def note_head(self, head: Head) -> None:
        """A hint from the live feed: a newer entry exists (another relay wrote). Taken
        between groups only, so the next group does not start from a stale head."""
        if self.in_flight is None and self.head is not None and head.seq > self.head.seq:
            self.set_head(head)

    def _settle_covered(self, position: VectorClock) -> None:
        for covered in self.remotes.drop_covered(position):
            self.dropped += 1
            key = (covered.origin, covered.seq)
            self.acks_due.extend(self._acks.pop(key, []))
            self._dups.discard(key)

    # --- state ---------------------------------------------------------------------------

    @property
    def waiting_remote(self) -> int:
        return len(self.remotes)

    def has_work(self) -> bool:
        """Something could be planned once the head is known."""
        if self.locals:
            return True
        if self.owes_progress:
            return True
        if not self.remotes:
            return False
        if self.head is None:
            return True
        return self.remotes.next_ready(self.head.position) is not None

    def idle(self) -> bool:
        return not self.locals and not self.remotes and not self.owes_progress

    # --- planning ------------------------------------------------------------------------

    def plan(self, max_entries: int) -> Plan | None:
        """The next group to append, on the current head (which must be known)."""
        assert self.head is not None, "plan() needs the head: set_head first"
        assert self.in_flight is None, "one group in flight at a time"
        if self.split_left > 0:
            max_entries = 1
        head = self.head
        self._settle_covered(head.position)
        position = head.position
        last_origin = head.origin
        entries: list[Planned] = []
        waiting = self._eligible_locals()
        applied_remote = False
        # Alternate: a ready remote message, then a local publish, so neither side waits
        # for the other to run dry.
        while len(entries) < max_entries:
            progressed = False
            ready = self.remotes.next_ready(position)
            if ready is not None:
                self.remotes.applied(ready)  # out of the buffer while in flight
                planned = self._plan_remote(ready, position)
                entries.append(planned)
                position = planned.position
                last_origin = ready.origin
                applied_remote = applied_remote or not ready.payload.null
                progressed = True
            if len(entries) < max_entries:
                local = waiting.next(position)
                if local is not None:
                    position = position.increment(self.region)
                    ts = position.to_dict()
                    entry = StoredMessage(
                        local.message_id, local.data, self.region, ts, ts, by=local.by
                    )
                    msg_id = logformat.entry_key(self.channel, entry)
                    entries.append(Planned(entry, msg_id, position, local=local))
                    last_origin = self.region
                    progressed = True
            if not progressed:
                break
        owes = self.owes_progress or (self.total and applied_remote)
        if owes and last_origin not in ("", self.region) and len(entries) < max_entries:
            position = position.increment(self.region)
            ts = position.to_dict()
            null_id = f"~{self.region}:{position.get(self.region)}"
            null = StoredMessage(null_id, NULL_DATA, self.region, ts, ts, null=True)
            entries.append(Planned(null, logformat.entry_key(self.channel, null), position))
        elif owes and last_origin in ("", self.region):
            self.owes_progress = False  # our own entry already follows what we applied
        elif owes:
            self.owes_progress = True  # no room in this group: the next one says it
        if not entries:
            return None
        plan = Plan(head, entries)
        self.in_flight = plan
        return plan

    def _eligible_locals(self) -> _LocalCursor:
        return _LocalCursor(list(self.locals))

    def waiting_for_context(self) -> int:
        """Local publishes whose causal context this region's log does not cover yet."""
        if self.head is None:
            return sum(1 for w in self.locals if w.after)
        return sum(1 for w in self.locals if w.after and not w.after <= self.head.position)

    def expire(self, now: float, wait_s: float) -> int:
        """Fail local publishes that waited longer than ``wait_s`` for their causal context
        (and what their sources queued behind them); returns how many."""
        if self.in_flight is not None:
            return 0
        covered = self.head.position if self.head is not None else VectorClock()
        expired = [
            w
            for w in self.locals
            if w.after and not w.after <= covered and now - w.queued_at > wait_s
        ]
        if not expired:
            return 0
        sources: dict[Hashable, str] = {}
        for write in expired:
            self.locals.remove(write)
            missing = (
                {k: v for k, v in write.after.items() if v > covered.get(k)} if write.after else {}
            )
            write.done(
                Failed(
                    f"its causal context has not reached this region in {wait_s:g} s "
                    f"(missing {missing})"
                )
            )
            if write.source is not None:
                sources.setdefault(write.source, write.message_id)
        self.fail_behind(sources)
        return len(expired)

    def _plan_remote(self, msg: Stamped[StoredMessage], position: VectorClock) -> Planned:
        stored = msg.payload
        after = position.with_entry(msg.origin, msg.seq)
        key = (msg.origin, msg.seq)
        dup = key in self._dups
        # A peer's dup entry is decided afresh here: this region may not have the other copy.
        entry = StoredMessage(
            stored.id, stored.data, stored.origin, stored.ts, after.to_dict(),
            dup=dup, null=stored.null, by=stored.by,
        )  # fmt: skip
        # Keyed as at its origin: a retry in two regions is the same publish only for the
        # same publisher.
        msg_id = logformat.entry_key(self.channel, entry)
        if dup:
            msg_id = f"{msg_id} @{msg.origin}:{msg.seq}"
        return Planned(entry, msg_id, after, remote=msg)

    # --- outcomes ------------------------------------------------------------------------

    def committed(self, plan: Plan, last_seq: int) -> None:
        """The whole group is stored; its last entry got stream sequence ``last_seq``."""
        self._finish(plan)
        first_seq = last_seq - len(plan.entries) + 1
        for offset, planned in enumerate(plan.entries):
            seq = first_seq + offset
            if planned.local is not None:
                self._pop_local(planned.local)
                planned.local.done(Stored(seq, planned.position, duplicate=False))
            elif planned.remote is not None:
                key = (planned.remote.origin, planned.remote.seq)
                self.acks_due.extend(self._acks.pop(key, []))
                if key in self._dups:
                    self._dups.discard(key)
                    self.dup_entries += 1
                self.applied += 1
            else:
                self.progress_entries += 1
                self.owes_progress = False
        last = plan.entries[-1]
        self.head = Head(last_seq, last.position, last.entry.origin)
        if self.split_left > 0:
            self.split_left -= len(plan.entries)

    def refused(self, plan: Plan) -> None:
        """Someone appended first: read the head again, then plan again."""
        self._finish(plan)
        self._restore_remotes(plan)
        self.head = None

    def split(self, plan: Plan) -> None:
        """The group holds an id already stored: go on one entry at a time through it."""
        self._finish(plan)
        self._restore_remotes(plan)
        self.split_left = max(self.split_left, len(plan.entries))

    def duplicate_local(self, plan: Plan, position: VectorClock, seq: int) -> None:
        """A one-entry group whose local publish id is stored already (at ``seq``)."""
        assert len(plan.entries) == 1 and plan.entries[0].local is not None
        self._finish(plan)
        local = plan.entries[0].local
        self._pop_local(local)
        local.done(Stored(seq, position, duplicate=True))
        if self.split_left > 0:
            self.split_left -= 1

    def duplicate_remote(self, plan: Plan) -> None:
        """A one-entry group whose remote id is here already from another origin: it goes
        in as a dup entry (advances the position, is not delivered twice)."""
        assert len(plan.entries) == 1 and plan.entries[0].remote is not None
        self._finish(plan)
        remote = plan.entries[0].remote
        self._dups.add((remote.origin, remote.seq))
        self._restore_remotes(plan)

    def duplicate_progress(self, plan: Plan) -> None:
        """A progress entry's id is stored already: the head we planned on is stale."""
        self.refused(plan)

    def failed(self, plan: Plan, reason: str) -> None:
        """The group could not be stored. Its local publishes fail, and every publish
        queued behind them from the same source; remote messages wait again."""
        self._finish(plan)
        self._restore_remotes(plan)
        self.head = None  # what happened is unknown: read it again before the next group
        failed_sources: dict[Hashable, str] = {}
        for planned in plan.entries:
            local = planned.local
            if local is None:
                continue
            self._pop_local(local)
            local.done(Failed(reason))
            if local.source is not None:
                failed_sources.setdefault(local.source, local.message_id)
        if failed_sources:
            self.fail_behind(failed_sources)

    def fail_behind(self, sources: dict[Hashable, str]) -> None:
        """Fail every queued publish of these sources (source -> the id that failed first)."""
        kept: deque[LocalWrite] = deque()
        for local in self.locals:
            first = sources.get(local.source) if local.source is not None else None
            if first is None:
                kept.append(local)
            else:
                local.done(Failed(f"publish {first!r} before it failed", behind=first))
        self.locals = kept

    def fail_all(self, reason: str) -> None:
        """Nothing more will be written here (shutting down): fail what waits."""
        while self.locals:
            self.locals.popleft().done(Failed(reason))

    def _finish(self, plan: Plan) -> None:
        assert self.in_flight is plan, "report on the group in flight"
        self.in_flight = None

    def _pop_local(self, local: LocalWrite) -> None:
        # Groups take locals from the front, in order, so this is the first one.
        if self.locals and self.locals[0] is local:
            self.locals.popleft()
        else:
            self.locals.remove(local)

    def _restore_remotes(self, plan: Plan) -> None:
        for planned in plan.entries:
            if planned.remote is not None:
                self.remotes.restore(planned.remote)


class _LocalCursor:
    """Local publishes in order, skipping those whose causal context the group's position
    does not cover yet, and everything their sources queued behind them."""

    def __init__(self, locals_: list[LocalWrite]) -> None:
        self._locals = locals_
        self._index = 0
        self._blocked: set[Hashable] = set()

    def next(self, position: VectorClock) -> LocalWrite | None:
        while self._index < len(self._locals):
            write = self._locals[self._index]
            self._index += 1
            if write.source is not None and write.source in self._blocked:
                continue
            if write.after is not None and not write.after <= position:
                if write.source is not None:
                    self._blocked.add(write.source)
                continue
            return write
        return None


__all__ = [
    "BufferFull",
    "ChannelWrites",
    "Failed",
    "Head",
    "LocalWrite",
    "Plan",
    "Planned",
    "Result",
    "Stored",
]
