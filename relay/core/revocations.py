"""Revoked tokens: the set every relay checks tokens against. Pure.

Theory of operation
-------------------
An operator revokes (``relaynet token revoke``) either

* one token, by its ``jti``; or
* the tokens of one ``sub``: all of them, or only those issued before a time ``T``
  (``issued_before``, compared with the token's ``iat``). The second form is how one
  ends every current token of a user while letting the fresh ones they get next in.
  ``iat`` is in whole seconds, so a token issued in the same second as ``T`` counts as
  issued before it, and a token without ``iat`` cannot show that it is fresh: both are
  revoked.

A revocation is one ``Revocation`` record, stored in the issuing region's revocation
stream (``revocation_stream``/``revocation_subject``) and read by every relay of every
region into a ``RevocationSet``. Records are idempotent (keyed by their random ``id``),
so reading a stream again, or the same record by two paths, changes nothing.

A revocation only has to outlive the tokens it revokes. Relays do not know the longest
lifetime of the tokens an operator issues, so ``[auth] revocation_retention_s`` says it:
the stream keeps records that long (its max age), and ``RevocationSet.expire`` drops them
from memory at the same age. A token that is still valid after its revocation expired is
accepted again; hence the default (7 days) is far above usual token lifetimes.

What arrives from NATS is untrusted input: ``decode_revocation`` checks a record's shape
and raises ``BadRevocation`` with a short reason for anything else.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Final

import msgspec

from relay.core.capabilities import Credentials

MAX_FIELD_CHARS: Final = 256
#: A record is a few hundred bytes; anything near this is not one of ours.
MAX_RECORD_BYTES: Final = 4096


def revocation_stream(region: str) -> str:
    """The JetStream stream holding ``region``'s revocations (one subject)."""
    return f"RLYR_{region.upper()}"


def revocation_subject(region: str) -> str:
    return f"rlyr.v1.{region}"


class Revocation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One revocation, as stored (JSON). Exactly one of ``jti`` and ``sub``;
    ``issued_before`` (seconds since the epoch) only with ``sub``."""

    id: str  # random; also the stream's dedupe id
    at: float  # when it was revoked (seconds since the epoch): its age counts from here
    region: str  # where it was issued
    jti: str | None = None
    sub: str | None = None
    issued_before: float | None = None

    def matches(self, credentials: Credentials) -> bool:
        if self.jti is not None:
            return credentials.jti == self.jti
        if credentials.sub != self.sub:
            return False
        if self.issued_before is None:
            return True
        return credentials.iat is None or credentials.iat < self.issued_before

    def describe(self) -> str:
        """What it revokes, for logs and the operator (no secret in it)."""
        if self.jti is not None:
            return f"token jti={self.jti!r}"
        if self.issued_before is None:
            return f"every token of sub={self.sub!r}"
        return f"tokens of sub={self.sub!r} issued before {self.issued_before:.3f}"


class BadRevocation(ValueError):
    """A stored record that is not a revocation this relay can apply."""


_decoder: Final = msgspec.json.Decoder(Revocation)
encode_revocation: Final = msgspec.json.Encoder().encode


def decode_revocation(raw: bytes) -> Revocation:
    if len(raw) > MAX_RECORD_BYTES:
        raise BadRevocation(f"record of {len(raw)} bytes (at most {MAX_RECORD_BYTES})")
    try:
        rev = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRevocation(str(exc)[:120]) from None
    check_revocation(rev)
    return rev


def check_revocation(rev: Revocation) -> Revocation:
    """``rev`` if it is well-formed, else ``BadRevocation`` saying why."""
    if (rev.jti is None) == (rev.sub is None):
        raise BadRevocation("exactly one of jti and sub")
    if rev.issued_before is not None and rev.sub is None:
        raise BadRevocation("issued_before goes with sub")
    for name, text in (("id", rev.id), ("region", rev.region), ("jti", rev.jti), ("sub", rev.sub)):
        if text is not None and not 0 < len(text) <= MAX_FIELD_CHARS:
            raise BadRevocation(f"{name} must be 1-{MAX_FIELD_CHARS} characters")
    for name, number in (("at", rev.at), ("issued_before", rev.issued_before)):
        if number is not None and not math.isfinite(number):
            raise BadRevocation(f"{name} must be a finite number")
    return rev


@dataclass
class RevocationSet:
    """The revocations of every region, until they are ``retention_s`` old."""

    retention_s: float
    _ids: set[str] = field(default_factory=set)
    _by_jti: dict[str, list[Revocation]] = field(default_factory=dict)
    _by_sub: dict[str, list[Revocation]] = field(default_factory=dict)
    # (at, id, record): the oldest first, for expire().
    _ages: list[tuple[float, str, Revocation]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, rev: Revocation, now: float) -> bool:
        """Take ``rev``; False if it was known already or is past its retention."""
        if rev.id in self._ids or self._expired(rev, now):
            return False
        self._ids.add(rev.id)
        index, key = (self._by_jti, rev.jti) if rev.jti is not None else (self._by_sub, rev.sub)
        assert key is not None  # check_revocation: one of the two
        index.setdefault(key, []).append(rev)
        heapq.heappush(self._ages, (rev.at, rev.id, rev))
        return True

    def matches(self, credentials: Credentials) -> bool:
        """Whether a token with these claims is revoked."""
        if credentials.jti is not None:
            for rev in self._by_jti.get(credentials.jti, ()):
                if rev.matches(credentials):
                    return True
        return any(rev.matches(credentials) for rev in self._by_sub.get(credentials.sub, ()))

    def expire(self, now: float) -> int:
        """Forget revocations older than the retention; returns how many."""
        dropped = 0
        while self._ages and self._expired(self._ages[0][2], now):
            _, rev_id, rev = heapq.heappop(self._ages)
            self._ids.discard(rev_id)
            index, key = (self._by_jti, rev.jti) if rev.jti is not None else (self._by_sub, rev.sub)
            assert key is not None
            kept = [r for r in index.get(key, ()) if r.id != rev_id]
            if kept:
                index[key] = kept
            else:
                index.pop(key, None)
            dropped += 1
        return dropped

    def _expired(self, rev: Revocation, now: float) -> bool:
        return rev.at + self.retention_s < now
