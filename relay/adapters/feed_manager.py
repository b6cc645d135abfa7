"""Runs one ChannelFeed per channel this relay serves, with one live NATS subscription each.

Feeds are reference-counted by local subscribers: the first subscriber of a
channel creates the subscription, the last one to leave removes it. Gap fills
(and the resync after a NATS reconnect) read the stream in a task of their own,
so the NATS callback that feeds a ChannelFeed never waits.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.subscription import Subscription

from federation.region_log import LogUnavailable
from relay.adapters.nats_broker import NatsBroker
from relay.core.channels import Channel
from relay.core.feed import ChannelFeed, FillGap, GapLost, LogEntry
from relay.protocol.frames import message_frame

log = logging.getLogger("relaynet.feeds")

# How long a gap fill keeps retrying an unavailable NATS before the gap counts as lost.
FILL_PATIENCE_S = 30.0


@dataclass
class _Handle:
    feed: ChannelFeed
    users: int = 0
    ready: anyio.Event = field(default_factory=anyio.Event)
    failed: BaseException | None = None
    sub: Subscription | None = None


class FeedManager:
    def __init__(
        self,
        broker: NatsBroker,
        max_pending: int,
        on_stored: Callable[[LogEntry], None] | None = None,
    ) -> None:
        self.broker = broker
        self.max_pending = max_pending
        # Told of every live entry the feed took (the writer's hint of the channel's head).
        self.on_stored = on_stored
        self.gaps_lost = 0  # gaps that could not be filled (subscribers were closed)
        # Deliveries of feeds already closed, by namespace (open feeds count their own).
        self._delivered_closed: collections.Counter[str] = collections.Counter()
        self._handles: dict[Channel, _Handle] = {}
        self._tg: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None  # shutting down: connections closing later need no fills

    @property
    def channel_count(self) -> int:
        return len(self._handles)

    def delivered(self) -> collections.Counter[str]:
        """Live frames handed to subscribers since start, by namespace (for /metrics)."""
        total = collections.Counter(self._delivered_closed)
        for channel, handle in self._handles.items():
            total[self._namespace(channel)] += handle.feed.delivered
        return total

    def _namespace(self, channel: Channel) -> str:
        return self.broker.cfg.namespace_for(channel).name

    def acquire_ready(self, channel: Channel) -> ChannelFeed | None:
        """The channel's feed if it is open already (then acquired), without waiting; None
        if it has to be opened first (use ``acquire``)."""
        handle = self._handles.get(channel)
        if handle is None or not handle.ready.is_set() or handle.failed is not None:
            return None
        handle.users += 1
        return handle.feed

    async def acquire(self, channel: Channel) -> ChannelFeed:
        handle = self._handles.get(channel)
        if handle is None:
            contiguous = not self.broker.log.is_total(channel)
            handle = _Handle(
                ChannelFeed(channel, self.max_pending, encode=message_frame, contiguous=contiguous)
            )
            self._handles[channel] = handle
            handle.users += 1
            try:
                await self._open(channel, handle)
            except BaseException as exc:
                handle.failed = exc
                handle.ready.set()
                self.release(channel)
                raise
            finally:
                handle.ready.set()
            return handle.feed
        handle.users += 1
        await handle.ready.wait()
        if handle.failed is not None:
            self.release(channel)
            raise LogUnavailable(f"could not open channel {channel}: {handle.failed}")
        return handle.feed

    async def _open(self, channel: Channel, handle: _Handle) -> None:
        # Subscribe first, then read the head: whatever is stored after the head read
        # arrives on the subscription, and the feed drops what it already counted.
        handle.sub = await self.broker.subscribe_live(
            channel, lambda entry: self._on_live(handle, entry)
        )
        last = await self.broker.last_entry(channel)
        if last is None:
            gap = handle.feed.start(0, handle.feed.head_position)
        else:
            gap = handle.feed.start(last.seq, last.position)
        self._schedule_fill(handle, gap)

    def release(self, channel: Channel) -> None:
        """Synchronous, so a connection can drop a subscription between two frames."""
        handle = self._handles.get(channel)
        if handle is None:
            return
        handle.users -= 1
        if handle.users > 0:
            return
        del self._handles[channel]
        if handle.feed.delivered:
            self._delivered_closed[self._namespace(channel)] += handle.feed.delivered
        if handle.sub is not None and self._tg is not None:
            self._tg.start_soon(self._unsubscribe, channel, handle.sub)

    @staticmethod
    async def _unsubscribe(channel: Channel, sub: Subscription) -> None:
        try:
            await sub.unsubscribe()
        except Exception:  # the NATS connection is already gone: nothing left to clean up
            log.debug("unsubscribe of %s failed", channel, exc_info=True)

    def _on_live(self, handle: _Handle, entry: LogEntry) -> None:
        if self._handles.get(handle.feed.channel) is not handle:
            return
        gap = handle.feed.on_live(entry)
        # Only what the feed took as the next entry: a frame it doubts is not a head hint.
        if self.on_stored is not None and gap is None and handle.feed.head_seq == entry.seq:
            self.on_stored(entry)
        self._schedule_fill(handle, gap)

    def _schedule_fill(self, handle: _Handle, gap: FillGap | None) -> None:
        if gap is not None and self._tg is not None:
            self._tg.start_soon(self._fill, handle, gap)

    async def _fill(self, handle: _Handle, gap: FillGap | None) -> None:
        channel = handle.feed.channel
        while gap is not None:
            log.info("channel %s: filling gap %d..%d", channel, gap.after_seq, gap.before_seq)
            entries: list[LogEntry] | None = None
            skipped: list[int] = []
            give_up_at = anyio.current_time() + FILL_PATIENCE_S
            attempt = 0
            while entries is None and anyio.current_time() < give_up_at:
                try:
                    entries, skipped = [], []
                    async for batch in self.broker.read_range(
                        channel, gap.after_seq + 1, gap.before_seq - 1, skipped
                    ):
                        entries.extend(batch)
                except LogUnavailable:
                    entries = None
                    if self._handles.get(channel) is not handle:
                        return
                    await anyio.sleep(min(0.05 * 2**attempt, 2.0))
                    attempt += 1
            outcome: FillGap | GapLost | None
            if entries is None:
                outcome = handle.feed.abandon_gap(
                    gap.before_seq, f"NATS did not answer for {FILL_PATIENCE_S:.0f} s"
                )
            else:
                outcome = handle.feed.on_fill(entries, gap.before_seq, skipped)
            self._report_refuted(handle.feed)
            if isinstance(outcome, GapLost):
                log.error(
                    "channel %s: the gap %d..%d cannot be filled (%s); subscribers were "
                    "closed to resume from their positions",
                    channel,
                    outcome.after_seq,
                    outcome.before_seq,
                    outcome.reason,
                )
                self.gaps_lost += 1
                return
            gap = outcome

    def _report_refuted(self, feed: ChannelFeed) -> None:
        refuted, feed.refuted = feed.refuted, []
        for seq in refuted:
            self.broker.log.bad_entries.skipped(
                "live", feed.channel, seq, "claimed by a live frame; the stream does not hold it"
            )

    async def resync(self) -> None:
        """NATS reconnected: core subscriptions may have missed messages meanwhile."""
        for channel, handle in list(self._handles.items()):
            if not handle.ready.is_set() or handle.failed is not None:
                continue
            try:
                last = await self.broker.last_entry(channel)
            except LogUnavailable:
                continue
            if last is not None:
                self._schedule_fill(handle, handle.feed.check_head(last.seq))
