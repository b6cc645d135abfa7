"""A remote message's ack can outlive the link that read it: failing acks never stop the
writer (a link replaced while its messages waited made the relay crash)."""

from __future__ import annotations

import msgspec

from federation.adapters.region_writer import RegionWriter
from federation.channel_writes import ChannelWrites, Head
from federation.logformat import StoredMessage
from federation.vclock import EMPTY, VectorClock


def test_an_ack_whose_link_is_gone_does_not_stop_the_others() -> None:
    writes: ChannelWrites[object] = ChannelWrites("c", "us-east", total=False, max_buffered=10)
    writes.set_head(Head(0, EMPTY))
    sent: list[str] = []

    def gone() -> None:
        raise RuntimeError("the link's ack stream is closed")

    for n, ack in ((1, gone), (2, lambda: sent.append("second"))):
        ts = {"eu-west": n}
        writes.offer_remote(StoredMessage(f"m{n}", msgspec.Raw(b"1"), "eu-west", ts, ts), ack)
    writes.set_head(Head(2, VectorClock({"eu-west": 2}), "eu-west"))  # both applied elsewhere
    RegionWriter._send_acks(writes)  # type: ignore[arg-type]
    assert sent == ["second"]
    assert writes.acks_due == []
