"""``relaynet bench chaos``: a seeded randomized fault run that checks every guarantee.

Theory of operation
-------------------
In the spirit of Jepsen: real processes, a workload that records everything,
a *nemesis* that breaks things at random, then a checker over whole histories.

**The network.** Three regions on loopback, all real processes started here:
a nats-server (JetStream) per region and ``relaynet relay`` subprocesses, two in
us-east and one in each other region, with federation inside the relays. Every
directed federation link (region A reading B's NATS) goes through an in-process
``LinkProxy``. Relays and nats-servers listen on fixed ports, so a restarted
one is the same edge for the SDK's directory and the same peer for the links.
Retention and the dedupe window are configured larger than the run, so neither
may drop anything (those limits are documented non-guarantees).

**The workload.** Three channels: ``chat:a`` and ``chat:b`` (causal) and
``total:t`` (a namespace with ``ordering = "total"``).

* SDK clients (``relay.client.connect``), each near a region (``prefer``, its
  region's relays first in the seeds), subscribe to every channel from the
  beginning and publish numbered messages ``{"c": name, "n": n, "re": id}`` at a
  seeded random pace, now and then in bursts, with up to ``WINDOW`` publishes in
  flight (pipelined on one connection); about a third are replies to the last
  message they read from someone else (a causal chain).
  Each publish records how many messages of its channel the application had
  read when it was made: everything in that prefix must reach every subscriber
  before the publish. One more SDK client only subscribes and moves back to its
  region when it can. The SDK fails over, resumes and resends by itself.
* Plain protocol subscribers (``relay.simulate.client``), two per region, each
  on one relay; when the connection ends they open a fresh one (their relay
  first, then the other relays of their region) and resume from the position of
  the last message they processed. They never leave their region, so their
  sequences must agree per region.

**The nemesis.** ``plan_faults(seed, seconds)`` draws the whole schedule up
front from ``random.Random(seed)``: every 1-4 s one fault (sometimes two or
three at once), each with its targets and its length, never two at once on one
target. Kinds: ``cut`` (links reset, and new connections too) and ``hold``
(silent: nothing passes, nothing closes) of one link, both directions between
two regions, or all of one region's links; ``kill-relay`` (SIGKILL, restart
after a pause); ``kill-nats`` (SIGKILL, restart on the same port and store);
``kill-region`` (its nats-server and relays, then restart); ``freeze-relay`` and
``freeze-nats`` (SIGSTOP, then SIGCONT). Executing the plan follows its order
and targets exactly; only the timing moves when a restart takes longer than
planned. The workload's choices (pace, channels, replies, the SDK's backoff
jitter) come from the seed too, so a seed replays the same faults against the
same workload; only the timing of real processes differs between replays.

**The end.** After the last fault the nemesis has healed and restarted
everything; publishing stops; within ``CONVERGE_S`` every publish must be acked
and every acked message must have reached every subscriber; a short settle
catches late duplicates. Then ``relay.bench.history.check`` reads every
subscriber's whole sequence and every publisher's log (see that module for the
checks). Any violation, or not converging, fails the run (exit 1).

Everything is bounded: publishes per client, waits, restarts, the whole run.
Every process started here runs in its own session with a parent-death
SIGKILL, is signalled only by its pid while we have not reaped it, is
continued before it is stopped, and is gone when the run ends, however it ends
(error, Ctrl-C); the temporary directory is removed unless ``--keep``.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup
from websockets.exceptions import WebSocketException

from relay.bench import history
from relay.bench.history import Delivery, Publish, PublisherLog, SubscriberLog, Violation
from relay.bench.report import BenchError, first_error, run_and_report
from relay.client.connection import (
    Client,
    ClientError,
    ConnectionState,
    Message,
    Subscription,
    connect,
    data_of,
    fetch_directory,
)
from relay.client.routing import MoveBackPolicy
from relay.harness.network import FAST_FEDERATION, Network, ProcessRelay
from relay.harness.toolkit import (
    HarnessError,
    NatsServerProcess,
    clock,
    poll_until,
    start_time,
    tail,
)
from relay.simulate.client import ProtocolClient, protocol_client

REGIONS = ("us-east", "eu-west", "ap-south")
RELAYS: dict[str, tuple[str, ...]] = {
    "us-east": ("us-east-1", "us-east-2"),
    "eu-west": ("eu-west-1",),
    "ap-south": ("ap-south-1",),
}
CAUSAL_CHANNELS = ("chat:a", "chat:b")
TOTAL_CHANNEL = "total:t"
CHANNELS = (*CAUSAL_CHANNELS, TOTAL_CHANNEL)

# The workload.
PUBLISHERS = (
    ("east-a", "us-east"),
    ("east-b", "us-east"),
    ("west", "eu-west"),
    ("south", "ap-south"),
)
LISTENER = ("east-listener", "us-east")  # an SDK client that only subscribes, and moves back
PLAIN_PER_REGION = 2
PUBLISH_RATE = 5.0  # per publisher, per second (exponential gaps)
BURST_SHARE = 0.1  # of those, a burst of 2 to WINDOW publishes at once
WINDOW = 8  # publishes in flight per publisher
REPLY_SHARE = 0.3
MAX_PUBLISHES = 200_000  # per publisher, whatever the duration
KEEPALIVE_S = 2.0  # SDK: a frozen relay is left after about twice this
BACKOFF_MAX_S = 2.0  # SDK: between reconnects (suspended rounds: up to 6 times this)
PLAIN_PING_S = 2.0  # plain subscribers: websockets ping interval, and as long plus 1 s for pong

# The network.
HISTORY_MESSAGES = 10_000_000  # per channel: never reached, so retention drops nothing
PUBLISH_CONTEXT_WAIT_S = 10.0  # shorter than the default: the SDK's retry path runs too

# The nemesis.
MIN_FAULT_S = 5.0  # shortest fault window accepted
MAX_FAULT_S = 24 * 3600.0
FIRST_FAULT_S = (1.0, 3.0)
TICK_S = (1.0, 4.0)
SEVERAL_AT_ONCE = 0.25  # share of ticks with 2-3 faults
MAX_ACTIVE = 4  # faults planned to be active at once
KIND_WEIGHTS = {
    "cut": 3,
    "hold": 2,
    "kill-relay": 3,
    "kill-nats": 2,
    "kill-region": 1,
    "freeze-relay": 2,
    "freeze-nats": 1,
}
DURATION_S = {
    "cut": (0.5, 8.0),
    "hold": (0.5, 8.0),
    "kill-relay": (0.2, 4.0),  # the pause before the restart
    "kill-nats": (0.2, 4.0),
    "kill-region": (1.0, 6.0),
    "freeze-relay": (0.5, 6.0),
    "freeze-nats": (0.5, 6.0),
}
# Planned time a target stays busy after its fault's length: restarting and getting ready.
MARGIN_S = {"kill-relay": 6.0, "kill-nats": 2.0, "kill-region": 8.0}
WAIT_FOR_TARGET_S = 120.0  # a fault's targets still busy from the previous one after this: error

# Bounds.
START_TIMEOUT_S = 60.0
RESTART_TIMEOUT_S = 90.0
CONVERGE_S = 60.0
SETTLE_S = 2.0
CLOSE_TIMEOUT_S = 15.0
PROGRESS_EVERY_S = 60.0
MAX_SHOWN = 30  # violation lines in the text report (the JSON has them all)


# --- the fault plan (pure, seeded) --------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    at_s: float  # planned start, seconds after the nemesis starts
    kind: str
    targets: tuple[str, ...]  # links "a<-b", relay ids, "nats:<region>" or "region:<region>"
    duration_s: float

    def describe(self) -> str:
        return f"{self.kind} {', '.join(self.targets)} for {self.duration_s:.1f}s"

    def reserved(self) -> tuple[str, ...]:
        """The targets no other fault may touch meanwhile (a region kill takes all of it)."""
        if self.kind != "kill-region":
            return self.targets
        region = self.targets[0].removeprefix("region:")
        return (f"nats:{region}", *RELAYS[region])


def link_name(reader: str, peer: str) -> str:
    return f"{reader}<-{peer}"


def _link_choices() -> list[tuple[str, ...]]:
    links = [(a, b) for a in REGIONS for b in REGIONS if a != b]
    choices: list[tuple[str, ...]] = [(link_name(a, b),) for a, b in links]
    for i, a in enumerate(REGIONS):
        for b in REGIONS[i + 1 :]:
            choices.append((link_name(a, b), link_name(b, a)))
    for r in REGIONS:
        choices.append(tuple(link_name(a, b) for a, b in links if r in (a, b)))
    return choices


def _targets_for(kind: str) -> list[tuple[str, ...]]:
    relays = [relay for region in REGIONS for relay in RELAYS[region]]
    if kind in ("cut", "hold"):
        return _link_choices()
    if kind in ("kill-relay", "freeze-relay"):
        return [(relay,) for relay in relays]
    if kind in ("kill-nats", "freeze-nats"):
        return [(f"nats:{r}",) for r in REGIONS]
    if kind == "kill-region":
        return [(f"region:{r}",) for r in REGIONS]
    raise ValueError(f"unknown fault kind {kind!r}")


def plan_faults(seed: int, seconds: float) -> list[Fault]:
    """Every fault of a run, from the seed alone: same seed and length, same faults."""
    rng = random.Random(f"relaynet-chaos-nemesis-{seed}")
    kinds = list(KIND_WEIGHTS)
    weights = [KIND_WEIGHTS[k] for k in kinds]
    free_at: dict[str, float] = {}  # target -> when it is free again
    active: list[float] = []  # planned ends of faults
    plan: list[Fault] = []
    t = rng.uniform(*FIRST_FAULT_S)
    while t < seconds:
        count = rng.randint(2, 3) if rng.random() < SEVERAL_AT_ONCE else 1
        for _ in range(count):
            active = [end for end in active if end > t]
            if len(active) >= MAX_ACTIVE:
                break
            kind = rng.choices(kinds, weights)[0]
            duration = round(rng.uniform(*DURATION_S[kind]), 2)
            probe = [Fault(t, kind, targets, duration) for targets in _targets_for(kind)]
            free = [f for f in probe if all(free_at.get(x, 0.0) <= t for x in f.reserved())]
            if not free:
                continue
            fault = rng.choice(free)
            plan.append(fault)
            end = t + duration + MARGIN_S.get(kind, 0.5)
            active.append(end)
            for target in fault.reserved():
                free_at[target] = end
        t = round(t + rng.uniform(*TICK_S), 2)
    return plan


# --- the processes ------------------------------------------------------------------------


def relay_settings(duplicate_window_s: float) -> dict[str, Any]:
    """The sections of every relay's config (``toolkit.relay_config``)."""
    history_rule = {"history_max_messages": HISTORY_MESSAGES}
    return {
        "relay": {"shutdown_grace_s": 1.0},
        "nats": {"duplicate_window_s": duplicate_window_s},
        "namespaces": [
            {"name": "chat", "prefix": "chat:", **history_rule},
            {"name": "total", "prefix": "total:", "ordering": "total", **history_rule},
        ],
        "limits": {"publish_context_wait_s": PUBLISH_CONTEXT_WAIT_S},
        "federation": FAST_FEDERATION,
    }


@dataclass
class Started:
    """A process this run started: for the report, and for checking it is gone."""

    label: str
    pid: int
    started: str | None


async def _sees_every_region_up(url: str, up: set[str]) -> bool:
    """Whether the relay at ``url`` says every region is up; ``up``: those it says are."""
    directory = await fetch_directory([url], timeout_s=2.0)
    up.clear()
    up.update(e.region for e in (directory.edges if directory else ()) if e.health == "up")
    return up >= set(REGIONS)


class Cluster:
    """The network of the run (``relay.harness.network``), the faults it goes through and
    what it noticed: every signal to its processes goes through here."""

    def __init__(self, workdir: Path, duplicate_window_s: float) -> None:
        self.workdir = workdir
        relays = {r: len(ids) for r, ids in RELAYS.items()}
        settings = relay_settings(duplicate_window_s)
        self.net = Network(REGIONS, workdir, relays=relays, settings=settings, name="chaos")
        self.relay_ids = [relay for r in REGIONS for relay in RELAYS[r]]
        self.proxies = {link_name(a, b): proxy for (a, b), proxy in self.net.proxies.items()}
        self.frozen: set[str] = set()
        self.busy: set[str] = set()
        self.started: list[Started] = []
        self.failed_starts: list[str] = []  # relay starts that did not get ready (then retried)
        self.unexpected_exits: list[str] = []
        self.exit_logs: dict[str, str] = {}  # unexpected exit -> the end of its log

    def relay(self, relay_id: str) -> ProcessRelay:
        relay = self.net.relay(relay_id)
        assert isinstance(relay, ProcessRelay)
        return relay

    def region_edges(self, region: str) -> list[str]:
        return self.net.region_edges(region)

    # --- starting

    async def start(self) -> None:
        """After the network started: note its processes, wait until linked."""
        self.proxies = {link_name(a, b): proxy for (a, b), proxy in self.net.proxies.items()}
        for region in REGIONS:
            self._record(f"nats-server {self.net.name}-{region}", self.net.region(region).nats.pid)
        for relay_id in self.relay_ids:
            self._record(f"relay {relay_id}", self.relay(relay_id).pid)
        await self._wait_linked()

    def _record(self, label: str, pid: int | None) -> None:
        if pid is not None:
            self.started.append(Started(label, pid, start_time(pid)))

    async def start_relay(self, relay_id: str) -> None:
        """Start a relay and wait until it is ready; if it does not get there (its NATS
        was down, frozen or killed meanwhile), kill it and try again, for a while."""
        relay = self.relay(relay_id)
        region, deadline = relay.region, clock() + RESTART_TIMEOUT_S
        nats = self.net.region(region).nats
        while True:
            if not await poll_until(lambda: nats.running, deadline, 0.1):
                raise BenchError(f"relay {relay_id}: the nats-server of {region} is not running")
            process = relay.spawn()
            self._record(f"relay {relay_id}", process.proc.pid)
            try:
                await process.wait_ready()
                return
            except HarnessError as exc:
                await relay.down(kill=True)
                self.failed_starts.append(f"{relay_id}: {str(exc).splitlines()[0]}")
                if clock() > deadline:
                    raise BenchError(
                        f"relay {relay_id} not back after {RESTART_TIMEOUT_S:.0f}s: {exc}"
                    ) from None
            await anyio.sleep(0.5)

    async def start_nats(self, region: str) -> None:
        nats = self.net.region(region).nats
        with anyio.fail_after(START_TIMEOUT_S):
            await nats.up()
        self._record(f"nats-server {self.net.name}-{region}", nats.pid)

    async def _wait_linked(self) -> None:
        """Until every relay's directory shows every region up (the links carry beats)."""
        deadline = clock() + START_TIMEOUT_S
        for relay_id in self.relay_ids:
            up: set[str] = set()  # the regions it saw up the last time it was asked
            linked = functools.partial(_sees_every_region_up, self.relay(relay_id).url, up)
            if not await poll_until(linked, deadline, 0.2):
                raise BenchError(f"{relay_id} does not see every region up: {sorted(up)}")

    # --- faults

    async def kill_relay(self, relay_id: str) -> None:
        await self.relay(relay_id).down(kill=True)

    async def kill_nats(self, region: str) -> None:
        await self.net.region(region).nats.down(kill=True)

    def _pid_of(self, target: str) -> int | None:
        if target.startswith("nats:"):
            return self.net.region(target.removeprefix("nats:")).nats.pid
        return self.relay(target).pid

    def freeze(self, target: str) -> bool:
        if not self.net.freeze(self._pid_of(target)):
            return False
        self.frozen.add(target)
        return True

    def thaw(self, target: str) -> None:
        self.frozen.discard(target)
        self.net.thaw(self._pid_of(target))

    # --- the end

    async def restore(self) -> list[str]:
        """Heal every link, continue everything frozen, start whatever is not running
        (nothing should be: every fault undoes itself). Returns what it had to do."""
        done: list[str] = []
        for name, proxy in self.proxies.items():
            if proxy.state != "open":
                done.append(f"healed {name}")
                proxy.heal()
        for target in sorted(self.frozen):
            done.append(f"continued {target}")
            self.thaw(target)
        for region in REGIONS:
            if not self.net.region(region).nats.running:
                done.append(f"started the nats-server of {region}")
                await self.start_nats(region)
        self.check_alive()
        for relay_id in self.relay_ids:
            if not self.relay(relay_id).alive:
                done.append(f"started {relay_id}")
                await self.start_relay(relay_id)
        return done

    def check_alive(self) -> None:
        """Note a relay or nats-server that exited without being killed, with its last
        log lines."""
        exited = [
            (relay_id, relay.process.proc.returncode, relay.process.logs[0])
            for relay_id in self.relay_ids
            if (relay := self.relay(relay_id)).process is not None
            and relay.process.proc.poll() is not None
            and relay_id not in self.busy
        ]
        for region in REGIONS:
            nats = self.net.region(region).nats
            assert isinstance(nats, NatsServerProcess)
            code = None if nats.proc is None else nats.proc.poll()
            if code is not None and f"nats:{region}" not in self.busy:
                exited.append((f"nats:{region}", code, nats.log))
        for name, code, log in exited:
            note = f"{name} exited by itself (code {code}; its log {log.name})"
            if note not in self.unexpected_exits:
                self.unexpected_exits.append(note)
                self.exit_logs[note] = tail(log, 30)


# --- the nemesis --------------------------------------------------------------------------


@dataclass
class FaultRecord:
    fault: Fault
    started_s: float | None = None  # seconds after the nemesis started
    ended_s: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.fault.kind,
            "targets": list(self.fault.targets),
            "planned_at_s": self.fault.at_s,
            "duration_s": self.fault.duration_s,
            "started_s": _round(self.started_s),
            "ended_s": _round(self.ended_s),
            "note": self.note,
        }


class Nemesis:
    def __init__(self, cluster: Cluster, plan: list[Fault], say: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.records = [FaultRecord(f) for f in plan]
        self.say = say
        self._start = 0.0

    def now(self) -> float:
        return clock() - self._start

    @property
    def epoch(self) -> float:
        """The clock() time the nemesis started: time 0 of the fault log."""
        return self._start

    async def run(self) -> None:
        """Inject every planned fault in order; returns once every one is undone."""
        self._start = clock()
        busy = self.cluster.busy
        async with anyio.create_task_group() as tg:
            for record in self.records:
                fault = record.fault
                await anyio.sleep(max(0.0, fault.at_s - self.now()))
                reserved = fault.reserved()

                def free(reserved: tuple[str, ...] = reserved) -> bool:
                    return not busy.intersection(reserved)

                if not await poll_until(free, clock() + WAIT_FOR_TARGET_S, 0.05):
                    raise BenchError(f"{fault.describe()}: its targets are still busy")
                self.cluster.check_alive()  # before this fault kills one that died by itself
                busy.update(reserved)
                record.started_s = self.now()
                self.say(f"  +{record.started_s:6.1f}s  {fault.describe()}")
                tg.start_soon(self._inject, record)

    async def _inject(self, record: FaultRecord) -> None:
        fault, cluster = record.fault, self.cluster
        try:
            if fault.kind in ("cut", "hold"):
                proxies = [cluster.proxies[name] for name in fault.targets]
                for proxy in proxies:
                    proxy.cut() if fault.kind == "cut" else proxy.hold()
                await anyio.sleep(fault.duration_s)
                for proxy in proxies:
                    proxy.heal()
            elif fault.kind == "kill-relay":
                (relay_id,) = fault.targets
                await cluster.kill_relay(relay_id)
                await anyio.sleep(fault.duration_s)
                await cluster.start_relay(relay_id)
            elif fault.kind == "kill-nats":
                region = fault.targets[0].removeprefix("nats:")
                await cluster.kill_nats(region)
                await anyio.sleep(fault.duration_s)
                await cluster.start_nats(region)
            elif fault.kind == "kill-region":
                region = fault.targets[0].removeprefix("region:")
                for relay_id in RELAYS[region]:
                    await cluster.kill_relay(relay_id)
                await cluster.kill_nats(region)
                await anyio.sleep(fault.duration_s)
                await cluster.start_nats(region)
                async with anyio.create_task_group() as tg:
                    for relay_id in RELAYS[region]:
                        tg.start_soon(cluster.start_relay, relay_id)
            else:  # freeze-relay, freeze-nats
                (target,) = fault.targets
                if not cluster.freeze(target):
                    record.note = "not running: nothing to freeze"
                    return
                try:
                    await anyio.sleep(fault.duration_s)
                finally:
                    cluster.thaw(target)
        finally:
            record.ended_s = self.now()
            cluster.busy.difference_update(fault.reserved())

    def counts(self) -> dict[str, int]:
        counts = Counter(r.fault.kind for r in self.records if r.started_s is not None)
        return {kind: counts[kind] for kind in KIND_WEIGHTS if counts[kind]}


# --- the workload -------------------------------------------------------------------------


def delivery(message_id: str, origin: str, ts: Mapping[str, int], data: Any) -> Delivery:
    publisher = n = None
    if isinstance(data, dict):
        c, k = data.get("c"), data.get("n")
        if isinstance(c, str) and isinstance(k, int):
            publisher, n = c, k
    return Delivery(message_id, origin, dict(ts), publisher, n)


@dataclass
class Sent:
    """One publish of an SDK client, in the order it was made."""

    channel: str
    n: int
    seen: int
    made_at: float  # clock()
    made_on: str | None  # the relay the client was connected to (or last was)
    id: str | None = None
    error: str | None = None
    acked_at: float | None = None
    acked_on: str | None = None
    ack_position: dict[str, int] | None = None

    def describe(self, publisher: str, epoch: float) -> str:
        made = f"made +{self.made_at - epoch:.2f}s on {self.made_on}"
        if self.acked_at is None:
            return (
                f"{self.channel} {publisher}#{self.n} seen={self.seen} {made}; error {self.error}"
            )
        acked = f"acked +{self.acked_at - epoch:.2f}s on {self.acked_on} at {self.ack_position}"
        return f"{self.channel} {publisher}#{self.n} seen={self.seen} id={self.id} {made}; {acked}"


class SdkPeer:
    """An SDK client near ``home``: subscribes to every channel from the start, and
    publishes if it is a publisher. Records what its application got and sent."""

    def __init__(
        self,
        name: str,
        home: str,
        seeds: list[str],
        seed: int,
        *,
        publishes: bool,
        move_back: MoveBackPolicy = "stay",
    ) -> None:
        self.name = name
        self.home = home
        self.seeds = seeds
        self.publishes = publishes
        self.move_back = move_back
        self.rng = random.Random(f"relaynet-chaos-{seed}-{name}")
        self.backoff_rng = random.Random(f"relaynet-chaos-backoff-{seed}-{name}")
        self.history: dict[str, list[Delivery]] = {ch: [] for ch in CHANNELS}
        self.sent: list[Sent] = []
        self.in_flight = 0
        self.ended: str | None = None
        self.client: Client | None = None
        self.regions: list[str] = []  # region of each connection, in order
        self.states: list[tuple[float, str, str | None]] = []  # (clock(), state, relay)

    def _on_state(self, state: ConnectionState) -> None:
        client = self.client
        relay = client.relay if client is not None else None
        self.states.append((clock(), str(state), relay))
        if state is ConnectionState.CONNECTED and client is not None:
            self.regions.append(client.region or "?")

    async def run(
        self, subscribed: anyio.Event, stop_publishing: anyio.Event, close: anyio.Event
    ) -> None:
        # Bounded until subscribed, then until `close`.
        with anyio.CancelScope(deadline=anyio.current_time() + START_TIMEOUT_S) as scope:
            try:
                async with connect(
                    self.seeds,
                    prefer=self.home,
                    keepalive_s=KEEPALIVE_S,
                    backoff_max_s=BACKOFF_MAX_S,
                    rng=self.backoff_rng,
                    move_back=self.move_back,
                    refresh_s=5.0,
                    on_state=self._on_state,
                ) as client:
                    self.client = client
                    self.regions.append(client.region or "?")
                    subs = [await client.subscribe(ch, position={}) for ch in CHANNELS]
                    scope.deadline = math.inf
                    subscribed.set()
                    async with anyio.create_task_group() as tg:
                        for sub in subs:
                            tg.start_soon(self._consume, sub)
                        if self.publishes:
                            tg.start_soon(self._publish_loop, client, stop_publishing, tg)
                        await close.wait()
                        tg.cancel_scope.cancel()
            except ClientError as exc:
                if not subscribed.is_set():
                    raise BenchError(f"SDK client {self.name} could not start: {exc!r}") from None
                self.ended = self.ended or f"the client failed: {exc!r}"
        if scope.cancelled_caught:
            raise BenchError(f"SDK client {self.name} not subscribed after {START_TIMEOUT_S:.0f}s")

    async def _consume(self, sub: Subscription) -> None:
        received = self.history[sub.channel]
        try:
            async for message in sub:
                received.append(sdk_delivery(message))
        except ClientError as exc:
            self.ended = f"{sub.channel}: {exc!r}"
            return
        if self.ended is None:
            self.ended = f"{sub.channel}: the subscription ended"

    async def _publish_loop(self, client: Client, stop: anyio.Event, tg: TaskGroup) -> None:
        """Publishes at a random pace, now and then a burst of several at once; at most
        ``WINDOW`` in flight, at most ``MAX_PUBLISHES`` in all."""
        window = anyio.Semaphore(WINDOW)
        due = clock()
        n = 0
        while n < MAX_PUBLISHES:
            due += self.rng.expovariate(PUBLISH_RATE)
            with anyio.move_on_after(max(0.0, due - clock())):
                await stop.wait()
            burst = self.rng.randint(2, WINDOW) if self.rng.random() < BURST_SHARE else 1
            for _ in range(burst):
                if stop.is_set():
                    return
                await window.acquire()
                if stop.is_set():
                    window.release()
                    return
                channel = self.rng.choice(CHANNELS)
                reply_to = None
                if self.rng.random() < REPLY_SHARE:
                    others = [d for d in self.history[channel][-50:] if d.publisher != self.name]
                    reply_to = others[-1].id if others else None
                tg.start_soon(self._publish_one, client, channel, n, reply_to, window)
                n += 1

    async def _publish_one(
        self, client: Client, channel: str, n: int, reply_to: str | None, window: anyio.Semaphore
    ) -> None:
        # No await before client.publish: the SDK takes its send lock in this same step,
        # in FIFO order, so `sent` is in the order the publishes were made and sent.
        record = Sent(channel, n, len(self.history[channel]), clock(), client.relay)
        self.sent.append(record)
        self.in_flight += 1
        try:
            ack = await client.publish(channel, {"c": self.name, "n": n, "re": reply_to})
            record.id = ack.id
            record.acked_at, record.acked_on = clock(), client.relay
            record.ack_position = ack.position.to_dict()
        except ClientError as exc:
            record.error = repr(exc)
        finally:
            if record.id is None and record.error is None:
                record.error = "still waiting for its ack at the end"
            self.in_flight -= 1
            window.release()

    def subscriber_log(self) -> SubscriberLog:
        return SubscriberLog(self.name, None, dict(self.history), self.ended)

    def publisher_log(self) -> PublisherLog:
        publishes = [Publish(s.channel, s.n, s.seen, s.id, s.error) for s in self.sent]
        return PublisherLog(self.name, publishes, reader=self.name)


def sdk_delivery(message: Message) -> Delivery:
    """What the history checker keeps of a message an SDK client received."""
    try:
        data = data_of(message)
    except ValueError:
        data = None
    return delivery(message.id, message.origin, message.ts.to_dict(), data)


class PlainSubscriber:
    """A plain protocol client on one relay of ``region`` (``urls[0]``): on every new
    connection it resumes each channel from the position of the last message it
    processed, trying its own relay first, then the other relays of its region."""

    def __init__(self, name: str, region: str, urls: list[str], seed: int) -> None:
        self.name = name
        self.region = region
        self.urls = urls
        self.rng = random.Random(f"relaynet-chaos-plain-{seed}-{name}")
        self.history: dict[str, list[Delivery]] = {ch: [] for ch in CHANNELS}
        self.position: dict[str, dict[str, int]] = {ch: {} for ch in CHANNELS}
        self.connections = 0
        self.closes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.ended: str | None = None
        self.log: list[tuple[float, str]] = []  # (clock(), what happened): for debugging

    async def run(self, subscribed: anyio.Event, close: anyio.Event) -> None:
        attempt = 0
        while not close.is_set() and self.ended is None:
            url = self.urls[attempt % len(self.urls)]
            if await self._session(url, subscribed, close):
                attempt = 0
            else:
                attempt += 1
            with anyio.move_on_after(self.rng.uniform(0.1, 0.5)):
                await close.wait()

    async def _session(self, url: str, subscribed: anyio.Event, close: anyio.Event) -> bool:
        """One connection; True if it got subscribed to every channel."""
        ok = False
        try:
            async with protocol_client(
                url,
                open_timeout=3,
                ping_interval=PLAIN_PING_S,
                ping_timeout=PLAIN_PING_S + 1,
                close_timeout=1,
                proxy=None,
            ) as pc:
                self.connections += 1
                self.log.append((clock(), f"connected to {url}, resuming at {self.position}"))
                try:
                    for channel in CHANNELS:
                        reply = await pc.subscribe(channel, self.position[channel])
                        if reply.get("op") != "subscribed":
                            code = str(reply.get("code"))
                            self.errors[f"subscribe: {code}"] += 1
                            if code == "position_expired":
                                self.ended = f"{channel}: position_expired {reply}"
                            return False
                    ok = True
                    subscribed.set()
                    while pc.closed_code is None and not close.is_set():
                        self._take(pc)
                        with anyio.move_on_after(0.1):
                            await close.wait()
                finally:
                    self._take(pc)
                    if pc.closed_code is not None:
                        self.closes[str(pc.closed_code)] += 1
                        self.log.append((clock(), f"closed {pc.closed_code} {pc.closed_reason}"))
        except* (OSError, TimeoutError, ConnectionError, WebSocketException) as group:
            # The connection's task group wraps what its reader raised.
            exc = first_error(group)
            self.errors[type(exc).__name__] += 1
            self.log.append((clock(), f"{url}: {exc!r}"))
        return ok

    def _take(self, pc: ProtocolClient) -> None:
        """Move what arrived into the history, so the client keeps nothing twice."""
        for channel in CHANNELS:
            frames = pc.messages.get(channel)
            if not frames:
                continue
            received = self.history[channel]
            for frame in frames:
                received.append(
                    delivery(frame["id"], frame["origin"], frame["ts"], frame.get("data"))
                )
            self.position[channel] = dict(frames[-1]["position"])
            frames.clear()
        pc.frames.clear()

    def subscriber_log(self) -> SubscriberLog:
        return SubscriberLog(self.name, self.region, dict(self.history), self.ended)


# --- the run ------------------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    fault_s: float
    workdir: str
    kept: bool
    wall_s: float = 0.0
    converge_s: float | None = None  # from "healed" to "every acked message everywhere"
    restored: list[str] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    fault_counts: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    acked: int = 0
    publish_errors: dict[str, int] = field(default_factory=dict)
    deliveries: int = 0
    per_subscriber: dict[str, int] = field(default_factory=dict)
    sdk_connections: int = 0
    sdk_region_changes: int = 0
    plain_connections: int = 0
    plain_closes: dict[str, int] = field(default_factory=dict)
    plain_errors: dict[str, int] = field(default_factory=dict)
    failed_starts: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    exit_logs: dict[str, str] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    processes: list[Started] = field(default_factory=list)
    histories: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    error: str | None = None  # why the run did not finish
    crashes: dict[str, int] = field(default_factory=dict)  # see _crash_lines

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "fault_s": self.fault_s,
            "wall_s": _round(self.wall_s),
            "converge_s": _round(self.converge_s),
            "converge_bound_s": CONVERGE_S,
            "replay": replay_command(self.seed, self.fault_s),
            "workdir": self.workdir,
            "workdir_kept": self.kept,
            "error": self.error,
            "operations": {
                "publishes_sent": self.sent,
                "publishes_acked": self.acked,
                "publish_errors": self.publish_errors,
                "deliveries": self.deliveries,
                "deliveries_per_subscriber": self.per_subscriber,
                "sdk_connections": self.sdk_connections,
                "sdk_region_changes": self.sdk_region_changes,
                "plain_connections": self.plain_connections,
                "plain_closes": self.plain_closes,
                "plain_errors": self.plain_errors,
            },
            "faults": {
                "injected": sum(self.fault_counts.values()),
                "by_kind": self.fault_counts,
                "log": [r.to_json() for r in self.faults],
                "restored_at_end": self.restored,
                "relay_starts_retried": self.failed_starts,
                "unexpected_exits": self.unexpected_exits,
                "unexpected_exit_logs": self.exit_logs,
            },
            "exceptions_in_logs": self.crashes,
            "violations": history.violations_json(self.violations),
            "processes": [
                {"label": p.label, "pid": p.pid, "start_time": p.started} for p in self.processes
            ],
            "histories": self.histories,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def replay_command(seed: int, fault_s: float) -> str:
    if fault_s >= 60 and fault_s % 60 == 0:
        return f"relaynet bench chaos --minutes {fault_s / 60:g} --seed {seed}"
    return f"relaynet bench chaos --seconds {fault_s:g} --seed {seed}"


def _acked_keys(peers: Iterable[SdkPeer]) -> dict[str, set[tuple[str, int]]]:
    acked: dict[str, set[tuple[str, int]]] = {ch: set() for ch in CHANNELS}
    for peer in peers:
        for s in peer.sent:
            if s.id is not None:
                acked[s.channel].add((peer.name, s.n))
    return acked


def _missing(
    histories: Iterable[dict[str, list[Delivery]]], acked: dict[str, set[tuple[str, int]]]
) -> int:
    missing = 0
    for received in histories:
        for channel, keys in acked.items():
            got = {d.key for d in received[channel]}
            missing += len(keys - got)
    return missing


async def _run(fault_s: float, seed: int, json_path: Path | None, keep: bool) -> Report:
    started = clock()
    workdir = Path(tempfile.mkdtemp(prefix="relaynet-chaos-"))
    report = Report(seed, fault_s, str(workdir), keep)
    cluster = Cluster(workdir, duplicate_window_s=fault_s + 600.0)
    try:
        async with cluster.net:  # every start is bounded: nats-servers, then relays
            await _run_in(cluster, report, _say)
    except BaseException as exc:
        first = first_error(exc)
        stopped = isinstance(first, anyio.get_cancelled_exc_class() | KeyboardInterrupt)
        report.error = "interrupted (Ctrl-C or SIGTERM)" if stopped else repr(first)
        raise
    finally:
        await cluster.net.stop()
        report.processes = list(cluster.started)
        report.wall_s = clock() - started
        report.crashes = _crash_lines(workdir)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        if json_path is not None:
            _write_json(json_path, report.to_json())
    return report


TRACEBACK = "(a traceback without an exception line)"
_ADDRESS = re.compile(r"\b(0x)?[0-9a-f]{12,16}\b")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d ")  # a new record of the relays' log format
_EXCEPTION_LINE = re.compile(
    r"^[\s|]*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)\b.*)$"
)


def _crash_lines(workdir: Path) -> dict[str, int]:
    """Exceptions in the relays' logs (the last exception line of each traceback, chained
    ones and exception groups included, addresses masked) and fatal lines of the
    nats-servers, with how often each occurred: not violations, but worth a look."""
    found: Counter[str] = Counter()
    for log in sorted(workdir.glob("relay-*/relay.log")):
        relay = log.parent.name.removeprefix("relay-").split(".")[0]
        last: str | None = None  # in a traceback: its last exception line so far
        for line in [*log.read_text(errors="replace").splitlines(), "0000-00-00 end"]:
            if _LOG_LINE.match(line):  # a traceback ends where the next record starts
                if last is not None:
                    found[f"{relay}: {_ADDRESS.sub('0x…', last)[:300]}"] += 1
                last = None
            elif "Traceback (most recent call last)" in line:
                last = last or TRACEBACK
            elif (
                last is not None
                and (match := _EXCEPTION_LINE.match(line))
                and "ExceptionGroup" not in match.group(1)
            ):
                last = match.group(1).strip()
    nats_logs = sorted(workdir.glob("nats-*/nats-server.log"))
    nats_logs += sorted(workdir.glob("nats-*/stderr"))
    for log in nats_logs:
        for line in log.read_text(errors="replace").splitlines():
            if "[FTL]" in line or line.startswith("panic:"):
                found[f"{log.parent.name}: {line[:300]}"] += 1
    return dict(found)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


async def _run_in(cluster: Cluster, report: Report, say: Callable[[str], None]) -> None:
    seed, fault_s = report.seed, report.fault_s
    with anyio.fail_after(START_TIMEOUT_S * 3):
        await cluster.start()
    say(f"  network up: {len(cluster.relay_ids)} relays, 3 nats-servers, 6 link proxies")
    say(f"  workdir {cluster.workdir}")

    def seeds(home: str) -> list[str]:
        return cluster.region_edges(home) + [
            url for r in REGIONS if r != home for url in cluster.region_edges(r)
        ]

    peers = [SdkPeer(name, home, seeds(home), seed, publishes=True) for name, home in PUBLISHERS]
    listener_name, listener_home = LISTENER
    peers.append(
        SdkPeer(
            listener_name,
            listener_home,
            seeds(listener_home),
            seed,
            publishes=False,
            move_back="when-idle",
        )
    )
    plain: list[PlainSubscriber] = []
    for region in REGIONS:
        for i in range(PLAIN_PER_REGION):
            edges = cluster.region_edges(region)
            own = edges[i % len(edges)]
            urls = [own] + [u for u in edges if u != own]
            plain.append(PlainSubscriber(f"plain-{region}-{i + 1}", region, urls, seed))

    stop_publishing, close = anyio.Event(), anyio.Event()
    nemesis = Nemesis(cluster, plan_faults(seed, fault_s), say)
    report.faults = nemesis.records
    async with anyio.create_task_group() as clients:
        ready: list[anyio.Event] = []
        for peer in peers:
            ready.append(anyio.Event())
            clients.start_soon(peer.run, ready[-1], stop_publishing, close)
        for sub in plain:
            ready.append(anyio.Event())
            clients.start_soon(sub.run, ready[-1], close)
        with anyio.fail_after(START_TIMEOUT_S):
            for event in ready:
                await event.wait()
        say(f"  subscribed: {len(peers)} SDK clients, {len(plain)} plain subscribers")

        everyone = [p.history for p in peers] + [s.history for s in plain]

        async def progress() -> None:
            while True:
                await anyio.sleep(PROGRESS_EVERY_S)
                sent = sum(len(p.sent) for p in peers)
                acked = sum(1 for p in peers for s in p.sent if s.id is not None)
                got = sum(len(h) for x in everyone for h in x.values())
                say(
                    f"  +{nemesis.now():6.1f}s  progress: {sent} sent, {acked} acked, "
                    f"{got} delivered, {sum(nemesis.counts().values())} faults"
                )
                cluster.check_alive()

        async with anyio.create_task_group() as running:
            running.start_soon(progress)
            with anyio.fail_after(fault_s + WAIT_FOR_TARGET_S + RESTART_TIMEOUT_S + 60):
                await nemesis.run()
            running.cancel_scope.cancel()
        report.fault_counts = nemesis.counts()
        cluster.check_alive()
        report.restored = await cluster.restore()
        say(f"  +{nemesis.now():6.1f}s  faults over, all healed and running; publishing stops")

        # Liveness: every publish acked, every acked message at every subscriber.
        stop_publishing.set()
        healed = clock()
        deadline = healed + CONVERGE_S
        await poll_until(lambda: all(p.in_flight == 0 for p in peers), deadline, 0.1)
        acked = _acked_keys(peers)
        if await poll_until(lambda: _missing(everyone, acked) == 0, deadline, 0.25):
            report.converge_s = clock() - healed
            say(f"  converged in {report.converge_s:.1f}s")
        else:
            say(f"  not converged after {CONVERGE_S:.0f}s")
        await anyio.sleep(SETTLE_S)  # late duplicates
        close.set()
    report.failed_starts = list(cluster.failed_starts)
    report.unexpected_exits = list(cluster.unexpected_exits)
    report.exit_logs = dict(cluster.exit_logs)
    _fill_figures(report, peers, plain, nemesis.epoch)


def _fill_figures(
    report: Report, peers: list[SdkPeer], plain: list[PlainSubscriber], epoch: float
) -> None:
    report.sent = sum(len(p.sent) for p in peers)
    report.acked = sum(1 for p in peers for s in p.sent if s.id is not None)
    report.publish_errors = dict(
        Counter(s.error.split("(")[0] for p in peers for s in p.sent if s.error)
    )
    subscribers = [p.subscriber_log() for p in peers] + [s.subscriber_log() for s in plain]
    report.per_subscriber = {s.name: sum(len(h) for h in s.received.values()) for s in subscribers}
    report.deliveries = sum(report.per_subscriber.values())
    report.sdk_connections = sum(len(p.regions) for p in peers)
    report.sdk_region_changes = sum(
        sum(1 for a, b in zip(p.regions, p.regions[1:], strict=False) if a != b) for p in peers
    )
    report.plain_connections = sum(s.connections for s in plain)
    closes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for s in plain:
        closes.update(s.closes)
        errors.update(s.errors)
    report.plain_closes = dict(sorted(closes.items()))
    report.plain_errors = dict(sorted(errors.items()))
    publishers = [p.publisher_log() for p in peers if p.publishes]
    report.violations = history.check(subscribers, publishers, total_order_channels={TOTAL_CHANNEL})
    if report.violations:
        report.histories = {
            s.name: {ch: [_line(d) for d in got] for ch, got in s.received.items()}
            for s in subscribers
        }
        report.histories |= {
            f"sent by {p.name}": {"": [x.describe(p.name, epoch) for x in p.sent]}
            for p in peers
            if p.publishes
        }
        report.histories |= {
            f"connections of {s.name}": {"": [f"+{t - epoch:.2f}s {what}" for t, what in s.log]}
            for s in plain
        }
        report.histories |= {
            f"states of {p.name}": {
                "": [f"+{t - epoch:.2f}s {state} {relay}" for t, state, relay in p.states]
            }
            for p in peers
        }


def _line(d: Delivery) -> str:
    ts = ",".join(f"{r}:{c}" for r, c in sorted(d.ts.items()))
    return f"{d.publisher}#{d.n} {d.id} {d.origin} {ts}"


def _say(line: str) -> None:
    print(line, flush=True)


# --- the report ---------------------------------------------------------------------------


def format_report(report: Report) -> str:
    counts = report.fault_counts
    kinds = ", ".join(f"{kind} {count}" for kind, count in counts.items())
    closes = ", ".join(f"{code} x{n}" for code, n in report.plain_closes.items()) or "none"
    lines = [
        f"bench chaos: seed {report.seed}, {report.fault_s:g} s of faults, "
        f"3 regions (us-east: 2 relays, eu-west, ap-south)",
        f"  operations: {report.sent:,} publishes sent, {report.acked:,} acked"
        + (f" (errors: {report.publish_errors})" if report.publish_errors else "")
        + f"; {report.deliveries:,} deliveries to {len(report.per_subscriber)} subscribers",
        f"  SDK clients: {report.sdk_connections} connections, {report.sdk_region_changes} to "
        f"another region; plain subscribers: {report.plain_connections} connections, "
        f"closes {closes}",
        f"  faults: {sum(counts.values())} injected ({kinds})",
    ]
    if report.failed_starts:
        lines.append(
            f"  relay starts retried (NATS down or frozen meanwhile): {len(report.failed_starts)}"
        )
    if report.unexpected_exits:
        names = ", ".join(
            note.split(" (")[0].removesuffix(" exited by itself")
            for note in report.unexpected_exits
        )
        lines.append(
            f"  exited by themselves, not killed: {len(report.unexpected_exits)} ({names}; "
            "the end of each one's log is in the JSON)"
        )
    if report.restored:
        lines.append(f"  restored at the end: {', '.join(report.restored)}")
    if report.crashes:
        lines.append(f"  exceptions in the servers' logs ({sum(report.crashes.values())}):")
        lines += [f"    {n} x {line}" for line, n in list(report.crashes.items())[:10]]
    if report.converge_s is not None:
        lines.append(
            f"  converged: every acked message at every subscriber {report.converge_s:.1f} s "
            f"after the last fault was undone (bound {CONVERGE_S:.0f} s)"
        )
    else:
        lines.append(f"  NOT converged within {CONVERGE_S:.0f} s after the last fault was undone")
    by_kind = history.count_by_kind(report.violations)
    if by_kind:
        lines.append(
            f"  violations: {sum(by_kind.values())} ("
            + ", ".join(f"{k} {n}" for k, n in by_kind.items())
            + "), the first ones (the same finding at several subscribers on one line):"
        )
        lines += [f"    {line}" for line in _grouped(report.violations)[:MAX_SHOWN]]
    else:
        lines.append("  violations: none")
    minutes, seconds = divmod(report.wall_s, 60)
    replay = replay_command(report.seed, report.fault_s)
    lines.append(f"  wall time {int(minutes)} min {seconds:.0f} s; replay: {replay}")
    return "\n".join(lines)


def _grouped(violations: list[Violation]) -> list[str]:
    """One line per (kind, channel, detail), naming every subscriber it was found at."""
    where: dict[tuple[str, str, str], list[str]] = {}
    for v in violations:
        where.setdefault((v.kind, v.channel, v.detail), []).append(v.subscriber or "publisher")
    return [
        f"{kind} ({channel}; {', '.join(names)}): {detail}"
        for (kind, channel, detail), names in where.items()
    ]


def _failed(report: Report) -> list[str]:
    reasons = []
    by_kind = history.count_by_kind(report.violations)
    if by_kind:
        kinds = ", ".join(f"{k} {n}" for k, n in by_kind.items())
        reasons.append(f"{sum(by_kind.values())} violations ({kinds})")
    if report.converge_s is None:
        reasons.append(f"not converged within {CONVERGE_S:.0f} s")
    if reasons:
        reasons.append(f"replay: {replay_command(report.seed, report.fault_s)}")
    return reasons


async def run_chaos(fault_s: float, seed: int | None, json_path: Path | None, keep: bool) -> int:
    """The fault run; exit code 0, 1 on a violation or a failure to run, 2 for bad arguments."""
    if not (math.isfinite(fault_s) and MIN_FAULT_S <= fault_s <= MAX_FAULT_S):
        print(f"bench chaos: the fault window must be {MIN_FAULT_S:g} s to 24 h", file=sys.stderr)
        return 2
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    print(f"bench chaos: seed {seed} (replay: {replay_command(seed, fault_s)})", flush=True)
    cap = fault_s + WAIT_FOR_TARGET_S + RESTART_TIMEOUT_S + 5 * START_TIMEOUT_S + CONVERGE_S + 120
    code = 128 + signal.SIGTERM  # unless the run ends first
    # SIGTERM stops the run like Ctrl-C does: everything it started is stopped first.
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def on_sigterm() -> None:
                async for _ in signals:
                    print("bench chaos: SIGTERM: stopping", file=sys.stderr, flush=True)
                    tg.cancel_scope.cancel()

            tg.start_soon(on_sigterm)
            code = await run_and_report(
                "chaos", cap, lambda: _run(fault_s, seed, json_path, keep), format_report, _failed
            )
            tg.cancel_scope.cancel()
    return code
