"""Backend hooks over HTTP: the I/O around ``relay.core.hooks`` and ``relay.core.circuit``.

One ``HookEndpoint`` per ``[[hooks]]`` entry: it POSTs a request (h11, one connection
per call, ``relay.client.http``), retries a failed connection or a 5xx with backoff,
times each attempt out, and keeps the endpoint's circuit breaker and counters.
``Hooks`` is the relay's set of them, by what they are asked about: who a client is
(``connect``), whether a subscription may be attached, whether (and with which data)
a publish is stored. Its answers are verdicts; a failure becomes ``Unavailable``, or
``Accepted`` for a hook configured to fail open. Nothing here logs credentials or
forwarded headers: failures are logged by hook, kind and cause only.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import anyio

from federation.throttled_log import ThrottledLog
from relay.adapters.tokens import KeyConfigError
from relay.client.http import HttpError, http_request
from relay.config.schema import HookSection, RelayConfig
from relay.core.capabilities import Credentials
from relay.core.circuit import BreakerState, CircuitBreaker
from relay.core.hooks import (
    Accepted,
    BadAnswer,
    ConnectHookRequest,
    HookAnswer,
    HookKind,
    PublishHookRequest,
    Rejected,
    SubscribeHookRequest,
    Unavailable,
    Verdict,
    connect_verdict,
    decode_answer,
    encode_request,
    publish_verdict,
    retry_delay_s,
    retryable,
    subscribe_verdict,
)
from relay.protocol.frames import Publish

log = logging.getLogger("relaynet.hooks")
_problems = ThrottledLog(log)

#: Upper bounds (seconds) of the latency histogram's buckets.
LATENCY_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


Transport = Literal["websocket", "sse", "http"]


@dataclass(frozen=True)
class ClientInfo:
    """What the connect hook is told about a client besides its credentials string: kept
    by its connection (for renewals) only when hooks are configured."""

    transport: Transport
    remote_addr: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # the forwarded ones only
    # Accepted already, by this request's own connect call (an SSE stream's check).
    credentials: Credentials | None = None


class HookConfigError(KeyConfigError):
    """A hook's secret file cannot be read (a relay that cannot call its hooks as
    configured does not start)."""


class Latency:
    """A histogram of call durations (cumulative buckets, as Prometheus has them)."""

    def __init__(self) -> None:
        self.buckets = [0] * len(LATENCY_BUCKETS_S)
        self.count = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum_s += seconds
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if seconds <= bound:
                self.buckets[i] += 1


class _Failure(Exception):
    """One call that got no usable answer: ``outcome`` for the counters, ``why`` for the log."""

    def __init__(self, outcome: str, why: str) -> None:
        super().__init__(why)
        self.outcome = outcome
        self.why = why


class HookEndpoint:
    def __init__(
        self,
        section: HookSection,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = lambda: random.uniform(0.5, 1.0),
    ) -> None:
        self.section = section
        self.name = section.name
        self.breaker = CircuitBreaker(section.breaker_failures, section.breaker_open_s)
        self._clock = clock
        self._jitter = jitter
        headers = [("Content-Type", "application/json")]
        if section.secret_file is not None:
            try:
                secret = Path(section.secret_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise HookConfigError(
                    f"hooks {section.name!r}: secret_file {section.secret_file}: {exc}"
                ) from None
            headers.append(("Authorization", f"Bearer {secret}"))
        self._headers = tuple(headers)
        # (kind, outcome) -> calls; outcome: accept, replace, reject, error, timeout,
        # circuit_open (refused by the breaker, no request sent).
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self.latency: dict[str, Latency] = collections.defaultdict(Latency)

    def breaker_state(self) -> BreakerState:
        return self.breaker.state(self._clock())

    async def ask(
        self, kind: HookKind, body: bytes, verdict: Callable[[HookAnswer], Accepted | Rejected]
    ) -> Accepted | Rejected | _Failure:
        """The backend's verdict, or why there is none (the breaker has been told). An
        answer ``verdict`` finds wrong (``BadAnswer``) is a failure like a timeout."""
        breaker = self.breaker
        started = self._clock()
        trial = breaker.state(started) is BreakerState.HALF_OPEN
        if not breaker.allow(started):
            self.calls[(kind, "circuit_open")] += 1
            return _Failure("circuit_open", "circuit breaker open")
        settled = False
        try:
            answer = await self._post(body)
            try:
                decided = verdict(answer)
            except BadAnswer as exc:
                raise _Failure("error", f"bad answer: {exc}") from None
            breaker.succeeded()
            settled = True
            outcome = "reject" if isinstance(decided, Rejected) else "accept"
            if isinstance(decided, Accepted) and decided.data is not None:
                outcome = "replace"
            self.calls[(kind, outcome)] += 1
            return decided
        except _Failure as failure:
            breaker.failed(self._clock(), trial=trial)
            settled = True
            self.calls[(kind, failure.outcome)] += 1
            _problems.log(
                logging.WARNING,
                f"{self.name}:{kind}:{failure.outcome}",
                "hook %r (%s) failed: %s",
                self.name,
                kind,
                failure.why,
            )
            return failure
        finally:
            if not settled:  # cancelled: says nothing about the backend
                breaker.abandoned(trial=trial)
            self.latency[kind].observe(self._clock() - started)

    async def _post(self, body: bytes) -> HookAnswer:
        section = self.section
        attempt = 0
        while True:
            status: int | None = None
            try:
                result = await http_request(
                    "POST",
                    section.url,
                    timeout_s=section.timeout_s,
                    body=body,
                    headers=self._headers,
                )
                status = result.status
                return decode_answer(status, result.body)
            except TimeoutError:  # before OSError: it is one
                raise _Failure("timeout", f"no answer within {section.timeout_s:g} s") from None
            except BadAnswer as exc:
                if not retryable(status) or attempt >= section.retries:
                    raise _Failure("error", str(exc)) from None
                why = str(exc)
            except (OSError, anyio.BrokenResourceError) as exc:
                if attempt >= section.retries:
                    raise _Failure("error", f"cannot reach it: {type(exc).__name__}") from None
                why = type(exc).__name__
            except HttpError as exc:
                raise _Failure("error", str(exc)) from None
            except Exception as exc:  # whatever else the peer provoked: a failure, not a crash
                raise _Failure("error", f"{type(exc).__name__} calling it") from None
            attempt += 1
            log.debug("hook %r: retry %d after %s", self.name, attempt, why)
            await anyio.sleep(retry_delay_s(attempt, section.retry_backoff_s, self._jitter()))


class Hooks:
    """A relay's hooks, by what they decide."""

    def __init__(self, cfg: RelayConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.region = cfg.region.name
        self.relay_id = cfg.relay.id
        self.endpoints = {hook.name: HookEndpoint(hook, clock=clock) for hook in cfg.hooks}
        self.connect_endpoint = (
            self.endpoints[cfg.auth.connect_hook] if cfg.auth.connect_hook else None
        )
        self.forward_headers: tuple[str, ...] = (
            () if self.connect_endpoint is None else self.connect_endpoint.section.forward_headers
        )

    @classmethod
    def from_config(cls, cfg: RelayConfig) -> Hooks | None:
        """None when no hook is configured (the common case costs nothing)."""
        return cls(cfg) if cfg.hooks else None

    def forwarded(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers the connect hook forwards, of ``headers`` (names lower-cased)."""
        return {name: headers[name] for name in self.forward_headers if name in headers}

    def subscribes(self, channel: str) -> bool:
        return self.cfg.namespace_for(channel).subscribe_hook is not None

    def publishes(self, channel: str) -> bool:
        return self.cfg.namespace_for(channel).publish_hook is not None

    async def connect(
        self,
        *,
        connection_id: str,
        transport: Transport,
        credentials: str | None,
        remote_addr: str | None,
        headers: dict[str, str],
    ) -> Verdict:
        endpoint = self.connect_endpoint
        assert endpoint is not None, "connect() only in hook mode"
        request = ConnectHookRequest(
            region=self.region,
            relay=self.relay_id,
            connection_id=connection_id,
            transport=transport,
            credentials=credentials,
            remote_addr=remote_addr,
            headers=headers,
        )
        return await self._decide(
            endpoint, "connect", encode_request(request), lambda a: connect_verdict(a, time.time())
        )

    async def subscribe(self, connection_id: str, sub: str | None, channel: str) -> Verdict:
        endpoint = self.endpoints.get(self.cfg.namespace_for(channel).subscribe_hook or "")
        if endpoint is None:
            return Accepted()
        request = SubscribeHookRequest(
            region=self.region,
            relay=self.relay_id,
            connection_id=connection_id,
            sub=sub,
            channel=channel,
        )
        return await self._decide(endpoint, "subscribe", encode_request(request), subscribe_verdict)

    async def publish(self, connection_id: str, sub: str | None, frame: Publish) -> Verdict:
        """``frame`` has its id (the relay's if the client gave none)."""
        rule = self.cfg.namespace_for(frame.channel)
        endpoint = self.endpoints.get(rule.publish_hook or "")
        if endpoint is None:
            return Accepted()
        assert frame.id is not None
        request = PublishHookRequest(
            region=self.region,
            relay=self.relay_id,
            connection_id=connection_id,
            sub=sub,
            channel=frame.channel,
            id=frame.id,
            data=frame.data,
        )
        max_bytes = rule.max_message_bytes
        return await self._decide(
            endpoint, "publish", encode_request(request), lambda a: publish_verdict(a, max_bytes)
        )

    async def _decide(
        self,
        endpoint: HookEndpoint,
        kind: HookKind,
        body: bytes,
        verdict: Callable[[HookAnswer], Accepted | Rejected],
    ) -> Verdict:
        decided = await endpoint.ask(kind, body, verdict)
        if not isinstance(decided, _Failure):
            return decided
        if endpoint.section.fail_open and kind != "connect":
            return Accepted()
        why = "circuit open" if decided.outcome == "circuit_open" else decided.outcome
        return Unavailable(
            f"the application's backend cannot decide now (hook {endpoint.name!r}: {why}); "
            "try again"
        )
