"""``relaynet bench fuzz``: hostile frames at a live relay while a good client goes on.

Theory of operation
-------------------
One region on this machine: a nats-server and one relay, as processes
(``relay.harness.network``), the relay with its default limits. Then, at once:

* ``connections`` hostile WebSocket clients share the seeded frames of
  ``relay.bench.fuzz_frames`` (each takes every ``connections``-th one), send
  them as fast as the relay takes them and read everything it answers. When
  the relay closes one (too many bad frames: 4500, a frame over the limit:
  1009, ...) it notes the close code and connects again, now and then with a
  garbage ``?token=``, and goes on with its next frame.
* one well-behaved SDK client (``relay.client``) subscribed to a channel of its
  own publishes to it, one after another, until the hostile clients are done.

Then the good client must have received every publish it got an ack for,
exactly once and in the order sent (a direct comparison: it is the only
publisher of its channel), and every publish must have been acked; the relay
must still be running and answer ``/v1/health`` with 200; its peak RSS (VmHWM)
must be under ``RSS_BOUND_BYTES``; every close must be one of the documented
codes (``DOCUMENTED_CLOSES``); and the relay's log must hold no ``Traceback``.
A failure prints the seed; ``--seed`` replays the same frames in the same order
per connection (the interleaving across connections is the scheduler's).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from relay.bench.fuzz_frames import KINDS, FuzzFrame, generate
from relay.bench.report import BenchError, run_and_report
from relay.client import ClientError, Subscription
from relay.client import connect as sdk_connect
from relay.client.http import HttpError, http_get
from relay.harness.network import Network, ProcessRelay
from relay.harness.toolkit import peak_rss_kb, rss_kb

REGION: Final = "fuzz"
GOOD_CHANNEL: Final = "good:steady"
# The relay's peak RSS (VmHWM) must stay below this. A relay idles near 60 MiB here; the
# fuzz run's largest frames are 1 MiB each, and every connection's outbox is bounded at
# 4 MiB (limits.outbox_max_bytes), so a relay that holds what it should stays far below.
RSS_BOUND_BYTES: Final = 256 * 1024 * 1024
#: Close codes the relay may end a hostile connection with (relay/PROTOCOL.md).
DOCUMENTED_CLOSES: Final = {
    1000: "normal",
    1009: "frame above limits.max_frame_bytes",
    1013: "try again later",
    4000: "slow consumer",
    4500: "too many bad frames",
    4501: "unauthorized",
}
CONVERGE_S: Final = 30.0  # for the good client's last messages after the hostile ones
START_TIMEOUT_S: Final = 30.0
GOOD_PUBLISH_GAP_S: Final = 0.005
SYNC_EVERY: Final = 8  # hostile frames between two pings that wait for their pong


@dataclass
class HostileStats:
    sent: Counter[str] = field(default_factory=Counter)  # by kind
    replies: Counter[str] = field(default_factory=Counter)  # by op; errors by "error:<code>"
    closes: Counter[int] = field(default_factory=Counter)
    undocumented: list[str] = field(default_factory=list)
    connects: int = 0
    refused_connects: list[str] = field(default_factory=list)
    stalls: list[str] = field(default_factory=list)


@dataclass
class GoodClient:
    sent: list[str] = field(default_factory=list)  # its numbers, in publish order
    acked: list[str] = field(default_factory=list)  # ids, in publish order
    refused: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    ended: str | None = None
    # Set once ``expected`` (the acked count at the end, till then unreachable) came in.
    expected: int = sys.maxsize
    all_received: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class FuzzReport:
    seed: int
    frames: int
    connections: int
    hostile: HostileStats
    good: GoodClient
    seconds: float = 0.0
    relay_alive: bool = True
    health: str = ""
    rss_peak_bytes: int | None = None
    rss_start_bytes: int | None = None
    tracebacks: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every way the run failed; empty when it passed."""
        found: list[str] = []
        good = self.good
        counts = Counter(good.received)
        if duplicates := sorted(i for i, n in counts.items() if n > 1):
            found.append(f"good client got {len(duplicates)} messages twice: {duplicates[:5]}")
        acked = set(good.acked)
        if lost := [i for i in good.acked if i not in counts]:
            found.append(f"good client lost {len(lost)} acked messages: {lost[:5]}")
        ordered = [i for i in good.received if i in acked]
        if not lost and not duplicates and ordered != good.acked:
            found.append("good client got its messages out of the order it published them")
        if good.refused:
            found.append(f"{len(good.refused)} good publishes refused: {good.refused[:3]}")
        if unknown := [i for i in counts if i not in acked]:
            found.append(f"good client got {len(unknown)} messages it never had acked")
        if not good.acked:
            found.append("the good client got no publish acked")
        if good.ended:
            found.append(f"the good client's subscription ended: {good.ended}")
        if not self.relay_alive:
            found.append("the relay died")
        elif self.health != "200":
            found.append(f"/v1/health answered {self.health}")
        if self.rss_peak_bytes is None or self.rss_peak_bytes >= RSS_BOUND_BYTES:
            found.append(
                f"relay peak RSS {_mib(self.rss_peak_bytes)} (bound {_mib(RSS_BOUND_BYTES)})"
            )
        if self.hostile.stalls:
            found.append(f"the relay stopped answering a connection: {self.hostile.stalls[:3]}")
        if self.hostile.undocumented:
            found.append(f"undocumented closes: {self.hostile.undocumented[:5]}")
        if self.tracebacks:
            found.append(f"{len(self.tracebacks)} tracebacks in the relay's log")
        if sum(self.hostile.sent.values()) != self.frames:
            found.append(f"only {sum(self.hostile.sent.values())} of {self.frames} frames sent")
        return found


def _mib(value: int | None) -> str:
    return "unknown" if value is None else f"{value / 2**20:.0f} MiB"


def replay_command(seed: int, frames: int) -> str:
    return f"relaynet bench fuzz --frames {frames} --seed {seed}"


# --- the hostile side --------------------------------------------------------------------


async def _hostile(
    url: str, frames: Sequence[FuzzFrame], stats: HostileStats, rng_seed: str
) -> None:
    """Send ``frames`` in order over as many connections as the relay makes it take."""
    rng = random.Random(rng_seed)
    next_frame = 0
    refused_in_a_row = 0
    while next_frame < len(frames):
        target = url
        if rng.random() < 0.1:  # the token parameter is hostile input too
            target += "?token=" + rng.choice(("", "a.b.c", "%00", "x" * 2000, "%E2%28%A1"))
        stats.connects += 1
        try:
            async with ws_connect(
                target, max_size=None, open_timeout=START_TIMEOUT_S, close_timeout=5
            ) as ws:
                refused_in_a_row = 0
                sync = _Sync()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_read_replies, ws, stats, sync)
                    try:
                        while next_frame < len(frames):
                            frame = frames[next_frame]
                            next_frame += 1  # a frame that costs the connection is not resent
                            stats.sent[frame.kind] += 1
                            await ws.send(frame.payload)
                            # Else frames pile up unread in the socket and are thrown away
                            # when the relay closes the connection.
                            due = next_frame % SYNC_EVERY == 0 or next_frame == len(frames)
                            if due and not await sync.ping(ws):
                                stats.stalls.append(
                                    f"no pong {CONVERGE_S:.0f} s after frame {next_frame}"
                                )
                                break
                        await ws.close()
                    except ConnectionClosed:
                        pass  # the reader notes the code, and ends too
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            stats.refused_connects.append(repr(exc))
            refused_in_a_row += 1
            if refused_in_a_row >= 5:
                raise BenchError(f"the relay refused 5 connections in a row: {exc!r}") from None
            await anyio.sleep(0.2)


class _Sync:
    """A ping with a ref of its own, answered (or the connection gone)."""

    def __init__(self) -> None:
        self.count = 0
        self.closed = False
        self.answered = anyio.Event()

    async def ping(self, ws: Any) -> bool:
        """False if the pong did not come in ``CONVERGE_S``."""
        self.count += 1
        self.answered = anyio.Event()
        await ws.send(json.dumps({"op": "ping", "ref": f"sync-{self.count}"}))
        with anyio.move_on_after(CONVERGE_S):
            if not self.closed:
                await self.answered.wait()
            return True
        return False

    def pong(self, ref: object) -> None:
        if ref == f"sync-{self.count}":
            self.answered.set()

    def gone(self) -> None:
        self.closed = True
        self.answered.set()


async def _read_replies(ws: Any, stats: HostileStats, sync: _Sync) -> None:
    try:
        async for raw in ws:
            try:
                frame = json.loads(raw)
            except ValueError:
                stats.replies["not json!"] += 1
                continue
            op = frame.get("op") if isinstance(frame, dict) else None
            if op == "error":
                stats.replies[f"error:{frame.get('code')}"] += 1
            elif op == "pong" and str(frame.get("ref")).startswith("sync-"):
                sync.pong(frame.get("ref"))
            else:
                stats.replies[str(op)] += 1
    except ConnectionClosed:
        pass
    finally:
        sync.gone()
    code = ws.close_code  # the relay's, or ours echoed; 1006: no close frame at all
    stats.closes[code] += 1
    if code not in DOCUMENTED_CLOSES:
        stats.undocumented.append(f"{code} {ws.close_reason!r}")


# --- the well-behaved side ---------------------------------------------------------------


async def _good(url: str, good: GoodClient, subscribed: anyio.Event, stop: anyio.Event) -> None:
    async with sdk_connect([url], timeout_s=START_TIMEOUT_S) as client:
        sub = await client.subscribe(GOOD_CHANNEL, position={})
        subscribed.set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_consume, sub, good)
            n = 0
            while not stop.is_set():
                n += 1
                good.sent.append(str(n))
                try:
                    ack = await client.publish(GOOD_CHANNEL, {"n": n})
                    good.acked.append(ack.id)
                except ClientError as exc:
                    good.refused.append(f"publish {n}: {exc!r}")
                await anyio.sleep(GOOD_PUBLISH_GAP_S)
            good.expected = len(good.acked)
            if len(good.received) >= good.expected:
                good.all_received.set()
            with anyio.move_on_after(CONVERGE_S):
                await good.all_received.wait()
            tg.cancel_scope.cancel()


async def _consume(sub: Subscription, good: GoodClient) -> None:
    try:
        async for message in sub:
            good.received.append(message.id)
            if len(good.received) >= good.expected:
                good.all_received.set()
    except ClientError as exc:
        good.ended = repr(exc)
    else:
        good.ended = "the subscription ended"
    good.all_received.set()  # nothing more will come


# --- the run -----------------------------------------------------------------------------


async def fuzz_relay(
    relay: ProcessRelay, frames: Sequence[FuzzFrame], seed: int, connections: int
) -> FuzzReport:
    """Fuzz a running relay process (one region, its own nats-server)."""
    pid = relay.pid
    assert pid is not None
    report = FuzzReport(seed, len(frames), connections, HostileStats(), GoodClient())
    started = time.monotonic()
    start_kb = rss_kb(pid)
    report.rss_start_bytes = None if start_kb is None else start_kb * 1024
    subscribed, stop = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_good, relay.url, report.good, subscribed, stop)
        with anyio.fail_after(START_TIMEOUT_S):
            await subscribed.wait()
        async with anyio.create_task_group() as hostile:
            for i in range(connections):
                # Contiguous shares: a subscribe and its unsubscribe go the same way.
                share = frames[
                    i * len(frames) // connections : (i + 1) * len(frames) // connections
                ]
                hostile.start_soon(_hostile, relay.url, share, report.hostile, f"{seed}-{i}")
        stop.set()
    report.seconds = time.monotonic() - started
    peak = peak_rss_kb(pid)
    report.rss_peak_bytes = None if peak is None else peak * 1024
    report.relay_alive = relay.alive
    if report.relay_alive:
        health_url = relay.url.replace("ws://", "http://").replace("/v1/ws", "/v1/health")
        try:
            status, _, _ = await http_get(health_url, timeout_s=10)
            report.health = str(status)
        except (OSError, TimeoutError, HttpError, anyio.BrokenResourceError) as exc:
            report.health = repr(exc)
    for log in relay.logs:
        with contextlib.suppress(OSError):
            text = log.read_text(errors="replace")
            report.tracebacks += [
                f"{log.name}: {line}" for line in text.splitlines() if "Traceback" in line
            ]
    return report


async def fuzz_network(
    frames: int, seed: int, connections: int = 4, keep: bool = False
) -> FuzzReport:
    """Start a nats-server and a relay, fuzz the relay, stop both."""
    workdir = Path(tempfile.mkdtemp(prefix="relaynet-fuzz-"))
    try:
        planned = generate(seed, frames)
        async with Network([REGION], workdir, relays=1, links=False, name="fuzz") as net:
            relay = net.relay(f"{REGION}-1")
            assert isinstance(relay, ProcessRelay)
            report = await fuzz_relay(relay, planned, seed, connections)
        return report
    finally:
        if keep:
            print(f"bench fuzz: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def format_report(report: FuzzReport) -> str:
    hostile, good = report.hostile, report.good
    kinds = ", ".join(f"{kind} {hostile.sent[kind]}" for kind in KINDS if hostile.sent[kind])
    replies = ", ".join(f"{op} {n}" for op, n in hostile.replies.most_common())
    closes = ", ".join(
        f"{code} ({DOCUMENTED_CLOSES.get(code, 'UNDOCUMENTED')}) x{n}"
        for code, n in sorted(hostile.closes.items())
    )
    lines = [
        f"bench fuzz: seed {report.seed}, {sum(hostile.sent.values())} of {report.frames} "
        f"hostile frames over {report.connections} connections ({hostile.connects} connects) "
        f"in {report.seconds:.1f} s",
        f"  frames:  {kinds}",
        f"  replies: {replies}",
        f"  closes:  {closes}",
        f"  good client: {len(good.sent)} published, {len(good.acked)} acked, "
        f"{len(good.received)} received",
        f"  relay: {'alive' if report.relay_alive else 'DEAD'}, /v1/health {report.health}, "
        f"RSS {_mib(report.rss_start_bytes)} at start, peak {_mib(report.rss_peak_bytes)} "
        f"(bound {_mib(RSS_BOUND_BYTES)}), {len(report.tracebacks)} tracebacks in its log",
    ]
    problems = report.problems()
    lines.append(
        "  OK" if not problems else f"  replay: {replay_command(report.seed, report.frames)}"
    )
    return "\n".join(lines)


async def run_fuzz(frames: int, seed: int | None, connections: int = 4, keep: bool = False) -> int:
    """The fuzz run; exit code 0, 1 on a failure, 2 for bad arguments."""
    if not 1 <= frames <= 10_000_000 or not 1 <= connections <= 64:
        print("bench fuzz: --frames 1 to 10,000,000, --connections 1 to 64", file=sys.stderr)
        return 2
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    print(f"bench fuzz: seed {seed} (replay: {replay_command(seed, frames)})", flush=True)
    cap = 120 + frames / 50  # generous: a loaded machine is not a failure
    return await run_and_report(
        "fuzz",
        cap,
        lambda: fuzz_network(frames, seed, connections, keep),
        format_report,
        FuzzReport.problems,
    )
