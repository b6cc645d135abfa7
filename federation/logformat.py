"""The region log's format: subjects, stream names, the stored record and the beat.

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

Beats
    ``rlyh.v1.<region>`` (core NATS, every second, on the region's own NATS; the
    instance serving a peer's link forwards that peer's beats): a ``Beat``. Federation's
    says the region is alive; a relay's also says where clients reach it and whether it
    takes them. Whoever reads one from NATS decodes it with ``decode_beat`` and ignores
    what that refuses: beats cross regions, and nothing read from NATS is trusted blindly.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final, Literal

import msgspec


class StoredMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """The body of one entry of a region's log for a channel.

    ``ts`` is the message's vector timestamp (fixed at its origin); ``pos`` is
    this region's applied vector after this entry, which is what a client
    resumes from. ``dup`` marks an entry that only advances the applied vector:
    the same publish id reached this region first from another origin (a client
    that failed over and republished), so subscribers here already have it.
    ``null`` marks a progress entry of a total-order channel: a region saying "I
    have passed everything before this"; never delivered. ``by`` is the publisher's
    scope, set by the relay from the token's ``sub`` (never by the client; absent for
    anonymous publishers): ids are deduplicated per channel and scope (``entry_key``).
    It is never sent to subscribers.
    """

    id: str
    data: msgspec.Raw
    origin: str
    ts: dict[str, int]
    pos: dict[str, int]
    dup: bool = False
    null: bool = False
    by: str | None = None

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


# A peer's beats are forwarded as they are: bound what one can make a reader hold.
MAX_BEAT_BYTES: Final = 4096
MAX_RELAY_ID_LENGTH: Final = 128
MAX_URL_LENGTH: Final = 2048

RelayState = Literal["up", "full", "draining"]


class Beat(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One beat on ``heartbeat_subject(region)``.

    The subject names the region; ``region`` and ``t`` (the sender's wall clock) are
    informational. A relay's beat also has ``relay`` (its id), ``url`` (where clients
    reach it) and ``state``: ``up`` (takes connections; also when absent), ``full`` (at
    its connection limit) or ``draining`` (shutting down).
    """

    region: str = ""
    relay: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_RELAY_ID_LENGTH)] | None = None
    url: Annotated[str, msgspec.Meta(max_length=MAX_URL_LENGTH)] | None = None
    state: RelayState | None = None
    t: float = 0.0


class BadBeat(ValueError):
    """A payload on a beat subject that is not a beat."""


_beat_decoder: Final = msgspec.json.Decoder(Beat)


def encode_beat(beat: Beat) -> bytes:
    return msgspec.json.encode(beat)


def decode_beat(payload: bytes) -> Beat:
    """The beat in ``payload``; raises ``BadBeat`` (only) for anything else."""
    if len(payload) > MAX_BEAT_BYTES:
        raise BadBeat(f"{len(payload)} bytes; a beat has at most {MAX_BEAT_BYTES}")
    try:
        return _beat_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise BadBeat(str(exc)) from None


def channel_of(subject: str) -> str:
    """The channel of a log subject (``rly.v1.<region>.<namespace>.<token>``)."""
    return decode_token(subject.split(".", 4)[4])


def dedupe_key(channel: str, message_id: str, by: str | None = None) -> str:
    """``Nats-Msg-Id`` value of a publish: ids are scoped per channel and per publisher.

    A publisher with a scope (the token's ``sub``) has its own ids: another client
    cannot publish one first and have this one acked as its duplicate. Anonymous
    publishers (``by`` None) share one scope per channel, so that a client's retry is
    recognised whichever relay of whichever region it reaches; their SDKs make ids
    unguessable instead. The scope goes in as a digest: a ``sub`` may hold spaces,
    line breaks or kilobytes, none of which belong in a NATS header. Neither the
    channel nor the id holds a space, and the parts after them (none, a digest in hex,
    ``PROGRESS_SCOPE``) never look alike, so the key is injective.
    """
    if by is None:
        return f"{channel} {message_id}"
    return f"{channel} {message_id} {_scope_digest(by)}"


# No digest is "~": a scope no publisher can have, for a region's own progress entries
# (their ids are printable ASCII like any client's, so a client could send one first).
PROGRESS_SCOPE: Final = "~"


def _scope_digest(by: str) -> str:
    # 128 bits: finding two subs with one digest takes ~2**64 work and both tokens.
    return hashlib.sha256(by.encode()).hexdigest()[:32]


def entry_key(channel: str, msg: StoredMessage) -> str:
    """``Nats-Msg-Id`` of an entry, computed the same way by every region (its origin
    appending it, peers applying it) and the total-order dedupe id of a publish."""
    if msg.null:
        return f"{channel} {msg.id} {PROGRESS_SCOPE}"
    return dedupe_key(channel, msg.id, msg.by)
