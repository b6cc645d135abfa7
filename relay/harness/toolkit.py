"""The processes a tool starts, and what they cost: the one toolkit of demo, simulate,
benchmarks and tests.

Theory of operation
-------------------
A server (a relay, a nats-server, a server under test) runs as a subprocess in
its own session, with ``PR_SET_PDEATHSIG`` (``relay.adapters.child_process``), so
that Ctrl-C reaches only the tool (which then stops the server in order) and a
tool killed with SIGKILL leaves nothing running. A relay says it is ready with
a ``ready on ws://...`` line on stdout; whatever it started by then (its
embedded nats-server) counts as part of it for CPU and memory, read from
``/proc``. Stopping is SIGTERM,
a grace period, then SIGKILL, and a pid is only signalled while its start time
still matches, so a reused pid is never hit.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import json
import math
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from relay.adapters import child_process
from relay.adapters.embedded_nats import (
    RELAY_USER,
    EmbeddedNatsError,
    NatsCredentials,
    auth_dir,
    ensure_passwords,
    nats_server_argv,
    nats_url_from_ports_file,
    password_file,
    read_password_file,
    server_config,
)
from relay.config.schema import RelayConfig
from relay.config.writer import write_config

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0  # the relay drains clients, then NATS, then stops nats-server
READY_RE = re.compile(r"ready on (ws://\S+)")
PROBLEM_RE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|\[(WRN|ERR|FTL)\]|Traceback")

clock = time.perf_counter


class HarnessError(RuntimeError):
    """A tool could not run: a server did not start, a handshake failed."""


async def poll_until(
    done: Callable[[], bool | Awaitable[bool]], deadline: float, interval: float = 0.02
) -> bool:
    """For states without an event to wait on: counters, another process's exit, an HTTP
    endpoint. True as soon as ``done()`` is; False if it is not by ``deadline`` (a
    ``clock()`` time). ``done`` may be a coroutine function; a call of it still running at
    the deadline is cancelled."""
    with anyio.move_on_after(deadline - clock()):
        while True:
            if await _holds(done):
                return True
            await anyio.sleep(interval)  # the poll interval, not a wait for anything
    # One last look, for a state reached during the last interval; past the deadline, a
    # coroutine function's look is cancelled at its first checkpoint.
    with anyio.move_on_after(0):
        return await _holds(done)
    return False


async def _holds(done: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = done()
    return bool(await result) if inspect.isawaitable(result) else result


# --- /proc --------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, list[str]] | None:
    """(command name, the fields after it) of /proc/<pid>/stat; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    return head.partition("(")[2], rest.split()


def start_time(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1][19] if stat else None  # field 22: tells a process from a reused pid


def children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat[1][1] == str(pid):
                found.append((int(entry.name), stat[0]))
    return found


def cpu_seconds(pid: int) -> float:
    stat = _proc_stat(pid)
    if stat is None:
        return math.nan
    return (int(stat[1][11]) + int(stat[1][12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _status_kb(pid: int, key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return None


def peak_rss_kb(pid: int) -> int | None:
    return _status_kb(pid, "VmHWM:")


def rss_kb(pid: int) -> int | None:
    """Resident memory now (the peak never comes down, so deltas need this one)."""
    return _status_kb(pid, "VmRSS:")


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used (the first line of /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds used between a ``CpuMeter``'s start and ``stop()``."""

    processes: dict[str, float]  # per process measured (a server, its nats-server ...)
    here: float  # this process
    reaped: float  # children of this process that ended meanwhile (killed relays)
    machine: float  # everything on the machine, the above included
    wall: float

    def cores(self, seconds: float) -> float:
        return seconds / max(self.wall, 1e-9)

    @property
    def servers(self) -> float:
        """CPU seconds of the measured processes, those that ended meanwhile included."""
        return sum(v for v in self.processes.values() if not math.isnan(v)) + self.reaped

    @property
    def elsewhere(self) -> float:
        """Cores busy with none of ours: other work on the machine, which makes the
        figures noisy."""
        return max(0.0, self.cores(self.machine - self.servers - self.here))


class CpuMeter:
    """Started at construction; ``pids`` names the processes to measure (asked again at
    ``stop()``: a process restarted meanwhile is counted under its name)."""

    def __init__(self, pids: Callable[[], Mapping[str, int]]) -> None:
        self._pids = pids
        self._before = self._processes()
        self._here = time.process_time()
        self._reaped = self._children()
        self._machine = machine_busy_seconds()
        self._wall = clock()

    def _processes(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self._pids().items()}

    @staticmethod
    def _children() -> float:
        times = os.times()
        return times.children_user + times.children_system

    def stop(self) -> CpuUse:
        after = self._processes()
        return CpuUse(
            processes={name: after[name] - self._before.get(name, 0.0) for name in after},
            here=time.process_time() - self._here,
            reaped=self._children() - self._reaped,
            machine=machine_busy_seconds() - self._machine,
            wall=clock() - self._wall,
        )


def raise_fd_limit(connections: int) -> None:
    """Each connection is a socket in the load generator and one in the server; both
    inherit this process's limit."""
    wanted = connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise HarnessError(
            f"{connections} connections need {wanted} open files; the limit is {hard}"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# --- starting and stopping ----------------------------------------------------------------


def spawn(
    argv: list[str],
    stdout: Path,
    stderr: Path,
    *,
    stdin: int | None = subprocess.DEVNULL,
    cwd: Path | None = None,
    death_signal: int = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """A tool's child, tied to us by ``child_process.spawn`` (call it from the event
    loop's thread: the parent-death signal follows the forking thread)."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return child_process.spawn(
            argv,
            stdin=stdin,
            stdout=out,
            stderr=err,
            cwd=cwd,
            # Own session: Ctrl-C reaches only the tool, which then stops the server in
            # order (close clients, SIGTERM, wait) rather than all at once.
            start_new_session=True,
            death_signal=death_signal,
        )


def tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def problems(paths: list[Path]) -> list[str]:
    """The warning and error lines of server logs."""
    found: list[str] = []
    for path in paths:
        with contextlib.suppress(OSError):
            lines = path.read_text(errors="replace").splitlines()
            found += [f"{path.name}: {line}" for line in lines if PROBLEM_RE.search(line)]
    return found


async def wait_started(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], str | None],
    label: str,
    log: Path,
    timeout_s: float = READY_TIMEOUT_S,
) -> str:
    """What ``ready`` returns once it returns something (an URL); a ``HarnessError`` with the
    last lines of ``log`` if ``proc`` exits first or ``timeout_s`` pass."""
    deadline = clock() + timeout_s
    while (found := ready()) is None:
        if proc.poll() is not None:
            state = f"exited with code {proc.returncode}"
        elif clock() > deadline:
            state = f"not ready after {timeout_s:.0f}s"
        else:
            await anyio.sleep(0.02)
            continue
        raise HarnessError(f"{label} {state}; its last log lines:\n{tail(log)}")
    return found


def _is_gone(pid: int, started: str) -> bool:
    return start_time(pid) != started


async def terminate(pid: int, gone: Callable[[], bool]) -> None:
    """SIGTERM, wait, then SIGKILL, for one process this benchmark started."""
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        if gone():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        await poll_until(gone, clock() + wait_s)


@dataclass
class ServerProcess:
    """A server under test, and the processes whose memory and CPU count as its cost."""

    label: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    logs: list[Path]
    url: str = ""
    helpers: list[tuple[int, str, str]] = field(default_factory=list)  # pid, name, start time

    def pids(self) -> dict[str, int]:
        return {self.label: self.proc.pid} | {name: pid for pid, name, _ in self.helpers}

    def cpu_seconds(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids().items()}

    def peak_rss_kb(self) -> dict[str, int | None]:
        return {name: peak_rss_kb(pid) for name, pid in self.pids().items()}

    def rss_kb(self) -> dict[str, int | None]:
        return {name: rss_kb(pid) for name, pid in self.pids().items()}

    async def wait_ready(self) -> None:
        def ready() -> str | None:
            match = READY_RE.search(tail(self.stdout))
            return match.group(1) if match else None

        self.url = await wait_started(self.proc, ready, self.label, self.logs[0])
        # The relay's embedded nats-server is its child, started before "ready".
        for pid, name in children(self.proc.pid):
            started = start_time(pid)
            if started is not None:
                self.helpers.append((pid, name, started))

    async def stop(self) -> None:
        with anyio.CancelScope(shield=True):
            await terminate(self.proc.pid, lambda: self.proc.poll() is not None)
            for pid, _, started in self.helpers:
                # Normally gone already: the relay stops it on SIGTERM, PDEATHSIG otherwise.
                await terminate(pid, functools.partial(_is_gone, pid, started))


@contextlib.asynccontextmanager
async def running_server(
    label: str, argv: list[str], workdir: Path, logs: Sequence[Path], found: list[str]
) -> AsyncIterator[ServerProcess]:
    """A server under test (stdout and stderr in ``workdir``, more logs in ``logs``), ready;
    stopped on the way out, then the warning and error lines of its logs (those logged
    while shutting down too) added to ``found``."""
    stdout, log = workdir / "server.out", workdir / "server.log"
    server = ServerProcess(label, spawn(argv, stdout, log), stdout, [log, *logs])
    try:
        await server.wait_ready()
        yield server
    finally:
        await server.stop()
        found += problems(server.logs)


# --- relays -------------------------------------------------------------------------------


def edge_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/ws"


def relay_config(
    *,
    nats_url: str,
    region: str = "us-east",
    relay_id: str = "r1",
    port: int = 0,
    namespaces: list[dict[str, Any]] | None = None,
    limits: dict[str, Any] | None = None,
    relay: dict[str, Any] | None = None,
    nats: dict[str, Any] | None = None,
    peers: list[dict[str, Any]] | None = None,
    federation: dict[str, Any] | None = None,
    presence: dict[str, Any] | None = None,
) -> RelayConfig:
    """A relay on 127.0.0.1 (``port`` 0: any free one) with a short shutdown grace; the
    other arguments are sections of the config file, merged over that. A relay process
    reads it from ``relay.config.writer.write_config``'s file."""
    data: dict[str, Any] = {
        "region": {"name": region},
        "relay": {
            "id": relay_id,
            "host": "127.0.0.1",
            "port": port,
            "shutdown_grace_s": 2.0,
            **(relay or {}),
        },
        "nats": {"url": nats_url, **(nats or {})},
    }
    sections = {"namespaces": namespaces, "limits": limits, "peers": peers}
    sections["federation"] = federation
    sections["presence"] = presence
    data |= {key: value for key, value in sections.items() if value is not None}
    return RelayConfig.model_validate(data)


def relay_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "relay.cli", "relay", "--config", str(config)]


def start_relay(
    label: str, cfg: RelayConfig, home: Path, death_signal: int = signal.SIGTERM
) -> ServerProcess:
    """A relay process with its config, stdout and log in ``home``: ``wait_ready`` before
    using it."""
    home.mkdir(parents=True, exist_ok=True)
    config = write_config(home / "relay.toml", cfg)
    stdout, log = home / "stdout", home / "relay.log"
    proc = spawn(relay_argv(config), stdout, log, death_signal=death_signal)
    return ServerProcess(label, proc, stdout, [log])


# --- the servers under test of fanout and compare ------------------------------------------


def relay_command(workdir: Path) -> tuple[list[str], list[Path]]:
    """A relay with its embedded nats-server: argv, and its logs besides stderr."""
    store = workdir / "nats"
    # Port 0 everywhere so that runs never collide; a big outbox and no publish rate
    # limit because this measures throughput, not the slow-consumer and rate policies
    # (the default 10,000 publishes/s per connection capped a pipelining publisher once
    # the relay stored more than that: bench compare counted its refusals as failures).
    cfg = relay_config(
        nats_url="embedded",
        region="bench",
        relay_id="bench-1",
        relay={"shutdown_grace_s": 5.0},
        nats={"embedded_port": 0, "store_dir": str(store)},
        limits={
            "outbox_max_messages": 100_000,
            "publish_rate": 1_000_000.0,
            "publish_burst": 1_000_000,
        },
    )
    config = write_config(workdir / "relay.toml", cfg)
    return relay_argv(config), [store / "nats-server.log"]


def peer_command(workdir: Path) -> tuple[list[str], list[Path]]:
    """The bare Python websockets broadcaster (``relay.bench.peer_broadcast``)."""
    return [sys.executable, "-m", "relay.bench.peer_broadcast", "--port", "0"], []


# --- ports and nats-servers of our own ------------------------------------------------------


_handed_out: collections.deque[int] = collections.deque(maxlen=1024)
_handed_out_lock = threading.Lock()


# Where the kernel picks a connection's local port (Linux); a server's port outside it is
# never taken by an outgoing connection while that server is down for a restart.
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# How many ports below that range are handed out (a server's port is drawn from them).
SERVER_PORT_SPAN = 12_000


def server_port_range() -> range:
    """Ports for servers the harness starts: just below the kernel's ephemeral range, or
    empty when that range is unknown or leaves no room (then the kernel picks, port 0)."""
    try:
        low = int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    start = max(1024, low - SERVER_PORT_SPAN)
    return range(start, low) if low - start >= 1000 else range(0)


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now, distinct, and none handed out here recently (two
    calls in a row never return the same port): for servers that must come back on the
    same port after a restart, or that a container binds later. They are drawn below the
    kernel's ephemeral range: a port in it can be taken as the local port of any outgoing
    connection while its server is down (bench chaos once found a killed relay's port so
    taken, and the relay could not start again)."""
    candidates = server_port_range()
    with _handed_out_lock, contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count + 100):
            sock = stack.enter_context(socket.socket())
            try:  # held until all are found: distinct
                sock.bind(("127.0.0.1", random.choice(candidates) if candidates else 0))
            except OSError:
                continue  # in use
            port: int = sock.getsockname()[1]
            if port not in _handed_out and port not in ports:
                ports.append(port)
                if len(ports) == count:
                    _handed_out.extend(ports)
                    return ports
    raise HarnessError(f"no {count} free ports on 127.0.0.1")


def free_port() -> int:
    return free_ports(1)[0]


def write_nats_config(
    store_dir: Path,
    peers: Mapping[str, dict[str, object]] | None,
    *,
    name: str | None = None,
    max_file_store: int | None = None,
) -> Path:
    """The config file (mode 0600, in ``store_dir``'s auth folder) of a tool's nats-server:
    with ``peers`` (permissions by peer region, ``embedded_nats.region_peer_permissions``)
    the users of a relay's embedded server, made by the same functions (passwords kept
    beside it); None: open to anyone. ``name``: the server's name (also on its command
    line); ``max_file_store``: JetStream's store limit, bytes."""
    config: dict[str, object] = {}
    if peers is None:
        if max_file_store is not None:
            config["jetstream"] = {"max_file_store": max_file_store}
    else:
        passwords = ensure_passwords(store_dir, peers)
        config = json.loads(server_config(passwords, peers, max_file_store=max_file_store))
    if name is not None:
        # A reload compares the file's name with the running one's: a name given only as a
        # flag would count as a change, which nats-server cannot reload.
        config["server_name"] = name
    path = auth_dir(store_dir) / "nats-server.conf"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(config, indent=2) + "\n")
    return path


class NatsServerProcess:
    """A nats-server with JetStream that can be killed, frozen and started again on the
    same port with the same store: a region's NATS in a fault run.

    ``spawn`` forks it (call it from the event loop's thread: it uses
    ``relay.adapters.child_process.spawn``, so the server gets SIGKILL if we die, frozen
    or not) in its own session; ``wait_ready`` waits for its ports file. Every start
    uses the same port: ``port``, or one from ``free_ports`` (below the kernel's
    ephemeral range, so nothing takes it while the server is down). Signals go
    only to a process we started and have not reaped, so never to a reused pid.

    ``peers`` (permissions by peer region, ``embedded_nats.region_peer_permissions``)
    closes it as a relay's embedded server is: no anonymous client, the relay user
    (``credentials()``) and one user per peer region, passwords in ``store_dir / "auth"``.
    Without, it is open, as an operator's own NATS may be; ``authorize`` closes it later.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        name: str | None = None,
        port: int = -1,
        max_file_store: int | None = None,
        peers: Mapping[str, dict[str, object]] | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.name = name or store_dir.name
        self.port = port if port != -1 else free_port()
        # A JetStream store limit in bytes (a full store is a failure tests cause).
        self.max_file_store = max_file_store
        self.peers = None if peers is None else dict(peers)
        self.log = store_dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None

    @property
    def closed(self) -> bool:
        return self.peers is not None

    def password_file(self, user: str = RELAY_USER) -> Path:
        """Where ``user``'s password is kept (made at the first start once closed)."""
        return password_file(self.store_dir, user).absolute()

    def credentials(self, user: str = RELAY_USER) -> NatsCredentials | None:
        """What ``user`` connects with; None for an open server."""
        if not self.closed:
            return None
        return NatsCredentials(user, read_password_file(self.password_file(user)))

    def authorize(self, peers: Mapping[str, dict[str, object]], timeout_s: float = 10.0) -> None:
        """Close the server (an open one too) to all but the relay user and ``peers``' users:
        its config is rewritten and, if it runs, reloaded; returns once the server logged
        the reload. Blocking: for test fixtures, before relays are configured."""
        if self.peers == dict(peers):
            return
        self.peers = dict(peers)
        config = self._write_config()
        if not self.running:
            return
        before = self._reloads()
        self.signal(signal.SIGHUP)
        deadline = clock() + timeout_s
        while (now := self._reloads()) == before:
            if not self.running or clock() > deadline:
                break
            time.sleep(0.01)
        if now[0] == before[0]:
            raise HarnessError(
                f"nats-server {self.name} did not reload {config}:\n{tail(self.log)}"
            )

    def _write_config(self) -> Path:
        return write_nats_config(
            self.store_dir, self.peers, name=self.name, max_file_store=self.max_file_store
        )

    def _reloads(self) -> tuple[int, int]:
        """How many reloads the server logged: done, failed."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return 0, 0
        return text.count("Reloaded server configuration"), text.count("Failed to reload")

    def spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        ports = self.store_dir / "ports"
        ports.mkdir(parents=True, exist_ok=True)
        for stale in ports.glob("*.ports"):
            stale.unlink()
        config = self._write_config()
        try:
            argv = nats_server_argv(
                self.store_dir, port=self.port, log=self.log, name=self.name, config=config
            )
        except EmbeddedNatsError as exc:  # no binary
            raise HarnessError(str(exc)) from exc
        self.starts += 1
        with (self.store_dir / "stderr").open("ab") as err:
            self.proc = child_process.spawn(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                death_signal=signal.SIGKILL,
            )

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        proc = self.proc
        if proc is None:
            raise RuntimeError(f"{self.name} was never started")
        url = await wait_started(
            proc,
            lambda: nats_url_from_ports_file(self.store_dir / "ports", proc.pid),
            f"nats-server {self.name}",
            self.log,
            timeout_s,
        )
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])  # a restart comes back here
        return url

    def signal(self, sig: signal.Signals) -> bool:
        """Send ``sig`` if it runs; False if it does not."""
        if not self.running or self.proc is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        return True

    def kill(self) -> None:
        """SIGKILL (what a crash looks like; acked data is in the store's files) and reap."""
        if self.proc is not None and self.signal(signal.SIGKILL):
            self.proc.wait()

    async def up(self) -> str:
        """Start (again, on the same port and store) and wait until it serves."""
        self.spawn()
        return await self.wait_ready()

    async def down(self, *, kill: bool = False) -> None:
        if kill:
            self.signal(signal.SIGCONT)
            self.kill()
        else:
            await self.stop()

    def start_blocking(self, timeout_s: float = 10.0) -> str:
        """``up()`` for synchronous code (test fixtures)."""
        self.spawn()
        proc = self.proc
        assert proc is not None
        deadline = clock() + timeout_s
        while (url := nats_url_from_ports_file(self.store_dir / "ports", proc.pid)) is None:
            if proc.poll() is not None or clock() > deadline:
                self.stop_blocking()
                raise HarnessError(f"nats-server {self.name} did not start:\n{tail(self.log)}")
            time.sleep(0.01)
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        return url

    def stop_blocking(self, timeout_s: float = 10.0) -> None:
        """``stop()`` for synchronous code."""
        if self.proc is not None and self.signal(signal.SIGCONT):
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    async def stop(self) -> None:
        """SIGCONT (it may be frozen), SIGTERM, then SIGKILL; shielded."""
        proc = self.proc
        if proc is None:
            return
        with anyio.CancelScope(shield=True):
            self.signal(signal.SIGCONT)
            await terminate(proc.pid, lambda: proc.poll() is not None)
