"""The region log on NATS JetStream: streams, publishing, reading, the live feed.

One stream per namespace rule (``RLY_<REGION>_<NAMESPACE>``) so each rule keeps
its own retention. A relay writes a message with compare-and-set on the
channel's subject (``Nats-Expected-Last-Subject-Sequence``): the per-channel
counter in the vector timestamp is then unique without a coordinator, and
``Nats-Msg-Id`` makes a repeated publish id an acknowledged duplicate. The
stream republishes what it stored to ``rlyl.…``: the relays' live feed sees
only stored messages, in stream order, each naming its predecessor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DiscardPolicy, RePublish, StorageType, StreamConfig

from config.schema import NamespaceRule, RelayConfig
from federation.vclock import EMPTY, VectorClock
from relay.core import channels
from relay.core.channels import Channel
from relay.core.feed import LogEntry
from relay.protocol.frames import StoredMessage, decode_stored, encode_stored

log = logging.getLogger("relaynet.broker")

ERR_WRONG_LAST_SEQUENCE = 10071
ERR_STREAM_NAME_IN_USE = 10058
MAX_CAS_ATTEMPTS = 100
READ_BATCH = 256


class BrokerUnavailable(Exception):
    """NATS did not answer in time; the request may be retried."""


@dataclass(frozen=True)
class StoreResult:
    seq: int
    position: VectorClock
    duplicate: bool


class NatsBroker:
    def __init__(self, nc: NatsClient, cfg: RelayConfig) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=cfg.nats.connect_timeout_s)
        self.cfg = cfg
        self.region = cfg.region.name
        # Last (seq, position) we know per channel: a hint for the next compare-and-set.
        self._heads: dict[Channel, tuple[int, VectorClock]] = {}

    # --- streams -----------------------------------------------------------------------

    def _stream_config(self, rule: NamespaceRule) -> StreamConfig:
        return StreamConfig(
            name=channels.stream_name(self.region, rule.name),
            subjects=[channels.stream_subjects(self.region, rule.name)],
            storage=StorageType.FILE,
            max_age=rule.history_max_age_s,
            max_msgs_per_subject=rule.history_max_messages,
            max_msg_size=rule.max_message_bytes + 4096,
            discard=DiscardPolicy.OLD,
            duplicate_window=self.cfg.nats.duplicate_window_s,
            num_replicas=self.cfg.nats.replicas,
            allow_direct=True,
            republish=RePublish(
                src=channels.stream_subjects(self.region, rule.name),
                dest=channels.live_subjects(self.region, rule.name),
            ),
        )

    async def ensure_streams(self) -> None:
        for rule in self.cfg.all_namespaces:
            config = self._stream_config(rule)
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != ERR_STREAM_NAME_IN_USE:
                    raise
                # Exists with other limits (the config changed): bring it in line.
                await self.js.update_stream(config)
            log.info("stream %s ready", config.name)

    # --- addressing --------------------------------------------------------------------

    def _where(self, channel: Channel) -> tuple[str, str]:
        rule = self.cfg.namespace_for(channel)
        return (
            channels.stream_name(self.region, rule.name),
            channels.store_subject(self.region, rule.name, channel),
        )

    def live_subject(self, channel: Channel) -> str:
        rule = self.cfg.namespace_for(channel)
        return channels.live_subject(self.region, rule.name, channel)

    # --- writing -----------------------------------------------------------------------

    def note_head(self, channel: Channel, seq: int, position: VectorClock) -> None:
        known = self._heads.get(channel)
        if known is None or known[0] < seq:
            self._heads[channel] = (seq, position)

    def forget_head(self, channel: Channel) -> None:
        self._heads.pop(channel, None)

    async def store(self, channel: Channel, message_id: str, data: msgspec.Raw) -> StoreResult:
        """Append a locally published message; idempotent per (channel, id)."""
        stream, subject = self._where(channel)
        head = self._heads.get(channel)
        if head is None:
            head = await self._read_head(channel)
        for _ in range(MAX_CAS_ATTEMPTS):
            last_seq, position = head
            ts = position.increment(self.region)
            body = encode_stored(
                StoredMessage(message_id, data, self.region, ts.to_dict(), ts.to_dict())
            )
            headers = {
                "Nats-Msg-Id": channels.dedupe_key(channel, message_id),
                "Nats-Expected-Last-Subject-Sequence": str(last_seq),
            }
            try:
                ack = await self.js.publish(subject, body, stream=stream, headers=headers)
            except nats.js.errors.APIError as exc:
                if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                    head = await self._read_head(channel)
                    continue
                raise
            except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError) as exc:
                raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc
            if ack.duplicate:
                original = await self.entry(channel, ack.seq)
                return StoreResult(ack.seq, original.position, duplicate=True)
            self.note_head(channel, ack.seq, ts)
            return StoreResult(ack.seq, ts, duplicate=False)
        raise BrokerUnavailable(f"channel {channel} is contended; gave up after retries")

    async def _read_head(self, channel: Channel) -> tuple[int, VectorClock]:
        last = await self.last_entry(channel)
        head = (last.seq, last.position) if last else (0, EMPTY)
        self._heads[channel] = head
        return head

    # --- reading -----------------------------------------------------------------------

    def _entry(self, channel: Channel, seq: int, last_seq: int, body: bytes) -> LogEntry:
        return LogEntry(seq=seq, last_seq=last_seq, channel=channel, msg=decode_stored(body))

    async def _direct(self, stream: str, req: dict[str, object], subject: str | None) -> Msg | None:
        api = f"$JS.API.DIRECT.GET.{stream}"
        if subject is not None:
            api = f"{api}.{subject}"
        try:
            msg = await self.nc.request(api, json.dumps(req).encode() if req else b"", timeout=5)
        except nats.errors.TimeoutError as exc:
            raise BrokerUnavailable("JetStream direct get timed out") from exc
        status = (msg.headers or {}).get("Status")
        if status == "404":
            return None
        if status:
            raise BrokerUnavailable(f"direct get failed: {status} {msg.headers}")
        return msg

    def _lift(self, channel: Channel, msg: Msg) -> LogEntry:
        headers = msg.headers or {}
        return self._entry(channel, int(headers["Nats-Sequence"]), 0, msg.data)

    async def last_entry(self, channel: Channel) -> LogEntry | None:
        stream, subject = self._where(channel)
        msg = await self._direct(stream, {}, subject)
        return self._lift(channel, msg) if msg else None

    async def entry_at_or_after(self, channel: Channel, seq: int) -> LogEntry | None:
        stream, subject = self._where(channel)
        msg = await self._direct(stream, {"seq": max(seq, 1), "next_by_subj": subject}, None)
        return self._lift(channel, msg) if msg else None

    async def entry(self, channel: Channel, seq: int) -> LogEntry:
        stream, _ = self._where(channel)
        msg = await self._direct(stream, {"seq": seq}, None)
        if msg is None:
            raise BrokerUnavailable(f"message {seq} vanished from {stream}")
        return self._lift(channel, msg)

    async def read_range(
        self, channel: Channel, from_seq: int, upto_seq: int
    ) -> AsyncGenerator[list[LogEntry], None]:
        """Stored messages of the channel with from_seq <= seq <= upto_seq, in batches."""
        stream, subject = self._where(channel)
        api = f"$JS.API.DIRECT.GET.{stream}"
        seq = max(from_seq, 1)
        while seq <= upto_seq:
            inbox = self.nc.new_inbox()
            sub = await self.nc.subscribe(inbox)
            batch: list[LogEntry] = []
            try:
                req = {"seq": seq, "next_by_subj": subject, "batch": READ_BATCH}
                await self.nc.publish(api, json.dumps(req).encode(), reply=inbox)
                while True:
                    try:
                        msg = await sub.next_msg(timeout=5)
                    except nats.errors.TimeoutError as exc:
                        raise BrokerUnavailable("JetStream batch read timed out") from exc
                    headers = msg.headers or {}
                    if headers.get("Status"):  # 204 end of batch, 404 nothing (more)
                        break
                    entry = self._lift(channel, msg)
                    if entry.seq <= upto_seq:
                        batch.append(entry)
            finally:
                await sub.unsubscribe()
            if batch:
                yield batch
            if len(batch) < READ_BATCH:
                return
            seq = batch[-1].seq + 1

    async def first_seq_where(
        self,
        channel: Channel,
        lo: int,
        hi: int,
        predicate: Callable[[LogEntry], bool],
    ) -> LogEntry | None:
        """The first entry with seq in [lo, hi] satisfying a predicate monotone in seq."""
        found: LogEntry | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            entry = await self.entry_at_or_after(channel, mid)
            if entry is None or entry.seq > hi:
                hi = mid - 1
                continue
            if predicate(entry):
                found = entry
                hi = mid - 1
            else:
                lo = entry.seq + 1
        return found

    # --- live feed ---------------------------------------------------------------------

    async def subscribe_live(
        self, channel: Channel, on_entry: Callable[[LogEntry], None]
    ) -> Subscription:
        async def callback(msg: Msg) -> None:
            headers = msg.headers or {}
            try:
                entry = self._entry(
                    channel,
                    int(headers["Nats-Sequence"]),
                    int(headers.get("Nats-Last-Sequence", "0")),
                    msg.data,
                )
            except (KeyError, ValueError, msgspec.DecodeError):
                log.warning("ignoring malformed live message on %s", msg.subject)
                return
            on_entry(entry)

        # Deep pending limits: a burst must not be dropped by the client library; if it
        # is, the feed sees the gap in Nats-Last-Sequence and refills from the stream.
        return await self.nc.subscribe(
            self.live_subject(channel),
            cb=callback,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=512 * 1024 * 1024,
        )
