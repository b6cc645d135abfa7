"""Hostile client frames for the fuzz run (``relaynet bench fuzz``), from a seed.

Pure: no I/O, no clock; the same seed and count give the same frames, so a failing
run replays. ``generate`` returns frames of these kinds (``KINDS``), each a text or
binary WebSocket frame:

``valid``          well-formed frames of every client op (subscribe, unsubscribe,
                   publish, history, ping, auth): the relay must still serve them
``mutated``        every op of ``relay.protocol.frames`` with one field dropped,
                   retyped, nulled, made huge or negative, or an unknown field added
``wrong_types``    JSON that is not an object, or an object whose ``op`` is not a string
``unknown_op``     an object with an op the protocol does not have
``bad_channel``    channels that are empty, too long, with spaces, wildcards,
                   control characters, lone surrogates or NATS subject tokens
``garbage_json``   truncated and malformed JSON, random bytes as text
``not_json``       text that is not JSON at all (including invalid UTF-8 as binary)
``deep``           deep nesting in ``data``, ``position`` or at the top
``big``            large frames below ``limits.max_frame_bytes`` (big data, many keys)
``oversized``      a frame above it: the relay closes the connection with 1009
``binary``         binary frames (the protocol has none): ``bad_request``
``churn``          subscribe then unsubscribe of one channel, back to back
``auth``           ``auth`` frames with garbage, expired-looking or unsigned tokens

Channels used are ``FUZZ_PREFIX`` plus a few letters, so the well-behaved client's
channel (another prefix) is never one the hostile frames publish to.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

FUZZ_PREFIX: Final = "fuzz:"
OPS: Final = ("subscribe", "unsubscribe", "publish", "history", "ping", "auth")
KINDS: Final = (
    "valid",
    "mutated",
    "wrong_types",
    "unknown_op",
    "bad_channel",
    "garbage_json",
    "not_json",
    "deep",
    "big",
    "oversized",
    "binary",
    "churn",
    "auth",
)
# How often each kind is drawn. Oversized frames cost a connection each (the relay closes
# it with 1009) and a megabyte of traffic: rare.
_WEIGHTS: Final = {
    "valid": 14,
    "mutated": 24,
    "wrong_types": 6,
    "unknown_op": 5,
    "bad_channel": 8,
    "garbage_json": 8,
    "not_json": 5,
    "deep": 4,
    "big": 1,
    "oversized": 0.15,
    "binary": 4,
    "churn": 8,
    "auth": 6,
}


@dataclass(frozen=True, slots=True)
class FuzzFrame:
    kind: str
    payload: str | bytes  # bytes: a binary WebSocket frame

    def __len__(self) -> int:
        return len(self.payload)


def _channel(rng: random.Random) -> str:
    return FUZZ_PREFIX + "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 3)))


def _id(rng: random.Random) -> str:
    return "f" + "".join(rng.choices(string.ascii_letters + string.digits, k=10))


def _position(rng: random.Random) -> dict[str, int]:
    return {rng.choice(("us-east", "fuzz", "eu-west")): rng.randint(0, 50)}


def valid_frame(op: str, rng: random.Random) -> dict[str, Any]:
    """A well-formed client frame of ``op``."""
    ref = rng.randint(1, 1_000_000)
    if op == "subscribe":
        frame: dict[str, Any] = {"op": op, "channel": _channel(rng)}
        if rng.random() < 0.3:
            frame["position"] = _position(rng) if rng.random() < 0.5 else {}
    elif op == "unsubscribe":
        frame = {"op": op, "channel": _channel(rng)}
    elif op == "publish":
        frame = {"op": op, "channel": _channel(rng), "data": {"n": rng.randint(0, 9)}}
        if rng.random() < 0.7:
            frame["id"] = _id(rng)
    elif op == "history":
        frame = {"op": op, "channel": _channel(rng), "limit": rng.randint(1, 50)}
    elif op == "ping":
        frame = {"op": op}
    else:
        frame = {"op": "auth", "token": _garbage_token(rng)}
    frame["ref"] = ref
    return frame


_WEIRD_VALUES: Final[tuple[Any, ...]] = (
    None,
    True,
    0,
    -1,
    2**63,
    -(2**70),
    1.5e308,
    "",
    "x" * 300,
    [],
    [1, "a", None],
    {},
    {"a": {"b": []}},
    "\u0000",
    "\ud800",
)


def _mutated(rng: random.Random) -> str:
    frame = valid_frame(rng.choice(OPS), rng)
    fields = [k for k in frame if k != "op"] or ["op"]
    field = rng.choice(fields)
    how = rng.randrange(6)
    if how == 0:
        del frame[field]
    elif how == 1:
        frame[field] = rng.choice(_WEIRD_VALUES)
    elif how == 2:
        frame["extra_" + rng.choice(("x", "op", "data", "__proto__"))] = rng.choice(_WEIRD_VALUES)
    elif how == 3:
        frame["op"] = rng.choice((frame["op"].upper(), frame["op"] + " ", None, 1, [frame["op"]]))
    elif how == 4:
        frame["position" if rng.random() < 0.5 else "before"] = rng.choice(
            ({"us-east": -5}, {"": 1}, {"r": 2**64}, {"r": "1"}, [1, 2], "now")
        )
        frame.setdefault("channel", _channel(rng))
    else:
        frame["limit" if rng.random() < 0.5 else "ref"] = rng.choice(_WEIRD_VALUES)
    return json.dumps(frame)


def _wrong_types(rng: random.Random) -> str:
    return rng.choice(
        (
            "[1, 2, 3]",
            '"a string"',
            "null",
            "true",
            "42",
            "{}",
            '{"op": 5}',
            '{"op": null}',
            '{"op": ["publish"]}',
            '{"op": {"op": "ping"}}',
            json.dumps([valid_frame(rng.choice(OPS), rng)]),
        )
    )


def _unknown_op(rng: random.Random) -> str:
    op = rng.choice(
        ("fly", "message", "ack", "connected", "SUBSCRIBE", "pub", "", "redirect", "__init__")
    )
    return json.dumps({"op": op, "channel": _channel(rng), "ref": rng.randint(0, 99)})


_BAD_CHANNELS: Final = (
    "",
    " ",
    "a b",
    "chat.*",
    "chat.>",
    ">",
    "*",
    "x" * 201,
    "tab\there",
    "nl\n",
    "\u0000",
    "\ud800lone",
    "rly.v1.us-east.chat.x",
    "$JS.API.STREAM.DELETE.RLY_FUZZ_DEFAULT",
    "../../etc/passwd",
)


def _bad_channel(rng: random.Random) -> str:
    op = rng.choice(("subscribe", "unsubscribe", "publish", "history"))
    frame = valid_frame(op, rng)
    frame["channel"] = rng.choice((*_BAD_CHANNELS, rng.randint(0, 9), None, ["a"], {"c": 1}))
    return json.dumps(frame)


def _garbage_json(rng: random.Random) -> str:
    text = json.dumps(valid_frame(rng.choice(OPS), rng))
    how = rng.randrange(4)
    if how == 0:
        return text[: rng.randrange(1, len(text))]
    if how == 1:
        at = rng.randrange(len(text))
        return text[:at] + rng.choice(("}", "{", '"', ",", ":", "\\", "]")) + text[at:]
    if how == 2:
        return text.replace('"', "'")
    return text + rng.choice(("}", ",", " garbage", "\x00"))


def _not_json(rng: random.Random) -> str | bytes:
    if rng.random() < 0.3:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    return rng.choice(
        (
            "hello",
            "",
            "GET / HTTP/1.1",
            "<xml/>",
            "op=publish&channel=x",
            "".join(rng.choices(string.printable, k=rng.randint(1, 200))),
            "\U0001f600" * 10,
        )
    )


def _deep(rng: random.Random) -> str:
    depth = rng.choice((64, 500, 5000, 50_000))
    nest = "[" * depth + "]" * depth
    where = rng.randrange(3)
    if where == 0:
        return '{"op": "publish", "channel": "' + _channel(rng) + '", "data": ' + nest + "}"
    if where == 1:
        objects = '{"a":' * depth + "1" + "}" * depth
        return (
            '{"op": "subscribe", "channel": "' + _channel(rng) + '", "position": ' + objects + "}"
        )
    return nest


def _big(rng: random.Random) -> str:
    if rng.random() < 0.5:  # over max_message_bytes: too_large
        data = "y" * rng.choice((70_000, 70_000, 200_000, 900_000))
        return json.dumps({"op": "publish", "channel": _channel(rng), "data": data})
    keys = {f"k{i}": i for i in range(rng.choice((1000, 10_000)))}
    return json.dumps({"op": "subscribe", "channel": _channel(rng), "position": keys})


def _oversized(rng: random.Random, max_frame_bytes: int) -> str:
    data = "z" * (max_frame_bytes + rng.randint(1, 4096))
    return json.dumps({"op": "publish", "channel": _channel(rng), "data": data})


def _binary(rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # a valid frame, sent as binary
        return json.dumps(valid_frame(rng.choice(OPS), rng)).encode()
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 512)))


def _garbage_token(rng: random.Random) -> str:
    def b64(value: object) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    how = rng.randrange(5)
    if how == 0:
        return "".join(rng.choices(string.ascii_letters + ".-_", k=rng.randint(0, 300)))
    if how == 1:  # unsigned ("alg": "none") with every capability
        claims = {"sub": "root", "caps": {"*": ["publish", "subscribe"]}, "exp": 4_000_000_000}
        return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    if how == 2:  # well-formed, forged signature, long expired
        claims = {"sub": "x", "exp": 1, "iat": 0}
        return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.{'A' * 43}"
    if how == 3:
        return "a.b.c"
    return "x" * rng.choice((10, 5000, 60_000))


def _auth(rng: random.Random) -> str:
    frame: dict[str, Any] = {"op": "auth", "token": _garbage_token(rng), "ref": rng.randint(1, 9)}
    if rng.random() < 0.2:
        frame["token"] = rng.choice(_WEIRD_VALUES)
    return json.dumps(frame)


def generate(seed: int, count: int, *, max_frame_bytes: int = 1_048_576) -> list[FuzzFrame]:
    """``count`` hostile frames from ``seed``; ``max_frame_bytes``: the relay's limit, which
    ``oversized`` frames exceed (and no other kind does)."""
    rng = random.Random(f"relaynet-fuzz-{seed}")
    makers: dict[str, Callable[[], str | bytes]] = {
        "valid": lambda: json.dumps(valid_frame(rng.choice(OPS), rng)),
        "mutated": lambda: _mutated(rng),
        "wrong_types": lambda: _wrong_types(rng),
        "unknown_op": lambda: _unknown_op(rng),
        "bad_channel": lambda: _bad_channel(rng),
        "garbage_json": lambda: _garbage_json(rng),
        "not_json": lambda: _not_json(rng),
        "deep": lambda: _deep(rng),
        "big": lambda: _big(rng),
        "oversized": lambda: _oversized(rng, max_frame_bytes),
        "binary": lambda: _binary(rng),
        "auth": lambda: _auth(rng),
    }
    kinds, weights = list(_WEIGHTS), list(_WEIGHTS.values())
    frames: list[FuzzFrame] = []
    while len(frames) < count:
        kind = rng.choices(kinds, weights)[0]
        if kind == "churn":
            channel = _channel(rng)
            for op in ("subscribe", "unsubscribe")[: count - len(frames)]:
                frames.append(FuzzFrame(kind, json.dumps({"op": op, "channel": channel})))
            continue
        payload = makers[kind]()
        if kind != "oversized" and len(payload) > max_frame_bytes:
            continue  # only oversized frames may cost the connection
        frames.append(FuzzFrame(kind, payload))
    return frames
