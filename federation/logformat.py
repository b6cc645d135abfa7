"""The region log's format: subjects, stream names and the stored record.

Relays (which write local publishes and serve clients) and federation (which
reads peers' logs and appends remote messages) must agree on every byte here,
so it lives in one pure module that both import. Federation never imports the
relay; the relay imports this.

Subjects
    ``rly.v1.<region>.<namespace>.<token>``   a region's log for a channel (stream input)
    ``rlyl.v1.<region>.<namespace>.<token>``  JetStream's republish of what was stored:
                                             the relays' live feed
    ``rlyt.v1.<region>.<namespace>.<token>``  total-order namespaces only: the channel's
                                             delivery log, in the order every region shares
Streams
    ``RLY_<REGION>_<NAMESPACE>`` one per namespace rule, so each rule keeps its own
    retention (max age, max messages per channel). In a total-order namespace this
    causal log is what publishes and federation write; ``RLY_<REGION>_<NAMESPACE>_T``
    holds the total-order delivery log that relays read and republish.

A subject token cannot hold ``.``, so a channel's ``.`` is written ``%2E``
(``%`` is not allowed in channel names, which keeps the encoding injective).
"""

from __future__ import annotations

from typing import Final

import msgspec


class StoredMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """The body of one entry of a region's log for a channel.

    ``ts`` is the message's vector timestamp (fixed at its origin); ``pos`` is
    this region's applied vector after this entry, which is what a client
    resumes from. ``dup`` marks an entry that only advances the applied vector:
    the same publish id reached this region first from another origin (a client
    that failed over and republished), so subscribers here already have it.
    ``null`` marks a progress entry of a total-order channel: a region saying "I
    have passed everything before this"; never delivered.
    """

    id: str
    data: msgspec.Raw
    origin: str
    ts: dict[str, int]
    pos: dict[str, int]
    dup: bool = False
    null: bool = False

    @property
    def hidden(self) -> bool:
        """Advances positions but is never sent to subscribers."""
        return self.dup or self.null


_decoder: Final = msgspec.json.Decoder(StoredMessage)


def encode_stored(msg: StoredMessage) -> bytes:
    return msgspec.json.encode(msg)


def decode_stored(body: bytes) -> StoredMessage:
    return _decoder.decode(body)


def encode_token(channel: str) -> str:
    return channel.replace(".", "%2E")


def decode_token(token: str) -> str:
    return token.replace("%2E", ".")


def stream_name(region: str, namespace: str) -> str:
    return f"RLY_{region.upper()}_{namespace.upper()}"


def stream_subjects(region: str, namespace: str) -> str:
    return f"rly.v1.{region}.{namespace}.>"


def live_subjects(region: str, namespace: str) -> str:
    return f"rlyl.v1.{region}.{namespace}.>"


def store_subject(region: str, namespace: str, channel: str) -> str:
    return f"rly.v1.{region}.{namespace}.{encode_token(channel)}"


def live_subject(region: str, namespace: str, channel: str) -> str:
    return f"rlyl.v1.{region}.{namespace}.{encode_token(channel)}"


def total_stream_name(region: str, namespace: str) -> str:
    return f"RLY_{region.upper()}_{namespace.upper()}_T"


def total_subjects(region: str, namespace: str) -> str:
    return f"rlyt.v1.{region}.{namespace}.>"


def total_subject(region: str, namespace: str, channel: str) -> str:
    return f"rlyt.v1.{region}.{namespace}.{encode_token(channel)}"


def heartbeat_subject(region: str) -> str:
    """Core NATS, every second, on the region's own NATS (and forwarded by its peers)."""
    return f"rlyh.v1.{region}"


def channel_of(subject: str) -> str:
    """The channel of a log subject (``rly.v1.<region>.<namespace>.<token>``)."""
    return decode_token(subject.split(".", 4)[4])


def dedupe_key(channel: str, message_id: str) -> str:
    """``Nats-Msg-Id`` value: ids are scoped per channel, and neither part holds a space."""
    return f"{channel} {message_id}"
