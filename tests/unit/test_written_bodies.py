"""The live feed's memory of what this process stored: each body found once, bounded."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from federation.logformat import StoredMessage, encode_stored
from federation.written_bodies import WrittenBodies


def _entry(n: int) -> StoredMessage:
    ts = {"us-east": n}
    return StoredMessage(f"id-{n}", msgspec.Raw(b'"x"'), "us-east", ts, ts)


def test_a_body_read_back_is_the_entry_it_encodes_once() -> None:
    written = WrittenBodies(limit=4)
    entry = _entry(1)
    body = encode_stored(entry)
    written.remember(body, entry)
    assert written.take(bytes(bytearray(body))) is entry  # equal bytes, another object
    assert written.take(body) is None  # read back once
    assert written.take(encode_stored(_entry(2))) is None  # never written here


@given(st.lists(st.integers(0, 40), max_size=300), st.integers(1, 16))
def test_bounded_and_the_latest_limit_are_kept(numbers: list[int], limit: int) -> None:
    written = WrittenBodies(limit=limit)
    for n in numbers:
        written.remember(encode_stored(_entry(n)), _entry(n))
        assert len(written) <= 2 * limit
    latest = list(dict.fromkeys(reversed(numbers)))[:limit]  # distinct, newest first
    for n in latest:
        assert written.take(encode_stored(_entry(n))) == _entry(n)
