"""Child processes that die with us (PR_SET_PDEATHSIG), forked from a thread that lives.

Theory of operation: the long-lived children we start (a relay's embedded nats-server,
the relays of a simulated network) must not outlive us, even when we are SIGKILLed and
cannot stop them. Between fork and exec the child asks the kernel for SIGTERM when its
parent dies (``prctl(PR_SET_PDEATHSIG)``). The kernel's "parent" there is the *thread*
that forked the child, not the process (prctl(2)): a child forked from a worker thread
gets SIGTERM as soon as that thread exits, while this process lives on. anyio's
``to_thread`` retires a worker after 10 idle seconds, so a child forked there died about
10 s after it started (issue #9 item 7).

``spawn`` therefore forks only from a thread that lives as long as the child should: the
main thread, or a thread running an event loop (the async code that owns the child runs
there and stops it before the loop ends; a ``BlockingPortal``'s thread is one). From any
other thread it raises ``RuntimeError`` at once rather than leave a child that dies
seconds later. Forking takes milliseconds; only waiting for the child to be ready
belongs in a task (or a worker thread).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    """Looked up here, not in the child: between fork and exec only async-signal-safe work
    is safe, and dlopen takes a lock another thread may have held at the fork."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except Exception:  # not Linux: no parent-death signal to ask for
        return None


_prctl = _load_prctl()

_File = int | IO[Any] | None


def _die_with(parent_pid: int, sig: int) -> Callable[[], None]:
    def tie() -> None:  # runs in the child between fork and exec
        if _prctl is None:
            return
        if _prctl(_PR_SET_PDEATHSIG, sig) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # it died before prctl: the signal will never come
            raise ProcessLookupError("the parent died before the child could be tied to it")

    return tie


def forks_from_a_lasting_thread() -> bool:
    """Whether this thread lives as long as a child forked here should: the main thread,
    or one running an event loop. Not an anyio worker (``to_thread``), nor a pool's."""
    if threading.current_thread() is threading.main_thread():
        return True
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def spawn(
    argv: Sequence[str],
    *,
    stdin: _File = subprocess.DEVNULL,
    stdout: _File = None,
    stderr: _File = None,
    start_new_session: bool = False,
    death_signal: int = signal.SIGTERM,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv)`` whose child gets ``death_signal`` when we die.

    Call it from the main thread or an event loop's thread (it is quick: no need for a
    worker thread); anywhere else it raises ``RuntimeError``, see the module docstring."""
    if not forks_from_a_lasting_thread():
        raise RuntimeError(
            f"spawn({argv[0]!r}) from thread {threading.current_thread().name!r}: the child "
            "would get its death signal when that thread exits (PR_SET_PDEATHSIG follows the "
            "forking thread). Spawn from the main thread or the event loop's thread."
        )
    return subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=_die_with(os.getpid(), death_signal),
        start_new_session=start_new_session,
        cwd=cwd,
    )
