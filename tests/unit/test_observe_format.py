"""The pure parts of "Observe": the histogram, error-code and route labels, log formats,
and the rows ``relaynet status`` builds from what relays answer."""

from __future__ import annotations

import io
import json
import logging
import sys

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from federation.vclock import VectorClock
from relay.adapters.stats import RelayStats, error_code, route_label
from relay.core.histogram import MESSAGE_BUCKETS_S, Histogram
from relay.logging_setup import ContextFilter, JsonFormatter, TextFormatter, redact
from relay.protocol.errors import ErrorCode
from relay.protocol.frames import ack_frame, error_frame
from relay.simulate.progress import StartupProgress
from relay.status_view import (
    RelaySnapshot,
    Snapshot,
    link_rows,
    parse_metrics,
    region_rows,
    relay_rows,
    render,
)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@given(st.lists(st.floats(min_value=-1.0, max_value=100.0, allow_nan=False)))
def test_histogram_buckets_are_cumulative_and_complete(values: list[float]) -> None:
    h = Histogram()
    for v in values:
        h.observe(v)
    exported = h.cumulative()
    assert exported[-1] == ("+Inf", len(values))
    counts = [n for _, n in exported]
    assert counts == sorted(counts)
    for (le, n), bound in zip(exported, MESSAGE_BUCKETS_S, strict=False):
        assert float(le) == bound
        assert n == sum(1 for v in values if v <= bound)
    assert abs(h.sum_s - sum(values)) < 1e-6


def test_error_codes_are_read_from_error_frames_only() -> None:
    frame = error_frame(ErrorCode.RATE_LIMITED, 'a "code":"x" inside', 'ref"code":"y"')
    assert error_code(frame) == "rate_limited"
    assert error_code(ack_frame(1, "id", "chat:a", VectorClock({"us-east": 1}))) is None
    stats = RelayStats(lambda channel: channel.partition(":")[0])
    stats.reply(frame)
    stats.http_answered("/v1/channels/chat%3Aa/messages", "POST", 429, frame)
    stats.acked("chat:a", 0.002)
    assert stats.errors["rate_limited"] == 2 and stats.errors["bad_json"] == 0
    assert stats.http[("/v1/channels/{channel}/messages", "POST", 429)] == 1
    assert stats.published == {"chat": 1} and stats.publish_ack.count == 1


def test_route_labels_stay_bounded() -> None:
    assert route_label("/v1/ready") == "/v1/ready"
    assert route_label("/v1/channels/room%2F1/presence") == "/v1/channels/{channel}/presence"
    assert route_label("/wp-admin/../etc/passwd") == "other"


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("relaynet.conn", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    ContextFilter("us-east", "us-east-2").filter(record)
    return record


def test_json_lines_carry_where_and_never_a_token() -> None:
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        record = _record(f"refused {JWT}", connection="us-east-2-7-ab")
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["region"] == "us-east" and parsed["relay"] == "us-east-2"
    assert parsed["connection"] == "us-east-2-7-ab"
    assert parsed["level"] == "WARNING" and parsed["logger"] == "relaynet.conn"
    assert parsed["message"] == "refused <token>"
    assert "ValueError" in parsed["exception"] and JWT not in line
    assert "connection" not in json.loads(JsonFormatter().format(_record("plain")))


def test_text_lines_name_region_relay_and_connection() -> None:
    text = TextFormatter().format(_record("hello", connection="c-1"))
    assert "us-east/us-east-2 [c-1] relaynet.conn: hello" in text
    assert "us-east/us-east-2 relaynet.conn: hello" in TextFormatter().format(_record("hello"))
    assert redact(f"?token={JWT}&x=1") == "?token=<token>&x=1"


METRICS_EAST = """\
# TYPE relaynet_connections gauge
relaynet_connections{region="us-east",relay="us-east-1"} 3.0
# TYPE relaynet_subscriptions gauge
relaynet_subscriptions{region="us-east",relay="us-east-1"} 5.0
# TYPE relaynet_messages_published counter
relaynet_messages_published_total{namespace="chat",region="us-east",relay="us-east-1"} %d
# TYPE relaynet_messages_delivered counter
relaynet_messages_delivered_total{namespace="chat",region="us-east",relay="us-east-1"} %d
# TYPE relaynet_federation_link_up gauge
relaynet_federation_link_up{peer="eu-west",region="us-east",relay="us-east-1"} 1.0
# TYPE relaynet_federation_link_received counter
relaynet_federation_link_received_total{peer="eu-west",region="us-east",relay="us-east-1"} %d
# TYPE relaynet_federation_link_pending_messages gauge
relaynet_federation_link_pending_messages{peer="eu-west",region="us-east",relay="us-east-1"} 7.0
# TYPE relaynet_federation_link_lag_seconds gauge
relaynet_federation_link_lag_seconds{peer="eu-west",region="us-east",relay="us-east-1"} 1.5
"""
READY = {
    "status": "ok", "nats": True, "jetstream": True, "draining": False,
    "links": {"eu-west": "up"}, "region": "us-east", "relay": "us-east-1",
}  # fmt: skip


def _snap(at: float, published: int, delivered: int, received: int) -> Snapshot:
    east = RelaySnapshot(
        "ws://e/v1/ws", READY, 200, parse_metrics(METRICS_EAST % (published, delivered, received))
    )
    gone = RelaySnapshot("ws://w/v1/ws", None, None, error="connection refused",
                         listed_region="eu-west", listed_relay="eu-west-1")  # fmt: skip
    return Snapshot(at, "ws://e/v1/ws", {"us-east": "up", "eu-west": "down"}, (east, gone))


def test_status_rows_and_rates() -> None:
    before, now = _snap(10.0, 100, 1000, 40), _snap(12.0, 120, 1400, 50)
    first = relay_rows(before)
    assert first[1].published_per_s is None  # one round: no rate yet
    east, west = sorted(relay_rows(now, before), key=lambda r: r.region, reverse=True)
    assert (east.region, east.relay, east.health, east.nats) == ("us-east", "us-east-1", "ready",
                                                                  "ok")  # fmt: skip
    assert east.connections == 3 and east.subscriptions == 5
    assert east.published_per_s == 10.0 and east.delivered_per_s == 200.0
    assert (west.relay, west.health, west.connections) == ("eu-west-1", "unreachable", None)
    regions = {r.region: r for r in region_rows(now)}
    assert (regions["eu-west"].health, regions["eu-west"].relays_ready) == ("down", 0)
    assert (regions["us-east"].connections, regions["us-east"].relays_ready) == (3, 1)
    (link,) = link_rows(now, before)
    assert (link.region, link.peer, link.state, link.pending, link.lag_s) == (
        "us-east",
        "eu-west",
        "up",
        7,
        1.5,
    )
    assert link.received_per_s == 5.0
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(render(now, before))
    out = console.export_text()
    for text in ("us-east-1", "unreachable", "200.0", "1.50", "federation links"):
        assert text in out, out


def test_startup_progress_lines_when_piped() -> None:
    out = io.StringIO()
    progress = StartupProgress(stream=out)
    progress.step("checking the Docker engine")
    progress.tick()  # piped: no in-place counter
    progress.step("starting 3 regions")
    progress.done()
    progress.done()
    assert out.getvalue().splitlines() == [
        "relaynet simulate: checking the Docker engine ...",
        "relaynet simulate: starting 3 regions ...",
    ]
