"""The recipient state machine table: every allowed transition passes, every other one raises StorageError."""

from __future__ import annotations

import itertools

import pytest

from hisp.adapters.storage.states import TRANSITIONS, check_transition
from hisp.errors import StorageError
from hisp.ports import RecipientState

ALL_PAIRS = list(itertools.product(RecipientState, RecipientState))
ALLOWED = [pair for pair in ALL_PAIRS if pair in TRANSITIONS]
FORBIDDEN = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]


def _id(pair: tuple[RecipientState, RecipientState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_table_is_the_documented_life_cycle() -> None:
    q, f = RecipientState.QUEUED, RecipientState.IN_FLIGHT
    assert set(TRANSITIONS) == {
        (q, f), (f, f), (f, q), (f, RecipientState.DELIVERED), (f, RecipientState.BOUNCED), (f, RecipientState.FAILED)
    }
    assert len(ALLOWED) + len(FORBIDDEN) == len(RecipientState) ** 2


@pytest.mark.parametrize("pair", ALLOWED, ids=_id)
def test_allowed(pair: tuple[RecipientState, RecipientState]) -> None:
    assert check_transition(*pair) == TRANSITIONS[pair]


@pytest.mark.parametrize("pair", FORBIDDEN, ids=_id)
def test_forbidden(pair: tuple[RecipientState, RecipientState]) -> None:
    with pytest.raises(StorageError, match="not allowed") as info:
        check_transition(*pair)
    assert info.value.context == {"old": pair[0].value, "new": pair[1].value}


@pytest.mark.parametrize("state", [s for s in RecipientState if s.final], ids=lambda s: s.value)
def test_final_states_are_never_left(state: RecipientState) -> None:
    for new in RecipientState:
        with pytest.raises(StorageError):
            check_transition(state, new)


@pytest.mark.parametrize("state", [s for s in RecipientState if s.final], ids=lambda s: s.value)
def test_final_states_are_reached_only_from_in_flight(state: RecipientState) -> None:
    assert [old for old, new in TRANSITIONS if new is state] == [RecipientState.IN_FLIGHT]
