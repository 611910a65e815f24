"""Timely and reliable message tracking: a table-driven state machine per message and recipient.

Pure: no clock, no storage, no mail. Callers pass the time (``at``) and the events (from parsed MDNs and
DSNs, or the timer), and act on the returned :class:`Transition`: forward the notification to the edge,
consume it, record it only, drop it, or emit a DSN with the given status.

Each recipient of an outgoing message moves ``sent -> processed -> dispatched``, or to ``failed``, or to
``timed-out``. Two tables, one per :class:`Mode`:

* ``reliable`` (the sender asked for final-destination delivery, DN-7): complete on processed **and** a
  dispatched MDN with the ``X-DIRECT-FINAL-DESTINATION-DELIVERY`` extension, or on a failure notice.
  MDNs may arrive out of order: a dispatched MDN with the extension can only come from a receiving HISP that
  processed the message (DN-3), so it completes the recipient on its own and a late processed MDN is then
  recorded, not forwarded. A dispatched MDN without the extension does not count (recorded).
* ``general`` (no request, DN-10): complete on any MDN or DSN; a later dispatched or failed notice is
  still forwarded once.

Terminal states (``dispatched``, ``failed``, ``timed-out``) are entered at most once and never left, and
only the notice that enters one reaches the edge: at most one terminal notice per message and recipient
(DN-8). Duplicates are dropped; late notices are recorded. ``displayed`` MDNs are exempt and always
forwarded. The timeout is measured from the original send, not from the last event (DN-9).

Spec: DN-7, DN-8, DN-9, DN-10; Delivery Notification IG v1.0; RI TimelyAndReliableCompletionCondition;
requirements section 2; conformance.md sections 3.2-3.3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from hisp.core.dsn import NO_DISPATCHED_MDN, NO_PROCESSED_MDN, DsnRecipient
from hisp.core.mdn import Mdn
from hisp.errors import HispError

__all__ = [
    "DEFAULT_TIMEOUT",
    "TABLES",
    "TERMINAL",
    "Action",
    "Event",
    "MessageTrack",
    "Mode",
    "RecipientTrack",
    "Record",
    "State",
    "Transition",
    "correlation_key",
    "event_for_dsn",
    "event_for_mdn",
    "is_complete",
    "step",
]

#: The default notification timeout, measured from the original send (DN-9; the RI's default).
DEFAULT_TIMEOUT = timedelta(hours=1)


class Mode(StrEnum):
    """Which completion rule applies to a message.

    Spec: DN-7 (reliable), DN-10 (general).
    """

    #: The sender asked for final-destination delivery (DN-7).
    RELIABLE = "reliable"
    #: No request: any notification completes a recipient (DN-10).
    GENERAL = "general"


class State(StrEnum):
    """A recipient's tracking state.

    Spec: DN-7; issue 6 (sent -> processed -> dispatched, or failed, or timed out).
    """

    SENT = "sent"
    #: A delivered/relayed DSN arrived (general mode only).
    DELIVERED = "delivered"
    PROCESSED = "processed"
    DISPATCHED = "dispatched"
    FAILED = "failed"
    TIMED_OUT = "timed-out"


class Event(StrEnum):
    """What happened to a recipient.

    Spec: DN-7 (what counts as dispatched or failure), DN-8 (displayed exempt), DN-9 (timeout).
    """

    PROCESSED = "processed"
    #: A dispatched MDN carrying the X-DIRECT-FINAL-DESTINATION-DELIVERY extension.
    DISPATCHED = "dispatched"
    #: A dispatched MDN without the extension.
    DISPATCHED_PLAIN = "dispatched-plain"
    #: A failed, denied or error MDN, or a DSN with Action: failed.
    FAILED = "failed"
    #: A DSN with Action: delivered, relayed or expanded.
    DELIVERED = "delivered"
    #: A DSN with Action: delayed.
    DELAYED = "delayed"
    #: A displayed MDN (read receipt; exempt from DN-8).
    DISPLAYED = "displayed"
    #: Any other notification (deleted, unknown, unreadable disposition).
    OTHER = "other"
    #: The timer expired.
    TIMEOUT = "timeout"


class Action(StrEnum):
    """What the caller does with the event.

    Spec: DN-8 (forward at most one terminal notice), DN-10 (consume processed), DN-7 (timeout DSN).
    """

    #: Forward the notification to the edge (and record it).
    FORWARD = "forward"
    #: Record the processed MDN and do not forward it (``consume_processed``, DN-10).
    CONSUME = "consume"
    #: Record the notification; do not forward it (late, or not relevant to the completion rule).
    RECORD = "record"
    #: A duplicate: neither forward nor act on it.
    DROP = "drop"
    #: Send the edge a DSN with :attr:`Transition.status` (timeout).
    EMIT_DSN = "emit-dsn"
    #: Nothing to do (a timer that fired for a finished recipient).
    IGNORE = "ignore"


#: States that are never left.
TERMINAL = frozenset({State.DISPATCHED, State.FAILED, State.TIMED_OUT})


@dataclass(frozen=True)
class Transition:
    """The outcome of one event: the new state, what to do, and the DSN status for :attr:`Action.EMIT_DSN`.

    Spec: DN-7, DN-8; requirements section 8.4 (5.4.71, 5.4.72).
    """

    state: State
    action: Action
    status: str | None = None


def _t(state: State, action: Action, status: str | None = None) -> Transition:
    return Transition(state, action, status)


S, E, A = State, Event, Action


def _finished(state: State, same: Iterable[Event]) -> dict[Event, Transition]:
    """A terminal state's row: the events of ``same`` are duplicates, everything else is late."""
    duplicates = set(same)
    row = {event: _t(state, A.DROP if event in duplicates else A.RECORD) for event in Event}
    row[E.DISPLAYED] = _t(state, A.FORWARD)
    row[E.TIMEOUT] = _t(state, A.IGNORE)
    return row


_RELIABLE: dict[State, dict[Event, Transition]] = {
    S.SENT: {
        E.PROCESSED: _t(S.PROCESSED, A.FORWARD),
        E.DISPATCHED: _t(S.DISPATCHED, A.FORWARD),
        E.DISPATCHED_PLAIN: _t(S.SENT, A.RECORD),
        E.FAILED: _t(S.FAILED, A.FORWARD),
        E.DELIVERED: _t(S.SENT, A.RECORD),
        E.DELAYED: _t(S.SENT, A.FORWARD),
        E.DISPLAYED: _t(S.SENT, A.FORWARD),
        E.OTHER: _t(S.SENT, A.RECORD),
        E.TIMEOUT: _t(S.TIMED_OUT, A.EMIT_DSN, NO_PROCESSED_MDN),
    },
    S.PROCESSED: {
        E.PROCESSED: _t(S.PROCESSED, A.DROP),
        E.DISPATCHED: _t(S.DISPATCHED, A.FORWARD),
        E.DISPATCHED_PLAIN: _t(S.PROCESSED, A.RECORD),
        E.FAILED: _t(S.FAILED, A.FORWARD),
        E.DELIVERED: _t(S.PROCESSED, A.RECORD),
        E.DELAYED: _t(S.PROCESSED, A.FORWARD),
        E.DISPLAYED: _t(S.PROCESSED, A.FORWARD),
        E.OTHER: _t(S.PROCESSED, A.RECORD),
        E.TIMEOUT: _t(S.TIMED_OUT, A.EMIT_DSN, NO_DISPATCHED_MDN),
    },
    # Unreachable in reliable mode (a delivered DSN does not move the state); a total table all the same.
    S.DELIVERED: {
        E.PROCESSED: _t(S.PROCESSED, A.FORWARD),
        E.DISPATCHED: _t(S.DISPATCHED, A.FORWARD),
        E.DISPATCHED_PLAIN: _t(S.DELIVERED, A.RECORD),
        E.FAILED: _t(S.FAILED, A.FORWARD),
        E.DELIVERED: _t(S.DELIVERED, A.DROP),
        E.DELAYED: _t(S.DELIVERED, A.RECORD),
        E.DISPLAYED: _t(S.DELIVERED, A.FORWARD),
        E.OTHER: _t(S.DELIVERED, A.RECORD),
        E.TIMEOUT: _t(S.TIMED_OUT, A.EMIT_DSN, NO_PROCESSED_MDN),
    },
    S.DISPATCHED: _finished(S.DISPATCHED, [E.DISPATCHED]),
    S.FAILED: _finished(S.FAILED, [E.FAILED]),
    S.TIMED_OUT: _finished(S.TIMED_OUT, []),
}

_GENERAL: dict[State, dict[Event, Transition]] = {
    S.SENT: {
        E.PROCESSED: _t(S.PROCESSED, A.FORWARD),
        E.DISPATCHED: _t(S.DISPATCHED, A.FORWARD),
        E.DISPATCHED_PLAIN: _t(S.DISPATCHED, A.FORWARD),
        E.FAILED: _t(S.FAILED, A.FORWARD),
        E.DELIVERED: _t(S.DELIVERED, A.FORWARD),
        E.DELAYED: _t(S.SENT, A.FORWARD),
        E.DISPLAYED: _t(S.SENT, A.FORWARD),
        E.OTHER: _t(S.SENT, A.RECORD),
        E.TIMEOUT: _t(S.TIMED_OUT, A.EMIT_DSN, NO_PROCESSED_MDN),
    },
    S.DELIVERED: {
        E.PROCESSED: _t(S.PROCESSED, A.FORWARD),
        E.DISPATCHED: _t(S.DISPATCHED, A.FORWARD),
        E.DISPATCHED_PLAIN: _t(S.DISPATCHED, A.FORWARD),
        E.FAILED: _t(S.FAILED, A.FORWARD),
        E.DELIVERED: _t(S.DELIVERED, A.DROP),
        E.DELAYED: _t(S.DELIVERED, A.RECORD),
        E.DISPLAYED: _t(S.DELIVERED, A.FORWARD),
        E.OTHER: _t(S.DELIVERED, A.RECORD),
        E.TIMEOUT: _t(S.DELIVERED, A.IGNORE),
    },
    S.PROCESSED: {
        E.PROCESSED: _t(S.PROCESSED, A.DROP),
        E.DISPATCHED: _t(S.DISPATCHED, A.FORWARD),
        E.DISPATCHED_PLAIN: _t(S.DISPATCHED, A.FORWARD),
        E.FAILED: _t(S.FAILED, A.FORWARD),
        E.DELIVERED: _t(S.PROCESSED, A.RECORD),
        E.DELAYED: _t(S.PROCESSED, A.RECORD),
        E.DISPLAYED: _t(S.PROCESSED, A.FORWARD),
        E.OTHER: _t(S.PROCESSED, A.RECORD),
        E.TIMEOUT: _t(S.PROCESSED, A.IGNORE),
    },
    S.DISPATCHED: _finished(S.DISPATCHED, [E.DISPATCHED, E.DISPATCHED_PLAIN]),
    S.FAILED: _finished(S.FAILED, [E.FAILED]),
    S.TIMED_OUT: _finished(S.TIMED_OUT, []),
}

#: The transition tables: ``TABLES[mode][state][event]``; total over every state and event.
TABLES: Mapping[Mode, Mapping[State, Mapping[Event, Transition]]] = MappingProxyType(
    {
        Mode.RELIABLE: MappingProxyType({s: MappingProxyType(r) for s, r in _RELIABLE.items()}),
        Mode.GENERAL: MappingProxyType({s: MappingProxyType(r) for s, r in _GENERAL.items()}),
    }
)


def step(mode: Mode, state: State, event: Event, *, consume_processed: bool = False) -> Transition:
    """The table's transition for ``event`` in ``state``.

    :param mode: the completion rule.
    :param state: the recipient's current state.
    :param event: what happened.
    :param consume_processed: a forwarded processed MDN is consumed instead (DN-10, RI ``ConsumeMDNProcessed``).
    :returns: the new state and the action.

    Spec: DN-7, DN-8, DN-10.
    """
    transition = TABLES[mode][state][event]
    if consume_processed and event is Event.PROCESSED and transition.action is Action.FORWARD:
        return Transition(transition.state, Action.CONSUME)
    return transition


def is_complete(mode: Mode, state: State) -> bool:
    """Whether a recipient needs no timer any more (it succeeded, failed or timed out).

    Spec: DN-7 (reliable), DN-10 (general).
    """
    if mode is Mode.RELIABLE:
        return state in TERMINAL
    return state is not State.SENT


def correlation_key(message_id: str) -> str:
    """The form in which Message-IDs are compared: angle brackets, whitespace and case removed.

    ``<ABC@x.org>``, `` abc@x.org `` and ``<abc@X.ORG>`` give the same key, as peers rewrite case and
    brackets in Original-Message-ID and X-Original-Message-ID.

    :param message_id: a Message-ID as found in a header or notification field.
    :returns: the key; ``""`` for a blank value.

    Spec: DN-2 (the Message-ID is the correlation key).
    """
    return "".join(message_id.split()).strip("<>").lower()


def event_for_mdn(mdn: Mdn) -> Event:
    """The tracking event of a parsed MDN.

    Spec: DN-7 (failed, denied or error count as failures; dispatched counts with the extension only).
    """
    if mdn.is_failure:
        return Event.FAILED
    if mdn.disposition == "processed":
        return Event.PROCESSED
    if mdn.disposition == "dispatched":
        return Event.DISPATCHED if mdn.final_delivery else Event.DISPATCHED_PLAIN
    if mdn.disposition == "displayed":
        return Event.DISPLAYED
    return Event.OTHER


def event_for_dsn(recipient: DsnRecipient) -> Event:
    """The tracking event of one recipient block of a parsed DSN.

    Spec: RFC 3464 section 2.3.3; DN-6, DN-7.
    """
    action = (recipient.action or "").strip().lower()
    if action == "failed":
        return Event.FAILED
    if action in ("delivered", "relayed", "expanded"):
        return Event.DELIVERED
    if action == "delayed":
        return Event.DELAYED
    return Event.OTHER


@dataclass(frozen=True)
class Record:
    """One event applied to a recipient, for the delivery-status history.

    Spec: issue 6 (delivery status is data: the notifications received per recipient).
    """

    at: datetime
    event: Event
    before: State
    after: State
    action: Action
    status: str | None = None
    #: What the event was, for the history (e.g. ``"MDN <id> from b@x.org"``), one line, bounded.
    detail: str = ""


@dataclass
class RecipientTrack:
    """One recipient's state and history.

    Spec: DN-7 (tracked per recipient).
    """

    address: str
    state: State = State.SENT
    history: list[Record] = field(default_factory=list)


@dataclass
class MessageTrack:
    """The tracking of one outgoing message: its recipients, mode and deadline.

    Mutable on purpose: :meth:`apply` and :meth:`expire` update it; storage persists it.

    :ivar message_id: the correlation key (DN-2).
    :ivar sent_at: when the original was sent; the deadline counts from here (DN-9).
    :ivar mode: the completion rule.
    :ivar recipients: keyed by lower-case address.
    :ivar timeout: the notification timeout (default one hour).
    :ivar consume_processed: consume processed MDNs instead of forwarding them (DN-10).
    :ivar rearmed_until: a later deadline :meth:`expire` set for recipients whose message had not left the queue
        yet, or left it late (the timeout counts from the send, DN-9); None when never re-armed.

    Spec: DN-7..DN-10.
    """

    message_id: str
    sent_at: datetime
    mode: Mode
    recipients: dict[str, RecipientTrack]
    timeout: timedelta = DEFAULT_TIMEOUT
    consume_processed: bool = False
    rearmed_until: datetime | None = None

    @classmethod
    def start(
        cls,
        message_id: str,
        recipients: Iterable[str],
        *,
        at: datetime,
        reliable: bool,
        timeout: timedelta = DEFAULT_TIMEOUT,
        consume_processed: bool = False,
    ) -> MessageTrack:
        """Start tracking a message sent ``at`` to ``recipients``.

        :raises HispError: no recipients, a naive time, or a non-positive timeout.
        """
        if at.tzinfo is None:
            raise HispError("tracking times must be timezone-aware")
        if timeout <= timedelta(0):
            raise HispError("the notification timeout must be positive")
        tracks = {address.strip().lower(): RecipientTrack(address.strip()) for address in recipients}
        if not tracks:
            raise HispError("a tracked message needs at least one recipient")
        return cls(message_id, at, Mode.RELIABLE if reliable else Mode.GENERAL, tracks, timeout, consume_processed)

    @property
    def deadline(self) -> datetime:
        """When incomplete recipients are next looked at: the submission plus the timeout (DN-9), or the later
        time :meth:`expire` re-armed it to."""
        base = self.sent_at + self.timeout
        if self.rearmed_until is None or self.rearmed_until < base:
            return base
        return self.rearmed_until

    def apply(self, recipient: str, event: Event, at: datetime, *, detail: str = "") -> Transition | None:
        """Apply ``event`` to ``recipient``.

        :param detail: what the event was, kept in the history (one line; cut at 500 characters).
        :returns: the transition, or ``None`` when the recipient is not tracked for this message (the
            caller records the notification as unmatched and forwards it).
        """
        track = self.recipients.get(recipient.strip().lower())
        if track is None:
            return None
        transition = step(self.mode, track.state, event, consume_processed=self.consume_processed)
        track.history.append(
            Record(at, event, track.state, transition.state, transition.action, transition.status, detail[:500])
        )
        track.state = transition.state
        return transition

    def expire(self, at: datetime, sent: Mapping[str, datetime | None] | None = None) -> list[tuple[str, Transition]]:
        """Time out the incomplete recipients that were sent at least :attr:`timeout` before ``at``, when ``at`` has
        reached the deadline.

        The timeout counts from the send (DN-9): a recipient whose message is still in our queue (the peer down,
        discovery failing) has not been sent and cannot have been answered; the queue's own lifetime ends it with a
        DSN if it never leaves. The deadline is re-armed (:attr:`rearmed_until`) to the earliest time one of the
        recipients left waiting becomes due.

        :param at: now (aware).
        :param sent: what the queue knows of each recipient's sending, by lower-case address: ``None`` while it is
            still queued (not due, looked at again ``timeout`` from ``at``, unless a notice about it already came:
            then it did leave and is due), or the time it was relayed (due ``timeout`` after that). A recipient not
            in it is due at the deadline (sent at submission, or no longer in the queue).
        :returns: ``(address, transition)`` of each recipient that timed out now; the caller sends one DSN
            listing them (with each transition's status).
        """
        if at < self.deadline:
            return []
        sent = sent or {}
        expired = []
        waiting: list[datetime] = []
        for track in self.recipients.values():
            if is_complete(self.mode, track.state):
                continue
            key = track.address.strip().lower()
            if key in sent:
                relayed = sent[key]
                if relayed is not None:
                    due = relayed + self.timeout
                elif not track.history:  # still in our queue and nothing heard of it: not sent yet
                    due = at + self.timeout
                else:  # a notice about it came, so it left (the queue's record lags): due now
                    due = at
                if due > at:
                    waiting.append(due)
                    continue
            transition = self.apply(track.address, Event.TIMEOUT, at, detail="no notification in time")
            if transition is not None and transition.action is Action.EMIT_DSN:
                expired.append((track.address, transition))
        if waiting:
            self.rearmed_until = min(waiting)
        return expired

    def incomplete(self) -> list[str]:
        """The recipients still waiting for notifications."""
        return [t.address for t in self.recipients.values() if not is_complete(self.mode, t.state)]

    @property
    def complete(self) -> bool:
        """Every recipient is complete: no timer needed."""
        return not self.incomplete()
