"""``relaynet bench compare``: relaynet beside Socket.IO 4, ``ws`` and Python websockets.

Theory of operation
-------------------
Every system is measured by the same Node load generator (``node/loadgen.js``;
a Python one saturates near 70-140k deliveries/s on the benchmark machine, below
what the systems reach), with 100-byte payloads and one publisher. The one flow
control is the same window for every system: the publisher stays at most
``IN_FLIGHT_DELIVERIES`` deliveries (that many divided by N messages) ahead of
the slowest subscriber. Acks are counted and timed but do not hold the
publisher back: an ack window would throttle the systems that ack against the
one that does not. Each measurement gets a fresh server: relaynet (a relay with
its embedded nats-server), a Socket.IO 4 room, a ``ws`` broadcast and the bare
Python websockets broadcaster of ``bench fanout``; with picows installed (the
``bench`` extra), ``--systems ...,picows`` adds that broadcaster on picows
(``peer_picows``) to weigh the WebSocket library alone. With ``taskset`` the server
and its children run on CPU 0 and the generator on CPU 1.

Rounds are interleaved: round 1 measures every scenario on every system once,
then round 2 does it again, and the report gives each figure's median over the
rounds, so drift on a shared machine hits every system alike. Absolute figures
move between runs; the ratios to Socket.IO from one run are what count.

Scenarios (the multi-region overhead is ``relaynet bench federation``'s):

- fanout: N subscribers, publishing as fast as the window allows: deliveries/s.
- latency: 200 msgs/s to 100 subscribers, far below saturation: p50/p99.
- publish-rate: one channel, one subscriber, as fast as the window allows.
- channels (relaynet only: the peers have no channels to spread over): K channels
  at once, one generator per channel (a publisher and a subscriber each, all on
  the generator's core, the window split between them): aggregate acked
  publishes/s, and its ratio to one channel's.
- spread (relaynet only): one publisher sending its messages to K channels in
  turn, one subscriber of all of them (traffic over many rooms, each moderately
  busy): aggregate acked publishes/s, and its ratio to K = 1.
- idle / connect-rate: N silent subscribers; the server's RSS (all its
  processes) after minus before, per connection; and how fast they connected.

For the throughput scenarios the generator's own ceiling is measured in the
same rounds, against the ``ws`` server copying ready-made frames in batches (a
source cheaper than any system): a figure near it says more about the
generator than about the system.

Everything is bounded in time (the generator has its own caps; this module
kills it after them), every process started is stopped, SIGTERM then SIGKILL,
whatever happens (Ctrl-C too), and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from relay.bench import node_kit
from relay.bench.node_kit import NodeKit
from relay.bench.report import BenchError, run_and_report, server_log_lines
from relay.harness import toolkit
from relay.harness.toolkit import (
    ServerProcess,
    clock,
    peer_command,
    poll_until,
    raise_fd_limit,
    relay_command,
    spawn,
    tail,
    terminate,
)

SCENARIOS = ("fanout", "latency", "idle", "publish-rate", "connect-rate", "channels", "spread")
# picows only when installed, and only when --systems names it (the default list is the CLI's).
HAS_PICOWS = importlib.util.find_spec("picows") is not None
SYSTEM_KEYS = ("relaynet", "socketio", "ws", "python", *(("picows",) if HAS_PICOWS else ()))
PAYLOAD_BYTES = 100
IN_FLIGHT_DELIVERIES = 50_000  # the window, for every system: messages ahead x N subscribers
MIN_WINDOW, MAX_WINDOW = 32, 10_000  # in messages
CEILING_BATCH = 100  # messages per batch of ready-made frames
LATENCY_RATE, LATENCY_SUBSCRIBERS = 200, 100
PUBLISH_RATE_SUBSCRIBERS = 1
CHANNEL_PREFIX = "bench:compare-"  # the channels scenario's channels: bench:compare-0, -1, ...
MAX_CHANNELS = 64
MAX_SPREAD = 1000  # channels one spread publisher writes to
CHANNEL_SCENARIOS = ("channels", "spread")  # relaynet only; their points' size is K
NEAR_CEILING = 0.8  # of the generator's ceiling, above which a figure may be the generator's
SATURATED = 0.9  # generator CPU, in cores
CONNECT_CONCURRENCY = 50  # as loadgen.js
GENERATOR_CAP_S = 420.0  # beyond its own caps (connect 2 x 120 s, drain 30 s, close 10 s)
IDLE_CAP_S = 300.0  # for N idle connections to open
SETTLE_INTERVAL_S = 0.25
SETTLE_SAMPLES = 4  # RSS within SETTLE_TOLERANCE over this many samples: settled
SETTLE_TOLERANCE = 0.01
SETTLE_CAP_S = 15.0
DEFAULT_JSON = Path(".relaynet") / "bench-compare.json"


# --- what is measured ---------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    key: str  # also the load generator's --system
    label: str
    command: Callable[[Path, NodeKit], tuple[list[str], list[Path]]]  # argv, logs besides stderr


def _node_server(script: str) -> Callable[[Path, NodeKit], tuple[list[str], list[Path]]]:
    def command(workdir: Path, kit: NodeKit) -> tuple[list[str], list[Path]]:
        return [kit.node, kit.script(script), "--port", "0"], []

    return command


def _picows() -> dict[str, System]:
    """``peer_broadcast`` on picows (``relay.bench.peer_picows``), when picows is installed."""
    if not HAS_PICOWS:
        return {}
    argv = [sys.executable, "-m", "relay.bench.peer_picows", "--port", "0"]
    label = f"picows {importlib.metadata.version('picows')}"
    return {"picows": System("picows", label, lambda w, _: (list(argv), []))}


def systems(kit: NodeKit) -> dict[str, System]:
    """Every system, and the ceiling source, labelled with the versions measured."""
    websockets = importlib.metadata.version("websockets")
    return {
        "relaynet": System("relaynet", "relaynet", lambda w, _: relay_command(w)),
        "socketio": System(
            "socketio",
            f"Socket.IO {kit.version_of('socket.io')}",
            _node_server("socketio_server.js"),
        ),
        "ws": System("ws", f"ws {kit.version_of('ws')}", _node_server("ws_server.js")),
        "python": System("python", f"Python websockets {websockets}", lambda w, _: peer_command(w)),
        **_picows(),
        "ceiling": System("ceiling", "generator ceiling", _node_server("ws_server.js")),
    }


@dataclass(frozen=True)
class Point:
    """One load: a scenario with its number of subscribers (and rate)."""

    scenario: str  # fanout | latency | publish-rate | idle (idle serves connect-rate too)
    subscribers: int  # per channel
    rate: int = 0  # msgs/s; 0: as fast as the window allows
    channels: int = 1  # channels: one generator each, at once; spread: one publisher's

    @property
    def window(self) -> int:
        """Per generator: every point has the same deliveries in flight in all."""
        generators = self.channels if self.scenario == "channels" else 1
        per_generator = IN_FLIGHT_DELIVERIES // (self.subscribers * generators)
        return max(MIN_WINDOW, min(MAX_WINDOW // generators, per_generator))

    @property
    def has_ceiling(self) -> bool:
        return self.scenario in ("fanout", "publish-rate")

    @property
    def size(self) -> int:
        """What a report row is labelled with: channels, or subscribers."""
        return self.channels if self.scenario in CHANNEL_SCENARIOS else self.subscribers

    @property
    def label(self) -> str:
        if self.scenario in CHANNEL_SCENARIOS:
            return f"K={self.channels}"
        return f"N={self.subscribers}"

    def systems(self, wanted: Sequence[str]) -> list[str]:
        """The systems measured at this point, the generator's ceiling included."""
        if self.scenario in CHANNEL_SCENARIOS:
            return [key for key in wanted if key == "relaynet"]
        return [*wanted, *(["ceiling"] if self.has_ceiling else [])]


@dataclass(frozen=True)
class Plan:
    scenarios: tuple[str, ...]
    subscribers: tuple[int, ...]
    idle: tuple[int, ...]
    systems: tuple[str, ...]
    seconds: float
    rounds: int
    channels: tuple[int, ...] = (1, 4, 16)
    spread: tuple[int, ...] = (1, 16, 256)

    def points(self) -> list[Point]:
        wanted = set(self.scenarios)
        points = [Point("fanout", n) for n in self.subscribers if "fanout" in wanted]
        if "latency" in wanted:
            points.append(Point("latency", LATENCY_SUBSCRIBERS, LATENCY_RATE))
        if "publish-rate" in wanted:
            points.append(Point("publish-rate", PUBLISH_RATE_SUBSCRIBERS))
        if "channels" in wanted:
            points += [
                Point("channels", PUBLISH_RATE_SUBSCRIBERS, channels=k) for k in self.channels
            ]
        if "spread" in wanted:
            points += [Point("spread", PUBLISH_RATE_SUBSCRIBERS, channels=k) for k in self.spread]
        if wanted & {"idle", "connect-rate"}:
            points += [Point("idle", n) for n in self.idle]
        return points

    def runs(self) -> int:
        per_round = sum(len(p.systems(self.systems)) for p in self.points())
        return per_round * self.rounds


@dataclass
class Measurement:
    round: int
    point: Point
    system: str
    figures: dict[str, Any]
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Pinning:
    server: list[str]  # argv prefix
    generator: list[str]
    note: str


def pinning() -> Pinning:
    taskset = shutil.which("taskset")
    if taskset and {0, 1} <= os.sched_getaffinity(0):
        note = "server and its children on CPU 0, load generator on CPU 1 (taskset)"
        return Pinning([taskset, "-c", "0"], [taskset, "-c", "1"], note)
    return Pinning([], [], "not pinned (needs taskset and CPUs 0 and 1): figures are noisier")


# --- processes ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_server(
    system: System, kit: NodeKit, pin: Pinning, workdir: Path, found: list[str]
) -> AsyncIterator[ServerProcess]:
    """The server, ready; stopped on the way out, and its log's warnings added to ``found``."""
    argv, logs = system.command(workdir, kit)
    argv = [*pin.server, *argv]
    async with toolkit.running_server(system.key, argv, workdir, logs, found) as server:
        yield server


def _generator_argv(kit: NodeKit, pin: Pinning, system: str, url: str, *args: object) -> list[str]:
    script = kit.script("loadgen.js")
    return [*pin.generator, kit.node, script, "--system", system, "--url", url, *map(str, args)]


def _result(out: Path, err: Path) -> dict[str, Any]:
    """The generator's result line; a BenchError when it failed or printed none."""
    for line in reversed(out.read_text(errors="replace").splitlines()):
        with contextlib.suppress(ValueError):
            result = json.loads(line)
            if isinstance(result, dict) and "ok" in result:
                if not result["ok"]:
                    raise BenchError(f"load generator: {result.get('error')}")
                return result
    raise BenchError(f"load generator printed no result; stderr:\n{tail(err)}")


async def _stop(proc: subprocess.Popen[bytes]) -> None:
    with anyio.CancelScope(shield=True):
        await terminate(proc.pid, lambda: proc.poll() is not None)
        if proc.stdin is not None:
            proc.stdin.close()


async def run_generator(argv: list[str], workdir: Path, cap_s: float) -> dict[str, Any]:
    out, err = workdir / "loadgen.out", workdir / "loadgen.err"
    proc = spawn(argv, out, err)
    try:
        if not await poll_until(lambda: proc.poll() is not None, clock() + cap_s, 0.05):
            raise BenchError(f"load generator not done after {cap_s:.0f}s; stopped")
    finally:
        await _stop(proc)
    return _result(out, err)


def tree_rss_kb(server: ServerProcess) -> int:
    values = server.rss_kb()
    if None in values.values():
        raise BenchError(f"{server.label}: a process is gone: {values}")
    return sum(v for v in values.values() if v is not None)


async def settled_rss_kb(server: ServerProcess) -> int:
    """The server's RSS once it stops moving (or after SETTLE_CAP_S)."""
    samples: list[int] = []
    deadline = clock() + SETTLE_CAP_S
    while True:
        samples = [*samples[-(SETTLE_SAMPLES - 1) :], tree_rss_kb(server)]
        spread = max(samples) - min(samples)
        if len(samples) == SETTLE_SAMPLES and spread <= SETTLE_TOLERANCE * max(samples):
            return samples[-1]
        if clock() > deadline:
            return samples[-1]
        await anyio.sleep(SETTLE_INTERVAL_S)


# --- one measurement ----------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """What every measurement needs besides its point and system."""

    kit: NodeKit
    pin: Pinning
    systems: dict[str, System]
    seconds: float


async def traffic_figures(
    bench: Bench, system: System, point: Point, server: ServerProcess, workdir: Path
) -> dict[str, Any]:
    argv = _generator_argv(
        bench.kit, bench.pin, system.key, server.url,
        "--subscribers", point.subscribers, "--seconds", bench.seconds,
        "--rate", point.rate, "--size", PAYLOAD_BYTES, "--window", point.window,
        "--batch", CEILING_BATCH,
    )  # fmt: skip
    if point.scenario == "channels":
        return await channels_figures(argv, point, workdir, bench.seconds + GENERATOR_CAP_S)
    if point.scenario == "spread":
        argv += ["--spread", str(point.channels)]
    return await run_generator(argv, workdir, bench.seconds + GENERATOR_CAP_S)


async def channels_figures(
    argv: list[str], point: Point, workdir: Path, cap_s: float
) -> dict[str, Any]:
    """One generator per channel, all at once; their figures added up."""
    results: dict[int, dict[str, Any]] = {}
    errors: list[BenchError] = []

    async def one(i: int) -> None:
        folder = workdir / f"channel-{i}"
        folder.mkdir()
        try:
            results[i] = await run_generator(
                [*argv, "--channel", f"{CHANNEL_PREFIX}{i}"], folder, cap_s
            )
        except BenchError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(point.channels):
            tg.start_soon(one, i)
    if errors:
        raise errors[0]
    return combined([results[i] for i in range(point.channels)])


def combined(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates, counts and generator CPU added up; latencies the worst channel's (each
    generator's rates are over its own span, and the spans start within the connect time)."""

    def total(key: str) -> float | None:
        values = [r.get(key) for r in results]
        return None if None in values else sum(v for v in values if v is not None)

    def worst(key: str) -> float | None:
        values = [v for r in results if (v := _get(r, key)) is not None]
        return max(values) if values else None

    summed = (
        "published", "acked", "ack_errors", "deliveries", "lost", "disordered", "disconnected",
        "acks_per_s", "deliveries_per_s", "generator_cpu_cores", "subscribers",
    )  # fmt: skip
    return {
        "ok": True,
        "channels": len(results),
        **{key: total(key) for key in summed},
        "first_error": next((r["first_error"] for r in results if r.get("first_error")), None),
        "latency_ms": {q: worst(f"latency_ms.{q}") for q in ("p50", "p99", "max")},
        "ack_ms": {q: worst(f"ack_ms.{q}") for q in ("p50", "p99")},
        "window": results[0].get("window") if results else None,
        "per_channel": results,
    }


def _idle_line(out: Path) -> dict[str, Any] | None:
    for line in out.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict) and parsed.get("idle"):
                return parsed
    return None


async def _wait_until_open(proc: subprocess.Popen[bytes], out: Path) -> None:
    """Until the generator says that its N connections are open."""
    if not await poll_until(
        lambda: _idle_line(out) is not None or proc.poll() is not None, clock() + IDLE_CAP_S, 0.1
    ):
        raise BenchError(f"idle connections not open after {IDLE_CAP_S:.0f}s")
    if _idle_line(out) is None:
        raise BenchError("load generator ended before its connections were open")


async def _hold_idle(argv: list[str], server: ServerProcess, workdir: Path) -> dict[str, Any]:
    before = await settled_rss_kb(server)
    out, err = workdir / "loadgen.out", workdir / "loadgen.err"
    proc = spawn(argv, out, err, stdin=subprocess.PIPE)
    try:
        await _wait_until_open(proc, out)
        after = await settled_rss_kb(server)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(b"release\n")
            proc.stdin.flush()
        await poll_until(lambda: proc.poll() is not None, clock() + GENERATOR_CAP_S, 0.05)
    finally:
        await _stop(proc)
    figures = _result(out, err)
    return figures | {
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kb_per_connection": (after - before) / figures["subscribers"],
    }


async def idle_figures(
    bench: Bench, system: System, point: Point, server: ServerProcess, workdir: Path
) -> dict[str, Any]:
    argv = _generator_argv(
        bench.kit, bench.pin, system.key, server.url,
        "--mode", "idle", "--subscribers", point.subscribers,
    )  # fmt: skip
    return await _hold_idle(argv, server, workdir)


async def measure(bench: Bench, system: System, point: Point, round_no: int) -> Measurement:
    """One run on a fresh server: no system inherits another run's memory or stored data."""
    found: list[str] = []
    with tempfile.TemporaryDirectory(prefix="relaynet-compare-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        async with running_server(system, bench.kit, bench.pin, workdir, found) as server:
            figures_of = idle_figures if point.scenario == "idle" else traffic_figures
            figures = await figures_of(bench, system, point, server, workdir)
    return Measurement(round_no, point, system.key, figures, found)


# --- rounds -------------------------------------------------------------------------------


def _order(keys: Sequence[str], round_no: int) -> list[str]:
    """A different system goes first in each round, so no system always follows another."""
    shift = (round_no - 1) % len(keys)
    return [*keys[shift:], *keys[:shift]]


async def run_rounds(bench: Bench, plan: Plan) -> list[Measurement]:
    done: list[Measurement] = []
    total = plan.runs()
    for round_no in range(1, plan.rounds + 1):
        for point in plan.points():
            for key in _order(point.systems(plan.systems), round_no):
                result = await measure(bench, bench.systems[key], point, round_no)
                done.append(result)
                line = progress_line(result, bench.systems[key].label)
                print(f"[{len(done)}/{total}] round {round_no} {line}", flush=True)
    return done


# --- figures ------------------------------------------------------------------------------


def _get(figures: dict[str, Any], key: str) -> float | None:
    value: Any = figures
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def median(results: list[Measurement], key: str) -> float | None:
    values = [v for r in results if (v := _get(r.figures, key)) is not None]
    return statistics.median(values) if values else None


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:,.{digits}f}"


def progress_line(r: Measurement, label: str) -> str:
    p, f = r.point, r.figures
    where = f"{p.scenario} N={p.subscribers}" + (f" at {p.rate}/s" if p.rate else "")
    if p.scenario == "channels":
        where = f"channels K={p.channels} (N={p.subscribers} per channel)"
    if p.scenario == "spread":
        where = f"spread over K={p.channels} channels (N={p.subscribers} of all)"
    if p.scenario == "idle":
        what = (
            f"{_num(f['kb_per_connection'], 1)} KB per connection, "
            f"{_num(f['connections_per_s'])} connections/s"
        )
    else:
        what = (
            f"{_num(f['deliveries_per_s'])} deliveries/s, p50 "
            f"{_num(_get(f, 'latency_ms.p50'), 1)} ms, lost {f['lost']}"
        )
    return f"{where} {label}: {what}"


@dataclass(frozen=True)
class Column:
    title: str
    key: str
    digits: int = 0
    width: int = 13
    percent: bool = False

    def cell(self, value: float | None) -> str:
        if self.percent and value is not None:
            return f"{value:.0%}".rjust(self.width)
        return _num(value, self.digits).rjust(self.width)


FANOUT_COLUMNS = (
    Column("deliveries/s", "deliveries_per_s"),
    Column("acks/s", "acks_per_s", width=10),
    Column("p50 ms", "latency_ms.p50", 1, 9),
    Column("p99 ms", "latency_ms.p99", 1, 9),
    Column("lost", "lost", width=6),
    Column("gen CPU", "generator_cpu_cores", width=9, percent=True),
)
LATENCY_COLUMNS = (
    Column("p50 ms", "latency_ms.p50", 1, 9),
    Column("p99 ms", "latency_ms.p99", 1, 9),
    Column("max ms", "latency_ms.max", 1, 9),
    Column("deliveries/s", "deliveries_per_s"),
    Column("lost", "lost", width=6),
)
PUBLISH_COLUMNS = (
    Column("msgs/s", "deliveries_per_s"),
    Column("acks/s", "acks_per_s", width=10),
    Column("p50 ms", "latency_ms.p50", 1, 9),
    Column("p99 ms", "latency_ms.p99", 1, 9),
    Column("lost", "lost", width=6),
)
IDLE_COLUMNS = (
    Column("KB/conn", "kb_per_connection", 1, 9),
    Column("RSS before MiB", "rss_before_mib", 1, 15),
    Column("RSS after MiB", "rss_after_mib", 1, 14),
)
CONNECT_COLUMNS = (Column("connections/s", "connections_per_s", width=14),)
CHANNEL_COLUMNS = (
    Column("acks/s", "acks_per_s"),
    Column("deliveries/s", "deliveries_per_s"),
    Column("p50 ms", "latency_ms.p50", 1, 9),
    Column("p99 ms", "latency_ms.p99", 1, 9),
    Column("lost", "lost", width=6),
    Column("gen CPU", "generator_cpu_cores", width=9, percent=True),
)


@dataclass(frozen=True)
class Section:
    scenario: str  # the points' scenario
    shown_as: str  # the --scenarios name
    title: str
    columns: tuple[Column, ...]
    ratio: Column  # relaynet ÷ Socket.IO of this figure
    lower_is_better: bool = False
    size: str = "N"  # what a row's number counts
    versus_first: bool = False  # ratio to the first point's figure, not to Socket.IO


SECTIONS = (
    Section(
        "fanout", "fanout",
        "fan-out: 1 publisher, N subscribers, as fast as the window allows",
        FANOUT_COLUMNS, FANOUT_COLUMNS[0],
    ),
    Section(
        "latency", "latency",
        f"latency: {LATENCY_RATE} msgs/s to {LATENCY_SUBSCRIBERS} subscribers (below saturation)",
        LATENCY_COLUMNS, LATENCY_COLUMNS[0], lower_is_better=True,
    ),
    Section(
        "publish-rate", "publish-rate",
        "single-channel publish rate: 1 publisher, 1 subscriber, as fast as the window allows",
        PUBLISH_COLUMNS, PUBLISH_COLUMNS[0],
    ),
    Section(
        "idle", "idle",
        "idle memory: N silent subscribers; server RSS (every process of it) after - before, / N",
        IDLE_COLUMNS, IDLE_COLUMNS[0], lower_is_better=True,
    ),
    Section(
        "idle", "connect-rate",
        f"connection ramp: N subscribers connected and subscribed, {CONNECT_CONCURRENCY} "
        "handshakes at a time",
        CONNECT_COLUMNS, CONNECT_COLUMNS[0],
    ),
    Section(
        "channels", "channels",
        "channels: K channels at once, a publisher and 1 subscriber each (one generator per "
        "channel), relaynet only; latencies are the worst channel's",
        CHANNEL_COLUMNS, CHANNEL_COLUMNS[0], size="K", versus_first=True,
    ),
    Section(
        "spread", "spread",
        "spread: 1 publisher sending to K channels in turn, 1 subscriber of all of them, "
        "relaynet only",
        CHANNEL_COLUMNS, CHANNEL_COLUMNS[0], size="K", versus_first=True,
    ),
)  # fmt: skip


@dataclass
class Report:
    plan: Plan
    pin: Pinning
    labels: dict[str, str]
    measurements: list[Measurement]

    def of(self, point: Point, system: str) -> list[Measurement]:
        return [m for m in self.measurements if m.point == point and m.system == system]

    def median(self, point: Point, system: str, key: str) -> float | None:
        return median(self.of(point, system), key)

    def ratio(self, point: Point, key: str) -> float | None:
        relay, peer = self.median(point, "relaynet", key), self.median(point, "socketio", key)
        return None if relay is None or not peer else relay / peer


def _row(report: Report, point: Point, key: str, section: Section) -> str:
    cells = "".join(c.cell(report.median(point, key, c.key)) for c in section.columns)
    return f"{point.size:>6}  {report.labels[key]:<26}{cells}"


def _ratio_line(report: Report, section: Section, points: list[Point]) -> str:
    if section.versus_first:
        return _versus_first_line(report, section, points)
    title = f"relaynet ÷ Socket.IO, {section.ratio.title}"
    if not {"relaynet", "socketio"} <= set(report.plan.systems):
        return f"{title}: needs relaynet and socketio in --systems"
    better = "lower" if section.lower_is_better else "higher"
    parts = [f"N={p.subscribers} {_num(report.ratio(p, section.ratio.key), 2)}x" for p in points]
    return f"{title} ({better} is better for relaynet): " + "   ".join(parts)


def _versus_first_line(report: Report, section: Section, points: list[Point]) -> str:
    key = section.ratio.key
    first = report.median(points[0], "relaynet", key) if points else None
    parts = []
    for point in points:
        figure = report.median(point, "relaynet", key)
        ratio = figure / first if figure is not None and first else None
        parts.append(f"{section.size}={point.size} {_num(ratio, 2)}x")
    base = f"{section.size}={points[0].size}" if points else "the first"
    return f"relaynet {section.ratio.title} ÷ its figure at {base}: " + "   ".join(parts)


def _ceiling_warnings(report: Report, section: Section, point: Point) -> list[str]:
    ceiling = report.median(point, "ceiling", section.ratio.key)
    lines = []
    for key in report.plan.systems:
        figure = report.median(point, key, section.ratio.key)
        if ceiling and figure is not None and figure >= NEAR_CEILING * ceiling:
            lines.append(
                f"warning: {report.labels[key]} at N={point.subscribers} reached "
                f"{figure / ceiling:.0%} of the generator's ceiling: the generator may be its limit"
            )
        lines += _saturation_warning(report, point, key)
    return lines


def _saturation_warning(report: Report, point: Point, key: str) -> list[str]:
    """Per run, not the median: one saturated round already pulls a median of two."""
    runs = report.of(point, key)
    cpus = [c for m in runs if (c := _get(m.figures, "generator_cpu_cores")) is not None]
    busy = [c for c in cpus if c > SATURATED]
    if not busy:
        return []
    return [
        f"warning: the generator used up to {max(busy):.0%} of its core against "
        f"{report.labels[key]} at {point.label} ({len(busy)} of {len(runs)} rounds): "
        "that figure may be the generator's limit"
    ]


def format_section(report: Report, section: Section) -> str:
    points = [p for p in report.plan.points() if p.scenario == section.scenario]
    keys = points[0].systems(report.plan.systems) if points else []
    titles = "".join(f"{c.title:>{c.width}}" for c in section.columns)
    header = f"{section.size:>6}  {'system':<26}{titles}"
    lines = [f"== {section.title}", header]
    for point in points:
        lines += [_row(report, point, key, section) for key in keys]
    lines.append(_ratio_line(report, section, points))
    if points and points[0].has_ceiling:
        for point in points:
            lines += _ceiling_warnings(report, section, point)
    if section.versus_first:
        for point in points:
            lines += _saturation_warning(report, point, "relaynet")
    return "\n".join(lines)


def _window_line(plan: Plan) -> str:
    windows = ", ".join(
        f"N={p.subscribers}: {p.window}" for p in plan.points() if p.scenario == "fanout"
    )
    return (
        f"window: {IN_FLIGHT_DELIVERIES:,} deliveries in flight for every system, as messages "
        f"ahead of the slowest subscriber (min {MIN_WINDOW}, max {MAX_WINDOW})"
        + (f": {windows}" if windows else "")
    )


def _problem_lines(report: Report) -> list[str]:
    lines = []
    measured = {m.system for m in report.measurements}
    for key in (k for k in report.plan.systems if k in measured):
        found = [line for m in report.measurements if m.system == key for line in m.problems]
        lines += server_log_lines(f"{report.labels[key]} server log: ", found, shown=3)
    return lines


def format_report(report: Report) -> str:
    plan = report.plan
    lines = [
        f"relaynet bench compare: {PAYLOAD_BYTES}-byte payloads, 1 publisher, {plan.rounds} "
        f"interleaved round(s) of {plan.seconds:g} s per run; figures are medians of the rounds",
        f"pinning: {report.pin.note}",
        _window_line(plan),
        "",
    ]
    for section in SECTIONS:
        if section.shown_as in plan.scenarios:
            lines += [format_section(report, section), ""]
    lines += _problem_lines(report)
    return "\n".join(lines)


def failures(report: Report) -> list[str]:
    """relaynet acknowledges what it stored: losing any of that fails the run. The peers
    deliver at most once, so their losses are figures, not failures."""
    reasons = []
    for m in report.measurements:
        if m.system != "relaynet" or m.point.scenario == "idle":
            continue
        if m.figures.get("lost") or m.figures.get("ack_errors"):
            reasons.append(
                f"relaynet lost {m.figures.get('lost')} and refused "
                f"{m.figures.get('ack_errors')} messages ({m.point.scenario} "
                f"N={m.point.subscribers}, round {m.round})"
            )
    return reasons


# --- JSON ---------------------------------------------------------------------------------


def report_json(report: Report) -> dict[str, Any]:
    plan = report.plan
    summary = []
    for point in plan.points():
        for key in point.systems(plan.systems):
            figures = {
                c.key: report.median(point, key, c.key)
                for section in SECTIONS
                if section.scenario == point.scenario
                for c in section.columns
            }
            summary.append({**asdict(point), "system": key, "median": figures})
    ratios = [
        {
            **asdict(point),
            "metric": section.ratio.key,
            "relaynet_over_socketio": report.ratio(point, section.ratio.key),
        }
        for section in SECTIONS
        if section.shown_as in plan.scenarios and not section.versus_first
        for point in plan.points()
        if point.scenario == section.scenario
    ]
    runs = [
        {"round": m.round, **asdict(m.point), "system": m.system, "figures": m.figures}
        for m in report.measurements
    ]
    return {
        "settings": asdict(plan)
        | {"payload_bytes": PAYLOAD_BYTES, "in_flight_deliveries": IN_FLIGHT_DELIVERIES},
        "pinning": report.pin.note,
        "labels": report.labels,
        "summary": summary,
        "ratios": ratios,
        "runs": runs,
    }


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_json(report), indent=2) + "\n")


# --- entry point --------------------------------------------------------------------------


def check_plan(plan: Plan) -> str | None:
    if not plan.scenarios or not set(plan.scenarios) <= set(SCENARIOS):
        return f"--scenarios must name some of {','.join(SCENARIOS)}"
    if not plan.systems or not set(plan.systems) <= set(SYSTEM_KEYS):
        return f"--systems must name some of {','.join(SYSTEM_KEYS)}"
    if not all(1 <= n <= 20_000 for n in (*plan.subscribers, *plan.idle)):
        return "--subscribers and --idle must be numbers in 1..20000"
    if not plan.subscribers or not plan.idle:
        return "--subscribers and --idle need at least one number"
    if not plan.channels or not all(1 <= k <= MAX_CHANNELS for k in plan.channels):
        return f"--channels must be numbers in 1..{MAX_CHANNELS}"
    if not plan.spread or not all(1 <= k <= MAX_SPREAD for k in plan.spread):
        return f"--spread must be numbers in 1..{MAX_SPREAD}"
    for scenario in CHANNEL_SCENARIOS:
        if scenario in plan.scenarios and "relaynet" not in plan.systems:
            return f"the {scenario} scenario measures relaynet only: add it to --systems"
    if not 0 < plan.seconds <= 600:
        return "--seconds must be more than 0 and at most 600"
    if not 1 <= plan.rounds <= 20:
        return "--rounds must be 1..20"
    return None


async def _run(plan: Plan, json_path: Path) -> Report:
    raise_fd_limit(max((*plan.subscribers, *plan.idle)) + 1)
    kit = await node_kit.install()
    pin = pinning()
    measured = systems(kit)
    labels = {key: system.label for key, system in measured.items()}
    print(f"pinning: {pin.note}; {plan.runs()} runs", flush=True)
    bench = Bench(kit, pin, measured, plan.seconds)
    report = Report(plan, pin, labels, await run_rounds(bench, plan))
    write_json(report, json_path)
    print(f"figures written to {json_path}\n", flush=True)
    return report


def _cap_s(plan: Plan) -> float:
    """A backstop only: every step has its own, shorter bound."""
    return 900 + plan.runs() * (plan.seconds + 240)


async def run_compare(plan: Plan, json_path: Path | None) -> int:
    """Exit code 0, 1 when a run failed or relaynet lost messages, 2 for bad arguments."""
    problem = check_plan(plan)
    if problem:
        print(f"bench compare: {problem}", file=sys.stderr)
        return 2
    path = json_path or DEFAULT_JSON
    return await run_and_report(
        "compare", _cap_s(plan), lambda: _run(plan, path), format_report, failures
    )
