"""Headless Chromium for tests, driven over the DevTools protocol (CDP).

No browser-automation package: Chromium is started with ``--remote-debugging-port=0``,
writes the port it picked to ``DevToolsActivePort`` in its (fresh, temporary) profile
directory, and the tests talk CDP over that WebSocket with the ``websockets`` package the
project already depends on. One connection carries every page (``flatten`` sessions).

Chromium comes from Debian (``apt-get install -y chromium``): ``/usr/bin/chromium``, or
the path in ``RELAYNET_CHROMIUM``. It resolves no host name but loopback
(``--host-resolver-rules``) and reaches nothing outside the machine.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.support.relays import timeout

CHROMIUM = os.environ.get("RELAYNET_CHROMIUM", "/usr/bin/chromium")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--disable-dev-shm-usage",
    # Timers of a page that is not in front must not be throttled: two pages run at once.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--window-size=1200,800",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium_available() -> bool:
    return os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)


class CdpError(RuntimeError):
    """A CDP command failed, or a page's script threw."""


Handler = Callable[[dict[str, Any]], None]


class Browser:
    def __init__(self, ws: ClientConnection, tg: anyio.abc.TaskGroup, log: Path) -> None:
        self.ws = ws
        self.tg = tg
        self.log = log
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self._handlers: dict[tuple[str | None, str], list[Handler]] = {}
        self._closed = False

    async def read_loop(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if "id" in message:
                    waiter = self._waiting.pop(message["id"], None)
                    if waiter is not None:
                        waiter[1].append(message)
                        waiter[0].set()
                    continue
                key = (message.get("sessionId"), message.get("method", ""))
                for handler in self._handlers.get(key, []):
                    handler(message.get("params", {}))
        except ConnectionClosed:
            pass
        finally:
            self._closed = True
            for event, _ in self._waiting.values():
                event.set()  # the waiter sees no reply and raises

    def on(self, session_id: str | None, method: str, handler: Handler) -> None:
        self._handlers.setdefault((session_id, method), []).append(handler)

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout_s: float = 10.0,
    ) -> dict[str, Any]:
        if self._closed:
            raise CdpError(f"{method}: the DevTools connection is closed")
        message_id = next(self._ids)
        done = anyio.Event()
        reply: list[dict[str, Any]] = []
        self._waiting[message_id] = (done, reply)
        frame: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            frame["sessionId"] = session_id
        try:
            await self.ws.send(json.dumps(frame))
            with anyio.fail_after(timeout(timeout_s)):
                await done.wait()
        finally:
            self._waiting.pop(message_id, None)
        if not reply:
            raise CdpError(f"{method}: the DevTools connection closed before the reply")
        if "error" in reply[0]:
            raise CdpError(f"{method}: {reply[0]['error']}")
        return dict(reply[0].get("result", {}))

    async def new_page(self, url: str) -> Page:
        """A new tab with ``url`` loaded (``document.readyState`` complete)."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, target["targetId"], attached["sessionId"])
        await page.setup()
        await page.goto(url)
        return page


class Page:
    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.console: list[str] = []  # console messages and uncaught exceptions, for failures
        self._delays: list[tuple[str, float]] = []

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def setup(self) -> None:
        self.browser.on(self.session_id, "Runtime.consoleAPICalled", self._console)
        self.browser.on(self.session_id, "Runtime.exceptionThrown", self._exception)
        self.browser.on(self.session_id, "Log.entryAdded", self._log_entry)
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        await self.send("Log.enable")

    def _console(self, params: dict[str, Any]) -> None:
        args = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
        self.console.append(f"console.{params.get('type')}: {' '.join(args)}")

    def _exception(self, params: dict[str, Any]) -> None:
        details = params.get("exceptionDetails", {})
        text = details.get("exception", {}).get("description") or details.get("text")
        self.console.append(f"uncaught: {text}")

    def _log_entry(self, params: dict[str, Any]) -> None:
        entry = params.get("entry", {})
        self.console.append(f"log.{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}")

    async def goto(self, url: str) -> None:
        # Mark the current document, so that the wait below sees the new one.
        await self.evaluate("window.__cdpOldDocument = true")
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")
        loaded = "!window.__cdpOldDocument && document.readyState === 'complete'"
        await self.wait_for(loaded, 15, f"{url} to load")

    async def evaluate(self, expression: str, timeout_s: float = 10.0) -> Any:
        """Value of a JavaScript expression (awaited if it is a promise), as JSON."""
        result = await self.browser.send(
            "Runtime.evaluate",
            {
                "expression": expression,
                "awaitPromise": True,
                "returnByValue": True,
                "userGesture": True,
            },
            session_id=self.session_id,
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression[:80]!r} threw: {text}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout_s: float, what: str) -> Any:
        """Poll ``expression`` until it is truthy; its value. Fails with the page's console."""
        deadline = time.monotonic() + timeout(timeout_s)
        last: Any = None
        while time.monotonic() < deadline:
            with suppress(CdpError):  # e.g. evaluated while the page navigates
                last = await self.evaluate(expression)
                if last:
                    return last
            await anyio.sleep(0.05)  # polling page state: CDP has no event for it
        tail = "\n".join(self.console[-30:])
        raise AssertionError(
            f"timed out waiting for {what} (last value {last!r}); console:\n{tail}"
        )

    async def delay_requests(self, url_pattern: str, delay_s: float) -> None:
        """Hold every request matching ``url_pattern`` (``*`` wildcards) for ``delay_s`` before
        it goes out: network latency toward one host, as the page's own fetches see it."""
        self._delays.append((url_pattern, delay_s))
        if len(self._delays) == 1:
            self.browser.on(self.session_id, "Fetch.requestPaused", self._paused)
        await self.send(
            "Fetch.enable",
            {"patterns": [{"urlPattern": p, "requestStage": "Request"} for p, _ in self._delays]},
        )

    def _paused(self, params: dict[str, Any]) -> None:
        url = params.get("request", {}).get("url", "")
        delay = max((d for p, d in self._delays if _matches(p, url)), default=0.0)
        self.browser.tg.start_soon(self._release, params["requestId"], delay)

    async def _release(self, request_id: str, delay_s: float) -> None:
        await anyio.sleep(delay_s)
        with suppress(CdpError):  # the request may have been cancelled meanwhile
            await self.send("Fetch.continueRequest", {"requestId": request_id})

    async def screenshot(self, path: Path) -> None:
        import base64

        result = await self.send("Page.captureScreenshot", {"format": "png"})
        await anyio.Path(path).write_bytes(base64.b64decode(result["data"]))

    async def close(self) -> None:
        with suppress(CdpError, TimeoutError):
            await self.browser.send("Target.closeTarget", {"targetId": self.target_id})


def _matches(pattern: str, url: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(url, pattern)


@asynccontextmanager
async def chromium(log: Path) -> AsyncIterator[Browser]:
    """Start headless Chromium with a fresh profile; stop it (by its PID) and delete the
    profile on exit. Chromium's own output goes to ``log``."""
    if not chromium_available():
        raise RuntimeError(f"{CHROMIUM} not found: apt-get install -y chromium")
    profile = Path(tempfile.mkdtemp(prefix="relaynet-chromium-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = _launch(profile, log)
        url = await _devtools_url(proc, profile, log)
        async with ws_connect(url, max_size=None, ping_interval=None, open_timeout=10) as ws:
            async with anyio.create_task_group() as tg:
                browser = Browser(ws, tg, log)
                tg.start_soon(browser.read_loop)
                try:
                    yield browser
                finally:
                    with anyio.move_on_after(5, shield=True):
                        with suppress(CdpError, ConnectionClosed):
                            await browser.send("Browser.close", timeout_s=5)
                    tg.cancel_scope.cancel()
    finally:
        if proc is not None:
            await anyio.to_thread.run_sync(_stop_process, proc)
        shutil.rmtree(profile, ignore_errors=True)


async def _devtools_url(proc: subprocess.Popen[bytes], profile: Path, log: Path) -> str:
    port_file = profile / "DevToolsActivePort"
    with anyio.fail_after(timeout(30)):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}:\n{_tail(log)}")
            if port_file.exists():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            await anyio.sleep(0.05)  # Chromium writes the file once it listens


def _launch(profile: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own process group: its helpers go with it
        )


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:])


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Wait for Browser.close to take effect; else SIGTERM, then SIGKILL, the process group we
    started (its id is the browser's PID: start_new_session)."""
    for sig, grace in ((None, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if sig is not None and proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    # Helpers (renderers, zygote) that outlive the browser process.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
