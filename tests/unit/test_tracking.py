"""Unit tests for hisp.core.tracking: the transition tables and the DN-7, DN-8, DN-9, DN-10 scenarios."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from conftest import AT, fixture_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisp.core.dsn import NO_DISPATCHED_MDN, NO_PROCESSED_MDN, DsnRecipient, parse_dsn
from hisp.core.mdn import Mdn, parse_mdn
from hisp.core.tracking import (
    DEFAULT_TIMEOUT,
    TABLES,
    TERMINAL,
    Action,
    Event,
    MessageTrack,
    Mode,
    State,
    Transition,
    event_for_dsn,
    event_for_mdn,
    is_complete,
    step,
)
from hisp.errors import HispError

S, E, A = State, Event, Action
MINUTE = timedelta(minutes=1)

# --- the tables, cell by cell ------------------------------------------------------------------------------

#: Every transition that changes the state, per mode: (from, event) -> (to, action, status).
MOVES = {
    Mode.RELIABLE: {
        (S.SENT, E.PROCESSED): (S.PROCESSED, A.FORWARD, None),
        (S.SENT, E.DISPATCHED): (S.DISPATCHED, A.FORWARD, None),
        (S.SENT, E.FAILED): (S.FAILED, A.FORWARD, None),
        (S.SENT, E.TIMEOUT): (S.TIMED_OUT, A.EMIT_DSN, NO_PROCESSED_MDN),
        (S.PROCESSED, E.DISPATCHED): (S.DISPATCHED, A.FORWARD, None),
        (S.PROCESSED, E.FAILED): (S.FAILED, A.FORWARD, None),
        (S.PROCESSED, E.TIMEOUT): (S.TIMED_OUT, A.EMIT_DSN, NO_DISPATCHED_MDN),
        (S.DELIVERED, E.PROCESSED): (S.PROCESSED, A.FORWARD, None),
        (S.DELIVERED, E.DISPATCHED): (S.DISPATCHED, A.FORWARD, None),
        (S.DELIVERED, E.FAILED): (S.FAILED, A.FORWARD, None),
        (S.DELIVERED, E.TIMEOUT): (S.TIMED_OUT, A.EMIT_DSN, NO_PROCESSED_MDN),
    },
    Mode.GENERAL: {
        (S.SENT, E.PROCESSED): (S.PROCESSED, A.FORWARD, None),
        (S.SENT, E.DISPATCHED): (S.DISPATCHED, A.FORWARD, None),
        (S.SENT, E.DISPATCHED_PLAIN): (S.DISPATCHED, A.FORWARD, None),
        (S.SENT, E.FAILED): (S.FAILED, A.FORWARD, None),
        (S.SENT, E.DELIVERED): (S.DELIVERED, A.FORWARD, None),
        (S.SENT, E.TIMEOUT): (S.TIMED_OUT, A.EMIT_DSN, NO_PROCESSED_MDN),
        (S.DELIVERED, E.PROCESSED): (S.PROCESSED, A.FORWARD, None),
        (S.DELIVERED, E.DISPATCHED): (S.DISPATCHED, A.FORWARD, None),
        (S.DELIVERED, E.DISPATCHED_PLAIN): (S.DISPATCHED, A.FORWARD, None),
        (S.DELIVERED, E.FAILED): (S.FAILED, A.FORWARD, None),
        (S.PROCESSED, E.DISPATCHED): (S.DISPATCHED, A.FORWARD, None),
        (S.PROCESSED, E.DISPATCHED_PLAIN): (S.DISPATCHED, A.FORWARD, None),
        (S.PROCESSED, E.FAILED): (S.FAILED, A.FORWARD, None),
    },
}

#: Refused cells whose action is not RECORD: duplicates (DROP), forwarded informational notices, idle timers.
NOT_RECORDED = {
    Mode.RELIABLE: {
        (S.PROCESSED, E.PROCESSED): A.DROP,
        (S.DELIVERED, E.DELIVERED): A.DROP,
        (S.DISPATCHED, E.DISPATCHED): A.DROP,
        (S.FAILED, E.FAILED): A.DROP,
        (S.SENT, E.DELAYED): A.FORWARD,
        (S.PROCESSED, E.DELAYED): A.FORWARD,
    },
    Mode.GENERAL: {
        (S.PROCESSED, E.PROCESSED): A.DROP,
        (S.DELIVERED, E.DELIVERED): A.DROP,
        (S.DISPATCHED, E.DISPATCHED): A.DROP,
        (S.DISPATCHED, E.DISPATCHED_PLAIN): A.DROP,
        (S.FAILED, E.FAILED): A.DROP,
        (S.SENT, E.DELAYED): A.FORWARD,
        (S.PROCESSED, E.TIMEOUT): A.IGNORE,
        (S.DELIVERED, E.TIMEOUT): A.IGNORE,
    },
}

CELLS = [(mode, state, event) for mode in Mode for state in State for event in Event]


def expected(mode: Mode, state: State, event: Event) -> Transition:
    if (state, event) in MOVES[mode]:
        return Transition(*MOVES[mode][(state, event)])
    if event is E.DISPLAYED:
        return Transition(state, A.FORWARD)  # read receipts are exempt from DN-8
    if event is E.TIMEOUT and state in TERMINAL:
        return Transition(state, A.IGNORE)
    return Transition(state, NOT_RECORDED[mode].get((state, event), A.RECORD))


def test_tables_are_total() -> None:
    for mode in Mode:
        assert set(TABLES[mode]) == set(State)
        for state in State:
            assert set(TABLES[mode][state]) == set(Event)


@pytest.mark.parametrize(("mode", "state", "event"), CELLS, ids=[f"{m}-{s}-{e}" for m, s, e in CELLS])
def test_every_cell(mode: Mode, state: State, event: Event) -> None:
    assert step(mode, state, event) == expected(mode, state, event)


def test_terminal_states_are_never_left() -> None:
    for mode, state, event in CELLS:
        if state in TERMINAL:
            transition = step(mode, state, event)
            assert transition.state is state
            assert transition.action in (A.RECORD, A.DROP, A.IGNORE) or event is E.DISPLAYED


def test_consume_processed_only_changes_forwarded_processed() -> None:
    assert step(Mode.RELIABLE, S.SENT, E.PROCESSED, consume_processed=True) == Transition(S.PROCESSED, A.CONSUME)
    assert step(Mode.GENERAL, S.SENT, E.PROCESSED, consume_processed=True) == Transition(S.PROCESSED, A.CONSUME)
    assert step(Mode.RELIABLE, S.PROCESSED, E.PROCESSED, consume_processed=True).action is A.DROP
    assert step(Mode.RELIABLE, S.PROCESSED, E.DISPATCHED, consume_processed=True).action is A.FORWARD


def test_is_complete() -> None:
    assert [s for s in State if is_complete(Mode.RELIABLE, s)] == [S.DISPATCHED, S.FAILED, S.TIMED_OUT]
    assert [s for s in State if not is_complete(Mode.GENERAL, s)] == [S.SENT]


# --- events from parsed notifications ------------------------------------------------------------------------


def test_event_for_mdn() -> None:
    assert event_for_mdn(parse_mdn(fixture_bytes("nhin-d/MDN.eml"))) is E.PROCESSED
    assert event_for_mdn(parse_mdn(fixture_bytes("nhin-d/dispatched-MDN-named-DSN.eml"))) is E.DISPATCHED
    assert event_for_mdn(Mdn(disposition="dispatched")) is E.DISPATCHED_PLAIN
    assert event_for_mdn(Mdn(disposition="failed")) is E.FAILED
    assert event_for_mdn(Mdn(disposition="denied")) is E.FAILED
    assert event_for_mdn(Mdn(disposition="processed", disposition_modifiers=("error",))) is E.FAILED
    assert event_for_mdn(Mdn(disposition="displayed")) is E.DISPLAYED
    assert event_for_mdn(Mdn(disposition="deleted")) is E.OTHER
    assert event_for_mdn(Mdn()) is E.OTHER


def test_event_for_dsn() -> None:
    assert event_for_dsn(parse_dsn(fixture_bytes("direct-ri-java/messages/DSNMessage.txt")).recipients[0]) is E.FAILED
    assert event_for_dsn(DsnRecipient("a@b", "2.0.0", action="Delivered")) is E.DELIVERED
    assert event_for_dsn(DsnRecipient("a@b", "2.0.0", action="relayed")) is E.DELIVERED
    assert event_for_dsn(DsnRecipient("a@b", "4.0.0", action="delayed")) is E.DELAYED
    assert event_for_dsn(DsnRecipient("a@b", None, action=None)) is E.OTHER


# --- scenarios ---------------------------------------------------------------------------------------------


def track(*recipients: str, reliable: bool = True, **kwargs: object) -> MessageTrack:
    return MessageTrack.start("<m@a.org>", recipients or ("b@b.org",), at=AT, reliable=reliable, **kwargs)  # type: ignore[arg-type]


def test_start_validation() -> None:
    assert track().timeout == DEFAULT_TIMEOUT == timedelta(hours=1)
    assert track().deadline == AT + timedelta(hours=1)
    with pytest.raises(HispError):
        MessageTrack.start("<m@a>", [], at=AT, reliable=True)
    with pytest.raises(HispError):
        MessageTrack.start("<m@a>", ["b@b"], at=datetime(2026, 1, 1), reliable=True)
    with pytest.raises(HispError):
        MessageTrack.start("<m@a>", ["b@b"], at=AT, reliable=True, timeout=timedelta(0))


def test_dn7_happy_path_reliable() -> None:
    t = track()
    assert t.apply("B@B.org", E.PROCESSED, AT + MINUTE) == Transition(S.PROCESSED, A.FORWARD)
    assert not t.complete
    assert t.apply("b@b.org", E.DISPATCHED, AT + 2 * MINUTE) == Transition(S.DISPATCHED, A.FORWARD)
    assert t.complete
    assert t.expire(AT + 2 * DEFAULT_TIMEOUT) == []
    assert [(r.event, r.before, r.after) for r in t.recipients["b@b.org"].history] == [
        (E.PROCESSED, S.SENT, S.PROCESSED),
        (E.DISPATCHED, S.PROCESSED, S.DISPATCHED),
    ]


def test_dn7_dispatched_without_extension_does_not_complete() -> None:
    t = track()
    t.apply("b@b.org", E.PROCESSED, AT)
    assert t.apply("b@b.org", E.DISPATCHED_PLAIN, AT + MINUTE) == Transition(S.PROCESSED, A.RECORD)
    assert t.incomplete() == ["b@b.org"]
    assert t.expire(AT + DEFAULT_TIMEOUT) == [("b@b.org", Transition(S.TIMED_OUT, A.EMIT_DSN, NO_DISPATCHED_MDN))]


def test_dn7_failure_notice_completes() -> None:
    t = track()
    t.apply("b@b.org", E.PROCESSED, AT)
    assert t.apply("b@b.org", E.FAILED, AT + MINUTE) == Transition(S.FAILED, A.FORWARD)
    assert t.complete
    assert t.apply("b@b.org", E.FAILED, AT + 2 * MINUTE).action is A.DROP  # the DSN after the failed MDN


def test_never_any_mdn_times_out_with_5_4_71() -> None:
    t = track()
    assert t.expire(AT + DEFAULT_TIMEOUT - timedelta(seconds=1)) == []
    assert t.expire(AT + DEFAULT_TIMEOUT) == [("b@b.org", Transition(S.TIMED_OUT, A.EMIT_DSN, NO_PROCESSED_MDN))]
    assert t.expire(AT + 2 * DEFAULT_TIMEOUT) == []  # only once
    assert t.complete


def test_dn9_timer_counts_from_the_original_send() -> None:
    t = track(timeout=timedelta(minutes=10))
    t.apply("b@b.org", E.PROCESSED, AT + timedelta(minutes=9))  # an event does not restart the timer
    assert t.expire(AT + timedelta(minutes=10))[0][1].status == NO_DISPATCHED_MDN


def test_dn8_late_dispatched_after_timeout_is_recorded_not_forwarded() -> None:
    t = track()
    t.apply("b@b.org", E.PROCESSED, AT)
    assert len(t.expire(AT + DEFAULT_TIMEOUT)) == 1
    late = t.apply("b@b.org", E.DISPATCHED, AT + DEFAULT_TIMEOUT + MINUTE)
    assert late == Transition(S.TIMED_OUT, A.RECORD)
    assert t.recipients["b@b.org"].history[-1].event is E.DISPATCHED  # recorded


def test_dn8_duplicates_are_dropped() -> None:
    t = track()
    assert t.apply("b@b.org", E.PROCESSED, AT).action is A.FORWARD
    assert t.apply("b@b.org", E.PROCESSED, AT).action is A.DROP
    assert t.apply("b@b.org", E.DISPATCHED, AT).action is A.FORWARD
    assert t.apply("b@b.org", E.DISPATCHED, AT).action is A.DROP


def test_dispatched_before_processed_completes_and_late_processed_is_recorded() -> None:
    t = track()
    assert t.apply("b@b.org", E.DISPATCHED, AT).state is S.DISPATCHED
    assert t.apply("b@b.org", E.PROCESSED, AT + MINUTE) == Transition(S.DISPATCHED, A.RECORD)


def test_displayed_is_exempt() -> None:
    t = track()
    t.expire(AT + DEFAULT_TIMEOUT)
    assert t.apply("b@b.org", E.DISPLAYED, AT + 2 * DEFAULT_TIMEOUT) == Transition(S.TIMED_OUT, A.FORWARD)


def test_as22_two_recipients_one_failing() -> None:
    t = track("good@b.org", "bad@c.org")
    assert t.apply("bad@c.org", E.FAILED, AT) == Transition(S.FAILED, A.FORWARD)
    t.apply("good@b.org", E.PROCESSED, AT + MINUTE)
    t.apply("good@b.org", E.DISPATCHED, AT + MINUTE)
    assert t.complete and t.expire(AT + DEFAULT_TIMEOUT) == []


def test_timeout_lists_only_incomplete_recipients() -> None:
    t = track("a@b.org", "c@d.org", "e@f.org")
    t.apply("a@b.org", E.DISPATCHED, AT)
    t.apply("c@d.org", E.PROCESSED, AT)
    assert t.expire(AT + DEFAULT_TIMEOUT) == [
        ("c@d.org", Transition(S.TIMED_OUT, A.EMIT_DSN, NO_DISPATCHED_MDN)),
        ("e@f.org", Transition(S.TIMED_OUT, A.EMIT_DSN, NO_PROCESSED_MDN)),
    ]


def test_unknown_recipient_is_unmatched() -> None:
    assert track().apply("stranger@x.org", E.PROCESSED, AT) is None


def test_dn10_general_any_notification_completes() -> None:
    t = track("a@b.org", "c@d.org", reliable=False)
    assert t.apply("a@b.org", E.PROCESSED, AT).action is A.FORWARD
    assert t.apply("c@d.org", E.DELIVERED, AT).action is A.FORWARD
    assert t.complete
    assert t.expire(AT + DEFAULT_TIMEOUT) == []
    # a later failure is still forwarded once (DN-5), and then nothing more
    assert t.apply("a@b.org", E.FAILED, AT + MINUTE) == Transition(S.FAILED, A.FORWARD)
    assert t.apply("a@b.org", E.DISPATCHED_PLAIN, AT + MINUTE).action is A.RECORD


def test_dn10_consume_processed() -> None:
    t = track(reliable=False, consume_processed=True)
    assert t.apply("b@b.org", E.PROCESSED, AT) == Transition(S.PROCESSED, A.CONSUME)
    assert t.complete


def test_dn10_general_timeout() -> None:
    t = track(reliable=False)
    assert t.expire(AT + DEFAULT_TIMEOUT) == [("b@b.org", Transition(S.TIMED_OUT, A.EMIT_DSN, NO_PROCESSED_MDN))]


TERMINAL_NOTICE_EVENTS = {E.DISPATCHED, E.DISPATCHED_PLAIN, E.FAILED, E.TIMEOUT}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(Mode)), st.lists(st.sampled_from(list(Event)), max_size=20), st.booleans())
def test_dn8_at_most_one_terminal_notice(mode: Mode, events: list[Event], consume: bool) -> None:
    state = S.SENT
    terminal_notices = 0
    for event in events:
        transition = step(mode, state, event, consume_processed=consume)
        exempt = event is E.DISPLAYED  # read receipts are exempt from DN-8
        if transition.state in TERMINAL and transition.action in (A.FORWARD, A.EMIT_DSN) and not exempt:
            assert state not in TERMINAL
            terminal_notices += 1
        if state in TERMINAL:
            assert transition.state is state
        state = transition.state
    assert terminal_notices <= 1
    assert sum(1 for e in events if e in TERMINAL_NOTICE_EVENTS) >= terminal_notices
