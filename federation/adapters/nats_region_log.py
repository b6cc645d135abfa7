"""The region log on NATS JetStream (``federation.region_log`` has the interface).

Appending is compare-and-set on the channel's subject.

Local publishes (the relay) and remote messages (federation) are appended the
same way: the writer reads the channel's head (stream sequence and applied
vector), builds the entry from it, and publishes with
``Nats-Expected-Last-Subject-Sequence`` set to the head's sequence. JetStream
stores it only if nobody appended in between; otherwise the writer re-reads the
head and decides again. That is what makes any number of writers per region
safe: a per-channel counter is never handed out twice, and a remote message is
never applied twice (the second writer finds it covered by the new head).

``Nats-Msg-Id`` (channel + publish id) turns a repeated id into an acknowledged
duplicate. JetStream checks the expected sequence before the id, so a
duplicate ack always means: the head was as expected, and the id is already in
the log (as another entry).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RePublish, StorageType, StreamConfig

from federation import logformat
from federation.adapters.nats_client import BatchMember, NatsClient, batch_member_headers
from federation.bad_entries import BadEntries
from federation.channel_writes import Head
from federation.entry_checks import BadEntry, decode_checked, sequence_header
from federation.logformat import StoredMessage
from federation.region_log import Appended, Group, GroupAnswer, LoggedEntry, LogUnavailable
from federation.settings import Namespace, RegionSettings
from federation.vclock import EMPTY, VectorClock
from federation.written_bodies import WrittenBodies

# Batch ids only need to be unique among this server's batches in flight: a random
# process prefix and a counter, without a system call per batch (uuid4 was 4% of a publish).
_batch_prefix = secrets.token_hex(8)
_batch_ids = (f"{_batch_prefix}{n:x}" for n in itertools.count())

ERR_WRONG_LAST_SEQUENCE = 10071
ERR_BATCH_DUPLICATE_ID = 10201


ERR_STREAM_NAME_IN_USE = 10058
ERR_STORAGE_RESOURCES_EXCEEDED = 10047
# JetStream's answer when a stream is at its max_bytes (err_code 10077 is any store failure).
MAX_BYTES_EXCEEDED = "maximum bytes exceeded"
READ_BATCH = 256
# Malformed entries skipped one by one before a read gives up (LogUnavailable).
MAX_BAD_RUN = 64

log = logging.getLogger("relaynet.log")


class StoreBudgetExceeded(RuntimeError):
    """The NATS server cannot reserve a stream's max_bytes: the relay cannot start."""


def _refusal(stream: str, description: str | None) -> str:
    if description == MAX_BYTES_EXCEEDED:
        return f"{stream} is out of space (its namespace's max_bytes is reached): {description}"
    return f"{stream} refused the append: {description}"


class NatsRegionLog:
    def __init__(self, nc: Client, settings: RegionSettings) -> None:
        self.nc = nc
        self.settings = settings
        self.timeout_s = settings.connect_timeout_s
        self.js = nc.jetstream(timeout=self.timeout_s)
        self.region = settings.region
        self.total_namespaces = settings.total_order_namespaces
        #: Every region of the network: a stored entry from anywhere else is not ours.
        self.regions = frozenset([self.region, *(peer.region for peer in settings.peers)])
        self.bad_entries = BadEntries(log)
        #: Bodies this process appended lately, kept when a live feed here reads them back
        #: (a relay sets it; ``relaynet federate`` reads nothing back and keeps none).
        self.written: WrittenBodies | None = None

    def namespace_of(self, channel: str) -> str:
        return self.settings.namespace_for(channel).name

    # --- streams ---------------------------------------------------------------------------

    def _stream_config(self, namespace: Namespace, *, total_log: bool = False) -> StreamConfig:
        """The causal log of a namespace, or (``total_log``) its total-order delivery log.

        Whichever log subscribers read is republished to the live subjects."""
        if total_log:
            name = logformat.total_stream_name(self.region, namespace.name)
            subjects = logformat.total_subjects(self.region, namespace.name)
        else:
            name = logformat.stream_name(self.region, namespace.name)
            subjects = logformat.stream_subjects(self.region, namespace.name)
        delivered = total_log or not namespace.total_order
        live = logformat.live_subjects(self.region, namespace.name)
        return StreamConfig(
            name=name,
            subjects=[subjects],
            storage=StorageType.FILE,
            max_age=namespace.max_age_s,
            max_msgs_per_subject=namespace.max_messages,
            max_msg_size=namespace.max_message_bytes + 4096,
            # Old entries still go by age and per channel count (a chat keeps its last N), but
            # a full byte limit refuses new appends: dropping acked history to make room for
            # one client's flood would be silent loss for everyone else.
            max_bytes=namespace.max_bytes or None,
            discard=DiscardPolicy.NEW,
            duplicate_window=self.settings.duplicate_window_s,
            num_replicas=self.settings.replicas,
            allow_direct=True,
            # The region writer commits what queued on a channel as one atomic batch.
            allow_atomic=True,
            republish=RePublish(src=subjects, dest=live) if delivered else None,
        )

    async def ensure_streams(self) -> None:
        for namespace in self.settings.namespaces:
            configs = [self._stream_config(namespace)]
            if namespace.total_order:
                configs.append(self._stream_config(namespace, total_log=True))
            for config in configs:
                try:
                    try:
                        await self.js.add_stream(config)
                    except nats.js.errors.BadRequestError as exc:
                        if exc.err_code != ERR_STREAM_NAME_IN_USE:
                            raise
                        # Exists with other limits (the config changed): bring it in line.
                        await self.js.update_stream(config)
                except nats.js.errors.APIError as exc:
                    if exc.err_code != ERR_STORAGE_RESOURCES_EXCEEDED:
                        raise
                    raise StoreBudgetExceeded(
                        f"JetStream cannot reserve max_bytes {config.max_bytes} for stream "
                        f"{config.name} (namespace {namespace.name!r}): {exc.description}. "
                        "The server's store (max_file_store, or the account's limit) is "
                        "smaller than what the region's streams reserve: lower the namespaces' "
                        "max_bytes or give the server more store"
                    ) from None
                log.info("stream %s ready", config.name)

    async def _publish_members(self, batch: str, members: list[BatchMember]) -> None:
        """Members 1..n of atomic batch ``batch``; the commit is sent apart."""
        if not members:
            return
        if isinstance(self.nc, NatsClient):
            await self.nc.publish_batch_members(batch, members)
            return
        for number, (subject, msg_id, body, expected_seq) in enumerate(members, 1):
            headers = batch_member_headers(batch, number, msg_id, expected_seq)
            await self.nc.publish(subject.decode(), body, headers=headers)  # plain nats-py

    def where(self, channel: str) -> tuple[str, str]:
        namespace = self.namespace_of(channel)
        return (
            logformat.stream_name(self.region, namespace),
            logformat.store_subject(self.region, namespace, channel),
        )

    def is_total(self, channel: str) -> bool:
        return self.namespace_of(channel) in self.total_namespaces

    def delivery_where(self, channel: str) -> tuple[str, str]:
        """Where subscribers read the channel: the total-order log in total namespaces."""
        namespace = self.namespace_of(channel)
        if namespace not in self.total_namespaces:
            return self.where(channel)
        return (
            logformat.total_stream_name(self.region, namespace),
            logformat.total_subject(self.region, namespace, channel),
        )

    async def direct_get(
        self, channel: str, req: dict[str, object] | None, *, delivery: bool = False
    ) -> Msg | None:
        """JetStream direct get: the last entry of the channel (req None) or by request,
        from the log that is appended to (default) or the one subscribers read."""
        stream, subject = self.delivery_where(channel) if delivery else self.where(channel)
        api = f"$JS.API.DIRECT.GET.{stream}"
        if req is None:
            api = f"{api}.{subject}"
        elif "next_by_subj" in req:
            req = {**req, "next_by_subj": subject}
        try:
            msg = await self.nc.request(
                api, json.dumps(req).encode() if req else b"", timeout=self.timeout_s
            )
        except nats.errors.Error as exc:  # timeout, no responders, reconnecting, closed …
            raise LogUnavailable(f"direct get on {stream} failed: {exc!r}") from exc
        status = (msg.headers or {}).get("Status")
        if status == "404":
            return None
        if status:
            raise LogUnavailable(f"direct get on {stream} failed: {status}")
        return msg

    async def head(self, channel: str, *, delivery: bool = False) -> Head:
        msg = await self.direct_get(channel, None, delivery=delivery)
        if msg is None:
            return Head(0, EMPTY)
        entry = self._checked(channel, msg)
        if isinstance(entry, int):
            # Appends must still expect the bad entry's sequence, but build on the last good
            # entry's position, as if the bad one were not there: the good entries' positions
            # stay contiguous, which is what readers check.
            good = await self._good_before(channel, entry, delivery=delivery)
            if good is None:
                return Head(entry, EMPTY)
            return Head(entry, VectorClock(good.msg.pos), good.msg.origin)
        return Head(entry.seq, VectorClock(entry.msg.pos), entry.msg.origin)

    async def entry(self, channel: str, seq: int) -> StoredMessage:
        msg = await self.direct_get(channel, {"seq": seq})
        if msg is None:
            raise LogUnavailable(f"entry {seq} of {channel} vanished")
        entry = self._checked(channel, msg)
        if isinstance(entry, int):
            raise LogUnavailable(f"entry {seq} of {channel} is malformed")
        return entry.msg

    async def append(
        self,
        channel: str,
        msg: StoredMessage,
        msg_id: str,
        expected_seq: int,
        *,
        delivery: bool = False,
    ) -> Appended | None:
        """Append if the channel's head is still ``expected_seq``; None if it moved."""
        stream, subject = self.delivery_where(channel) if delivery else self.where(channel)
        headers = {
            "Nats-Msg-Id": msg_id,
            "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
        }
        body = logformat.encode_stored(msg)
        if self.written is not None:
            self.written.remember(body, msg)
        try:
            ack = await self.js.publish(subject, body, stream=stream, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                return None
            # Refused for what it is or where (store full, limits): nothing is stored, and
            # the caller says so as a temporary failure, not as a crash.
            raise LogUnavailable(_refusal(stream, exc.description)) from exc
        except nats.errors.Error as exc:  # timeout, no stream response, reconnecting …
            raise LogUnavailable(f"publish to {stream} failed: {exc!r}") from exc
        return Appended(ack.seq, bool(ack.duplicate))

    async def append_group(
        self, channel: str, entries: Sequence[tuple[StoredMessage, str]], expected_seq: int
    ) -> GroupAnswer:
        """Append entries (body, ``Nats-Msg-Id``) as one JetStream atomic batch, if the
        channel's head is still ``expected_seq``. Returns the last entry's sequence;
        "moved" if someone appended first, "duplicate" if an id is stored already (nothing
        of the group is stored in either case)."""
        return await self.append_groups([Group(channel, entries, expected_seq)])

    def batch_scope(self, channel: str) -> str:
        return self.where(channel)[0]

    async def append_groups(self, groups: Sequence[Group]) -> GroupAnswer:
        """The groups of channels of one stream as one atomic batch: the first entry of
        each channel expects that channel's head (JetStream checks every expectation
        against the stream as it was before the batch, and refuses the whole batch if
        one fails). One round trip for all of it: only the commit asks for an answer."""
        places = [self.where(group.channel) for group in groups]
        streams = {stream for stream, _ in places}
        if len(streams) != 1 or not all(group.entries for group in groups):
            raise ValueError("a batch is non-empty groups of channels of one stream")
        stream = streams.pop()
        batch = next(_batch_ids)
        members: list[BatchMember] = []
        for (_, entries, expected_seq), (_, subject_text) in zip(groups, places, strict=True):
            subject = subject_text.encode()
            first: int | None = expected_seq
            for entry, msg_id in entries:
                body = logformat.encode_stored(entry)
                if self.written is not None:
                    self.written.remember(body, entry)
                members.append(BatchMember(subject, msg_id, body, first))
                first = None
        commit = members.pop()
        commit_headers = batch_member_headers(
            batch, len(members) + 1, commit.msg_id, commit.expected_seq
        )
        commit_headers["Nats-Batch-Commit"] = "1"
        try:
            # One write for all but the commit; only the commit asks for an answer.
            await self._publish_members(batch, members)
            reply = await self.nc.request(
                commit.subject.decode(),
                commit.payload,
                timeout=self.timeout_s,
                headers=commit_headers,
            )
        except nats.errors.Error as exc:  # timeout, no responders, reconnecting, closed …
            raise LogUnavailable(f"batch to {stream} failed: {exc!r}") from exc
        try:
            answer = json.loads(reply.data)
        except ValueError as exc:
            raise LogUnavailable(f"batch to {stream}: unreadable answer {reply.data!r}") from exc
        error = answer.get("error") if isinstance(answer, dict) else None
        if error:
            code = error.get("err_code")
            if code == ERR_WRONG_LAST_SEQUENCE:
                return "moved"
            if code == ERR_BATCH_DUPLICATE_ID:
                return "duplicate"
            raise LogUnavailable(_refusal(stream, str(error.get("description"))))
        seq = answer.get("seq") if isinstance(answer, dict) else None
        if not isinstance(seq, int) or answer.get("count") != len(members) + 1:
            raise LogUnavailable(f"batch to {stream}: unexpected answer {answer!r}")
        return seq

    # --- reading the delivery log (resume, history, the live feed's start) ----------------

    def _checked(self, channel: str, msg: Msg) -> LoggedEntry | int:
        """The entry in a direct get's answer; for one that fails ``entry_checks``, its
        stream sequence (the entry is skipped, logged and counted, never delivered)."""
        try:
            seq = sequence_header(msg.headers or {}, "Nats-Sequence", minimum=1)
        except BadEntry as exc:  # the server always sets it: this is not JetStream talking
            raise LogUnavailable(f"answer on {msg.subject} is not an entry: {exc}") from None
        try:
            return LoggedEntry(seq, decode_checked(msg.data, self.regions))
        except BadEntry as exc:
            self.bad_entries.skipped("log", channel, seq, str(exc))
            return seq

    async def _good_before(self, channel: str, seq: int, *, delivery: bool) -> LoggedEntry | None:
        """The channel's last good entry before stream sequence ``seq`` (None: none)."""
        stream, subject = self.delivery_where(channel) if delivery else self.where(channel)
        for _ in range(MAX_BAD_RUN):
            if seq <= 1:
                return None
            req = {"multi_last": [subject], "up_to_seq": seq - 1}
            try:
                msg = await self.nc.request(
                    f"$JS.API.DIRECT.GET.{stream}",
                    json.dumps(req).encode(),
                    timeout=self.timeout_s,
                )
            except nats.errors.Error as exc:
                raise LogUnavailable(f"direct get on {stream} failed: {exc!r}") from exc
            status = (msg.headers or {}).get("Status")
            if status in ("404", "204"):  # nothing before it (204: an empty batch)
                return None
            if status:
                raise LogUnavailable(f"direct get on {stream} failed: {status}")
            entry = self._checked(channel, msg)
            if not isinstance(entry, int):
                return entry
            if entry >= seq:
                raise LogUnavailable(f"direct get on {stream} went forwards from {seq}")
            seq = entry
        raise LogUnavailable(f"more than {MAX_BAD_RUN} malformed entries in a row on {channel}")

    async def last_entry(self, channel: str) -> LoggedEntry | None:
        """The channel's last good entry."""
        msg = await self.direct_get(channel, None, delivery=True)
        if msg is None:
            return None
        entry = self._checked(channel, msg)
        if isinstance(entry, int):
            return await self._good_before(channel, entry, delivery=True)
        return entry

    async def entry_at_or_after(self, channel: str, seq: int) -> LoggedEntry | None:
        """The channel's first good entry at or after stream sequence ``seq``."""
        seq = max(seq, 1)
        for _ in range(MAX_BAD_RUN):
            msg = await self.direct_get(channel, {"seq": seq, "next_by_subj": ""}, delivery=True)
            if msg is None:
                return None
            entry = self._checked(channel, msg)
            if not isinstance(entry, int):
                return entry
            seq = entry + 1
        raise LogUnavailable(f"more than {MAX_BAD_RUN} malformed entries in a row on {channel}")

    async def read_range(
        self, channel: str, from_seq: int, upto_seq: int, skipped: list[int] | None = None
    ) -> AsyncIterator[list[LoggedEntry]]:
        """The channel's good entries in [from_seq, upto_seq]; the stream sequences of bad
        ones met on the way go to ``skipped`` (a gap fill counts them as read)."""
        seq = max(from_seq, 1)
        while seq <= upto_seq:
            bad: list[int] = []
            try:
                batch, read, last = await self._read_batch(channel, seq, upto_seq, bad)
            except nats.errors.Error as exc:  # timeout, reconnecting, closed …
                raise LogUnavailable(f"reading {channel} failed: {exc!r}") from exc
            if skipped is not None:
                skipped.extend(bad)
            if batch:
                yield batch
            if read < READ_BATCH:
                return
            seq = last + 1

    async def _read_batch(
        self, channel: str, seq: int, upto_seq: int, bad: list[int]
    ) -> tuple[list[LoggedEntry], int, int]:
        """One batched direct get (nats-server 2.11+): up to READ_BATCH entries from seq.
        Returns the good ones up to ``upto_seq``, how many the server sent, and the last
        one's stream sequence (bad entries count: the next batch starts after them)."""
        stream, subject = self.delivery_where(channel)
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        batch: list[LoggedEntry] = []
        read, last = 0, seq - 1
        try:
            req = {"seq": seq, "next_by_subj": subject, "batch": READ_BATCH}
            await self.nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(req).encode(), reply=inbox
            )
            while True:
                msg = await sub.next_msg(timeout=self.timeout_s)
                if (msg.headers or {}).get("Status"):  # 204 end of batch, 404 nothing (more)
                    return batch, read, last
                entry = self._checked(channel, msg)
                read += 1
                last = entry if isinstance(entry, int) else entry.seq
                if last > upto_seq:
                    continue
                if isinstance(entry, int):
                    bad.append(entry)
                else:
                    batch.append(entry)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
