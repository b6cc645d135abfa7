"""``Subscription``: one channel's messages as an async iterator, over a bounded queue.

The client's reader puts each message the session delivers into the queue and
waits while it is full (that pushes back on the relay: see ``client.py``); the
application takes them out with ``async for``. ``position`` follows what the
application has taken, so persisting it and subscribing again with it resumes
exactly after the last message processed.

With ``presence``, ``sub.presence`` is the channel's member list: ``members`` (the view
now) and, as an async iterator, the events that build it (``presence.py``). Those never
push back on the relay: when the application lets more than ``buffer`` of them pile up,
they are replaced by one ``PresenceSync`` of the view as it is then, which says the same.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

import anyio

from federation.vclock import VectorClock
from relay.client.presence import Member, MemberView, PresenceEvent, PresenceSync
from relay.client.session import Message

T = TypeVar("T")


class Ended(Exception):
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Queue(Generic[T]):
    """Bounded FIFO: ``put`` waits while full; after ``close`` the rest is still read,
    then ``get`` raises ``Ended`` (with the error it was closed with)."""

    def __init__(self, size: int) -> None:
        self._items: deque[T] = deque()
        self._size = size
        self._closed = False
        self._error: BaseException | None = None
        self._changed = anyio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def put(self, item: T) -> None:
        while len(self._items) >= self._size and not self._closed:
            await self._changed.wait()
        if not self._closed:
            self._items.append(item)
            self._wake()

    async def get(self) -> T:
        while not self._items:
            if self._closed:
                raise Ended(self._error)
            await self._changed.wait()
        item = self._items.popleft()
        self._wake()
        return item

    def close(self, error: BaseException | None = None) -> None:
        if not self._closed:
            self._closed = True
            self._error = error
            self._wake()


class PresenceEvents:
    """A subscription's presence: ``members`` now, and ``async for event in ...`` over
    the ``PresenceSync`` and ``PresenceChange`` events that build it (a sync replaces
    the view: it comes first, and again after every reconnect or failover)."""

    def __init__(self, channel: str, buffer: int, *, enabled: bool) -> None:
        self.channel = channel
        self.enabled = enabled
        self._view = MemberView()
        self._events: deque[PresenceEvent] = deque()
        self._buffer = buffer
        self._synced = False
        self._ended = False
        self._error: BaseException | None = None
        self._changed = anyio.Event()

    @property
    def members(self) -> tuple[Member, ...]:
        """The channel's members as the latest events say (empty until the first sync)."""
        return self._view.members

    @property
    def client_ids(self) -> set[str]:
        """Who is here: the client ids of ``members``."""
        return self._view.client_ids

    @property
    def synced(self) -> bool:
        """A member list has come: ``members`` is the channel's, not just empty."""
        return self._synced

    async def changed(self) -> None:
        """Until the next event (or the end of the subscription)."""
        if not self._ended:
            await self._changed.wait()

    def __aiter__(self) -> AsyncIterator[PresenceEvent]:
        if not self.enabled:
            raise ValueError(f"subscribe to {self.channel!r} with presence=True for its events")
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[PresenceEvent]:
        while True:
            while not self._events:
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    return
                await self._changed.wait()
            yield self._events.popleft()

    # Called by the client.
    def _offer(self, event: PresenceEvent) -> None:
        if self._ended:
            return
        self._view.apply(event)
        self._synced = self._synced or isinstance(event, PresenceSync)
        if isinstance(event, PresenceSync) or len(self._events) >= self._buffer:
            # Whatever is queued is said again, and correctly, by the view as it is now.
            self._events.clear()
            event = PresenceSync(self.channel, self._view.members)
        self._events.append(event)
        self._wake()

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class Subscription:
    """An async iterator of the channel's messages, without gap or duplicate across
    reconnects and failovers. Ends when the client closes; raises ``ConnectionFailed``,
    ``PositionExpiredError`` or ``RequestRefused`` when it cannot go on."""

    def __init__(
        self,
        channel: str,
        buffer: int,
        unsubscribe: Callable[[Subscription], Awaitable[None]],
        *,
        presence: bool = False,
    ) -> None:
        self.channel = channel
        self._unsubscribe = unsubscribe
        self._queue: Queue[Message] = Queue(buffer)
        self._position: VectorClock | None = None
        self._active = True
        self.presence = PresenceEvents(channel, buffer, enabled=presence)
        """The channel's members and their events (subscribed with ``presence=True``)."""

    @property
    def position(self) -> dict[str, int] | None:
        """Where the application is in the channel: the start position merged with the
        positions of every message this iterator returned. Persist it to resume later
        (``client.subscribe(channel, position)``)."""
        return self._position.to_dict() if self._position is not None else None

    @property
    def active(self) -> bool:
        return self._active

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        try:
            message = await self._queue.get()
        except Ended as end:
            if end.error is not None:
                raise end.error from None
            raise StopAsyncIteration from None
        position = message.position
        self._position = position if self._position is None else self._position.merge(position)
        return message

    async def unsubscribe(self) -> None:
        await self._unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._active:
            await self.unsubscribe()

    # Called by the client.
    async def _deliver(self, message: Message) -> None:
        await self._queue.put(message)

    def _started(self, position: VectorClock | None) -> None:
        if self._position is None:
            self._position = position

    def _end(self, error: BaseException | None) -> None:
        self._active = False
        self._queue.close(error)
        self.presence._end(error)
