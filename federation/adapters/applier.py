"""Applies remote messages to this region's log, once each, in causal order.

Every link (one per peer) hands each message it reads to ``offer``. Per
channel, a ChannelOrderBuffer holds what is not yet causally ready; whatever is
ready is appended with the region log's compare-and-set, against the head this
applier last saw. When the append loses a race (a local publish, or another
federation instance, appended first) the head is re-read and the decision made
again, so a message is applied exactly once however many instances and paths
deliver it. The peer's copy is acknowledged (``ack``) only once the message is
in this region's log or known to be there already, so a crash before that
makes the peer send it again.

A publish id already in this region's log from another origin (a client
republished it after failing over) is appended as a ``dup`` entry: it advances
the position like any entry, but subscribers here are not sent it twice. A dup
entry read from a peer is decided afresh (this region may not have the other
copy), which is why dup entries keep their data.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import msgspec

from federation import logformat
from federation.adapters.region_log import Head, RegionLog
from federation.logformat import StoredMessage
from federation.ordering import BufferFull, ChannelOrderBuffer, Stamped
from federation.vclock import VectorClock

log = logging.getLogger("relaynet.federation")

Ack = Callable[[], Awaitable[None]]
MAX_CAS_ATTEMPTS = 100
NULL_DATA = msgspec.Raw(b"null")


@dataclass
class _Channel:
    buffer: ChannelOrderBuffer[StoredMessage]
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    head: Head | None = None
    acks: dict[tuple[str, int], list[Ack]] = field(default_factory=dict)
    # Total order: we applied a remote message and have not yet said we passed it.
    owes_progress: bool = False


@dataclass
class ApplierStats:
    applied: int = 0
    duplicates_dropped: int = 0
    dup_entries: int = 0
    progress_entries: int = 0
    buffered_peak: int = 0


class Applier:
    def __init__(self, region_log: RegionLog, region: str, max_buffered: int) -> None:
        self.log = region_log
        self.region = region
        self.max_buffered = max_buffered
        self._channels: dict[str, _Channel] = {}
        self.stats = ApplierStats()

    def buffered(self) -> dict[str, int]:
        """Messages waiting for causal predecessors, per channel (for status and metrics)."""
        return {ch: len(state.buffer) for ch, state in self._channels.items() if state.buffer}

    async def offer(self, channel: str, msg: StoredMessage, ack: Ack) -> bool:
        """Apply (or buffer) a message read from a peer; False if the buffer is full."""
        if msg.origin == self.region:
            await _ack(ack)  # our own message, read back from a peer's log: nothing to do
            return True
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel(ChannelOrderBuffer(self.max_buffered))
        async with state.lock:
            if state.head is None:
                state.head = await self.log.head(channel)
            stamped = Stamped(msg.origin, VectorClock(msg.ts), msg)
            key = (stamped.origin, stamped.seq)
            try:
                held = state.buffer.offer(stamped, state.head.position)
            except BufferFull:
                log.warning("channel %s: causal buffer full; pausing the link", channel)
                return False
            if not held and key not in state.acks:
                self.stats.duplicates_dropped += 1
                await _ack(ack)  # already applied here
                return True
            state.acks.setdefault(key, []).append(ack)
            self.stats.buffered_peak = max(self.stats.buffered_peak, len(state.buffer))
            await self._drain(channel, state)
        return True

    async def recheck(self) -> None:
        """Re-read the heads of channels with waiting messages (another instance may have
        applied their predecessors) and apply what became ready."""
        for channel, state in list(self._channels.items()):
            if not state.buffer:
                continue
            async with state.lock:
                state.head = await self.log.head(channel)
                await self._drain(channel, state)

    async def announce_progress(self) -> None:
        """Total-order channels: append a null entry after remote messages we applied, so
        every region learns that we have passed them and can deliver them."""
        for channel, state in list(self._channels.items()):
            if not state.owes_progress:
                continue
            async with state.lock:
                state.owes_progress = False
                for _ in range(MAX_CAS_ATTEMPTS):
                    last = await self.log.direct_get(channel, None)
                    if last is None:
                        break
                    stored = logformat.decode_stored(last.data)
                    if stored.origin == self.region:
                        break  # our own entry already follows what we applied
                    head = Head(int((last.headers or {})["Nats-Sequence"]), VectorClock(stored.pos))
                    ts = head.position.increment(self.region)
                    own = ts.get(self.region)
                    null = StoredMessage(
                        f"~{self.region}:{own}", NULL_DATA, self.region, ts.to_dict(),
                        ts.to_dict(), null=True,
                    )  # fmt: skip
                    msg_id = logformat.dedupe_key(channel, null.id)
                    appended = await self.log.append(channel, null, msg_id, head.seq)
                    if appended is not None:
                        self.stats.progress_entries += 1
                        state.head = Head(appended.seq, ts)
                        break

    async def _drain(self, channel: str, state: _Channel) -> None:
        assert state.head is not None
        attempts = 0
        while True:
            for covered in state.buffer.drop_covered(state.head.position):
                await self._settle(state, covered)
            ready = state.buffer.next_ready(state.head.position)
            if ready is None:
                return
            appended = await self._append(channel, state.head, ready.payload)
            if appended is None:
                attempts += 1
                if attempts > MAX_CAS_ATTEMPTS:
                    log.warning("channel %s: contended; will retry later", channel)
                    return
                state.head = await self.log.head(channel)
                continue
            state.head = appended
            state.buffer.applied(ready)
            self.stats.applied += 1
            if not ready.payload.null and self.log.is_total(channel):
                state.owes_progress = True
            await self._settle(state, ready)

    async def _append(self, channel: str, head: Head, msg: StoredMessage) -> Head | None:
        position = head.position.with_entry(msg.origin, msg.ts[msg.origin])
        # A peer's dup entry is decided afresh here: this region may not have the other copy.
        entry = StoredMessage(
            msg.id, msg.data, msg.origin, msg.ts, position.to_dict(), null=msg.null
        )
        result = await self.log.append(
            channel, entry, logformat.dedupe_key(channel, msg.id), head.seq
        )
        if result is not None and result.duplicate:
            # The id is in our log already, from another origin: advance, do not redeliver.
            # Keeps the data: a region reading this entry may lack the other copy.
            dup = StoredMessage(
                msg.id, msg.data, msg.origin, msg.ts, position.to_dict(), dup=True, null=msg.null
            )
            seq_key = f"{logformat.dedupe_key(channel, msg.id)} @{msg.origin}:{msg.ts[msg.origin]}"
            result = await self.log.append(channel, dup, seq_key, head.seq)
            if result is not None:
                self.stats.dup_entries += 1
        if result is None:
            return None
        return Head(result.seq, position)

    @staticmethod
    async def _settle(state: _Channel, msg: Stamped[StoredMessage]) -> None:
        for ack in state.acks.pop((msg.origin, msg.seq), []):
            await _ack(ack)


async def _ack(ack: Ack) -> None:
    """Acknowledge to the peer. A link that dropped, or a message offered twice (a retry
    after our own NATS was away) and so acked twice, only costs the peer a resend that
    we drop; neither is a reason to stop the link."""
    try:
        await ack()
    except Exception as exc:
        log.debug("ack failed: %r", exc)
