"""The relay's side of the region log on NATS JetStream: streams, reads for resume
and history, and the live feed.

One stream per namespace rule (``RLY_<REGION>_<NAMESPACE>``) so each rule keeps
its own retention. Writes go through the region writer
(``federation.adapters.region_writer``, shared with federation when it runs in
the relay). The stream republishes what it stored to ``rlyl.…``:
the relays' live feed sees only stored messages, in stream order, each naming
its predecessor.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DiscardPolicy, RePublish, StorageType, StreamConfig

from federation.adapters.region_log import LogUnavailable, region_log_for
from relay.config.schema import NamespaceRule, RelayConfig
from relay.core import channels
from relay.core.channels import Channel
from relay.core.feed import LogEntry
from relay.protocol.frames import decode_stored

log = logging.getLogger("relaynet.broker")

ERR_STREAM_NAME_IN_USE = 10058
READ_BATCH = 256


# NATS did not answer in time; the request may be retried.
BrokerUnavailable = LogUnavailable


class NatsBroker:
    def __init__(self, nc: NatsClient, cfg: RelayConfig) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=cfg.nats.connect_timeout_s)
        self.cfg = cfg
        self.region = cfg.region.name
        self.log = region_log_for(nc, cfg.region_settings())

    # --- streams -----------------------------------------------------------------------

    def _stream_config(self, rule: NamespaceRule, *, total_log: bool = False) -> StreamConfig:
        """The causal log of a namespace, or (``total_log``) its total-order delivery log.

        Whichever log subscribers read is republished to the live subjects."""
        if total_log:
            name = channels.total_stream_name(self.region, rule.name)
            subjects = channels.total_subjects(self.region, rule.name)
        else:
            name = channels.stream_name(self.region, rule.name)
            subjects = channels.stream_subjects(self.region, rule.name)
        delivered = total_log or rule.ordering == "causal"
        return StreamConfig(
            name=name,
            subjects=[subjects],
            storage=StorageType.FILE,
            max_age=rule.history_max_age_s,
            max_msgs_per_subject=rule.history_max_messages,
            max_msg_size=rule.max_message_bytes + 4096,
            discard=DiscardPolicy.OLD,
            duplicate_window=self.cfg.nats.duplicate_window_s,
            num_replicas=self.cfg.nats.replicas,
            allow_direct=True,
            # The region writer commits what queued on a channel as one atomic batch.
            allow_atomic=True,
            republish=RePublish(src=subjects, dest=channels.live_subjects(self.region, rule.name))
            if delivered
            else None,
        )

    async def ensure_streams(self) -> None:
        for rule in self.cfg.all_namespaces:
            configs = [self._stream_config(rule)]
            if rule.ordering == "total":
                configs.append(self._stream_config(rule, total_log=True))
            for config in configs:
                try:
                    await self.js.add_stream(config)
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code != ERR_STREAM_NAME_IN_USE:
                        raise
                    # Exists with other limits (the config changed): bring it in line.
                    await self.js.update_stream(config)
                log.info("stream %s ready", config.name)

    # --- addressing --------------------------------------------------------------------

    def live_subject(self, channel: Channel) -> str:
        rule = self.cfg.namespace_for(channel)
        return channels.live_subject(self.region, rule.name, channel)

    # --- reading -----------------------------------------------------------------------

    def _lift(self, channel: Channel, msg: Msg, last_seq: int = 0) -> LogEntry:
        headers = msg.headers or {}
        return LogEntry(
            seq=int(headers["Nats-Sequence"]),
            last_seq=last_seq,
            channel=channel,
            msg=decode_stored(msg.data),
        )

    # Reads serve subscribers, so they go to the delivery log (the total-order one in
    # total namespaces); only publishing appends to the causal log.

    async def last_entry(self, channel: Channel) -> LogEntry | None:
        msg = await self.log.direct_get(channel, None, delivery=True)
        return self._lift(channel, msg) if msg else None

    async def entry_at_or_after(self, channel: Channel, seq: int) -> LogEntry | None:
        msg = await self.log.direct_get(
            channel, {"seq": max(seq, 1), "next_by_subj": ""}, delivery=True
        )
        return self._lift(channel, msg) if msg else None

    async def read_range(
        self, channel: Channel, from_seq: int, upto_seq: int
    ) -> AsyncGenerator[list[LogEntry], None]:
        """Stored messages of the channel with from_seq <= seq <= upto_seq, in batches."""
        seq = max(from_seq, 1)
        while seq <= upto_seq:
            try:
                batch = await self._read_batch(channel, seq, upto_seq)
            except nats.errors.Error as exc:  # timeout, reconnecting, closed …
                raise BrokerUnavailable(f"reading {channel} failed: {exc!r}") from exc
            if batch:
                yield batch
            if len(batch) < READ_BATCH:
                return
            seq = batch[-1].seq + 1

    async def _read_batch(self, channel: Channel, seq: int, upto_seq: int) -> list[LogEntry]:
        """One batched direct get (nats-server 2.11+): up to READ_BATCH entries from seq."""
        stream, subject = self.log.delivery_where(channel)
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        batch: list[LogEntry] = []
        try:
            req = {"seq": seq, "next_by_subj": subject, "batch": READ_BATCH}
            await self.nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(req).encode(), reply=inbox
            )
            while True:
                msg = await sub.next_msg(timeout=5)
                if (msg.headers or {}).get("Status"):  # 204 end of batch, 404 nothing (more)
                    return batch
                entry = self._lift(channel, msg)
                if entry.seq <= upto_seq:
                    batch.append(entry)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

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
                entry = self._lift(channel, msg, int(headers.get("Nats-Last-Sequence", "0")))
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
