"""``relaynet bench failover``: what the SDK costs to connect, and how long a failover takes.

Theory of operation
-------------------
Three regions on loopback (us-east, eu-west, ap-south), each a nats-server with
JetStream and one relay, all subprocesses; federation links go straight to the
peers' nats-servers. The relays listen on fixed ports, so a relay restarted on
its port is the same edge for the directory and for clients.

The client (the Python SDK, ``relay.client.connection.connect``) lives in this
process and sits *near us-east*: its ``dial`` hook sends every request to
eu-west through a ``LinkProxy`` that adds ``L`` ms each way and to ap-south
through one adding ``2 L``, so the probes rank the regions for real and a
failover lands one hop further away, as it would across a continent. The
publisher sits in ap-south and talks to its relay directly.

1. **Connect**: ``connect(seeds=[us-east's URL])`` until it yields (directory
   fetch from the seed, ``probes`` probes per edge, WebSocket handshake to the
   nearest, its ``connected`` frame), ``connects`` times. The same iteration
   also times the routing steps on their own (``fetch_directory`` and
   ``probe_all``, what ``survey`` does) and the baseline: a bare
   ``websockets.connect`` to the same edge and its ``connected`` frame, what a
   client that skips routing pays.
2. **Failover, relay killed** (``trials`` times): a fresh client subscribes to a
   fresh channel in us-east while ap-south publishes ``rate`` msgs/s (each
   publish with an id, each ack recorded). Once messages flow, us-east's relay
   gets SIGKILL; every time is measured from that instant: the client sees the
   connection end (``disconnected``), is connected elsewhere (``connected``,
   and how much of that was the SDK's backoff sleeping, read from the jitter it
   drew through an injected ``rng``), receives its first message on the new
   connection, and receives the first message published after the kill
   (everything published before it has arrived by then: the order is checked).
   Then publishing stops; the subscriber must have received exactly the acked
   ids, once each, in publish order. us-east's relay is restarted (on its port)
   while that drains, and is ready again before the next trial.
3. **Failover, relay frozen** (``stop_trials`` times, SIGSTOP): the same, but the
   relay's sockets stay open, so only a keepalive timeout can tell. Afterwards
   the frozen relay is killed and restarted like in 2.

The SDK runs with its defaults (backoff, probes, timeouts); the figures name them.

Everything is bounded: a wall-clock cap per connect, per trial phase and for
the whole run; at most ``MAX_MESSAGES`` publishes per trial; traffic only to
127.0.0.1. Every process started here is stopped by its pid (SIGCONT if frozen,
SIGTERM, then SIGKILL) and the temporary directory removed, also on errors and
Ctrl-C; the children also get SIGTERM if this process dies (PR_SET_PDEATHSIG),
which a relay frozen at that moment only acts on once continued.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import random
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from relay.bench.fanout import (
    BUSY_ELSEWHERE,
    close_all,
    decode_frame,
    open_connection,
    percentile,
    publish_frame,
)
from relay.bench.report import BenchError, run_and_report, server_log_lines
from relay.client import connection as sdk
from relay.client.connection import ConnectionState, Subscription, data_of
from relay.harness import toolkit
from relay.harness.network import FAST_FEDERATION, Network, ProcessRelay
from relay.harness.toolkit import CpuMeter, clock, poll_until
from relay.protocol.frames import AckFrame, ConnectedFrame, ErrorFrame

REGIONS = ("us-east", "eu-west", "ap-south")
HOME, NEXT, FAR = REGIONS  # the client is near HOME; NEXT is L ms away, FAR 2 L
PUBLISHER = FAR
DEFAULT_CONNECTS = 20
DEFAULT_TRIALS = 10
DEFAULT_STOP_TRIALS = 1
DEFAULT_RATE = 50
DEFAULT_LATENCY_MS = 25.0
MAX_COUNT = 1000  # connects, trials
MAX_RATE = 1000
MAX_LATENCY_MS = 1000.0
MAX_MESSAGES = 100_000  # per trial
WARM_MESSAGES = 10  # delivered in HOME before the relay goes away
WARM_TIMEOUT_S = 30.0  # a restarted relay takes its federation lease back meanwhile
CONNECT_TIMEOUT_S = 30.0
KILLED_TIMEOUT_S = 30.0  # from SIGKILL to the first message published after it
FROZEN_TIMEOUT_S = 120.0  # ... from SIGSTOP (a keepalive timeout, an open timeout)
AFTER_CATCH_UP_S = 0.5  # publishing goes on this long on the new connection
DRAIN_TIMEOUT_S = 30.0
STALL_S = 5.0
HISTORY_MESSAGES = 200_000  # per channel: more than a trial publishes
PROBE_TIMEOUT_S = 2.0  # the SDK's default, for the routing steps timed on their own


# --- the network --------------------------------------------------------------------------


def _network(workdir: Path) -> Network:
    """A nats-server and a relay process per region; the relays read each other's NATS
    directly (this measures the client's failover, not the links)."""
    settings = {
        "relay": {"shutdown_grace_s": 1.0},
        # A restarted relay takes the links back from its dead predecessor after 1.5 s.
        "federation": FAST_FEDERATION,
        # A frozen relay is noticed after tens of seconds: keep what was published meanwhile,
        # or the client's position would expire (default: 1000 messages per channel).
        "namespaces": [
            {"name": "bench", "prefix": "bench:", "history_max_messages": HISTORY_MESSAGES}
        ],
    }
    return Network(REGIONS, workdir, links=False, settings=settings, name="bench")


def _home(net: Network) -> ProcessRelay:
    relay = net.region(HOME).relays[0]
    assert isinstance(relay, ProcessRelay)
    return relay


def _cpu(meter: CpuMeter) -> tuple[float, float]:
    """(cores this run used: this process and every one it started, cores other
    processes used), on average."""
    use = meter.stop()
    return use.cores(use.servers + use.here), use.elsewhere


# --- what the SDK is configured with -------------------------------------------------------


def sdk_settings() -> dict[str, object]:
    """The defaults of ``connect`` that shape connecting and failing over."""
    params = inspect.signature(sdk.connect).parameters
    names = (
        "probes",
        "probe_timeout_s",
        "backoff_base_s",
        "backoff_max_s",
        "reset_after_s",
        "keepalive_s",
    )
    settings: dict[str, object] = {name: params[name].default for name in names if name in params}
    settings["open_timeout_s"] = getattr(sdk, "OPEN_TIMEOUT_S", "?")
    settings["close_timeout_s"] = getattr(sdk, "CLOSE_TIMEOUT_S", "?")
    return settings


class RecordingRandom(random.Random):
    """The SDK's backoff jitter, drawn as usual and written down: ``(when, cap, delay)``."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[tuple[float, float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        value = super().uniform(a, b)
        self.draws.append((clock(), b, value))
        return value


class StateLog:
    def __init__(self) -> None:
        self.entries: list[tuple[float, ConnectionState]] = []

    def __call__(self, state: ConnectionState) -> None:
        self.entries.append((clock(), state))

    def first(self, state: ConnectionState, after: float) -> float | None:
        return next((t for t, s in self.entries if s is state and t >= after), None)


# --- 1. connect ---------------------------------------------------------------------------


@dataclass
class ConnectFigures:
    sdk_s: list[float] = field(default_factory=list)
    directory_s: list[float] = field(default_factory=list)
    probes_s: list[float] = field(default_factory=list)
    bare_s: list[float] = field(default_factory=list)
    regions: dict[str, int] = field(default_factory=dict)  # where the SDK connected
    reasons: dict[str, str] = field(default_factory=dict)  # routing's, first connect
    cpu: tuple[float, float] = (math.nan, math.nan)  # cores: this run, other processes


async def _bare_connect(url: str) -> float:
    """A bare WebSocket to the edge until its ``connected`` frame: seconds."""
    started = clock()
    try:
        ws = await ws_connect(
            url, compression=None, proxy=None, open_timeout=CONNECT_TIMEOUT_S, ping_interval=None
        )
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise BenchError(f"baseline: cannot connect to {url}: {exc}") from exc
    try:
        first = await ws.recv(decode=False)
        elapsed = clock() - started
    except ConnectionClosed as exc:
        raise BenchError(f"baseline: {url} closed before `connected`: {exc}") from exc
    finally:
        await ws.close()
    try:
        connected = isinstance(decode_frame(first), ConnectedFrame)
    except msgspec.DecodeError:
        connected = False
    if not connected:
        raise BenchError(f"baseline: {url} did not start with `connected`: {first[:200]!r}")
    return elapsed


async def _routing_steps(seed: str, probes: int, dial: Callable[[str], str]) -> tuple[float, float]:
    """What ``survey`` does, step by step: (directory fetch, probes) in seconds."""
    started = clock()
    directory = await sdk.fetch_directory([seed], timeout_s=PROBE_TIMEOUT_S, dial=dial)
    fetched = clock()
    if directory is None:
        raise BenchError(f"no directory from {seed}")
    await sdk.probe_all(
        [e.url for e in directory.edges], probes, timeout_s=PROBE_TIMEOUT_S, dial=dial
    )
    return fetched - started, clock() - fetched


async def _measure_connects(
    net: Network, count: int, dial: Callable[[str], str], probes: int
) -> ConnectFigures:
    seed = net.edge(HOME)
    figures = ConnectFigures()
    meter = CpuMeter(net.pids)
    for i in range(count + 1):  # the first one warms up and is not counted
        started = clock()
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                async with sdk.connect([seed], dial=dial) as client:
                    elapsed = clock() - started
                    region = client.region or "?"
                    if i == 0 and client.choice is not None:
                        figures.reasons = dict(client.choice.reasons)
        except TimeoutError:
            raise BenchError(
                f"connect({seed}) not connected after {CONNECT_TIMEOUT_S:g}s"
            ) from None
        with anyio.fail_after(CONNECT_TIMEOUT_S):
            directory_s, probes_s = await _routing_steps(seed, probes, dial)
            bare_s = await _bare_connect(seed)
        if i == 0:
            continue
        figures.sdk_s.append(elapsed)
        figures.directory_s.append(directory_s)
        figures.probes_s.append(probes_s)
        figures.bare_s.append(bare_s)
        figures.regions[region] = figures.regions.get(region, 0) + 1
    figures.cpu = _cpu(meter)
    return figures


# --- 2. and 3. failover -------------------------------------------------------------------


@dataclass
class RatePublisher:
    """Publishes at a fixed rate over a plain WebSocket, each publish with its own id."""

    ws: ClientConnection
    channel: str
    rate: int
    sent: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    closed: str | None = None

    @property
    def outstanding(self) -> int:
        return len(self.sent) - len(self.acked) - len(self.errors)

    async def publish_until(self, stop: anyio.Event) -> None:
        start = clock()
        for n in range(MAX_MESSAGES):
            await anyio.sleep(max(0.0, start + n / self.rate - clock()))
            if stop.is_set() or self.closed:
                return
            message_id = f"{self.channel}-{n}"
            _, frame = publish_frame(self.channel, n, n, id=message_id)
            self.sent.append(message_id)
            try:
                await self.ws.send(frame, text=True)
            except ConnectionClosed as exc:
                self.closed = str(exc)
                return

    async def read_acks(self) -> None:
        try:
            while True:
                try:
                    reply = decode_frame(await self.ws.recv(decode=False))
                except msgspec.DecodeError as exc:
                    self.errors.append(f"unexpected frame: {exc}")
                    continue
                if isinstance(reply, AckFrame):
                    self.acked.add(reply.id)
                elif isinstance(reply, ErrorFrame):
                    self.errors.append(f"{reply.code}: {reply.message}")
        except ConnectionClosed as exc:
            self.closed = str(exc)


@dataclass
class Arrivals:
    """What the application got from its subscription, with the time it got it."""

    at: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    published_at: list[float] = field(default_factory=list)
    ended: str | None = None  # why the subscription ended, if it did

    async def consume(self, sub: Subscription) -> None:
        try:
            async for message in sub:
                now = clock()
                data = data_of(message)
                self.at.append(now)
                self.ids.append(message.id)
                self.numbers.append(int(data["n"]))
                self.published_at.append(float(data["t"]))
        except sdk.ClientError as exc:  # e.g. the position expired while away
            self.ended = f"{type(exc).__name__}: {exc}"
        else:
            self.ended = "ended"

    def first_at(self, after: float) -> float | None:
        return next((t for t in self.at if t > after), None)

    def first_published_after(self, after: float) -> float | None:
        return next((t for t, p in zip(self.at, self.published_at, strict=True) if p > after), None)


@dataclass(frozen=True)
class Trial:
    kind: str  # "kill" or "freeze"
    detected_s: float | None  # from the signal to the client's "disconnected"
    connected_s: float | None  # ... to "connected" again
    backoff_s: float  # of which the SDK slept in its backoff
    attempts: int  # connection attempts after the drop
    resumed_s: float | None  # ... to the first message on the new connection
    caught_up_s: float | None  # ... to the first message published after the signal
    region: str | None  # where the client ended up
    up_s: float  # how long the client had been connected to HOME when the signal came
    published: int
    acked: int
    received: int
    lost: int
    duplicates: int
    unexpected: int
    out_of_order: int
    problem: str | None = None


def _check(pub: RatePublisher, arrivals: Arrivals) -> tuple[int, int, int, int]:
    """(lost, duplicates, unexpected, out of order) of the subscriber's whole sequence."""
    received = set(arrivals.ids)
    lost = len(pub.acked - received)
    duplicates = len(arrivals.ids) - len(received)
    unexpected = len(received - set(pub.sent))
    out_of_order = sum(1 for a, b in itertools.pairwise(arrivals.numbers) if b <= a)
    return lost, duplicates, unexpected, out_of_order


async def _drain(pub: RatePublisher, arrivals: Arrivals) -> None:
    """Until every publish is answered and every acked id received (or nothing moves)."""
    deadline = clock() + DRAIN_TIMEOUT_S
    await poll_until(lambda: pub.outstanding <= 0 or pub.closed is not None, deadline)
    progress = [len(arrivals.ids), clock()]

    def done() -> bool:
        if pub.acked <= set(arrivals.ids):
            return True
        if len(arrivals.ids) != progress[0]:
            progress[:] = [len(arrivals.ids), clock()]
        return clock() - progress[1] > STALL_S

    await poll_until(done, deadline)


async def _trial(
    net: Network, index: int, kind: str, rate: int, dial: Callable[[str], str]
) -> Trial:
    sig, timeout_s = (
        (signal.SIGKILL, KILLED_TIMEOUT_S) if kind == "kill" else (signal.SIGSTOP, FROZEN_TIMEOUT_S)
    )
    home = _home(net)
    assert home.process is not None
    await home.process.wait_ready()
    channel = f"bench:failover-{index}"
    states, rng, arrivals = StateLog(), RecordingRandom(), Arrivals()
    opened: list[ClientConnection] = []
    problem: str | None = None
    t_signal = math.inf
    cap = 2 * CONNECT_TIMEOUT_S + WARM_TIMEOUT_S + timeout_s + AFTER_CATCH_UP_S + DRAIN_TIMEOUT_S
    try:
        with anyio.fail_after(cap):
            pub = RatePublisher(await open_connection(net.edge(PUBLISHER), opened), channel, rate)
            async with sdk.connect([net.edge(HOME)], on_state=states, rng=rng, dial=dial) as client:
                if client.region != HOME:
                    raise BenchError(
                        f"the client chose {client.region}, not {HOME}: {client.choice}"
                    )
                sub = await client.subscribe(channel)
                stop = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(arrivals.consume, sub)
                    tg.start_soon(pub.read_acks)
                    tg.start_soon(pub.publish_until, stop)
                    warm = await poll_until(
                        lambda: len(arrivals.ids) >= WARM_MESSAGES, clock() + WARM_TIMEOUT_S
                    )
                    if not warm:
                        raise BenchError(
                            f"{HOME} delivered {len(arrivals.ids)} of {WARM_MESSAGES} messages "
                            f"from {PUBLISHER} within {WARM_TIMEOUT_S:g}s"
                        )
                    t_signal = clock()
                    if sig == signal.SIGSTOP:
                        net.freeze(home.pid)
                    elif home.pid is not None:
                        os.kill(home.pid, sig)
                    caught_up = await poll_until(
                        lambda: (
                            arrivals.first_published_after(t_signal) is not None
                            or arrivals.ended is not None
                        ),
                        t_signal + timeout_s,
                    )
                    caught_up = arrivals.ended is None and caught_up
                    if arrivals.ended is not None:
                        problem = f"subscription ended: {arrivals.ended}"
                    elif not caught_up:
                        problem = f"no message published after the {sig.name} within {timeout_s:g}s"
                    # The next trial needs HOME back: it starts while this one drains.
                    await home.down(kill=True)
                    home.spawn()
                    if caught_up:
                        await anyio.sleep(AFTER_CATCH_UP_S)
                    stop.set()
                    await _drain(pub, arrivals)
                    tg.cancel_scope.cancel()
                region = client.region
    except TimeoutError:
        raise BenchError(f"trial {index + 1} ({kind}) not done after {cap:g}s") from None
    finally:
        await close_all(opened)

    connected_at = states.first(ConnectionState.CONNECTED, t_signal)
    window_end = connected_at if connected_at is not None else math.inf
    draws = [d for t, _, d in rng.draws if t_signal <= t <= window_end]

    def since(t: float | None) -> float | None:
        return None if t is None else t - t_signal

    lost, duplicates, unexpected, out_of_order = _check(pub, arrivals)
    return Trial(
        kind=kind,
        detected_s=since(states.first(ConnectionState.DISCONNECTED, t_signal)),
        connected_s=since(connected_at),
        backoff_s=sum(draws),
        attempts=len(draws),
        resumed_s=since(None if connected_at is None else arrivals.first_at(connected_at)),
        caught_up_s=since(arrivals.first_published_after(t_signal)),
        region=region,
        up_s=t_signal - (states.first(ConnectionState.CONNECTED, 0.0) or t_signal),
        published=len(pub.sent),
        acked=len(pub.acked),
        received=len(arrivals.ids),
        lost=lost,
        duplicates=duplicates,
        unexpected=unexpected,
        out_of_order=out_of_order,
        problem=problem,
    )


# --- one run ------------------------------------------------------------------------------


@dataclass
class Report:
    latency_ms: float
    rate: int
    settings: dict[str, object]
    connects: ConnectFigures
    trials: list[Trial]
    cpu: dict[str, tuple[float, float]]  # per kind of trial: cores this run, other processes
    problems: list[str] = field(default_factory=list)


async def _run(
    connects: int, trials: int, stop_trials: int, rate: int, latency_ms: float
) -> Report:
    settings = sdk_settings()
    probes = settings.get("probes", 3)
    hops = {NEXT: 1, FAR: 2}  # the client is near HOME
    assert isinstance(probes, int)
    with tempfile.TemporaryDirectory(
        prefix="relaynet-bench-failover-", ignore_cleanup_errors=True
    ) as tmp:
        net = _network(Path(tmp))
        async with net:
            await net.add_client_paths(HOME, lambda _, region: hops[region] * latency_ms)
            dial = net.dial(HOME)
            connect_figures = await _measure_connects(net, connects, dial, probes)
            results: list[Trial] = []
            cpu: dict[str, tuple[float, float]] = {}
            for kind, count in (("kill", trials), ("freeze", stop_trials)):
                meter = CpuMeter(net.pids)
                for _ in range(count):
                    results.append(await _trial(net, len(results), kind, rate, dial))
                cpu[kind] = _cpu(meter)
        problems = toolkit.problems(net.logs())
    return Report(latency_ms, rate, settings, connect_figures, results, cpu, problems)


# --- output -------------------------------------------------------------------------------


def _time(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{1000 * seconds:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def _row(label: str, values: Sequence[float | None], width: int = 48) -> str:
    seen = [v for v in values if v is not None]
    text = f"    {label:<{width}}"
    for q in (0.50, 0.99):
        text += f" {_time(percentile(seen, q)):>10}"
    text += f" {_time(max(seen)) if seen else 'n/a':>10}"
    if len(seen) < len(values):
        text += f"   ({len(values) - len(seen)} of {len(values)} never happened)"
    return text


def _head(width: int = 48) -> str:
    return f"    {'':<{width}} {'p50':>10} {'p99':>10} {'max':>10}"


def _cpu_line(cpu: tuple[float, float]) -> str:
    ours, elsewhere = cpu
    line = (
        f"    CPU: this run {ours:.1f} cores, other processes {elsewhere:.1f}, of {os.cpu_count()}"
    )
    if elsewhere > BUSY_ELSEWHERE:
        line += "  <- contended: figures are noisy"
    return line


def _between(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _failover_section(r: Report, kind: str) -> list[str]:
    trials = [t for t in r.trials if t.kind == kind]
    if not trials:
        return []
    what = (
        f"SIGKILL {HOME}'s relay (the client sees the TCP connection end at once)"
        if kind == "kill"
        else f"SIGSTOP {HOME}'s relay (sockets stay open: only a timeout can tell)"
    )
    regions: dict[str, int] = {}
    for t in trials:
        regions[t.region or "none"] = regions.get(t.region or "none", 0) + 1
    attempts = sorted({t.attempts for t in trials})
    lines = [
        f"-- failover: {what}; {len(trials)} trial{'s' if len(trials) > 1 else ''} --",
        f"    {PUBLISHER} publishes {r.rate} msgs/s; a fresh client subscribed in {HOME} "
        "each trial; times from the signal",
        _head(),
        _row("detected: connection end seen (disconnected)", [t.detected_s for t in trials]),
        _row("connected again (to another edge)", [t.connected_s for t in trials]),
        _row(
            "  reconnect: disconnected -> connected",
            [_between(t.detected_s, t.connected_s) for t in trials],
        ),
        _row("    of which backoff sleeps (SDK jitter)", [t.backoff_s for t in trials]),
        _row("first message on the new connection", [t.resumed_s for t in trials]),
        _row("caught up: first message published after it", [t.caught_up_s for t in trials]),
        f"    attempts after the drop: {', '.join(map(str, attempts))}; client ended in "
        + ", ".join(f"{region} {n}/{len(trials)}" for region, n in sorted(regions.items())),
        f"    checked: published {sum(t.published for t in trials)}, acked "
        f"{sum(t.acked for t in trials)}, received {sum(t.received for t in trials)}; lost "
        f"{sum(t.lost for t in trials)}, duplicates {sum(t.duplicates for t in trials)}, "
        f"unexpected {sum(t.unexpected for t in trials)}, out of order "
        f"{sum(t.out_of_order for t in trials)}",
    ]
    if kind == "freeze":
        ping = r.settings.get("keepalive_s")
        up = ", ".join(f"{t.up_s:.1f}" for t in trials)
        lines.append(
            f"    the relay froze {up} s after the client connected; the client's keepalive "
            f"pings every {ping} s and waits as long for the pong"
        )
    lines.append(_cpu_line(r.cpu[kind]))
    for i, t in enumerate(trials):
        if t.problem:
            lines.append(f"    trial {i + 1}: {t.problem}")
    return lines


def format_report(r: Report) -> str:
    c = r.connects
    settings = ", ".join(f"{k}={v}" for k, v in r.settings.items())
    lines = [
        f"== relaynet failover: {len(REGIONS)} regions on loopback, the client near {HOME} ==",
        f"regions       {', '.join(REGIONS)}: a nats-server (JetStream) and a relay each, "
        "subprocesses; links direct",
        f"client        near {HOME}: +{r.latency_ms:g} ms one way to {NEXT}, "
        f"+{2 * r.latency_ms:g} ms to {FAR} (LinkProxy via the SDK's dial hook)",
        f"SDK settings  defaults: {settings}",
        "p99           nearest rank: with fewer than 100 samples it is the maximum",
        f"machine       {os.cpu_count()} cores",
        "routing       " + "; ".join(f"{k}: {v}" for k, v in c.reasons.items()),
        "",
        f"-- connect: connect(seeds=[{HOME}'s URL]) until connected; {len(c.sdk_s)} times --",
        _head(),
        _row("SDK connect -> connected", c.sdk_s),
        _row("  directory: GET /v1/edges from the seed", c.directory_s),
        _row(f"  probes: {r.settings.get('probes')} per edge, edges in parallel", c.probes_s),
        _row("baseline: bare websockets.connect + `connected`", c.bare_s),
        "    SDK connected to "
        + ", ".join(f"{region} {n}/{len(c.sdk_s)}" for region, n in sorted(c.regions.items())),
        _cpu_line(c.cpu),
        "",
        *_failover_section(r, "kill"),
        "",
        *_failover_section(r, "freeze"),
    ]
    lines += server_log_lines("server logs   ", r.problems)
    return "\n".join(lines)


def _failed(r: Report) -> list[str]:
    reasons = []
    for i, t in enumerate(r.trials):
        if t.problem:
            reasons.append(f"trial {i + 1}: {t.problem}")
        if t.lost or t.duplicates or t.unexpected or t.out_of_order:
            reasons.append(f"trial {i + 1}: lost, duplicated or disordered messages")
        if t.published and not t.acked:
            reasons.append(f"trial {i + 1}: nothing acked")
    return reasons


# --- entry point --------------------------------------------------------------------------


def _check_args(
    connects: int, trials: int, stop_trials: int, rate: int, latency_ms: float
) -> str | None:
    for name, value, least in (
        ("--connects", connects, 1),
        ("--trials", trials, 0),
        ("--stop-trials", stop_trials, 0),
    ):
        if not least <= value <= MAX_COUNT:
            return f"{name} must be {least}..{MAX_COUNT}"
    if not 1 <= rate <= MAX_RATE:
        return f"--rate must be 1..{MAX_RATE}"
    if not (math.isfinite(latency_ms) and 0 <= latency_ms <= MAX_LATENCY_MS):
        return f"--latency-ms must be 0..{MAX_LATENCY_MS:g}"
    return None


def _overall_cap(connects: int, trials: int, stop_trials: int) -> float:
    per_trial = 2 * CONNECT_TIMEOUT_S + WARM_TIMEOUT_S + AFTER_CATCH_UP_S + DRAIN_TIMEOUT_S
    return (
        120
        + (connects + 1) * 3 * CONNECT_TIMEOUT_S
        + trials * (per_trial + KILLED_TIMEOUT_S)
        + stop_trials * (per_trial + FROZEN_TIMEOUT_S)
    )


async def run_failover_bench(
    connects: int = DEFAULT_CONNECTS,
    trials: int = DEFAULT_TRIALS,
    stop_trials: int = DEFAULT_STOP_TRIALS,
    rate: int = DEFAULT_RATE,
    latency_ms: float = DEFAULT_LATENCY_MS,
) -> int:
    """Run the failover benchmark and print its figures.

    Exit code 0; 1 if a trial lost, duplicated or disordered messages, a failover
    did not complete, or a process failed; 2 for bad arguments."""
    problem = _check_args(connects, trials, stop_trials, rate, latency_ms)
    if problem:
        print(f"bench failover: {problem}", file=sys.stderr)
        return 2
    cap = _overall_cap(connects, trials, stop_trials)
    return await run_and_report(
        "failover",
        cap,
        lambda: _run(connects, trials, stop_trials, rate, latency_ms),
        format_report,
        _failed,
    )
