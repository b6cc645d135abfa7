"""``HistoryPage``: what ``history()`` returns, over WebSocket or the HTTP API."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import overload

from relay.client.session import Message


@dataclass(frozen=True)
class HistoryPage:
    """What ``client.history()`` returns: stored messages, oldest first; iterable."""

    channel: str
    messages: tuple[Message, ...]
    more: bool
    """Older messages are still stored: ``history(channel, before=messages[0].position)``."""

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Message, ...]: ...
    def __getitem__(self, index: int | slice) -> Message | tuple[Message, ...]:
        return self.messages[index]
