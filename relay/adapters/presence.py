"""Presence on a relay: its own members, everyone's merged view, and the NATS between them.

The relay is an origin (``relay.core.presence``): the members entered through its
connections are ``LocalPresence`` per channel, numbered in an incarnation (``epoch``,
the start time). Changes go out at once on ``rlyp.v1.<region>``, snapshots of every
channel with members every ``snapshot_s``, and a beat every second; federation links
forward each peer region's subject here. Every relay merges what it hears (its own
changes included, applied at once) into one ``ChannelPresence`` per channel, and pushes
the resulting events to its connections that subscribed with ``presence``. Every
relay keeps every channel's members: ``presence.get`` answers from memory.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import anyio
import msgspec
from anyio.abc import TaskStatus
from msgspec import UNSET, UnsetType
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from federation.presence_format import (
    PRESENCE_SUBJECTS,
    BadPresence,
    MemberRecord,
    PresenceBeat,
    PresenceChange,
    PresenceMessage,
    PresenceSnapshot,
    decode_presence,
    encode_presence,
    presence_subject,
    region_of_subject,
)
from federation.throttled_log import ThrottledLog
from relay.config.schema import PresenceSection
from relay.core.presence import (
    Change,
    ChannelPresence,
    LocalPresence,
    Member,
    MemberKey,
    PresenceEvent,
    Snapshot,
    Version,
)
from relay.protocol.frames import presence_event_frame

log = logging.getLogger("relaynet.presence")
_bad = ThrottledLog(log, 30.0)

BEAT_S: Final = 1.0
TICK_S: Final = 0.25

Sink = Callable[[bytes], object]  # a connection's outbox.offer


class PresenceService:
    def __init__(self, nc: NatsClient, region: str, relay_id: str, cfg: PresenceSection) -> None:
        self.nc = nc
        self.region = region
        self.relay_id = relay_id
        self.cfg = cfg
        self.origin = f"{region}/{relay_id}"
        self.epoch = time.time_ns()
        # One numbering for every channel's changes in this incarnation: a channel forgotten
        # once empty and entered again must not number from 1 again (peers would take its
        # changes for ones older than the snapshot that said it was empty).
        self._numbering = itertools.count(1).__next__
        self._local: dict[str, LocalPresence] = {}
        self._views: dict[str, ChannelPresence] = {}
        self._listeners: dict[str, set[Sink]] = {}
        self._outgoing: deque[bytes] = deque()
        self._wake = anyio.Event()
        self.received = 0  # presence messages heard (metrics)
        self.refused = 0  # malformed ones dropped

    # --- what connections ask

    def enter(self, channel: str, client_id: str, connection: str, data: bytes | None) -> None:
        local = self._local_for(channel)
        self._apply_own(channel, local.enter(MemberKey(client_id, connection), data))

    def leave(self, channel: str, client_id: str, connection: str) -> None:
        local = self._local.get(channel)
        change = None if local is None else local.leave(MemberKey(client_id, connection))
        if change is not None:
            self._apply_own(channel, change)

    def connection_closed(self, connection: str) -> None:
        """Its members leave ``leave_after_s`` from now, unless entered again meanwhile."""
        now = time.monotonic()
        for local in self._local.values():
            local.connection_closed(connection, now)

    def members(self, channel: str) -> list[Member]:
        view = self._views.get(channel)
        return [] if view is None else view.members()

    def member_count(self) -> tuple[int, int]:
        """(channels with members, members in them), every region's, for /metrics."""
        sizes = [len(view.members()) for view in self._views.values()]
        return sum(1 for n in sizes if n), sum(sizes)

    def listen(self, channel: str, sink: Sink) -> None:
        self._listeners.setdefault(channel, set()).add(sink)

    def unlisten(self, channel: str, sink: Sink) -> None:
        sinks = self._listeners.get(channel)
        if sinks is not None:
            sinks.discard(sink)
            if not sinks:
                del self._listeners[channel]

    # --- running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        subscription = await self.nc.subscribe(PRESENCE_SUBJECTS, cb=self._heard)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._send_loop)
                tg.start_soon(self._beat_loop)
                tg.start_soon(self._snapshot_loop)
                tg.start_soon(self._tick_loop)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _send_loop(self) -> None:
        subject = presence_subject(self.region)
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._outgoing:
                payload = self._outgoing.popleft()
                # NATS away: the snapshots repair what is lost meanwhile.
                with contextlib.suppress(Exception):
                    await self.nc.publish(subject, payload)

    async def _beat_loop(self) -> None:
        own = PresenceBeat(origin=self.origin, region=self.region, epoch=self.epoch)
        beat = encode_presence(own)
        while True:
            self._send(beat)
            # ``_heard`` skips our own messages, beats too: without this our own members
            # would turn unreachable, then vanish, in our own view while still connected.
            self._merge(own, time.monotonic())
            await anyio.sleep(BEAT_S)

    async def _snapshot_loop(self) -> None:
        while True:
            await anyio.sleep(self.cfg.snapshot_s)
            self.snapshot_once()

    def snapshot_once(self) -> None:
        """Send a snapshot of every channel with members, or that just lost its last."""
        for channel, local in list(self._local.items()):
            snap = local.snapshot()
            if not snap.members and snap.version.seq == 0:
                continue
            self._send(encode_presence(_snapshot_message(self.region, channel, snap)))
            if not snap.members:
                # Said once that none are left: forget it. Its next changes are numbered
                # after this snapshot all the same (``_numbering`` is the process's).
                del self._local[channel]

    async def _tick_loop(self) -> None:
        while True:
            await anyio.sleep(TICK_S)
            now = time.monotonic()
            for channel, local in list(self._local.items()):
                for change in local.due(now):
                    self._apply_own(channel, change)
            for channel, view in list(self._views.items()):
                self._dispatch(channel, view.tick(now))
                unused = channel not in self._listeners and channel not in self._local
                if unused and not view.members():
                    del self._views[channel]  # a snapshot brings it back if it comes back

    # --- the merge

    def _local_for(self, channel: str) -> LocalPresence:
        local = self._local.get(channel)
        if local is None:
            local = self._local[channel] = LocalPresence(
                self.origin,
                self.epoch,
                self.region,
                self.cfg.leave_after_s,
                self.relay_id,
                numbering=self._numbering,
            )
        return local

    def _view(self, channel: str) -> ChannelPresence:
        view = self._views.get(channel)
        if view is None:
            view = self._views[channel] = ChannelPresence(
                self.cfg.suspect_after_s, self.cfg.remove_after_s
            )
        return view

    def _apply_own(self, channel: str, change: Change) -> None:
        self._dispatch(channel, self._view(channel).apply(change, time.monotonic()))
        self._send(encode_presence(_change_message(self.region, channel, change)))

    def _send(self, payload: bytes) -> None:
        self._outgoing.append(payload)
        self._wake.set()

    def _dispatch(self, channel: str, events: list[PresenceEvent]) -> None:
        sinks = self._listeners.get(channel)
        if not events or not sinks:
            return
        for event in events:
            frame = presence_event_frame(channel, event)
            for sink in list(sinks):
                sink(frame)

    async def _heard(self, msg: Msg) -> None:
        region = region_of_subject(msg.subject)
        if region is None:
            return
        try:
            message = decode_presence(msg.data, region)
        except BadPresence as exc:
            self.refused += 1
            _bad.log(logging.WARNING, region, "dropped a malformed presence message: %s", exc)
            return
        self.received += 1
        if message.origin == self.origin and message.epoch == self.epoch:
            return  # our own: applied when made
        self._merge(message, time.monotonic())

    def _merge(self, message: PresenceMessage, now: float) -> None:
        if isinstance(message, PresenceBeat):
            for channel, view in self._views.items():
                if view.version(message.origin) is not None:
                    self._dispatch(channel, view.heard(message.origin, message.epoch, now))
            return
        relay = message.origin.split("/", 1)[-1]
        view = self._view(message.channel)
        if isinstance(message, PresenceChange):
            key = MemberKey(message.client_id, message.connection)
            member = (
                Member(key, message.region, relay, _bytes(message.data))
                if message.present
                else None
            )
            change = Change(message.origin, Version(message.epoch, message.seq), key, member)
            self._dispatch(message.channel, view.apply(change, now))
        else:
            members = {
                MemberKey(r.client_id, r.connection): (
                    r.seq,
                    Member(
                        MemberKey(r.client_id, r.connection), message.region, relay, _bytes(r.data)
                    ),
                )
                for r in message.members
            }
            snap = Snapshot(message.origin, Version(message.epoch, message.seq), members)
            self._dispatch(message.channel, view.apply_snapshot(snap, now))


def _bytes(raw: msgspec.Raw | UnsetType) -> bytes | None:
    return None if isinstance(raw, UnsetType) else bytes(raw)


def _raw(data: bytes | None) -> msgspec.Raw | UnsetType:
    return UNSET if data is None else msgspec.Raw(data)


def _change_message(region: str, channel: str, change: Change) -> PresenceChange:
    member = change.member
    return PresenceChange(
        origin=change.origin,
        region=region,
        epoch=change.version.epoch,
        seq=change.version.seq,
        channel=channel,
        client_id=change.key.client_id,
        connection=change.key.connection,
        present=member is not None,
        data=_raw(None if member is None else member.data),
    )


def _snapshot_message(region: str, channel: str, snap: Snapshot) -> PresenceSnapshot:
    return PresenceSnapshot(
        origin=snap.origin,
        region=region,
        epoch=snap.version.epoch,
        seq=snap.version.seq,
        channel=channel,
        members=[
            MemberRecord(key.client_id, key.connection, seq, _raw(member.data))
            for key, (seq, member) in snap.members.items()
        ],
    )
