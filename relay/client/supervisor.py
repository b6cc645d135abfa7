"""Supervisor: where to connect next, when, and when to leave, as a state machine without I/O.

Theory of operation
-------------------
The client's anyio shell (``client.py``) owns the sockets and the clock; the
supervisor owns every decision about connections. The shell reports what
happened through one method per event (time passed in where it matters) and
executes the actions each returns, in order:

=========================  ==============================================================
action                     the shell...
=========================  ==============================================================
``SetState(state)``        publishes the new ``ConnectionState`` (only sent on a change)
``Log(level, text)``       logs it
``Pause(seconds)``         sleeps (backoff)
``RefreshSurvey()``        fetches the directory and probes; answers ``surveyed()``
``Open(region, url)``      opens a connection; answers ``open_failed()``,
                           ``handshake_redirected()`` or ``connected()``, then (once up)
                           ``connection_ended()``
``RoundFailed(rounds)``    says that no edge answered (it knows why each failed)
``Finish(state, ...)``     ends the client (closed by the relay, or failed for good)
``WatchForMove(every_s)``  while connected: every ``every_s`` a fresh survey, answered by
                           ``move_check()``
``AwaitIdle(seconds)``     waits up to ``seconds`` for no publish in flight; answers
                           ``idle_check()``
``Leave(code, reason)``    closes the current connection now
``LeaveAfter(seconds)``    closes it after ``seconds`` unless the relay closed first
``RetryAfter(seconds)``    after that long, sends the pending publishes (and failed
                           subscribes) again on the current connection
=========================  ==============================================================

An action that needs an answer (``RefreshSurvey``, ``Open``, ``AwaitIdle``) is
always the last of its list, so the shell is a plain loop.

Policy:

* **Rounds.** A round tries every edge of the survey in failover order, the
  edge just left first (or, if it went silent, last). A connection that ends
  starts a new round after one jittered pause (``Backoff``, full jitter):
  not between the edges of a round, since the pause before its first attempt
  already spread a crowd of clients and a refused edge says nothing about the
  next one. A round in which every edge failed ends with a fresh survey; after
  ``SUSPEND_AFTER_ROUNDS`` of them the state is ``suspended`` and rounds are
  spaced by a second, slower backoff.
* **Close codes** (``session.close_policy``): "stop" ends the client,
  ``closed`` for 1000 and ``failed`` otherwise.
* **Redirects** (PROTOCOL.md): followed only to an edge of the redirecting
  relay's region that the directory lists, only while that region is our first
  choice, never from wss:// to ws://, and at most ``MAX_REDIRECTS_IN_A_ROW``
  times without staying anywhere. A redirect comes instead of ``connected``
  (the next attempt goes there at once) or during a connection (the relay
  closes after the acks in flight; we leave after ``REDIRECT_GRACE_S`` if it
  does not).
* **Where the token goes.** Every ``Open`` carries the client's token, so an
  edge is opened only if it is in the directory, which came from a seed (or
  from an edge of an earlier directory): a redirect to a URL the directory does
  not list is ignored (a relay that started since the survey is found by the
  next one), whatever region it claims. With ``secure_only`` (the seeds are all
  wss:// or https://) plain ws:// edges are never opened, from the directory or
  a redirect: a directory or a relay cannot make the client send its token in
  clear text.
* **Moving back** (``routing.should_move_back``): with ``move_back`` other than
  ``stay`` a fresh survey every ``refresh_s`` while connected; ``when-idle``
  waits (up to ``refresh_s``) for no publish in flight.
* **Transport** (``transport.py`` decides WebSocket or SSE): a switch of transport
  on a working connection leaves it and opens the same edge again at once, like a
  move (``transport_changed``); the shell reports the same events either way.
* **Temporary errors** of a publish or subscribe: one ``RetryAfter`` at a time,
  with its own backoff, reset by every new connection; ``rate_limited`` says how
  long to wait (``retry_after_ms``), and that is the pause, without backing off.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from relay.client.backoff import Backoff
from relay.client.directory import Survey
from relay.client.endpoints import endpoint, is_secure
from relay.client.routing import MoveBackPolicy, should_move_back
from relay.client.session import Redirected, close_policy
from relay.protocol.errors import CloseCode

# After this many rounds in which every edge failed, the client is "suspended".
SUSPEND_AFTER_ROUNDS: Final = 2
# While suspended, rounds are spaced by up to this many times backoff_max_s.
SUSPENDED_FACTOR: Final = 6.0
# Redirects followed in a row without staying anywhere: past this, two relays sending us
# to each other (both full) cost a backoff like any failed attempt.
MAX_REDIRECTS_IN_A_ROW: Final = 3
# A relay that redirected us and does not close: leave after this.
REDIRECT_GRACE_S: Final = 5.0

Target = tuple[str, str]
"""(region, edge URL)"""


class ConnectionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    SUSPENDED = "suspended"
    FAILED = "failed"
    """The relay closed with a code that says not to come back (4500+, 1002, 1008...)."""
    CLOSED = "closed"
    """``close()`` was called, or the relay ended the connection normally (1000)."""


# --- actions (imperatives) ---------------------------------------------------------------


@dataclass(frozen=True)
class SetState:
    state: ConnectionState


@dataclass(frozen=True)
class Log:
    level: int
    text: str


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class RefreshSurvey:
    pass


@dataclass(frozen=True)
class Open:
    region: str
    url: str


@dataclass(frozen=True)
class RoundFailed:
    rounds: int
    """Rounds in a row in which every edge failed."""


@dataclass(frozen=True)
class Finish:
    state: ConnectionState
    code: int
    reason: str


@dataclass(frozen=True)
class WatchForMove:
    every_s: float


@dataclass(frozen=True)
class AwaitIdle:
    seconds: float


@dataclass(frozen=True)
class Leave:
    code: int
    reason: str


@dataclass(frozen=True)
class LeaveAfter:
    seconds: float


@dataclass(frozen=True)
class RetryAfter:
    seconds: float


Action = (
    SetState
    | Log
    | Pause
    | RefreshSurvey
    | Open
    | RoundFailed
    | Finish
    | WatchForMove
    | AwaitIdle
    | Leave
    | LeaveAfter
    | RetryAfter
)


class Supervisor:
    def __init__(
        self,
        *,
        rng: random.Random,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
        reset_after_s: float = 10.0,
        move_back: MoveBackPolicy = "stay",
        refresh_s: float = 30.0,
        secure_only: bool = False,
    ) -> None:
        """``secure_only``: open wss:// edges only (the client's seeds are all TLS)."""
        if move_back not in ("stay", "when-idle", "immediately"):
            raise ValueError(f"move_back must be stay, when-idle or immediately: {move_back!r}")
        if not refresh_s > 0:
            raise ValueError(f"refresh_s must be > 0, not {refresh_s!r}")
        self._backoff = Backoff(
            base_s=backoff_base_s, max_s=backoff_max_s, reset_after_s=reset_after_s, rng=rng
        )
        self._round_backoff = Backoff(
            base_s=backoff_max_s,
            max_s=backoff_max_s * SUSPENDED_FACTOR,
            reset_after_s=reset_after_s,
            rng=rng,
        )
        self._retry_backoff = Backoff(
            base_s=backoff_base_s, max_s=backoff_max_s, reset_after_s=0.0, rng=rng
        )
        self._move_back: MoveBackPolicy = move_back
        self._refresh_s = refresh_s
        self._secure_only = secure_only

        self.state = ConnectionState.CONNECTING
        self.survey: Survey | None = None
        self.redirects = 0
        """Redirects from relays followed so far."""
        self.redirects_in_a_row = 0
        self.current: Target | None = None
        """The edge being tried, or connected to."""
        self.relay_region: str | None = None
        """The region the connected relay reported (``connected``)."""

        self._order: list[Target] = []
        self._next = 0  # index in _order of the next attempt
        self._target: Target | None = None  # try first in the next round
        self._avoid: Target | None = None  # try last in the next round
        self._pause = False  # a backoff pause before the next attempt
        self._need_survey = True
        self._failed_rounds = 0
        self._move_target: Target | None = None
        self._redirected = False
        self._retry_scheduled = False

    # --- events ---------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """The client starts: survey, then the first round."""
        return self._begin_round()

    def surveyed(self, survey: Survey | None) -> list[Action]:
        """Answer to ``RefreshSurvey`` (None: nobody answered; the old survey stays)."""
        if survey is not None:
            self.survey = survey
        return self._plan_round()

    def open_failed(self) -> list[Action]:
        """The attempt did not get a connection (refused, timed out, no `connected`)."""
        return self._next_attempt()

    def handshake_redirected(self, event: Redirected) -> list[Action]:
        """The relay answered the attempt with a redirect instead of `connected`."""
        assert self.current is not None
        region, url = self.current
        target, note = self.redirect_target(event, url, region)
        if target is None:
            return [Log(logging.WARNING, note), *self._next_attempt()]
        self._follow(target)
        self._got_somewhere()
        self._target, self._pause = self._take_move_target(), False
        return [Log(logging.INFO, note), *self._plan_round()]

    def connected(self, relay_region: str, now: float) -> list[Action]:
        """The attempt is up: `connected` came and the session's frames were sent."""
        self.relay_region = relay_region
        self.redirects_in_a_row = 0
        self._backoff.connected(now)
        self._retry_backoff.reset()
        self._got_somewhere()
        actions = self._set_state(ConnectionState.CONNECTED)
        if self._move_back != "stay":
            actions.append(WatchForMove(self._refresh_s))
        return actions

    def redirect_received(self, event: Redirected) -> list[Action]:
        """A relay we are connected to says where to go (draining, or shedding load)."""
        if self.state is not ConnectionState.CONNECTED or self.current is None:
            return []
        target, note = self.redirect_target(event, self.current[1], self.relay_region)
        if target is None:
            return [Log(logging.WARNING, note)]
        self._follow(target)
        return [Log(logging.INFO, note), LeaveAfter(REDIRECT_GRACE_S)]

    def transport_changed(self, note: str) -> list[Action]:
        """The shell will open the current edge over another transport (WebSocket works
        again after SSE): leave now and open the same edge at once, no backoff."""
        if self.state is not ConnectionState.CONNECTED or self.current is None:
            return []
        if self._move_target is not None:
            return []  # already leaving (redirect, move back): that attempt picks the transport
        self._move_target = self.current
        return [Log(logging.INFO, note), Leave(CloseCode.NORMAL, "switching transport")]

    def temporary_error(self, retry_after_s: float | None = None) -> list[Action]:
        """A publish or subscribe failed with a temporary error on this connection;
        ``retry_after_s``: the relay said when to send again (``rate_limited``)."""
        if self._retry_scheduled or self.state is not ConnectionState.CONNECTED:
            return []
        self._retry_scheduled = True
        if retry_after_s is not None:
            return [RetryAfter(retry_after_s)]
        return [RetryAfter(self._retry_backoff.next_delay())]

    def retry_started(self) -> None:
        """The ``RetryAfter`` pause is over: later errors may schedule another."""
        self._retry_scheduled = False

    def move_check(self, survey: Survey | None, *, idle: bool) -> list[Action]:
        """Answer to ``WatchForMove``'s periodic survey; ``idle``: no publish in flight."""
        if survey is None or self.state is not ConnectionState.CONNECTED:
            return []
        self.survey = survey
        if not self._wants_move(idle=idle) and not idle:
            # when-idle: the next safe point may come soon (acks); wait for it, a while.
            return [AwaitIdle(self._refresh_s)]
        return self._move(idle=idle)

    def idle_check(self, *, idle: bool) -> list[Action]:
        """Answer to ``AwaitIdle``: idle now, or the wait is over."""
        if self.state is not ConnectionState.CONNECTED:
            return []
        return self._move(idle=idle)

    def connection_ended(
        self, code: int, reason: str, *, silent: bool = False, now: float
    ) -> list[Action]:
        """The connection that ``connected()`` reported ended. ``silent``: we gave it up
        because it stopped answering the keepalive (frozen, or a path gone quiet)."""
        assert self.current is not None
        self._backoff.disconnected(now)
        self._retry_scheduled = False
        region, url = self.current
        if self._move_target is not None:
            redirected = self._redirected
            self._target, self._pause = self._take_move_target(), False
            actions: list[Action] = []
            if redirected:
                actions += self._set_state(ConnectionState.DISCONNECTED)
            return actions + self._plan_round()
        if silent:
            # Its kernel may still accept connections while nothing answers: retrying it
            # first would only wait out the open timeout.
            self._target, self._avoid, self._pause = None, (region, url), True
            return [
                Log(logging.INFO, f"{url} stopped answering ({reason})"),
                *self._set_state(ConnectionState.DISCONNECTED),
                *self._plan_round(),
            ]
        note = Log(logging.INFO, f"connection to {url} closed: {code} {reason}")
        if close_policy(code) == "stop":
            state = ConnectionState.CLOSED if code == CloseCode.NORMAL else ConnectionState.FAILED
            self.state = state
            return [note, Finish(state, code, reason)]
        self._target, self._pause = (region, url), True
        return [note, *self._set_state(ConnectionState.DISCONNECTED), *self._plan_round()]

    # --- queries --------------------------------------------------------------------------

    def redirect_target(
        self, event: Redirected, source: str, source_region: str | None
    ) -> tuple[Target | None, str]:
        """Where a redirect from ``source`` (a relay of ``source_region``) sends us if we
        follow it, and a line saying why (not). Across regions our own measured order
        decides: a client that failed over to a far region and is redirected there goes
        back through its order (nearest first) instead of to a sibling far away."""
        if self.redirects_in_a_row >= MAX_REDIRECTS_IN_A_ROW:
            return None, (
                f"{source} redirects to {event.url}: ignored after "
                f"{self.redirects_in_a_row} redirects in a row"
            )
        try:
            target_base = endpoint(event.url)
        except ValueError:
            return None, f"{source} redirects to {event.url!r}: not a relay URL; ignored"
        if not self.may_open(target_base.ws_url) or (
            _secure_source(source) and not is_secure(target_base.ws_url)
        ):
            return None, (
                f"{source} redirects to {event.url}: not TLS, and this client does not "
                "downgrade; ignored"
            )
        choice = self.survey.choice if self.survey is not None else None
        first = choice.order[0] if choice is not None and choice.order else None
        if source_region is None or source_region != first:
            return None, (
                f"{source} redirects to {event.url}; ignored: {source_region} is not our "
                f"first choice ({first})"
            )
        known = self.survey.candidates if self.survey is not None else ()
        for region, url in known:
            if endpoint(url).http_base == target_base.http_base:
                if region != source_region:
                    break
                return (region, url), self._following(source, (region, url), event)
        return None, (
            f"{source} redirects to {event.url} ({event.region}), not a relay of its region "
            "that the directory lists; ignored (it gets no token)"
        )

    def may_open(self, url: str) -> bool:
        """Whether this client may open ``url`` at all (``secure_only``: TLS only)."""
        return not self._secure_only or is_secure(url)

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _following(source: str, target: Target, event: Redirected) -> str:
        return f"{source} redirects to {target[1]} ({target[0]}): {event.reason}"

    def _set_state(self, state: ConnectionState) -> list[Action]:
        if state is self.state:
            return []
        self.state = state
        return [SetState(state)]

    def _follow(self, target: Target) -> None:
        self.redirects_in_a_row += 1
        self.redirects += 1
        self._move_target = target
        self._redirected = True

    def _take_move_target(self) -> Target | None:
        target, self._move_target = self._move_target, None
        self._redirected = False
        return target

    def _got_somewhere(self) -> None:
        """An attempt reached a relay (connected, or sent elsewhere by it)."""
        self._failed_rounds = 0
        self._round_backoff.reset()

    def _begin_round(self) -> list[Action]:
        if self._need_survey:
            self._need_survey = False
            return [RefreshSurvey()]
        return self._plan_round()

    def _plan_round(self) -> list[Action]:
        listed = list(self.survey.candidates) if self.survey is not None else []
        candidates = [c for c in listed if self.may_open(c[1])]
        notes: list[Action] = []
        if len(candidates) < len(listed):
            plain = ", ".join(url for _, url in listed if not self.may_open(url))
            level = logging.DEBUG if candidates else logging.WARNING
            notes.append(Log(level, f"not opening plain-text edges (the seeds are TLS): {plain}"))
        avoid, self._avoid = self._avoid, None
        if avoid is not None and avoid in candidates:
            candidates.remove(avoid)
            candidates.append(avoid)
        if self._target is not None:
            if self._target in candidates:
                candidates.remove(self._target)
            candidates.insert(0, self._target)
        self._order, self._next = candidates, 0
        return notes + self._next_attempt()

    def _next_attempt(self) -> list[Action]:
        if self._next >= len(self._order):
            return self._round_failed()
        self.current = self._order[self._next]
        self._next += 1
        actions: list[Action] = []
        if self._pause:
            actions.append(Pause(self._backoff.next_delay()))
            self._pause = False
        if self.state is not ConnectionState.SUSPENDED:
            actions += self._set_state(ConnectionState.CONNECTING)
        actions.append(Open(*self.current))
        return actions

    def _round_failed(self) -> list[Action]:
        """Every edge failed (or none is known): refresh the directory, start over."""
        self._failed_rounds += 1
        self._need_survey = True
        self._target = None
        self._pause = True
        self.redirects_in_a_row = 0  # a new round: redirects may be worth following again
        actions: list[Action] = [RoundFailed(self._failed_rounds)]
        if self._failed_rounds >= SUSPEND_AFTER_ROUNDS:
            actions += self._set_state(ConnectionState.SUSPENDED)
            actions.append(Pause(self._round_backoff.next_delay()))
        elif not self._order:
            actions.append(Pause(self._backoff.next_delay()))
        return actions + self._begin_round()

    def _wants_move(self, *, idle: bool) -> bool:
        if self.survey is None or self.current is None:
            return False
        return should_move_back(
            self.current[0], self.survey.choice, policy=self._move_back, idle=idle
        )

    def _move(self, *, idle: bool) -> list[Action]:
        if not self._wants_move(idle=idle):
            return []
        assert self.survey is not None and self.current is not None
        choice = self.survey.choice
        nearest = choice.nearest
        target = next(
            (c for c in self.survey.candidates if c[0] == nearest and self.may_open(c[1])), None
        )
        if target is None:
            return []
        self._move_target = target
        return [
            Log(
                logging.INFO,
                f"moving from {self.current[0]} to the nearer {nearest}: {choice.reasons}",
            ),
            Leave(CloseCode.NORMAL, "moving to a nearer region"),
        ]


def _secure_source(source: str) -> bool:
    """Whether the redirecting relay's URL is TLS (a URL that does not parse says no)."""
    try:
        return is_secure(endpoint(source).ws_url)
    except ValueError:
        return False
