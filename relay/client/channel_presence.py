"""``client.presence(channel)``: be in a channel's presence set, and ask who is.

    presence = client.presence("chat:lobby")
    await presence.enter({"name": "Ann"})          # entered again after every reconnect
    await presence.update({"name": "Ann", "typing": True})
    print([m.client_id for m in await presence.members()])
    await presence.leave()

Member events come with the channel's subscription: ``client.subscribe(channel,
presence=True)``, then ``sub.presence`` (``subscription.py``). The session keeps what was
entered (``presence.py``); this is the application's handle on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from relay.client.presence import Member
from relay.client.session import ClientSession

# Makes the op with the session: (version, frame), or None when there is nothing to send.
PresenceOp = Callable[[ClientSession], tuple[int, bytes] | None]


class PresenceRequest(Protocol):
    """The client's: make ``op`` and wait until it is settled (``leave``: it may be made
    without a relay to send it to)."""

    def __call__(self, channel: str, op: PresenceOp, *, leave: bool) -> Awaitable[None]: ...


class Presence:
    """One channel's presence, for this client. Made by ``client.presence(channel)``."""

    def __init__(
        self,
        channel: str,
        session: ClientSession,
        request: PresenceRequest,
        members: Callable[[str], Awaitable[tuple[Member, ...]]],
    ) -> None:
        self.channel = channel
        self._session = session
        self._request = request
        self._members = members

    @property
    def entered(self) -> bool:
        """Entered (or being entered): the client is in the set on every connection."""
        return self._session.presence_entry(self.channel) is not None

    @property
    def client_id(self) -> str | None:
        """Our member's client id as the relay confirmed it (the token's ``sub``, the one
        given to ``enter``, or the connection id); None while not entered."""
        return self._session.presence_client_id(self.channel)

    async def enter(self, data: Any = None, *, client_id: str | None = None) -> None:
        """Enter with ``data`` (any JSON value; None: no data), and wait for the relay.
        ``client_id`` names the member on an anonymous relay (default: the connection
        id); with a token it is the token's ``sub`` (another value is ``forbidden``).
        Entering again changes the data. The client enters again, with the same data,
        after every reconnect or failover, until ``leave()``."""
        data_json = _encode(data)
        await self._request(
            self.channel,
            lambda s: s.presence_enter(self.channel, data_json, client_id),
            leave=False,
        )

    async def update(self, data: Any) -> None:
        """Change our member's data (None: none); ``ValueError`` if not entered."""
        data_json = _encode(data)
        await self._request(
            self.channel, lambda s: s.presence_update(self.channel, data_json), leave=False
        )

    async def leave(self) -> None:
        """Leave (nothing to do if not entered). Works on SSE too: the client then does
        not enter again once back on a WebSocket."""
        await self._request(self.channel, lambda s: s.presence_leave(self.channel), leave=True)

    async def members(self) -> tuple[Member, ...]:
        """The channel's members now, from every region, as the relay sees them."""
        return await self._members(self.channel)


def _encode(data: Any) -> bytes | None:
    if data is None:
        return None
    try:
        return msgspec.json.encode(data)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValueError(f"data is not JSON-encodable: {exc}") from None
