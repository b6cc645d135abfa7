"""Start-up progress of ``relaynet simulate`` on stderr: what it is doing, and for how long.

One line per step (checking Docker, building the relay image, starting regions...).
On a terminal the current line counts seconds in place (``tick``), so a first image
build that takes minutes does not look like a hang; piped, each step is one plain
line with its duration when it ends. Steps may be reported from worker threads
(the image build runs in one), hence the lock.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class StartupProgress:
    def __init__(self, prefix: str = "relaynet simulate", stream: TextIO | None = None) -> None:
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._lock = threading.Lock()
        self._what: str | None = None
        self._since = 0.0
        self._finished = threading.Event()

    def step(self, what: str) -> None:
        with self._lock:
            self._end()
            self._what, self._since = what, time.monotonic()
            self._write(f"{self.prefix}: {what} ...", newline=not self.tty)

    def tick_every(self, interval_s: float) -> None:
        """Tick from a daemon thread until ``done``: start-up blocks the event loop's
        tasks on worker threads anyway, and a thread needs no task group around it."""

        def run() -> None:
            while not self._finished.wait(interval_s):
                self.tick()

        threading.Thread(target=run, name="relaynet-progress", daemon=True).start()

    def tick(self) -> None:
        with self._lock:
            if self.tty and self._what is not None:
                elapsed = time.monotonic() - self._since
                self._write(f"\r{self.prefix}: {self._what} ... {elapsed:.0f} s", newline=False)

    def done(self) -> None:
        """End the current step; no more ticks."""
        self._finished.set()
        with self._lock:
            self._end()

    def _end(self) -> None:
        if self._what is None:
            return
        elapsed = time.monotonic() - self._since
        if self.tty:
            self._write(f"\r{self.prefix}: {self._what} ... done ({elapsed:.1f} s)\x1b[K")
        elif elapsed >= 1.0:
            self._write(f"{self.prefix}: {self._what}: done in {elapsed:.1f} s")
        self._what = None

    def _write(self, text: str, newline: bool = True) -> None:
        self.stream.write(text + ("\n" if newline else ""))
        self.stream.flush()
