"""ChannelWrites against an in-memory region log with JetStream's rules, under random
interleavings of several writers (processes), refusals, failures, repeated ids and
remote messages arriving in any order over several paths."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from federation import logformat
from federation.channel_writes import (
    ChannelWrites,
    Failed,
    Head,
    LocalWrite,
    Plan,
    Result,
    Stored,
)
from federation.logformat import StoredMessage
from federation.vclock import EMPTY, VectorClock

REGION = "us-east"
CHANNEL = "chat:x"
PEERS = ["ap-south", "eu-west"]


@dataclass
class MemoryLog:
    """One channel of a region's log: compare-and-set on the head, dedupe by Nats-Msg-Id,
    atomic groups (all or nothing)."""

    entries: list[StoredMessage] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)  # msg id -> seq (1-based)

    def head(self) -> Head:
        if not self.entries:
            return Head(0, EMPTY)
        last = self.entries[-1]
        return Head(len(self.entries), VectorClock(last.pos), last.origin)

    def commit(self, plan: Plan) -> str | int | tuple[str, int]:
        if plan.head.seq != len(self.entries):
            return "moved"
        ids = [p.msg_id for p in plan.entries]
        if len(plan.entries) > 1 and (len(set(ids)) != len(ids) or any(i in self.ids for i in ids)):
            return "duplicate"
        if len(plan.entries) == 1 and ids[0] in self.ids:
            return ("dup", self.ids[ids[0]])
        for planned in plan.entries:
            self.entries.append(planned.entry)
            self.ids[planned.msg_id] = len(self.entries)
        return len(self.entries)


def remote_messages() -> list[StoredMessage]:
    """A causal history of peers' messages on the channel: ap-south 1..4, eu-west 1..3,
    eu-west's second depends on ap-south's second."""
    out = []
    for n in range(1, 5):
        ts = {"ap-south": n}
        out.append(StoredMessage(f"a{n}", msgspec.Raw(b"1"), "ap-south", ts, ts))
    for n in range(1, 4):
        ts = {"eu-west": n, **({"ap-south": 2} if n >= 2 else {})}
        out.append(StoredMessage(f"e{n}", msgspec.Raw(b"1"), "eu-west", ts, ts))
    return out


class Writers(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = MemoryLog()
        self.writers: list[ChannelWrites[str]] = [
            ChannelWrites(CHANNEL, REGION, total=False, max_buffered=100) for _ in range(2)
        ]
        self.results: dict[str, list[Result]] = {}
        self.retried: list[tuple[str, list[Result]]] = []  # (id, what its retry got)
        self.submitted: dict[str, list[str]] = {}  # source -> ids in submission order
        self.failed_at: dict[str, int] = {}  # id -> how many of its source were submitted
        self.counter = 0
        self.remotes = remote_messages()
        self.acked: list[str] = []
        self.contexts: dict[str, VectorClock | None] = {}

    def _done(self, message_id: str, source: str) -> Callable[[Result], None]:
        def done(result: Result) -> None:
            self.results.setdefault(message_id, []).append(result)
            if isinstance(result, Failed):
                self.failed_at[message_id] = len(self.submitted[source])

        return done

    @rule(source=st.sampled_from(["c1", "c2", "c3"]), depends=st.none() | st.integers(0, 6))
    def publish(self, source: str, depends: int | None) -> None:
        """``depends``: the publisher had read that remote message (its causal context)."""
        w = 1 if source == "c3" else 0  # a connection lives in one process
        self.counter += 1
        message_id = f"{source}-{self.counter}"
        self.submitted.setdefault(source, []).append(message_id)
        after = None if depends is None else VectorClock(self.remotes[depends].ts)
        self.contexts[message_id] = after
        self.writers[w].add_local(
            LocalWrite(message_id, msgspec.Raw(b"1"), source, self._done(message_id, source), after)
        )

    @rule(w=st.integers(0, 1), data=st.data())
    def republish(self, w: int, data: st.DataObject) -> None:
        """A client sends an id again (a retry after a failover): acked once, stored once."""
        stored = [m for m in self.results if any(isinstance(r, Stored) for r in self.results[m])]
        if not stored:
            return
        message_id = data.draw(st.sampled_from(sorted(stored)))
        got: list[Result] = []
        self.retried.append((message_id, got))
        self.writers[w].add_local(LocalWrite(message_id, msgspec.Raw(b"1"), None, got.append))

    @rule(w=st.integers(0, 1), i=st.integers(0, 6))
    def remote(self, w: int, i: int) -> None:
        msg = self.remotes[i]
        self.writers[w].offer_remote(msg, f"{msg.origin}:{msg.id}")
        self._drain_acks(w)

    @rule(w=st.integers(0, 1))
    def read_head(self, w: int) -> None:
        writes = self.writers[w]
        if writes.in_flight is None:
            writes.set_head(self.log.head())
            self._drain_acks(w)

    @rule(w=st.integers(0, 1), size=st.integers(1, 5), outcome=st.sampled_from(["ok", "fail"]))
    def commit(self, w: int, size: int, outcome: str) -> None:
        writes = self.writers[w]
        if writes.head is None or writes.in_flight is not None:
            return
        plan = writes.plan(size)
        if plan is None:
            return
        if outcome == "fail":  # NATS timed out: nothing stored (the ambiguous case is a dup)
            writes.failed(plan, "unavailable")
            return
        answer = self.log.commit(plan)
        if answer == "moved":
            writes.refused(plan)
            writes.set_head(self.log.head())
        elif answer == "duplicate":
            writes.split(plan)
        elif isinstance(answer, tuple):
            planned = plan.entries[0]
            if planned.local is not None:
                original = self.log.entries[answer[1] - 1]
                writes.duplicate_local(plan, VectorClock(original.pos), answer[1])
            elif planned.remote is not None:
                writes.duplicate_remote(plan)
            else:
                writes.duplicate_progress(plan)
        else:
            assert isinstance(answer, int)
            writes.committed(plan, answer)
        self._drain_acks(w)

    def _drain_acks(self, w: int) -> None:
        due, self.writers[w].acks_due = self.writers[w].acks_due, []
        self.acked.extend(due)

    @invariant()
    def log_is_causal_and_once(self) -> None:
        seen: dict[str, int] = {}
        ids: set[str] = set()
        previous = EMPTY
        for entry in self.log.entries:
            own = entry.ts[entry.origin]
            assert own == seen.get(entry.origin, 0) + 1, f"{entry.id}: out of origin order"
            for k, v in entry.ts.items():
                if k != entry.origin:
                    assert v <= seen.get(k, 0), f"{entry.id}: before its dependency"
            seen[entry.origin] = own
            assert VectorClock(entry.pos) == previous.with_entry(entry.origin, own)
            previous = VectorClock(entry.pos)
            if not entry.dup:
                assert entry.id not in ids, f"{entry.id} stored twice"
                ids.add(entry.id)

    @invariant()
    def each_publish_answered_once_in_order(self) -> None:
        position_of = {e.id: i for i, e in enumerate(self.log.entries)}
        for message_ids in self.submitted.values():
            last = -1
            for message_id in message_ids:
                results = self.results.get(message_id, [])
                assert len(results) <= 1, f"{message_id} answered twice"
                if results and isinstance(results[0], Stored):
                    # Stored in submission order among what was stored.
                    assert position_of[message_id] > last, f"{message_id} stored out of order"
                    last = position_of[message_id]
                    assert results[0].position == VectorClock(
                        self.log.entries[position_of[message_id]].pos
                    )

    @invariant()
    def stored_after_its_causal_context(self) -> None:
        for entry in self.log.entries:
            after = self.contexts.get(entry.id)
            if after is not None and entry.origin == REGION:
                assert after <= VectorClock(entry.ts), f"{entry.id} stored before {after}"

    @invariant()
    def failures_fail_what_queued_behind(self) -> None:
        """A failed publish fails every publish its source had queued behind it then."""
        for message_ids in self.submitted.values():
            for index, message_id in enumerate(message_ids):
                results = self.results.get(message_id)
                if not results or not isinstance(results[0], Failed):
                    continue
                for later in message_ids[index + 1 : self.failed_at[message_id]]:
                    later_results = self.results.get(later)
                    assert later_results and isinstance(later_results[0], Failed), (
                        f"{later} queued behind failed {message_id} but not failed"
                    )

    @invariant()
    def remotes_acked_only_once_here(self) -> None:
        here = {(e.origin, e.ts[e.origin]) for e in self.log.entries}
        for ack in self.acked:
            origin, message_id = ack.split(":")
            msg = next(m for m in self.remotes if m.id == message_id)
            assert (origin, msg.ts[origin]) in here, f"{ack} acked before it is in the log"

    @invariant()
    def repeated_ids_answer_with_the_stored_position(self) -> None:
        for message_id, results in self.retried:
            assert len(results) <= 1
            for result in results:
                if isinstance(result, Stored):
                    stored = self.log.ids[logformat.dedupe_key(CHANNEL, message_id)]
                    assert result.seq == stored
                    assert result.duplicate


TestWriters = Writers.TestCase
TestWriters.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


def test_a_group_interleaves_local_and_remote_and_owes_progress_in_total_order() -> None:
    writes: ChannelWrites[str] = ChannelWrites(CHANNEL, REGION, total=True, max_buffered=10)
    writes.set_head(Head(0, EMPTY))
    results: list[Result] = []
    for n in range(3):
        writes.add_local(LocalWrite(f"l{n}", msgspec.Raw(b"1"), "c", results.append))
    for msg in remote_messages()[:2]:
        writes.offer_remote(msg, msg.id)
    plan = writes.plan(100)
    assert plan is not None
    kinds = ["L" if p.local else "R" if p.remote else "N" for p in plan.entries]
    assert kinds == ["R", "L", "R", "L", "L"]  # the last entry is ours: no progress needed
    writes.committed(plan, 5)
    assert [r.seq for r in results if isinstance(r, Stored)] == [2, 4, 5]
    assert sorted(writes.acks_due) == ["a1", "a2"]
    # Only a remote message this time: a progress entry follows it in the same group.
    writes.offer_remote(remote_messages()[2], "a3")
    plan = writes.plan(100)
    assert plan is not None
    assert [bool(p.remote) for p in plan.entries] == [True, False]
    assert plan.entries[1].entry.null
    assert plan.entries[1].entry.ts == {"us-east": 4, "ap-south": 3}


def test_a_failure_fails_what_the_same_connection_queued_behind_it() -> None:
    writes: ChannelWrites[str] = ChannelWrites(CHANNEL, REGION, total=False, max_buffered=10)
    writes.set_head(Head(0, EMPTY))
    results: dict[str, Result] = {}
    for name, source in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b"), ("a3", "a")]:
        writes.add_local(
            LocalWrite(name, msgspec.Raw(b"1"), source, lambda r, n=name: results.update({n: r}))
        )
    plan = writes.plan(1)
    assert plan is not None and plan.entries[0].local is not None
    writes.failed(plan, "NATS timed out")
    assert set(results) == {"a1", "a2", "a3"}
    assert results["a2"] == Failed("publish 'a1' before it failed", behind="a1")
    assert [w.message_id for w in writes.locals] == ["b1", "b2"]
    assert writes.head is None  # what happened is unknown: read it again


def test_a_publish_waits_for_its_causal_context_and_holds_its_source_behind_it() -> None:
    """Issue #9 item 2: stored only after everything its publisher had seen; other
    publishers go ahead, the same publisher's later publishes wait behind it."""
    writes: ChannelWrites[str] = ChannelWrites(CHANNEL, REGION, total=False, max_buffered=10)
    writes.set_head(Head(0, EMPTY))
    results: dict[str, Result] = {}
    needs_a1 = VectorClock({"ap-south": 1})
    for name, source, after in [("c2", "c", needs_a1), ("c3", "c", None), ("x1", "x", None)]:
        writes.add_local(
            LocalWrite(
                name,
                msgspec.Raw(b"1"),
                source,
                lambda r, n=name: results.update({n: r}),
                after,
                queued_at=0.0,
            )
        )
    plan = writes.plan(10)
    assert plan is not None
    assert [p.local.message_id for p in plan.entries if p.local] == ["x1"]
    writes.committed(plan, 1)
    assert writes.waiting_for_context() == 1
    # a1 arrives from ap-south: in the next group it goes first, then c2 after it, then c3.
    writes.offer_remote(remote_messages()[0], "a1")
    plan = writes.plan(10)
    assert plan is not None
    assert [p.entry.id for p in plan.entries] == ["a1", "c2", "c3"]
    assert plan.entries[1].entry.ts == {"ap-south": 1, REGION: 2}
    writes.committed(plan, 4)
    assert isinstance(results["c2"], Stored) and isinstance(results["c3"], Stored)


def test_a_publish_whose_context_never_comes_is_refused_after_the_wait() -> None:
    writes: ChannelWrites[str] = ChannelWrites(CHANNEL, REGION, total=False, max_buffered=10)
    writes.set_head(Head(0, EMPTY))
    results: dict[str, Result] = {}
    for name, after, at in [("c2", VectorClock({"ap-south": 1}), 0.0), ("c3", None, 5.0)]:
        writes.add_local(
            LocalWrite(
                name, msgspec.Raw(b"1"), "c", lambda r, n=name: results.update({n: r}), after, at
            )
        )
    assert writes.expire(now=20.0, wait_s=30.0) == 0 and not results
    assert writes.expire(now=31.0, wait_s=30.0) == 1
    refused = results["c2"]
    assert isinstance(refused, Failed) and "ap-south" in refused.reason
    assert results["c3"] == Failed("publish 'c2' before it failed", behind="c2")
    assert not writes.locals
