"""The recipient state machine as a table: the one place where queue transitions are allowed or refused.

Every change of :attr:`hisp.ports.RecipientState` in the store goes through :func:`check_transition`. The
table reads as the queue's life cycle::

    queued    --claim-->              in_flight
    in_flight --renew / reclaim-->    in_flight   (same node renews; another node reclaims an expired lease)
    in_flight --retry later-->        queued
    in_flight --complete-->           delivered   (final)
    in_flight --bounce-->             bounced     (final; a DSN to the sender is pending)
    in_flight --bounce, null sender-> failed      (final; RFC 5321 section 4.5.5: no DSN for a bounce)

Nothing leaves a final state, and nothing reaches a final state without having been claimed: a recipient
leaves the queue only delivered or bounced (or failed, when there is nobody to bounce to).

Spec: DESIGN.md sections 1 and 6.8 ("state machines are tables"), issue 5 ("recipients with per-recipient
state").
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from hisp.errors import StorageError
from hisp.ports import RecipientState

__all__ = ["TRANSITIONS", "check_transition"]

_Q = RecipientState.QUEUED
_F = RecipientState.IN_FLIGHT

#: (from, to) -> the operation that makes it. Anything not listed is refused.
TRANSITIONS: Mapping[tuple[RecipientState, RecipientState], str] = MappingProxyType(
    {
        (_Q, _F): "claim",
        (_F, _F): "renew or reclaim",
        (_F, _Q): "retry later",
        (_F, RecipientState.DELIVERED): "complete",
        (_F, RecipientState.BOUNCED): "bounce",
        (_F, RecipientState.FAILED): "bounce (null reverse-path)",
    }
)


def check_transition(old: RecipientState, new: RecipientState) -> str:
    """Allow a recipient's move from ``old`` to ``new``, or refuse it.

    :param old: the current state.
    :param new: the wanted state.
    :returns: the name of the operation that makes the move (from :data:`TRANSITIONS`).
    :raises StorageError: the move is not in :data:`TRANSITIONS`.

    Spec: DESIGN.md section 1 (a message leaves the queue only delivered or bounced).
    """
    try:
        return TRANSITIONS[(old, new)]
    except KeyError:
        raise StorageError(
            f"recipient state {old.value} -> {new.value} is not allowed", old=old.value, new=new.value
        ) from None
