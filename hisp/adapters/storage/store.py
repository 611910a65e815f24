"""The message store, queue, audit log and tracking store on SQLAlchemy: :class:`SqlStore`.

One class implements :class:`hisp.ports.MessageStore`, :class:`hisp.ports.Queue`, :class:`hisp.ports.AuditLog`
and :class:`hisp.ports.TrackingStore` over the tables of :mod:`hisp.adapters.storage.models` (``messages``,
``recipients``, ``delivery_attempts``, ``notifications``, ``audit_events``; ``tracked_messages``,
``tracked_recipients``, ``tracking_events``).

Where the bytes go (decided here): a message of at most ``inline_max`` bytes (default 64 KiB), or any message
when there is no spool directory, is stored in the ``messages.content`` column, committed in the same
transaction as its recipients; a larger one is written to a spool file first (fsynced, then its directory
fsynced) and the row stores its relative path and SHA-256. Small messages then cost one durable commit and no
file; large ones keep the database small. Several nodes sharing one PostgreSQL database must either share the
spool directory or run without one (every body in the database), since any node may finish another's work.

Durability: :meth:`SqlStore.enqueue` returns only after the spool file (if any) is fsynced and the transaction
is committed (SQLite ``synchronous=FULL`` in WAL mode; PostgreSQL's default ``synchronous_commit=on``), so the
caller may then answer 250.

Atomicity: one transaction holds everything that must not be half done. :meth:`SqlStore.enqueue` stores the
message, its recipients and ``accept`` audit event together with the messages of ``also`` (e.g. its processed
MDNs) and its track (``track``); :meth:`SqlStore.update_tracking` persists a tracking decision (recipient states,
history, ``complete``, the released timeout claim) together with the messages the decision enqueues (a
forwarded notification, a DSN). A crash or failure leaves all of it or none; spool files of a transaction that
failed before its COMMIT was sent are removed; those of a failed COMMIT (it may have committed: an acknowledgement
lost with the connection) and of a crash stay, and :meth:`SqlStore.spool_orphans` lists the ones no row names.

Claims: :meth:`SqlStore.claim` selects due recipients with ``FOR UPDATE OF recipients SKIP LOCKED`` on
PostgreSQL; on SQLite the same statement runs inside ``BEGIN IMMEDIATE`` (one writer at a time), so the read
and the update are atomic. A claim carries a random token: after its lease expires another node may reclaim the
recipient, and the first node's later calls then fail with :class:`~hisp.errors.StorageError` instead of
ending work it no longer owns. A claim whose lease expired but that nobody reclaimed yet is still honoured.
:meth:`SqlStore.claim_expired` claims tracks past their deadline the same way (``FOR UPDATE SKIP LOCKED``, or
``BEGIN IMMEDIATE``), and :meth:`SqlStore.update_tracking` locks the one track it changes (``FOR UPDATE``), so
concurrent notifications about one message are applied one after the other, none lost.

Cost: the per-message operations (enqueue, claim, raw, renew, complete, retry_later, bounce, append,
update_tracking, tracking) run prebuilt SQLAlchemy Core statements on a connection; the ORM serves the rest
(listings, ``show``). A claim reads the bodies it may (database-kept, at most :data:`PREFETCH_MAX`) in its own
transaction and hands each to the next :meth:`SqlStore.raw` of that message, still checked against its SHA-256.
Round trips are few: a claim is ended (or renewed) by one UPDATE whose WHERE checks the claim token, with no
SELECT before it (only when it matches nothing is the row read, to say why), and its audit event takes the
Message-ID from the message's row inside its INSERT; an enqueue inserts the rows of all its messages with one
statement per table; a track is read with its recipients and their histories in one statement after the row
lock, and only the recipient states a decision changed are written back.

Every queue state change goes through :func:`hisp.adapters.storage.states.check_transition`; tracking states
change only as the caller's ``decide`` (the tables of :mod:`hisp.core.tracking`) changes them. No method reads a
clock: every time is a ``now`` argument (aware datetime).

Spec: DESIGN.md sections 1 and 3, issue 5 ("Durable queue and pipeline", "Audit"); issue 6 and DN-7..DN-10
(timely and reliable tracking).
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    false,
    insert,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from hisp.adapters.storage.engine import open_engine, read_only
from hisp.adapters.storage.migrate import upgrade
from hisp.adapters.storage.models import (
    AuditEventRow,
    Base,
    DeliveryAttemptRow,
    MessageRow,
    NotificationRow,
    RecipientRow,
    TrackedMessageRow,
)
from hisp.adapters.storage.spool import Spool
from hisp.adapters.storage.states import check_transition
from hisp.core.tracking import Action, Event, MessageTrack, Mode, RecipientTrack, Record, State, correlation_key
from hisp.errors import HispError, StorageError
from hisp.ports import (
    AuditEvent,
    AuditKind,
    AuditLog,
    AuditRecord,
    DeliveryAttempt,
    Direction,
    Envelope,
    Job,
    MessageDetail,
    MessageStore,
    Notification,
    NotificationKind,
    NotificationStatus,
    Outbound,
    Queue,
    RecipientState,
    RecipientStatus,
    StoredMessage,
    TrackDecision,
    TrackedMessage,
    TrackingStore,
)

__all__ = ["DEFAULT_INLINE_MAX", "SqlStore"]

#: Bodies up to this many bytes are kept in the database even when there is a spool directory.
DEFAULT_INLINE_MAX = 64 * 1024

#: Longest lease a claim may ask for, in seconds: a dead node's work must come back within a day.
MAX_LEASE_SECONDS = 86_400.0

#: Bodies kept in the database up to this size are read by :meth:`SqlStore.claim` in its own transaction and
#: handed to the next :meth:`SqlStore.raw` of that message (the worker reads the body right after claiming it):
#: one transaction less per job. At most :data:`PREFETCH_ENTRIES` bodies wait.
PREFETCH_MAX = 256 * 1024
PREFETCH_ENTRIES = 64

_NO_RECORD = AuditRecord()

#: A queue id as :meth:`SqlStore.enqueue` makes them (``uuid4().hex``).
_QUEUE_ID = re.compile(r"[0-9a-fA-F]{32}")

_R = TypeVar("_R")

# -- the hot paths' statements, built once (SQLAlchemy Core: no ORM unit of work, no per-call construction) -----
# enqueue, claim, raw, renew, complete, retry_later, bounce and append run once or more per message and node; the
# ORM's flush and identity map cost several times the statements themselves. The rest of the store uses the ORM.

_MESSAGES: Table = Base.metadata.tables["messages"]
_RECIPIENTS: Table = Base.metadata.tables["recipients"]
_ATTEMPTS: Table = Base.metadata.tables["delivery_attempts"]
_NOTIFICATIONS: Table = Base.metadata.tables["notifications"]
_AUDIT: Table = Base.metadata.tables["audit_events"]
_TRACKED: Table = Base.metadata.tables["tracked_messages"]
_TRACKED_RECIPIENTS: Table = Base.metadata.tables["tracked_recipients"]
_TRACKING_EVENTS: Table = Base.metadata.tables["tracking_events"]

_R_ = _RECIPIENTS.c
_M_ = _MESSAGES.c

_INSERT_MESSAGE = insert(_MESSAGES)
#: Recipients inserted, each returned with its id and its key (message, address: unique), in any order: one
#: statement for any number of rows (SQLAlchemy's "insertmanyvalues", INSERT ... VALUES (...), (...) RETURNING on
#: SQLite >= 3.35 and PostgreSQL; asking for the parameters' order would make it one statement per row on SQLite).
_INSERT_RECIPIENTS = insert(_RECIPIENTS).returning(_R_.id, _R_.message_id, _R_.address)
#: One recipient, its id read from the cursor: for a database without RETURNING (SQLite before 3.35, as on
#: Debian 11 or Ubuntu 20.04), where _INSERT_RECIPIENTS would fail.
_INSERT_RECIPIENT = insert(_RECIPIENTS)
_INSERT_ATTEMPTS = insert(_ATTEMPTS)
_INSERT_NOTIFICATION = insert(_NOTIFICATIONS)
_INSERT_AUDIT = insert(_AUDIT)
_INSERT_TRACKED = insert(_TRACKED)
_INSERT_TRACKED_RECIPIENTS = insert(_TRACKED_RECIPIENTS)
_INSERT_TRACKING_EVENTS = insert(_TRACKING_EVENTS)

#: The body of one message.
_BODY = select(_M_.content, _M_.spool_path, _M_.sha256).where(_M_.id == bindparam("message_id"))

#: Due recipients, oldest due first: queued and due, or in flight with an expired lease (see SqlStore.claim).
_DUE = (
    select(
        _R_.id, _R_.message_id, _R_.address, _R_.state, _R_.attempts, _R_.claimed_by, _R_.lease_until,
        _M_.direction, _M_.mail_from, _M_.received_at, _M_.sha256,
        case((_M_.size <= bindparam("prefetch_max"), _M_.content), else_=null()).label("content"),
    )
    .join(_MESSAGES, _M_.id == _R_.message_id)
    .where(
        or_(
            and_(_R_.state == RecipientState.QUEUED.value, _R_.next_attempt_at <= bindparam("now")),
            and_(_R_.state == RecipientState.IN_FLIGHT.value, _R_.lease_until <= bindparam("now")),
        )
    )
    .order_by(_R_.next_attempt_at, _R_.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True, of=_RECIPIENTS)
)

#: One recipient's state and claim: why a claim could not be ended or renewed (see SqlStore._lost).
_HELD = (
    select(_R_.state, _R_.claim_token, _R_.claimed_by)
    .where(_R_.id == bindparam("recipient_id"))
)

_IN_FLIGHT = RecipientState.IN_FLIGHT.value

#: A claim taken: state, attempts, claim and lease of one recipient (executemany).
_TAKE = (
    update(_RECIPIENTS)
    .where(_R_.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        attempts=bindparam("b_attempts"),
        claimed_by=bindparam("b_claimed_by"),
        claim_token=bindparam("b_claim_token"),
        lease_until=bindparam("b_lease_until"),
        updated_at=bindparam("b_updated_at"),
    )
)

#: A lease renewed, if the claim still holds the recipient (the token matches, in flight): one row, else none.
_RENEW = (
    update(_RECIPIENTS)
    .where(_R_.id == bindparam("b_id"), _R_.claim_token == bindparam("b_token"), _R_.state == _IN_FLIGHT)
    .values(lease_until=bindparam("b_lease_until"), updated_at=bindparam("b_updated_at"))
)

#: A claim ended (complete, retry later, bounce), if it still holds the recipient: the new state, the claim
#: released; one row, else none. Checking the claim in the UPDATE itself (no SELECT ... FOR UPDATE before it) is
#: the same test under the same row lock: on PostgreSQL an UPDATE waiting for a concurrent reclaim re-checks its
#: WHERE on the row that reclaim committed, and the token no longer matches.
_END = (
    update(_RECIPIENTS)
    .where(_R_.id == bindparam("b_id"), _R_.claim_token == bindparam("b_token"), _R_.state == _IN_FLIGHT)
    .values(
        state=bindparam("b_state"),
        claimed_by=None,
        claim_token=None,
        lease_until=None,
        next_attempt_at=bindparam("b_next_attempt_at"),
        last_reply=bindparam("b_last_reply"),
        updated_at=bindparam("b_updated_at"),
    )
)

#: An audit event about a stored message, its ``header_message_id`` read from the message's row by the INSERT
#: itself (``b_message_id``, the queue id, names it): no SELECT before it.
_INSERT_AUDIT_OF_MESSAGE = insert(_AUDIT).values(
    header_message_id=select(_M_.header_message_id).where(_M_.id == bindparam("b_message_id")).scalar_subquery()
)


_T_ = _TRACKED.c

#: A track by queue id; the newest track under a correlation key (``sent_at``, then ``id``).
_TRACK_BY_QUEUE_ID = select(_TRACKED).where(_T_.queue_id == bindparam("queue_id"))
_TRACK_BY_KEY = (
    select(_TRACKED)
    .where(_T_.correlation == bindparam("correlation"))
    .order_by(_T_.sent_at.desc(), _T_.id.desc())
    .limit(1)
)
#: The same, locked for the transaction (``FOR UPDATE`` on PostgreSQL): see SqlStore.update_tracking.
_TRACK_BY_QUEUE_ID_LOCKED = _TRACK_BY_QUEUE_ID.with_for_update()
_TRACK_BY_KEY_LOCKED = _TRACK_BY_KEY.with_for_update()
_TR_ = _TRACKED_RECIPIENTS.c
_TE_ = _TRACKING_EVENTS.c
#: A track's recipients (in ``id`` order), each with its history records (in ``id`` order; none: one row of
#: NULLs): one statement. A record belongs to the recipient whose stored address it carries (every writer copies
#: it from the recipient's row, see SqlStore._persist and SqlStore._add_track).
_TRACK_RECIPIENTS = (
    select(
        _TR_.id, _TR_.key, _TR_.address, _TR_.state,
        _TE_.id.label("event_id"), _TE_.at, _TE_.event, _TE_.before, _TE_.after, _TE_.action, _TE_.status,
        _TE_.detail,
    )
    .select_from(
        _TRACKED_RECIPIENTS.outerjoin(
            _TRACKING_EVENTS, and_(_TE_.tracked_id == _TR_.tracked_id, _TE_.address == _TR_.address)
        )
    )
    .where(_TR_.tracked_id == bindparam("tracked_id"))
    .order_by(_TR_.id, _TE_.id)
)
_TRACK_RECIPIENT_STATE = (
    update(_TRACKED_RECIPIENTS)
    .where(_TRACKED_RECIPIENTS.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"))
)
#: A tracking decision persisted: ``complete``, the timeout claim released.
_TRACK_SETTLE = (
    update(_TRACKED)
    .where(_T_.id == bindparam("b_id"))
    .values(
        complete=bindparam("b_complete"),
        deadline=bindparam("b_deadline"),
        claimed_by=None,
        claim_token=None,
        lease_until=None,
        updated_at=bindparam("b_updated_at"),
    )
)


def _aware(now: datetime, name: str = "now") -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise StorageError(f"{name} must be an aware datetime (UTC), got a naive one", value=now.isoformat())
    return now


def _recipient_status(row: RecipientRow) -> RecipientStatus:
    return RecipientStatus(
        id=row.id,
        address=row.address,
        state=RecipientState(row.state),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        claimed_by=row.claimed_by,
        lease_until=row.lease_until,
        last_reply=row.last_reply,
        updated_at=row.updated_at,
    )


def _stored(row: MessageRow, recipients: Sequence[RecipientRow]) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        direction=Direction(row.direction),
        mail_from=row.mail_from,
        header_message_id=row.header_message_id,
        size=row.size,
        sha256=row.sha256,
        received_at=row.received_at,
        spooled=row.spool_path is not None,
        recipients=tuple(_recipient_status(r) for r in sorted(recipients, key=lambda r: r.id)),
    )


def _lease_until(what: str, node: str, now: datetime, lease_seconds: float, limit: int) -> datetime:
    """The end of a claim's lease, after checking a claim's arguments (both queues: messages and tracks).

    :raises StorageError: a naive ``now``, no node name, a lease outside (0, MAX_LEASE_SECONDS] or a limit < 1.
    """
    _aware(now)
    if not node:
        raise StorageError(f"{what} needs a node name")
    if not 0 < lease_seconds <= MAX_LEASE_SECONDS:
        raise StorageError("lease_seconds out of range", lease_seconds=lease_seconds)
    if limit < 1:
        raise StorageError("limit must be >= 1", limit=limit)
    return now + timedelta(seconds=lease_seconds)


def _event(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        seq=row.seq,
        at=row.at,
        kind=AuditKind(row.kind),
        node=row.node,
        message_id=row.message_id,
        header_message_id=row.header_message_id,
        mail_from=row.mail_from,
        recipients=tuple(row.recipients),
        fingerprints=tuple(row.fingerprints),
        verdict=row.verdict,
        reason=row.reason,
        remote=row.remote,
    )


def _notification(row: NotificationRow) -> Notification:
    return Notification(
        id=row.id,
        kind=NotificationKind(row.kind),
        message_id=row.message_id,
        recipient_id=row.recipient_id,
        address=row.address,
        status=NotificationStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
        detail=row.detail,
    )


def _audit_row(
    kind: AuditKind,
    now: datetime,
    *,
    node: str,
    message_id: str | None,
    header_message_id: str | None,
    record: AuditRecord,
    mail_from: str | None = None,
    recipients: Sequence[str] = (),
) -> dict[str, Any]:
    """The column values of one ``audit_events`` row (without ``seq``)."""
    return {
        "at": now,
        "kind": kind.value,
        "node": node,
        "message_id": message_id,
        "header_message_id": header_message_id,
        "mail_from": record.mail_from if record.mail_from is not None else mail_from,
        "recipients": list(record.recipients or recipients),
        "fingerprints": list(record.fingerprints),
        "verdict": record.verdict,
        "reason": record.reason,
        "remote": record.remote,
    }


@dataclass(frozen=True)
class _Prepared:
    """The rows of one message about to be enqueued (its body already in the spool if large), as column values."""

    message: dict[str, Any]
    recipients: list[dict[str, Any]]
    accept: dict[str, Any]


@dataclass(frozen=True)
class _Loaded:
    """A track as loaded for :meth:`SqlStore.update_tracking`: what ``decide`` gets, its row id, the recipients'
    row ids, addresses and states (by key) and each recipient's history as loaded (to find the records ``decide``
    appended and the states it changed)."""

    tracked: TrackedMessage
    tracked_id: int
    rows: dict[str, tuple[int, str, State]]
    history: dict[str, list[Record]]


@dataclass
class _Commit:
    """Whether a transaction's COMMIT was sent (see :meth:`SqlStore._core`): after that, a failure leaves the
    outcome unknown and the spool files it names must stay."""

    sent: bool = False


class _Rollback(Exception):
    """Raised inside a transaction to roll it back; the real exception is re-raised outside."""


def _key(address: str) -> str:
    """A tracked recipient's key: the address trimmed and lower-cased, as :class:`MessageTrack` keys them."""
    return address.strip().lower()


def _check_track(track: MessageTrack) -> None:
    """Refuse a track that could never be matched or updated.

    :raises StorageError: no recipients, a blank Message-ID, a naive ``sent_at`` or a non-positive timeout.
    """
    if not track.recipients:
        raise StorageError("a tracked message needs at least one recipient")
    if not correlation_key(track.message_id):
        raise StorageError("a tracked message needs a Message-ID (the correlation key, DN-2)")
    _aware(track.sent_at, "track.sent_at")
    if track.timeout <= timedelta(0):
        raise StorageError("the notification timeout must be positive", timeout=str(track.timeout))


def _event_values(tracked_id: int, address: str, records: Sequence[Record]) -> list[dict[str, Any]]:
    """The column values of the ``tracking_events`` rows of ``records``."""
    return [
        {
            "tracked_id": tracked_id,
            "address": address,
            "at": _aware(record.at, "record.at"),
            "event": Event(record.event).value,
            "before": State(record.before).value,
            "after": State(record.after).value,
            "action": Action(record.action).value,
            "status": record.status,
            "detail": record.detail,
        }
        for record in records
    ]


def _record(row: Any) -> Record:
    return Record(
        at=row.at,
        event=Event(row.event),
        before=State(row.before),
        after=State(row.after),
        action=Action(row.action),
        status=row.status,
        detail=row.detail,
    )


class SqlStore(MessageStore, Queue, AuditLog, TrackingStore):
    """Message store, per-recipient queue, audit log and tracking store on one SQLAlchemy engine.

    :param engine: from :func:`~hisp.adapters.storage.engine.open_engine`, at the newest migration
        (see :meth:`open`).
    :param spool_dir: where bodies larger than ``inline_max`` go; ``None`` keeps every body in the database.
    :param inline_max: the largest body kept in the database when there is a spool directory, in bytes.
    :raises StorageError: the spool directory cannot be created, or ``inline_max`` is negative.

    Thread-safe: every method uses its own session and transaction.

    Spec: DESIGN.md sections 1 and 3, issue 5; issue 6 (tracking).
    """

    def __init__(self, engine: Engine, *, spool_dir: Path | None = None, inline_max: int = DEFAULT_INLINE_MAX) -> None:
        if inline_max < 0:
            raise StorageError("inline_max must be >= 0", inline_max=inline_max)
        self.engine = engine
        self.spool = Spool(spool_dir) if spool_dir is not None else None
        self.inline_max = inline_max
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._reader = read_only(engine)  # for transactions that only read (a deferred BEGIN on SQLite)
        self._read_sessions = sessionmaker(self._reader, expire_on_commit=False)
        self._prefetched: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._prefetch_lock = threading.Lock()

    @classmethod
    def open(
        cls, url: str, *, spool_dir: Path | None = None, inline_max: int = DEFAULT_INLINE_MAX, migrate: bool = True
    ) -> SqlStore:
        """Open the store at a storage URL, migrating it to the newest schema first (by default).

        :param url: ``sqlite:///FILE`` or ``postgresql+psycopg://...``.
        :param spool_dir: see the class.
        :param inline_max: see the class.
        :param migrate: run :func:`~hisp.adapters.storage.migrate.upgrade` first.
        :returns: the store; :meth:`close` it when done.
        :raises ConfigError: the URL is not usable.
        :raises StorageError: the database cannot be reached or migrated, or the spool cannot be created.
        """
        engine = open_engine(url)
        try:
            if migrate:
                upgrade(engine)
            return cls(engine, spool_dir=spool_dir, inline_max=inline_max)
        except HispError:
            engine.dispose()
            raise

    def close(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()

    @contextmanager
    def _tx(self, what: str, *, reads_only: bool = False) -> Iterator[Session]:
        """A session in a transaction, committed on success; database failures become StorageError.

        :param reads_only: the transaction only reads (see :func:`~hisp.adapters.storage.engine.read_only`).
        """
        sessions = self._read_sessions if reads_only else self._sessions
        try:
            with sessions() as session, session.begin():
                yield session
        except HispError:
            raise
        except (SQLAlchemyError, ValueError) as exc:
            raise StorageError(f"{what} failed: {exc.__class__.__name__}: {exc}") from exc

    @contextmanager
    def _core(self, what: str, commit: _Commit | None = None, *, reads_only: bool = False) -> Iterator[Connection]:
        """A connection in a transaction (Core, no ORM session), committed on success; database failures become
        StorageError. The same transaction as :meth:`_tx` (``BEGIN IMMEDIATE`` on SQLite), at a fraction of the
        cost: the hot paths use it.

        :param commit: marked :attr:`_Commit.sent` once the body has run without raising, just before the COMMIT
            is sent: a failure after that may have committed (an acknowledgement lost with the connection).
        :param reads_only: the transaction only reads (see :func:`~hisp.adapters.storage.engine.read_only`).
        """
        try:
            with (self._reader if reads_only else self.engine).begin() as connection:
                yield connection
                if commit is not None:
                    commit.sent = True
        except HispError:
            raise
        except (SQLAlchemyError, ValueError) as exc:
            raise StorageError(f"{what} failed: {exc.__class__.__name__}: {exc}") from exc

    # MessageStore --------------------------------------------------------------------------------------------

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

        Order: bodies to the spool (file fsynced, directory fsynced) if large, then one transaction with the
        message, its recipients (``queued``, due at ``now``) and the ``accept`` audit event, the same for each
        message of ``also``, and the track, committed durably. A crash or failure leaves all of it or none.

        :param envelope: the envelope; at least one recipient; duplicate addresses are stored once.
        :param raw: the message exactly as received.
        :param now: the time of acceptance.
        :param node: the accepting node, recorded with the messages and their audit events.
        :param audit: evidence for the ``accept`` audit event (verdict, fingerprints, remote peer).
        :param also: more messages stored and queued in the same transaction (e.g. processed MDNs), each with
            its own ``accept`` event built from its :attr:`~hisp.ports.Outbound.audit`.
        :param track: start tracking this message in the same transaction: a ``tracked_messages`` row under its
            queue id with ``track.message_id`` (the Message-ID as submitted), ``envelope.mail_from`` as the
            sender, the track's mode, ``sent_at``, deadline, timeout and ``complete``, and one
            ``tracked_recipients`` row per recipient of the track (its state). History records already in the
            track are stored too.
        :returns: the stored message (not those of ``also``), every recipient ``queued``.
        :raises StorageError: no recipient (in any message), a naive ``now``, a track without Message-ID or
            recipients, or nothing could be stored (no row is left; spool files already written are removed),
            or the COMMIT failed (its outcome unknown: the message may be stored, so its spool file stays).

        Spec: DESIGN.md section 1 ("a message answered 250 is on disk first"); issue 6 (tracking, MDNs).
        """
        _aware(now)
        if track is not None:
            _check_track(track)
        spooled: list[str] = []
        commit = _Commit()
        try:
            main = self._prepare(envelope, raw, now=now, node=node, audit=audit, spooled=spooled)
            others = [
                self._prepare(item.envelope, item.raw, now=now, node=node, audit=item.audit, spooled=spooled)
                for item in also
            ]
            with self._core("enqueue", commit) as connection:
                ids = self._add(connection, [main, *others])
                if track is not None:
                    self._add_track(
                        connection, track, queue_id=main.message["id"], sender=envelope.mail_from, now=now
                    )
        except BaseException:
            self._discard(spooled, commit)
            raise
        message = main.message
        return StoredMessage(
            id=message["id"],
            direction=envelope.direction,
            mail_from=message["mail_from"],
            header_message_id=message["header_message_id"],
            size=message["size"],
            sha256=message["sha256"],
            received_at=now,
            spooled=message["spool_path"] is not None,
            recipients=tuple(
                RecipientStatus(
                    id=recipient_id,
                    address=values["address"],
                    state=RecipientState.QUEUED,
                    attempts=0,
                    next_attempt_at=now,
                    claimed_by=None,
                    lease_until=None,
                    last_reply="",
                    updated_at=now,
                )
                for recipient_id, values in sorted(zip(ids, main.recipients, strict=True), key=lambda p: p[0])
            ),
        )

    def _prepare(
        self,
        envelope: Envelope,
        raw: bytes,
        *,
        now: datetime,
        node: str,
        audit: AuditRecord | None,
        spooled: list[str],
    ) -> _Prepared:
        """The rows of one message to enqueue; a large body is written to the spool first (its relative path
        appended to ``spooled``, for the caller to discard if the transaction fails).

        :raises StorageError: no recipient, or the spool file cannot be written.
        """
        addresses = list(dict.fromkeys(envelope.recipients))
        if not addresses:
            raise StorageError("a message needs at least one recipient")
        message_id = uuid.uuid4().hex
        digest = hashlib.sha256(raw).hexdigest()
        spool_path = None
        if self.spool is not None and len(raw) > self.inline_max:
            spool_path = self.spool.write(message_id, raw)
            spooled.append(spool_path)
        message = {
            "id": message_id,
            "direction": envelope.direction.value,
            "mail_from": envelope.mail_from,
            "header_message_id": envelope.message_id,
            "size": len(raw),
            "sha256": digest,
            "received_at": now,
            "node": node,
            "spool_path": spool_path,
            "content": None if spool_path is not None else bytes(raw),
        }
        recipients = [
            {
                "message_id": message_id,
                "address": address,
                "state": RecipientState.QUEUED.value,
                "attempts": 0,
                "next_attempt_at": now,
                "claimed_by": None,
                "claim_token": None,
                "lease_until": None,
                "last_reply": "",
                "updated_at": now,
            }
            for address in addresses
        ]
        accept = _audit_row(
            AuditKind.ACCEPT,
            now,
            node=node,
            message_id=message_id,
            header_message_id=envelope.message_id,
            record=audit or _NO_RECORD,
            mail_from=envelope.mail_from,
            recipients=addresses,
        )
        return _Prepared(message, recipients, accept)

    @staticmethod
    def _add(connection: Connection, prepared: Sequence[_Prepared]) -> list[int]:
        """Insert prepared messages, their recipients and their ``accept`` events in an open transaction: one
        statement per table for all of them (the recipients one statement each where the database has no
        RETURNING: SQLite before 3.35).

        :returns: the ids of the first message's recipients, in the order of its ``recipients``.
        """
        if not prepared:
            return []
        connection.execute(_INSERT_MESSAGE, [p.message for p in prepared])
        recipients = [r for p in prepared for r in p.recipients]
        ids: dict[tuple[int, str], int] = {}
        if connection.dialect.insert_executemany_returning:
            rows = connection.execute(_INSERT_RECIPIENTS, recipients)
            ids = {(row.message_id, row.address): int(row.id) for row in rows}
        else:  # no RETURNING (SQLite before 3.35): one INSERT per recipient, its id from the cursor
            for values in recipients:
                key = connection.execute(_INSERT_RECIPIENT, values).inserted_primary_key
                assert key is not None
                ids[(values["message_id"], values["address"])] = int(key[0])
        connection.execute(_INSERT_AUDIT, [p.accept for p in prepared])
        return [ids[(r["message_id"], r["address"])] for r in prepared[0].recipients]

    def _discard(self, spooled: Sequence[str], commit: _Commit) -> None:
        """Remove the spool files of a failed transaction, unless it may have committed.

        A failure once the COMMIT was sent (``commit.sent``) leaves its outcome unknown: PostgreSQL may have
        committed and the acknowledgement been lost with the connection, and a committed row without its body
        would lose the message. Those files stay; one whose row did not commit is an orphan, harmless, listed by
        :meth:`spool_orphans`.
        """
        if self.spool is not None and not commit.sent:
            for path in spooled:
                self.spool.discard(path)

    @staticmethod
    def _add_track(
        connection: Connection, track: MessageTrack, *, queue_id: str, sender: str, now: datetime
    ) -> None:
        """Insert the rows of a new track (message, recipients, any history) in an open transaction."""
        key = connection.execute(
            _INSERT_TRACKED,
            {
                "queue_id": queue_id,
                "header_message_id": track.message_id,
                "correlation": correlation_key(track.message_id),
                "sender": sender,
                "mode": Mode(track.mode).value,
                "sent_at": track.sent_at,
                "deadline": track.deadline,
                "timeout_seconds": track.timeout.total_seconds(),
                "consume_processed": track.consume_processed,
                "complete": track.complete,
                "claimed_by": None,
                "claim_token": None,
                "lease_until": None,
                "updated_at": now,
            },
        ).inserted_primary_key
        assert key is not None
        tracked_id = int(key[0])
        connection.execute(
            _INSERT_TRACKED_RECIPIENTS,
            [
                {"tracked_id": tracked_id, "address": r.address, "key": _key(k), "state": State(r.state).value}
                for k, r in track.recipients.items()
            ],
        )
        events = [
            values
            for recipient in track.recipients.values()
            for values in _event_values(tracked_id, recipient.address, recipient.history)
        ]
        if events:
            connection.execute(_INSERT_TRACKING_EVENTS, events)

    def raw(self, message_id: str) -> bytes:
        """The message's bytes as received, checked against the stored SHA-256.

        :param message_id: the queue id.
        :returns: the bytes.
        :raises StorageError: unknown message, no spool directory configured for a spooled body, unreadable
            spool file, or a digest mismatch.
        """
        with self._prefetch_lock:
            prefetched = self._prefetched.pop(message_id, None)
        if prefetched is not None:  # read by the claim (see PREFETCH_MAX); checked like any body
            content, digest = prefetched
            spool_path = None
        else:
            with self._core("read message", reads_only=True) as connection:
                row = connection.execute(_BODY, {"message_id": message_id}).first()
                if row is None:
                    raise StorageError(f"no message {message_id}", message_id=message_id)
                content, spool_path, digest = row
        if spool_path is not None:
            if self.spool is None:
                raise StorageError("message body is spooled but no spool directory is configured", path=spool_path)
            return self.spool.read(spool_path, digest)
        assert content is not None  # the one_body check constraint
        if hashlib.sha256(content).hexdigest() != digest:
            raise StorageError(f"message {message_id} does not match its SHA-256", message_id=message_id)
        return content

    def _recipients_of(self, session: Session, message_ids: Sequence[str]) -> dict[str, list[RecipientRow]]:
        grouped: dict[str, list[RecipientRow]] = {mid: [] for mid in message_ids}
        if message_ids:
            rows = session.scalars(select(RecipientRow).where(RecipientRow.message_id.in_(message_ids)))
            for row in rows:
                grouped[row.message_id].append(row)
        return grouped

    def list_messages(
        self, *, state: RecipientState | None = None, direction: Direction | None = None, limit: int = 100
    ) -> list[StoredMessage]:
        """Messages, newest first; with ``state``, those with at least one recipient in that state.

        Backs ``hisp messages list [--state STATE]``.

        :param state: keep messages having a recipient in this state.
        :param direction: keep messages of this direction.
        :param limit: at most this many messages.
        :returns: the messages with their recipients.
        :raises StorageError: ``limit`` < 1, or the database failed.

        Spec: issue 5 ("hisp messages list [--state ...]").
        """
        if limit < 1:
            raise StorageError("limit must be >= 1", limit=limit)
        query = select(MessageRow).order_by(MessageRow.received_at.desc(), MessageRow.id).limit(limit)
        if state is not None:
            query = query.where(
                exists().where(RecipientRow.message_id == MessageRow.id, RecipientRow.state == state.value)
            )
        if direction is not None:
            query = query.where(MessageRow.direction == direction.value)
        with self._tx("list messages", reads_only=True) as session:
            messages = list(session.scalars(query))
            grouped = self._recipients_of(session, [m.id for m in messages])
            return [_stored(m, grouped[m.id]) for m in messages]

    def show(self, key: str) -> MessageDetail:
        """One message by queue id, or by ``Message-ID`` header (with or without angle brackets; the newest such),
        with its delivery attempts, audit events and notifications.

        :param key: a queue id or a Message-ID.
        :returns: the detail.
        :raises StorageError: no such message, or the database failed.

        Spec: issue 5 ("hisp messages show MESSAGE-ID").
        """
        key = key.strip()
        candidates = [key, key.strip("<>"), f"<{key.strip('<>')}>"]
        with self._tx("show message", reads_only=True) as session:
            message = session.get(MessageRow, key)
            if message is None:
                message = session.scalars(
                    select(MessageRow)
                    .where(MessageRow.header_message_id.in_(candidates))
                    .order_by(MessageRow.received_at.desc(), MessageRow.id)
                    .limit(1)
                ).first()
            if message is None:
                raise StorageError(f"no message {key}", key=key)
            recipients = self._recipients_of(session, [message.id])[message.id]
            addresses = {r.id: r.address for r in recipients}
            attempts = session.scalars(
                select(DeliveryAttemptRow).where(DeliveryAttemptRow.message_id == message.id).order_by(
                    DeliveryAttemptRow.id
                )
            )
            events = session.scalars(
                select(AuditEventRow).where(AuditEventRow.message_id == message.id).order_by(AuditEventRow.seq)
            )
            notes = session.scalars(
                select(NotificationRow).where(NotificationRow.message_id == message.id).order_by(NotificationRow.id)
            )
            return MessageDetail(
                message=_stored(message, recipients),
                attempts=tuple(
                    DeliveryAttempt(
                        recipient_id=a.recipient_id,
                        address=addresses[a.recipient_id],
                        at=a.at,
                        node=a.node,
                        attempt=a.attempt,
                        result=RecipientState(a.result),
                        target=a.target,
                        reply=a.reply,
                        next_attempt_at=a.next_attempt_at,
                    )
                    for a in attempts
                ),
                events=tuple(_event(e) for e in events),
                notifications=tuple(_notification(n) for n in notes),
            )

    def spool_orphans(self) -> list[str]:
        """Spool files that no message names: left by a crash between the spool write and the commit, or by a
        COMMIT that failed and did not commit after all (the sender got no 250 for them). Safe to delete once no
        enqueue is running. Nothing deletes them on its own.

        :returns: relative spool paths.
        :raises StorageError: the database failed.
        """
        if self.spool is None:
            return []
        files = list(self.spool.files())
        with self._tx("list spool files", reads_only=True) as session:
            known = set(session.scalars(select(MessageRow.spool_path).where(MessageRow.spool_path.in_(files))))
        return [f for f in files if f not in known]

    # Queue ---------------------------------------------------------------------------------------------------

    def claim(self, node: str, now: datetime, lease_seconds: float, limit: int) -> list[Job]:
        """Claim up to ``limit`` due recipients for ``node`` until ``now + lease_seconds``.

        Due means ``queued`` with ``next_attempt_at <= now``, or ``in_flight`` with ``lease_until <= now``
        (reclaimed: its node vanished; the lost attempt is recorded). Oldest due first. Each claim counts as an
        attempt and gets a fresh claim token. Bodies of at most :data:`PREFETCH_MAX` bytes kept in the database
        are read in the same transaction and kept for the next :meth:`raw` of their message.

        :param node: the claiming node's name (non-empty).
        :param now: the current time.
        :param lease_seconds: the lease, ``0 < lease_seconds <= 86400``.
        :param limit: at most this many recipients, ``>= 1``.
        :returns: the claimed jobs, possibly none.
        :raises StorageError: bad arguments, or the database failed (nothing is claimed).

        Spec: DESIGN.md section 3 ("the queue claims work with SELECT ... FOR UPDATE SKIP LOCKED").
        """
        lease_until = _lease_until("claim", node, now, lease_seconds, limit)
        jobs: list[Job] = []
        bodies: dict[str, tuple[bytes, str]] = {}
        with self._core("claim") as connection:
            rows = connection.execute(_DUE, {"now": now, "limit": limit, "prefetch_max": PREFETCH_MAX}).all()
            if not rows:
                return jobs
            taken: list[dict[str, Any]] = []
            lost: list[dict[str, Any]] = []
            for row in rows:
                state = RecipientState(row.state)
                check_transition(state, RecipientState.IN_FLIGHT)
                if state is RecipientState.IN_FLIGHT:
                    lost.append(
                        {
                            "recipient_id": row.id,
                            "message_id": row.message_id,
                            "at": now,
                            "node": row.claimed_by or "",
                            "attempt": row.attempts,
                            "result": RecipientState.QUEUED.value,
                            "target": "",
                            "reply": f"lease expired at {row.lease_until}; reclaimed by {node}",
                            "next_attempt_at": now,
                        }
                    )
                if row.content is not None:
                    bodies[row.message_id] = (bytes(row.content), row.sha256)
                token = uuid.uuid4().hex
                attempt = row.attempts + 1
                taken.append(
                    {
                        "b_id": row.id,
                        "b_state": RecipientState.IN_FLIGHT.value,
                        "b_attempts": attempt,
                        "b_claimed_by": node,
                        "b_claim_token": token,
                        "b_lease_until": lease_until,
                        "b_updated_at": now,
                    }
                )
                jobs.append(
                    Job(
                        recipient_id=row.id,
                        message_id=row.message_id,
                        address=row.address,
                        direction=Direction(row.direction),
                        mail_from=row.mail_from,
                        received_at=row.received_at,
                        attempt=attempt,
                        node=node,
                        claim_token=token,
                        lease_until=lease_until,
                    )
                )
            if lost:
                connection.execute(_INSERT_ATTEMPTS, lost)
            connection.execute(_TAKE, taken)
        if bodies:  # committed: the claims are ours, and the worker asks for these bodies next
            with self._prefetch_lock:
                self._prefetched.update(bodies)
                while len(self._prefetched) > PREFETCH_ENTRIES:
                    self._prefetched.popitem(last=False)
        return jobs

    @staticmethod
    def _lost(connection: Connection, job: Job, new: RecipientState) -> StorageError:
        """Why ``job``'s claim could not be ended or renewed (its UPDATE matched no row): the error to raise.

        The claim token is set exactly while a recipient is in flight (:data:`_TAKE` sets both, :data:`_END`
        clears both), so a matching token on a recipient in another state is a refused transition.
        """
        row = connection.execute(_HELD, {"recipient_id": job.recipient_id}).first()
        if row is None:
            return StorageError(f"no recipient {job.recipient_id}", recipient_id=job.recipient_id)
        if row.claim_token != job.claim_token:
            return StorageError(
                f"claim on {job.address} of {job.message_id} was lost (state {row.state}, held by {row.claimed_by})",
                recipient_id=job.recipient_id,
                state=row.state,
                claimed_by=row.claimed_by,
            )
        state = RecipientState(row.state)
        try:
            check_transition(state, new)
        except StorageError as exc:
            return exc
        return StorageError(
            f"claim on {job.address} of {job.message_id}: the recipient is {state.value}, not in flight",
            recipient_id=job.recipient_id,
            state=row.state,
        )

    def _end(
        self,
        connection: Connection,
        job: Job,
        new: RecipientState,
        now: datetime,
        *,
        target: str,
        reply: str,
        next_at: datetime | None = None,
    ) -> None:
        """End the claim of ``job`` if it still holds its recipient: the recipient moves from ``in_flight`` to
        ``new`` (after :func:`check_transition`), the claim is released, and the attempt is recorded.

        :raises StorageError: the claim was lost (or the recipient is gone); nothing was changed.
        """
        check_transition(RecipientState.IN_FLIGHT, new)
        ended = connection.execute(
            _END,
            {
                "b_id": job.recipient_id,
                "b_token": job.claim_token,
                "b_state": new.value,
                "b_next_attempt_at": next_at,
                "b_last_reply": reply,
                "b_updated_at": now,
            },
        )
        if ended.rowcount != 1:
            raise self._lost(connection, job, new)
        connection.execute(
            _INSERT_ATTEMPTS,
            {
                "recipient_id": job.recipient_id,
                "message_id": job.message_id,
                "at": now,
                "node": job.node,
                "attempt": job.attempt,
                "result": new.value,
                "target": target,
                "reply": reply,
                "next_attempt_at": next_at,
            },
        )

    @staticmethod
    def _audit_job(
        connection: Connection, kind: AuditKind, job: Job, now: datetime, record: AuditRecord
    ) -> None:
        """Append the audit event of an ended claim (``header_message_id`` read from the message's row)."""
        values = _audit_row(
            kind, now, node=job.node, message_id=job.message_id, header_message_id=None,
            record=record, mail_from=job.mail_from, recipients=(job.address,),
        )
        del values["header_message_id"]
        values["b_message_id"] = job.message_id
        connection.execute(_INSERT_AUDIT_OF_MESSAGE, values)

    def renew(self, job: Job, now: datetime, lease_seconds: float) -> Job:
        """Extend the lease of a claim still held, to ``now + lease_seconds``.

        :param job: the claim.
        :param now: the current time.
        :param lease_seconds: the new lease from ``now``, ``0 < lease_seconds <= 86400``.
        :returns: the job with its new ``lease_until``.
        :raises StorageError: the claim was lost, the lease is out of range, or the database failed.
        """
        _aware(now)
        if not 0 < lease_seconds <= MAX_LEASE_SECONDS:
            raise StorageError("lease_seconds out of range", lease_seconds=lease_seconds)
        lease_until = now + timedelta(seconds=lease_seconds)
        check_transition(RecipientState.IN_FLIGHT, RecipientState.IN_FLIGHT)
        with self._core("renew") as connection:
            renewed = connection.execute(
                _RENEW,
                {
                    "b_id": job.recipient_id,
                    "b_token": job.claim_token,
                    "b_lease_until": lease_until,
                    "b_updated_at": now,
                },
            )
            if renewed.rowcount != 1:
                raise self._lost(connection, job, RecipientState.IN_FLIGHT)
        return replace(job, lease_until=lease_until)

    def complete(self, job: Job, now: datetime, *, target: str, reply: str, audit: AuditRecord | None = None) -> None:
        """The recipient was relayed (outgoing) or delivered (incoming): it leaves the queue ``delivered``.

        Appends a ``relay`` (outgoing) or ``deliver`` (incoming) audit event in the same transaction.

        :param job: the claim.
        :param now: the current time.
        :param target: where it went, e.g. ``"smtp://mx.hospital.example:25"`` or ``"maildir:/srv/ehr"``.
        :param reply: the final SMTP reply or the delivery result, one line.
        :param audit: evidence for the audit event (fingerprints, verdict).
        :raises StorageError: the claim was lost, or the database failed.

        Spec: issue 5 ("Audit: every ... relay, delivery ... is an event").
        """
        _aware(now)
        kind = AuditKind.RELAY if job.direction is Direction.OUTGOING else AuditKind.DELIVER
        with self._core("complete") as connection:
            self._end(connection, job, RecipientState.DELIVERED, now, target=target, reply=reply)
            self._audit_job(connection, kind, job, now, audit or AuditRecord(reason=reply))

    def retry_later(self, job: Job, now: datetime, next_at: datetime, *, target: str, reply: str) -> None:
        """A transient failure: the recipient is ``queued`` again, due at ``next_at``.

        Also the way to hand a claim back unfinished (``next_at=now``, e.g. at shutdown).

        :param job: the claim.
        :param now: the current time.
        :param next_at: when to try again, ``>= now`` (see :meth:`hisp.ports.RetrySchedule.next_attempt_at`).
        :param target: where delivery was tried.
        :param reply: the 4xx reply or the connection error, one line.
        :raises StorageError: ``next_at`` before ``now``, the claim was lost, or the database failed.

        Spec: issue 5 ("retries on 4xx and connection failures with exponential backoff").
        """
        _aware(now)
        _aware(next_at, "next_at")
        if next_at < now:
            raise StorageError("next_at is before now", now=now.isoformat(), next_at=next_at.isoformat())
        with self._core("retry later") as connection:
            self._end(connection, job, RecipientState.QUEUED, now, target=target, reply=reply, next_at=next_at)

    def bounce(
        self, job: Job, now: datetime, reason: str, *, target: str = "", reply: str = "",
        audit: AuditRecord | None = None,
    ) -> RecipientState:
        """A permanent failure: the recipient leaves the queue.

        With a reverse-path it ends ``bounced`` and a pending DSN notification row is added for the sender;
        with the null reverse-path (a bounce or MDN itself) it ends ``failed`` and no DSN is owed. Either way a
        ``bounce`` audit event with ``reason`` is appended in the same transaction.

        :param job: the claim.
        :param now: the current time.
        :param reason: why, one line (the 5xx reply, "certificate not found", "lifetime expired").
        :param target: where delivery was tried, if anywhere.
        :param reply: the SMTP reply, if any (defaults to ``reason``).
        :param audit: evidence for the audit event.
        :returns: :attr:`RecipientState.BOUNCED` or :attr:`RecipientState.FAILED`.
        :raises StorageError: the claim was lost, or the database failed.

        Spec: DESIGN.md section 1 ("bounced with a DSN to its sender"); RFC 5321 section 4.5.5; RFC 3464.
        """
        _aware(now)
        final = RecipientState.BOUNCED if job.mail_from else RecipientState.FAILED
        with self._core("bounce") as connection:
            self._end(connection, job, final, now, target=target, reply=reply or reason)
            if final is RecipientState.BOUNCED:
                connection.execute(
                    _INSERT_NOTIFICATION,
                    {
                        "kind": NotificationKind.DSN.value,
                        "message_id": job.message_id,
                        "recipient_id": job.recipient_id,
                        "address": job.mail_from,
                        "status": NotificationStatus.PENDING.value,
                        "created_at": now,
                        "updated_at": now,
                        "detail": reason,
                    },
                )
            record = audit or AuditRecord()
            if not record.reason:
                record = AuditRecord(
                    mail_from=record.mail_from, recipients=record.recipients, fingerprints=record.fingerprints,
                    verdict=record.verdict, reason=reason, remote=record.remote,
                )
            self._audit_job(connection, AuditKind.BOUNCE, job, now, record)
        return final

    # AuditLog ------------------------------------------------------------------------------------------------

    def append(
        self, kind: AuditKind, now: datetime, *, node: str = "", message_id: str | None = None,
        header_message_id: str | None = None, record: AuditRecord = _NO_RECORD,
    ) -> AuditEvent:
        """Append one audit event (e.g. a ``reject``, which has no stored message, or a ``notify``).

        :param kind: what happened.
        :param now: when.
        :param node: the node it happened on.
        :param message_id: the queue id, if the message was stored.
        :param header_message_id: the RFC 5322 Message-ID, if known.
        :param record: addresses, fingerprints, verdict, reason, remote peer.
        :returns: the event with its sequence number.
        :raises StorageError: the event was not stored.

        Spec: issue 5 ("Audit: every accept, reject, relay, delivery, bounce and notification is an event").
        """
        _aware(now)
        values = _audit_row(
            kind, now, node=node, message_id=message_id, header_message_id=header_message_id, record=record
        )
        with self._core("append audit event") as connection:
            key = connection.execute(_INSERT_AUDIT, values).inserted_primary_key
        assert key is not None
        return AuditEvent(
            seq=int(key[0]),
            at=now,
            kind=kind,
            node=node,
            message_id=message_id,
            header_message_id=header_message_id,
            mail_from=values["mail_from"],
            recipients=tuple(values["recipients"]),
            fingerprints=tuple(values["fingerprints"]),
            verdict=record.verdict,
            reason=record.reason,
            remote=record.remote,
        )

    def events(self, *, message_id: str | None = None, after: int = 0, limit: int = 1000) -> list[AuditEvent]:
        """Audit events with ``seq > after``, in append order, optionally for one message.

        :param message_id: keep this message's events.
        :param after: the last sequence number already seen (0 for all).
        :param limit: at most this many, ``>= 1``.
        :returns: the events.
        :raises StorageError: ``limit`` < 1, or the database failed.
        """
        if limit < 1:
            raise StorageError("limit must be >= 1", limit=limit)
        query = select(AuditEventRow).where(AuditEventRow.seq > after).order_by(AuditEventRow.seq).limit(limit)
        if message_id is not None:
            query = query.where(AuditEventRow.message_id == message_id)
        with self._tx("read audit events", reads_only=True) as session:
            return [_event(row) for row in session.scalars(query)]

    def rejections(self, *, header_message_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """``reject`` audit events, newest first: messages refused before their 250 reply, never stored (AS-14).

        :param header_message_id: keep those of this Message-ID (with or without angle brackets).
        :param limit: at most this many, ``>= 1``.
        :returns: the events.
        :raises StorageError: ``limit`` < 1, or the database failed.

        Spec: AS-14 (every refusal explained); issue 5 ("every ... reject ... is an event").
        """
        if limit < 1:
            raise StorageError("limit must be >= 1", limit=limit)
        query = (
            select(AuditEventRow)
            .where(AuditEventRow.kind == AuditKind.REJECT.value)
            .order_by(AuditEventRow.seq.desc())
            .limit(limit)
        )
        if header_message_id is not None:
            key = header_message_id.strip()
            candidates = [key, key.strip("<>"), f"<{key.strip('<>')}>"]
            query = query.where(AuditEventRow.header_message_id.in_(candidates))
        with self._tx("read reject events", reads_only=True) as session:
            return [_event(row) for row in session.scalars(query)]

    # Notifications (placeholder for the notifications issue) -------------------------------------------------

    def notifications(self, *, status: NotificationStatus | None = None, limit: int = 100) -> list[Notification]:
        """Notification rows, oldest first, optionally only those with ``status``.

        :raises StorageError: ``limit`` < 1, or the database failed.
        """
        if limit < 1:
            raise StorageError("limit must be >= 1", limit=limit)
        query = select(NotificationRow).order_by(NotificationRow.id).limit(limit)
        if status is not None:
            query = query.where(NotificationRow.status == status.value)
        with self._tx("list notifications", reads_only=True) as session:
            return [_notification(row) for row in session.scalars(query)]

    def settle_owed_dsn(self, job: Job, now: datetime, *, detail: str | None) -> None:
        """See :meth:`hisp.ports.Queue.settle_owed_dsn`: the pending DSN row of ``job``'s recipient marked ``sent``
        with ``detail`` (at most 500 characters), or removed when ``detail`` is None. Nothing happens when there is
        no pending row (a ``failed`` recipient, or settled already).

        :raises StorageError: a naive ``now``, or the database failed.

        Spec: RFC 3464 (the DSN owed to the sender); DN-8 (one terminal notice); AS-19.
        """
        _aware(now)
        owed = (
            (NotificationRow.message_id == job.message_id)
            & (NotificationRow.recipient_id == job.recipient_id)
            & (NotificationRow.kind == NotificationKind.DSN.value)
            & (NotificationRow.status == NotificationStatus.PENDING.value)
        )
        with self._core("settle owed DSN") as connection:
            if detail is None:
                connection.execute(delete(NotificationRow).where(owed))
            else:
                connection.execute(
                    update(NotificationRow)
                    .where(owed)
                    .values(status=NotificationStatus.SENT.value, detail=detail[:500], updated_at=now)
                )

    def set_notification_status(self, notification_id: int, status: NotificationStatus, now: datetime) -> None:
        """Mark a pending notification sent or failed.

        :raises StorageError: unknown notification, one no longer pending, or the database failed.
        """
        _aware(now)
        with self._tx("update notification") as session:
            row = session.get(NotificationRow, notification_id, with_for_update=True)
            if row is None:
                raise StorageError(f"no notification {notification_id}")
            if row.status != NotificationStatus.PENDING.value or status is NotificationStatus.PENDING:
                raise StorageError(
                    f"notification {notification_id}: {row.status} -> {status.value} is not allowed",
                    status=row.status,
                )
            row.status = status.value
            row.updated_at = now

    # TrackingStore -------------------------------------------------------------------------------------------

    @staticmethod
    def _find_track(
        connection: Connection, *, header_message_id: str | None = None, queue_id: str | None = None,
        lock: bool = False,
    ) -> Any:
        """The track row of a queue id, or the newest (``sent_at``, then ``id``) under a Message-ID's correlation
        key; locked for the transaction with ``lock`` (``FOR UPDATE`` on PostgreSQL). None when there is none."""
        if queue_id is not None:
            query, params = (_TRACK_BY_QUEUE_ID_LOCKED if lock else _TRACK_BY_QUEUE_ID), {"queue_id": queue_id}
        else:
            assert header_message_id is not None
            query = _TRACK_BY_KEY_LOCKED if lock else _TRACK_BY_KEY
            params = {"correlation": correlation_key(header_message_id)}
        return connection.execute(query, params).first()

    @staticmethod
    def _load(connection: Connection, row: Any) -> _Loaded:
        """The track of ``row`` with its recipients' states and histories (records in ``id`` order)."""
        recipient_rows: dict[str, tuple[int, str, State]] = {}
        tracks: dict[str, RecipientTrack] = {}
        for r in connection.execute(_TRACK_RECIPIENTS, {"tracked_id": row.id}):
            recipient = tracks.get(r.key)
            if recipient is None:
                state = State(r.state)
                recipient_rows[r.key] = (r.id, r.address, state)
                recipient = tracks[r.key] = RecipientTrack(r.address, state)
            if r.event_id is not None:
                recipient.history.append(_record(r))
        track = MessageTrack(
            message_id=row.header_message_id,
            sent_at=row.sent_at,
            mode=Mode(row.mode),
            recipients=tracks,
            timeout=timedelta(seconds=row.timeout_seconds),
            consume_processed=row.consume_processed,
            rearmed_until=row.deadline,
        )
        tracked = TrackedMessage(
            queue_id=row.queue_id,
            header_message_id=row.header_message_id,
            sender=row.sender,
            track=track,
            complete=row.complete,
        )
        history = {key: list(t.history) for key, t in tracks.items()}
        return _Loaded(tracked, row.id, recipient_rows, history)

    @staticmethod
    def _persist(connection: Connection, loaded: _Loaded, now: datetime) -> None:
        """Write back what ``decide`` changed: states, appended records, ``complete``; release the claim.

        :raises StorageError: ``decide`` added or removed recipients, or rewrote history instead of appending.
        """
        tracked = loaded.tracked
        track = tracked.track
        if set(track.recipients) != set(loaded.rows):
            raise StorageError(
                f"tracking of {tracked.queue_id}: the decision added or removed recipients", queue_id=tracked.queue_id
            )
        states: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for key, (recipient_id, address, state) in loaded.rows.items():
            recipient = track.recipients[key]
            before = loaded.history[key]
            if recipient.history[: len(before)] != before:
                raise StorageError(
                    f"tracking of {tracked.queue_id}: the decision rewrote the history of {address}",
                    queue_id=tracked.queue_id,
                )
            if State(recipient.state) is not state:  # an unchanged state is not written again
                states.append({"b_id": recipient_id, "b_state": State(recipient.state).value})
            events.extend(_event_values(loaded.tracked_id, address, recipient.history[len(before) :]))
        if states:
            connection.execute(_TRACK_RECIPIENT_STATE, states)
        if events:
            connection.execute(_INSERT_TRACKING_EVENTS, events)
        connection.execute(
            _TRACK_SETTLE,
            {
                "b_id": loaded.tracked_id, "b_complete": track.complete, "b_deadline": track.deadline,
                "b_updated_at": now,
            },
        )

    def update_tracking(
        self,
        decide: Callable[[TrackedMessage], TrackDecision[_R]],
        *,
        now: datetime,
        node: str = "",
        header_message_id: str | None = None,
        queue_id: str | None = None,
    ) -> _R | None:
        """Load one track locked, let ``decide`` change it, and persist the change and its messages atomically.

        The track is found by ``queue_id``, or by the correlation key (:func:`~hisp.core.tracking.correlation_key`)
        of ``header_message_id``, taking the newest such (highest ``sent_at``, then ``id``); it is locked for the
        transaction (``SELECT ... FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite), so concurrent
        updates of one track are serialised and none is lost. ``decide`` gets a
        :class:`~hisp.ports.TrackedMessage` whose :class:`~hisp.core.tracking.MessageTrack` holds every
        recipient's state and full history, and mutates it (``apply``, ``expire``). Then, in the same transaction:
        each recipient's state, the history records ``decide`` appended, ``complete = track.complete``, the
        timeout claim released (see :meth:`claim_expired`), ``updated_at = now``, and each message of
        ``decision.enqueue`` stored and queued as by :meth:`enqueue` (its ``accept`` audit event by ``node``;
        large bodies spooled first and removed again if the transaction fails before its COMMIT is sent).

        ``decide`` runs while the lock is held: it must be quick and must not use this store.

        :param decide: mutates the track; returns the result and the messages to enqueue. It may only change
            states and append history records (not add or remove recipients).
        :param now: the current time (``updated_at``, ``received_at`` of the enqueued messages).
        :param node: this node, for the ``accept`` audit events.
        :param header_message_id: a Message-ID in any bracket, space or case form (DN-2).
        :param queue_id: the queue id (32 hex digits) of the tracked message.
        :returns: ``decision.result``; ``None`` without calling ``decide`` when nothing is tracked under the key.
        :raises StorageError: neither or both keys, a naive ``now``, a decision that added or removed
            recipients or rewrote history, a message to enqueue without recipients, or the database failed;
            nothing was changed.
        :raises Exception: whatever ``decide`` raised, unchanged; nothing was changed.

        Spec: DN-7..DN-10 (the state machine is in :mod:`hisp.core.tracking`); issue 6.
        """
        _aware(now)
        if (header_message_id is None) == (queue_id is None):
            raise StorageError("update_tracking needs exactly one of header_message_id and queue_id")
        failure: Exception | None = None
        result: _R | None = None
        spooled: list[str] = []
        commit = _Commit()
        try:
            with self._core("update tracking", commit) as connection:
                row = self._find_track(
                    connection, header_message_id=header_message_id, queue_id=queue_id, lock=True
                )
                if row is None:
                    return None
                loaded = self._load(connection, row)
                try:
                    decision = decide(loaded.tracked)
                except Exception as exc:  # re-raised below, unchanged, once the transaction is rolled back
                    failure = exc
                    raise _Rollback from None
                self._persist(connection, loaded, now)
                self._add(
                    connection,
                    [
                        self._prepare(item.envelope, item.raw, now=now, node=node, audit=item.audit, spooled=spooled)
                        for item in decision.enqueue
                    ],
                )
                result = decision.result
        except _Rollback:
            pass
        except BaseException:
            self._discard(spooled, commit)
            raise
        if failure is not None:
            raise failure
        return result

    def claim_expired(self, node: str, now: datetime, lease_seconds: float, limit: int) -> list[str]:
        """Claim up to ``limit`` incomplete tracks whose deadline has passed, for ``node`` until
        ``now + lease_seconds``.

        Due means ``complete`` false, ``deadline <= now``, and no live claim: never claimed, released by
        :meth:`update_tracking`, or ``lease_until <= now`` (its node vanished; the same boundary as
        :meth:`claim`). Oldest deadline first. Selected with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, inside
        ``BEGIN IMMEDIATE`` on SQLite, so several nodes never claim the same track at once. The claim ends with
        :meth:`update_tracking` (which releases it) or by expiring.

        :param node: the claiming node's name (non-empty).
        :param now: the current time.
        :param lease_seconds: the lease, ``0 < lease_seconds <= 86400``.
        :param limit: at most this many tracks, ``>= 1``.
        :returns: the queue ids of the claimed tracks, possibly none.
        :raises StorageError: bad arguments, or the database failed (nothing is claimed).

        Spec: DN-9 (the timeout counts from the original send); DESIGN.md section 3 (SKIP LOCKED).
        """
        lease_until = _lease_until("claim_expired", node, now, lease_seconds, limit)
        query = (
            select(TrackedMessageRow)
            .where(
                TrackedMessageRow.complete == false(),
                TrackedMessageRow.deadline <= now,
                or_(TrackedMessageRow.lease_until.is_(None), TrackedMessageRow.lease_until <= now),
            )
            .order_by(TrackedMessageRow.deadline, TrackedMessageRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self._tx("claim expired tracks") as session:
            rows = list(session.scalars(query))
            for row in rows:
                row.claimed_by = node
                row.claim_token = uuid.uuid4().hex
                row.lease_until = lease_until
                row.updated_at = now
            return [row.queue_id for row in rows]

    def tracking(self, key: str) -> TrackedMessage:
        """One track, for ``hisp track``: by queue id (32 hex digits), else by the correlation key of a
        Message-ID (with or without angle brackets, any case; the newest such).

        :param key: a queue id or a Message-ID.
        :returns: the tracked message with every recipient's state and history.
        :raises StorageError: nothing is tracked under ``key``, or the database failed.

        Spec: issue 6 ("Delivery status is data, not only mail: ``hisp track MESSAGE-ID [--json]``").
        """
        key = key.strip()
        with self._core("read tracking", reads_only=True) as connection:
            row = None
            if _QUEUE_ID.fullmatch(key):
                row = self._find_track(connection, queue_id=key.lower())
            if row is None and correlation_key(key):
                row = self._find_track(connection, header_message_id=key)
            if row is None:
                raise StorageError(f"nothing is tracked under {key}", key=key)
            return self._load(connection, row).tracked
