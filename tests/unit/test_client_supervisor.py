"""The client's supervisor: where and when to connect, and when to leave, without sockets.

Events go in (with the time where it matters), actions come out; these tests play the
shell's part. The policy they pin is the one the integration tests prove end to end
(tests/integration/test_client_sdk.py, test_redirect.py).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.client.directory import Directory, DirectoryEdge, Survey, plan
from relay.client.session import Redirected
from relay.client.supervisor import (
    MAX_REDIRECTS_IN_A_ROW,
    REDIRECT_GRACE_S,
    SUSPENDED_FACTOR,
    Action,
    AwaitIdle,
    ConnectionState,
    Finish,
    Leave,
    LeaveAfter,
    Log,
    Open,
    Pause,
    RefreshSurvey,
    RetryAfter,
    RoundFailed,
    SetState,
    Supervisor,
    WatchForMove,
)

EAST1 = "ws://east-1.example/v1/ws"
EAST2 = "ws://east-2.example/v1/ws"
WEST = "ws://west.example/v1/ws"
EDGES = [("us-east", EAST1), ("us-east", EAST2), ("eu-west", WEST)]


def survey_of(
    rtt_ms: dict[str, float | None], edges: list[tuple[str, str]] | None = None
) -> Survey:
    """A survey of ``edges`` (default EDGES) where each region measured ``rtt_ms``."""
    edges = EDGES if edges is None else edges
    directory = Directory(
        edges[0][1], edges[0][0], None, tuple(DirectoryEdge(r, u, "up") for r, u in edges)
    )
    return plan(directory, {u: [rtt_ms.get(r)] for r, u in edges})


NEAR_EAST = survey_of({"us-east": 5.0, "eu-west": 80.0})
NEAR_WEST = survey_of({"us-east": 80.0, "eu-west": 5.0})


def supervisor(**kwargs: Any) -> Supervisor:
    kwargs.setdefault("rng", random.Random(1))
    return Supervisor(backoff_base_s=0.2, backoff_max_s=5.0, **kwargs)


def kinds(actions: list[Action]) -> list[Any]:
    """Actions without the drawn durations and log lines: what the policy decided."""
    out: list[Any] = []
    for action in actions:
        if isinstance(action, Log):
            continue
        out.append(type(action) if isinstance(action, Pause | RetryAfter) else action)
    return out


def up(
    sup: Supervisor, survey: Survey = NEAR_EAST, now: float = 0.0, watch: bool = False
) -> Supervisor:
    """Started, surveyed and connected to the first candidate (``watch``: move_back set)."""
    assert sup.start() == [RefreshSurvey()]
    assert kinds(sup.surveyed(survey)) == [Open(*survey.candidates[0])]
    assert kinds(sup.connected(survey.candidates[0][0], now)) == [
        SetState(ConnectionState.CONNECTED),
        *([WatchForMove(30.0)] if watch else []),
    ]
    return sup


def test_start_surveys_then_tries_the_nearest_edge_first() -> None:
    sup = supervisor()
    assert sup.state is ConnectionState.CONNECTING
    assert sup.start() == [RefreshSurvey()]
    assert sup.surveyed(NEAR_WEST) == [Open("eu-west", WEST)]
    assert sup.survey is NEAR_WEST


def test_a_round_tries_every_edge_without_pausing_between_them() -> None:
    sup = supervisor()
    sup.start()
    assert sup.surveyed(NEAR_EAST) == [Open("us-east", EAST1)]
    assert sup.open_failed() == [Open("us-east", EAST2)]
    assert sup.open_failed() == [Open("eu-west", WEST)]
    # Every edge failed: a fresh survey, and a pause before the next round's first attempt.
    assert kinds(sup.open_failed()) == [RoundFailed(1), RefreshSurvey()]
    assert kinds(sup.surveyed(None)) == [Pause, Open("us-east", EAST1)]  # old survey kept


def test_failed_rounds_suspend_the_client_until_something_answers() -> None:
    sup = supervisor()
    sup.start()
    sup.surveyed(NEAR_EAST)
    sup.open_failed()
    sup.open_failed()
    sup.open_failed()
    sup.surveyed(NEAR_EAST)
    sup.open_failed()
    sup.open_failed()
    actions = sup.open_failed()
    assert kinds(actions) == [
        RoundFailed(2),
        SetState(ConnectionState.SUSPENDED),
        Pause,
        RefreshSurvey(),
    ]
    pause = next(a for a in actions if isinstance(a, Pause))
    assert 0 <= pause.seconds <= 5.0 * SUSPENDED_FACTOR
    # Attempts while suspended stay suspended; a connection ends it.
    assert kinds(sup.surveyed(NEAR_EAST)) == [Pause, Open("us-east", EAST1)]
    assert sup.connected("us-east", 1.0) == [SetState(ConnectionState.CONNECTED)]


def test_nothing_known_pauses_between_surveys() -> None:
    sup = supervisor()
    sup.start()
    assert kinds(sup.surveyed(None)) == [RoundFailed(1), Pause, RefreshSurvey()]


def test_a_drop_pauses_once_then_the_same_edge_first_then_the_next_at_once() -> None:
    sup = up(supervisor())
    actions = sup.connection_ended(1001, "going_away", now=1.0)
    assert kinds(actions) == [
        SetState(ConnectionState.DISCONNECTED),
        Pause,
        SetState(ConnectionState.CONNECTING),
        Open("us-east", EAST1),
    ]
    assert sup.open_failed() == [Open("us-east", EAST2)]


def test_a_silent_relay_is_tried_last() -> None:
    sup = up(supervisor())
    actions = sup.connection_ended(1011, "keepalive ping timeout", silent=True, now=1.0)
    assert kinds(actions) == [
        SetState(ConnectionState.DISCONNECTED),
        Pause,
        SetState(ConnectionState.CONNECTING),
        Open("us-east", EAST2),
    ]
    assert any(isinstance(a, Log) and "stopped answering" in a.text for a in actions)
    assert sup.open_failed() == [Open("eu-west", WEST)]
    assert sup.open_failed() == [Open("us-east", EAST1)]


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (1000, ConnectionState.CLOSED),
        (4500, ConnectionState.FAILED),
        (1008, ConnectionState.FAILED),
    ],
)
def test_a_stop_code_finishes_the_client(code: int, state: ConnectionState) -> None:
    sup = up(supervisor())
    assert kinds(sup.connection_ended(code, "bye", now=1.0)) == [Finish(state, code, "bye")]
    assert sup.state is state


def test_a_redirect_instead_of_connected_goes_to_the_sibling_at_once() -> None:
    sup = supervisor()
    sup.start()
    sup.surveyed(NEAR_EAST)
    actions = sup.handshake_redirected(Redirected(EAST2, "us-east", "overloaded"))
    assert kinds(actions) == [Open("us-east", EAST2)]
    assert sup.redirects == 1 and sup.redirects_in_a_row == 1
    assert sup.state is ConnectionState.CONNECTING  # the redirect is part of connecting
    sup.connected("us-east", 0.0)
    assert sup.redirects_in_a_row == 0


def test_redirects_in_a_row_are_capped() -> None:
    sup = supervisor()
    sup.start()
    sup.surveyed(NEAR_EAST)
    for n in range(MAX_REDIRECTS_IN_A_ROW):
        other = EAST2 if n % 2 == 0 else EAST1
        assert kinds(sup.handshake_redirected(Redirected(other, "us-east", ""))) == [
            Open("us-east", other)
        ]
    actions = sup.handshake_redirected(Redirected(EAST2, "us-east", ""))
    assert any(isinstance(a, Log) and "in a row" in a.text for a in actions)
    assert sup.redirects == MAX_REDIRECTS_IN_A_ROW  # not followed: the round goes on
    assert kinds(actions) == [Open("us-east", EAST1)]  # the next edge, as after a failure


def test_a_redirect_from_a_region_that_is_not_the_first_choice_is_ignored() -> None:
    sup = supervisor()
    sup.start()
    sup.surveyed(NEAR_EAST)
    sup.open_failed()
    sup.open_failed()  # now on eu-west, the last resort
    actions = sup.handshake_redirected(Redirected("ws://west-2.example/v1/ws", "eu-west", ""))
    assert kinds(actions) == [RoundFailed(1), RefreshSurvey()]
    (note,) = [a for a in actions if isinstance(a, Log)]
    assert note.level == logging.WARNING and "not our first choice (us-east)" in note.text


def test_a_redirect_while_connected_leaves_after_the_grace_and_goes_there_at_once() -> None:
    sup = up(supervisor())
    actions = sup.redirect_received(Redirected(EAST2, "us-east", "draining"))
    assert kinds(actions) == [LeaveAfter(REDIRECT_GRACE_S)]
    assert kinds(sup.connection_ended(1001, "going_away", now=1.0)) == [
        SetState(ConnectionState.DISCONNECTED),
        SetState(ConnectionState.CONNECTING),
        Open("us-east", EAST2),  # no pause
    ]


def test_a_redirect_to_an_unknown_relay_of_another_region_is_ignored() -> None:
    sup = up(supervisor())
    actions = sup.redirect_received(Redirected("ws://far.example/v1/ws", "eu-west", ""))
    assert kinds(actions) == []
    assert sup.redirects == 0


def test_temporary_errors_schedule_one_retry_at_a_time() -> None:
    sup = up(supervisor())
    assert kinds(sup.temporary_error()) == [RetryAfter]
    assert sup.temporary_error() == []
    sup.retry_started()
    assert kinds(sup.temporary_error()) == [RetryAfter]
    sup.connection_ended(1001, "", now=1.0)
    assert sup.temporary_error() == []  # not connected: the next connection resends anyway


def test_move_back_immediately_leaves_for_the_nearer_region() -> None:
    sup = up(supervisor(move_back="immediately"), survey=NEAR_WEST, watch=True)
    # Already on the nearest: nothing to do (busy: it looks again at the next safe point).
    assert sup.move_check(NEAR_WEST, idle=True) == []
    assert sup.move_check(NEAR_WEST, idle=False) == [AwaitIdle(30.0)]
    assert sup.idle_check(idle=True) == []
    actions = sup.move_check(NEAR_EAST, idle=False)
    assert kinds(actions) == [Leave(1000, "moving to a nearer region")]
    # A move is not a drop: no "disconnected", no pause.
    assert kinds(sup.connection_ended(1000, "moving to a nearer region", now=5.0)) == [
        SetState(ConnectionState.CONNECTING),
        Open("us-east", EAST1),
    ]


def test_move_back_when_idle_waits_for_the_publishes_in_flight() -> None:
    sup = up(supervisor(move_back="when-idle"), survey=NEAR_WEST, watch=True)
    assert sup.move_check(NEAR_EAST, idle=False) == [AwaitIdle(30.0)]
    assert sup.idle_check(idle=False) == []  # still busy after the wait: next survey
    assert sup.move_check(NEAR_EAST, idle=False) == [AwaitIdle(30.0)]
    assert kinds(sup.idle_check(idle=True)) == [Leave(1000, "moving to a nearer region")]


def test_stay_never_watches_nor_moves() -> None:
    sup = up(supervisor())
    assert sup.move_check(NEAR_WEST, idle=True) == []


def test_nonsense_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="move_back"):
        supervisor(move_back="sometimes")
    with pytest.raises(ValueError, match="refresh_s"):
        supervisor(refresh_s=0)


# --- properties over random runs ---------------------------------------------------------

ANSWERED = (RefreshSurvey, Open, AwaitIdle, Finish)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_run_is_well_formed(data: st.DataObject) -> None:
    """Whatever happens, in any order: an action that needs an answer ends its list, the
    client only opens edges it knows of (or was sent to), a state is never "entered"
    twice in a row, pauses stay within the slow backoff's cap, a round of failures always
    ends with a fresh survey, and nothing comes after Finish."""
    sup = supervisor(
        rng=random.Random(data.draw(st.integers(0, 2**32))),
        move_back=data.draw(st.sampled_from(["stay", "when-idle", "immediately"])),
    )
    surveys = [NEAR_EAST, NEAR_WEST, None, survey_of({"us-east": None, "eu-west": 9.0})]
    known = {url for _, url in EDGES}
    states = [sup.state]
    failures_in_a_row = 0

    def check(actions: list[Action]) -> Action | None:
        """Validate one list of actions; the one that needs an answer, if any."""
        for action in actions[:-1]:
            assert not isinstance(action, ANSWERED), actions
        for action in actions:
            if isinstance(action, SetState):
                assert action.state is not states[-1], (states, actions)
                states.append(action.state)
            elif isinstance(action, Pause | RetryAfter):
                assert 0 <= action.seconds <= 5.0 * SUSPENDED_FACTOR
            elif isinstance(action, RoundFailed):
                assert action.rounds >= 1
        return actions[-1] if actions else None

    last = check(sup.start())
    for _ in range(60):
        if isinstance(last, Finish):
            assert sup.state is last.state  # the shell's finish sets it
            return
        if isinstance(last, RefreshSurvey):
            failures_in_a_row = 0
            last = check(sup.surveyed(data.draw(st.sampled_from(surveys))))
            continue
        assert isinstance(last, Open), last
        assert last.url in known, last
        failures_in_a_row += 1
        assert failures_in_a_row <= len(known) + 1, "a failed round must end in a survey"
        outcome = data.draw(st.sampled_from(["fail", "redirect", "up"]))
        if outcome == "fail":
            last = check(sup.open_failed())
            continue
        if outcome == "redirect":
            url = data.draw(st.sampled_from([EAST1, EAST2, WEST, "ws://new.example/v1/ws"]))
            region = data.draw(st.sampled_from(["us-east", "eu-west", None]))
            actions = sup.handshake_redirected(Redirected(url, region, ""))
            if any(isinstance(a, Open) and a.url == url for a in actions):
                known.add(url)
                failures_in_a_row = 0
            last = check(actions)
            continue
        failures_in_a_row = 0
        check(sup.connected(last.region, 0.0))
        assert states[-1] is ConnectionState.CONNECTED
        while True:
            step = data.draw(
                st.sampled_from(["redirect", "error", "move", "end", "silent", "stop"])
            )
            if step == "redirect":
                url = data.draw(st.sampled_from([EAST1, EAST2, WEST]))
                actions = sup.redirect_received(Redirected(url, "us-east", ""))
                check(actions)
                assert kinds(actions) in ([], [LeaveAfter(REDIRECT_GRACE_S)])
            elif step == "error":
                check(sup.temporary_error())
            elif step == "move":
                idle = data.draw(st.booleans())
                wait = check(sup.move_check(data.draw(st.sampled_from(surveys)), idle=idle))
                if isinstance(wait, AwaitIdle):
                    check(sup.idle_check(idle=data.draw(st.booleans())))
            else:
                code = 4500 if step == "stop" else 1001
                last = check(sup.connection_ended(code, "", silent=step == "silent", now=1.0))
                break


# --- where the token goes: only to edges of the directory, never downgraded -----------------

ATTACKER = "ws://attacker.example/v1/ws"
S_EAST1 = "wss://east-1.example/v1/ws"
S_WEST = "wss://west.example/v1/ws"


def test_a_redirect_to_a_url_the_directory_does_not_list_is_ignored() -> None:
    # It claims the redirecting relay's region: once, that made a forged beat enough to send
    # clients (and their tokens) to the attacker. A relay started since the survey is found
    # by the next survey instead.
    sup = supervisor()
    sup.start()
    sup.surveyed(NEAR_EAST)
    actions = sup.handshake_redirected(Redirected(ATTACKER, "us-east", "overloaded"))
    assert kinds(actions) == [Open("us-east", EAST2)]  # the round goes on, as after a failure
    (note,) = [a for a in actions if isinstance(a, Log)]
    assert note.level == logging.WARNING and "that the directory lists; ignored" in note.text
    assert sup.redirects == 0
    assert not any(isinstance(a, Open) and a.url == ATTACKER for a in actions)


def test_a_redirect_while_connected_to_an_unlisted_url_is_ignored() -> None:
    sup = up(supervisor())
    assert kinds(sup.redirect_received(Redirected(ATTACKER, "us-east", "draining"))) == []
    assert sup.redirects == 0
    # The relay then closes: the client goes on in its own order, never to the attacker.
    actions = sup.connection_ended(1001, "going_away", now=1.0)
    assert [a.url for a in actions if isinstance(a, Open)] == [EAST1]


def test_a_redirect_never_downgrades_wss_to_ws() -> None:
    # The directory lists a plain sibling (say, an internal address): a wss relay's redirect
    # there is still refused, so the token never crosses the network in clear.
    edges = [("us-east", S_EAST1), ("us-east", EAST2), ("eu-west", S_WEST)]
    sup = supervisor()
    sup.start()
    sup.surveyed(survey_of({"us-east": 5.0, "eu-west": 80.0}, edges))
    actions = sup.handshake_redirected(Redirected(EAST2, "us-east", "overloaded"))
    assert sup.redirects == 0
    (note,) = [a for a in actions if isinstance(a, Log)]
    assert "does not downgrade" in note.text
    target, _ = sup.redirect_target(Redirected(EAST2, "us-east", ""), EAST1, "us-east")
    assert target == ("us-east", EAST2)  # from a plain relay, a listed plain sibling is fine


def test_with_tls_seeds_plain_edges_are_never_opened() -> None:
    edges = [("us-east", EAST1), ("us-east", S_EAST1), ("eu-west", WEST), ("eu-west", S_WEST)]
    sup = supervisor(secure_only=True)
    sup.start()
    actions = sup.surveyed(survey_of({"us-east": 5.0, "eu-west": 80.0}, edges))
    assert kinds(actions) == [Open("us-east", S_EAST1)]
    assert sup.open_failed() == [Open("eu-west", S_WEST)]
    assert kinds(sup.open_failed()) == [RoundFailed(1), RefreshSurvey()]
    # Nothing but plain edges: nothing to open, and a warning that says why.
    plain = survey_of({"us-east": 5.0}, [("us-east", EAST1)])
    actions = sup.surveyed(plain)
    assert not any(isinstance(a, Open) for a in actions)
    assert any(
        isinstance(a, Log) and a.level == logging.WARNING and "plain-text" in a.text
        for a in actions
    )
    # Nor by a redirect, even to a listed edge.
    assert not sup.may_open(EAST1) and sup.may_open(S_EAST1)


def test_with_tls_seeds_moving_back_goes_only_to_a_tls_edge() -> None:
    edges = [("us-east", EAST1), ("eu-west", S_WEST)]
    sup = supervisor(secure_only=True, move_back="immediately")
    sup.start()
    sup.surveyed(survey_of({"us-east": None, "eu-west": 80.0}, edges))
    sup.connected("eu-west", 0.0)
    nearer_but_plain = survey_of({"us-east": 5.0, "eu-west": 80.0}, edges)
    assert kinds(sup.move_check(nearer_but_plain, idle=True)) == []
