"""Revocations over NATS: each region's stream, written by operators, read by every relay.

A region's revocations live in one JetStream stream on its own NATS
(``RLYR_<REGION>``, subject ``rlyr.v1.<region>``, file storage, max age
``[auth] revocation_retention_s``). ``relaynet token revoke`` appends to it
(``publish_revocation``, as the relay user); nothing else writes there.

Every relay in token mode reads its own region's stream and every peer region's, each
from the first record and then as records arrive, into one ``RevocationSet``
(``RevocationFollower``). Peers are read over a connection of the relay's own to the
peer's NATS, with the ``[[peers]]`` credentials, so revocations reach every region even
where federation runs in another process, and a region that is cut off catches up when
it is back. A stream is read by sequence with ``STREAM.MSG.GET`` (next record by
subject): the peer user needs no consumer, and a reader that lost its connection just
asks again from where it was. A core subscription to the subject wakes the reader as
soon as a record is stored; without it (a lost wake-up) the reader still polls every
``POLL_S``.

The relay starts serving only after its own region's stream was read once, so a token
revoked there is never accepted at start. Peers are followed in the background (a peer
that is down must not keep a region from starting).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable

import anyio
import nats.errors
import nats.js.errors
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from federation.adapters.nats_client import NatsClient, describe_failure
from federation.adapters.nats_link import PEER_INBOX_PREFIX
from federation.settings import Peer
from federation.throttled_log import ThrottledLog
from relay.core.revocations import (
    MAX_RECORD_BYTES,
    BadRevocation,
    Revocation,
    RevocationSet,
    decode_revocation,
    encode_revocation,
    revocation_stream,
    revocation_subject,
)

log = logging.getLogger("relaynet.revocations")
_problems = ThrottledLog(log, 30.0)

POLL_S = 1.0
# Records a region keeps at most: far more than any operator revokes within a retention.
MAX_RECORDS = 1_000_000
JS_TIMEOUT_S = 5.0


async def ensure_stream(js: JetStreamContext, region: str, retention_s: float) -> None:
    """Create ``region``'s revocation stream if it is missing (relays and the CLI both do,
    whichever comes first); an existing one is left as it is."""
    stream = revocation_stream(region)
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        pass
    else:
        if info.config.max_age is not None and not math.isclose(info.config.max_age, retention_s):
            log.warning(
                "revocation stream %s keeps records %g s, this config says %g s "
                "(auth.revocation_retention_s): the stream's value applies",
                stream,
                info.config.max_age,
                retention_s,
            )
        return
    with contextlib.suppress(nats.js.errors.BadRequestError):  # made meanwhile by another
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[revocation_subject(region)],
                storage=StorageType.FILE,
                max_age=retention_s,
                max_msgs=MAX_RECORDS,
                max_msg_size=MAX_RECORD_BYTES,
                discard=DiscardPolicy.OLD,
                duplicate_window=120.0,
            )
        )


def new_revocation(
    region: str,
    *,
    jti: str | None = None,
    sub: str | None = None,
    issued_before: float | None = None,
    now: float | None = None,
) -> Revocation:
    return Revocation(
        id=os.urandom(12).hex(),
        at=time.time() if now is None else now,
        region=region,
        jti=jti,
        sub=sub,
        issued_before=issued_before,
    )


async def publish_revocation(js: JetStreamContext, rev: Revocation) -> int:
    """Store ``rev`` in its region's stream; returns its sequence there."""
    ack = await js.publish(
        revocation_subject(rev.region), encode_revocation(rev), headers={"Nats-Msg-Id": rev.id}
    )
    return ack.seq


class RevocationFollower:
    """Reads the revocation streams of this region and of ``peers`` into ``revocations``
    and calls ``on_new`` with each record it had not seen."""

    def __init__(
        self,
        region: str,
        peers: tuple[Peer, ...],
        revocations: RevocationSet,
        on_new: Callable[[Revocation], None],
    ) -> None:
        self.region = region
        self.peers = peers
        self.revocations = revocations
        self.on_new = on_new
        # Per region followed: the next sequence to read.
        self.next_seq: dict[str, int] = {}
        # Regions whose stream has been read to its end at least once.
        self.reading: set[str] = set()

    async def run(
        self, nc: NatsClient, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow until cancelled; started once this region's stream was read."""
        js = nc.jetstream(timeout=JS_TIMEOUT_S)
        await ensure_stream(js, self.region, self.revocations.retention_s)
        async with anyio.create_task_group() as tg:
            await tg.start(self._follow, nc, self.region)
            for peer in self.peers:
                tg.start_soon(self._follow_peer, peer)
            tg.start_soon(self._expire)
            task_status.started()

    async def _expire(self) -> None:
        while True:
            await anyio.sleep(60.0)
            self.revocations.expire(time.time())

    async def _follow_peer(self, peer: Peer) -> None:
        delay = 0.1
        while True:
            nc = NatsClient()
            try:
                await nc.connect_with(
                    peer.nats,
                    inbox_prefix=PEER_INBOX_PREFIX,
                    name=f"relaynet-revocations-{self.region}-from-{peer.region}",
                    connect_timeout=2,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=self._quiet,
                )
            except Exception as exc:
                with anyio.move_on_after(2, shield=True), contextlib.suppress(Exception):
                    await nc.close()
                _problems.log(
                    logging.INFO,
                    peer.region,
                    "revocations of %s: cannot reach its NATS (%s); retrying",
                    peer.region,
                    describe_failure(exc, peer.nats),
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            try:
                await self._follow(nc, peer.region)
            except Exception as exc:  # the connection closed under us: connect again
                log.info("revocations of %s: %r; reconnecting", peer.region, exc)
                await anyio.sleep(1.0)
            finally:
                with anyio.move_on_after(2, shield=True), contextlib.suppress(Exception):
                    await nc.close()

    @staticmethod
    async def _quiet(exc: Exception) -> None:
        log.debug("revocations, peer connection: %r", exc)

    async def _follow(
        self,
        nc: NatsClient,
        region: str,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        js = nc.jetstream(timeout=JS_TIMEOUT_S)
        wake = anyio.Event()

        async def stored(_msg: Msg) -> None:
            wake.set()  # only a wake-up: what is applied is read from the stream

        sub = await nc.subscribe(revocation_subject(region), cb=stored)
        started = False
        try:
            while True:
                wake = anyio.Event()
                try:
                    await self._read_new(js, region)
                    self.reading.add(region)
                except (nats.errors.Error, TimeoutError) as exc:
                    _problems.log(
                        logging.WARNING,
                        region,
                        "revocations of %s: cannot read the stream (%r); retrying",
                        region,
                        exc,
                    )
                if not started:
                    task_status.started()
                    started = True
                with anyio.move_on_after(POLL_S):
                    await wake.wait()
        finally:
            with anyio.move_on_after(2, shield=True), contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _read_new(self, js: JetStreamContext, region: str) -> None:
        stream, subject = revocation_stream(region), revocation_subject(region)
        seq = self.next_seq.get(region, 1)
        while True:
            try:
                msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:  # no record from seq on (or no stream yet)
                return
            if msg.seq is None:  # not a stored record: nothing to go on from
                return
            seq = self.next_seq[region] = msg.seq + 1
            self._take(region, msg.data or b"")

    def _take(self, region: str, raw: bytes) -> None:
        try:
            rev = decode_revocation(raw)
        except BadRevocation as exc:
            log.error("revocations of %s: skipped a malformed record (%s)", region, exc)
            return
        if self.revocations.add(rev, time.time()):
            self.on_new(rev)
