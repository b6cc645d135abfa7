"""The NATS client every relaynet process uses: nats-py's, with a faster header parser
and a way to publish many messages at once.

Every message a relay reads from JetStream (its live feed, federation, acks of atomic
batches) carries 6 to 9 headers, and nats-py parses them in Python with a generator per
header name: a fifth of a relay's CPU at a few thousand publishes a second (py-spy). This
parser gives the same result for every header block (a test compares the two on random
input) at about a third of the cost. nats-py looks the parser up on the instance, so
overriding it is the whole change; tests/unit/test_nats_client.py fails if that ever
stops being true.

``publish_many`` writes the messages of an atomic batch (all but its commit) as one
buffer: nats-py's ``publish`` builds and validates headers with a regex per key, and
queues a flush, per message (15% of a relay's CPU). Our headers are ASCII tokens and
values we made and checked (channel names and ids are validated), so they are written as
they are; sizes are checked against the server's limit like nats-py does.

``_connect_to_server`` closes the socket of a failed attempt before the next one: nats-py
reuses its transport object and overwrote the stream of an attempt whose TCP connect
succeeded but whose INFO never came (a frozen nats-server still accepts connections), so a
relay leaked one socket per attempt for as long as its NATS stayed frozen.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client

_NAME_HAS_SPACE = re.compile(r"\s")


class NatsClient(Client):
    async def _connect_to_server(self, s: Any) -> None:
        if self._transport is not None:
            self._transport.close()  # type: ignore[no-untyped-call]  # the last attempt's socket
        await super()._connect_to_server(s)

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue  # not a token: skipped, as nats-py does
            if _NAME_HAS_SPACE.search(key) is not None:
                continue
            out[key] = value.strip().decode("utf-8", "replace")
        return out

    async def publish_many(
        self, subject: str, messages: Sequence[tuple[dict[str, str], bytes]]
    ) -> None:
        """Publish (headers, payload) pairs to ``subject`` in order, as one write."""
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if not self.is_connected or self.is_draining_pubs:
            # nats-py would buffer while reconnecting; a batch half-buffered is worth less
            # than a clear failure that the writer retries whole.
            raise nats.errors.ConnectionReconnectingError
        parts: list[bytes] = []
        target = subject.encode()
        for headers, payload in messages:
            block = (
                b"NATS/1.0\r\n"
                + b"".join(
                    b"%s: %s\r\n" % (key.encode(), value.encode()) for key, value in headers.items()
                )
                + b"\r\n"
            )
            total = len(block) + len(payload)
            if total > self._max_payload:
                raise nats.errors.MaxPayloadError
            parts.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (target, len(block), total, block, payload))
            self.stats["out_msgs"] += 1
            self.stats["out_bytes"] += len(payload)
        await self._send_command(b"".join(parts))
