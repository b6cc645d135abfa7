"""LinkProxy over real loopback sockets: pass-through, latency, throughput, partitions, EOF."""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.harness.linkproxy import LinkProxy, loopback_host, main
from relay.simulate.client import TIMEOUT_FACTOR

FACTOR = TIMEOUT_FACTOR  # the suite's one factor (RELAYNET_TEST_TIMEOUT_FACTOR)
PROMPT = 3.0 * FACTOR  # "at once": generous, only hit when something is broken
DEAD = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

Handler = Callable[[SocketStream], Awaitable[None]]


# -- servers and helpers -----------------------------------------------------------


class EchoServer:
    """Echoes everything, records what it got, echoes EOF; counts connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.ended = 0
        self.received = bytearray()

    async def __call__(self, stream: SocketStream) -> None:
        self.accepted += 1
        try:
            async with stream:
                async for chunk in stream:
                    self.received += chunk
                    await stream.send(chunk)
                await stream.send_eof()
        except DEAD:
            pass  # the proxy reset us: that is what some tests are about
        finally:
            self.ended += 1


async def digest_server(stream: SocketStream) -> None:
    """Reads to EOF, answers ``<length> <sha256>`` and closes."""
    h = hashlib.sha256()
    n = 0
    try:
        async with stream:
            async for chunk in stream:
                h.update(chunk)
                n += len(chunk)
            await stream.send(f"{n} {h.hexdigest()}".encode())
    except DEAD:
        pass


@asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[int]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        yield listener.extra(SocketAttribute.local_port)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def proxied(target_port: int, **kwargs: Any) -> AsyncIterator[LinkProxy]:
    proxy = LinkProxy("127.0.0.1", target_port, **kwargs)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        yield proxy
        tg.cancel_scope.cancel()


async def receive_exactly(stream: SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        buf += await stream.receive(n - len(buf))
    return bytes(buf)


async def ping(stream: SocketStream, payload: bytes = b"ping-0123456789") -> float:
    start = time.perf_counter()
    await stream.send(payload)
    assert await receive_exactly(stream, len(payload)) == payload
    return time.perf_counter() - start


async def expect_dead(stream: SocketStream) -> None:
    """The connection ends (reset or EOF) promptly, without delivering anything."""
    with anyio.fail_after(PROMPT), pytest.raises(DEAD):
        await stream.receive()


async def eventually(condition: Callable[[], bool], what: str) -> None:
    # Test-side polling only, bounded; the proxy itself never polls.
    for _ in range(int(PROMPT / 0.01)):
        if condition():
            return
        await anyio.sleep(0.01)
    assert condition(), f"timed out waiting: {what}"


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def exchange(stream: SocketStream, data: bytes, write_size: int) -> bytes:
    """Send ``data`` in pieces while reading the echo, so neither side blocks the other."""
    received = bytearray()

    async def reader() -> None:
        while len(received) < len(data):
            received.extend(await stream.receive())

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        for i in range(0, len(data), write_size):
            await stream.send(data[i : i + write_size])
    return bytes(received)


# -- pass-through and order ----------------------------------------------------------


@settings(max_examples=4, deadline=None)
@example(seed=1, size=3_000_000, write_size=65_537, latency_ms=2.0)
@example(seed=2, size=1, write_size=1, latency_ms=0.0)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 3_000_000),
    write_size=st.integers(1, 256 * 1024),
    latency_ms=st.sampled_from([0.0, 2.0]),
)
def test_bytes_pass_unchanged_both_ways(
    seed: int, size: int, write_size: int, latency_ms: float
) -> None:
    data = payload(seed, size)

    async def scenario() -> None:
        server = EchoServer()
        async with tcp_server(server) as port, proxied(port, latency_ms=latency_ms) as proxy:
            with anyio.fail_after(20 * FACTOR):
                async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
                    echoed = await exchange(stream, data, max(1, write_size))
                    await stream.send_eof()
                    with pytest.raises(anyio.EndOfStream):
                        await stream.receive()
        assert bytes(server.received) == data  # towards the target
        assert echoed == data  # and back
        assert proxy.stats.to_target.bytes_forwarded == size
        assert proxy.stats.to_client.bytes_forwarded == size

    anyio.run(scenario, backend="asyncio")


@pytest.mark.anyio
async def test_order_kept_over_many_small_writes_and_latency_changes() -> None:
    records = [f"{i:06d};".encode() for i in range(3000)]
    async with tcp_server(EchoServer()) as port, proxied(port, latency_ms=30) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
            received = bytearray()
            total = sum(map(len, records))

            async def reader() -> None:
                while len(received) < total:
                    received.extend(await stream.receive())

            with anyio.fail_after(20 * FACTOR):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(reader)
                    for i, record in enumerate(records):
                        # Lowering the latency while chunks still wait must not let
                        # later bytes overtake them.
                        if i == 1000:
                            proxy.set_latency(0)
                        elif i == 2000:
                            proxy.set_latency(15)
                        await stream.send(record)
                        if i % 100 == 0:
                            await anyio.sleep(0.001)
    assert bytes(received) == b"".join(records)


# -- latency and throughput ----------------------------------------------------------


def _summary(rtts: list[float]) -> str:
    ms = sorted(r * 1000 for r in rtts)
    return f"RTT p50 {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms over {len(ms)}"


@pytest.mark.anyio
async def test_latency_applies_each_way_and_set_latency_changes_it() -> None:
    async with tcp_server(EchoServer()) as port, proxied(port, latency_ms=50) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
            rtts = [await ping(stream) for _ in range(8)]
            measured = proxy.measured_latency_ms()
            note = f"{_summary(rtts)}; proxy measured one-way p50/p99 {measured}"
            print(f"50 ms one-way: {note}")
            assert min(rtts) >= 0.100 - 0.0005, note
            assert statistics.median(rtts) < 0.100 + 0.060 * FACTOR, note
            assert measured is not None
            assert 50.0 - 0.5 <= measured[0] < 50.0 + 30.0 * FACTOR, note

            proxy.set_latency(10)
            assert proxy.latency_ms == 10
            fast = [await ping(stream) for _ in range(8)]
            note = _summary(fast)
            print(f"10 ms one-way: {note}")
            assert min(fast) >= 0.020 - 0.0005, note
            assert statistics.median(fast) < 0.020 + 0.060 * FACTOR, note

    with pytest.raises(ValueError):
        proxy.set_latency(-1)
    with pytest.raises(ValueError):
        proxy.set_latency(float("nan"))


@pytest.mark.anyio
async def test_throughput_does_not_collapse_under_latency() -> None:
    data = payload(7, 8 * 1024 * 1024)
    async with tcp_server(digest_server) as port, proxied(port, latency_ms=50) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
            start = time.perf_counter()
            with anyio.fail_after(10 * FACTOR):
                await stream.send(data)
                await stream.send_eof()
                reply = await stream.receive()
            elapsed = time.perf_counter() - start
    print(f"8 MiB through a 50 ms link in {elapsed * 1000:.0f} ms")
    assert reply == f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
    # One chunk per latency would take minutes; a pipelined line takes ~0.1-0.3 s.
    assert elapsed < 2.0 * FACTOR, f"8 MiB took {elapsed:.2f} s"
    assert proxy.stats.to_target.peak_in_flight <= proxy.max_in_flight


@pytest.mark.anyio
async def test_bytes_in_flight_are_bounded_while_held() -> None:
    data = payload(11, 4 * 1024 * 1024)
    limit = 256 * 1024
    async with tcp_server(digest_server) as port, proxied(port, max_in_flight=limit) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
            await stream.send(b"!")  # the digest server only answers at EOF
            proxy.hold()
            async with anyio.create_task_group() as tg:

                async def sender() -> None:
                    await stream.send(data)
                    await stream.send_eof()

                tg.start_soon(sender)
                # The reader fills the delay line up to the bound, then stops reading.
                await eventually(lambda: proxy.stats.to_target.in_flight >= limit, "line full")
                assert proxy.stats.to_target.peak_in_flight == limit
                proxy.heal()
            with anyio.fail_after(10 * FACTOR):
                reply = await stream.receive()
    assert reply == f"{len(data) + 1} {hashlib.sha256(b'!' + data).hexdigest()}".encode()
    assert proxy.stats.to_target.peak_in_flight == limit


# -- partitions ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_cut_resets_open_connections_and_refuses_new_ones_until_healed() -> None:
    server = EchoServer()
    async with tcp_server(server) as port, proxied(port, latency_ms=5) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
            await ping(stream)
            proxy.cut()
            assert proxy.state == "cut"
            await expect_dead(stream)
            await eventually(lambda: server.ended == 1, "target side of the cut connection ends")
        assert proxy.stats.connections_reset == 1

        for _ in range(3):
            try:
                late = await anyio.connect_tcp("127.0.0.1", proxy.port)
            except OSError:
                continue  # refused outright is as good as reset at once
            async with late:
                await expect_dead(late)
        assert server.accepted == 1, "nothing may reach the target while cut"
        assert proxy.stats.connections_refused >= 1

        proxy.heal()
        assert proxy.state == "open"
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
            await ping(stream)
        assert server.accepted == 2


@pytest.mark.anyio
async def test_cut_under_load_resets_every_connection_and_frees_every_buffer() -> None:
    outcomes: list[str] = []

    async def client(stream: SocketStream) -> None:
        # Streams until the cut, so no connection can finish before it.
        async def drain() -> None:
            while True:
                await stream.receive()

        piece = payload(len(outcomes), 8_000)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain)
                while True:
                    await stream.send(piece)
        except* DEAD:
            outcomes.append("reset")

    async with tcp_server(EchoServer()) as port, proxied(port, latency_ms=20) as proxy:
        streams = [await anyio.connect_tcp("127.0.0.1", proxy.port) for _ in range(10)]
        try:
            with anyio.fail_after(10 * FACTOR):
                async with anyio.create_task_group() as tg:
                    for stream in streams:
                        tg.start_soon(client, stream)
                    await eventually(
                        lambda: (
                            proxy.stats.to_client.bytes_forwarded > 0
                            and proxy.stats.connections_active == 10
                        ),
                        "all connections carrying data",
                    )
                    proxy.cut()
        finally:
            for stream in streams:
                await stream.aclose()
        assert outcomes == ["reset"] * 10
        assert proxy.stats.connections_reset == 10
        assert proxy.stats.connections_active == 0
        assert proxy.stats.to_target.in_flight == proxy.stats.to_client.in_flight == 0


@pytest.mark.anyio
async def test_hold_delivers_nothing_then_everything_in_order_after_heal() -> None:
    server = EchoServer()
    async with tcp_server(server) as port, proxied(port, latency_ms=5) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
            await ping(stream, b"before")
            proxy.hold()
            assert proxy.state == "held"
            held = [f"held-{i};".encode() for i in range(50)]
            for piece in held:
                await stream.send(piece)
            # A connection opened during the hold is accepted but goes nowhere.
            late = await anyio.connect_tcp("127.0.0.1", proxy.port)
            async with late:
                await late.send(b"late-bytes")
                with anyio.move_on_after(0.3) as waited:
                    await stream.receive()
                assert waited.cancelled_caught, "bytes were delivered during hold"
                assert b"held" not in server.received
                assert server.accepted == 1

                proxy.heal()
                expected = b"".join(held)
                with anyio.fail_after(PROMPT):
                    assert await receive_exactly(stream, len(expected)) == expected
                    assert await receive_exactly(late, 10) == b"late-bytes"
            await ping(stream, b"after")  # the held connection is still open
    assert bytes(server.received).startswith(b"before" + expected)


# -- EOF, errors, shutdown -----------------------------------------------------------


@pytest.mark.anyio
async def test_eof_is_forwarded_each_way_after_the_delay() -> None:
    got_from_client = bytearray()
    done = anyio.Event()

    async def half_closing_server(stream: SocketStream) -> None:
        async with stream:
            await stream.send(b"hello")
            await stream.send_eof()  # we are done talking but keep listening
            async for chunk in stream:
                got_from_client.extend(chunk)
        done.set()

    async with tcp_server(half_closing_server) as port, proxied(port, latency_ms=20) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
            with anyio.fail_after(PROMPT):
                assert await receive_exactly(stream, 5) == b"hello"
                with pytest.raises(anyio.EndOfStream):
                    await stream.receive()
                # Half-closed, not closed: this direction still carries bytes.
                await stream.send(b"still-talking")
                await stream.send_eof()
                await done.wait()
        assert bytes(got_from_client) == b"still-talking"
        await eventually(lambda: proxy.stats.connections_active == 0, "pair closed")
        assert proxy.stats.connections_failed == 0


async def raw_connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    await anyio.wait_writable(sock)
    return sock


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.anyio
async def test_a_reset_on_one_connection_leaves_the_others_alone() -> None:
    server = EchoServer()
    async with tcp_server(server) as port, proxied(port, latency_ms=5) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as survivor:
            await ping(survivor)
            victim = await raw_connect(proxy.port)
            try:
                victim.send(b"x")
                await eventually(lambda: server.accepted == 2, "victim reaches the target")
            finally:
                reset(victim)
            await eventually(lambda: server.ended == 1, "reset passed on to the target")
            assert proxy.stats.connections_failed == 1
            await ping(survivor)


@pytest.mark.anyio
async def test_unreachable_target_closes_the_client_and_the_proxy_keeps_serving() -> None:
    # Bound but not listening: connecting is refused, and nobody else can take the port.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        async with proxied(placeholder.getsockname()[1]) as proxy:
            for _ in range(2):
                async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
                    await expect_dead(stream)
            await eventually(lambda: proxy.stats.connections_failed == 2, "both counted")


@pytest.mark.anyio
async def test_cancelling_run_closes_connections_and_the_listener() -> None:
    async with tcp_server(EchoServer()) as port:
        async with proxied(port) as proxy:
            stream = await anyio.connect_tcp("127.0.0.1", proxy.port)
            await ping(stream)
        async with stream:
            await expect_dead(stream)
        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", proxy.port)


# -- loopback only -------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        *["0.0.0.0", "10.0.0.1", "192.168.1.10", "8.8.8.8", "128.0.0.1"],
        *["::", "fe80::1", "::ffff:127.0.0.1"],
        *["example.com", "127.0.0.1.nip.io", "", "localhost."],
    ],
)
def test_non_loopback_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LinkProxy(host, 4222)
    with pytest.raises(ValueError, match="loopback"):
        LinkProxy("127.0.0.1", 4222, listen_host=host)


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.3.2.1", "127.3.2.1"),
        ("localhost", "127.0.0.1"),
        ("::1", "::1"),
    ],
)
def test_loopback_hosts_are_accepted(host: str, literal: str) -> None:
    assert loopback_host(host) == literal
    assert LinkProxy(host, 4222, listen_host=host).target_host == literal


def test_cli_refuses_non_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--listen", "127.0.0.1:0", "--target", "10.1.2.3:4222"]) == 2
    assert "loopback" in capsys.readouterr().err


# -- subprocess mode -----------------------------------------------------------------


@pytest.mark.anyio
async def test_subprocess_mode_forwards_is_controllable_and_exits_0_on_sigterm(
    tmp_path: Path,
) -> None:
    stderr_path = tmp_path / "linkproxy.stderr"
    async with tcp_server(EchoServer()) as port:
        cmd = [
            sys.executable,
            "-m",
            "relay.harness.linkproxy",
            "--listen",
            "127.0.0.1:0",
            "--target",
            f"127.0.0.1:{port}",
            "--latency-ms",
            "20",
            "--control",
        ]
        with stderr_path.open("wb") as stderr:
            process = await anyio.open_process(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
        try:
            assert process.stdout is not None and process.stdin is not None
            out = BufferedByteReceiveStream(process.stdout)

            async def reply(command: bytes) -> dict[str, Any]:
                assert process.stdin is not None
                await process.stdin.send(command + b"\n")
                result: dict[str, Any] = json.loads(await out.receive_until(b"\n", 65536))
                return result

            with anyio.fail_after(20 * FACTOR):
                ready = (await out.receive_until(b"\n", 4096)).decode()
                match = re.fullmatch(r"linkproxy ready on 127\.0\.0\.1:(\d+)", ready)
                assert match, ready
                async with await anyio.connect_tcp("127.0.0.1", int(match[1])) as stream:
                    rtt = await ping(stream)
                    assert rtt >= 0.040 - 0.0005
                    assert (await reply(b"hold"))["state"] == "held"
                    assert (await reply(b"heal"))["state"] == "open"
                    assert (await reply(b"latency 5"))["latency_ms"] == 5.0
                    assert (await reply(b"nonsense"))["ok"] is False
                    await ping(stream)
                stats = await reply(b"stats")
                assert stats["bytes_to_target"] == stats["bytes_to_client"] == 30
                assert stats["measured_p50_ms"] is not None

                process.send_signal(signal.SIGTERM)
                returncode = await process.wait()
            assert returncode == 0, stderr_path.read_text()
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()  # only the process this test started
                await process.aclose()
