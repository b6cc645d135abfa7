"""``relaynet bench fanout``: one publisher, N subscribers, one relay; then a bare baseline.

Theory of operation
-------------------
The server under test runs as a subprocess so that it and this load generator
use different cores. The load generator connects N subscribers to one channel
and one publisher, which pipelines publishes (at most ``ACK_WINDOW`` awaiting
their ack) for the given number of seconds. Each payload carries its number
``n`` and ``t``, the ``perf_counter`` at send; subscribers live in this same
process, so receive time minus ``t`` is the publish-to-deliver latency without
any clock skew.

The publisher also never gets more than a *delivery window* of messages ahead
of the slowest subscriber. Without it, a server that acks before fanning out
(the baseline does) would let the publisher run unboundedly ahead: the figures
would measure queue growth, and memory in both processes would grow without
limit. With it, "delivered msgs/s" is the rate every subscriber keeps up with.

Then the same load runs against ``relay.bench.peer_broadcast``, a plain
websockets server that acks at once and broadcasts without storing anything,
the ceiling for a Python websockets fan-out with at-most-once delivery.

Everything is bounded: at most ``MAX_MESSAGES`` publishes, ``seconds`` of
publishing, at most ``DRAIN_CAP_S`` more for the last acks and deliveries, and
traffic only to 127.0.0.1.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec
from msgspec import UNSET
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from relay.bench.report import BenchError, first_error, server_log_lines
from relay.harness.toolkit import (
    CpuMeter,
    CpuUse,
    HarnessError,
    ServerProcess,
    clock,
    peer_command,
    poll_until,
    raise_fd_limit,
    relay_command,
    running_server,
)
from relay.protocol.frames import (
    AckFrame,
    ConnectedFrame,
    ErrorFrame,
    MessageFrame,
    Publish,
    ServerFrame,
    Subscribe,
    SubscribedFrame,
)

CHANNEL = "bench:fanout"
ACK_WINDOW = 64  # publishes in flight without an ack
MAX_MESSAGES = 2_000_000  # hard cap per run, whatever --seconds and --rate say
DRAIN_CAP_S = 30.0  # after publishing stops, the longest wait for acks and deliveries
STALL_S = 5.0  # ... cut short when nothing at all arrives for this long
INFLIGHT_BYTES = 256 * 2**20  # bounds the delivery window: frames sent, not yet received by all
MAX_DELIVERY_WINDOW = 10_000
FRAME_OVERHEAD = 250  # bytes of a message frame besides the padding, roughly
CONNECT_CONCURRENCY = 50  # handshakes at once, so a big N does not overrun the accept queue
CONNECT_TIMEOUT_S = 120.0
SUBSCRIBER_MAX_QUEUE = 512  # frames a client buffers before TCP backpressure reaches the server
LATENCY_SAMPLES = 1_000_000
SATURATED = 0.9  # load generator CPU, in cores, above which it may be the bottleneck
BUSY_ELSEWHERE = 0.25  # cores busy with other processes above which figures are noisy


# --- frames -------------------------------------------------------------------------------
#
# The protocol's own frames (relay.protocol.frames), for every benchmark: server frames are
# decoded by one Decoder made once, and a message's data stays raw until the payload's own
# Decoder reads ``n`` and ``t`` from it (skipping the padding).


class Payload(msgspec.Struct):
    """A benchmark message's data: its number (negative for a warm-up message) and the
    ``clock()`` at send. Receivers in the same process subtract it from their own."""

    n: int
    t: float


decode_frame = msgspec.json.Decoder(ServerFrame).decode
decode_payload = msgspec.json.Decoder(Payload).decode
_encode = msgspec.json.encode


def publish_frame(
    channel: str, n: int, ref: int | str, *, pad: str = "", id: str | None = None
) -> tuple[float, bytes]:
    """(send time, the publish of message ``n``), padded with ``pad`` if any."""
    t = clock()
    data = {"n": n, "t": t, "pad": pad} if pad else {"n": n, "t": t}
    return t, _encode(Publish(channel, msgspec.Raw(_encode(data)), id=id, ref=ref))


def read_message(raw: bytes) -> tuple[MessageFrame, Payload] | None:
    """A message frame and its benchmark payload; None for any other frame."""
    try:
        frame = decode_frame(raw)
        if type(frame) is not MessageFrame:
            return None
        return frame, decode_payload(frame.data)
    except msgspec.DecodeError:
        return None


def frame_name(frame: ServerFrame) -> str:
    """``"ack"``; for an error frame, its code and message too."""
    if isinstance(frame, ErrorFrame):
        return f"error {frame.code}: {frame.message}"
    return str(frame.__struct_config__.tag)


# --- measuring ----------------------------------------------------------------------------


@dataclass
class LatencySampler:
    """Keeps every ``stride``-th value; when full it drops every other one and doubles
    the stride, so the sample stays spread over the whole run in bounded memory."""

    cap: int = LATENCY_SAMPLES
    stride: int = 1
    count: int = 0
    maximum: float = 0.0
    samples: array[float] = field(default_factory=lambda: array("d"))

    def add(self, value: float) -> None:
        if value > self.maximum:
            self.maximum = value
        if self.count % self.stride == 0:
            self.samples.append(value)
            if len(self.samples) >= self.cap:
                self.samples = self.samples[::2]
                self.stride *= 2
        self.count += 1


def percentile(values: array[float] | list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Deliveries:
    """What all subscribers received, and how far behind the slowest of them is."""

    def __init__(self, subscribers: int) -> None:
        self.live = subscribers
        self.per_message: array[int] = array("I")  # receipts per message number
        self.low = 0  # every message numbered below has reached every live subscriber
        self.total = 0
        self.last = 0.0
        self.latency = LatencySampler()
        self._advanced = anyio.Event()

    def expect(self) -> None:
        """The publisher is about to send the next message number."""
        self.per_message.append(0)

    def receive(self, n: int, sent_at: float, now: float) -> None:
        self.total += 1
        self.last = now
        self.latency.add(now - sent_at)
        if 0 <= n < len(self.per_message):
            self.per_message[n] += 1
            if n == self.low:
                self._advance()

    def drop_subscriber(self) -> None:
        self.live -= 1
        self._advance()

    async def wait_advanced(self) -> None:
        await self._advanced.wait()

    def _advance(self) -> None:
        low, receipts = self.low, self.per_message
        while low < len(receipts) and receipts[low] >= self.live:
            low += 1
        if low != self.low:
            self.low = low
            self._advanced.set()
            self._advanced = anyio.Event()


@dataclass
class Subscriber:
    ws: ClientConnection
    received: int = 0  # distinct messages, in publish order
    disordered: int = 0  # numbered below one already received: duplicate or out of order
    next_n: int = 0
    closed: str | None = None

    async def receive(self, deliveries: Deliveries) -> None:
        ws, read = self.ws, read_message
        try:
            while True:
                raw = await ws.recv(decode=False)
                now = clock()
                message = read(raw)
                if message is None:
                    continue
                payload = message[1]
                if payload.n >= self.next_n:
                    self.received += 1
                    self.next_n = payload.n + 1
                else:
                    self.disordered += 1
                deliveries.receive(payload.n, payload.t, now)
        except ConnectionClosed as exc:
            self.closed = str(exc)
            deliveries.drop_subscriber()


@dataclass
class Publisher:
    ws: ClientConnection
    sent_at: array[float] = field(default_factory=lambda: array("d"))
    ack_latency: array[float] = field(default_factory=lambda: array("d"))
    acked: int = 0
    last_ack: float = 0.0
    errors: list[str] = field(default_factory=list)
    closed: str | None = None
    window: anyio.Semaphore = field(default_factory=lambda: anyio.Semaphore(ACK_WINDOW))
    waited_for_acks: float = 0.0
    waited_for_subscribers: float = 0.0
    started: float = 0.0  # publishing, from the first send
    stopped: float = 0.0  # ... to when the time was up

    @property
    def sent(self) -> int:
        return len(self.sent_at)

    @property
    def outstanding(self) -> int:
        return self.sent - self.acked - len(self.errors)

    async def read_acks(self) -> None:
        try:
            while True:
                raw = await self.ws.recv(decode=False)
                now = clock()
                try:
                    frame = decode_frame(raw)
                except msgspec.DecodeError as exc:
                    self.errors.append(f"unexpected frame: {exc}")
                    continue
                if isinstance(frame, AckFrame):
                    ref = frame.ref
                    if isinstance(ref, int) and 0 <= ref < self.sent:
                        self.acked += 1
                        self.last_ack = now
                        self.ack_latency.append(now - self.sent_at[ref])
                        self.window.release()
                elif isinstance(frame, ErrorFrame):
                    self.errors.append(f"{frame.code}: {frame.message}")
                    if frame.ref is not UNSET and frame.ref is not None:
                        self.window.release()
        except ConnectionClosed as exc:
            self.closed = str(exc)

    def room_now(
        self, n: int, deliveries: Deliveries, delivery_window: int, not_before: float
    ) -> bool:
        """Takes an ack-window slot if message ``n`` may go at once: the common case,
        and without a cancel scope, which costs as much as the rest of a publish."""
        if not_before > clock() or n - deliveries.low >= delivery_window:
            return False
        try:
            self.window.acquire_nowait()
        except anyio.WouldBlock:
            return False
        return True

    async def wait_for_room(
        self, n: int, deliveries: Deliveries, delivery_window: int, not_before: float
    ) -> None:
        if not_before > clock():
            await anyio.sleep(not_before - clock())
        started = clock()
        try:
            while n - deliveries.low >= delivery_window:
                await deliveries.wait_advanced()
        finally:  # also when publishing time runs out while waiting
            self.waited_for_subscribers += clock() - started
        started = clock()
        try:
            await self.window.acquire()
        finally:
            self.waited_for_acks += clock() - started


async def publish_for(
    publisher: Publisher, deliveries: Deliveries, load: Load, delivery_window: int
) -> None:
    """Publish until ``load.seconds`` have passed (or MAX_MESSAGES were sent)."""
    pad, rate = "x" * load.size, load.rate
    start = publisher.started = clock()
    stop_at = start + load.seconds
    try:
        for n in range(MAX_MESSAGES):
            not_before = start + n / rate if rate else 0.0
            # No checkpoint on the fast path: ws.send() does not yield while the socket takes
            # the data, so the publisher sends what the windows allow in one burst, like any
            # pipelining client. Yielding after each publish would instead cap the rate at one
            # message per event-loop turn, and a turn grows with the number of subscribers.
            if not publisher.room_now(n, deliveries, delivery_window, not_before):
                with anyio.move_on_after(stop_at - clock()):
                    await publisher.wait_for_room(n, deliveries, delivery_window, not_before)
            if clock() >= stop_at or publisher.closed:
                break
            t, frame = publish_frame(CHANNEL, n, n, pad=pad)
            publisher.sent_at.append(t)
            deliveries.expect()
            await publisher.ws.send(frame, text=True)
    finally:
        publisher.stopped = clock()


async def drain(
    publisher: Publisher, subscribers: list[Subscriber], deliveries: Deliveries, deadline: float
) -> None:
    """Wait for the last acks, then until every subscriber has every acked message."""
    await poll_until(lambda: publisher.outstanding <= 0 or publisher.closed is not None, deadline)
    target = publisher.acked
    progress = [deliveries.total, clock()]  # deliveries seen, when that number last changed

    def done() -> bool:
        if all(sub.closed or sub.received >= target for sub in subscribers):
            return True
        if deliveries.total != progress[0]:
            progress[:] = [deliveries.total, clock()]
        return clock() - progress[1] > STALL_S  # nothing moves any more: the rest is lost

    await poll_until(done, deadline)


# --- connections --------------------------------------------------------------------------


async def open_connection(url: str, opened: list[ClientConnection]) -> ClientConnection:
    """Connect and read the greeting; the connection goes into ``opened`` at once, so
    that the caller closes it whatever happens next."""
    try:
        ws = await connect(
            url,
            compression=None,
            max_queue=SUBSCRIBER_MAX_QUEUE,
            ping_interval=None,  # a busy load generator must not time itself out
            close_timeout=2,
            open_timeout=CONNECT_TIMEOUT_S,
        )
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise BenchError(f"cannot connect to {url}: {exc}") from exc
    opened.append(ws)
    await expect_frame(ws, ConnectedFrame)
    return ws


async def expect_frame(ws: ClientConnection, kind: type[ServerFrame]) -> None:
    expected = kind.__struct_config__.tag
    try:
        frame = decode_frame(await ws.recv(decode=False))
    except (ConnectionClosed, msgspec.DecodeError) as exc:
        raise BenchError(f"expected a {expected!r} frame: {exc}") from exc
    if not isinstance(frame, kind):
        raise BenchError(f"expected {expected!r} frame, got {frame_name(frame)}")


async def connect_subscribers(url: str, count: int, opened: list[ClientConnection]) -> None:
    """Open and subscribe ``count`` connections, added to ``opened`` (the caller's list,
    so that it can close them all even if this fails half-way)."""
    limiter = anyio.CapacityLimiter(CONNECT_CONCURRENCY)

    async def one() -> None:
        async with limiter:
            ws = await open_connection(url, opened)
            await ws.send(_encode(Subscribe(CHANNEL, ref=1)), text=True)
            await expect_frame(ws, SubscribedFrame)

    try:
        with anyio.fail_after(CONNECT_TIMEOUT_S):
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(one)
    except TimeoutError:
        raise BenchError(
            f"{count} subscribers took over {CONNECT_TIMEOUT_S:.0f}s to connect"
        ) from None
    except ExceptionGroup as group:  # the first failure says enough
        first = first_error(group)
        raise first if isinstance(first, HarnessError) else BenchError(str(first)) from group


async def close_all(connections: list[ClientConnection]) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(10):
        async with anyio.create_task_group() as tg:
            for ws in connections:
                tg.start_soon(ws.close)


# --- the servers under test ---------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    label: str
    title: str
    command: Callable[[Path], tuple[list[str], list[Path]]]  # workdir -> argv, extra logs


TARGETS = (
    Target("relaynet", "relaynet: one relay, embedded JetStream, ack after store", relay_command),
    Target(
        "bare websockets broadcast",
        "bare websockets broadcast: no storage, ack at once, at-most-once",
        peer_command,
    ),
)


# --- one run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    subscribers: int
    seconds: float
    rate: int  # msgs/s; 0: as fast as the ack window allows
    size: int  # bytes of padding per payload


@dataclass
class RunResult:
    target: Target
    load: Load
    published: int
    acked: int
    publish_errors: list[str]
    publish_seconds: float
    acks_per_s: float
    deliveries: int
    delivery_seconds: float  # first publish to last delivery
    delivered_per_s: float
    latency_ms: tuple[float, float, float]  # publish -> deliver: p50, p99, max
    latency_samples: int
    ack_ms: tuple[float, float]  # publish -> ack: p50, p99
    lost: int
    disordered: int
    disconnected: list[str]
    waited_for_acks: float
    waited_for_subscribers: float
    delivery_window: int
    cpu: CpuUse
    server_rss_kb: dict[str, int | None]
    problems: list[str] = field(default_factory=list)


def delivery_window(subscribers: int, size: int) -> int:
    fits = INFLIGHT_BYTES // (subscribers * (size + FRAME_OVERHEAD))
    return max(ACK_WINDOW, min(MAX_DELIVERY_WINDOW, fits))


async def measure(server: ServerProcess, target: Target, load: Load) -> RunResult:
    deliveries = Deliveries(load.subscribers)
    window = delivery_window(load.subscribers, load.size)
    opened: list[ClientConnection] = []
    try:
        await connect_subscribers(server.url, load.subscribers, opened)
        subs = [Subscriber(ws) for ws in opened]
        publisher = Publisher(await open_connection(server.url, opened))
        meter = CpuMeter(server.pids)
        # The hard cap: publishing plus draining never outlast it, whatever the server does.
        with anyio.move_on_after(load.seconds + DRAIN_CAP_S + 5):
            async with anyio.create_task_group() as tg:
                for sub in subs:
                    tg.start_soon(sub.receive, deliveries)
                tg.start_soon(publisher.read_acks)
                await publish_for(publisher, deliveries, load, window)
                await drain(
                    publisher, subs, deliveries, publisher.started + load.seconds + DRAIN_CAP_S
                )
                tg.cancel_scope.cancel()
        cpu = meter.stop()
        rss = server.peak_rss_kb()
    finally:
        await close_all(opened)
    return _summarise(target, load, publisher, subs, deliveries, window, cpu, rss)


def _summarise(
    target: Target,
    load: Load,
    publisher: Publisher,
    subs: list[Subscriber],
    deliveries: Deliveries,
    window: int,
    cpu: CpuUse,
    rss: dict[str, int | None],
) -> RunResult:
    start = publisher.started
    ack_span = max(publisher.last_ack - start, 1e-9)
    delivery_span = max(deliveries.last - start, 1e-9)
    latency = deliveries.latency
    return RunResult(
        target=target,
        load=load,
        published=publisher.sent,
        acked=publisher.acked,
        publish_errors=publisher.errors,
        publish_seconds=publisher.stopped - start,
        acks_per_s=publisher.acked / ack_span if publisher.acked else 0.0,
        deliveries=deliveries.total,
        delivery_seconds=delivery_span if deliveries.total else 0.0,
        delivered_per_s=deliveries.total / delivery_span if deliveries.total else 0.0,
        latency_ms=(
            1000 * percentile(latency.samples, 0.50),
            1000 * percentile(latency.samples, 0.99),
            1000 * latency.maximum,
        ),
        latency_samples=len(latency.samples),
        ack_ms=(
            1000 * percentile(publisher.ack_latency, 0.50),
            1000 * percentile(publisher.ack_latency, 0.99),
        ),
        lost=sum(max(0, publisher.acked - sub.received) for sub in subs),
        disordered=sum(sub.disordered for sub in subs),
        disconnected=[sub.closed for sub in subs if sub.closed],
        waited_for_acks=publisher.waited_for_acks,
        waited_for_subscribers=publisher.waited_for_subscribers,
        delivery_window=window,
        cpu=cpu,
        server_rss_kb=rss,
    )


async def run_target(target: Target, load: Load) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="relaynet-bench-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        argv, logs = target.command(workdir)
        found: list[str] = []
        async with running_server(target.label, argv, workdir, logs, found) as server:
            result = await measure(server, target, load)
        result.problems = found
    return result


# --- output -------------------------------------------------------------------------------


def msec(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f} ms"


def _mib(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f} MiB"


def _total_rss_kb(result: RunResult) -> int | None:
    values = list(result.server_rss_kb.values())
    return None if None in values else sum(v for v in values if v is not None)


def _load_generator_saturated(r: RunResult) -> bool:
    return r.cpu.cores(r.cpu.here) > SATURATED


def _cpu_lines(r: RunResult) -> list[str]:
    cpu = r.cpu
    server = " + ".join(f"{name} {s:.1f} s" for name, s in cpu.processes.items())
    server_cores = cpu.cores(sum(cpu.processes.values()))
    client = cpu.cores(cpu.here)
    lines = [
        f"server CPU            {server} in {cpu.wall:.1f} s = {server_cores:.0%} of a core",
        f"load generator CPU    {client:.0%} of a core"
        + ("  <- saturated: it may be what limits the figures" if client > SATURATED else ""),
    ]
    if cpu.elsewhere > BUSY_ELSEWHERE:
        lines.append(
            f"machine               other processes kept {cpu.elsewhere:.1f} of "
            f"{os.cpu_count()} cores busy  <- contended: figures are noisy"
        )
    return lines


def format_result(r: RunResult) -> str:
    load = r.load
    rate = f"{load.rate} msgs/s target" if load.rate else "as fast as the ack window allows"
    sampled = (
        f"all {r.deliveries} deliveries"
        if r.latency_samples == r.deliveries
        else f"sample of {r.latency_samples} of {r.deliveries}"
    )
    rss = " + ".join(f"{name} {_mib(kb)}" for name, kb in r.server_rss_kb.items())
    if len(r.server_rss_kb) > 1:
        rss += f" = {_mib(_total_rss_kb(r))}"
    pub = max(r.publish_seconds, 1e-9)
    lines = [
        f"== {r.target.title} ==",
        f"subscribers           {load.subscribers}",
        f"payload               {load.size} bytes of padding (+ n, t and the frame's envelope)",
        f"publishing            {r.publish_seconds:.2f} s, {rate}",
        f"published             {r.published} msgs, {r.acked} acked, "
        f"{len(r.publish_errors)} errors",
        f"accepted              {r.acks_per_s:,.0f} acks/s",
        f"delivered             {r.deliveries:,} deliveries in {r.delivery_seconds:.2f} s "
        "(first publish to last delivery)",
        f"delivered rate        {r.delivered_per_s:,.0f} msgs/s",
        f"publish -> deliver    p50 {msec(r.latency_ms[0])}   "
        f"p99 {msec(r.latency_ms[1])}   max {msec(r.latency_ms[2])}   ({sampled})",
        f"publish -> ack        p50 {msec(r.ack_ms[0])}   p99 {msec(r.ack_ms[1])}",
        f"lost                  {r.lost} (acked, not delivered to some subscriber)",
        f"out of order / dups   {r.disordered}",
        f"disconnected          {len(r.disconnected)} subscribers"
        + (f" (first: {r.disconnected[0]})" if r.disconnected else ""),
        f"server peak RSS       {rss}",
        *_cpu_lines(r),
        f"publisher waited      {r.waited_for_acks / pub:.0%} of the time for acks "
        f"(window {ACK_WINDOW}), {r.waited_for_subscribers / pub:.0%} for the slowest "
        f"subscriber (window {r.delivery_window})",
    ]
    if r.publish_errors:
        lines.append(f"first publish error   {r.publish_errors[0]}")
    lines += server_log_lines("server log            ", r.problems, shown=5)
    return "\n".join(lines)


def format_comparison(results: list[RunResult]) -> str:
    header = (
        f"{'server':<27} {'acks/s':>9} {'delivered/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'lost':>6} {'peak RSS MiB':>13}"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        rss = _total_rss_kb(r)
        rows.append(
            f"{r.target.label:<27} {r.acks_per_s:>9,.0f} {r.delivered_per_s:>12,.0f} "
            f"{r.latency_ms[0]:>8.1f} {r.latency_ms[1]:>8.1f} {r.lost:>6} "
            f"{'n/a' if rss is None else f'{rss / 1024:.1f}':>13}"
        )
    relay, peer = results
    if peer.delivered_per_s > 0:
        ratio = relay.delivered_per_s / peer.delivered_per_s
        rows.append(f"delivered msgs/s, {relay.target.label} / {peer.target.label}: {ratio:.2f}x")
    saturated = [r.target.label for r in results if _load_generator_saturated(r)]
    if saturated:
        rows.append(
            f"note: the load generator used a whole core in the {' and '.join(saturated)} "
            f"run{'s' if len(saturated) > 1 else ''}: the server may do better than measured"
        )
    if any(r.cpu.elsewhere > BUSY_ELSEWHERE for r in results):
        rows.append("note: other processes were busy on this machine; repeat on a quiet one")
    return "\n".join(rows)


# --- entry point --------------------------------------------------------------------------


def _check_load(load: Load) -> str | None:
    if not 1 <= load.subscribers <= 20_000:
        return "--subscribers must be 1..20000"
    if not 0 < load.seconds <= 3600:
        return "--seconds must be more than 0 and at most 3600"
    if load.rate < 0:
        return "--rate must be 0 (as fast as acks allow) or more"
    if not 0 <= load.size <= 60_000:
        return "--size must be 0..60000 (the default max_message_bytes is 65536)"
    return None


async def run_fanout(subscribers: int, seconds: float, rate: int, size: int) -> int:
    """Run the fan-out benchmark against relaynet, then the bare baseline, and print both.

    Exit code 0, or 1 if relaynet lost or refused messages or a server failed, 2 for bad
    arguments. The baseline losing messages is its nature and not a failure."""
    load = Load(subscribers, seconds, rate, size)
    problem = _check_load(load)
    if problem:
        print(f"bench fanout: {problem}", file=sys.stderr)
        return 2
    results: list[RunResult] = []
    try:
        raise_fd_limit(subscribers)
        for target in TARGETS:
            result = await run_target(target, load)
            print(format_result(result) + "\n", flush=True)
            results.append(result)
    except HarnessError as exc:
        print(f"bench fanout: {exc}", file=sys.stderr)
        return 1
    print(format_comparison(results), flush=True)
    relay = results[0]
    return 0 if relay.acked and relay.lost == 0 and not relay.publish_errors else 1
