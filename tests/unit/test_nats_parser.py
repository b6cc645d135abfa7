"""relaynet's NATS protocol parser (``federation.adapters.nats_client._MessageFirstParser``)
against nats-py's own: for any stream of server protocol lines — messages with and
without headers and replies, payloads holding CRLF, PING, PONG, +OK, -ERR, INFO and
malformed control lines — cut into reads anywhere, the same calls in the same order with
the same arguments, and the same error where nats-py raises one."""

from __future__ import annotations

import itertools

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.protocol.parser import Parser

from federation.adapters.nats_client import _HEAD_LINE, _MessageFirstParser

Call = tuple[object, ...]


class _Recorder:
    """What a parser calls on its client, written down (``direct``: the sids a direct
    subscription has, which only relaynet's parser asks about)."""

    def __init__(self, direct: frozenset[int] = frozenset()) -> None:
        self.calls: list[Call] = []
        self.direct = direct

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        direct = self._sync_direct(sid, headers)
        if direct is not None:
            # As NatsClient._process_msg: nats-py's own parser (after a PING, say) hands
            # a direct subscription's message over the same way.
            self._handle_direct(direct, data, headers)
            return
        self.calls.append(("msg", sid, bytes(subject), bytes(reply), data, headers))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("err", err))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: object) -> None:
        self.calls.append(("info", info))

    async def _error_cb(self, exc: Exception) -> None:
        raise AssertionError(exc)

    def _sync_direct(self, sid: int, headers: bytes | None) -> object | None:
        """As NatsClient's: a direct sid whose message needs no awaiting."""
        if headers and not headers.startswith(_HEAD_LINE):
            return None
        return sid if sid in self.direct else None

    def _handle_direct(self, direct: object, data: bytes, headers: bytes | None) -> None:
        self.calls.append(("direct", direct, data, headers))


_tokens = st.sampled_from([b"a", b"rlyl.v1.us-east.default.news", b"_INBOX.x.y", b"1", b"77"])
_payloads = st.sampled_from([b"", b"{}", b"x\r\ny", b"\r\n", b"MSG a 1 2\r\nhi", b"x" * 300])
_header_blocks = st.sampled_from(
    [
        _HEAD_LINE + b"Nats-Sequence: 5\r\n\r\n",
        _HEAD_LINE + b"\r\n",
        b"NATS/1.0 404 No Messages\r\n\r\n",
    ]
)


@st.composite
def _message(draw: st.DrawFn) -> bytes:
    subject = draw(_tokens)
    sid = draw(st.sampled_from([b"1", b"2", b"3", b"12"]))
    reply = draw(st.one_of(st.none(), _tokens))
    payload = draw(_payloads)
    space = draw(st.sampled_from([b" ", b" ", b"  ", b"\t"]))
    args = [subject, sid, *([reply] if reply is not None else [])]
    if draw(st.booleans()):
        block = draw(_header_blocks)
        head = [b"HMSG", *args, str(len(block)).encode(), str(len(block) + len(payload)).encode()]
        return space.join(head) + b"\r\n" + block + payload + b"\r\n"
    head = [b"MSG", *args, str(len(payload)).encode()]
    return space.join(head) + b"\r\n" + payload + b"\r\n"


_others = st.sampled_from(
    [b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Stale Connection'\r\n", b'INFO {"a": 1}\r\n',
     b"MSG a 1 x\r\n", b"HMSG a 1 9 3\r\nabc\r\n", b"MSG a b 2\r\nhi\r\n", b"MSG a 1 r\n5\r\n",
     b"HMSG a 1\r\n", b"MSGX\r\n", b"MSG\ta 1 2\r\nhi\r\n"]
)  # fmt: skip


async def _run(parser: Parser, reads: list[bytes]) -> tuple[list[Call], str | None]:
    recorder = parser.nc
    try:
        for data in reads:
            await parser.parse(data)
    except Exception as exc:
        return recorder.calls, f"{type(exc).__name__}: {exc}"
    return recorder.calls, repr(bytes(parser.buf))


def _reads(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=1500, deadline=None)
@given(
    items=st.lists(st.one_of(_message(), _message(), _message(), _others), max_size=12),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_same_calls_as_nats_py_for_any_stream(items: list[bytes], cuts: list[int]) -> None:
    reads = _reads(b"".join(items), cuts)
    expected = anyio.run(_run, Parser(_Recorder()), reads)  # type: ignore[arg-type]
    got = anyio.run(_run, _MessageFirstParser(_Recorder()), reads)  # type: ignore[arg-type]
    assert got == expected


@settings(max_examples=500, deadline=None)
@given(
    items=st.lists(st.one_of(_message(), _others), max_size=12),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_direct_subscriptions_get_what_nats_py_would_have_passed(
    items: list[bytes], cuts: list[int]
) -> None:
    """sid 1 and 12 are direct: their messages with plain (or no) headers are handled
    without a coroutine, with the payload and headers nats-py would have passed."""
    reads = _reads(b"".join(items), cuts)
    expected, end = anyio.run(_run, Parser(_Recorder()), reads)  # type: ignore[arg-type]
    wanted = [
        ("direct", call[1], call[4], call[5])
        if call[0] == "msg"
        and call[1] in (1, 12)
        and (not call[5] or bytes(call[5]).startswith(_HEAD_LINE))  # type: ignore[arg-type]
        else call
        for call in expected
    ]
    got = anyio.run(_run, _MessageFirstParser(_Recorder(frozenset({1, 12}))), reads)  # type: ignore[arg-type]
    assert got == (wanted, end)


@pytest.mark.anyio
async def test_a_burst_of_messages_is_read_in_place() -> None:
    block = _HEAD_LINE + b"Nats-Sequence: 9\r\n\r\n"
    one = b"HMSG s 1 %d %d\r\n%s{}\r\n" % (len(block), len(block) + 2, block)
    parser = _MessageFirstParser(_Recorder(frozenset({1})))  # type: ignore[arg-type]
    stream = one * 100
    for start in range(0, len(stream), 1000):
        await parser.parse(stream[start : start + 1000])
    assert parser.nc.calls == [("direct", 1, b"{}", block)] * 100  # type: ignore[attr-defined]
    assert parser.buf == bytearray()


@pytest.mark.anyio
async def test_a_handler_that_raises_leaves_only_what_was_not_handled() -> None:
    """nats-py deletes each message before dispatching it; so does this parser, for the
    read as a whole: a raising handler never makes an earlier message come again."""

    class Raising(_Recorder):
        async def _process_msg(
            self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            await super()._process_msg(sid, subject, reply, data, headers)
            if data == b"two":
                raise RuntimeError("handler failed")

    parser = _MessageFirstParser(Raising())  # type: ignore[arg-type]
    stream = b"MSG s 1 3\r\none\r\nMSG s 1 3\r\ntwo\r\nMSG s 1 5\r\nthree\r\n"
    with pytest.raises(RuntimeError):
        await parser.parse(stream)
    assert bytes(parser.buf) == b"MSG s 1 5\r\nthree\r\n"
    await parser.parse(b"")
    assert [call[4] for call in parser.nc.calls] == [b"one", b"two", b"three"]  # type: ignore[attr-defined]
