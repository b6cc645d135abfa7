"""The one writer of this process to its region's log: a ChannelWrites per channel,
committed in groups.

Local publishes (``publish``, a callback per publish: no task, lock or semaphore
per request) and remote messages from the links (``offer_remote``) queue on
their channel's ``ChannelWrites``. One task per channel with work commits what
is queued: a group of one is a plain compare-and-set append, a larger group one
JetStream atomic batch whose first entry expects the head's sequence, so a
channel carries as many publishes per round trip as arrive during one. While a
group is in flight, the next one fills. The groups of channels that share a stream
leave together, as one batch (``shared_batches``), when many channels are busy.

Refusals are decided by ``ChannelWrites`` (see its theory of operation); this
module only reads heads, appends, and reports what happened. When NATS fails,
the group's local publishes fail at once (the client retries with the same id),
and so does every publish queued behind them from the same connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import anyio
import anyio.abc
import msgspec
from anyio.abc import TaskStatus

from federation.adapters.shared_batches import SharedBatches, SharingStats
from federation.channel_writes import (
    BufferFull,
    ChannelWrites,
    Failed,
    Head,
    LocalWrite,
    Plan,
    Result,
)
from federation.logformat import StoredMessage
from federation.region_log import LogUnavailable, RegionLog
from federation.throttled_log import ThrottledLog
from federation.vclock import VectorClock

log = logging.getLogger("relaynet.writer")

# A remote message's ack: called (not awaited) once the message is in our log or known to
# be there; the link turns it into the NATS ack of the peer's copy.
RemoteAck = Callable[[], None]

# A group's size, in entries. nats-server stages every atomic batch of a one-replica file
# stream in a file store of its own, about 2 ms whatever the batch's size, so the larger
# the group the cheaper each entry; JetStream takes at most 1,000 messages per batch.
# But a group that takes everything waiting leaves nothing to fill meanwhile (see
# group_size). Figures in federation/DESIGN.md.
MIN_GROUP = 256
MAX_GROUP = 960
# A channel that keeps refusing us (other writers in the region win every time) fails
# its local publishes after this many refusals in a row rather than holding them forever.
MAX_REFUSALS = 200
# Kept per idle channel: its head (saves a read on the next publish); beyond, forgotten.
MAX_IDLE_CHANNELS = 10_000
# How often publishes waiting for their causal context look at the head again.
WAITING_CHECK_S = 1.0


def group_size(waiting: int) -> int:
    """The most entries the next group may take when ``waiting`` entries wait:
    at most half of them, so that the rest fill the next group while this one is stored
    (a pipelining publisher's whole window in one group leaves the round trip idle), but
    never fewer than MIN_GROUP nor more than MAX_GROUP."""
    return min(MAX_GROUP, max(MIN_GROUP, waiting // 2))


@dataclass
class WriterStats:
    applied: int = 0
    duplicates_dropped: int = 0
    dup_entries: int = 0
    progress_entries: int = 0
    buffered_peak: int = 0
    groups: int = 0
    group_entries: int = 0
    refusals: int = 0


class RegionWriter:
    def __init__(
        self, region_log: RegionLog, max_buffered: int, context_wait_s: float = 30.0
    ) -> None:
        self.log = region_log
        self.context_wait_s = context_wait_s
        self.region = region_log.region
        self.max_buffered = max_buffered
        self._channels: dict[str, ChannelWrites[RemoteAck]] = {}
        self._running: set[str] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._batches: SharedBatches | None = None
        self._problems = ThrottledLog(log)
        self.stats = WriterStats()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._batches = SharedBatches(self.log, tg)
            task_status.started()
            try:
                await self._watch_waiting()
            finally:
                self._tg = None
                for writes in self._channels.values():
                    writes.fail_all("the relay is shutting down")

    # --- input ---------------------------------------------------------------------------

    def publish(
        self,
        channel: str,
        message_id: str,
        data: msgspec.Raw,
        source: Hashable | None,
        done: Callable[[Result], None],
        after: VectorClock | None = None,
        by: str | None = None,
    ) -> None:
        """Queue a local publish; ``done`` is called with its result, in publish order.
        ``after``: the publisher's causal context; stored only once our log covers it.
        ``by``: the publisher's scope (the token's ``sub``; None: anonymous)."""
        if self._tg is None:
            done(Failed("the relay is shutting down"))
            return
        writes = self._writes(channel)
        writes.add_local(LocalWrite(message_id, data, source, done, after, time.monotonic(), by=by))
        self._kick(channel)

    def offer_remote(self, channel: str, msg: StoredMessage, ack: RemoteAck) -> bool:
        """Queue a message read from a peer; False when the channel's buffer is full (the
        link should wait and offer it again). Its ack is sent once it is in our log."""
        writes = self._writes(channel)
        try:
            writes.offer_remote(msg, ack)
        except BufferFull:
            return False
        self.stats.buffered_peak = max(self.stats.buffered_peak, writes.waiting_remote)
        self._send_acks(writes)
        self._kick(channel)
        return True

    def note_head(self, channel: str, seq: int, position: Mapping[str, int], origin: str) -> None:
        """The live feed saw an entry: a hint that saves a refused group after another
        relay of the region wrote. Cheap for our own entries (the head is past them)."""
        writes = self._channels.get(channel)
        head = writes.head if writes is not None else None
        # Our own groups' entries arrive here before their ack: only a head newer than the
        # one we know, between groups, is worth a look.
        if writes is not None and head is not None and seq > head.seq and not writes.in_flight:
            writes.note_head(Head(seq, VectorClock(position), origin))
            if writes.locals:  # maybe what a waiting publish depends on
                self._kick(channel)

    def recheck(self) -> None:
        """Read the heads of channels with waiting messages again (another instance may
        have applied their predecessors), and apply what became ready."""
        for channel, writes in list(self._channels.items()):
            if writes.waiting_remote and writes.in_flight is None:
                writes.head = None
                self._kick(channel)

    def owe_progress(self, channel: str) -> None:
        """A total-order channel whose last entry may not be ours: announce progress."""
        writes = self._writes(channel)
        writes.owe_progress()
        self._kick(channel)

    async def _watch_waiting(self) -> None:
        """Publishes waiting for their causal context: every second, read their channel's
        head again (another relay of the region may have applied what they wait for) and
        refuse those that waited longer than ``context_wait_s``."""
        while True:
            await anyio.sleep(WAITING_CHECK_S)
            now = time.monotonic()
            for channel, writes in list(self._channels.items()):
                if writes.in_flight is not None or not any(w.after for w in writes.locals):
                    continue
                expired = writes.expire(now, self.context_wait_s)
                if expired:
                    self._problems.log(
                        logging.WARNING,
                        "context",
                        "channel %s: %d publishes refused, their causal context did not "
                        "arrive in %g s",
                        channel,
                        expired,
                        self.context_wait_s,
                    )
                if writes.locals:
                    writes.head = None
                    self._kick(channel)

    def waiting_for_context(self) -> int:
        """Local publishes held until their causal context arrives (all channels)."""
        return sum(w.waiting_for_context() for w in self._channels.values() if w.locals)

    def buffered(self) -> dict[str, int]:
        """Remote messages waiting for causal predecessors, per channel."""
        return {ch: w.waiting_remote for ch, w in self._channels.items() if w.waiting_remote}

    # --- committing ----------------------------------------------------------------------

    def _writes(self, channel: str) -> ChannelWrites[RemoteAck]:
        writes = self._channels.get(channel)
        if writes is None:
            if len(self._channels) >= MAX_IDLE_CHANNELS:
                self._forget_idle()
            writes = ChannelWrites(
                channel,
                self.region,
                total=self.log.is_total(channel),
                max_buffered=self.max_buffered,
            )
            self._channels[channel] = writes
        return writes

    def _forget_idle(self) -> None:
        for channel, writes in list(self._channels.items()):
            if writes.idle() and channel not in self._running:
                del self._channels[channel]

    def _kick(self, channel: str) -> None:
        if channel in self._running or self._tg is None:
            return
        self._running.add(channel)
        self._tg.start_soon(self._commit_loop, channel)

    async def _commit_loop(self, channel: str) -> None:
        writes = self._channels[channel]
        refusals = 0
        delay = 0.05
        try:
            while writes.has_work():
                try:
                    if writes.head is None:
                        writes.set_head(await self.log.head(channel))
                        self._send_acks(writes)
                    plan = writes.plan(group_size(len(writes.locals) + writes.waiting_remote))
                    if plan is None:
                        break  # remote messages wait for predecessors
                    outcome = await self._commit(channel, writes, plan)
                except Exception as exc:  # NATS away or refusing, or an entry we cannot read
                    reason = f"the region's log is unavailable: {exc}"
                    if isinstance(exc, LogUnavailable):
                        # One line per kind of failure per interval, not one per channel.
                        kind = str(exc).split(":", 1)[0]
                        self._problems.log(logging.WARNING, kind, "storing failed: %s", exc)
                    else:
                        log.exception("channel %s: writing failed", channel)
                        reason = "internal error while storing"
                    if writes.in_flight is not None:
                        writes.failed(writes.in_flight, reason)
                    else:
                        writes.fail_all(reason)
                        writes.head = None
                    self._send_acks(writes)
                    await anyio.sleep(delay)  # remote messages retry after a pause
                    delay = min(delay * 2, 2.0)
                    continue
                delay = 0.05
                self._send_acks(writes)
                if outcome == "moved":
                    refusals += 1
                    self.stats.refusals += 1
                    if refusals >= MAX_REFUSALS and writes.locals:
                        writes.fail_all(f"channel {channel} is contended; gave up after retries")
                        refusals = 0
                else:
                    refusals = 0
        finally:
            self._running.discard(channel)

    async def _commit(self, channel: str, writes: ChannelWrites[RemoteAck], plan: Plan) -> str:
        self.stats.groups += 1
        self.stats.group_entries += len(plan)
        before = (writes.applied, writes.dropped, writes.dup_entries, writes.progress_entries)
        if len(plan) == 1:
            outcome = await self._commit_one(channel, writes, plan)
        else:
            assert self._batches is not None  # set before any channel can be kicked
            answer = await self._batches.append_group(
                channel, [(p.entry, p.msg_id) for p in plan.entries], plan.head.seq
            )
            if answer == "moved":
                writes.refused(plan)
                outcome = "moved"
            elif answer == "duplicate":
                writes.split(plan)
                outcome = "split"
            else:
                writes.committed(plan, answer)
                outcome = "stored"
        self.stats.applied += writes.applied - before[0]
        self.stats.duplicates_dropped += writes.dropped - before[1]
        self.stats.dup_entries += writes.dup_entries - before[2]
        self.stats.progress_entries += writes.progress_entries - before[3]
        return outcome

    async def _commit_one(self, channel: str, writes: ChannelWrites[RemoteAck], plan: Plan) -> str:
        planned = plan.entries[0]
        appended = await self.log.append(channel, planned.entry, planned.msg_id, plan.head.seq)
        if appended is None:
            writes.refused(plan)
            return "moved"
        if not appended.duplicate:
            writes.committed(plan, appended.seq)
            return "stored"
        # JetStream checks the expected sequence before the id: the head was right, and
        # this id is stored already, as another entry.
        if planned.local is not None:
            original = await self.log.entry(channel, appended.seq)
            writes.duplicate_local(plan, VectorClock(original.pos), appended.seq)
        elif planned.remote is not None:
            writes.duplicate_remote(plan)
        else:
            writes.duplicate_progress(plan)
        return "duplicate"

    @property
    def sharing(self) -> SharingStats:
        """How the groups of channels sharing a stream shared batches."""
        return self._batches.stats if self._batches is not None else SharingStats()

    @staticmethod
    def _send_acks(writes: ChannelWrites[RemoteAck]) -> None:
        due, writes.acks_due = writes.acks_due, []
        for ack in due:
            try:
                ack()
            except Exception as exc:
                # The link that read it is gone (the peer sends it again and we drop it):
                # never a reason to stop writing, nor to fail whoever offered the next one.
                log.debug("ack of a remote message failed: %r", exc)


__all__ = ["MAX_GROUP", "MIN_GROUP", "RegionWriter", "RemoteAck", "WriterStats", "group_size"]
