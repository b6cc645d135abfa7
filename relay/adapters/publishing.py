"""Hand a validated ``publish`` frame to the region writer: the one place that decides
its message id, causal context and publisher scope, for WebSocket and HTTP alike."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable

from federation.adapters.region_writer import RegionWriter
from federation.channel_writes import Result
from federation.vclock import VectorClock
from relay.core.capabilities import Credentials
from relay.core.channels import Channel
from relay.protocol.frames import Publish


def submit(
    writer: RegionWriter,
    frame: Publish,
    credentials: Credentials | None,
    source: Hashable | None,
    done: Callable[[str, Result], None],
) -> str:
    """Queue ``frame`` (``source``'s publishes keep their order); ``done(id, result)``
    once stored or failed (maybe before this returns); returns the message id.
    A frame without an id gets an unguessable one (another client could otherwise
    publish it first and have this one acked as its duplicate): 96 random bits without
    uuid4's object overhead. Ids are deduplicated per publisher: with a token, per
    ``sub``, so nobody else can take this one's."""
    message_id = frame.id or os.urandom(12).hex()
    after = VectorClock(frame.after) if frame.after else None  # validated on decode
    by = credentials.sub if credentials is not None else None

    def answered(result: Result) -> None:
        done(message_id, result)

    writer.publish(Channel(frame.channel), message_id, frame.data, source, answered, after, by)
    return message_id
