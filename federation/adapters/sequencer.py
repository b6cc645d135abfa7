"""The sequencer: turns a region's causal log into its total-order delivery log.

For every total-order namespace it reads the region's causal log from the
beginning (an ordered consumer: NATS keeps it gap-free) and feeds each channel's
entries to a TotalOrderMerger, which releases messages in (vector total,
origin) order once every region has been heard from past them. Released
messages are appended to the delivery log with compare-and-set, skipping any
the delivery log already holds, so a restart (which replays the causal log)
or a second sequencer during a lease hand-over never writes one twice. Every
region computes the same order from the same messages, so subscribers in
every region see one identical sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import anyio
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from federation import logformat
from federation.bad_entries import BadEntries
from federation.channel_writes import Head
from federation.entry_checks import BadEntry, decode_checked
from federation.logformat import StoredMessage
from federation.region_log import LogUnavailable, RegionLog
from federation.total_order import Entry, TotalOrderMerger
from federation.vclock import VectorClock

log = logging.getLogger("relaynet.federation")

WATCH_INTERVAL_S = 1.0


class Sequencer:
    def __init__(
        self,
        nc: NatsClient,
        region_log: RegionLog,
        regions: Sequence[str],
        namespaces: Sequence[str],
        owe_progress: Callable[[str], None] | None = None,
    ) -> None:
        """``owe_progress(channel)``: this region must append an entry of its own there."""
        self.nc = nc
        self.owe_progress = owe_progress
        self.log = region_log
        self.regions = sorted(regions)
        self.bad_entries = BadEntries(log)
        self.namespaces = list(namespaces)
        self._mergers: dict[str, TotalOrderMerger[StoredMessage]] = {}
        self._heads: dict[str, Head] = {}
        self.delivered = 0

    def pending(self) -> dict[str, int]:
        return {ch: m.pending() for ch, m in self._mergers.items() if m.pending()}

    async def run(self) -> None:
        self._mergers.clear()  # a new term replays the causal log from the start
        self._heads.clear()
        async with anyio.create_task_group() as tg:
            for namespace in self.namespaces:
                tg.start_soon(self._consume, namespace)
            if self.owe_progress is not None:
                tg.start_soon(self._watch, self.owe_progress)

    async def _watch(self, owe_progress: Callable[[str], None]) -> None:
        region = self.log.region
        while True:
            await anyio.sleep(WATCH_INTERVAL_S)
            for channel, merger in list(self._mergers.items()):
                if region in merger.waiting_on():
                    owe_progress(channel)

    async def _consume(self, namespace: str) -> None:
        js = self.nc.jetstream()
        region = self.log.region
        sub = await js.subscribe(
            logformat.stream_subjects(region, namespace),
            stream=logformat.stream_name(region, namespace),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        try:
            async for msg in sub.messages:
                channel = logformat.channel_of(msg.subject)
                try:
                    stored = decode_checked(msg.data, self.regions)
                except BadEntry as exc:  # no writer of ours made it: it orders nothing
                    seq = msg.metadata.sequence.stream
                    self.bad_entries.skipped("log", channel, seq, str(exc))
                    continue
                merger = self._mergers.get(channel)
                if merger is None:
                    merger = self._mergers[channel] = TotalOrderMerger(self.regions)
                entry = Entry(
                    stored.origin,
                    VectorClock(stored.ts),
                    stored.null,
                    stored,
                    None if stored.null else logformat.entry_key(channel, stored),
                )
                for released in merger.add(entry):
                    await self._deliver(channel, released.payload)
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()

    async def _deliver(self, channel: str, msg: StoredMessage) -> None:
        own = msg.ts[msg.origin]
        delay = 0.05
        while True:
            try:
                head = self._heads.get(channel) or await self.log.head(channel, delivery=True)
                if head.position.get(msg.origin) >= own:
                    return  # already in the delivery log (a replay after a restart)
                position = head.position.with_entry(msg.origin, own)
                entry = StoredMessage(
                    msg.id, msg.data, msg.origin, msg.ts, position.to_dict(), by=msg.by
                )
                msg_id = f"{channel} {msg.origin}:{own}"
                appended = await self.log.append(channel, entry, msg_id, head.seq, delivery=True)
                if appended is None:  # another sequencer wrote meanwhile: look again
                    self._heads.pop(channel, None)
                    continue
                self._heads[channel] = Head(appended.seq, position)
                self.delivered += 1
                return
            except LogUnavailable as exc:
                log.warning("sequencer: cannot append to %s yet (%s)", channel, exc)
                self._heads.pop(channel, None)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
