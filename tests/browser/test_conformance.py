"""The browser client's core (relay/web/client.js) against the Python SDK, its reference.

The same inputs go through both: region choice, moving back, backoff caps, close policy,
publish frame sizes, redirect rules and one script of frames through the two sessions; the
page must come out with exactly what the Python code computes. Then the JS API (connect,
subscribe, publish, history, close) once against a real relay.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest

from relay.client.backoff import Backoff
from relay.client.directory import Directory, DirectoryEdge, plan
from relay.client.routing import Edge, MoveBackPolicy, choose, should_move_back
from relay.client.session import (
    ClientSession,
    FrameTooLarge,
    Redirected,
    _Pending,
    _publish_size,
    close_policy,
    new_publish_id,
)
from relay.client.supervisor import Supervisor
from relay.client.transport import TransportPolicy, WebSocketFailure
from relay.core.channels import InvalidChannel, validate_channel
from relay.protocol import http_api
from relay.protocol.frames import History
from relay.protocol.http_api import MAX_SSE_CHANNELS
from tests.browser.chromium import chromium
from tests.support.relays import make_config, running_relays

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

MOVE_POLICIES: list[MoveBackPolicy] = ["stay", "when-idle", "immediately"]


def _python_case(
    rng: random.Random,
) -> tuple[list[dict[str, str]], dict[str, list[float | None]], str | None]:
    regions = rng.sample(
        ["us-east", "eu-west", "ap-south", "sa-east", "af-south", "me-1"], rng.randint(0, 5)
    )
    edges = [
        {
            "region": r,
            "url": f"ws://{r}.example/v1/ws",
            "health": rng.choice(["up", "down", "unknown"]),
        }
        for r in regions
    ]
    samples: dict[str, list[float | None]] = {}
    for r in [*regions, "elsewhere"]:
        if rng.random() < 0.8:
            samples[r] = [
                None
                if rng.random() < 0.3
                else rng.choice([round(rng.uniform(0, 300), 1), 10.0, 20.0])
                for _ in range(rng.randint(0, 5))
            ]
    prefer = rng.choice([None, None, *regions, "elsewhere"])
    return edges, samples, prefer


# Strings that JSON escapes (or does not) differently from what one might guess: the size of a
# publish frame must come out the same in both clients, byte for byte.
_TRICKY = ["a", "é", "\u2028", "😀", '"', "\\", "/", "\x7f", "\x01", "\n", "\t", " ", "z9"]


def _size_case(rng: random.Random) -> tuple[str, str, str, dict[str, int] | None]:
    def text(n: int) -> str:
        return "".join(rng.choice(_TRICKY) for _ in range(n))

    channel = "chat:" + text(rng.randint(0, 12))
    message_id = f"{text(rng.randint(1, 6))}-{rng.randint(1, 10**9)}"
    data = rng.choice([text(rng.randint(0, 40)), {"k": text(5), "n": [1, 2.5, None]}, 7])
    regions = ["ap-south", "eu-west", "us-east"][: rng.randint(0, 3)]
    after = {r: rng.randint(1, 2**53 - 1) for r in regions} or None  # a causal context
    return channel, message_id, json.dumps(data, ensure_ascii=rng.random() < 0.5), after


# Redirect targets against a survey whose first choice is us-east, and one where it is eu-west,
# from a plain and from a TLS relay: known URLs in any spelling, and what must be ignored (a
# URL the directory does not list, even one naming the region: it would get the token; a
# target in another region than the redirecting relay's, a redirecting relay whose region is
# not the first choice, ws:// from a wss:// relay, not a relay URL, relative, past the cap of
# redirects in a row).
_REDIRECT_EDGES = [
    ("us-east", "ws://a.example:8701/v1/ws"),
    ("us-east", "ws://b.example:8701/v1/ws"),
    ("eu-west", "wss://e.example/prefix/v1/ws"),
]
_REDIRECT_TARGETS: list[tuple[str, str | None]] = [
    ("ws://b.example:8701/v1/ws", "us-east"),
    ("http://b.example:8701", None),
    ("http://b.example:8701/v1/ping", "eu-west"),
    ("wss://e.example/prefix", None),
    ("https://e.example/prefix/v1/ws/", "us-east"),
    ("https://e.example/prefix/v1/ws/", "eu-west"),
    ("ws://e.example/prefix/v1/ws", "eu-west"),  # not secure: another HTTP base
    ("ws://c.example:8701/v1/ws", "us-east"),  # not listed (started since? the next survey)
    ("ws://c.example:8701", "eu-west"),
    ("ws://c.example:8701/v1/ws", "ap-south"),
    ("ws://c.example:8701/v1/ws", None),
    ("ftp://b.example:8701/v1/ws", "us-east"),
    ("/v1/ws", "us-east"),
    ("ws:///v1/ws", "us-east"),
    ("b.example:8701", "us-east"),
]
# (url, region the redirect names, the redirecting relay's region, redirects followed in a row,
# the nearest region of the survey, the redirecting relay's URL)
_REDIRECTS: list[tuple[str, str | None, str | None, int, str, str]] = [
    (url, region, source_region, in_a_row, nearest, source)
    for nearest in ("us-east", "eu-west")
    for source_region in ("us-east", "eu-west", "ap-south", None)
    for url, region in _REDIRECT_TARGETS
    for in_a_row in (0, 2, 3)
    for source in ("ws://a.example:8701/v1/ws", "wss://s.example/v1/ws")
]


def _python_redirects() -> list[list[str] | None]:
    # The rule is the supervisor's, pure: a supervisor with a survey and a count of
    # redirects in a row is all it reads.
    edges = tuple(DirectoryEdge(region, url, "up") for region, url in _REDIRECT_EDGES)
    targets = []
    for url, region, source_region, in_a_row, nearest, source in _REDIRECTS:
        sup = Supervisor(rng=random.Random(0))
        sup.survey = plan(
            Directory("ws://a.example:8701/v1/ws", "us-east", None, edges),
            {u: [1.0 if r == nearest else 50.0] for r, u in _REDIRECT_EDGES},
        )
        assert sup.survey.choice.order[0] == nearest
        sup.redirects_in_a_row = in_a_row
        target, _ = sup.redirect_target(Redirected(url, region, ""), source, source_region)
        targets.append(target)
    return [list(t) if t is not None else None for t in targets]


async def test_js_core_follows_the_python_reference(tmp_path: Path, nats_url: str) -> None:
    """The client.js that a relay serves makes the same choices as relay/client/: region
    order, medians and reasons; moving back; backoff caps; close policy; and session decisions
    on one script of frames (resume positions, duplicates dropped, republished ids)."""
    rng = random.Random(20240611)
    cases = [_python_case(rng) for _ in range(200)]
    expected_choices = []
    expected_moves = []
    for edges, samples, prefer in cases:
        c = choose(
            [Edge.from_health(e["region"], e["url"], e["health"]) for e in edges],  # type: ignore[arg-type]
            samples,
            prefer=prefer,
        )
        expected_choices.append({"order": list(c.order), "rttMs": c.rtt_ms, "reasons": c.reasons})
        expected_moves.append(
            [
                should_move_back(current, c, policy=policy, idle=idle)
                for current in [*c.order, "elsewhere"]
                for policy in MOVE_POLICIES
                for idle in (True, False)
            ]
        )
    b = Backoff(base_s=0.5, max_s=30.0, reset_after_s=60.0, rng=random.Random(1))
    caps = [b.cap(n) * 1000 for n in range(12)]
    codes = [1000, 1001, 1002, 1006, 1009, 1011, 4000, 4001, 4499, 4500, 4999, 3000]

    script = _session_script()
    counter = iter(range(1, 10_000))
    py = ClientSession(new_id=lambda: f"p-{next(counter)}")
    py_out = _run_python_session(py, script)
    sizes = [_size_case(rng) for _ in range(200)]
    expected_sizes = [_publish_size(i, _Pending(c, d.encode(), a)) for c, i, d, a in sizes]
    expected_redirects = _python_redirects()

    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with chromium(tmp_path / "chromium.log") as browser:
            page = await browser.new_page(f"http://127.0.0.1:{relay.port}/?room=core")
            js = await page.evaluate(
                "(async () => { const m = await import('/v1/client.js');"
                f" const cases = {json.dumps(cases)};"
                " const b = new m.Backoff({baseMs: 500, maxMs: 30000, resetAfterMs: 60000});"
                " let n = 0; const s = new m.Session({newId: () => `p-${++n}`});"
                f" const script = {json.dumps(script)};"
                " const out = [];"
                " for (const [kind, arg] of script) {"
                "   if (kind === 'subscribe') out.push(['frame', JSON.parse(s.subscribe(arg))]);"
                "   else if (kind === 'publish') { try { const [id, f] = s.publish(arg[0], arg[1]);"
                "     out.push(['frame', JSON.parse(f)]); } catch (e) {"
                "     if (e.code !== 'too_large') throw e;"
                "     out.push(['refused', {size: e.size, limit: e.limit}]); } }"
                "   else if (kind === 'drop') out.push(['dropped', s.dropOversized()]);"
                "   else if (kind === 'history')"
                "     out.push(['frame', JSON.parse(s.history(arg[0], {limit: arg[1]})[1])]);"
                "   else if (kind === 'reconnect')"
                "     out.push(['frames', s.onReconnect().map((f) => JSON.parse(f))]);"
                "   else out.push(['events', s.receive(arg).map(({type, ...e}) =>"
                "     [type, type === 'bad_frame' ? {} : e])]);"
                " }"
                f" const sizes = {json.dumps(sizes)};"
                f" const edges = {json.dumps(_REDIRECT_EDGES)};"
                f" const redirects = {json.dumps(_REDIRECTS)};"
                # A bare client with a survey, as the Python side: the rule reads only these.
                " const rc = Object.create(m.Client.prototype);"
                " rc._listeners = new Map();"
                " const survey = (nearest) => m.plan({source: edges[0][1], region: 'us-east',"
                "   relay: null,"
                "   edges: edges.map(([region, url]) => ({region, url, health: 'up'}))},"
                "   Object.fromEntries(edges.map(([r, u]) => [u, [r === nearest ? 1.0 : 50.0]])));"
                " return {"
                "   sizes: sizes.map(([c, i, d, a]) => m.publishSize(c, i, d, a)),"
                "   redirects: redirects.map(([url, region, srcRegion, inARow, nearest, src]) => {"
                "     rc.survey = survey(nearest);"
                "     rc._redirectsInARow = inARow;"
                "     return rc._redirectTarget({url, region, reason: ''}, src, srcRegion); }),"
                "   choices: cases.map(([edges, samples, prefer]) => {"
                "     const c = m.choose(edges, samples, {prefer});"
                "     return {order: c.order, rttMs: c.rttMs, reasons: c.reasons}; }),"
                "   moves: cases.map(([edges, samples, prefer]) => {"
                "     const c = m.choose(edges, samples, {prefer});"
                "     return [...c.order, 'elsewhere'].flatMap((current) =>"
                f"       {json.dumps(MOVE_POLICIES)}.flatMap((policy) =>"
                "         [true, false].map((idle) =>"
                "           m.shouldMoveBack(current, c, {policy, idle}))));"
                "   }),"
                "   caps: [...Array(12).keys()].map((n) => b.cap(n)),"
                f"   policies: {json.dumps(codes)}.map(m.closePolicy),"
                "   session: out, pending: s.pending,"
                "   position: s.position('chat:a'),"
                " }; })()"
            )
            api = await page.evaluate(API_ROUNDTRIP, timeout_s=30)
    assert api["where"] == ["us-east", "r1", "connected"]
    assert api["order"] == ["us-east"]
    assert api["reason"].startswith("nearest healthy: median")
    assert api["got"] == [[api["ack"]["id"], {"n": 1}, "us-east", {"us-east": 1}]]
    assert api["ack"]["channel"] == "chat:api" and api["ack"]["position"] == {"us-east": 1}
    # Random per message (128 bits, URL-safe base64), as the Python SDK's: nothing to guess.
    publish_ids = [api["ack"]["id"], *api["history"]["past"]]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in publish_ids), publish_ids
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", new_publish_id())
    assert len(set(publish_ids)) == len(publish_ids)
    assert api["badPublish"] == {"code": "invalid_channel", "temporary": False}
    assert api["badSubscribe"] == "invalid_channel"
    assert api["afterClose"] == "closed"
    assert api["states"][-1] == "closed"
    history = api["history"]
    past = history["past"]
    assert history["newest"] == {
        "more": True,
        "channel": "chat:past",
        "messages": [
            [past[1], {"h": 1}, "us-east", {"us-east": 2}],
            [past[2], {"h": 2}, "us-east", {"us-east": 3}],
        ],
    }
    assert history["older"] == {
        "more": False,
        "channel": "chat:past",
        "messages": [[past[0], {"h": 0}, "us-east", {"us-east": 1}]],
    }
    assert history["refused"] == "invalid_channel"
    assert history["badLimit"] == "RangeError"
    assert history["afterClose"] == "closed"
    for i, (want, got) in enumerate(zip(expected_choices, js["choices"], strict=True)):
        assert got == want, (i, cases[i])
    assert js["moves"] == expected_moves
    assert js["caps"] == caps
    assert js["policies"] == [close_policy(c) for c in codes]
    assert js["session"] == py_out
    assert js["sizes"] == expected_sizes
    assert js["redirects"] == expected_redirects
    assert js["pending"] == py.pending
    position = py.position("chat:a")
    assert js["position"] == (position.to_dict() if position is not None else None)


# connect(), subscribe(), publish() and close() against the relay that served the page.
API_ROUNDTRIP = """(async () => {
  const m = await import('/v1/client.js');
  const c = await m.connect(location.origin, {probes: 2});
  const states = [];
  c.on('state', (s) => states.push(s));
  const got = [];
  await c.subscribe('chat:api', (msg) => got.push([msg.id, msg.data, msg.origin, msg.ts])).ready;
  const ack = await c.publish('chat:api', {n: 1});
  const badPublish = await c.publish('no spaces', 1).then(
    () => null, (e) => ({code: e.code, temporary: e.temporary}));
  const badSubscribe = await c.subscribe('no spaces', () => {}).ready.then(
    () => null, (e) => e.code);
  for (let i = 0; i < 200 && got.length < 1; i++) await new Promise((r) => setTimeout(r, 25));
  // history(): stored messages of a channel nobody subscribed to, newest page then older.
  const past = [];
  for (let h = 0; h < 3; h++) past.push((await c.publish('chat:past', {h})).id);
  const newest = await c.history('chat:past', {limit: 2});
  const older = await c.history('chat:past', {limit: 10, before: newest.messages[0].position});
  const shape = (page) => ({more: page.more, channel: page.channel,
    messages: page.messages.map((m) => [m.id, m.data, m.origin, m.position])});
  const history = {past, newest: shape(newest), older: shape(older),
    refused: await c.history('no spaces').then(() => null, (e) => e.code),
    badLimit: await c.history('chat:past', {limit: 0}).then(() => null, (e) => e.name)};
  const where = [c.region, c.relay, c.state];
  c.close();
  history.afterClose = await c.history('chat:past').then(() => null, (e) => e.code);
  const afterClose = await c.publish('chat:api', 2).then(() => null, (e) => e.code);
  return {where, order: c.choice.order, reason: c.choice.reasons[where[0]], ack, got,
          badPublish, badSubscribe, afterClose, states, history};
})()"""


# The ref the script's history request gets (refs count every request the session made).
HISTORY_REF = 8


def _session_script() -> list[tuple[str, Any]]:
    def msg(mid: str, origin: str, ts: dict[str, int], pos: dict[str, int]) -> str:
        return json.dumps(
            {
                "op": "message",
                "channel": "chat:a",
                "id": mid,
                "data": {"t": mid},
                "origin": origin,
                "ts": ts,
                "position": pos,
            }
        )

    return [
        (
            "receive",
            json.dumps(
                {
                    "op": "connected",
                    "region": "us-east",
                    "relay": "r1",
                    "connection_id": "c1",
                    "heartbeat_s": 15.0,
                }
            ),
        ),
        ("subscribe", "chat:a"),
        (
            "receive",
            json.dumps(
                {
                    "op": "subscribed",
                    "ref": 1,
                    "channel": "chat:a",
                    "position": {"us-east": 2},
                    "recovered": False,
                }
            ),
        ),
        ("receive", msg("m3", "us-east", {"us-east": 3}, {"us-east": 3})),
        ("publish", ["chat:a", '{"text":"one"}']),
        ("publish", ["chat:a", "[1,2]"]),
        (
            "receive",
            json.dumps(
                {
                    "op": "ack",
                    "ref": 2,
                    "id": "p-1",
                    "channel": "chat:a",
                    "position": {"us-east": 4},
                }
            ),
        ),
        ("receive", msg("m3", "us-east", {"us-east": 3}, {"us-east": 3})),  # covered
        ("reconnect", None),
        (
            "receive",
            json.dumps(
                {
                    "op": "subscribed",
                    "ref": 4,
                    "channel": "chat:a",
                    "position": {"us-east": 3},
                    "recovered": True,
                }
            ),
        ),
        (
            "receive",
            msg("w1", "eu-west", {"eu-west": 1, "us-east": 3}, {"eu-west": 1, "us-east": 3}),
        ),
        # Another region's order: its position may be behind in one entry; the max is kept.
        ("receive", msg("m4", "us-east", {"us-east": 4}, {"us-east": 4})),
        ("receive", msg("x1", "eu-west", {"eu-west": 2}, {"eu-west": 2, "us-east": 2})),
        ("receive", msg("x1", "us-east", {"us-east": 5}, {"us-east": 5, "eu-west": 2})),  # same id
        (
            "receive",
            json.dumps(
                {
                    "op": "error",
                    "ref": 5,
                    "code": "unavailable",
                    "message": "later",
                    "temporary": True,
                }
            ),
        ),
        ("receive", json.dumps({"op": "error", "ref": 99, "code": "internal", "temporary": True})),
        ("receive", "not json"),
        ("receive", json.dumps({"op": "from-the-future"})),
        ("receive", json.dumps({"op": "message", "channel": "chat:a"})),
        (
            "receive",
            json.dumps(
                {
                    "op": "ack",
                    "ref": 5,
                    "id": "p-2",
                    "channel": "chat:a",
                    "position": {"us-east": 5},
                }
            ),
        ),
        (
            "receive",
            json.dumps(
                {
                    "op": "ack",
                    "ref": 5,
                    "id": "p-2",
                    "channel": "chat:a",
                    "position": {"us-east": 5},
                }
            ),
        ),
        # The relay's frame limit: none announced so far, so anything goes; a new relay
        # announces 1024 bytes: what is pending above it is dropped, and a publish above it
        # is refused without using up an id.
        ("publish", ["chat:a", json.dumps("x" * 1500)]),
        ("drop", None),
        (
            "receive",
            json.dumps(
                {
                    "op": "connected",
                    "region": "eu-west",
                    "relay": "w1",
                    "connection_id": "c2",
                    "max_frame_bytes": 1024,
                }
            ),
        ),
        ("drop", None),
        ("publish", ["chat:a", json.dumps("y" * 1000)]),
        ("publish", ["chat:a", json.dumps("z" * 900)]),
        (
            "receive",
            json.dumps(
                {
                    "op": "redirect",
                    "url": "ws://w2:8701/v1/ws",
                    "region": "eu-west",
                    "reason": "draining",
                }
            ),
        ),
        ("receive", json.dumps({"op": "redirect", "url": "ws://w2:8701/v1/ws"})),
        ("receive", json.dumps({"op": "redirect", "region": "eu-west"})),
        ("receive", json.dumps({"op": "connected", "region": "eu-west", "relay": "w1"})),
        # History: a request, its reply (stored messages as they are: not deduplicated
        # against what was delivered, the position stays), a reply nobody asked for, and
        # a malformed one.
        ("history", ["chat:a", 2]),
        (
            "receive",
            json.dumps(
                {
                    "op": "history",
                    "ref": HISTORY_REF,
                    "channel": "chat:a",
                    "more": True,
                    "messages": [
                        json.loads(msg("m3", "us-east", {"us-east": 3}, {"us-east": 3})),
                        json.loads(msg("m4", "us-east", {"us-east": 4}, {"us-east": 4})),
                    ],
                }
            ),
        ),
        ("receive", json.dumps({"op": "history", "ref": 999, "channel": "chat:a", "messages": []})),
        ("receive", json.dumps({"op": "history", "channel": "chat:a", "messages": 3})),
    ]


def _run_python_session(session: ClientSession, script: list[tuple[str, Any]]) -> list[Any]:
    """The Python session's outputs in the shape the JavaScript one reports them."""
    out: list[Any] = []
    for kind, arg in script:
        if kind == "subscribe":
            out.append(["frame", json.loads(session.subscribe(arg))])
        elif kind == "publish":
            try:
                _, frame = session.publish(arg[0], arg[1].encode())
            except FrameTooLarge as exc:
                out.append(["refused", {"size": exc.size, "limit": exc.limit}])
            else:
                out.append(["frame", json.loads(frame)])
        elif kind == "drop":
            out.append(["dropped", session.drop_oversized()])
        elif kind == "history":
            _, frame = session.history(arg[0], limit=arg[1])
            out.append(["frame", json.loads(frame)])
        elif kind == "reconnect":
            out.append(["frames", [json.loads(f) for f in session.on_reconnect()]])
        else:
            out.append(["events", [_event(e) for e in session.receive(arg)]])
    return out


def _event(event: Any) -> list[Any]:
    name = type(event).__name__
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    kinds = {
        "Connected": "connected",
        "Redirected": "redirected",
        "Subscribed": "subscribed",
        "Message": "message",
        "Acked": "acked",
        "ErrorReceived": "error",
        "PositionExpired": "expired",
        "BadFrame": "bad_frame",
        "HistoryReceived": "history",
    }
    renames = {
        "connection_id": "connectionId",
        "heartbeat_s": "heartbeatS",
        "max_frame_bytes": "maxFrameBytes",
        "publish_id": "publishId",
        "data_json": "data",
    }
    result: dict[str, Any] = {}
    if name == "BadFrame":
        return ["bad_frame", {}]  # the reason's wording differs between the two
    for key, value in fields.items():
        if key == "messages":
            value = [_event(m)[1] for m in value]
        elif key == "data_json":
            value = json.loads(value)
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        result[renames.get(key, key)] = value
    return [kinds[name], result]


# Channel names the HTTP API and SSE must carry unchanged: every character a name may have
# (relay/core/channels.py), some that percent-encoding and query parsing treat specially.
_HTTP_CHANNELS = ["chat:lobby", "a/b", "x+y=z", "a@b!~.", "c,d", "_-:@/=+!~.,", "Z" * 200]
_NOT_CHANNELS = ["", "with space", "é", "a?b", "a#b", "a&b", "Z" * 201]


def _http_cases(rng: random.Random) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for _ in range(60):
        channel = rng.choice(_HTTP_CHANNELS)
        regions = ["ap-south", "eu-west", "us-east"][: rng.randint(0, 3)]
        clock = {r: rng.randint(1, 2**53 - 1) for r in regions} or None
        frame: dict[str, Any]
        if rng.random() < 0.5:
            data = rng.choice(["hi", "é\u2028😀", {"k": [1, 2.5, None, True]}, 0, "&=?#%"])
            frame = {"op": "publish", "channel": channel, "id": f"id-{rng.randint(1, 10**9)}"}
            frame |= {"data": data, "ref": rng.randint(1, 1000)}
            if clock:
                frame["after"] = clock
        else:
            frame = {"op": "history", "channel": channel, "limit": rng.randint(1, 1000)}
            frame["ref"] = rng.randint(1, 1000)
            if clock:
                frame["before"] = clock
        cases.append(frame)
    return cases


def _sse_cases(rng: random.Random) -> list[dict[str, Any]]:
    cases = []
    for _ in range(40):
        names = rng.sample(_HTTP_CHANNELS + _NOT_CHANNELS, rng.randint(0, 8))
        if rng.random() < 0.2:
            names += [f"many:{i}" for i in range(40)]
        positions = {
            n: {r: rng.randint(1, 2**53 - 1) for r in rng.sample(["eu-west", "us-east"], 2)}
            for n in names
            if rng.random() < 0.6
        }
        cases.append(
            {"names": names, "positions": positions, "token": rng.choice([None, "a.b-c_d"])}
        )
    return cases


def _python_sse(case: dict[str, Any]) -> dict[str, Any]:
    """What the relay's own parsing makes of the stream a JS client opens for ``case``."""
    stream: list[str] = []
    for name in case["names"]:
        try:
            validate_channel(name)
        except InvalidChannel:
            continue
        if "," not in name and len(stream) < MAX_SSE_CHANNELS:
            stream.append(name)
    positions = {c: p for c, p in case["positions"].items() if c in stream}
    return {"stream": stream, "positions": positions, "token": case["token"]}


async def test_the_js_http_translation_is_the_relays_in_reverse(
    tmp_path: Path, nats_url: str
) -> None:
    """The SSE fallback's pure part: a publish or history frame that the JS core turns into
    an HTTP request becomes that same frame again through the relay's own translation
    (relay/protocol/http_api.py); the SSE URL it builds names, for the relay, the channels it
    kept and their positions (the event id); and the transport policy's rule, step by step."""
    rng = random.Random(1313)
    frames = _http_cases(rng)
    streams = _sse_cases(rng)
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with chromium(tmp_path / "chromium.log") as browser:
            page = await browser.new_page(f"http://127.0.0.1:{relay.port}/v1/ping")
            js = await page.evaluate(
                "(async () => { const m = await import('/v1/client.js');"
                f" const frames = {json.dumps(frames)};"
                f" const streams = {json.dumps(streams)};"
                " const policy = new m.TransportPolicy({retryMs: 100, random: () => 0.5});"
                f" const steps = {json.dumps(_POLICY_STEPS)};"
                " return {"
                "   requests: frames.map((f) => m.httpRequest(JSON.stringify(f))),"
                "   streams: streams.map(({names, positions, token}) => {"
                "     const {stream, refused} = m.sseChannels(names);"
                "     const url = stream.length ? m.sseUrl('http://h', stream, positions, token)"
                "       : null;"
                "     return {stream, refused: refused.map((r) => r[0]), url};"
                "   }),"
                "   policy: steps.map(([step, arg, t]) => {"
                "     if (step === 'failed') policy.websocketFailed(arg, t);"
                "     else if (step === 'opened') policy.websocketOpened();"
                "     else if (step === 'sse failed') policy.sseFailed();"
                "     return [policy.next(t), policy.retryDue(t), policy.transport]; }),"
                " }; })()"
            )
    for frame, request in zip(frames, js["requests"], strict=True):
        path, _, query = request["path"].partition("?")
        route = http_api.route(path)
        assert route is not None and route.channel == frame["channel"], request
        assert request["ref"] == frame["ref"]
        if frame["op"] == "publish":
            assert request["method"] == "POST" and not query
            back = msgspec.json.decode(
                http_api.publish_request(route.channel, request["body"].encode(), None), type=Any
            )
        else:
            assert request["method"] == "GET" and request["body"] is None
            history = msgspec.json.decode(
                http_api.history_request(route.channel, parse_qs(query)), type=History
            )
            back = {"op": "history", "channel": history.channel, "limit": history.limit}
            back["before"] = history.before
        wanted = {k: v for k, v in frame.items() if k != "ref"}
        assert {k: v for k, v in back.items() if k != "ref" and v is not None} == wanted
    for case, got in zip(streams, js["streams"], strict=True):
        want = _python_sse(case)
        assert got["stream"] == want["stream"], case
        assert sorted(got["refused"]) == sorted(set(case["names"]) - set(want["stream"]))
        if not want["stream"]:
            continue
        url = urlsplit(got["url"])
        assert url.path == http_api.SSE_PATH
        query = parse_qs(url.query)
        assert http_api.sse_channels(query) == want["stream"]
        event_ids = query.get("last_event_id", [])
        decoded = http_api.decode_event_id(event_ids[0]) if event_ids else {}
        assert {c: p.to_dict() for c, p in decoded.items()} == want["positions"]
        assert query.get("token") == ([want["token"]] if want["token"] else None)
    assert [step[:2] for step in js["policy"]] == [
        [transport, due] for *_, transport, due in _POLICY_EXPECTED
    ]
    assert [step[2] for step in js["policy"]] == _python_transports()


def _python_transports() -> list[str]:
    """The Python SDK's policy through the same steps (a page sees every failure as a
    handshake failure: it cannot read the upgrade's status); time is its shell's business."""
    policy = TransportPolicy(rng=random.Random(0))
    transports: list[str] = []
    for step, answered, *_ in _POLICY_EXPECTED:
        if step == "failed" and policy.websocket_failed(WebSocketFailure("handshake")):
            policy.ping_answered(bool(answered))
        elif step == "opened":
            policy.websocket_opened()
        elif step == "sse failed":
            policy.sse_failed()
        transports.append(policy.transport)
    return transports


# The transport policy (relay/client/transport.py's rules, as a page sees failures), one step
# at a time: 2 failures switch to SSE, WebSocket again 100 ms after the last failure (the
# jitter's random number fixed at the middle): [step, relay answered, now ms] -> [next
# transport, retry due].
_POLICY_EXPECTED: list[tuple[str, bool | None, int, str, bool]] = [
    ("next", None, 0, "websocket", False),
    ("failed", False, 10, "websocket", False),  # the relay is down: no evidence
    ("failed", True, 20, "websocket", False),  # one
    ("failed", False, 30, "websocket", False),  # still one: a dead relay does not reset it
    ("failed", True, 40, "sse", False),  # two: SSE, WebSocket again at 140
    ("next", None, 139, "sse", False),
    ("next", None, 140, "websocket", True),
    ("failed", True, 150, "sse", False),  # on SSE one failure is enough: again at 250
    ("next", None, 249, "sse", False),
    ("sse failed", None, 255, "websocket", False),  # SSE does not open: WebSocket first
    ("failed", True, 256, "sse", False),  # the count was kept: back on SSE at once
    ("opened", None, 260, "websocket", False),
    ("failed", True, 270, "websocket", False),  # the count starts over
]
_POLICY_STEPS = [[step, answered, t] for step, answered, t, _, _ in _POLICY_EXPECTED]


# --- presence: the session's bookkeeping and the member view against relay/client/presence.py


def _member(client_id: str, connection: str, region: str = "us-east", **extra: Any) -> Any:
    return {
        "client_id": client_id,
        "connection": connection,
        "region": region,
        "relay": f"{region}-1",
        "status": "present",
        **extra,
    }


def _presence_script() -> list[tuple[str, Any]]:
    """Presence ops, the relay's answers, reconnects and an SSE connection: what each
    session makes of them (frames, events, what it remembers) must be the same."""

    def rx(frame: dict[str, Any]) -> tuple[str, Any]:
        return ("receive", json.dumps(frame))

    ann = _member("ann", "c1", data={"name": "ann"})
    bob = _member("bob", "w1", "eu-west", data={"name": "bob"})
    cy = _member("cy", "s9", "ap-south")
    return [
        rx({"op": "connected", "region": "us-east", "relay": "r1", "connection_id": "c1"}),
        ("subscribe", ["chat:p", True]),  # ref 1
        ("subscribe", ["chat:q", False]),  # ref 2
        ("enter", ["chat:p", '{"name":"ann"}', "ann"]),  # ref 3, version 1
        rx({"op": "subscribed", "ref": 1, "channel": "chat:p", "position": {}}),
        rx({"op": "presence", "channel": "chat:p", "members": [ann, bob]}),
        rx({"op": "presence", "channel": "chat:q", "members": [bob]}),  # not watched
        rx(
            {
                "op": "presence.ok",
                "ref": 3,
                "channel": "chat:p",
                "action": "enter",
                "client_id": "ann",
            }
        ),
        ("state", "chat:p"),
        rx({"op": "presence_event", "channel": "chat:p", "action": "enter", "member": cy}),
        rx(
            {
                "op": "presence_event",
                "channel": "chat:p",
                "action": "update",
                "member": {**bob, "status": "unreachable"},
            }
        ),
        rx({"op": "presence_event", "channel": "chat:p", "action": "leave", "member": cy}),
        rx({"op": "presence_event", "channel": "chat:p", "action": "leave", "member": cy}),
        rx({"op": "presence_event", "channel": "chat:p", "action": "wave", "member": cy}),
        rx({"op": "presence_event", "channel": "chat:q", "action": "enter", "member": cy}),
        ("update", ["chat:p", '{"name":"ann","typing":true}']),  # ref 4, version 2
        ("leave", "chat:x"),  # not entered: nothing to send
        ("update", ["chat:x", "1"]),  # not entered: refused at once
        ("get", "chat:p"),  # ref 5
        rx({"op": "presence", "ref": 5, "channel": "chat:p", "members": [bob, ann]}),
        rx(
            {
                "op": "presence.ok",
                "ref": 999,
                "channel": "chat:p",
                "action": "update",
                "client_id": "ann",
            }
        ),
        rx({"op": "presence.ok", "channel": "chat:p", "action": "update", "client_id": "ann"}),
        rx({"op": "presence", "ref": 4, "channel": "chat:p", "members": []}),  # not its answer
        ("state", "chat:p"),
        ("enter", ["chat:r", None, "zed"]),  # ref 6: a token's sub is someone else
        rx(
            {
                "op": "error",
                "ref": 6,
                "code": "forbidden",
                "message": "not yours",
                "temporary": False,
            }
        ),
        ("state", "chat:r"),
        ("reconnect", None),  # subscribes 7, 8; chat:p entered again with its data: ref 9
        ("state", "chat:p"),
        rx({"op": "connected", "region": "eu-west", "relay": "w1", "connection_id": "c2"}),
        rx({"op": "error", "ref": 9, "code": "unavailable", "message": "later", "temporary": True}),
        ("state", "chat:p"),  # still meant: entered again on the next connection
        ("reconnect", None),  # refs 10, 11; entered again: ref 12
        rx(
            {
                "op": "presence.ok",
                "ref": 12,
                "channel": "chat:p",
                "action": "enter",
                "client_id": "ann",
            }
        ),
        ("state", "chat:p"),
        ("leave", "chat:p"),  # ref 13, version 3: not answered
        ("reconnect", None),  # refs 14, 15: the leave is settled (nothing entered again)
        ("state", "chat:p"),
        ("enter", ["chat:p", None, None]),  # ref 16, version 4
        ("sse", None),  # ops not settled fail, and are undone
        ("state", "chat:p"),
        rx({"op": "presence", "channel": "chat:p", "members": 3}),
        rx({"op": "presence_event", "channel": "chat:p", "action": "enter"}),
        rx({"op": "presence.ok", "ref": 1, "channel": "chat:p", "action": "enter"}),
    ]


def _py_member(m: Any) -> dict[str, Any]:
    return {
        "clientId": m.client_id,
        "connection": m.connection,
        "region": m.region,
        "relay": m.relay,
        "status": m.status,
        "data": m.data,
    }


def _run_python_presence(script: list[tuple[str, Any]]) -> list[Any]:
    from relay.client.presence import MemberView, PresenceChange, PresenceSync
    from relay.client.session import MembersReceived, PresenceDone, PresenceRefused

    session = ClientSession(new_id=lambda: "never")
    views: dict[str, MemberView] = {}
    out: list[Any] = []

    def frame(made: tuple[int, bytes] | None) -> Any:
        return None if made is None else [made[0], json.loads(made[1])]

    for kind, arg in script:
        if kind == "subscribe":
            out.append(json.loads(session.subscribe(arg[0], presence=arg[1])))
        elif kind == "enter":
            data = None if arg[1] is None else arg[1].encode()
            out.append(frame(session.presence_enter(arg[0], data, arg[2])))
        elif kind == "update":
            try:
                out.append(frame(session.presence_update(arg[0], arg[1].encode())))
            except ValueError:
                out.append("refused")
        elif kind == "leave":
            out.append(frame(session.presence_leave(arg)))
        elif kind == "get":
            out.append(frame(session.presence_get(arg)))
        elif kind == "reconnect":
            out.append([json.loads(f) for f in session.on_reconnect()])
        elif kind == "sse":
            out.append([list(f) for f in session.presence_on_sse()])
        elif kind == "state":
            entry = session.presence_entry(arg)
            shown = None if entry is None else [entry.client_id, _text(entry.data)]
            out.append([session.presence_done(arg), shown, session.presence_client_id(arg)])
        else:
            events: list[Any] = []
            for e in session.receive(arg):
                if isinstance(e, PresenceSync | PresenceChange):
                    view = views.setdefault(e.channel, MemberView())
                    view.apply(e)
                    if isinstance(e, PresenceSync):
                        shape: Any = ["presence_sync", [_py_member(m) for m in e.members]]
                    else:
                        shape = ["presence_change", e.action, _py_member(e.member)]
                    shape += [[_py_member(m) for m in view.members], sorted(view.client_ids)]
                elif isinstance(e, PresenceDone):
                    shape = ["presence_done", e.channel, e.version]
                elif isinstance(e, PresenceRefused):
                    shape = ["presence_refused", e.channel, e.version, e.code, e.temporary]
                elif isinstance(e, MembersReceived):
                    shape = ["members", e.ref, e.channel, [_py_member(m) for m in e.members]]
                else:
                    shape = [_event(e)[0]]
                events.append(shape)
            out.append(events)
    return out


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode()


PRESENCE_RUNNER = """(async () => {
  const m = await import('/v1/client.js');
  const s = new m.Session({newId: () => 'never'});
  const script = %s;
  const views = new Map();
  const out = [];
  const frame = (made) => made === null ? null : [made[0], JSON.parse(made[1])];
  for (const [kind, arg] of script) {
    if (kind === 'subscribe') out.push(JSON.parse(s.subscribe(arg[0], null, {presence: arg[1]})));
    else if (kind === 'enter') out.push(frame(s.presenceEnter(arg[0], arg[1], arg[2])));
    else if (kind === 'update') {
      try { out.push(frame(s.presenceUpdate(arg[0], arg[1]))); } catch (e) { out.push('refused'); }
    }
    else if (kind === 'leave') out.push(frame(s.presenceLeave(arg)));
    else if (kind === 'get') out.push(frame(s.presenceGet(arg)));
    else if (kind === 'reconnect') out.push(s.onReconnect().map((f) => JSON.parse(f)));
    else if (kind === 'sse') out.push(s.presenceOnSse());
    else if (kind === 'state') {
      const entry = s.presenceEntry(arg);
      out.push([s.presenceDone(arg), entry === null ? null : [entry.clientId, entry.dataJson],
                s.presenceClientId(arg)]);
    } else {
      out.push(s.receive(arg).map((e) => {
        if (e.type === 'presence_sync' || e.type === 'presence_change') {
          if (!views.has(e.channel)) views.set(e.channel, new m.MemberView());
          const view = views.get(e.channel);
          view.apply(e);
          const shape = e.type === 'presence_sync' ? [e.type, e.members]
            : [e.type, e.action, e.member];
          return [...shape, view.members, view.clientIds];
        }
        if (e.type === 'presence_done') return [e.type, e.channel, e.version];
        if (e.type === 'presence_refused')
          return [e.type, e.channel, e.version, e.code, e.temporary];
        if (e.type === 'members') return [e.type, e.ref, e.channel, e.members];
        return [e.type];
      }));
    }
  }
  return {out, get: m.httpRequest(s.presenceGet('a/b,c')[1]),
          sse: m.sseUrl('http://h', ['a', 'b'], {}, null, true),
          plain: m.sseUrl('http://h', ['a'])};
})()"""


async def test_js_presence_follows_the_python_reference(tmp_path: Path, nats_url: str) -> None:
    """Presence in client.js as in relay/client/presence.py and session.py: the frames for
    enter/update/leave/get and for entering again on a new connection, the versions that
    settle, refusals that put a channel back, an SSE connection failing what is not
    settled, and the member view built from lists and changes (order, updates, a leave of
    someone not listed, actions of a newer relay). Over SSE, members() is the relay's own
    GET route and presence=1 is what the relay reads as "with presence"."""
    script = _presence_script()
    expected = _run_python_presence(script)
    async with running_relays(make_config(nats_url=nats_url)) as (relay,):
        async with chromium(tmp_path / "chromium.log") as browser:
            page = await browser.new_page(f"http://127.0.0.1:{relay.port}/v1/ping")
            js = await page.evaluate(PRESENCE_RUNNER % json.dumps(script))
    for i, (step, want, got) in enumerate(zip(script, expected, js["out"], strict=True)):
        assert got == want, (i, step)
    request = js["get"]
    route = http_api.route(request["path"])
    assert request["method"] == "GET" and request["body"] is None
    assert route is not None and (route.channel, route.kind) == ("a/b,c", "presence")
    query = parse_qs(urlsplit(js["sse"]).query)
    assert http_api.wants_presence(query) and http_api.sse_channels(query) == ["a", "b"]
    assert not http_api.wants_presence(parse_qs(urlsplit(js["plain"]).query))
