"""A link to one peer region: read the peer's log, hand every message to the writer.

The link is a nats-py connection from this region's federation to the peer's
NATS, and one durable pull consumer per namespace stream on the peer
(``fed_<this region>``). A partition is a pause: the connection reconnects by
itself and the durable consumer resumes from what this region acknowledged,
never from "now"; the peer's JetStream keeps messages while we are away (up to
its retention), also across restarts of either side.

The peer's whole log is read, not only what originated there: a message from a
third region reaches us through any peer that has it, so a single cut link
does not hold its messages back. Copies and our own messages are dropped by
the writer, which acknowledges each peer copy once the message is in our log.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Sequence

import anyio
import nats.errors
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from federation import logformat
from federation.adapters.nats_client import NatsClient, describe_failure, is_refusal
from federation.adapters.region_writer import RegionWriter
from federation.bad_entries import BadEntries
from federation.entry_checks import BadEntry, decode_checked
from federation.presence_format import BadPresence, decode_presence, presence_subject
from federation.settings import NatsConnectOptions
from federation.throttled_log import ThrottledLog

log = logging.getLogger("relaynet.federation")
_bad_beats = ThrottledLog(log)
_refusals = ThrottledLog(log, 30.0)

MAX_ACK_PENDING = 20_000
#: Inbox prefix of a link's connection: a peer's NATS lets its "peer" user subscribe to
#: this prefix only, not to the region's own ``_INBOX.>`` (relay.adapters.embedded_nats).
PEER_INBOX_PREFIX = "_RLYPEER"


def _stream_seq(msg: Msg) -> int:
    """The peer's stream sequence of a consumer's message (0 if it has none)."""
    try:
        return msg.metadata.sequence.stream
    except nats.errors.Error:  # not a JetStream delivery (no ack subject to read it from)
        return 0


class PeerLink:
    def __init__(
        self,
        *,
        region: str,
        peer_region: str,
        peer_nats: NatsConnectOptions,
        namespaces: Sequence[str],
        writer: RegionWriter,
        ack_wait_s: float,
        forward_heartbeat: Callable[[str, bytes], Awaitable[None]] | None = None,
        regions: Collection[str] = (),
    ) -> None:
        self.region = region
        self.peer_region = peer_region
        #: Every region of the network: a message from, or depending on, any other is refused.
        self.regions = frozenset([region, peer_region, *regions])
        self.bad_entries = BadEntries(log)
        #: Read again at each connect: credentials, CA and certificates may be rotated.
        self.peer_nats = peer_nats
        self.namespaces = list(namespaces)
        self.writer = writer
        self.ack_wait_s = ack_wait_s
        self.forward_heartbeat = forward_heartbeat
        self.durable = f"fed-{region}"
        self.connected = False
        self.received = 0
        # From each delivery's JetStream metadata, for /metrics: messages the peer still
        # holds for us, per stream, and the peer's store time of the last one read.
        self.pending: dict[str, int] = {}
        self.last_stored_at: float | None = None

    async def run(self) -> None:
        """Serve the link until cancelled, reconnecting after any failure."""
        try:
            await self._serve()
        finally:
            # The lease moved on (or we stop): another instance reports the lag now.
            self.pending.clear()
            self.last_stored_at = None

    async def _serve(self) -> None:
        delay = 0.1
        while True:
            nc = NatsClient()
            try:
                await nc.connect_with(
                    self.peer_nats,
                    inbox_prefix=PEER_INBOX_PREFIX,
                    name=f"relaynet-federation-{self.region}-from-{self.peer_region}",
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    # A silently dropped link must be noticed in seconds, not minutes.
                    ping_interval=2,
                    max_outstanding_pings=2,
                    error_cb=self._link_error,
                )
            except BaseException as exc:
                # Cancelled or failed half way, the client may hold a socket already.
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(2),
                    contextlib.suppress(Exception),  # never got far enough to need closing
                ):
                    await nc.close()
                if not isinstance(exc, Exception):
                    raise
                # Say it once per outage, not at every retry.
                (log.info if delay == 0.1 else log.debug)(
                    "peer %s unreachable (%s); retrying",
                    self.peer_region,
                    describe_failure(exc, self.peer_nats),
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if delay != 0.1:
                log.info("peer %s reachable again", self.peer_region)
            delay = 0.1
            self.connected = True
            try:
                if self.forward_heartbeat is not None:
                    # Heard over the link itself: a cut link marks the peer down here.
                    await nc.subscribe(
                        logformat.heartbeat_subject(self.peer_region), cb=self._heartbeat
                    )
                    # Presence is forwarded the same way: its beats go silent with the link.
                    await nc.subscribe(presence_subject(self.peer_region), cb=self._presence)
                async with anyio.create_task_group() as tg:
                    for namespace in self.namespaces:
                        tg.start_soon(self._pump, nc, namespace)
            finally:
                self.connected = False
                # The peer's connection may be dead already (a reset, then the lease moved):
                # nats-py's close then raises from the closed transport, and that must not
                # end the relay (bench chaos found relays exiting here).
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(2),
                    contextlib.suppress(Exception),
                ):
                    await nc.close()

    async def _link_error(self, exc: Exception) -> None:
        if is_refusal(exc):  # a wrong CA or password does not heal by waiting: say so
            _refusals.log(
                logging.WARNING,
                self.peer_region,
                "link to %s refused: %s; retrying",
                self.peer_region,
                describe_failure(exc, self.peer_nats),
            )
            return
        # A peer being away is the normal life of a link; nats-py would log a traceback.
        log.debug("link to %s: %r", self.peer_region, exc)

    async def _heartbeat(self, msg: Msg) -> None:
        """Forward the peer's beat onto our NATS as it came (a newer peer's fields too),
        but only a beat: what the peer's NATS carries is not trusted blindly."""
        if self.forward_heartbeat is None:
            return
        try:
            logformat.decode_beat(msg.data)
        except logformat.BadBeat as exc:
            _bad_beats.log(
                logging.DEBUG,
                self.peer_region,
                "peer %s: not forwarding a malformed beat on %s: %s",
                self.peer_region,
                msg.subject,
                exc,
            )
            return
        await self.forward_heartbeat(msg.subject, msg.data)

    async def _presence(self, msg: Msg) -> None:
        """Forward the peer region's presence messages, and only those (checked first)."""
        if self.forward_heartbeat is None:
            return
        try:
            decode_presence(msg.data, self.peer_region)
        except BadPresence as exc:
            _bad_beats.log(
                logging.DEBUG,
                self.peer_region,
                "peer %s: not forwarding a malformed presence message: %s",
                self.peer_region,
                exc,
            )
            return
        await self.forward_heartbeat(presence_subject(self.peer_region), msg.data)

    async def _pump(self, nc: NatsClient, namespace: str) -> None:
        js = nc.jetstream(timeout=5)
        stream = logformat.stream_name(self.peer_region, namespace)
        subjects = logformat.stream_subjects(self.peer_region, namespace)
        bound_elsewhere = False
        while True:
            try:
                if bound_elsewhere:
                    sub = await self._take_over(js, stream, subjects)
                else:
                    sub = await self._subscribe(js, stream, subjects)
                break
            except Exception as exc:  # peer or its stream not up yet; an old holder bound
                if bound_elsewhere or "already bound" not in str(exc):
                    log.debug("peer %s stream %s not ready: %r", self.peer_region, stream, exc)
                    await anyio.sleep(0.5)
                bound_elsewhere = "already bound" in str(exc)
        # Acks go out from a task of their own: the writer calls them once a message is in
        # our log, from its commit loop, which must not wait on the peer's connection.
        send_ack, acks = anyio.create_memory_object_stream[Msg](math.inf)
        try:
            async with anyio.create_task_group() as tg, send_ack, acks:
                tg.start_soon(self._send_acks, acks)
                async for msg in sub.messages:
                    await self._handle(stream, msg, send_ack)
        finally:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(2),
                contextlib.suppress(Exception),  # the connection may be gone already
            ):
                await sub.unsubscribe()

    async def _subscribe(
        self, js: JetStreamContext, stream: str, subjects: str, start_seq: int | None = None
    ) -> JetStreamContext.PushSubscription:
        """The durable push consumer on the peer: the peer sends each message as soon as it
        is stored, so a message crosses the link in one trip (a pull costs a round trip)."""
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=(
                DeliverPolicy.ALL if start_seq is None else DeliverPolicy.BY_START_SEQUENCE
            ),
            opt_start_seq=start_seq,
            ack_wait=self.ack_wait_s,
            max_ack_pending=MAX_ACK_PENDING,
        )
        return await js.subscribe(
            subjects,
            stream=stream,
            durable=self.durable,
            manual_ack=True,
            # No flow control: nats-py never answers a stalled flow-control request
            # (Nats-Consumer-Stalled), so a link handed to another instance could stall
            # for good. max_ack_pending bounds what is in flight instead.
            idle_heartbeat=2.0,
            config=config,
            pending_msgs_limit=2 * MAX_ACK_PENDING,
        )

    async def _take_over(
        self, js: JetStreamContext, stream: str, subjects: str
    ) -> JetStreamContext.PushSubscription:
        """We hold the link's lease, yet another process is still bound to the consumer:
        a holder that lost the lease without letting go (frozen, or cut off from its own
        region). Waiting for it could take minutes (until the peer's NATS notices the dead
        connection), so the consumer is made again from its ack floor, for us: whatever
        was unacknowledged comes again at once, and the writer drops what is applied."""
        info = await js.consumer_info(stream, self.durable)
        start = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
        log.warning(
            "peer %s: taking over %s from an instance that lost the lease (from seq %d)",
            self.peer_region,
            stream,
            start,
        )
        await js.delete_consumer(stream, self.durable)
        return await self._subscribe(js, stream, subjects, start_seq=start)

    @staticmethod
    async def _send_acks(acks: MemoryObjectReceiveStream[Msg]) -> None:
        async for msg in acks:
            # A link that dropped, or a message offered twice and so acked twice, only
            # costs the peer a resend that we drop: never a reason to stop the link.
            with contextlib.suppress(Exception):
                await msg.ack()

    @property
    def pending_messages(self) -> int:
        """Messages of the peer's log not yet delivered to this link (as of the last one)."""
        return sum(self.pending.values())

    def lag_s(self, now: float) -> float:
        """How far behind the peer's log this link reads: 0 when nothing is pending, else
        the age of the last message read (the oldest unread one is at most that old)."""
        if not self.pending_messages or self.last_stored_at is None:
            return 0.0
        return max(0.0, now - self.last_stored_at)

    async def _handle(self, stream: str, msg: Msg, acks: MemoryObjectSendStream[Msg]) -> None:
        self.received += 1
        with contextlib.suppress(nats.errors.Error, ValueError):
            meta = msg.metadata
            self.pending[stream] = meta.num_pending
            self.last_stored_at = meta.timestamp.timestamp()
        try:
            stored = decode_checked(msg.data, self.regions, known_dependencies=True)
            channel = logformat.channel_of(msg.subject)
        except (BadEntry, IndexError) as exc:
            # Not something any relaynet writes: say so loudly, do not stall the link.
            self.bad_entries.skipped("peer", f"{stream} {msg.subject}", _stream_seq(msg), str(exc))
            acks.send_nowait(msg)
            return
        delay = 0.05

        # A full causal buffer holds the link back, as it should: the peer keeps what we
        # have not taken.
        def ack() -> None:
            # Called by the writer once the message is in our log, maybe after this link
            # was replaced (reconnect, lease hand-over): then the peer sends it again.
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                acks.send_nowait(msg)

        while not self.writer.offer_remote(channel, stored, ack):
            log.debug("channel %s: causal buffer full; waiting", channel)
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
