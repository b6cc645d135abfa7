"""How a benchmark ends: its figures and an exit code, within a wall-clock cap."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from relay.harness.toolkit import HarnessError

R = TypeVar("R")


class BenchError(HarnessError):
    """The benchmark could not run (a server did not start, a handshake failed)."""


def server_log_lines(label: str, problems: list[str], shown: int = 8) -> list[str]:
    """The report's last lines: what the servers logged as warnings or errors."""
    if not problems:
        return [f"{label}no warnings or errors"]
    return [f"{label}{len(problems)} warning/error lines, first ones:"] + [
        f"    {line[:200]}" for line in problems[:shown]
    ]


def first_error(exc: BaseException) -> BaseException:
    """Task groups wrap errors in groups; the first one says enough."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def run_and_report(
    name: str,
    cap_s: float,
    run: Callable[[], Awaitable[R]],
    show: Callable[[R], str],
    failed: Callable[[R], list[str]],
) -> int:
    """Run within ``cap_s`` seconds and print the figures: 0, or 1 when the run
    failed (a ``HarnessError`` such as a ``BenchError``, the cap, or ``failed`` naming
    reasons). Other errors are bugs and propagate."""
    report: R | None = None
    done = False
    try:
        with anyio.move_on_after(cap_s):  # cleanup runs shielded, so it still happens
            report = await run()
            done = True
    except (HarnessError, ExceptionGroup) as exc:
        first = first_error(exc)
        if not isinstance(first, HarnessError):
            raise
        print(f"bench {name}: {first}", file=sys.stderr)
        return 1
    if not done or report is None:
        print(f"bench {name}: not done after {cap_s:.0f}s; stopped", file=sys.stderr)
        return 1
    print(show(report), flush=True)
    reasons = failed(report)
    if reasons:
        print(f"FAILED: {'; '.join(reasons)}", flush=True)
        return 1
    return 0
