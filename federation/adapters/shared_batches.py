"""Atomic batches shared by the channels of one stream.

nats-server stages every atomic batch of a one-replica file stream in a file store of its
own, about 2 ms whatever the batch's size. A channel that one publisher keeps busy fills
its groups (``region_writer.group_size``), but traffic spread over many channels does not:
one publisher over 256 channels made groups of about 8 entries, and nats-server spent
about 300 µs per entry (about 1,850 acked publishes/s in all, where one channel did 20,000).

The channels of a namespace share one stream, and a JetStream batch may hold several
subjects, each checking its own expected last sequence. So the writer's groups (two
entries or more; one entry is a plain compare-and-set publish) queue here per stream and
leave together: at most ``IN_FLIGHT`` batches per stream are in flight, and whatever
queues meanwhile leaves as one batch of up to ``MAX_BATCH`` entries when one comes back.
A lone group leaves at once, as it did before, so one busy channel waits for nothing.

The price is coupling: a batch is refused whole when one channel's head moved (another
relay of the region wrote it) or one id is stored already, and the answer does not say
which. Then every group of it is sent again alone, for its own answer, and the stream's
groups go alone for ``ALONE_S`` (contention tends to last: relays sharing a port share
channels), after which they share batches again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.abc
import anyio.lowlevel

from federation.logformat import StoredMessage
from federation.region_log import MAX_BATCH, Group, GroupAnswer, LogUnavailable, RegionLog

log = logging.getLogger("relaynet.writer")

# Batches in flight per stream. Two let the relay build the next batch while one is
# stored; everything arriving meanwhile waits for the next, so batches fill up.
IN_FLIGHT = 2
# After a shared batch is refused, the stream's groups go alone for this long.
ALONE_S = 1.0


@dataclass(slots=True)
class _Waiting:
    group: Group
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: GroupAnswer | None = None
    error: Exception | None = None

    def settle(self, answer: GroupAnswer | None = None, error: Exception | None = None) -> None:
        self.answer, self.error = answer, error
        self.done.set()


@dataclass
class _Stream:
    queue: deque[_Waiting] = field(default_factory=deque)
    in_flight: int = 0
    sending: bool = False
    room: anyio.Event = field(default_factory=anyio.Event)
    alone_until: float = 0.0


@dataclass
class SharingStats:
    batches: int = 0
    shared: int = 0  # batches of more than one group
    refused_shared: int = 0


def last_sequences(groups: Sequence[Group], last: int) -> list[int]:
    """Each group's last sequence in a batch whose last entry got ``last``: a batch's
    entries get consecutive sequences, in order."""
    ends: list[int] = []
    for group in reversed(groups):
        ends.append(last)
        last -= len(group.entries)
    ends.reverse()
    return ends


def take_batch(queue: deque[_Waiting], limit: int = MAX_BATCH) -> list[_Waiting]:
    """The oldest groups that fit in one batch together (at least one)."""
    taken = [queue.popleft()]
    size = len(taken[0].group.entries)
    while queue and size + len(queue[0].group.entries) <= limit:
        size += len(queue[0].group.entries)
        taken.append(queue.popleft())
    return taken


class SharedBatches:
    def __init__(
        self,
        region_log: RegionLog,
        tg: anyio.abc.TaskGroup,
        *,
        in_flight: int = IN_FLIGHT,
        alone_s: float = ALONE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = region_log
        self._tg = tg
        self.in_flight = in_flight
        self.alone_s = alone_s
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self.stats = SharingStats()

    async def append_group(
        self, channel: str, entries: Sequence[tuple[StoredMessage, str]], expected_seq: int
    ) -> GroupAnswer:
        """``RegionLog.append_group``, in a batch shared with other channels' groups."""
        scope = self.log.batch_scope(channel)
        stream = self._streams.get(scope)
        if stream is None:
            stream = self._streams[scope] = _Stream()
        group = Group(channel, entries, expected_seq)
        if stream.alone_until > self._clock():
            self.stats.batches += 1
            return await self.log.append_groups([group])
        if not stream.in_flight and not stream.queue:
            # Nothing to share with: leave at once, from this task (one busy channel).
            self.stats.batches += 1
            stream.in_flight += 1
            try:
                return await self.log.append_groups([group])
            finally:
                stream.in_flight -= 1
                stream.room.set()
        waiting = _Waiting(group)
        stream.queue.append(waiting)
        if not stream.sending:
            stream.sending = True
            self._tg.start_soon(self._send_loop, stream)
        await waiting.done.wait()
        error = waiting.error
        if error is not None:
            # One failure, many groups: each caller raises an exception of its own.
            if isinstance(error, LogUnavailable):
                raise LogUnavailable(*error.args) from error
            raise RuntimeError(f"a shared batch failed: {error!r}") from error
        assert waiting.answer is not None
        return waiting.answer

    async def _send_loop(self, stream: _Stream) -> None:
        try:
            while stream.queue:
                while stream.in_flight >= self.in_flight:
                    stream.room = anyio.Event()
                    await stream.room.wait()
                # The channels whose groups were answered this turn plan their next group
                # in this turn too: let them queue before the batch leaves.
                await anyio.lowlevel.checkpoint()
                batch = take_batch(stream.queue)
                stream.in_flight += 1
                self._tg.start_soon(self._send, stream, batch)
        finally:
            stream.sending = False

    async def _send(self, stream: _Stream, batch: list[_Waiting]) -> None:
        self.stats.batches += 1
        if len(batch) > 1:
            self.stats.shared += 1
        groups = [waiting.group for waiting in batch]
        try:
            answer = await self.log.append_groups(groups)
            if isinstance(answer, int):
                for waiting, last in zip(batch, last_sequences(groups, answer), strict=True):
                    waiting.settle(last)
            elif len(batch) == 1:
                batch[0].settle(answer)
            else:
                self.stats.refused_shared += 1
                stream.alone_until = self._clock() + self.alone_s
                log.debug("a shared batch of %d groups was refused (%s)", len(batch), answer)
                await self._alone(batch)
        except Exception as exc:  # the log's trouble is every group's
            for waiting in batch:
                if not waiting.done.is_set():
                    waiting.settle(error=exc)
        finally:
            stream.in_flight -= 1
            stream.room.set()

    async def _alone(self, batch: list[_Waiting]) -> None:
        """Each group of a refused batch again, alone, for its own answer."""
        for waiting in batch:
            self.stats.batches += 1
            try:
                waiting.settle(await self.log.append_groups([waiting.group]))
            except Exception as exc:
                waiting.settle(error=exc)


__all__ = ["ALONE_S", "IN_FLIGHT", "SharedBatches", "SharingStats", "last_sequences", "take_batch"]
