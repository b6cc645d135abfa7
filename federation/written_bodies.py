"""What this process appended to its region's log lately: stored body -> the entry it
encodes.

A relay reads every entry it stored back from JetStream's republish (that is how every
relay of a region sees one order), and decoding and checking each body again was about
5% of its CPU per publish at 10 subscribers (py-spy). The bytes JetStream republishes
are the bytes we sent, so a body equal to one we encoded is that entry, checked when it
was built: the live feed takes it from here (once) and decodes only what others wrote.
Only a process with a live feed keeps one (the relay's ``NatsBroker`` gives its region
log one); ``relaynet federate`` reads nothing back.

Bounded and O(1): two generations of at most ``limit`` bodies each; when the newer one
is full it becomes the older one and the older one is dropped. A body that was never
read back (nobody here subscribes to its channel, its group was refused) ages out. Pure:
no I/O.
"""

from __future__ import annotations

from federation.logformat import StoredMessage

DEFAULT_LIMIT = 2048  # eight writer groups of 256


class WrittenBodies:
    __slots__ = ("_limit", "_newer", "_older")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._newer: dict[bytes, StoredMessage] = {}
        self._older: dict[bytes, StoredMessage] = {}

    def remember(self, body: bytes, entry: StoredMessage) -> None:
        newer = self._newer
        if len(newer) >= self._limit:
            self._older, newer = newer, {}
            self._newer = newer
        newer[body] = entry

    def take(self, body: bytes) -> StoredMessage | None:
        """The entry ``body`` encodes, if this process wrote it lately; forgotten then."""
        entry = self._newer.pop(body, None)
        if entry is None and self._older:
            entry = self._older.pop(body, None)
        return entry

    def __len__(self) -> int:
        return len(self._newer) + len(self._older)


__all__ = ["DEFAULT_LIMIT", "WrittenBodies"]
