"""A connection's bounded send queue: fan-out never waits on one slow client.

``offer`` never blocks. When nothing is queued and the socket keeps up, the
frame is written straight away through ``write_now`` (no task switch per
delivery, which dominated fan-out cost); otherwise it is queued for the
connection's writer task. Past ``max_messages`` queued frames, or ``max_bytes``
of frames queued or in the writer's hands (one int kept up to date, nothing
allocated per frame), the outbox marks itself failed and the connection is
closed with ``slow_consumer`` (the client resumes from its last position, so
nothing is lost). ``put`` waits for room; only a subscriber's own catch-up uses
it, since only that subscriber waits. One frame larger than ``max_bytes`` is
still taken when nothing else waits (a big history page), so every reply can be
sent; the bound is then that one frame.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio

from relay.protocol.errors import CloseCode


class Outbox:
    """Idle connections are most connections: nothing here is allocated (queue, events)
    until a frame has to wait, and ``on_queued`` lets the owner start its writer task
    only then."""

    __slots__ = (
        "_batch_bytes",
        "_bytes",
        "_frames",
        "_on_queued",
        "_readable",
        "_sending",
        "_writable",
        "_write_now",
        "close_code",
        "closed",
        "failed",
        "max_bytes",
        "max_messages",
    )

    def __init__(
        self,
        max_messages: int,
        write_now: Callable[[bytes], bool] | None = None,
        on_queued: Callable[[], None] | None = None,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._bytes = 0  # in ``_frames`` and in the batch the writer is sending
        self._batch_bytes = 0  # of those, in the batch
        # Writes a frame to the socket if it can without waiting; False if it cannot.
        self._write_now = write_now
        self._on_queued = on_queued  # a frame waits: the owner's writer must run
        self._sending = False  # the writer holds a batch: writing around it would reorder
        self._frames: deque[bytes] | None = None
        self._readable: anyio.Event | None = None
        self._writable: anyio.Event | None = None
        self.failed = False
        self.closed = False
        self.close_code: tuple[CloseCode, str] = (CloseCode.SLOW_CONSUMER, "slow_consumer")

    def __len__(self) -> int:
        return len(self._frames) if self._frames else 0

    @property
    def queued_bytes(self) -> int:
        """Bytes of frames waiting or being sent by the writer."""
        return self._bytes

    def _full(self, size: int) -> bool:
        held = self._bytes
        return len(self) >= self.max_messages or (held > 0 and held + size > self.max_bytes)

    def offer(self, frame: bytes) -> None:
        if self.failed or self.closed:
            return
        frames = self._frames
        direct = not frames and not self._sending and self._write_now is not None
        if direct and self._write_now is not None and self._write_now(frame):
            return
        if frames is None:
            frames = self._frames = deque()
        # _full(), inlined: this is the fan-out's path to every backed-up subscriber.
        held = self._bytes
        after = held + len(frame)
        if len(frames) >= self.max_messages or (held and after > self.max_bytes):
            self.overflow()
            return
        frames.append(frame)
        self._bytes = after
        self._wake_reader()
        if len(frames) == 1 and self._on_queued is not None:
            self._on_queued()

    def overflow(self) -> None:
        self.fail(CloseCode.SLOW_CONSUMER, "slow_consumer")

    def lost(self) -> None:
        """A channel's feed has a gap it cannot fill: close so the client resumes."""
        self.fail(CloseCode.GAP, "gap")

    def fail(self, code: CloseCode, reason: str) -> None:
        if self.failed or self.closed:
            return
        self.close_code = (code, reason)
        self.failed = True
        if self._frames:
            self._frames.clear()
        self._bytes = self._batch_bytes  # the writer still holds its batch
        self._wake_all()
        if self._on_queued is not None:
            self._on_queued()  # the writer closes the connection

    async def put(self, frame: bytes) -> None:
        while self._full(len(frame)) and not (self.failed or self.closed):
            self._writable = anyio.Event()
            await self._writable.wait()
        self.offer(frame)

    async def get_batch(self) -> list[bytes]:
        """Everything queued (at least one frame), or [] once failed or closed and empty."""
        while not self._frames:
            if self.failed or self.closed:
                return []
            self._readable = anyio.Event()
            await self._readable.wait()
        batch = list(self._frames)
        self._frames.clear()
        self._batch_bytes = self._bytes  # the batch before it was sent: all of it is this one
        self._sending = True
        if self._writable is not None:
            self._writable.set()
        return batch

    def batch_sent(self) -> None:
        self._sending = False
        self._bytes -= self._batch_bytes
        self._batch_bytes = 0
        if self._writable is not None:
            self._writable.set()

    def close(self) -> None:
        self.closed = True
        self._wake_all()

    def _wake_reader(self) -> None:
        if self._readable is not None:
            self._readable.set()

    def _wake_all(self) -> None:
        self._wake_reader()
        if self._writable is not None:
            self._writable.set()
