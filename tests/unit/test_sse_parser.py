"""The event-stream parser: what browsers' EventSource does with the same bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.client.sse import EventParser, SseEvent

STREAM = (
    b"retry: 1000\n\n"
    b": ping\n\n"
    b'id: A\nevent: subscribed\ndata: {"x":1}\n\n'
    b"data: line1\r\ndata: line2\r\n\r\n"
    b"event: end\ndata: {}\n\n"
    b"id\n\n"  # an empty id field resets nothing without data (dispatch needs data)
)
EXPECTED = [
    SseEvent("subscribed", b'{"x":1}', "A"),
    SseEvent("message", b"line1\nline2", "A"),  # the last id carries over
    SseEvent("end", b"{}", "A"),
]


def test_events_comments_and_retry() -> None:
    assert EventParser().feed(STREAM) == EXPECTED


@given(st.lists(st.integers(1, len(STREAM) - 1), unique=True).map(sorted))
def test_any_split_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    parser = EventParser()
    events = []
    for start, end in zip([0, *cuts], [*cuts, len(STREAM)], strict=True):
        events += parser.feed(STREAM[start:end])
    assert events == EXPECTED
