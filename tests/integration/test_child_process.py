"""Children tied to us with PR_SET_PDEATHSIG (``relay.adapters.child_process``): they die
with a SIGKILLed parent, and they are never forked from a thread that ends before them
(the kernel signals the child when the forking *thread* exits: issue #9 item 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import pytest

from relay.adapters import child_process
from relay.simulate.client import timeout
from tests.support.waiting import wait_until_blocking

pytestmark = pytest.mark.integration

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def gone(pid: int) -> bool:
    """Exited (or a zombie no one reaped yet: PID 1 of a container may not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _gone_within(pid: int, seconds: float) -> bool:
    try:
        wait_until_blocking(lambda: gone(pid), f"process {pid} gone", seconds)
    except TimeoutError:
        return False
    return True


def anyio_workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "AnyIO worker thread"}


def test_spawn_refuses_threads_whose_exit_would_kill_the_child() -> None:
    async def from_an_anyio_worker() -> None:
        with pytest.raises(RuntimeError, match="PR_SET_PDEATHSIG follows the forking thread"):
            await anyio.to_thread.run_sync(child_process.spawn, SLEEPER)

    anyio.run(from_an_anyio_worker)

    raised: list[BaseException] = []

    def from_a_plain_thread() -> None:
        try:
            child_process.spawn(SLEEPER)
        except RuntimeError as e:
            raised.append(e)

    thread = threading.Thread(target=from_a_plain_thread, name="pool-1")
    thread.start()
    thread.join()
    assert len(raised) == 1 and "from thread 'pool-1'" in str(raised[0])


def test_a_child_spawned_in_the_loop_outlives_the_loops_worker_threads() -> None:
    """The worker threads the loop used exit (anyio stops them when the loop ends, as it
    does one idle for 10 s); the loop's thread lives on, and so does the child."""

    async def main() -> tuple[subprocess.Popen[bytes], set[threading.Thread]]:
        before = anyio_workers()
        await anyio.to_thread.run_sync(lambda: None)  # a worker exists, to be retired
        return child_process.spawn(SLEEPER), anyio_workers() - before

    proc, workers = anyio.run(main)
    try:
        for worker in workers:
            worker.join(timeout(10))
        assert workers and not any(w.is_alive() for w in workers)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout(1))  # a death signal would have arrived at the threads' exit
    finally:
        proc.kill()
        proc.wait()


def test_the_child_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    """What the death signal is for: a simulator or relay killed with SIGKILL cannot stop
    its children, and must leave none behind."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time
                from relay.adapters import child_process
                child = child_process.spawn({SLEEPER!r})
                print(child.pid, flush=True)
                time.sleep(120)
            """),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not gone(child)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    if not _gone_within(child, 10):
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the child outlived its SIGKILLed parent")
