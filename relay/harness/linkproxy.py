"""LinkProxy: a loopback TCP proxy that gives one inter-region link latency and partitions.

Theory of operation
-------------------
This kernel has no ``tc netem``, so latency and partitions between regions are
injected in user space: each directed inter-region link (one region's process
connecting to a peer region's NATS server) goes through one ``LinkProxy`` that
listens on loopback and forwards to the peer's loopback address.

Every accepted connection gets its own connection to the target and two
independent *delay lines*, one per direction. A delay line is a FIFO of chunks,
each stamped ``deadline = time read + latency in force when read``. A reader
task keeps reading the source socket into the FIFO while a writer task takes
chunks in order, sleeps until each one's deadline and writes it whole. Reading
never waits for writing, so a link carries a full window of data per latency
period rather than one chunk per latency. Chunks leave strictly in FIFO order:
when the latency is lowered, a new chunk whose deadline is earlier than the
one queued before it just leaves right after it, so bytes are never reordered.
The FIFO holds at most ``max_in_flight`` bytes; when it is full the reader
stops reading and TCP flow control pushes back on the sender, so memory stays
bounded however fast the sender is. EOF travels down the line like a chunk and
becomes ``shutdown(SHUT_WR)`` on the other side when its deadline comes; the
pair is closed once both directions have delivered their EOF. Each chunk's
time from read to written is sampled, so a status table can show the latency
asked for next to the latency measured (which grows when the event loop falls
behind); chunks that waited out a hold are not sampled.

Partitions come in two kinds. ``cut()`` is a partition the endpoints notice:
every connection is torn down with a TCP reset in both directions (undelivered
bytes are lost, as with a real RST), and connections that arrive while cut are
accepted and reset at once. ``hold()`` is a silent partition, the kind TCP
cannot see until something times out: connections stay open, writers stop
before their next write (readers keep filling the FIFOs up to the bound, then
the senders stall), and connections accepted while held do not reach the target
at all. ``heal()`` ends either; chunks held back leave at once, in order, since
their deadlines have passed.

The sockets are plain non-blocking sockets driven by ``anyio.wait_readable`` /
``wait_writable`` instead of anyio streams: a stream's close always sends FIN
first, while a cut must look like a reset (``SO_LINGER`` 0), and a half-close
must be a bare ``shutdown(SHUT_WR)``. Closing such a socket is synchronous and
never blocks, so cleanup on cancellation needs no awaiting and cannot hang.

A socket error on either side of one connection (reset, broken pipe) resets
both of its sockets at once and affects nothing else. The proxy refuses any
address outside loopback: it is a test and demo tool and must never relay
traffic anywhere else.

Control methods (``set_latency``, ``cut``, ``hold``, ``heal``) must be called
from the thread running the event loop (``anyio.from_thread.run_sync``
otherwise). As a subprocess (``python -m relay.harness.linkproxy``) it can be
controlled with one-line commands on stdin when started with ``--control``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import struct
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import anyio
import anyio.abc

log = logging.getLogger("relaynet.linkproxy")  # not "__main__" under -m

State = Literal["open", "cut", "held"]

_CHUNK = 64 * 1024
DEFAULT_MAX_IN_FLIGHT = 16 * 1024 * 1024
# A loopback connect succeeds or is refused at once; this only bounds a target
# whose accept backlog is full.
_CONNECT_TIMEOUT = 10.0
# Resource exhaustion (EMFILE) keeps the listener readable; without a pause the
# accept loop would spin on it. This is the only wait that is not a delay.
_ACCEPT_BACKOFF = 0.1
_ACCEPT_BATCH = 64
_SAMPLES = 1024
_CONTROL_LINE_MAX = 4096


def loopback_host(host: str) -> str:
    """The address literal to use for ``host``; ValueError unless it is loopback.

    Only 127.0.0.0/8, ``::1`` and ``localhost`` are accepted. ``localhost`` is
    mapped to 127.0.0.1 here rather than resolved, so a hosts file cannot point
    the proxy elsewhere.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"linkproxy only works on loopback, not {host!r}") from None
    if isinstance(addr, ipaddress.IPv4Address) and addr in ipaddress.ip_network("127.0.0.0/8"):
        return str(addr)
    if addr == ipaddress.IPv6Address("::1"):
        return "::1"
    raise ValueError(f"linkproxy only works on loopback, not {host!r}")


def _check_latency(ms: float) -> float:
    ms = float(ms)
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"latency must be a finite number of ms >= 0, not {ms!r}")
    return ms


def _percentiles(samples: Sequence[float]) -> tuple[float, float] | None:
    if not samples:
        return None
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return rank(0.50), rank(0.99)


@dataclass
class DirectionStats:
    """One direction of the link, summed over its connections."""

    bytes_forwarded: int = 0
    chunks_forwarded: int = 0
    # Bytes read but not yet written, over all connections, and its high-water mark.
    in_flight: int = 0
    peak_in_flight: int = 0
    # One-way delay (ms) per chunk from read to written; chunks delayed by hold()
    # are left out so the figure stays a latency, not a partition's length.
    delays_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))

    def measured_latency_ms(self) -> tuple[float, float] | None:
        """(p50, p99) of recent one-way delays, or None before any chunk went through."""
        return _percentiles(self.delays_ms)


@dataclass
class LinkStats:
    to_target: DirectionStats = field(default_factory=DirectionStats)
    to_client: DirectionStats = field(default_factory=DirectionStats)
    connections_accepted: int = 0
    connections_active: int = 0
    connections_refused: int = 0  # accepted while cut and reset at once
    connections_reset: int = 0  # torn down by cut()
    connections_failed: int = 0  # target unreachable, or a socket error on either side

    def measured_latency_ms(self) -> tuple[float, float] | None:
        """(p50, p99) of recent one-way delays over both directions."""
        return _percentiles([*self.to_target.delays_ms, *self.to_client.delays_ms])


@dataclass(slots=True)
class _Chunk:
    data: bytes  # empty for EOF
    read_at: float
    deadline: float


class _DelayLine:
    """FIFO of chunks between one reader and one writer task, bounded in bytes."""

    def __init__(self, max_bytes: int, stats: DirectionStats) -> None:
        self._chunks: deque[_Chunk] = deque()
        self._bytes = 0
        self._max = max_bytes
        self._stats = stats
        # One-shot events, replaced before each wait: there is exactly one
        # waiter per event (the writer for _nonempty, the reader for _room).
        self._nonempty: anyio.Event | None = None
        self._room: anyio.Event | None = None

    async def room(self) -> int:
        while self._bytes >= self._max:
            self._room = anyio.Event()
            await self._room.wait()
        return self._max - self._bytes

    def put(self, chunk: _Chunk) -> None:
        self._chunks.append(chunk)
        n = len(chunk.data)
        self._bytes += n
        self._stats.in_flight += n
        self._stats.peak_in_flight = max(self._stats.peak_in_flight, self._stats.in_flight)
        if self._nonempty is not None:
            self._nonempty.set()

    async def get(self) -> _Chunk:
        while not self._chunks:
            self._nonempty = anyio.Event()
            await self._nonempty.wait()
        return self._chunks[0]

    def done(self) -> None:
        """Drop the chunk ``get`` returned, now that it is written."""
        n = len(self._chunks.popleft().data)
        self._bytes -= n
        self._stats.in_flight -= n
        if self._room is not None and self._bytes < self._max:
            self._room.set()

    def discard(self) -> None:
        self._stats.in_flight -= self._bytes
        self._bytes = 0
        self._chunks.clear()


def _abort(sock: socket.socket | None) -> None:
    """Close with a reset instead of FIN, so the peer sees the connection break."""
    if sock is None or sock.fileno() < 0:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _ConnectionBroken(Exception):
    """A socket error on one side; the whole connection is reset."""


class _Connection:
    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.target: socket.socket | None = None
        self.scope = anyio.CancelScope()
        self.cut = False


class LinkProxy:
    """A TCP proxy for one directed link, adding one-way latency and partitions.

    ``run()`` serves until cancelled. ``port`` is the listening port once
    started. See the module docstring for how it works.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        latency_ms: float = 0.0,
        name: str = "",
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.target_host = loopback_host(target_host)
        self.listen_host = loopback_host(listen_host)
        if not 0 < target_port < 65536:
            raise ValueError(f"target port out of range: {target_port}")
        if not 0 <= listen_port < 65536:
            raise ValueError(f"listen port out of range: {listen_port}")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1 byte")
        self.target_port = target_port
        self.port = listen_port
        self.name = name or f"link->{target_host}:{target_port}"
        self.max_in_flight = max_in_flight
        self.stats = LinkStats()
        self._latency = _check_latency(latency_ms) / 1000.0
        self._state: State = "open"
        self._unheld: anyio.Event | None = None
        self._connections: set[_Connection] = set()
        self._running = False

    # -- control -----------------------------------------------------------

    @property
    def state(self) -> str:
        """``"open"``, ``"cut"`` or ``"held"``."""
        return self._state

    @property
    def latency_ms(self) -> float:
        """The one-way latency requested for bytes read from now on."""
        return self._latency * 1000.0

    def set_latency(self, ms: float) -> None:
        """Give bytes read from now on ``ms`` of one-way delay; queued bytes keep theirs."""
        self._latency = _check_latency(ms) / 1000.0
        log.info("%s: latency %.1f ms", self.name, ms)

    def cut(self) -> None:
        """Reset every open connection and reset new ones until ``heal()``."""
        self._state = "cut"
        self._release_held()  # their connections are cancelled just below
        for conn in self._connections:
            conn.cut = True
            conn.scope.cancel()
        log.info("%s: cut (%d connections reset)", self.name, len(self._connections))

    def hold(self) -> None:
        """Stop delivering anything, silently, until ``heal()``; connections stay open."""
        self._state = "held"
        log.info("%s: held", self.name)

    def heal(self) -> None:
        """End a cut or a hold: held bytes go out in order, new connections work."""
        self._state = "open"
        self._release_held()
        log.info("%s: healed", self.name)

    def measured_latency_ms(self) -> tuple[float, float] | None:
        """(p50, p99) of recent measured one-way delays over both directions."""
        return self.stats.measured_latency_ms()

    def snapshot(self) -> dict[str, object]:
        """Requested vs measured figures, for a status table (JSON-serialisable)."""
        measured = self.stats.measured_latency_ms()
        s = self.stats
        return {
            "name": self.name,
            "listen": f"{self.listen_host}:{self.port}",
            "target": f"{self.target_host}:{self.target_port}",
            "state": self._state,
            "latency_ms": self.latency_ms,
            "measured_p50_ms": None if measured is None else round(measured[0], 2),
            "measured_p99_ms": None if measured is None else round(measured[1], 2),
            "bytes_to_target": s.to_target.bytes_forwarded,
            "bytes_to_client": s.to_client.bytes_forwarded,
            "connections_accepted": s.connections_accepted,
            "connections_active": s.connections_active,
            "connections_refused": s.connections_refused,
            "connections_reset": s.connections_reset,
            "connections_failed": s.connections_failed,
        }

    def _release_held(self) -> None:
        if self._unheld is not None:
            self._unheld.set()
            self._unheld = None

    async def _until_not_held(self) -> bool:
        """Wait while held; True if it had to wait."""
        waited = False
        while self._state == "held":
            waited = True
            if self._unheld is None:
                self._unheld = anyio.Event()
            await self._unheld.wait()
        return waited

    # -- serving -----------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, report the port through ``task_status``, serve until cancelled.

        On the way out every connection is reset (bytes still in a delay line are
        lost, and the peers should know it) and the listener is closed.
        """
        if self._running:
            raise RuntimeError(f"{self.name} is already running")
        self._running = True
        listener = socket.socket(_family(self.listen_host), socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.listen_host, self.port))
            listener.listen(128)
            listener.setblocking(False)
            self.port = listener.getsockname()[1]
            log.info(
                "%s: %s:%d -> %s:%d, %.1f ms",
                self.name,
                self.listen_host,
                self.port,
                self.target_host,
                self.target_port,
                self.latency_ms,
            )
            async with anyio.create_task_group() as tg:
                task_status.started(self.port)
                await self._accept_loop(listener, tg)
        finally:
            listener.close()
            self._running = False

    async def _accept_loop(self, listener: socket.socket, tg: anyio.abc.TaskGroup) -> None:
        while True:
            await anyio.wait_readable(listener)
            # Drain the backlog per wakeup: one accept per loop iteration falls
            # far behind a burst of connects while other connections are busy.
            for _ in range(_ACCEPT_BATCH):
                try:
                    client, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    log.warning("%s: accept failed: %s", self.name, exc)
                    await anyio.sleep(_ACCEPT_BACKOFF)
                    break
                self._admit(client, tg)

    def _admit(self, client: socket.socket, tg: anyio.abc.TaskGroup) -> None:
        self.stats.connections_accepted += 1
        if self._state == "cut":
            self.stats.connections_refused += 1
            _abort(client)
            return
        client.setblocking(False)
        # Fails only if the client is already gone; its pump will notice.
        with contextlib.suppress(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(client)
        self._connections.add(conn)
        tg.start_soon(self._serve, conn)

    async def _serve(self, conn: _Connection) -> None:
        self.stats.connections_active += 1
        clean = False
        try:
            with conn.scope:
                # A silent partition must not even let the connect through.
                await self._until_not_held()
                try:
                    conn.target = await self._connect_target()
                except OSError as exc:
                    self.stats.connections_failed += 1
                    log.info("%s: target unreachable: %s", self.name, exc)
                    return
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._pump, conn.client, conn.target, self.stats.to_target)
                        tg.start_soon(self._pump, conn.target, conn.client, self.stats.to_client)
                    clean = True
                except* (_ConnectionBroken, OSError) as group:
                    self.stats.connections_failed += 1
                    log.info("%s: connection broken: %s", self.name, group.exceptions[0])
        finally:
            self._connections.discard(conn)
            self.stats.connections_active -= 1
            if conn.cut:
                self.stats.connections_reset += 1
            if clean:
                conn.client.close()
                if conn.target is not None:
                    conn.target.close()
            else:
                _abort(conn.client)
                _abort(conn.target)

    async def _connect_target(self) -> socket.socket:
        sock = socket.socket(_family(self.target_host), socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            err = sock.connect_ex((self.target_host, self.target_port))
            if err == errno.EINPROGRESS:
                with anyio.fail_after(_CONNECT_TIMEOUT):
                    await anyio.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError as exc:
            sock.close()
            raise OSError(errno.ETIMEDOUT, "connect timed out") from exc
        except BaseException:
            sock.close()
            raise
        return sock

    async def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        stats: DirectionStats,
    ) -> None:
        line = _DelayLine(self.max_in_flight, stats)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_into, src, line)
                await self._write_from(line, dst, stats)
        finally:
            line.discard()

    async def _read_into(self, src: socket.socket, line: _DelayLine) -> None:
        while True:
            room = await line.room()
            await anyio.wait_readable(src)
            try:
                data = src.recv(min(_CHUNK, room))
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise _ConnectionBroken(str(exc)) from exc
            now = anyio.current_time()
            line.put(_Chunk(data, now, now + self._latency))
            if not data:
                return

    async def _write_from(
        self, line: _DelayLine, dst: socket.socket, stats: DirectionStats
    ) -> None:
        while True:
            chunk = await line.get()
            await anyio.sleep_until(chunk.deadline)
            held = await self._until_not_held()
            try:
                if not chunk.data:
                    dst.shutdown(socket.SHUT_WR)
                    line.done()
                    return
                held |= await self._send_all(dst, chunk.data)
            except OSError as exc:
                raise _ConnectionBroken(str(exc)) from exc
            line.done()
            stats.bytes_forwarded += len(chunk.data)
            stats.chunks_forwarded += 1
            if not held:
                stats.delays_ms.append((anyio.current_time() - chunk.read_at) * 1000.0)

    async def _send_all(self, dst: socket.socket, data: bytes) -> bool:
        """Write all of ``data``; True if a hold interrupted it."""
        held = False
        view = memoryview(data)
        while view:
            # A hold can start while a slow receiver makes us wait for buffer space.
            held |= await self._until_not_held()
            try:
                sent = dst.send(view)
            except (BlockingIOError, InterruptedError):
                await anyio.wait_writable(dst)
                continue
            view = view[sent:]
        return held


# -- subprocess mode -----------------------------------------------------------


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    host = host.removeprefix("[").removesuffix("]")
    return host, int(port)


def _format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def apply_command(proxy: LinkProxy, line: str) -> dict[str, object]:
    """Run one control command (``latency MS``, ``cut``, ``hold``, ``heal``, ``stats``)."""
    words = line.split()
    try:
        match words:
            case ["latency", ms]:
                proxy.set_latency(float(ms))
            case ["cut"]:
                proxy.cut()
            case ["hold"]:
                proxy.hold()
            case ["heal"]:
                proxy.heal()
            case ["stats"]:
                pass
            case _:
                return {"ok": False, "error": f"unknown command {line.strip()!r}"}
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, **proxy.snapshot()}


async def _control_from_stdin(proxy: LinkProxy) -> None:
    fd = sys.stdin.fileno()
    pending = b""
    while True:
        try:
            await anyio.wait_readable(fd)
        except OSError as exc:
            # epoll refuses regular files and /dev/null: no control then.
            log.warning("%s: stdin cannot be watched (%s); no runtime control", proxy.name, exc)
            return
        data = os.read(fd, _CONTROL_LINE_MAX)
        if not data:
            return  # stdin closed: keep serving, just without control
        pending += data
        while b"\n" in pending:
            raw, _, pending = pending.partition(b"\n")
            if raw.strip():
                reply = apply_command(proxy, raw.decode(errors="replace"))
                print(json.dumps(reply), flush=True)
        if len(pending) > _CONTROL_LINE_MAX:
            pending = b""


async def _serve_until_signalled(proxy: LinkProxy, control: bool) -> None:
    # Signals are caught before the ready line goes out, so a parent that sends
    # SIGTERM right after reading it still gets a clean exit.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            port = await tg.start(proxy.run)
            print(f"linkproxy ready on {_format_hostport(proxy.listen_host, port)}", flush=True)
            if control:
                tg.start_soon(_control_from_stdin, proxy)
            async for signum in signals:
                log.info("%s: signal %d, stopping", proxy.name, signum)
                break
            tg.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relay.harness.linkproxy",
        description="Loopback TCP proxy adding one-way latency and partitions to one link.",
    )
    parser.add_argument("--listen", type=_parse_hostport, default=("127.0.0.1", 0))
    parser.add_argument("--target", type=_parse_hostport, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--name", default="")
    parser.add_argument(
        "--control",
        action="store_true",
        help="read commands from stdin: 'latency MS', 'cut', 'hold', 'heal', 'stats'; "
        "each gets one JSON line on stdout",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        proxy = LinkProxy(
            args.target[0],
            args.target[1],
            listen_host=args.listen[0],
            listen_port=args.listen[1],
            latency_ms=args.latency_ms,
            name=args.name,
        )
    except ValueError as exc:
        print(f"linkproxy: {exc}", file=sys.stderr)
        return 2
    status = 0
    try:
        anyio.run(_serve_until_signalled, proxy, args.control)
    except* OSError as group:  # cannot listen (port taken) or no such address
        print(f"linkproxy: {group.exceptions[0]}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
