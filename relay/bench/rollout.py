"""``relaynet bench rollout``: a rolling deploy under traffic, checked for zero loss.

Theory of operation
-------------------
**The network** (``relay.harness.network``): three regions on loopback, each a
nats-server with JetStream and two ``relaynet relay`` processes, federation inside
the relays, every link through a ``LinkProxy``. Relays run with the schema's
defaults for federation (lease, ack wait) and shutdown grace, as a deployment
would; only retention is raised so that it drops nothing during the run.

**The traffic.** ``clients`` SDK clients per region (``relay.client.connect``,
``prefer`` their region, its relays first in the seeds), each subscribed to every
channel from the start of the log and publishing ``{"c": name, "n": n}`` at a
steady ``rate``, the channels in turn, with at most ``WINDOW`` publishes in
flight. Every delivery and every ack is recorded with its time; every exception
the SDK hands the application (a publish, a subscription, the client itself) and
every ``failed`` state is an application-visible error. State changes and
reconnects are not errors: that is the SDK doing its job.

**The rollout.** After ``before_s`` of traffic, every relay of the rolled region
(or of each region in turn) is replaced one by one, as an orchestrator would:
SIGTERM (the relay redirects its clients to a sibling, acks what is in flight and
closes with 1001), wait until it has exited, start it again with the same config
on the same port, wait until it says it is ready and its siblings list it in
their ``/v1/edges`` (so the next drain has somewhere to redirect to), next. A
relay that had to be SIGKILLed after the harness's stop timeout counts as a
failure: it did not drain.

**The end.** ``after_s`` more of traffic, then publishing stops; within
``CONVERGE_S`` every publish must be acked and every acked message must have
reached every subscriber. ``relay.bench.history.check`` then reads whole
histories: nothing lost, nothing duplicated, publisher and causal order, and one
order per region (for clients that never left their region).

**The figures.** Per relay: drain (SIGTERM to exit), start (to ready) and
until its siblings list it; the whole rollout. Reconnects and redirects the
clients went through. Delivery gaps (time between consecutive messages of one
subscription), publish-to-ack and publish-to-deliver latencies (the latter for
subscribers in the publisher's region and in the others apart: federation
shows in the second), before the rollout against during it: a gap counts as
"during" when it overlaps the rollout, a publish when it was made during it.

Everything is bounded (publishes per client, every wait, the whole run); every
process is started and stopped by the harness, with a parent-death signal, and
the temporary directory is removed unless ``--keep``.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import random
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from relay.bench import history
from relay.bench.chaos import Started, sdk_delivery
from relay.bench.fanout import percentile
from relay.bench.history import Delivery, Publish, PublisherLog, SubscriberLog, Violation
from relay.bench.report import BenchError, run_and_report
from relay.client import Client, ConnectionState, Subscription, connect, fetch_directory
from relay.config.schema import RelaySection
from relay.harness import toolkit
from relay.harness.network import RELAY_START_TIMEOUT_S, Network, ProcessRelay
from relay.harness.toolkit import clock, poll_until, start_time

REGIONS = ("us-east", "eu-west", "ap-south")
RELAYS_PER_REGION = 2
CHANNELS = ("roll:a", "roll:b")
ALL = "all"

DEFAULT_REGION = "us-east"
DEFAULT_CLIENTS = 4  # per region
DEFAULT_RATE = 5.0  # publishes per second, per client
DEFAULT_BEFORE_S = 10.0
DEFAULT_AFTER_S = 5.0
MAX_CLIENTS = 50
MAX_RATE = 100.0
MAX_PHASE_S = 600.0
MIN_BEFORE_S = 2.0  # a baseline needs some traffic

WARMUP_S = 1.0  # after every client subscribed: replays and first connections settle
WINDOW = 16  # publishes in flight per client
MAX_PUBLISHES = 100_000  # per client, whatever the durations
HISTORY_MESSAGES = 1_000_000  # per channel: never reached, so retention drops nothing

START_TIMEOUT_S = 60.0  # the network linked; every client subscribed
LISTED_TIMEOUT_S = 30.0  # a restarted relay in its siblings' directories
PROBE_TIMEOUT_S = 2.0
CONVERGE_S = 60.0
SETTLE_S = 1.0  # late duplicates
MAX_SHOWN = 20  # violation and error lines in the text report (the JSON has them all)
# Every nats-server of the harness says so at start: its generated passwords are in its
# config file, on purpose. Not news from the rollout.
HARNESS_WARNING = "Plaintext passwords detected"
# A stopped relay's wait is the harness's: SIGTERM, its stop timeout, then SIGKILL.
STOP_BOUND_S = toolkit.STOP_TIMEOUT_S + 10.0


def relay_settings() -> dict[str, Any]:
    """Every relay's config sections (``toolkit.relay_config``): production defaults but
    for retention."""
    return {
        # toolkit.relay_config shortens the grace for tests; a deploy runs the default.
        "relay": {"shutdown_grace_s": RelaySection.model_fields["shutdown_grace_s"].default},
        "namespaces": [
            {"name": "roll", "prefix": "roll:", "history_max_messages": HISTORY_MESSAGES}
        ],
    }


# --- figures (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The clock() times that split the run: measuring starts, the rollout starts, ends."""

    measure_from: float
    roll_start: float
    roll_end: float

    def gap_phase(self, earlier: float, later: float) -> str | None:
        """``before``, ``during`` or None (warm-up, after) for the gap between two deliveries."""
        if earlier < self.measure_from:
            return None
        if later <= self.roll_start:
            return "before"
        if earlier <= self.roll_end:
            return "during"
        return None

    def publish_phase(self, made_at: float) -> str | None:
        if self.measure_from <= made_at < self.roll_start:
            return "before"
        if self.roll_start <= made_at <= self.roll_end:
            return "during"
        return None


@dataclass(frozen=True)
class Spread:
    count: int
    p50_s: float
    p99_s: float
    max_s: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(
            len(values),
            percentile(list(values), 0.50),
            percentile(list(values), 0.99),
            max(values) if values else math.nan,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "p50_ms": _ms(self.p50_s),
            "p99_ms": _ms(self.p99_s),
            "max_ms": _ms(self.max_s),
        }


def gaps_by_phase(arrivals: Iterable[Sequence[float]], window: Window) -> dict[str, list[float]]:
    """Gaps between consecutive deliveries of each subscription, by phase."""
    found: dict[str, list[float]] = {"before": [], "during": []}
    for times in arrivals:
        for earlier, later in itertools.pairwise(times):
            phase = window.gap_phase(earlier, later)
            if phase is not None:
                found[phase].append(later - earlier)
    return found


def _ms(seconds: float | None) -> float | None:
    if seconds is None or math.isnan(seconds):
        return None
    return round(1000 * seconds, 1)


# --- the clients ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AppError:
    """Something the SDK raised to the application (or a state it must act on)."""

    at: float  # clock()
    where: str  # "publish roll:a #12", "subscription roll:b", "client"
    kind: str  # the exception's type, "state failed" or "ended"
    detail: str

    def describe(self, client: str, epoch: float) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{client} +{self.at - epoch:.2f}s {self.where}: {self.kind}{detail}"


@dataclass
class Sent:
    """One publish, in the order the client made it."""

    channel: str
    n: int
    seen: int  # messages of the channel the application had read when it published this
    made_at: float
    id: str | None = None
    acked_at: float | None = None
    error: str | None = None


class RollingClient:
    """An SDK client near ``home``: subscribed to every channel from the start of the log,
    publishing at a steady rate. Records what its application got, sent and was raised."""

    def __init__(self, name: str, home: str, seeds: list[str], rng: random.Random) -> None:
        self.name = name
        self.home = home
        self.seeds = seeds
        self.rng = rng
        self.history: dict[str, list[Delivery]] = {ch: [] for ch in CHANNELS}
        self.arrivals: dict[str, list[float]] = {ch: [] for ch in CHANNELS}
        self.sent: list[Sent] = []
        self.in_flight = 0
        self.errors: list[AppError] = []
        self.ended: str | None = None
        self.client: Client | None = None
        self.connections: list[tuple[float, str, str]] = []  # (clock(), region, relay)
        self.states: list[tuple[float, str]] = []

    def _on_state(self, state: ConnectionState) -> None:
        now = clock()
        self.states.append((now, str(state)))
        client = self.client
        if state is ConnectionState.CONNECTED and client is not None:
            self.connections.append((now, client.region or "?", client.relay or "?"))
        elif state is ConnectionState.FAILED:
            self.errors.append(AppError(now, "client", "state failed", ""))

    def _raised(self, where: str, exc: BaseException) -> None:
        self.errors.append(AppError(clock(), where, type(exc).__name__, str(exc)))

    @property
    def reconnects(self) -> int:
        return max(0, len(self.connections) - 1)

    @property
    def redirects(self) -> int:
        return self.client.redirects if self.client is not None else 0

    @property
    def stayed_home(self) -> bool:
        return all(region == self.home for _, region, _ in self.connections)

    async def run(
        self, subscribed: anyio.Event, stop: anyio.Event, close: anyio.Event, rate: float
    ) -> None:
        try:
            async with connect(self.seeds, prefer=self.home, on_state=self._on_state) as client:
                self.client = client
                self.connections.append((clock(), client.region or "?", client.relay or "?"))
                subs = [await client.subscribe(ch, position={}) for ch in CHANNELS]
                subscribed.set()
                async with anyio.create_task_group() as tg:
                    for sub in subs:
                        tg.start_soon(self._consume, sub)
                    tg.start_soon(self._publish_loop, client, stop, tg, rate)
                    await close.wait()
                    tg.cancel_scope.cancel()
        except Exception as exc:  # whatever the SDK raises is what an application would see
            if not subscribed.is_set():
                raise BenchError(f"SDK client {self.name} could not start: {exc!r}") from None
            self._raised("client", exc)
            self.ended = self.ended or f"the client ended: {exc!r}"

    async def _consume(self, sub: Subscription) -> None:
        got, at = self.history[sub.channel], self.arrivals[sub.channel]
        try:
            async for message in sub:
                at.append(clock())
                got.append(sdk_delivery(message))
        except Exception as exc:
            self._raised(f"subscription {sub.channel}", exc)
            self.ended = self.ended or f"{sub.channel}: {exc!r}"
            return
        self.errors.append(AppError(clock(), f"subscription {sub.channel}", "ended", ""))
        self.ended = self.ended or f"{sub.channel}: the subscription ended"

    async def _publish_loop(
        self, client: Client, stop: anyio.Event, tg: TaskGroup, rate: float
    ) -> None:
        window = anyio.Semaphore(WINDOW)
        interval = 1.0 / rate
        due = clock() + self.rng.uniform(0.0, interval)  # clients out of step with each other
        for n in range(MAX_PUBLISHES):
            with anyio.move_on_after(max(0.0, due - clock())):
                await stop.wait()
            if stop.is_set():
                return
            await window.acquire()
            if stop.is_set():
                window.release()
                return
            tg.start_soon(self._publish_one, client, CHANNELS[n % len(CHANNELS)], n, window)
            # A full window delays this client's schedule rather than bursting after it.
            due = max(due + interval, clock())

    async def _publish_one(
        self, client: Client, channel: str, n: int, window: anyio.Semaphore
    ) -> None:
        # No await before client.publish: the SDK takes its send lock in this same step, in
        # FIFO order, so `sent` is in the order the publishes were made and sent.
        record = Sent(channel, n, len(self.history[channel]), clock())
        self.sent.append(record)
        self.in_flight += 1
        try:
            ack = await client.publish(channel, {"c": self.name, "n": n})
            record.id, record.acked_at = ack.id, clock()
        except Exception as exc:
            record.error = repr(exc)
            self._raised(f"publish {channel} #{n}", exc)
        finally:
            if record.id is None and record.error is None:
                record.error = "still waiting for its ack at the end"
            self.in_flight -= 1
            window.release()

    def subscriber_log(self) -> SubscriberLog:
        # Clients that stayed in their region must agree with each other on its order.
        region = self.home if self.stayed_home else None
        return SubscriberLog(self.name, region, dict(self.history), self.ended)

    def publisher_log(self) -> PublisherLog:
        publishes = [Publish(s.channel, s.n, s.seen, s.id, s.error) for s in self.sent]
        return PublisherLog(self.name, publishes, reader=self.name)


class WarningCount(logging.Handler):
    """The SDK's warnings during the run (a refused connection, an error frame it did not
    hand the application): not failures, but worth a look."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines[record.getMessage()[:200]] += 1


# --- the rollout ----------------------------------------------------------------------------


@dataclass
class Step:
    """One relay replaced."""

    relay_id: str
    region: str
    sigterm_at: float
    exited_at: float | None = None
    exit_code: int | None = None
    ready_at: float | None = None
    listed_at: float | None = None

    @property
    def drain_s(self) -> float | None:
        return _between(self.sigterm_at, self.exited_at)

    @property
    def start_s(self) -> float | None:
        return _between(self.exited_at, self.ready_at)

    @property
    def listed_s(self) -> float | None:
        return _between(self.ready_at, self.listed_at)

    @property
    def total_s(self) -> float | None:
        return _between(self.sigterm_at, self.listed_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "relay": self.relay_id,
            "region": self.region,
            "exit_code": self.exit_code,
            "drain_s": _round(self.drain_s),
            "start_s": _round(self.start_s),
            "listed_s": _round(self.listed_s),
            "total_s": _round(self.total_s),
        }


def _between(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


async def _lists(sibling: str, url: str) -> bool:
    """Whether the relay at ``sibling`` lists ``url`` as an edge that takes clients."""
    directory = await fetch_directory([sibling], timeout_s=PROBE_TIMEOUT_S)
    return directory is not None and any(e.url == url and e.health == "up" for e in directory.edges)


async def _sees_every_region(url: str) -> bool:
    directory = await fetch_directory([url], timeout_s=PROBE_TIMEOUT_S)
    up = {e.region for e in (directory.edges if directory else ()) if e.health == "up"}
    return up >= set(REGIONS)


class Roller:
    """Replaces relays one by one, as an orchestrator would, and times each step."""

    def __init__(self, net: Network, say: Callable[[str], None]) -> None:
        self.net = net
        self.say = say
        self.steps: list[Step] = []
        self.started: list[Started] = []

    def record(self, label: str, pid: int | None) -> None:
        if pid is not None:
            self.started.append(Started(label, pid, start_time(pid)))

    async def roll_region(self, region: str, epoch: float) -> None:
        relays = self.net.region(region).relays
        for relay in relays:
            assert isinstance(relay, ProcessRelay)
            await self._replace(relay, [r.url for r in relays if r is not relay], epoch)

    async def _replace(self, relay: ProcessRelay, siblings: list[str], epoch: float) -> None:
        step = Step(relay.relay_id, relay.region, clock())
        self.steps.append(step)
        self.say(f"  +{step.sigterm_at - epoch:6.1f}s  SIGTERM {relay.relay_id}")
        with anyio.fail_after(STOP_BOUND_S):
            await relay.down()  # SIGTERM, until it exits (SIGKILL past the stop timeout)
        step.exited_at = clock()
        assert relay.process is not None
        step.exit_code = relay.process.proc.returncode
        with anyio.fail_after(RELAY_START_TIMEOUT_S + 10):
            await relay.up()  # the same config and port, until it says it is ready
        step.ready_at = clock()
        self.record(f"relay {relay.relay_id}", relay.pid)
        for sibling in siblings:
            listed = functools.partial(_lists, sibling, relay.url)
            if not await poll_until(listed, clock() + LISTED_TIMEOUT_S, 0.1):
                raise BenchError(
                    f"{relay.relay_id} restarted, but {sibling} does not list it after "
                    f"{LISTED_TIMEOUT_S:g}s"
                )
        step.listed_at = clock()
        self.say(
            f"  +{step.listed_at - epoch:6.1f}s  {relay.relay_id} back (exit code "
            f"{step.exit_code}, drained in {step.drain_s:.2f}s)"
        )


# --- the run --------------------------------------------------------------------------------


@dataclass
class Plan:
    regions: tuple[str, ...]  # rolled, in this order
    clients: int = DEFAULT_CLIENTS
    rate: float = DEFAULT_RATE
    before_s: float = DEFAULT_BEFORE_S
    after_s: float = DEFAULT_AFTER_S

    def to_json(self) -> dict[str, Any]:
        return {
            "regions_rolled": list(self.regions),
            "clients_per_region": self.clients,
            "rate_per_client": self.rate,
            "before_s": self.before_s,
            "after_s": self.after_s,
        }


@dataclass
class Report:
    plan: Plan
    workdir: str
    kept: bool
    wall_s: float = 0.0
    steps: list[Step] = field(default_factory=list)
    rollout_s: float | None = None
    converge_s: float | None = None  # from "publishing stops" to every acked message everywhere
    sent: int = 0
    acked: int = 0
    deliveries: int = 0
    reconnects: int = 0
    redirects: int = 0
    left_region: list[str] = field(default_factory=list)  # clients that connected elsewhere
    errors: list[str] = field(default_factory=list)  # application-visible, described
    error_kinds: dict[str, int] = field(default_factory=dict)  # exception type -> count
    sdk_warnings: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, Spread] = field(default_factory=dict)
    ack_latency: dict[str, Spread] = field(default_factory=dict)
    # publish -> deliver, subscribers in the publisher's region and in the others
    local_latency: dict[str, Spread] = field(default_factory=dict)
    remote_latency: dict[str, Spread] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    server_problems: list[str] = field(default_factory=list)
    processes: list[Started] = field(default_factory=list)
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)  # per client, for the JSON
    error: str | None = None  # why the run did not finish

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json(),
            "wall_s": _round(self.wall_s),
            "workdir": self.workdir,
            "workdir_kept": self.kept,
            "error": self.error,
            "rollout": {
                "total_s": _round(self.rollout_s),
                "relays": [s.to_json() for s in self.steps],
            },
            "traffic": {
                "publishes_sent": self.sent,
                "publishes_acked": self.acked,
                "deliveries": self.deliveries,
                "converge_s": _round(self.converge_s),
            },
            "clients": {
                "reconnects": self.reconnects,
                "redirects_followed": self.redirects,
                "left_their_region": self.left_region,
                "application_errors": len(self.errors),
                "application_errors_by_kind": self.error_kinds,
                "application_error_list": self.errors,
                "sdk_warnings": self.sdk_warnings,
                "each": self.clients,
            },
            "delivery_gap": {phase: s.to_json() for phase, s in self.gaps.items()},
            "publish_ack_latency": {phase: s.to_json() for phase, s in self.ack_latency.items()},
            "publish_deliver_latency_same_region": {
                phase: s.to_json() for phase, s in self.local_latency.items()
            },
            "publish_deliver_latency_other_regions": {
                phase: s.to_json() for phase, s in self.remote_latency.items()
            },
            "violations": history.violations_json(self.violations),
            "server_log_problems": self.server_problems,
            "processes": [
                {"label": p.label, "pid": p.pid, "start_time": p.started} for p in self.processes
            ],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _say(line: str) -> None:
    print(line, flush=True)


def _seeds(net: Network, home: str) -> list[str]:
    """The client's region's relays first, then every other relay."""
    return net.region_edges(home) + [
        url for region in REGIONS if region != home for url in net.region_edges(region)
    ]


def _missing(clients: Sequence[RollingClient], acked: dict[str, set[tuple[str, int]]]) -> int:
    missing = 0
    for c in clients:
        for channel, keys in acked.items():
            missing += len(keys - {d.key for d in c.history[channel]})
    return missing


async def _run(plan: Plan, json_path: Path | None, keep: bool) -> Report:
    started = clock()
    workdir = Path(tempfile.mkdtemp(prefix="relaynet-rollout-"))
    report = Report(plan, str(workdir), keep)
    net = Network(
        REGIONS, workdir, relays=RELAYS_PER_REGION, settings=relay_settings(), name="rollout"
    )
    roller = Roller(net, _say)
    warnings = WarningCount()
    sdk_log = logging.getLogger("relaynet.client")
    sdk_log.addHandler(warnings)
    try:
        async with net:
            await _run_in(net, roller, report, plan)
    except BaseException as exc:
        report.error = repr(exc)
        raise
    finally:
        sdk_log.removeHandler(warnings)
        await net.stop()
        report.sdk_warnings = dict(warnings.lines)
        report.steps = roller.steps
        report.processes = roller.started
        report.server_problems = [
            line for line in toolkit.problems(net.logs()) if HARNESS_WARNING not in line
        ]
        report.wall_s = clock() - started
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        if json_path is not None:
            _write_json(json_path, report.to_json())
    return report


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


async def _run_in(net: Network, roller: Roller, report: Report, plan: Plan) -> None:
    for name, each in net.regions.items():
        roller.record(f"nats-server {name}", each.nats.pid)
    for relay in net.relays():
        roller.record(f"relay {relay.relay_id}", relay.pid)
    deadline = clock() + START_TIMEOUT_S
    for relay in net.relays():
        if not await poll_until(functools.partial(_sees_every_region, relay.url), deadline, 0.2):
            raise BenchError(f"{relay.relay_id} does not see every region up")
    _say(f"  network up: {len(net.relays())} relays, {len(REGIONS)} nats-servers")

    rng = random.Random("relaynet-rollout")
    clients = [
        RollingClient(f"{region}-c{i + 1}", region, _seeds(net, region), rng)
        for region in REGIONS
        for i in range(plan.clients)
    ]
    stop_publishing, close = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        ready = []
        for c in clients:
            ready.append(anyio.Event())
            tg.start_soon(c.run, ready[-1], stop_publishing, close, plan.rate)
        with anyio.fail_after(START_TIMEOUT_S):
            for event in ready:
                await event.wait()
        epoch = clock()
        _say(f"  {len(clients)} clients subscribed and publishing")
        measure_from = epoch + WARMUP_S
        await anyio.sleep(plan.before_s)  # the baseline: steady traffic, nothing rolled
        roll_start = clock()
        for rolled in plan.regions:
            await roller.roll_region(rolled, epoch)
        roll_end = clock()
        report.rollout_s = roll_end - roll_start
        _say(f"  +{roll_end - epoch:6.1f}s  rollout done in {report.rollout_s:.1f}s")
        await anyio.sleep(plan.after_s)
        stop_publishing.set()
        stopped = clock()
        deadline = stopped + CONVERGE_S
        await poll_until(lambda: all(c.in_flight == 0 for c in clients), deadline, 0.05)
        acked: dict[str, set[tuple[str, int]]] = {ch: set() for ch in CHANNELS}
        for c in clients:
            for s in c.sent:
                if s.id is not None:
                    acked[s.channel].add((c.name, s.n))
        if await poll_until(lambda: _missing(clients, acked) == 0, deadline, 0.1):
            report.converge_s = clock() - stopped
        await anyio.sleep(SETTLE_S)  # duplicates arrive late, if at all
        close.set()
    _fill_figures(report, clients, Window(measure_from, roll_start, roll_end), epoch)


def _fill_figures(
    report: Report, clients: list[RollingClient], window: Window, epoch: float
) -> None:
    report.sent = sum(len(c.sent) for c in clients)
    report.acked = sum(1 for c in clients for s in c.sent if s.id is not None)
    report.deliveries = sum(len(h) for c in clients for h in c.history.values())
    report.reconnects = sum(c.reconnects for c in clients)
    report.redirects = sum(c.redirects for c in clients)
    report.left_region = [c.name for c in clients if not c.stayed_home]
    report.errors = [e.describe(c.name, epoch) for c in clients for e in c.errors]
    report.error_kinds = dict(Counter(e.kind for c in clients for e in c.errors))
    gaps = gaps_by_phase((at for c in clients for at in c.arrivals.values()), window)
    report.gaps = {phase: Spread.of(values) for phase, values in gaps.items()}
    latencies: dict[str, list[float]] = {"before": [], "during": []}
    for c in clients:
        for s in c.sent:
            phase = window.publish_phase(s.made_at)
            if phase is not None and s.acked_at is not None:
                latencies[phase].append(s.acked_at - s.made_at)
    report.ack_latency = {phase: Spread.of(values) for phase, values in latencies.items()}
    local, remote = deliver_latencies(clients, window)
    report.local_latency = {phase: Spread.of(values) for phase, values in local.items()}
    report.remote_latency = {phase: Spread.of(values) for phase, values in remote.items()}
    report.violations = history.check(
        [c.subscriber_log() for c in clients], [c.publisher_log() for c in clients]
    )
    report.clients = {
        c.name: {
            "home": c.home,
            "connections": [
                {"at_s": round(t - epoch, 3), "region": region, "relay": relay}
                for t, region, relay in c.connections
            ],
            "redirects": c.redirects,
            "states": [f"+{t - epoch:.2f}s {state}" for t, state in c.states],
            "sent": len(c.sent),
            "received": {ch: len(got) for ch, got in c.history.items()},
        }
        for c in clients
    }


def deliver_latencies(
    clients: Sequence[RollingClient], window: Window
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Publish -> deliver latencies by phase of the publish: (subscribers in the
    publisher's region, subscribers in other regions). Every client is in this process,
    so their clocks are one."""
    made = {(c.name, s.n): (s.made_at, c.home) for c in clients for s in c.sent}
    local: dict[str, list[float]] = {"before": [], "during": []}
    remote: dict[str, list[float]] = {"before": [], "during": []}
    for c in clients:
        for channel, got in c.history.items():
            for d, at in zip(got, c.arrivals[channel], strict=True):
                key = d.key
                if key is None or key not in made:
                    continue
                made_at, home = made[key]
                phase = window.publish_phase(made_at)
                if phase is not None:
                    (local if home == c.home else remote)[phase].append(at - made_at)
    return local, remote


# --- the report -----------------------------------------------------------------------------


def _time(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    return f"{1000 * seconds:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _spread_rows(label: str, spreads: dict[str, Spread]) -> list[str]:
    before, during = spreads.get("before"), spreads.get("during")
    rows = []
    for name, attr in (("p50", "p50_s"), ("p99", "p99_s"), ("max", "max_s")):
        a = getattr(before, attr) if before else None
        b = getattr(during, attr) if during else None
        rows.append(f"    {label + ' ' + name:<28} {_time(a):>10} {_time(b):>10}")
    return rows


def format_report(r: Report) -> str:
    p = r.plan
    lines = [
        f"bench rollout: {len(REGIONS)} regions x {RELAYS_PER_REGION} relays (processes), "
        f"{p.clients * len(REGIONS)} SDK clients ({p.clients} per region) each publishing "
        f"{p.rate:g}/s over {len(CHANNELS)} channels and subscribed to all; rolled: "
        f"{', '.join(p.regions)}",
        f"  rollout: {len(r.steps)} relays replaced one by one in {_time(r.rollout_s)} "
        "(SIGTERM -> exited -> started -> ready -> listed by its siblings)",
    ]
    for s in r.steps:
        lines.append(
            f"    {s.relay_id:<12} drain {_time(s.drain_s):>8}, start {_time(s.start_s):>8}, "
            f"listed {_time(s.listed_s):>8} = {_time(s.total_s):>8}  (exit code {s.exit_code})"
        )
    lines += [
        f"  traffic: {r.sent:,} publishes, {r.acked:,} acked; {r.deliveries:,} deliveries"
        + (f"; converged {_time(r.converge_s)} after publishing stopped" if r.converge_s else ""),
        f"  clients: {r.reconnects} reconnects, {r.redirects} redirects followed, "
        f"{len(r.left_region)} left their region"
        + (f" ({', '.join(r.left_region)})" if r.left_region else ""),
        f"  {'':<28} {'before':>10} {'during':>10}",
        *_spread_rows("delivery gap", r.gaps),
        *_spread_rows("publish -> ack", r.ack_latency),
        *_spread_rows("deliver, same region", r.local_latency),
        *_spread_rows("deliver, other regions", r.remote_latency),
        f"    (samples: gaps {r.gaps['before'].count if 'before' in r.gaps else 0} / "
        f"{r.gaps['during'].count if 'during' in r.gaps else 0}, publishes "
        f"{r.ack_latency['before'].count if 'before' in r.ack_latency else 0} / "
        f"{r.ack_latency['during'].count if 'during' in r.ack_latency else 0})",
    ]
    if r.errors:
        kinds = ", ".join(f"{kind} {n}" for kind, n in r.error_kinds.items())
        lines.append(f"  errors raised to the application: {len(r.errors)} ({kinds})")
        lines += [f"    {line}" for line in r.errors[:MAX_SHOWN]]
    else:
        lines.append("  errors raised to the application: none")
    if r.sdk_warnings:
        lines.append(f"  SDK warnings: {sum(r.sdk_warnings.values())}")
        lines += [f"    {n} x {line}" for line, n in list(r.sdk_warnings.items())[:5]]
    by_kind = history.count_by_kind(r.violations)
    if by_kind:
        lines.append(
            f"  violations: {sum(by_kind.values())} ("
            + ", ".join(f"{k} {n}" for k, n in by_kind.items())
            + ")"
        )
        lines += [f"    {v}" for v in r.violations[:MAX_SHOWN]]
    else:
        lines.append("  violations: none (lost, duplicated, publisher/causal/region order)")
    if r.server_problems:
        lines.append(f"  server logs: {len(r.server_problems)} warning/error lines, first ones:")
        lines += [f"    {line[:200]}" for line in r.server_problems[:8]]
    kept = f"; logs kept in {r.workdir}" if r.kept else ""
    lines.append(f"  wall time {r.wall_s:.0f} s{kept}")
    return "\n".join(lines)


def failures(r: Report) -> list[str]:
    reasons = []
    by_kind = history.count_by_kind(r.violations)
    if by_kind:
        reasons.append(
            f"{sum(by_kind.values())} violations ("
            + ", ".join(f"{k} {n}" for k, n in by_kind.items())
            + ")"
        )
    if r.errors:
        reasons.append(f"{len(r.errors)} errors raised to the application")
    killed = [s.relay_id for s in r.steps if s.exit_code != 0]
    if killed:
        reasons.append(f"did not exit cleanly on SIGTERM: {', '.join(killed)}")
    if r.converge_s is None:
        reasons.append(f"not converged within {CONVERGE_S:g} s after publishing stopped")
    return reasons


def _check_args(plan: Plan) -> str | None:
    if not 1 <= plan.clients <= MAX_CLIENTS:
        return f"--clients must be 1..{MAX_CLIENTS}"
    if not (math.isfinite(plan.rate) and 0 < plan.rate <= MAX_RATE):
        return f"--rate must be above 0 and at most {MAX_RATE:g}"
    if not (math.isfinite(plan.before_s) and MIN_BEFORE_S <= plan.before_s <= MAX_PHASE_S):
        return f"--before-s must be {MIN_BEFORE_S:g}..{MAX_PHASE_S:g}"
    if not (math.isfinite(plan.after_s) and 0 <= plan.after_s <= MAX_PHASE_S):
        return f"--after-s must be 0..{MAX_PHASE_S:g}"
    return None


def _cap_s(plan: Plan) -> float:
    per_relay = STOP_BOUND_S + RELAY_START_TIMEOUT_S + 10 + LISTED_TIMEOUT_S
    relays = RELAYS_PER_REGION * len(plan.regions)
    return (
        3 * START_TIMEOUT_S
        + RELAY_START_TIMEOUT_S
        + plan.before_s
        + relays * per_relay
        + plan.after_s
        + CONVERGE_S
        + SETTLE_S
        + 60
    )


def regions_to_roll(choice: str) -> tuple[str, ...]:
    return REGIONS if choice == ALL else (choice,)


async def run_rollout(
    region: str = DEFAULT_REGION,
    clients: int = DEFAULT_CLIENTS,
    rate: float = DEFAULT_RATE,
    before_s: float = DEFAULT_BEFORE_S,
    after_s: float = DEFAULT_AFTER_S,
    json_path: Path | None = None,
    keep: bool = False,
) -> int:
    """The rolling deploy; exit code 0, 1 on a violation, an application-visible error, a
    relay that did not drain, or a failure to run, 2 for bad arguments."""
    if region != ALL and region not in REGIONS:
        known = ", ".join(REGIONS)
        print(f"bench rollout: --region must be one of {known} or {ALL}", file=sys.stderr)
        return 2
    plan = Plan(regions_to_roll(region), clients, rate, before_s, after_s)
    problem = _check_args(plan)
    if problem:
        print(f"bench rollout: {problem}", file=sys.stderr)
        return 2
    return await run_and_report(
        "rollout", _cap_s(plan), lambda: _run(plan, json_path, keep), format_report, failures
    )
