"""Capabilities: which operations a client may perform on which channels. Pure.

Theory of operation
-------------------
A capability maps a channel *pattern* to a set of operations:

* ``chat:lobby`` -- exactly that channel;
* ``chat:*``     -- every channel whose name starts with ``chat:`` (a trailing ``*``
  is the only wildcard; ``*`` alone matches every channel);

and the operations are ``subscribe``, ``publish``, ``history`` and ``presence``.
An operation on a channel is allowed when *any* pattern that matches the channel
grants it (grants add up; there are no denials). A client with no matching pattern
may do nothing on the channel.

Capabilities come from a token's ``caps`` claim, or from the config for anonymous
clients, as a mapping ``{pattern: [op, ...]}``; ``parse_capabilities`` checks it and
raises ``CapabilityError`` with a message that names the bad part (never echoing more
than a short prefix of what it was given).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from relay.core.channels import MAX_CHANNEL_LENGTH


class Op(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    HISTORY = "history"
    PRESENCE = "presence"


ALL_OPS: Final = frozenset(Op)
MAX_PATTERNS: Final = 256

# A channel name (relay.core.channels), or a prefix of one followed by '*'.
_PATTERN_RE: Final = re.compile(rf"[A-Za-z0-9_\-:@/=+!~.,]{{0,{MAX_CHANNEL_LENGTH}}}\*?")


class CapabilityError(ValueError):
    """A capability set that cannot be accepted (bad pattern, unknown op, wrong shape)."""


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Grant:
    """One pattern and what it allows."""

    pattern: str
    ops: frozenset[Op]

    def matches(self, channel: str) -> bool:
        if self.pattern.endswith("*"):
            return channel.startswith(self.pattern[:-1])
        return channel == self.pattern


def validate_pattern(pattern: object) -> str:
    if not isinstance(pattern, str):
        raise CapabilityError(f"capability pattern must be a string, not {_short(pattern)}")
    if not pattern:
        raise CapabilityError("capability pattern must not be empty")
    if not _PATTERN_RE.fullmatch(pattern):
        raise CapabilityError(
            f"bad capability pattern {_short(pattern)}: use a channel name, 'prefix*' or '*' "
            "(at most 200 channel characters; '*' only at the end)"
        )
    return pattern


def parse_ops(pattern: str, ops: object) -> frozenset[Op]:
    if isinstance(ops, str) or not isinstance(ops, list | tuple | frozenset | set):
        raise CapabilityError(
            f"capability {pattern!r}: operations must be a list of strings, not {_short(ops)}"
        )
    parsed: set[Op] = set()
    for op in ops:
        if not isinstance(op, str) or op not in ALL_OPS:
            known = ", ".join(sorted(ALL_OPS))
            raise CapabilityError(
                f"capability {pattern!r}: unknown operation {_short(op)} (known: {known})"
            )
        parsed.add(Op(op))
    return frozenset(parsed)


@dataclass(frozen=True)
class Capabilities:
    grants: tuple[Grant, ...] = ()

    @classmethod
    def everything(cls) -> Capabilities:
        return cls((Grant("*", ALL_OPS),))

    @classmethod
    def nothing(cls) -> Capabilities:
        return cls(())

    def allows(self, op: Op | str, channel: str) -> bool:
        # A loop, not any(generator): asked for every publish, and most tokens hold a grant
        # or two, where making the generator costs more than the checks.
        for grant in self.grants:  # noqa: SIM110
            if op in grant.ops and grant.matches(channel):
                return True
        return False

    def to_dict(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for grant in self.grants:
            out.setdefault(grant.pattern, [])
            out[grant.pattern] = sorted(set(out[grant.pattern]) | {op.value for op in grant.ops})
        return out


def parse_capabilities(raw: object) -> Capabilities:
    """``{pattern: [op, ...]}`` -> ``Capabilities``, or ``CapabilityError``."""
    if not isinstance(raw, Mapping):
        raise CapabilityError(
            f"capabilities must be an object {{pattern: [operations]}}, not {_short(raw)}"
        )
    if len(raw) > MAX_PATTERNS:
        raise CapabilityError(f"at most {MAX_PATTERNS} capability patterns")
    return Capabilities(
        tuple(Grant(validate_pattern(p), parse_ops(p, ops)) for p, ops in raw.items())
    )


@dataclass(frozen=True)
class Credentials:
    """Who a verified token says the client is, until when, and what it may do."""

    sub: str
    exp: float  # seconds since the epoch
    capabilities: Capabilities
    iat: float | None = None
    jti: str | None = None


class TokenRejected(Exception):
    """A token that is not acceptable; ``reason`` is short and safe to send to the client
    (never the token or a key). ``expired``: a fresh token would do."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired
