"""``relaynet bench presence``: how fast presence converges across three regions.

Theory of operation
-------------------
Three regions (us-east, eu-west, ap-south), each a nats-server with JetStream and
one relay process, on the one multi-region harness (``relay.harness.network``): every
directed federation link goes through a ``LinkProxy`` with the one-way latency L,
which is also what cuts a region off and heals it. The relays run with the
``[presence]`` timings given (default: the relay's own defaults).

In each region a *watcher* (a plain protocol client subscribed with ``presence``)
keeps its view of each channel from the member list and the ``presence_event``
frames, and stamps every change with the time it arrived; *probes* (a condition on
a watcher's view) are checked by the watcher as each batch of frames arrives, so a
probe's time is when its condition first held, however late the bench looks at it.
Everything runs on one ``perf_counter`` clock in this process.

1. **Join convergence** (``--rounds``): round i acts in region i mod 3 with a
   member of its own: ``presence.enter`` (with data), ``presence.update`` (new
   data), ``presence.leave``, each waiting for the last to converge. A sample is the
   time from the ``presence.ok`` until a watcher in another region has the event
   (two samples per operation and round; an event that arrived before the ack is 0).
2. **Partition and heal** (``--heal-rounds``, a channel each): every region enters
   a member that stays and one that will leave, and every watcher sees all six.
   Then one region (each round the next one) is cut off from both others, and every
   region changes its members during the cut (the leaver leaves, a new member
   enters). Samples, per watcher: from the cut until the members across the cut it
   knew are all ``unreachable``, then until none of them is listed. Then the links
   heal; a sample is the time until the watcher's region answers ``presence.get``
   with exactly the truth (everyone who entered and did not leave, all present: no
   phantom, none missing). After one more snapshot interval every region's
   ``presence.get`` and every watcher's view must still be the truth.

Every wait is bounded (what the configured timings predict plus a margin); one that
runs out is a failure, named in the report, and the exit code is 1. The whole run is
capped too. Traffic only to 127.0.0.1; every process and proxy is stopped by the
network on the way out, also on errors and Ctrl-C, and the temporary directory removed.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskGroup
from pydantic import ValidationError

from relay.adapters.presence import BEAT_S, TICK_S
from relay.bench.fanout import percentile
from relay.bench.report import BenchError, run_and_report, server_log_lines
from relay.client.connection import fetch_directory
from relay.config.schema import PresenceSection
from relay.harness import toolkit
from relay.harness.network import FAST_FEDERATION, Network
from relay.harness.toolkit import clock, poll_until
from relay.protocol.frames import (
    ClientFrame,
    PresenceEnter,
    PresenceGet,
    PresenceLeave,
    PresenceUpdate,
    Subscribe,
)
from relay.simulate.client import ProtocolClient, protocol_client

REGIONS: Final = ("us-east", "eu-west", "ap-south")
JOIN_CHANNEL: Final = "bench:presence"
MAX_ROUNDS: Final = 1000
MAX_HEAL_ROUNDS: Final = 20
MAX_LATENCY_MS: Final = 5_000.0
WARMUP_S: Final = 30.0  # links up and every region hearing every other
EVENT_BOUND_S: Final = 10.0  # plus a few link crossings: an op's event, everywhere
REQUEST_S: Final = 10.0  # a request's reply from the relay
MARGIN_S: Final = 10.0  # over what the configured timings predict
# A cut link's reader retries with a backoff that grows to this (federation.adapters).
LINK_RETRY_S: Final = 2.0
HEAL_POLL_S: Final = 0.05  # presence.get in each region this often while healing
FOREVER_S: Final = 1e9

_encode = msgspec.json.encode

# The kinds of sample, in the report's order (``LABELS``, ``_expected``).
MEASURES: Final = ("ack", "enter", "update", "leave", "unreachable", "removed", "healed")


# --- watching ---------------------------------------------------------------------------


@dataclass
class Probe:
    test: Callable[[], bool]
    done: anyio.Event = field(default_factory=anyio.Event)
    at: float | None = None  # when ``test`` first held


@dataclass(frozen=True)
class Event:
    at: float
    channel: str
    action: str
    member: dict[str, Any]


class Watcher:
    """One region's presence subscriber: its view of each channel (client id -> the
    member as last shown), kept from the frames as they arrive."""

    def __init__(self, region: str, client: ProtocolClient) -> None:
        self.region = region
        self.client = client
        self.views: dict[str, dict[str, dict[str, Any]]] = {}
        self.events: list[Event] = []
        self.closed: str | None = None
        self._seen = 0
        self._probes: list[Probe] = []

    async def watch(self, channel: str) -> None:
        reply = await _request(self.region, self.client, Subscribe(channel, presence=True))
        if reply.get("op") != "subscribed":
            raise BenchError(f"{self.region}: subscribe {channel} with presence: {reply}")
        await self.reached(self.probe(lambda: channel in self.views), clock() + REQUEST_S)
        if channel not in self.views:
            raise BenchError(f"{self.region}: no member list after subscribing to {channel}")

    async def follow(self) -> None:
        client = self.client
        try:
            while True:
                await client.wait_for(lambda: len(client.frames) > self._seen, FOREVER_S)
                now = clock()
                frames = client.frames[self._seen :]
                self._seen += len(frames)
                for frame in frames:
                    self._apply(frame, now)
                for probe in list(self._probes):
                    if probe.test():
                        self._settle(probe, now)
        except ConnectionError as exc:
            self.closed = str(exc)
            for probe in list(self._probes):
                probe.done.set()

    def _apply(self, frame: dict[str, Any], now: float) -> None:
        op, channel = frame.get("op"), frame.get("channel")
        if not isinstance(channel, str):
            return
        if op == "presence" and "ref" not in frame:  # a subscription's list, not a get
            self.views[channel] = {m["client_id"]: m for m in frame["members"]}
        elif op == "presence_event":
            view = self.views.setdefault(channel, {})
            member = frame["member"]
            if frame["action"] == "leave":
                view.pop(member["client_id"], None)
            else:
                view[member["client_id"]] = member
            self.events.append(Event(now, channel, frame["action"], member))

    def probe(self, test: Callable[[], bool]) -> Probe:
        """``test`` is checked now and after each batch of frames from here on."""
        probe = Probe(test)
        if test():
            self._settle(probe, clock())
        else:
            self._probes.append(probe)
        return probe

    def event_probe(self, channel: str, action: str, client_id: str, data: object = None) -> Probe:
        """The first such event from now on (``data`` given: with that data)."""
        start = len(self.events)

        def seen() -> bool:
            return any(
                e.channel == channel
                and e.action == action
                and e.member["client_id"] == client_id
                and (data is None or e.member.get("data") == data)
                for e in self.events[start:]
            )

        return self.probe(seen)

    def _settle(self, probe: Probe, now: float) -> None:
        probe.at = now
        probe.done.set()
        if probe in self._probes:
            self._probes.remove(probe)

    async def reached(self, probe: Probe, deadline: float) -> float | None:
        """When the probe's test first held; None if not by ``deadline``."""
        with anyio.move_on_after(max(0.0, deadline - clock())):
            await probe.done.wait()
        if probe in self._probes:
            self._probes.remove(probe)
        return probe.at

    async def members(self, channel: str) -> dict[str, str]:
        """``presence.get`` in this region: client id -> status."""
        reply = await _request(self.region, self.client, PresenceGet(channel))
        if reply.get("op") != "presence":
            raise BenchError(f"{self.region}: presence.get {channel}: {reply}")
        return {m["client_id"]: m["status"] for m in reply["members"]}


# --- members ----------------------------------------------------------------------------


@dataclass
class Actor:
    """A connection that enters channels as members (one member per channel)."""

    region: str
    client: ProtocolClient

    async def act(
        self, frame: PresenceEnter | PresenceUpdate | PresenceLeave
    ) -> tuple[float, float]:
        """Send and wait for ``presence.ok``: (sent, acked) times."""
        sent = clock()
        reply = await _request(self.region, self.client, frame)
        acked = clock()
        if reply.get("op") != "presence.ok":
            raise BenchError(f"{self.region}: {type(frame).__name__}: {reply}")
        return sent, acked


async def _request(region: str, client: ProtocolClient, frame: ClientFrame) -> dict[str, Any]:
    """The relay's reply; a relay that does not answer ends the run, saying so."""
    try:
        return await client.request(frame, REQUEST_S)
    except (TimeoutError, ConnectionError) as exc:
        what = f"no reply within {REQUEST_S:g} s" if isinstance(exc, TimeoutError) else str(exc)
        raise BenchError(f"{region}: {type(frame).__name__}: {what}") from exc


def _raw(value: object) -> msgspec.Raw:
    return msgspec.Raw(_encode(value))


# --- the run ----------------------------------------------------------------------------


@dataclass
class Report:
    latency_ms: float
    timing: PresenceSection
    rounds: int
    heal_rounds: int
    samples: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MEASURES})
    failures: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)  # the region cut off in each heal round
    workdir: str = ""
    linked_s: float = math.nan
    warm_up_s: float = math.nan
    wall_s: float = math.nan
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "regions": list(REGIONS),
            "latency_ms": self.latency_ms,
            "presence": self.timing.model_dump(mode="json"),
            "rounds": self.rounds,
            "heal_rounds": self.heal_rounds,
            "cut": self.cut,
            "workdir": self.workdir,
            "linked_s": _round(self.linked_s),
            "warm_up_s": _round(self.warm_up_s),
            "wall_s": _round(self.wall_s),
            "summary_ms": {name: _summary(values) for name, values in self.samples.items()},
            "samples_ms": {
                name: [round(1000 * v, 3) for v in values] for name, values in self.samples.items()
            },
            "failures": self.failures,
            "server_problems": self.problems,
        }


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def _summary(values: list[float]) -> dict[str, float | int | None]:
    ms = [1000 * v for v in values]
    return {
        "count": len(ms),
        "p50": _round(percentile(ms, 0.50)),
        "p99": _round(percentile(ms, 0.99)),
        "max": _round(max(ms)) if ms else None,
    }


def _network(workdir: Path, latency_ms: float, timing: PresenceSection) -> Network:
    settings = {
        "relay": {"shutdown_grace_s": 1.0},
        "federation": FAST_FEDERATION,
        "presence": timing.model_dump(mode="json"),
    }
    return Network(REGIONS, workdir, latency_ms=latency_ms, settings=settings, name="presence")


class Bench:
    def __init__(self, net: Network, report: Report, tg: TaskGroup, stack: AsyncExitStack) -> None:
        self.net = net
        self.report = report
        self.tg = tg
        self.stack = stack
        self.watchers: dict[str, Watcher] = {}
        self.latency_s = report.latency_ms / 1000

    @asynccontextmanager
    async def _client(self, region: str) -> AsyncIterator[ProtocolClient]:
        async with protocol_client(self.net.edge(region), open_timeout=REQUEST_S) as client:
            if client.connected is None:
                raise BenchError(f"{region}: no `connected` frame from {self.net.edge(region)}")
            yield client

    async def actor(self, region: str, stack: AsyncExitStack) -> Actor:
        return Actor(region, await stack.enter_async_context(self._client(region)))

    async def start(self) -> None:
        for region in REGIONS:
            watcher = Watcher(region, await self.stack.enter_async_context(self._client(region)))
            self.tg.start_soon(watcher.follow)
            self.watchers[region] = watcher

    def _fail(self, what: str) -> None:
        closed = [
            f"{w.region} watcher closed: {w.closed}" for w in self.watchers.values() if w.closed
        ]
        self.report.failures.append(what + (f" ({'; '.join(closed)})" if closed else ""))

    def _event_bound(self) -> float:
        return EVENT_BOUND_S + 4 * self.latency_s

    # --- 1. join convergence

    async def warm_up(self, actors: Mapping[str, Actor]) -> None:
        """Every region sees a member of every other region come and go: links are up."""
        started = clock()
        # Changes made before a link is up cross it only with the next snapshot.
        for region in REGIONS:
            up: set[str] = set()
            linked = functools.partial(_sees_every_region_up, self.net.edge(region), up)
            if not await poll_until(linked, started + WARMUP_S, 0.1):
                raise BenchError(
                    f"warm-up: {region} does not see every region up within {WARMUP_S:.0f} s "
                    f"(up: {', '.join(sorted(up)) or 'none'})"
                )
        self.report.linked_s = clock() - started
        for watcher in self.watchers.values():
            await watcher.watch(JOIN_CHANNEL)
        names = {region: f"warm-{region}" for region in REGIONS}
        for region, actor in actors.items():
            await actor.act(PresenceEnter(JOIN_CHANNEL, client_id=names[region]))
        for want in (set(names.values()), set()):
            for watcher in self.watchers.values():
                probe = watcher.probe(_exactly(watcher, JOIN_CHANNEL, want))
                if await watcher.reached(probe, started + WARMUP_S) is None:
                    raise BenchError(
                        f"warm-up: {watcher.region} did not see {sorted(want) or 'no members'} "
                        f"on {JOIN_CHANNEL} within {WARMUP_S:.0f} s of the start: are the "
                        "federation links up?"
                    )
            if want:
                for actor in actors.values():
                    await actor.act(PresenceLeave(JOIN_CHANNEL))
        self.report.warm_up_s = clock() - started

    async def join_round(self, i: int, actors: Mapping[str, Actor]) -> bool:
        region = REGIONS[i % len(REGIONS)]
        actor = actors[region]
        client_id = f"join-{i}-{region}"
        others = [w for w in self.watchers.values() if w.region != region]
        steps: list[tuple[str, PresenceEnter | PresenceUpdate | PresenceLeave, object]] = [
            ("enter", PresenceEnter(JOIN_CHANNEL, _raw({"n": i}), client_id), {"n": i}),
            ("update", PresenceUpdate(JOIN_CHANNEL, _raw({"n": i, "v": 2})), {"n": i, "v": 2}),
            ("leave", PresenceLeave(JOIN_CHANNEL), None),
        ]
        for action, frame, data in steps:
            probes = [(w, w.event_probe(JOIN_CHANNEL, action, client_id, data)) for w in others]
            sent, acked = await actor.act(frame)
            if action == "enter":
                self.report.samples["ack"].append(acked - sent)
            deadline = acked + self._event_bound()
            for watcher, probe in probes:
                at = await watcher.reached(probe, deadline)
                if at is None:
                    self._fail(
                        f"join round {i + 1}: {action} of {client_id} (in {region}) not seen in "
                        f"{watcher.region} within {self._event_bound():.1f} s"
                    )
                    return False
                self.report.samples[action].append(max(0.0, at - acked))
        return True

    # --- 2. partition and heal

    async def heal_round(self, h: int) -> None:
        timing = self.report.timing
        cut = REGIONS[(h + len(REGIONS) - 1) % len(REGIONS)]  # ap-south first
        self.report.cut.append(cut)
        channel = f"bench:presence-heal-{h}"
        for watcher in self.watchers.values():
            await watcher.watch(channel)
        async with AsyncExitStack() as stack:
            stayers = {r: await self.actor(r, stack) for r in REGIONS}
            leavers = {r: await self.actor(r, stack) for r in REGIONS}
            joiners = {r: await self.actor(r, stack) for r in REGIONS}
            stay = {r: f"heal-{h}-{r}-stays" for r in REGIONS}
            go = {r: f"heal-{h}-{r}-leaves" for r in REGIONS}
            join = {r: f"heal-{h}-{r}-joins" for r in REGIONS}
            for r in REGIONS:
                await stayers[r].act(PresenceEnter(channel, client_id=stay[r]))
                await leavers[r].act(PresenceEnter(channel, client_id=go[r]))
            before = set(stay.values()) | set(go.values())
            if not await self._all_see(channel, before, clock() + self._event_bound()):
                return

            # Cut ``cut`` off; each side should lose the other's members.
            probes: dict[str, tuple[Probe, Probe]] = {}
            for region, watcher in self.watchers.items():
                far = {cut} if region != cut else set(REGIONS) - {cut}
                known = {stay[r] for r in far} | {go[r] for r in far}
                probes[region] = (
                    watcher.probe(_all_unreachable(watcher, channel, known)),
                    watcher.probe(_none_from(watcher, channel, far)),
                )
            for other in REGIONS:
                if other != cut:
                    self.net.partition(cut, other)
            cut_at = clock()
            for r in REGIONS:  # changes on both sides while they cannot hear each other
                await leavers[r].act(PresenceLeave(channel))
                await joiners[r].act(PresenceEnter(channel, client_id=join[r]))
            await self._measure_since(
                cut_at, probes, 0, "unreachable", timing.suspect_after_s, cut, h
            )
            await self._measure_since(cut_at, probes, 1, "removed", timing.remove_after_s, cut, h)

            self.net.heal()
            healed_at = clock()
            truth = set(stay.values()) | set(join.values())
            bound = LINK_RETRY_S + timing.snapshot_s + BEAT_S + 4 * self.latency_s + MARGIN_S
            async with anyio.create_task_group() as tg:
                for watcher in self.watchers.values():
                    tg.start_soon(self._heal_sample, watcher, channel, truth, healed_at, bound, h)
            if self.report.failures:
                return
            # One more snapshot interval: nothing stale may come back, nothing go missing.
            await anyio.sleep(timing.snapshot_s + BEAT_S)
            for watcher in self.watchers.values():
                got = await watcher.members(channel)
                if got != dict.fromkeys(truth, "present"):
                    self._fail(
                        f"heal round {h + 1}: {watcher.region} presence.get went from the truth "
                        f"to {_diff(got, truth)} a snapshot interval later"
                    )
                view = {c: m["status"] for c, m in watcher.views.get(channel, {}).items()}
                if view != dict.fromkeys(truth, "present"):
                    self._fail(
                        f"heal round {h + 1}: {watcher.region}'s presence events add up to "
                        f"{_diff(view, truth)}"
                    )
            for r in REGIONS:  # leave, rather than linger leave_after_s after the close
                await stayers[r].act(PresenceLeave(channel))
                await joiners[r].act(PresenceLeave(channel))

    async def _all_see(self, channel: str, want: set[str], deadline: float) -> bool:
        for watcher in self.watchers.values():
            probe = watcher.probe(_exactly(watcher, channel, want))
            if await watcher.reached(probe, deadline) is None:
                self._fail(f"{watcher.region} did not see {sorted(want)} on {channel} in time")
                return False
        return True

    async def _measure_since(
        self,
        since: float,
        probes: Mapping[str, tuple[Probe, Probe]],
        which: int,
        name: str,
        configured_s: float,
        cut: str,
        h: int,
    ) -> None:
        bound = configured_s + TICK_S + MARGIN_S
        for region, pair in probes.items():
            at = await self.watchers[region].reached(pair[which], since + bound)
            if at is None:
                side = "the others'" if region == cut else f"{cut}'s"
                self._fail(
                    f"heal round {h + 1}: {side} members not {name} in {region} within "
                    f"{bound:.1f} s of the cut"
                )
            else:
                self.report.samples[name].append(at - since)

    async def _heal_sample(
        self, watcher: Watcher, channel: str, truth: set[str], since: float, bound: float, h: int
    ) -> None:
        want = dict.fromkeys(truth, "present")
        got: dict[str, str] = {}
        while clock() < since + bound:
            got = await watcher.members(channel)
            if got == want:
                self.report.samples["healed"].append(clock() - since)
                return
            await anyio.sleep(HEAL_POLL_S)  # the poll interval, not a wait for anything
        self._fail(
            f"heal round {h + 1}: {watcher.region} still answers {_diff(got, truth)} "
            f"{bound:.1f} s after the heal"
        )


async def _sees_every_region_up(url: str, up: set[str]) -> bool:
    """Whether the relay at ``url`` says every region is up (its links carry beats)."""
    directory = await fetch_directory([url], timeout_s=2.0)
    up.clear()
    up.update(e.region for e in (directory.edges if directory else ()) if e.health == "up")
    return up >= set(REGIONS)


def _exactly(watcher: Watcher, channel: str, want: set[str]) -> Callable[[], bool]:
    def test() -> bool:
        members = watcher.views.get(channel, {})
        return set(members) == want and all(m["status"] == "present" for m in members.values())

    return test


def _all_unreachable(watcher: Watcher, channel: str, known: set[str]) -> Callable[[], bool]:
    def test() -> bool:
        view = watcher.views.get(channel, {})
        return all(c in view and view[c]["status"] == "unreachable" for c in known)

    return test


def _none_from(watcher: Watcher, channel: str, regions: set[str]) -> Callable[[], bool]:
    def test() -> bool:
        return not any(m["region"] in regions for m in watcher.views.get(channel, {}).values())

    return test


def _diff(got: Mapping[str, str], truth: Iterable[str]) -> str:
    want = set(truth)
    phantom = sorted(set(got) - want)
    missing = sorted(want - set(got))
    odd = sorted(f"{c} {s}" for c, s in got.items() if c in want and s != "present")
    parts = []
    if phantom:
        parts.append(f"phantom {phantom}")
    if missing:
        parts.append(f"missing {missing}")
    if odd:
        parts.append(f"not present: {odd}")
    return "; ".join(parts) or "the truth"


async def _measure(net: Network, report: Report) -> None:
    async with AsyncExitStack() as stack:
        tg = await stack.enter_async_context(anyio.create_task_group())
        # Clients (entered later) close first, then the watchers' readers are stopped.
        stack.callback(tg.cancel_scope.cancel)
        bench = Bench(net, report, tg, stack)
        await bench.start()
        actors = {r: await bench.actor(r, stack) for r in REGIONS}
        await bench.warm_up(actors)
        for i in range(report.rounds):
            if not await bench.join_round(i, actors):
                break
        for h in range(report.heal_rounds):
            if report.failures:
                break
            await bench.heal_round(h)


async def _run(
    latency_ms: float,
    timing: PresenceSection,
    rounds: int,
    heal_rounds: int,
    json_path: Path | None,
) -> Report:
    report = Report(latency_ms, timing, rounds, heal_rounds)
    started = clock()
    with tempfile.TemporaryDirectory(
        prefix="relaynet-bench-presence-", ignore_cleanup_errors=True
    ) as tmp:
        report.workdir = tmp
        net = _network(Path(tmp), latency_ms, timing)
        async with net:
            await _measure(net, report)
        # After the stop, so that warnings logged while shutting down count too.
        report.problems = toolkit.problems(net.logs())
    report.wall_s = clock() - started
    if json_path is not None:
        _write_json(json_path, report.to_json())
    return report


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


# --- output -----------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{'n/a':>10}" if math.isnan(value) else f"{value:>10,.1f}"


def _window(name: str, seconds: float) -> str:
    """The last beat came up to a beat before the cut; the check runs every tick."""
    low, high = max(0.0, seconds - BEAT_S), seconds + TICK_S
    return f"{low:g} .. {high:g} s ({name} {seconds:g})"


def _expected(name: str, r: Report) -> str:
    t, link = r.timing, f"{r.latency_ms:g} ms"
    return {
        "ack": "a round trip to the relay",
        "enter": f"one link crossing ({link})",
        "update": f"one link crossing ({link})",
        "leave": f"one link crossing ({link})",
        "unreachable": _window("suspect_after_s", t.suspect_after_s),
        "removed": _window("remove_after_s", t.remove_after_s),
        "healed": f"<= link retry {LINK_RETRY_S:g} s + snapshot_s {t.snapshot_s:g} s",
    }[name]


LABELS: Final = {
    "ack": "enter -> presence.ok (local)",
    "enter": "enter -> event, other regions",
    "update": "update -> event, other regions",
    "leave": "leave -> event, other regions",
    "unreachable": "cut -> members unreachable",
    "removed": "cut -> members removed",
    "healed": "heal -> presence.get = truth",
}


def format_report(r: Report) -> str:
    t = r.timing
    lines = [
        f"== relaynet presence: {len(REGIONS)} regions on loopback, one-way link latency "
        f"{r.latency_ms:g} ms ==",
        f"regions               {', '.join(REGIONS)}: a nats-server (JetStream) and a relay each, "
        "a presence watcher in each",
        f"[presence]            suspect_after_s {t.suspect_after_s:g}, remove_after_s "
        f"{t.remove_after_s:g}, snapshot_s {t.snapshot_s:g}, leave_after_s {t.leave_after_s:g} "
        f"(beats every {BEAT_S:g} s)",
        f"rounds                {r.rounds} join (enter, update, leave; regions in turn), "
        f"{r.heal_rounds} partition ({', '.join(r.cut) or 'none'} cut off; 6 members, 3 leave "
        "and 3 enter during the cut)",
        f"warm-up               every region saw every region up {r.linked_s:.2f} s and every "
        f"region's member come and go {r.warm_up_s:.2f} s after the relays were ready",
        "",
        f"    {'measurement':<32} {'n':>3} {'p50 ms':>10} {'p99 ms':>10} {'max ms':>10}   expected",
    ]
    for name in MEASURES:
        values = [1000 * v for v in r.samples[name]]
        top = max(values) if values else math.nan
        lines.append(
            f"    {LABELS[name]:<32} {len(values):>3} {_ms(percentile(values, 0.5))} "
            f"{_ms(percentile(values, 0.99))} {_ms(top)}   {_expected(name, r)}"
        )
    lines += [
        "",
        "    (events: from the presence.ok in one region to the presence_event at a watcher",
        "    in each other region; cut/heal: from the proxies' cut or heal, per watcher)",
        f"converged             {'yes, within every bound' if not r.failures else 'NO'}",
        f"run                   {r.wall_s:.1f} s",
    ]
    lines += [f"failure               {f}" for f in r.failures]
    lines += server_log_lines("server logs           ", r.problems)
    return "\n".join(lines)


def _failed(r: Report) -> list[str]:
    reasons = list(r.failures)
    expected = {
        "ack": r.rounds,
        "enter": 2 * r.rounds,
        "update": 2 * r.rounds,
        "leave": 2 * r.rounds,
        "unreachable": 3 * r.heal_rounds,
        "removed": 3 * r.heal_rounds,
        "healed": 3 * r.heal_rounds,
    }
    short = [name for name, n in expected.items() if len(r.samples[name]) < n]
    if short and not reasons:
        reasons.append(f"missing samples: {', '.join(short)}")
    return reasons


# --- entry point ------------------------------------------------------------------------


def presence_timing(overrides: Mapping[str, float | None]) -> PresenceSection | str:
    """The relay's ``[presence]`` defaults with the options given; a message if invalid."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return PresenceSection.model_validate(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        option = (
            f"--{where.replace('_', '-')}: "
            if where
            else "--suspect-after-s, --remove-after-s: expected "
        )
        return f"{option}{error['msg']}"


def _check_args(latency_ms: float, rounds: int, heal_rounds: int) -> str | None:
    if not (math.isfinite(latency_ms) and 0 <= latency_ms <= MAX_LATENCY_MS):
        return f"--latency-ms must be 0..{MAX_LATENCY_MS:g}"
    if not 1 <= rounds <= MAX_ROUNDS:
        return f"--rounds must be 1..{MAX_ROUNDS}"
    if not 0 <= heal_rounds <= MAX_HEAL_ROUNDS:
        return f"--heal-rounds must be 0..{MAX_HEAL_ROUNDS}"
    return None


def _overall_cap(latency_ms: float, timing: PresenceSection, rounds: int, heal: int) -> float:
    """Start-up, warm-up, every round's bounded waits, and stopping."""
    link = latency_ms / 1000
    join = 3 * (REQUEST_S + EVENT_BOUND_S + 4 * link)
    partition = (
        12 * REQUEST_S
        + EVENT_BOUND_S
        + timing.suspect_after_s
        + timing.remove_after_s
        + 2 * MARGIN_S
        + LINK_RETRY_S
        + 2 * timing.snapshot_s
        + MARGIN_S
    )
    return 120 + WARMUP_S + rounds * join + heal * partition


async def run_presence_bench(
    latency_ms: float,
    rounds: int,
    heal_rounds: int,
    timing: Mapping[str, float | None],
    json_path: Path | None,
) -> int:
    """Run the presence benchmark and print its figures: exit code 0; 1 if presence did not
    converge within a bound or the network failed; 2 for bad arguments."""
    problem = _check_args(latency_ms, rounds, heal_rounds)
    section = presence_timing(timing)
    if isinstance(section, str):
        problem = problem or section
    if problem or isinstance(section, str):
        print(f"bench presence: {problem}", file=sys.stderr)
        return 2
    cap = _overall_cap(latency_ms, section, rounds, heal_rounds)
    return await run_and_report(
        "presence",
        cap,
        lambda: _run(latency_ms, section, rounds, heal_rounds, json_path),
        format_report,
        _failed,
    )
