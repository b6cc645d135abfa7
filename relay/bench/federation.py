"""``relaynet bench federation``: three regions on loopback, links with latency L.

Theory of operation
-------------------
Each region (us-east, eu-west, ap-south) gets a nats-server with JetStream and
one relay, all subprocesses. Federation runs inside each relay and reads each
peer's log over a NATS connection to the peer; every one of the six directed
links goes through a ``LinkProxy`` running in this process, which delays the
bytes of each direction by the one-way latency L. The load generator lives in
this process too: one publisher on us-east and one subscriber per region, so
every latency is "receive time minus send time" on one ``perf_counter`` clock.

1. **Latency**: publishes at a fixed rate (``--rate``, 100 msgs/s if 0) on one
   channel; publish -> deliver per region, the remote figures minus L (what
   relaynet adds on top of the link), and publish -> ack.
2. **What one link carries**: publishes as fast as ``ACK_WINDOW`` unacked
   publishes allow, round-robin over ``len(THROUGHPUT_CHANNELS)`` channels
   (writes to one channel are serialised); messages/s delivered in each remote
   region and the lag from the last ack to the last remote delivery.
3. **Bare NATS over the same link**: a core NATS publisher on us-east's NATS and
   a subscriber connected to it through the eu-west <- us-east proxy: the floor
   of that link without relaynet, at the same fixed rate and then as fast as a
   window of unreceived messages allows.

Before measuring, one warm-up message per channel must reach every region: the
links are up and every channel's head is known everywhere.

Everything is bounded: at most ``MAX_MESSAGES`` publishes per phase, ``seconds``
of publishing, at most ``DRAIN_CAP_S`` + ``seconds`` more for acks and deliveries
(cut short after ``STALL_S`` without progress), an overall wall-clock cap, and traffic
only to 127.0.0.1. Every process started here is stopped by its pid (SIGTERM,
then SIGKILL) and the temporary directory removed, also on errors and Ctrl-C;
the children also get SIGTERM if this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import tempfile
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from relay.adapters.embedded_nats import NatsCredentials
from relay.bench.fanout import (
    ACK_WINDOW,
    BUSY_ELSEWHERE,
    SATURATED,
    LatencySampler,
    Payload,
    Publisher,
    close_all,
    decode_frame,
    decode_payload,
    frame_name,
    msec,
    open_connection,
    percentile,
    publish_frame,
    read_message,
)
from relay.bench.report import BenchError, run_and_report, server_log_lines
from relay.harness import toolkit
from relay.harness.linkproxy import LinkProxy
from relay.harness.network import Network
from relay.harness.toolkit import CpuMeter, CpuUse, clock, poll_until
from relay.protocol.frames import AckFrame, ErrorFrame, Subscribe, SubscribedFrame

REGIONS = ("us-east", "eu-west", "ap-south")
HOME = "us-east"  # where the publisher is
LINK = ("eu-west", HOME)  # eu-west's reads of us-east's NATS: the link phase 3 also uses
LATENCY_CHANNEL = "bench:fed"
TOTAL_CHANNEL = "total:fed"  # in a namespace with ordering = "total"
THROUGHPUT_CHANNELS = tuple(f"bench:fed-{i}" for i in range(8))
ALL_CHANNELS = (LATENCY_CHANNEL, TOTAL_CHANNEL, *THROUGHPUT_CHANNELS)
DEFAULT_RATE = 100  # msgs/s of the fixed-rate phases when --rate is 0
MAX_MESSAGES = 100_000  # per phase, whatever --seconds and --rate say
DRAIN_CAP_S = 60.0  # after publishing stops, the longest wait (+ seconds) for acks and deliveries
STALL_S = 10.0  # ... cut short when nothing arrives for this long (redelivery is 2 s)
WARMUP_TIMEOUT_S = 30.0
BARE_WINDOW = 10_000  # bare NATS: messages sent and not yet received, at most
BARE_SUBJECT = "bench.fed.bare"
ACK_WAIT_S = 2.0
MAX_LATENCY_MS = 5_000.0
MAX_SECONDS = 600.0
MAX_RATE = 10_000


_encode = msgspec.json.encode


# --- the network -------------------------------------------------------------------------


def _network(workdir: Path, latency_ms: float) -> Network:
    """A nats-server and a relay process per region; links delayed by ``latency_ms``."""
    settings = {
        "limits": {"outbox_max_messages": 100_000},  # this measures links, not slow consumers
        "federation": {"ack_wait_s": ACK_WAIT_S},
        "namespaces": [{"name": "total", "prefix": "total:", "ordering": "total"}],
    }
    return Network(REGIONS, workdir, latency_ms=latency_ms, settings=settings, name="bench")


# --- subscribers and publishers -----------------------------------------------------------


@dataclass
class Tally:
    """What one region's subscriber received in the current phase."""

    channels: frozenset[str]
    latency: LatencySampler = field(default_factory=LatencySampler)
    count: int = 0  # numbered messages, duplicates included
    last: float = 0.0


@dataclass
class Receiver:
    """One region's subscriber, on every benchmark channel."""

    region: str
    ws: ClientConnection
    # (channel, origin) -> message numbers in arrival order, warm-up and all phases
    arrivals: dict[tuple[str, str], array[int]] = field(default_factory=dict)
    last_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    seq_breaks: int = 0  # ts[origin] not one more than the previous one's on the channel
    tally: Tally = field(default_factory=lambda: Tally(frozenset()))
    closed: str | None = None

    async def subscribe(self, channels: Sequence[str]) -> None:
        for i, channel in enumerate(channels):
            await self.ws.send(_encode(Subscribe(channel, ref=i)), text=True)
            try:
                frame = decode_frame(await self.ws.recv(decode=False))
            except (ConnectionClosed, msgspec.DecodeError) as exc:
                raise BenchError(f"{self.region}: subscribe {channel}: {exc}") from exc
            if not isinstance(frame, SubscribedFrame):
                raise BenchError(f"{self.region}: subscribe {channel}: {frame_name(frame)}")

    def start_phase(self, channels: Iterable[str]) -> Tally:
        self.tally = Tally(frozenset(channels))
        return self.tally

    def has_all(self, channels: Iterable[str]) -> bool:
        return all((channel, HOME) in self.arrivals for channel in channels)

    async def receive(self) -> None:
        try:
            while True:
                raw = await self.ws.recv(decode=False)
                now = clock()
                message = read_message(raw)
                if message is None:
                    continue
                frame, data = message
                key = (frame.channel, frame.origin)
                seq = frame.ts.get(frame.origin, 0)
                previous = self.last_seq.get(key)
                if previous is not None and seq != previous + 1:
                    self.seq_breaks += 1
                self.last_seq[key] = seq
                self.arrivals.setdefault(key, array("q")).append(data.n)
                tally = self.tally
                if data.n >= 0 and frame.channel in tally.channels:
                    tally.latency.add(now - data.t)
                    tally.count += 1
                    tally.last = now
        except ConnectionClosed as exc:
            self.closed = str(exc)


async def _publish(pub: Publisher, channels: Sequence[str], seconds: float, rate: int) -> None:
    """Publish for ``seconds``: at ``rate`` msgs/s, or (rate 0) as fast as the ack window
    allows, round-robin over ``channels``; message n has ref n."""
    start = pub.started = clock()
    stop_at = start + seconds
    try:
        for n in range(MAX_MESSAGES):
            if rate:
                not_before = start + n / rate
                if not_before >= stop_at:
                    break
                await anyio.sleep(max(0.0, not_before - clock()))
            try:
                pub.window.acquire_nowait()  # the fast path: no cancel scope, no yield
            except anyio.WouldBlock:
                got = False
                with anyio.move_on_after(max(0.0, stop_at - clock())):
                    await pub.window.acquire()
                    got = True
                if not got:
                    break
            if clock() >= stop_at or pub.closed:
                break
            t, frame = publish_frame(channels[n % len(channels)], n, n)
            pub.sent_at.append(t)
            await pub.ws.send(frame, text=True)
    finally:
        pub.stopped = clock()


async def _drain(pub: Publisher, receivers: Sequence[Receiver], deadline: float) -> str:
    """Wait for the last acks, then until every region has every acked message.
    Returns how it ended: "complete", "stalled" or "cap"."""
    await poll_until(lambda: pub.outstanding <= 0 or pub.closed is not None, deadline)
    target = pub.acked
    progress = [-1, clock()]  # deliveries seen, when that number last changed

    def complete() -> bool:
        return all(r.closed or r.tally.count >= target for r in receivers)

    def stalled() -> bool:
        total = sum(r.tally.count for r in receivers)
        if total != progress[0]:
            progress[:] = [total, clock()]
        return clock() - progress[1] > STALL_S

    await poll_until(lambda: complete() or stalled(), deadline)
    if complete():
        return "complete"
    return "stalled" if stalled() else "cap"


async def _warm_up(url: str, receivers: Sequence[Receiver], opened: list[ClientConnection]) -> None:
    """One message per channel from us-east must reach every region: the links are up."""
    ws = await open_connection(url, opened)
    for i, channel in enumerate(ALL_CHANNELS):
        await ws.send(publish_frame(channel, -1, f"warm-{i}")[1], text=True)
    deadline = clock() + WARMUP_TIMEOUT_S
    acks = 0
    with anyio.move_on_after(WARMUP_TIMEOUT_S):
        while acks < len(ALL_CHANNELS):
            try:
                frame = decode_frame(await ws.recv(decode=False))
            except (ConnectionClosed, msgspec.DecodeError) as exc:
                raise BenchError(f"warm-up publisher: {exc}") from exc
            if isinstance(frame, AckFrame):
                acks += 1
            elif isinstance(frame, ErrorFrame):
                raise BenchError(f"warm-up publish refused: {frame.code} {frame.message}")
    if acks < len(ALL_CHANNELS):
        raise BenchError(f"warm-up publishes not acked within {WARMUP_TIMEOUT_S:.0f}s")
    if not await poll_until(lambda: all(r.has_all(ALL_CHANNELS) for r in receivers), deadline):
        missing = [r.region for r in receivers if not r.has_all(ALL_CHANNELS)]
        raise BenchError(
            f"federation did not bring the warm-up messages to {', '.join(missing)} "
            f"within {WARMUP_TIMEOUT_S:.0f}s"
        )


# --- relaynet phases ----------------------------------------------------------------------


@dataclass(frozen=True)
class RegionFigures:
    delivered: int  # distinct messages of the phase
    duplicates: int
    lost: int  # acked, not delivered
    latency_ms: tuple[float, float, float]  # publish -> deliver: p50, p99, max
    rate: float  # distinct msgs/s, first publish to last delivery
    lag_s: float  # last ack to last delivery


@dataclass(frozen=True)
class LinkLatency:
    """Measured one-way delay over the proxies during a phase, in ms."""

    p50: float
    p99: float
    per_link: dict[str, tuple[float, float] | None]


@dataclass(frozen=True)
class PhaseResult:
    channels: tuple[str, ...]
    seconds: float
    rate: int
    published: int
    acked: int
    errors: list[str]
    publish_seconds: float
    acks_per_s: float
    ack_ms: tuple[float, float]
    ended: str  # "complete", "stalled" or "cap"
    regions: dict[str, RegionFigures]
    links: LinkLatency
    disconnected: list[str]
    cpu: CpuUse


def _drain_cap(seconds: float) -> float:
    """A backlog built while publishing takes time to cross; longer runs build more."""
    return DRAIN_CAP_S + seconds


def _clear_link_samples(proxies: Iterable[LinkProxy]) -> None:
    for proxy in proxies:
        proxy.stats.to_target.delays_ms.clear()
        proxy.stats.to_client.delays_ms.clear()


def _link_latency(proxies: dict[tuple[str, str], LinkProxy]) -> LinkLatency:
    samples = [
        value
        for proxy in proxies.values()
        for value in (*proxy.stats.to_target.delays_ms, *proxy.stats.to_client.delays_ms)
    ]
    return LinkLatency(
        percentile(samples, 0.50),
        percentile(samples, 0.99),
        {proxy.name: proxy.measured_latency_ms() for proxy in proxies.values()},
    )


def _region_figures(pub: Publisher, receiver: Receiver, channels: Iterable[str]) -> RegionFigures:
    numbers = [
        n
        for channel in channels
        for n in receiver.arrivals.get((channel, HOME), array("q"))
        if n >= 0
    ]
    distinct = set(numbers)
    if pub.acked == pub.sent:  # everything sent is acked: exactly these must arrive
        lost = sum(1 for n in range(pub.sent) if n not in distinct)
    else:  # some unacked (errors, a closed connection): count only what was acked
        lost = max(0, pub.acked - sum(1 for n in distinct if n < pub.sent))
    tally = receiver.tally
    latency = tally.latency
    return RegionFigures(
        delivered=len(distinct),
        duplicates=len(numbers) - len(distinct),
        lost=lost,
        latency_ms=(
            1000 * percentile(latency.samples, 0.50),
            1000 * percentile(latency.samples, 0.99),
            1000 * latency.maximum if latency.count else math.nan,
        ),
        rate=len(distinct) / max(tally.last - pub.started, 1e-9) if distinct else 0.0,
        lag_s=tally.last - pub.last_ack if distinct and pub.acked else math.nan,
    )


async def _relaynet_phase(
    url: str,
    receivers: dict[str, Receiver],
    proxies: dict[tuple[str, str], LinkProxy],
    opened: list[ClientConnection],
    channels: tuple[str, ...],
    seconds: float,
    rate: int,
    pids: dict[str, int],
) -> PhaseResult:
    _clear_link_samples(proxies.values())
    for receiver in receivers.values():
        receiver.start_phase(channels)
    pub = Publisher(await open_connection(url, opened))
    meter = CpuMeter(lambda: pids)
    ended = "cap"
    drain_cap = _drain_cap(seconds)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pub.read_acks)
        # The hard cap: publishing plus draining never outlast it, whatever the relays do.
        with anyio.move_on_after(seconds + drain_cap + 5):
            await _publish(pub, channels, seconds, rate)
            ended = await _drain(pub, list(receivers.values()), clock() + drain_cap)
        tg.cancel_scope.cancel()
    cpu = meter.stop()
    await pub.ws.close()
    ack_span = max(pub.last_ack - pub.started, 1e-9)
    return PhaseResult(
        channels=channels,
        seconds=seconds,
        rate=rate,
        published=pub.sent,
        acked=pub.acked,
        errors=pub.errors,
        publish_seconds=pub.stopped - pub.started,
        acks_per_s=pub.acked / ack_span if pub.acked else 0.0,
        ack_ms=(
            1000 * percentile(pub.ack_latency, 0.50),
            1000 * percentile(pub.ack_latency, 0.99),
        ),
        ended=ended,
        regions={r: _region_figures(pub, rcv, channels) for r, rcv in receivers.items()},
        links=_link_latency(proxies),
        disconnected=[f"{r}: {rcv.closed}" for r, rcv in receivers.items() if rcv.closed],
        cpu=cpu,
    )


@dataclass(frozen=True)
class OrderCheck:
    same_everywhere: bool  # every region got the same sequence per (channel, origin)
    publisher_order: bool  # ... and it is the order the publisher sent in
    seq_breaks: int  # ts[origin] not consecutive somewhere
    messages: int
    differences: list[str]


def _check_order(receivers: dict[str, Receiver]) -> OrderCheck:
    reference = receivers[HOME].arrivals
    differences: list[str] = []
    publisher_order = True
    for key, sequence in reference.items():
        numbered = [n for n in sequence if n >= 0]
        publisher_order &= all(a < b for a, b in itertools.pairwise(numbered))
        for region, receiver in receivers.items():
            theirs = receiver.arrivals.get(key, array("q"))
            if theirs != sequence:
                differences.append(
                    f"{region} {key[0]} from {key[1]}: {len(theirs)} messages, "
                    f"{len(sequence)} in {HOME}"
                )
    for region, receiver in receivers.items():
        for key in receiver.arrivals.keys() - reference.keys():
            differences.append(f"{region}: {key[0]} from {key[1]} not seen in {HOME}")
    return OrderCheck(
        same_everywhere=not differences,
        publisher_order=publisher_order,
        seq_breaks=sum(r.seq_breaks for r in receivers.values()),
        messages=sum(len(seq) for seq in reference.values()),
        differences=differences,
    )


# --- bare NATS over the same link ---------------------------------------------------------


class BareSubscriber:
    def __init__(self) -> None:
        self.latency = LatencySampler()
        self.seen: set[int] = set()
        self.count = 0
        self.last = 0.0
        self.wake_at = 0
        self.woken: anyio.Event | None = None

    def reset(self) -> None:
        self.latency, self.seen, self.count, self.last = LatencySampler(), set(), 0, 0.0

    async def on_message(self, msg: Msg) -> None:
        now = clock()
        try:
            data = decode_payload(msg.data)
        except msgspec.DecodeError:
            return
        self.latency.add(now - data.t)
        self.seen.add(data.n)
        self.count += 1
        self.last = now
        if self.woken is not None and self.count >= self.wake_at:
            self.woken.set()
            self.woken = None

    async def wait_for(self, count: int) -> None:
        while self.count < count:
            self.wake_at, self.woken = count, anyio.Event()
            await self.woken.wait()


@dataclass(frozen=True)
class BareResult:
    rate: int
    sent: int
    received: int
    latency_ms: tuple[float, float, float]
    burst_sent: int
    burst_received: int
    burst_per_s: float
    burst_latency_ms: tuple[float, float]
    link: tuple[float, float] | None  # the proxy's measured one-way p50, p99


async def _bare_wait(sub: BareSubscriber, sent: int, deadline: float) -> None:
    progress = [-1, clock()]

    def done() -> bool:
        if sub.count >= sent:
            return True
        if sub.count != progress[0]:
            progress[:] = [sub.count, clock()]
        return clock() - progress[1] > STALL_S / 2  # at most once: a lost one never comes

    await poll_until(done, deadline)


async def _bare_nats(
    direct_url: str, proxy: LinkProxy, seconds: float, rate: int, credentials: NatsCredentials
) -> BareResult:
    """``credentials``: the relay user's of the region's NATS (a core subject, which no
    peer user may touch)."""
    _clear_link_samples([proxy])
    sub = BareSubscriber()
    pub_nc: NatsClient | None = None
    sub_nc: NatsClient | None = None
    login = {"user": credentials.user, "password": credentials.password}
    try:
        pub_nc = await nats.connect(
            direct_url, name="bench-bare-pub", allow_reconnect=False, connect_timeout=5, **login
        )
        sub_nc = await nats.connect(
            f"nats://127.0.0.1:{proxy.port}",
            name="bench-bare-sub",
            allow_reconnect=False,
            connect_timeout=5 + 4 * proxy.latency_ms / 1000,
            **login,
        )
        subscription = await sub_nc.subscribe(BARE_SUBJECT, cb=sub.on_message)
        await sub_nc.flush()  # the subscription is known to the server before the first publish
        # At the fixed rate.
        start = clock()
        sent = 0
        for n in range(min(MAX_MESSAGES, math.ceil(rate * seconds))):
            await anyio.sleep(max(0.0, start + n / rate - clock()))
            await pub_nc.publish(BARE_SUBJECT, _encode(Payload(n, clock())))
            sent += 1
        await pub_nc.flush()
        await _bare_wait(sub, sent, clock() + DRAIN_CAP_S)
        fixed = sub.count, sub.latency
        link = proxy.measured_latency_ms()
        # As fast as a window of unreceived messages allows (core NATS has no acks).
        sub.reset()
        start = clock()
        stop_at = start + seconds
        burst = 0
        while burst < MAX_MESSAGES and clock() < stop_at:
            if burst - sub.count >= BARE_WINDOW:
                await pub_nc.flush()
                with anyio.move_on_after(max(0.0, stop_at - clock())):
                    await sub.wait_for(burst - BARE_WINDOW // 2)
                continue
            await pub_nc.publish(BARE_SUBJECT, _encode(Payload(burst, clock())))
            burst += 1
            if burst % 256 == 0:
                await anyio.lowlevel.checkpoint()  # let nats-py's flusher write
        await pub_nc.flush()
        await _bare_wait(sub, burst, clock() + DRAIN_CAP_S)
        await subscription.unsubscribe()
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise BenchError(f"bare NATS baseline: {exc!r}") from exc
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            for nc in (pub_nc, sub_nc):
                if nc is not None:
                    await nc.close()
    received, latency = fixed
    return BareResult(
        rate=rate,
        sent=sent,
        received=received,
        latency_ms=(
            1000 * percentile(latency.samples, 0.50),
            1000 * percentile(latency.samples, 0.99),
            1000 * latency.maximum if latency.count else math.nan,
        ),
        burst_sent=burst,
        burst_received=len(sub.seen),
        burst_per_s=len(sub.seen) / max(sub.last - start, 1e-9) if sub.seen else 0.0,
        burst_latency_ms=(
            1000 * percentile(sub.latency.samples, 0.50),
            1000 * percentile(sub.latency.samples, 0.99),
        ),
        link=link,
    )


# --- one run ------------------------------------------------------------------------------


@dataclass
class Report:
    latency_ms: float
    seconds: float
    rate: int
    warm_up_s: float
    latency: PhaseResult
    total: PhaseResult
    throughput: PhaseResult
    order: OrderCheck
    bare: BareResult
    rss_kb: dict[str, int | None]
    cpu_s: dict[str, float]
    wall_s: float
    problems: list[str] = field(default_factory=list)


async def _measure(latency_ms: float, seconds: float, rate: int, net: Network) -> Report:
    started = clock()
    cpu_before = time.process_time()
    opened: list[ClientConnection] = []
    pids: dict[str, int] = {}
    for r in REGIONS:
        pids[f"relay {r}"] = net.region(r).relays[0].pid or 0
        pids[f"nats {r}"] = net.region(r).nats.pid or 0
    proxies = net.proxies
    try:
        receivers: dict[str, Receiver] = {}
        for region in REGIONS:
            receivers[region] = Receiver(region, await open_connection(net.edge(region), opened))
            await receivers[region].subscribe(ALL_CHANNELS)
        async with anyio.create_task_group() as tg:
            for receiver in receivers.values():
                tg.start_soon(receiver.receive)
            await _warm_up(net.edge(HOME), list(receivers.values()), opened)
            warm_up_s = clock() - started
            url = net.edge(HOME)
            fixed = await _relaynet_phase(
                url, receivers, proxies, opened, (LATENCY_CHANNEL,), seconds, rate, pids
            )
            total = await _relaynet_phase(
                url, receivers, proxies, opened, (TOTAL_CHANNEL,), seconds, rate, pids
            )
            burst = await _relaynet_phase(
                url, receivers, proxies, opened, THROUGHPUT_CHANNELS, seconds, 0, pids
            )
            tg.cancel_scope.cancel()
    finally:
        await close_all(opened)
    order = _check_order(receivers)
    bare = await _bare_nats(
        net.region(HOME).nats.url, proxies[LINK], seconds, rate, net.credentials(HOME)
    )
    return Report(
        latency_ms=latency_ms,
        seconds=seconds,
        rate=rate,
        warm_up_s=warm_up_s,
        latency=fixed,
        total=total,
        throughput=burst,
        order=order,
        bare=bare,
        rss_kb={name: toolkit.peak_rss_kb(pid) for name, pid in pids.items()},
        cpu_s={name: toolkit.cpu_seconds(pid) for name, pid in pids.items()}
        | {"this process (load + proxies)": time.process_time() - cpu_before},
        wall_s=clock() - started,
    )


async def _run(latency_ms: float, seconds: float, rate: int) -> Report:
    with tempfile.TemporaryDirectory(
        prefix="relaynet-bench-fed-", ignore_cleanup_errors=True
    ) as tmp:
        net = _network(Path(tmp), latency_ms)
        async with net:
            report = await _measure(latency_ms, seconds, rate, net)
        # After the stop, so that warnings logged while shutting down count too.
        report.problems = toolkit.problems(net.logs())
    return report


# --- output -------------------------------------------------------------------------------


def _f(value: float, width: int = 8) -> str:
    return f"{'n/a':>{width}}" if math.isnan(value) else f"{value:>{width}.1f}"


def _link_line(links: LinkLatency) -> str:
    worst = max(
        (v for v in links.per_link.values() if v is not None), key=lambda v: v[1], default=None
    )
    text = f"measured one way over the 6 links: p50 {msec(links.p50)}, p99 {msec(links.p99)}"
    if worst is not None:
        text += f" (worst link p99 {msec(worst[1])})"
    return text


def _region_table(phase: PhaseResult, latency_ms: float, rates: bool) -> list[str]:
    head = f"    {'region':<9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    head += f"   {'-L p50':>7} {'-L p99':>7} {'-L max':>7}"
    if rates:
        head += f" {'msgs/s':>9} {'lag s':>7}"
    lines = [head]
    for region, fig in phase.regions.items():
        p50, p99, top = fig.latency_ms
        line = f"    {region:<9} {_f(p50)} {_f(p99)} {_f(top)}"
        if region == HOME:
            line += f"   {'(local)':>7} {'':>7} {'':>7}"
        else:
            line += f"   {_f(p50 - latency_ms, 7)} {_f(p99 - latency_ms, 7)} "
            line += _f(top - latency_ms, 7)
        if rates:
            # Locally the last delivery may come before the last ack: no lag then.
            lag = "n/a" if math.isnan(fig.lag_s) else f"{max(fig.lag_s, 0.0):.2f}"
            line += f" {fig.rate:>9,.0f} {lag:>7}"
        lines.append(line)
    return lines


def _phase_common(phase: PhaseResult) -> list[str]:
    lost = sum(f.lost for f in phase.regions.values())
    dups = sum(f.duplicates for f in phase.regions.values())
    ended = {
        "complete": "every region got every acked message",
        "stalled": f"nothing arrived for {STALL_S:.0f}s: the rest counts as lost",
        "cap": f"cut at the {_drain_cap(phase.seconds):.0f}s drain cap while still "
        "delivering: what is missing is a backlog, not known to be lost",
    }[phase.ended]
    missing = "not yet delivered" if phase.ended == "cap" else "lost"
    cpu = phase.cpu
    servers, here = cpu.cores(cpu.servers), cpu.cores(cpu.here)
    cpu_line = (
        f"CPU                   relays + nats-servers {servers:.1f} cores, this process "
        f"(load + proxies) {here:.1f}, other processes {cpu.elsewhere:.1f}, "
        f"of {os.cpu_count()}"
    )

    cores = os.cpu_count() or 1
    if here > SATURATED:
        cpu_line += "  <- this process saturated: proxies may add delay"
    elif servers + here + cpu.elsewhere > SATURATED * cores:
        cpu_line += "  <- machine saturated: the figures measure CPU as much as links"
    elif cpu.elsewhere > BUSY_ELSEWHERE:
        cpu_line += "  <- contended: figures are noisy"
    lines = [
        f"published             {phase.published} msgs in {phase.publish_seconds:.2f} s, "
        f"{phase.acked} acked ({phase.acks_per_s:,.0f} acks/s), {len(phase.errors)} errors",
        f"publish -> ack        p50 {msec(phase.ack_ms[0])}   p99 {msec(phase.ack_ms[1])}",
        f"drain                 {ended}",
        f"{missing + ' / duplicates':<22}{lost} / {dups}  (acked but not delivered in some "
        "region / delivered twice)",
        f"links                 {_link_line(phase.links)}",
        cpu_line,
    ]
    if phase.errors:
        lines.append(f"first publish error   {phase.errors[0]}")
    if phase.disconnected:
        lines.append(f"disconnected          {'; '.join(phase.disconnected)}")
    return lines


def _cost(region: str, causal: PhaseResult, total: PhaseResult) -> str:
    c, t = causal.regions[region].latency_ms, total.regions[region].latency_ms
    return f"{region} {msec(t[0] - c[0])} / {msec(t[1] - c[1])}"


def format_report(r: Report) -> str:
    fixed, total, burst, bare, order = r.latency, r.total, r.throughput, r.bare, r.order
    remote = [region for region in REGIONS if region != HOME]
    lines = [
        f"== relaynet federation: {len(REGIONS)} regions on loopback, "
        f"one-way link latency {r.latency_ms:g} ms ==",
        f"regions               {', '.join(REGIONS)}: a nats-server (JetStream) and a relay "
        "each; publisher in us-east",
        f"links                 6 LinkProxy (one per directed link), requested {r.latency_ms:g} ms "
        "one way",
        f"ordering              causal on {fixed.channels[0]}, total on {total.channels[0]}",
        f"warm-up               links carried a message on every channel to every region "
        f"{r.warm_up_s:.2f} s after the relays were ready",
        "",
        f"-- 1. cross-region latency: {fixed.rate} msgs/s for {fixed.seconds:g} s on "
        f"{fixed.channels[0]} --",
        *_phase_common(fixed),
        "publish -> deliver (-L: minus the requested one-way latency, what relaynet adds)",
        *_region_table(fixed, r.latency_ms, rates=False),
        "",
        f"-- 1b. the same in total order: {total.rate} msgs/s for {total.seconds:g} s on "
        f'{total.channels[0]} (ordering = "total") --',
        *_phase_common(total),
        "publish -> deliver (-L: minus the requested one-way latency)",
        *_region_table(total, r.latency_ms, rates=False),
        "total order costs, p50 / p99 (total - causal, ms):   "
        + "   ".join(_cost(region, fixed, total) for region in REGIONS),
        "",
        f"-- 2. what one link carries: {ACK_WINDOW} unacked publishes at most, "
        f"{len(burst.channels)} channels round-robin, {burst.seconds:g} s --",
        *_phase_common(burst),
        "delivered per region (msgs/s: first publish to last delivery; lag: last ack to last "
        "delivery; latency includes queueing)",
        *_region_table(burst, r.latency_ms, rates=True),
        "",
        f"-- 3. bare NATS over the same link: core publish on {HOME}'s NATS, subscriber "
        f"through the {LINK[0]}<-{LINK[1]} proxy --",
        f"at {bare.rate} msgs/s          sent {bare.sent}, received {bare.received}: "
        f"p50 {msec(bare.latency_ms[0])}   p99 {msec(bare.latency_ms[1])}   "
        f"max {msec(bare.latency_ms[2])}",
        f"as fast as possible   sent {bare.burst_sent}, received {bare.burst_received} "
        f"(window {BARE_WINDOW:,} unreceived): {bare.burst_per_s:,.0f} msgs/s, "
        f"p50 {msec(bare.burst_latency_ms[0])}   p99 {msec(bare.burst_latency_ms[1])}",
        "link                  measured one way "
        + (
            "n/a"
            if bare.link is None
            else f"p50 {msec(bare.link[0])}, p99 {msec(bare.link[1])} (at the fixed rate)"
        ),
        "",
        f"-- relaynet vs bare NATS over a {r.latency_ms:g} ms link, at {fixed.rate} msgs/s --",
        f"    {'path':<34} {'p50 ms':>8} {'p99 ms':>8} {'msgs/s':>9}",
        f"    {'bare NATS core, via the proxy':<34} {_f(bare.latency_ms[0])} "
        f"{_f(bare.latency_ms[1])} {bare.burst_per_s:>9,.0f}",
    ]
    for region in remote:
        fig, top = fixed.regions[region], burst.regions[region]
        lines.append(
            f"    {'relaynet ' + HOME + ' -> ' + region:<34} {_f(fig.latency_ms[0])} "
            f"{_f(fig.latency_ms[1])} {top.rate:>9,.0f}"
        )
    for region in remote:
        fig, top = fixed.regions[region], burst.regions[region]
        ratio = top.rate / bare.burst_per_s if bare.burst_per_s else math.nan
        lines.append(
            f"    {'difference, ' + region + ' - bare':<34} "
            f"{_f(fig.latency_ms[0] - bare.latency_ms[0])} "
            f"{_f(fig.latency_ms[1] - bare.latency_ms[1])} {ratio:>8.3f}x"
        )
    lines.append(
        "    (msgs/s: relaynet with 64 unacked publishes, stored and applied once per region; "
        f"bare: at most once, {BARE_WINDOW:,} in flight)"
    )
    lost = sum(f.lost for p in (fixed, burst) for f in p.regions.values())
    dups = sum(f.duplicates for p in (fixed, burst) for f in p.regions.values())
    lines += [
        "",
        "-- correctness --",
        f"lost                  {lost} (acked but not delivered in some region)",
        f"duplicates            {dups}",
        "per-origin order      "
        + (
            f"identical in all {len(REGIONS)} regions ({order.messages} messages on "
            f"{len(ALL_CHANNELS)} channels)"
            if order.same_everywhere
            else f"DIFFERS: {'; '.join(order.differences[:3])}"
        ),
        f"publisher order       {'kept' if order.publisher_order else 'NOT kept'} per channel; "
        f"ts gaps/repeats {order.seq_breaks}",
        "",
        "-- cost --",
        "peak RSS              "
        + ", ".join(
            f"{name} {'n/a' if kb is None else f'{kb / 1024:.0f} MiB'}"
            for name, kb in r.rss_kb.items()
        ),
        f"CPU in {r.wall_s:.1f} s       "
        + ", ".join(f"{name} {s:.1f} s" for name, s in r.cpu_s.items())
        + f" ({os.cpu_count()} cores)",
    ]
    lines += server_log_lines("server logs           ", r.problems)
    return "\n".join(lines)


def _failed(r: Report) -> list[str]:
    reasons = []
    for name, phase in (("latency", r.latency), ("throughput", r.throughput)):
        if not phase.acked:
            reasons.append(f"{name}: nothing acked")
        if phase.errors:
            reasons.append(f"{name}: {len(phase.errors)} publish errors")
        if phase.ended != "complete":
            reasons.append(f"{name}: drain {phase.ended}")
        if any(f.lost or f.duplicates for f in phase.regions.values()):
            reasons.append(f"{name}: lost or duplicated messages")
        if phase.disconnected:
            reasons.append(f"{name}: subscribers disconnected")
    if not (r.order.same_everywhere and r.order.publisher_order and not r.order.seq_breaks):
        reasons.append("order differs")
    return reasons


# --- entry point --------------------------------------------------------------------------


def _check_args(latency_ms: float, seconds: float, rate: int) -> str | None:
    if not (math.isfinite(latency_ms) and 0 <= latency_ms <= MAX_LATENCY_MS):
        return f"--latency-ms must be 0..{MAX_LATENCY_MS:g}"
    if not 0 < seconds <= MAX_SECONDS:
        return f"--seconds must be more than 0 and at most {MAX_SECONDS:g}"
    if not 0 <= rate <= MAX_RATE:
        return f"--rate must be 0 ({DEFAULT_RATE} msgs/s) .. {MAX_RATE}"
    return None


def _overall_cap(seconds: float, latency_ms: float) -> float:
    """Start-up and warm-up, three phases of publishing plus draining, and stopping."""
    phases = 4 * seconds + 2 * (_drain_cap(seconds) + 5) + 2 * DRAIN_CAP_S
    return 120 + WARMUP_TIMEOUT_S + phases + 20 * latency_ms / 1000


async def run_federation_bench(latency_ms: float, seconds: float, rate: int) -> int:
    """Run the federation benchmark and print its figures.

    Exit code 0; 1 if relaynet lost, duplicated, disordered or refused messages or a
    process failed; 2 for bad arguments. The bare NATS baseline may lose messages (it is
    at most once): that is not a failure."""
    problem = _check_args(latency_ms, seconds, rate)
    if problem:
        print(f"bench federation: {problem}", file=sys.stderr)
        return 2
    cap = _overall_cap(seconds, latency_ms)
    return await run_and_report(
        "federation",
        cap,
        lambda: _run(latency_ms, seconds, rate or DEFAULT_RATE),
        format_report,
        _failed,
    )
