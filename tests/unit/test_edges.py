"""The ``GET /v1/edges`` document: what a relay writes is what the SDK (and the browser
client, which reads the same JSON) reads, field for field and byte for byte."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from msgspec import UNSET

from federation import logformat
from federation.logformat import Beat
from relay.adapters.directory import EdgeDirectory
from relay.harness.toolkit import relay_config
from relay.protocol.edges import Edge, EdgesDocument, decode_edges

EAST_URL = "ws://10.0.0.1:8701/v1/ws"
SIBLING_URL = "ws://10.0.0.2:8701/v1/ws"
WEST_URL = "wss://eu.example.com/v1/ws"

DOCUMENT = EdgesDocument(
    region="us-east",
    relay="us-1",
    edges=[
        Edge(region="us-east", url=EAST_URL, health="up", relay="us-1"),
        Edge(region="us-east", url=SIBLING_URL, health="up", relay="us-2"),
        Edge(region="eu-west", url=WEST_URL, health="down", last_heartbeat_s_ago=4.25),
        Edge(region="ap-south", url="ws://ap/v1/ws", health="unknown", last_heartbeat_s_ago=None),
    ],
)
# Each row has the fields of its kind only; "last_heartbeat_s_ago": null is sent.
DOCUMENT_JSON = (
    b'{"region":"us-east","relay":"us-1","edges":['
    b'{"region":"us-east","url":"ws://10.0.0.1:8701/v1/ws","health":"up","relay":"us-1"},'
    b'{"region":"us-east","url":"ws://10.0.0.2:8701/v1/ws","health":"up","relay":"us-2"},'
    b'{"region":"eu-west","url":"wss://eu.example.com/v1/ws","health":"down",'
    b'"last_heartbeat_s_ago":4.25},'
    b'{"region":"ap-south","url":"ws://ap/v1/ws","health":"unknown",'
    b'"last_heartbeat_s_ago":null}]}'
)


def test_the_document_round_trips() -> None:
    assert msgspec.json.encode(DOCUMENT) == DOCUMENT_JSON
    assert decode_edges(DOCUMENT_JSON) == DOCUMENT
    assert decode_edges(DOCUMENT_JSON.decode()) == DOCUMENT


def test_an_older_relays_document_reads_with_the_defaults() -> None:
    doc = decode_edges(b'{"region":"us-east","edges":[{"region":"us-east","url":"ws://a/v1/ws"}]}')
    assert doc.relay is None
    assert doc.edges == [Edge(region="us-east", url="ws://a/v1/ws", health="unknown")]
    assert doc.edges[0].relay is UNSET and doc.edges[0].last_heartbeat_s_ago is UNSET


def test_a_newer_relays_fields_and_healths_still_decode() -> None:
    raw = b'{"region":"r","edges":[{"region":"r","url":"u","health":"sleepy","new":1}],"x":2}'
    assert decode_edges(raw).edges[0].health == "sleepy"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"edges":[]}',  # no region
        b'{"region":"r","edges":[{"region":"r"}]}',  # a row without its url
        b'{"region":"r","edges":[{"region":"r","url":7}]}',
    ],
)
def test_what_is_not_a_document(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_edges(body)


class _Nats:
    """Just enough of a NATS client for ``EdgeDirectory.start``: it hands over the
    heartbeat callback, which the test then calls with beats."""

    def __init__(self) -> None:
        self.heard: Any = None

    async def subscribe(self, subject: str, cb: Any) -> None:
        self.heard = cb


class _Msg:
    def __init__(self, beat: Beat) -> None:
        self.subject = logformat.heartbeat_subject(beat.region)
        self.data = logformat.encode_beat(beat)


@pytest.mark.anyio
async def test_what_a_relay_serves_is_what_the_sdk_reads() -> None:
    cfg = relay_config(
        nats_url="nats://127.0.0.1:4222",
        relay_id="us-1",
        relay={"public_url": EAST_URL},
        peers=[
            {"region": "eu-west", "edge_url": WEST_URL, "nats_url": "tls://eu:4222"},
            {"region": "ap-south", "edge_url": "ws://ap/v1/ws", "nats_url": "tls://ap:4222"},
        ],
    )
    directory = EdgeDirectory(cfg)
    nats = _Nats()
    await directory.start(nats)  # type: ignore[arg-type]
    await nats.heard(_Msg(Beat(region="us-east", relay="us-2", url=SIBLING_URL, t=0.0)))
    await nats.heard(_Msg(Beat(region="eu-west", t=0.0)))  # a federation beat
    served = directory.edges()
    # ws_edge.py serves it with json.dumps: the same keys, in the same order, as ever.
    assert json.dumps(served) == (
        '{"region": "us-east", "relay": "us-1", "edges": ['
        f'{{"region": "us-east", "url": "{EAST_URL}", "health": "up", "relay": "us-1"}}, '
        f'{{"region": "us-east", "url": "{SIBLING_URL}", "health": "up", "relay": "us-2"}}, '
        f'{{"region": "eu-west", "url": "{WEST_URL}", "health": "up", '
        f'"last_heartbeat_s_ago": {served["edges"][2]["last_heartbeat_s_ago"]}}}, '
        '{"region": "ap-south", "url": "ws://ap/v1/ws", "health": "unknown", '
        '"last_heartbeat_s_ago": null}]}'
    )
    assert 0 <= served["edges"][2]["last_heartbeat_s_ago"] < 60
    doc = decode_edges(json.dumps(served))
    assert [(e.region, e.url, e.health) for e in doc.edges] == [
        ("us-east", EAST_URL, "up"),
        ("us-east", SIBLING_URL, "up"),
        ("eu-west", WEST_URL, "up"),
        ("ap-south", "ws://ap/v1/ws", "unknown"),
    ]
    assert (doc.region, doc.relay) == ("us-east", "us-1")
