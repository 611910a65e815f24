"""SQLAlchemy 2 models of the message store and queue (typed ``Mapped[...]`` declarations).

Tables (the Alembic migrations in :mod:`hisp.adapters.storage.migrations` create exactly these):

``messages``
    one row per accepted message: queue ``id`` (32 hex digits), ``direction``, envelope ``mail_from``,
    ``header_message_id``, ``size`` (bytes), ``sha256`` (hex), ``received_at``, accepting ``node``, and the raw
    bytes either in ``content`` (small messages) or in a spool file named by ``spool_path`` (relative to the
    spool directory). Exactly one of the two is set.
``recipients``
    one row per (message, RCPT TO address): ``state`` (:class:`hisp.ports.RecipientState`), ``attempts``,
    ``next_attempt_at``, and the claim: ``claimed_by`` (node), ``claim_token``, ``lease_until``.
``delivery_attempts``
    one row per ended claim: time, node, attempt number, ``result`` (the state reached), ``target``, ``reply``
    (SMTP reply or error), ``next_attempt_at`` for a retry.
``notifications``
    placeholder rows for the notifications issue: ``kind`` (DSN, MDN ...), related message and recipient,
    ``status`` (pending, sent, failed).
``audit_events``
    append-only (database triggers refuse UPDATE and DELETE): ``seq``, time, ``kind``, node, message ids,
    addresses, certificate fingerprints, verdict, reason, remote peer. ``message_id`` is deliberately not a
    foreign key: a reject has no stored message, and events outlive any message purge.
``tracked_messages``
    one row per outgoing message under timely-and-reliable tracking (DN-7..DN-10): its ``queue_id`` (the
    ``messages`` row, unique), ``header_message_id`` as submitted and its ``correlation`` key
    (:func:`hisp.core.tracking.correlation_key`, indexed: notifications are matched on it), envelope ``sender``,
    ``mode`` (``reliable`` or ``general``), ``sent_at``, ``deadline`` (``sent_at`` plus ``timeout_seconds``),
    ``consume_processed``, ``complete`` (no recipient waits any more), and the timeout claim: ``claimed_by``
    (node), ``claim_token``, ``lease_until``. The index on (``complete``, ``deadline``) serves the timeout scan.
``tracked_recipients``
    one row per recipient of a tracked message: ``address`` as given, its lower-case ``key`` (unique per
    message) and its ``state`` (:class:`hisp.core.tracking.State`).
``tracking_events``
    the tracking history, one row per :class:`hisp.core.tracking.Record` (in ``id`` order): recipient
    ``address``, time, ``event``, states ``before`` and ``after``, ``action``, DSN ``status`` (timeouts) and a
    one-line ``detail``.

All times are UTC (:class:`~hisp.adapters.storage.columns.UtcDateTime`).

Spec: DESIGN.md sections 1-2, issue 5 ("SQLAlchemy 2 models and Alembic migrations"); issue 6 and DN-7..DN-10
(the tracking tables).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hisp.adapters.storage.columns import BigId, UtcDateTime
from hisp.core.tracking import Mode, State

__all__ = [
    "AuditEventRow",
    "Base",
    "DeliveryAttemptRow",
    "MessageRow",
    "NotificationRow",
    "RecipientRow",
    "TrackedMessageRow",
    "TrackedRecipientRow",
    "TrackingEventRow",
]

#: Deterministic constraint names, so that later migrations can name what they alter.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""

    metadata = MetaData(naming_convention=NAMING)


class MessageRow(Base):
    """An accepted message (see the module docstring)."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("direction IN ('incoming', 'outgoing')", name="direction"),
        CheckConstraint("(content IS NULL) <> (spool_path IS NULL)", name="one_body"),
        Index("ix_messages_received_at", "received_at"),
        Index("ix_messages_header_message_id", "header_message_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    direction: Mapped[str] = mapped_column(String(8))
    mail_from: Mapped[str] = mapped_column(Text)
    header_message_id: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigId)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    node: Mapped[str] = mapped_column(Text)
    spool_path: Mapped[str | None] = mapped_column(Text)
    content: Mapped[bytes | None] = mapped_column(LargeBinary)


class RecipientRow(Base):
    """One recipient of one message and its queue state."""

    __tablename__ = "recipients"
    __table_args__ = (
        UniqueConstraint("message_id", "address", name="uq_recipients_message_address"),
        CheckConstraint(
            "state IN ('queued', 'in_flight', 'delivered', 'bounced', 'failed')", name="state"
        ),
        Index("ix_recipients_due", "state", "next_attempt_at"),
        Index("ix_recipients_lease", "state", "lease_until"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(32), ForeignKey("messages.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(BigId)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    claimed_by: Mapped[str | None] = mapped_column(Text)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_reply: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DeliveryAttemptRow(Base):
    """One ended claim of one recipient."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (Index("ix_delivery_attempts_message_id", "message_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    recipient_id: Mapped[int] = mapped_column(BigId, ForeignKey("recipients.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(32), ForeignKey("messages.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    node: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(BigId)
    result: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(Text)
    reply: Mapped[str] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class NotificationRow(Base):
    """A notification owed for a message (placeholder for the notifications issue)."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_status", "status"),
        Index("ix_notifications_message_id", "message_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str] = mapped_column(String(32), ForeignKey("messages.id", ondelete="CASCADE"))
    recipient_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("recipients.id", ondelete="CASCADE"))
    address: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    detail: Mapped[str] = mapped_column(Text)


class AuditEventRow(Base):
    """One audit event; rows are only ever inserted."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_message_id", "message_id"),)

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    kind: Mapped[str] = mapped_column(String(16))
    node: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(32))
    header_message_id: Mapped[str | None] = mapped_column(Text)
    mail_from: Mapped[str | None] = mapped_column(Text)
    recipients: Mapped[list[str]] = mapped_column(JSON)
    fingerprints: Mapped[list[str]] = mapped_column(JSON)
    verdict: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    remote: Mapped[str] = mapped_column(Text)


def _one_of(column: str, values: list[str]) -> str:
    """A check constraint's SQL text: ``column IN ('a', 'b')`` (values are enum members, never user input)."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class TrackedMessageRow(Base):
    """An outgoing message under timely-and-reliable tracking (see the module docstring; DN-7..DN-10)."""

    __tablename__ = "tracked_messages"
    __table_args__ = (
        UniqueConstraint("queue_id", name="uq_tracked_messages_queue_id"),
        CheckConstraint(_one_of("mode", [m.value for m in Mode]), name="mode"),
        Index("ix_tracked_messages_correlation", "correlation"),
        Index("ix_tracked_messages_due", "complete", "deadline"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    queue_id: Mapped[str] = mapped_column(String(32), ForeignKey("messages.id", ondelete="CASCADE"))
    header_message_id: Mapped[str] = mapped_column(Text)
    correlation: Mapped[str] = mapped_column(Text)
    sender: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(16))
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deadline: Mapped[datetime] = mapped_column(UtcDateTime)
    #: The notification timeout in seconds (a float: microseconds survive the round trip).
    timeout_seconds: Mapped[float] = mapped_column(Float)
    consume_processed: Mapped[bool] = mapped_column(Boolean)
    complete: Mapped[bool] = mapped_column(Boolean)
    claimed_by: Mapped[str | None] = mapped_column(Text)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TrackedRecipientRow(Base):
    """One recipient of a tracked message and its tracking state."""

    __tablename__ = "tracked_recipients"
    __table_args__ = (
        UniqueConstraint("tracked_id", "key", name="uq_tracked_recipients_tracked_key"),
        CheckConstraint(_one_of("state", [s.value for s in State]), name="state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tracked_id: Mapped[int] = mapped_column(BigId, ForeignKey("tracked_messages.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(Text)
    key: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))


class TrackingEventRow(Base):
    """One tracking history record (:class:`hisp.core.tracking.Record`) of one recipient."""

    __tablename__ = "tracking_events"
    __table_args__ = (Index("ix_tracking_events_tracked_id", "tracked_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tracked_id: Mapped[int] = mapped_column(BigId, ForeignKey("tracked_messages.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    event: Mapped[str] = mapped_column(String(16))
    before: Mapped[str] = mapped_column(String(16))
    after: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)
