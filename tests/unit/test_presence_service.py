"""A relay's presence service as its peers hear it: the messages it sends, decoded and
merged by another relay's service (no NATS between them: the wire may only lose, repeat
or reorder, which the merge's own tests cover)."""

from __future__ import annotations

import time

import pytest

from federation.presence_format import decode_presence
from relay.adapters.presence import PresenceService
from relay.config.schema import PresenceSection

pytestmark = pytest.mark.anyio

CHANNEL = "chat:room"


def deliver(source: PresenceService, to: PresenceService) -> None:
    while source._outgoing:
        to._merge(decode_presence(source._outgoing.popleft(), source.region), time.monotonic())


async def test_a_channel_forgotten_once_empty_is_seen_again_when_someone_enters() -> None:
    """Found by bench presence (1 run in 3): an origin forgot a channel after its empty
    snapshot and numbered the channel's next changes from 1 again, in the same epoch; a
    peer that had that snapshot took them for stale changes from before it, and showed
    nobody until the seq passed the snapshot's."""
    cfg = PresenceSection()
    us = PresenceService(None, "us-east", "r1", cfg)  # type: ignore[arg-type]
    eu = PresenceService(None, "eu-west", "r1", cfg)  # type: ignore[arg-type]
    us.enter(CHANNEL, "ann", "c1", None)
    us.leave(CHANNEL, "ann", "c1")
    us.snapshot_once()  # says nobody is left, and forgets the channel
    deliver(us, eu)
    assert eu.members(CHANNEL) == []

    us.enter(CHANNEL, "bob", "c2", b'"hi"')
    deliver(us, eu)
    assert [m.key.client_id for m in eu.members(CHANNEL)] == ["bob"]
    # And a snapshot agrees.
    us.snapshot_once()
    deliver(us, eu)
    assert [m.key.client_id for m in eu.members(CHANNEL)] == ["bob"]
