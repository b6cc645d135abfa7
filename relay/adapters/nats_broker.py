"""The relay's view of the region log: entries as the relay's ``LogEntry`` (with the
message frame each subscriber gets), and the live feed.

The log itself — streams, appends, reads — is ``federation``'s (``federation.region_log``), one
per process, shared with the region writer and federation. The stream republishes what it
stored to ``rlyl.…``: the live feed sees only stored messages, in stream order, each naming
its predecessor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import datetime

from nats.aio.subscription import Subscription

from federation.adapters.nats_client import NatsClient
from federation.adapters.nats_region_log import NatsRegionLog
from federation.entry_checks import BadEntry, decode_checked, sequence_header
from federation.region_log import LoggedEntry
from federation.written_bodies import WrittenBodies
from relay.config.schema import RelayConfig
from relay.core import channels
from relay.core.channels import Channel
from relay.core.feed import LogEntry
from relay.core.histogram import Histogram

log = logging.getLogger("relaynet.broker")

#: What the live feed reads of the headers JetStream's republish adds.
_LIVE_HEADERS = ("Nats-Sequence", "Nats-Last-Sequence", "Nats-Time-Stamp")


def _entry(channel: Channel, logged: LoggedEntry) -> LogEntry:
    return LogEntry(seq=logged.seq, last_seq=0, channel=channel, msg=logged.msg)


class NatsBroker:
    def __init__(self, nc: NatsClient, cfg: RelayConfig, region_log: NatsRegionLog) -> None:
        self.nc = nc
        self.cfg = cfg
        self.region = cfg.region.name
        self.log = region_log
        # The live feed reads back every entry this process stores: keep their bodies.
        if region_log.written is None:
            region_log.written = WrittenBodies()
        self.written = region_log.written
        # JetStream's store time of each live message (its Nats-Time-Stamp, the NATS
        # server's clock) to the end of its fan-out here: the log carries no send time.
        self.store_to_fanout = Histogram()

    async def ensure_streams(self) -> None:
        await self.log.ensure_streams()

    def live_subject(self, channel: Channel) -> str:
        rule = self.cfg.namespace_for(channel)
        return channels.live_subject(self.region, rule.name, channel)

    # --- reading: the delivery log, as the relay's entries ------------------------------

    async def last_entry(self, channel: Channel) -> LogEntry | None:
        logged = await self.log.last_entry(channel)
        return None if logged is None else _entry(channel, logged)

    async def entry_at_or_after(self, channel: Channel, seq: int) -> LogEntry | None:
        logged = await self.log.entry_at_or_after(channel, seq)
        return None if logged is None else _entry(channel, logged)

    async def read_range(
        self,
        channel: Channel,
        from_seq: int,
        upto_seq: int,
        skipped: list[int] | None = None,
    ) -> AsyncGenerator[list[LogEntry], None]:
        """Stored messages of the channel with from_seq <= seq <= upto_seq, in batches;
        the sequences of malformed ones, skipped, go to ``skipped``."""
        async for batch in self.log.read_range(channel, from_seq, upto_seq, skipped):
            yield [_entry(channel, logged) for logged in batch]

    async def first_seq_where(
        self,
        channel: Channel,
        lo: int,
        hi: int,
        predicate: Callable[[LogEntry], bool],
    ) -> LogEntry | None:
        """The first entry with seq in [lo, hi] satisfying a predicate monotone in seq."""
        found: LogEntry | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            entry = await self.entry_at_or_after(channel, mid)
            if entry is None or entry.seq > hi:
                hi = mid - 1
                continue
            if predicate(entry):
                found = entry
                hi = mid - 1
            else:
                lo = entry.seq + 1
        return found

    # --- live feed ---------------------------------------------------------------------

    async def subscribe_live(
        self, channel: Channel, on_entry: Callable[[LogEntry], None]
    ) -> Subscription:
        regions = self.log.regions
        written = self.written.take

        def on_message(data: bytes, headers: Mapping[str, str]) -> None:
            try:
                seq = sequence_header(headers, "Nats-Sequence", minimum=1)
                last_seq = sequence_header(headers, "Nats-Last-Sequence", minimum=0)
                if last_seq >= seq:
                    raise BadEntry(f"Nats-Last-Sequence {last_seq} is not before {seq}")
                # What this process stored comes back byte for byte: that entry, as built.
                msg = written(data) or decode_checked(data, regions)
                entry = LogEntry(seq, last_seq, channel, msg)
            except BadEntry as exc:
                # The feed never sees it; if it was stored, the next entry's predecessor
                # shows the hole and a fill reads it (and skips it) from the stream.
                claimed = headers.get("Nats-Sequence", "")
                seq = int(claimed) if claimed.isdigit() and len(claimed) <= 20 else 0
                self.log.bad_entries.skipped("live", channel, seq, str(exc))
                return
            on_entry(entry)
            stamp = headers.get("Nats-Time-Stamp")
            if stamp is not None:
                try:
                    stored = datetime.fromisoformat(stamp).timestamp()
                except ValueError:
                    return
                self.store_to_fanout.observe(time.time() - stored)

        # Called in the NATS read loop, with no queue in between: nothing is dropped by the
        # client library, and a gap (a reconnect) shows in Nats-Last-Sequence, which the
        # feed refills from the stream.
        return await self.nc.subscribe_direct(self.live_subject(channel), on_message, _LIVE_HEADERS)
