"""relaynet's NATS client parses headers exactly as nats-py does, only faster (the whole
block, or only the names a direct subscription reads); and nats-py still asks the instance
for the parser (else the override would do nothing)."""

from __future__ import annotations

import inspect

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from federation.adapters.nats_client import (
    NatsClient,
    batch_member_block,
    batch_member_headers,
    header_names,
    pick_headers,
)

_pieces = st.sampled_from(
    [b"Nats-Sequence", b"Nats-Msg-Id", b"a b", b" ", b"\t", b":", b": ", b"\r\n", b"x",
     b"12", b"\xe2\x82", b"\xff", "é".encode(), b"\x1c", b"\x0b", b"Status", b"  v  "]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(_pieces, max_size=30).map(b"".join))
def test_same_result_as_nats_py_for_any_header_block(raw: bytes) -> None:
    assert NatsClient._parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_nats_py_looks_the_parser_up_on_the_instance() -> None:
    source = inspect.getsource(Client._process_headers)
    assert "self._parse_header_lines(" in source
    assert NatsClient._parse_header_lines is not Client._parse_header_lines


def test_a_real_header_block() -> None:
    raw = (
        b"Nats-Batch-Id: 93aa\r\nNats-Msg-Id: chat:x c7-1042\r\nNats-Stream: RLY_US-EAST\r\n"
        b"Nats-Sequence: 123456\r\nNats-Last-Sequence: 123455\r\n\r\n"
    )
    assert NatsClient._parse_header_lines(raw) == {
        "Nats-Batch-Id": "93aa",
        "Nats-Msg-Id": "chat:x c7-1042",
        "Nats-Stream": "RLY_US-EAST",
        "Nats-Sequence": "123456",
        "Nats-Last-Sequence": "123455",
    }


_NAMES = header_names(("Nats-Sequence", "Nats-Last-Sequence", "Nats-Time-Stamp"))
_header_pieces = st.sampled_from(
    [b"Nats-Sequence", b"Nats-Last-Sequence", b"Nats-Time-Stamp", b"Nats-Msg-Id", b":",
     b": ", b"\r\n", b"\r", b"\n", b" ", b"\t", b"12", b"x", b"\xff", "é".encode(), b"\x0b"]
)  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(_header_pieces, max_size=40).map(b"".join))
def test_picked_headers_are_what_the_full_parse_holds_for_those_names(raw: bytes) -> None:
    parsed = Client._parse_header_lines(raw)
    wanted = {n: parsed[n] for n in _NAMES.values() if n in parsed}
    assert pick_headers(raw, _NAMES) == wanted


def test_a_name_spoofed_in_another_line_is_read_as_nats_py_reads_it() -> None:
    # The later line wins in nats-py's dict; a search that stopped at the first would not.
    raw = b"Nats-Sequence: 1\r\nX: y\r\n Nats-Sequence : 99\r\n\r\n"
    assert pick_headers(raw, _NAMES) == {"Nats-Sequence": "99"}
    assert Client._parse_header_lines(raw)["Nats-Sequence"] == "99"


@settings(max_examples=300, deadline=None)
@given(
    number=st.integers(1, 1000),
    msg_id=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
    expected=st.integers(0, 2**63),
)
def test_a_batch_member_block_holds_the_headers_the_plain_client_sends(
    number: int, msg_id: str, expected: int
) -> None:
    """publish_batch_members formats each block itself; what nats-py reads back from it is
    what a plain nats-py client is given for the same member (``batch_member_headers``)."""
    block = batch_member_block(b"b7f3", number, msg_id, expected)
    assert block.startswith(b"NATS/1.0\r\n") and block.endswith(b"\r\n\r\n")
    parsed = Client._parse_header_lines(block[len(b"NATS/1.0\r\n") :])
    assert parsed == batch_member_headers("b7f3", number, msg_id, expected)
