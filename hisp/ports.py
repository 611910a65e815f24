"""What the pipeline needs from the outside world, as :class:`typing.Protocol` classes (DESIGN.md section 2).

The pipeline imports only ``core`` and this module; adapters implement these protocols. This module holds the
storage and queue half of issue 5:

- :class:`MessageStore`: a message is accepted (``250``) only after :meth:`MessageStore.enqueue` returned,
  which means its bytes and its per-recipient queue entries are durable (DESIGN.md section 1: "nothing is
  lost").
- :class:`Queue`: workers :meth:`~Queue.claim` recipients under a lease, then end each claim with exactly one
  of :meth:`~Queue.complete`, :meth:`~Queue.retry_later` or :meth:`~Queue.bounce`. A recipient leaves the
  queue only delivered or bounced (:class:`RecipientState`).
- :class:`AuditLog`: append-only events (accept, reject, relay, deliver, bounce, notify).

Also the values they exchange (frozen dataclasses, enums) and :class:`RetrySchedule`, the pure exponential
backoff with jitter that turns an attempt count into the ``next_at`` given to :meth:`Queue.retry_later`.

The message half (:mod:`hisp.pipeline`): :class:`Hosting` (our domains: credentials, trust, endpoints),
:class:`CertificateSource` (certificate discovery), :class:`Relay` (to peer HISPs) and :class:`EdgeDelivery`
(to edge systems); results per recipient are :class:`~hisp.core.smtp_policy.RecipientResult` values.

Every time is passed in (``now``, timezone-aware UTC :class:`~datetime.datetime`); nothing here reads a clock.

Spec: DESIGN.md section 1 (durable before 250; leaves the queue only delivered or bounced), issue 5
("Durable queue and pipeline"; "Audit").
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar, runtime_checkable

from hisp.addresses import DirectAddress, HealthDomain
from hisp.core.agent import RecipientTrust, SignerTrust
from hisp.core.certs import Credential
from hisp.core.discovery import DiscoveryResult
from hisp.core.policy import Direction
from hisp.core.smtp_policy import RecipientResult
from hisp.core.tracking import MessageTrack
from hisp.errors import ConfigError

__all__ = [
    "AuditEvent",
    "AuditKind",
    "AuditLog",
    "AuditRecord",
    "CertificateSource",
    "DeliveryAttempt",
    "Direction",
    "DomainTrust",
    "EdgeDelivery",
    "Envelope",
    "Hosting",
    "Job",
    "MessageDetail",
    "MessageStore",
    "Notification",
    "NotificationKind",
    "NotificationStatus",
    "Outbound",
    "Queue",
    "RecipientState",
    "RecipientStatus",
    "Relay",
    "RetrySchedule",
    "StoredMessage",
    "TrackDecision",
    "TrackedMessage",
    "TrackingStore",
]

_R = TypeVar("_R")


class RecipientState(enum.Enum):
    """Where one recipient of one message is in the queue.

    ``queued`` (waiting for ``next_attempt_at``) -> ``in_flight`` (claimed by a node under a lease) ->
    ``delivered`` | ``bounced`` | ``failed``, or back to ``queued`` for a retry. ``failed`` is a permanent
    failure that no DSN can report because the reverse-path is null (RFC 5321 section 4.5.5: never bounce a
    bounce). The allowed transitions are a table in :mod:`hisp.adapters.storage.states`.
    """

    QUEUED = "queued"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        """True for the states a recipient never leaves (delivered, bounced, failed)."""
        return self in (RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.FAILED)


class AuditKind(enum.Enum):
    """What an audit event records (issue 5, "Audit")."""

    ACCEPT = "accept"
    REJECT = "reject"
    RELAY = "relay"
    DELIVER = "deliver"
    BOUNCE = "bounce"
    NOTIFY = "notify"


class NotificationKind(enum.Enum):
    """A notification owed to a message's sender (placeholder for the notifications issue)."""

    DSN = "dsn"
    MDN_PROCESSED = "mdn-processed"
    MDN_DISPATCHED = "mdn-dispatched"
    MDN_FAILED = "mdn-failed"


class NotificationStatus(enum.Enum):
    """Whether a notification was sent yet (placeholder for the notifications issue)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class Envelope:
    """The SMTP envelope and the few header facts stored with a message.

    :ivar direction: incoming (from a peer HISP) or outgoing (from an edge client).
    :ivar mail_from: the MAIL FROM reverse-path without angle brackets; ``""`` for the null reverse-path.
    :ivar recipients: the RCPT TO forward-paths, at least one; duplicates are stored once.
    :ivar message_id: the RFC 5322 ``Message-ID`` header value, if any.
    """

    direction: Direction
    mail_from: str
    recipients: tuple[str, ...]
    message_id: str | None = None


@dataclass(frozen=True)
class AuditRecord:
    """The evidence an audit event carries besides its kind, time and message.

    :ivar mail_from: envelope sender; ``None`` to take it from the stored message when there is one.
    :ivar recipients: addresses concerned; empty to take them from the job or message when there is one.
    :ivar fingerprints: SHA-256 fingerprints (hex) of the certificates involved (signer, encryption).
    :ivar verdict: the trust verdict in one line, e.g. ``"trusted: anchor CN=Clinic CA"``.
    :ivar reason: why, in one line, e.g. the SMTP reply or the security error.
    :ivar remote: the peer's IP address or host name, when there is one.
    """

    mail_from: str | None = None
    recipients: tuple[str, ...] = ()
    fingerprints: tuple[str, ...] = ()
    verdict: str = ""
    reason: str = ""
    remote: str = ""


@dataclass(frozen=True)
class Outbound:
    """A message to enqueue in the same transaction as another change (an MDN with the message it answers,
    a DSN with the tracking change that owes it), so that a crash loses both or neither.

    :ivar envelope: its envelope (``direction`` says which path it takes: outgoing is sealed and relayed,
        incoming is delivered to a hosted edge endpoint).
    :ivar raw: the plain message, CRLF line endings.
    :ivar audit: evidence for its ``accept`` audit event.
    """

    envelope: Envelope
    raw: bytes
    audit: AuditRecord | None = None


@dataclass(frozen=True)
class TrackDecision(Generic[_R]):
    """What a tracking decision returns to :meth:`TrackingStore.update_tracking`: a result for the caller and
    the messages to enqueue in the same transaction as the state change.

    :ivar result: handed back by ``update_tracking``.
    :ivar enqueue: messages stored and queued atomically with the change.
    """

    result: _R
    enqueue: tuple[Outbound, ...] = ()


@dataclass(frozen=True)
class TrackedMessage:
    """A tracked outgoing message as stored.

    :ivar queue_id: the queue id of the original message (``messages.id``).
    :ivar header_message_id: its Message-ID as submitted (the correlation key's source, DN-2).
    :ivar sender: the envelope sender of the original: where DSNs about it go.
    :ivar track: the core state: mode, deadline, every recipient's state and history.
    :ivar complete: no recipient waits any more (no timer).
    """

    queue_id: str
    header_message_id: str
    sender: str
    track: MessageTrack
    complete: bool


@dataclass(frozen=True)
class AuditEvent:
    """One appended audit event; ``seq`` increases in the order the events were appended.

    :ivar message_id: the queue id of the message, ``None`` for an event about no stored message (a reject).
    :ivar header_message_id: the RFC 5322 ``Message-ID``, when known.
    """

    seq: int
    at: datetime
    kind: AuditKind
    node: str
    message_id: str | None
    header_message_id: str | None
    mail_from: str | None
    recipients: tuple[str, ...]
    fingerprints: tuple[str, ...]
    verdict: str
    reason: str
    remote: str


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient of a stored message and its queue state.

    :ivar attempts: how many times it was claimed (each claim is one delivery attempt).
    :ivar next_attempt_at: when it may be claimed again (``queued``); ``None`` once final.
    :ivar lease_until: end of the current claim's lease (``in_flight``), else ``None``.
    """

    id: int
    address: str
    state: RecipientState
    attempts: int
    next_attempt_at: datetime | None
    claimed_by: str | None
    lease_until: datetime | None
    last_reply: str
    updated_at: datetime


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored: envelope, size, digest and its recipients.

    :ivar id: the queue id (32 hex digits), unique in the store.
    :ivar size: length of the raw message, in bytes.
    :ivar sha256: SHA-256 of the raw message, hex.
    :ivar spooled: the raw bytes are in a spool file (else in the database).
    """

    id: str
    direction: Direction
    mail_from: str
    header_message_id: str | None
    size: int
    sha256: str
    received_at: datetime
    spooled: bool
    recipients: tuple[RecipientStatus, ...]


@dataclass(frozen=True)
class DeliveryAttempt:
    """One ended claim of one recipient: what was tried and what came back.

    :ivar result: the state the recipient went to (``delivered``, ``queued`` for a retry, ``bounced``,
        ``failed``).
    :ivar target: where delivery was tried, e.g. ``"smtp://mx.hospital.example:25"``.
    :ivar reply: the SMTP reply or error in one line.
    :ivar next_attempt_at: when the retry is due, for ``queued``.
    """

    recipient_id: int
    address: str
    at: datetime
    node: str
    attempt: int
    result: RecipientState
    target: str
    reply: str
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class Notification:
    """A notification owed for a message (placeholder rows for the notifications issue)."""

    id: int
    kind: NotificationKind
    message_id: str
    recipient_id: int | None
    address: str | None
    status: NotificationStatus
    created_at: datetime
    updated_at: datetime
    detail: str


@dataclass(frozen=True)
class MessageDetail:
    """Everything ``hisp messages show`` prints about one message."""

    message: StoredMessage
    attempts: tuple[DeliveryAttempt, ...]
    events: tuple[AuditEvent, ...]
    notifications: tuple[Notification, ...]


@dataclass(frozen=True)
class Job:
    """One claimed recipient: the work a node holds until its lease ends.

    :ivar claim_token: proves the claim; a node whose lease expired and was reclaimed by another node can no
        longer end the job (its calls raise :class:`~hisp.errors.StorageError`).
    :ivar attempt: the number of this attempt, from 1.
    :ivar lease_until: the node must renew, or end the job, before this time.
    """

    recipient_id: int
    message_id: str
    address: str
    direction: Direction
    mail_from: str
    received_at: datetime
    attempt: int
    node: str
    claim_token: str
    lease_until: datetime


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential backoff with jitter, bounded by a lifetime: when to try a recipient again.

    Delay before attempt ``n + 1`` after ``n`` failed attempts: ``min(initial * factor ** (n - 1), maximum)``,
    then multiplied by a random factor in ``[1 - jitter, 1 + jitter]`` so that many recipients deferred at once
    do not come back at once.

    :ivar initial: delay after the first failed attempt.
    :ivar factor: growth per attempt, ``>= 1``.
    :ivar maximum: cap of one delay (before jitter).
    :ivar lifetime: how long after ``received_at`` a message may stay queued; past it, bounce.
    :ivar jitter: relative spread, ``0 <= jitter < 1``.
    :raises ConfigError: a value out of range.

    Spec: issue 5 ("retries on 4xx ... with exponential backoff and jitter up to the configured lifetime");
    RFC 5321 section 4.5.4.1 (retry interval at least 30 minutes is suggested; give-up time 4-5 days).
    """

    initial: timedelta = timedelta(minutes=5)
    factor: float = 2.0
    maximum: timedelta = timedelta(hours=4)
    lifetime: timedelta = timedelta(days=5)
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial <= timedelta(0) or self.maximum < self.initial:
            raise ConfigError("retry schedule: need 0 < initial <= maximum", initial=self.initial, maximum=self.maximum)
        if self.factor < 1:
            raise ConfigError("retry schedule: factor must be >= 1", factor=self.factor)
        if self.lifetime <= timedelta(0):
            raise ConfigError("retry schedule: lifetime must be positive", lifetime=self.lifetime)
        if not 0 <= self.jitter < 1:
            raise ConfigError("retry schedule: jitter must be in [0, 1)", jitter=self.jitter)

    def delay(self, attempts: int, rng: random.Random) -> timedelta:
        """The wait after ``attempts`` failed attempts, jitter included.

        :param attempts: failed attempts so far, ``>= 1`` (smaller values count as 1).
        :param rng: the source of jitter (pass a seeded :class:`random.Random` in tests).
        :returns: a positive delay.
        """
        exponent = max(attempts, 1) - 1
        base = self.initial.total_seconds()
        cap = self.maximum.total_seconds()
        # factor ** exponent overflows a float for large exponents: stop growing once the cap is reached.
        seconds = cap if exponent > 1024 else min(base * self.factor**exponent, cap)
        spread = 1.0 + rng.uniform(-self.jitter, self.jitter)
        return timedelta(seconds=max(seconds * spread, 1.0))

    def next_attempt_at(
        self, now: datetime, received_at: datetime, attempts: int, rng: random.Random
    ) -> datetime | None:
        """When to try again, or ``None`` when the lifetime is over (the caller then bounces).

        :param now: the current time (the failed attempt's end).
        :param received_at: when the message was accepted; the lifetime counts from it.
        :param attempts: failed attempts so far (see :attr:`Job.attempt`).
        :param rng: the source of jitter.
        :returns: the next attempt time, never later than ``received_at + lifetime``; ``None`` if ``now``
            is already at or past that end.
        """
        deadline = received_at + self.lifetime
        if now >= deadline:
            return None
        return min(now + self.delay(attempts, rng), deadline)


@runtime_checkable
class MessageStore(Protocol):
    """Durable storage of accepted messages and the queries behind ``hisp messages list/show``."""

    def enqueue(
        self,
        envelope: Envelope,
        raw: bytes,
        *,
        now: datetime,
        node: str = "",
        audit: AuditRecord | None = None,
        also: Sequence[Outbound] = (),
        track: MessageTrack | None = None,
    ) -> StoredMessage:
        """Store a message and queue each recipient; durable when it returns, so the caller may reply 250.

        :param envelope: the envelope; at least one recipient.
        :param raw: the message exactly as received.
        :param now: the time of acceptance (``received_at``, the first ``next_attempt_at``).
        :param node: the accepting node, for the ``accept`` audit event.
        :param audit: evidence for the ``accept`` audit event appended in the same transaction.
        :param also: more messages stored and queued in the same transaction (e.g. its processed MDNs).
        :param track: start tracking this message (its queue id, ``envelope.mail_from`` as the sender) in the
            same transaction; ``track.message_id`` is the Message-ID as submitted.
        :returns: the stored message (not those of ``also``), every recipient ``queued``.
        :raises StorageError: nothing was stored (the caller answers 451).
        """
        ...

    def raw(self, message_id: str) -> bytes:
        """The message's bytes as received, checked against the stored SHA-256.

        :raises StorageError: unknown message, unreadable spool file, or a digest mismatch.
        """
        ...

    def list_messages(
        self, *, state: RecipientState | None = None, direction: Direction | None = None, limit: int = 100
    ) -> list[StoredMessage]:
        """Messages, newest first; with ``state``, those having at least one recipient in that state.

        :raises StorageError: the database failed.
        """
        ...

    def show(self, key: str) -> MessageDetail:
        """One message by queue id or by ``Message-ID`` header (the newest such), with its history.

        :raises StorageError: no such message, or the database failed.
        """
        ...


@runtime_checkable
class Queue(Protocol):
    """Per-recipient work queue with leases; safe for several nodes sharing one database."""

    def claim(self, node: str, now: datetime, lease_seconds: float, limit: int) -> list[Job]:
        """Claim up to ``limit`` recipients that are due (``queued`` with ``next_attempt_at <= now``), or whose
        lease expired (``in_flight`` with ``lease_until <= now``: their node vanished). No recipient is ever
        held by two live claims.

        :raises StorageError: the database failed (nothing claimed).
        """
        ...

    def renew(self, job: Job, now: datetime, lease_seconds: float) -> Job:
        """Extend the lease of a claim still held.

        :raises StorageError: the claim was lost (lease expired and reclaimed, or already ended).
        """
        ...

    def complete(self, job: Job, now: datetime, *, target: str, reply: str, audit: AuditRecord | None = None) -> None:
        """The recipient was delivered (incoming) or relayed (outgoing): it leaves the queue.

        :raises StorageError: the claim was lost, or the transition is not allowed.
        """
        ...

    def retry_later(self, job: Job, now: datetime, next_at: datetime, *, target: str, reply: str) -> None:
        """A transient failure: queue the recipient again for ``next_at`` (see :class:`RetrySchedule`).

        :raises StorageError: the claim was lost, or the transition is not allowed.
        """
        ...

    def bounce(
        self, job: Job, now: datetime, reason: str, *, target: str = "", reply: str = "",
        audit: AuditRecord | None = None,
    ) -> RecipientState:
        """A permanent failure: the recipient leaves the queue ``bounced`` with a pending DSN to the sender, or
        ``failed`` when the reverse-path is null (no DSN for a bounce).

        :returns: the final state, ``bounced`` or ``failed``.
        :raises StorageError: the claim was lost, or the transition is not allowed.
        """
        ...

    def settle_owed_dsn(self, job: Job, now: datetime, *, detail: str | None) -> None:
        """What became of the DSN :meth:`bounce` recorded as owed for ``job``: ``detail`` says how the sender was
        told (``"DSN <id> queued"``, a failed MDN instead, DN-8's one notice already given) and the notification
        is marked sent; ``None`` means none was owed after all (a notice about a notice, AS-19) and it is removed.

        :raises StorageError: the database failed.
        """
        ...


@runtime_checkable
class AuditLog(Protocol):
    """Append-only audit events; there is no update or delete."""

    def append(
        self, kind: AuditKind, now: datetime, *, node: str = "", message_id: str | None = None,
        header_message_id: str | None = None, record: AuditRecord = AuditRecord(),
    ) -> AuditEvent:
        """Append one event and return it with its sequence number.

        :raises StorageError: the event was not stored.
        """
        ...

    def events(self, *, message_id: str | None = None, after: int = 0, limit: int = 1000) -> list[AuditEvent]:
        """Events with ``seq > after`` in append order, optionally for one message.

        :raises StorageError: the database failed.
        """
        ...



class DomainTrust(SignerTrust, RecipientTrust, Protocol):
    """The trust seam of one local domain or address, both directions (e.g. :class:`~hisp.core.trust.StoreTrust`)."""


@runtime_checkable
class Hosting(Protocol):
    """What this HISP hosts: addresses, our credentials, the trust in force, the edge endpoints."""

    def is_hosted(self, address: DirectAddress) -> bool:
        """Whether ``address`` is one of our hosted addresses."""
        ...

    def credentials(self, address: DirectAddress) -> Sequence[Credential]:
        """Our credentials for ``address`` (address-bound, then its domain's domain-bound ones); may be empty."""
        ...

    def trust(self, local: DirectAddress) -> DomainTrust:
        """The trust seam for our address ``local`` (its store, else its domain's): AS-21."""
        ...

    def endpoint(self, address: DirectAddress) -> str | None:
        """The delivery endpoint URL of our address (``maildir:/...``, ``smtp://...``), or None."""
        ...


@runtime_checkable
class CertificateSource(Protocol):
    """Certificate discovery, judged against the outgoing anchors of the sender's domain."""

    async def discover(self, sender: HealthDomain, address: DirectAddress, *, at: datetime) -> DiscoveryResult:
        """The usable certificates of ``address``.

        :raises CertificateNotFound: permanent (CD-9).
        :raises DiscoveryUnavailable: transient.
        """
        ...


@runtime_checkable
class Relay(Protocol):
    """Sends sealed messages to peer HISPs."""

    async def send(self, mail_from: str, recipients: Sequence[str], raw: bytes) -> tuple[RecipientResult, ...]:
        """One result per recipient, in order (delivered, transient or permanent)."""
        ...


@runtime_checkable
class EdgeDelivery(Protocol):
    """Delivers plain messages to edge endpoints (SMTP, LMTP, maildir)."""

    async def deliver(
        self, endpoint: str, mail_from: str, recipients: Sequence[str], raw: bytes
    ) -> tuple[RecipientResult, ...]:
        """One result per recipient, in order."""
        ...


@runtime_checkable
class TrackingStore(Protocol):
    """Durable timely-and-reliable tracking of outgoing messages (DN-7..DN-10).

    The store persists :class:`~hisp.core.tracking.MessageTrack` state; the decisions stay in the core: the
    caller passes a function that mutates the loaded track (``apply``, ``expire``) and says what to enqueue.
    """

    def update_tracking(
        self,
        decide: Callable[[TrackedMessage], TrackDecision[_R]],
        *,
        now: datetime,
        node: str = "",
        header_message_id: str | None = None,
        queue_id: str | None = None,
    ) -> _R | None:
        """Load one track (by the correlation key of ``header_message_id``, the newest such, or by
        ``queue_id``; exactly one of them), locked against concurrent updates, call ``decide`` on it, then in
        one transaction persist the recipients' new states and the history records ``decide`` appended,
        recompute ``complete``, release any timeout claim, and store and queue ``decision.enqueue``.

        :returns: ``decision.result``; ``None`` (``decide`` not called) when nothing is tracked under the key.
        :raises StorageError: the database failed (nothing changed), or neither or both keys were given.
        """
        ...

    def claim_expired(self, node: str, now: datetime, lease_seconds: float, limit: int) -> list[str]:
        """Claim incomplete tracks whose deadline has passed (``deadline <= now``) and that no live claim
        holds, for ``lease_seconds``; several nodes never claim the same track at once.

        :returns: their queue ids, oldest deadline first, at most ``limit``.
        :raises StorageError: the database failed.
        """
        ...

    def tracking(self, key: str) -> TrackedMessage:
        """One track by queue id or by Message-ID (correlation key; the newest such), for ``hisp track``.

        :raises StorageError: nothing is tracked under ``key``, or the database failed.
        """
        ...
