"""The processes a benchmark starts, and what they cost: the one toolkit every bench uses.

Theory of operation
-------------------
A server under test runs as a subprocess in its own session, with
``PR_SET_PDEATHSIG``, so that Ctrl-C reaches only the benchmark (which then
stops the server in order) and a benchmark killed with SIGKILL leaves nothing
running. The server says it is ready with a ``ready on ws://...`` line on
stdout; whatever it started by then (the relay's embedded nats-server) counts
as part of it for CPU and memory, read from ``/proc``. Stopping is SIGTERM,
a grace period, then SIGKILL, and a pid is only signalled while its start time
still matches, so a reused pid is never hit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from relay.adapters import child_process
from relay.adapters.embedded_nats import EmbeddedNatsError, find_nats_server
from relay.bench.report import BenchError
from relay.config.schema import RelayConfig
from relay.config.writer import write_config

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0  # the relay drains clients, then NATS, then stops nats-server
READY_RE = re.compile(r"ready on (ws://\S+)")
PROBLEM_RE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|\[(WRN|ERR|FTL)\]|Traceback")

clock = time.perf_counter


async def poll_until(done: Callable[[], bool], deadline: float, interval: float = 0.02) -> bool:
    """For states without an event to wait on: counters, another process's exit.
    ``deadline`` is a ``clock()`` time."""
    with anyio.move_on_after(deadline - clock()):
        while True:
            if done():
                return True
            await anyio.sleep(interval)
    return done()


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


def raise_fd_limit(connections: int) -> None:
    """Each connection is a socket in the load generator and one in the server; both
    inherit this process's limit."""
    wanted = connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise BenchError(f"{connections} connections need {wanted} open files; the limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# --- starting and stopping ----------------------------------------------------------------


def spawn(
    argv: list[str],
    stdout: Path,
    stderr: Path,
    *,
    stdin: int | None = subprocess.DEVNULL,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A benchmark's child, tied to us by ``child_process.spawn`` (call it from the event
    loop's thread: the parent-death signal follows the forking thread)."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return child_process.spawn(
            argv,
            stdin=stdin,
            stdout=out,
            stderr=err,
            cwd=cwd,
            # Own session: Ctrl-C reaches only the load generator, which then stops the
            # server in order (close clients, SIGTERM, wait) rather than all at once.
            start_new_session=True,
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
        deadline = clock() + READY_TIMEOUT_S
        while not (match := READY_RE.search(tail(self.stdout))):
            if self.proc.poll() is not None:
                state = f"exited with code {self.proc.returncode}"
            elif clock() > deadline:
                state = f"not ready after {READY_TIMEOUT_S:.0f}s"
            else:
                await anyio.sleep(0.05)
                continue
            raise BenchError(f"{self.label} {state}; its last log lines:\n{tail(self.logs[0])}")
        self.url = match.group(1)
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


# --- the Python servers under test --------------------------------------------------------


def relay_command(workdir: Path) -> tuple[list[str], list[Path]]:
    """A relay with its embedded nats-server: argv, and its logs besides stderr."""
    store = workdir / "nats"
    # Port 0 everywhere so that runs never collide; a big outbox because this
    # measures throughput, not the slow-consumer policy.
    cfg = RelayConfig.model_validate(
        {
            "region": {"name": "bench"},
            "relay": {"id": "bench-1", "host": "127.0.0.1", "port": 0},
            "nats": {"url": "embedded", "embedded_port": 0, "store_dir": str(store)},
            "limits": {"outbox_max_messages": 100_000},
        }
    )
    config = write_config(workdir / "relay.toml", cfg)
    argv = [sys.executable, "-m", "relay.cli", "relay", "--config", str(config)]
    return argv, [store / "nats-server.log"]


def peer_command(workdir: Path) -> tuple[list[str], list[Path]]:
    """The bare Python websockets broadcaster (``relay.bench.peer_broadcast``)."""
    return [sys.executable, "-m", "relay.bench.peer_broadcast", "--port", "0"], []


# --- ports and nats-servers of our own ------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held together, so they are distinct): for servers
    that must come back on the same port after a restart."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def nats_server_argv(
    store_dir: Path,
    *,
    port: int = -1,
    log: Path | None = None,
    name: str | None = None,
    config: Path | None = None,
) -> list[str]:
    """A nats-server with JetStream on 127.0.0.1, its store in ``store_dir`` and its ports
    file in ``store_dir / "ports"`` (``port`` -1: any free port, read from that file)."""
    try:
        binary = find_nats_server()
    except EmbeddedNatsError as exc:
        raise BenchError(str(exc)) from exc
    argv = [binary, *(["-c", str(config)] if config is not None else [])]
    argv += ["--addr", "127.0.0.1", "--port", str(port), "--jetstream"]
    argv += ["--store_dir", str(store_dir), "--ports_file_dir", str(store_dir / "ports")]
    if name is not None:
        argv += ["--server_name", name]
    if log is not None:
        argv += ["--log", str(log)]
    return argv


def nats_url_from_ports_file(store_dir: Path, pid: int) -> str | None:
    """The client URL the nats-server ``pid`` wrote to its ports file; None until it has."""
    try:
        urls = json.loads((store_dir / "ports" / f"nats-server_{pid}.ports").read_text())["nats"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(urls[0]) if urls else None


class NatsServerProcess:
    """A nats-server with JetStream that can be killed, frozen and started again on the
    same port with the same store: a region's NATS in a fault run.

    ``start`` forks it (call it from the event loop's thread: it uses
    ``relay.adapters.child_process.spawn``, so the server gets SIGKILL if we die, frozen
    or not) in its own session; ``wait_ready`` waits for its ports file. The first start
    may use any free port; every later one uses the port the first one got. Signals go
    only to a process we started and have not reaped, so never to a reused pid.
    """

    def __init__(self, store_dir: Path, *, name: str, port: int = -1) -> None:
        self.store_dir = store_dir
        self.name = name
        self.port = port
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

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        ports = self.store_dir / "ports"
        ports.mkdir(parents=True, exist_ok=True)
        for stale in ports.glob("*.ports"):
            stale.unlink()
        argv = nats_server_argv(self.store_dir, port=self.port, log=self.log, name=self.name)
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
        deadline = clock() + timeout_s
        while (url := nats_url_from_ports_file(self.store_dir, proc.pid)) is None:
            if proc.poll() is not None:
                state = f"exited with code {proc.returncode}"
            elif clock() > deadline:
                state = f"not ready after {timeout_s:.0f}s"
            else:
                await anyio.sleep(0.02)
                continue
            raise BenchError(
                f"nats-server {self.name} {state}; its last log lines:\n{tail(self.log)}"
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

    async def stop(self) -> None:
        """SIGCONT (it may be frozen), SIGTERM, then SIGKILL; shielded."""
        proc = self.proc
        if proc is None:
            return
        with anyio.CancelScope(shield=True):
            self.signal(signal.SIGCONT)
            await terminate(proc.pid, lambda: proc.poll() is not None)
