"""Appending to this region's log: compare-and-set on the channel's subject.

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

import itertools
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from federation import logformat
from federation.adapters.nats_client import NatsClient
from federation.channel_writes import Head
from federation.logformat import StoredMessage
from federation.settings import RegionSettings
from federation.vclock import EMPTY, VectorClock

# Batch ids only need to be unique among this server's batches in flight: a random
# process prefix and a counter, without a system call per batch (uuid4 was 4% of a publish).
_batch_prefix = secrets.token_hex(8)
_batch_ids = (f"{_batch_prefix}{n:x}" for n in itertools.count())

ERR_WRONG_LAST_SEQUENCE = 10071
ERR_BATCH_DUPLICATE_ID = 10201


class LogUnavailable(Exception):
    """NATS/JetStream did not answer in time; the operation may be retried."""


@dataclass(frozen=True)
class Appended:
    seq: int
    duplicate: bool  # the id was already in the log; nothing was stored


class RegionLog:
    def __init__(
        self,
        nc: Client,
        region: str,
        namespace_of: Callable[[str], str],
        timeout_s: float = 5.0,
        total_namespaces: frozenset[str] = frozenset(),
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout_s)
        self.region = region
        self.namespace_of = namespace_of
        self.timeout_s = timeout_s
        self.total_namespaces = total_namespaces

    async def _publish_many(
        self, subject: str, messages: list[tuple[dict[str, str], bytes]]
    ) -> None:
        if not messages:
            return
        if isinstance(self.nc, NatsClient):
            await self.nc.publish_many(subject, messages)
            return
        for headers, body in messages:  # a plain nats-py client (tools, tests)
            await self.nc.publish(subject, body, headers=headers)

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
        seq = int((msg.headers or {})["Nats-Sequence"])
        stored = logformat.decode_stored(msg.data)
        return Head(seq, VectorClock(stored.pos), stored.origin)

    async def entry(self, channel: str, seq: int) -> StoredMessage:
        msg = await self.direct_get(channel, {"seq": seq})
        if msg is None:
            raise LogUnavailable(f"entry {seq} of {channel} vanished")
        return logformat.decode_stored(msg.data)

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
        try:
            ack = await self.js.publish(
                subject, logformat.encode_stored(msg), stream=stream, headers=headers
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                return None
            # Refused for what it is or where (store full, limits): nothing is stored, and
            # the caller says so as a temporary failure, not as a crash.
            raise LogUnavailable(f"{stream} refused the append: {exc.description}") from exc
        except nats.errors.Error as exc:  # timeout, no stream response, reconnecting …
            raise LogUnavailable(f"publish to {stream} failed: {exc!r}") from exc
        return Appended(ack.seq, bool(ack.duplicate))

    async def append_group(
        self, channel: str, entries: Sequence[tuple[StoredMessage, str]], expected_seq: int
    ) -> int | Literal["moved", "duplicate"]:
        """Append entries (body, ``Nats-Msg-Id``) as one JetStream atomic batch, if the
        channel's head is still ``expected_seq``. Returns the last entry's sequence;
        "moved" if someone appended first, "duplicate" if an id is stored already (nothing
        of the group is stored in either case).

        One round trip for the whole group: only the commit asks for an answer.
        """
        stream, subject = self.where(channel)
        batch = next(_batch_ids)
        headed: list[tuple[dict[str, str], bytes]] = []
        for number, (entry, msg_id) in enumerate(entries, 1):
            headers = {
                "Nats-Batch-Id": batch,
                "Nats-Batch-Sequence": str(number),
                "Nats-Msg-Id": msg_id,
            }
            if number == 1:  # checked against the stream as it was before the batch
                headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_seq)
            headed.append((headers, logformat.encode_stored(entry)))
        commit_headers, commit_body = headed.pop()
        commit_headers["Nats-Batch-Commit"] = "1"
        try:
            # One write for all but the commit; only the commit asks for an answer.
            await self._publish_many(subject, headed)
            reply = await self.nc.request(
                subject, commit_body, timeout=self.timeout_s, headers=commit_headers
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
            raise LogUnavailable(f"batch to {stream} refused: {error.get('description')}")
        seq = answer.get("seq") if isinstance(answer, dict) else None
        if not isinstance(seq, int) or answer.get("count") != len(entries):
            raise LogUnavailable(f"batch to {stream}: unexpected answer {answer!r}")
        return seq


def region_log_for(nc: Client, settings: RegionSettings) -> RegionLog:
    """The region log as the region's settings describe it (relays and federation must agree)."""
    return RegionLog(
        nc,
        settings.region,
        lambda channel: settings.namespace_for(channel).name,
        settings.connect_timeout_s,
        settings.total_order_namespaces,
    )
