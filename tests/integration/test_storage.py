"""SqlStore against real databases (SQLite always, PostgreSQL when HISP_TEST_POSTGRES_URL is set): enqueue, the
queue's claim/renew/complete/retry/bounce, reclaim after a lease expires, lost claims, list/show, and the audit log.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from hisp.adapters.storage import SqlStore
from hisp.errors import StorageError
from hisp.ports import (
    AuditKind,
    AuditLog,
    AuditRecord,
    Direction,
    Envelope,
    MessageStore,
    NotificationKind,
    NotificationStatus,
    Queue,
    RecipientState,
)

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
SENDER = "dr.smith@direct.clinic.example"
JONES = "dr.jones@direct.hospital.example"
LEE = "dr.lee@direct.hospital.example"


def _message(size: int = 200) -> bytes:
    head = b"From: dr.smith@direct.clinic.example\r\nMessage-ID: <m1@clinic>\r\nSubject: referral\r\n\r\n"
    return head + (b"x" * 76 + b"\r\n") * (size // 78 + 1)


def _enqueue(store: SqlStore, *recipients: str, size: int = 200, mail_from: str = SENDER, at: datetime = T0) -> str:
    envelope = Envelope(Direction.OUTGOING, mail_from, recipients or (JONES,), "<m1@clinic>")
    return store.enqueue(envelope, _message(size), now=at, node="n1").id


def test_implements_the_ports(store: SqlStore) -> None:
    assert isinstance(store, MessageStore)
    assert isinstance(store, Queue)
    assert isinstance(store, AuditLog)


@pytest.mark.parametrize("size", [100, 1024, 5000], ids=["inline", "inline-limit", "spooled"])
def test_enqueue_stores_bytes_and_queues_each_recipient(store: SqlStore, tmp_path: Path, size: int) -> None:
    raw = _message(size)
    stored = store.enqueue(
        Envelope(Direction.OUTGOING, SENDER, (JONES, LEE, JONES), "<m1@clinic>"), raw, now=T0, node="n1"
    )
    assert stored.size == len(raw)
    assert stored.spooled is (len(raw) > 1024)
    assert [r.address for r in stored.recipients] == [JONES, LEE]  # duplicates stored once
    assert {r.state for r in stored.recipients} == {RecipientState.QUEUED}
    assert store.raw(stored.id) == raw
    spooled = list((tmp_path / "spool").rglob("*.eml"))
    assert len(spooled) == (1 if stored.spooled else 0)
    if stored.spooled:
        assert spooled[0].read_bytes() == raw
    assert store.spool_orphans() == []


def test_enqueue_refuses_bad_input(store: SqlStore) -> None:
    with pytest.raises(StorageError, match="recipient"):
        store.enqueue(Envelope(Direction.INCOMING, SENDER, ()), b"x", now=T0)
    with pytest.raises(StorageError, match="aware"):
        store.enqueue(Envelope(Direction.INCOMING, SENDER, (JONES,)), b"x", now=T0.replace(tzinfo=None))
    assert store.list_messages() == []


def test_raw_detects_a_damaged_spool_file(store: SqlStore, tmp_path: Path) -> None:
    message_id = _enqueue(store, size=4000)
    (path,) = (tmp_path / "spool").rglob("*.eml")
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(StorageError, match="SHA-256"):
        store.raw(message_id)
    path.unlink()
    with pytest.raises(StorageError, match="cannot be read"):
        store.raw(message_id)
    with pytest.raises(StorageError, match="no message"):
        store.raw("0" * 32)


def test_claim_complete_leaves_the_queue_delivered(store: SqlStore) -> None:
    message_id = _enqueue(store, JONES, LEE)
    assert store.claim("n1", T0 - timedelta(seconds=1), 60, 10) == []  # not due yet
    jobs = store.claim("n1", T0, 60, 10)
    assert [(j.address, j.attempt, j.direction) for j in jobs] == [
        (JONES, 1, Direction.OUTGOING),
        (LEE, 1, Direction.OUTGOING),
    ]
    assert store.claim("n2", T0, 60, 10) == []  # held
    later = T0 + timedelta(seconds=5)
    store.complete(jobs[0], later, target="smtp://mx.hospital.example:25", reply="250 2.0.0 ok")
    store.complete(jobs[1], later, target="smtp://mx.hospital.example:25", reply="250 2.0.0 ok")
    detail = store.show(message_id)
    assert {r.state for r in detail.message.recipients} == {RecipientState.DELIVERED}
    assert [a.result for a in detail.attempts] == [RecipientState.DELIVERED] * 2
    assert [e.kind for e in detail.events] == [AuditKind.ACCEPT, AuditKind.RELAY, AuditKind.RELAY]
    assert {e.header_message_id for e in detail.events} == {"<m1@clinic>"}
    assert store.claim("n1", T0 + timedelta(days=30), 60, 10) == []
    with pytest.raises(StorageError, match="lost"):
        store.complete(jobs[0], later, target="x", reply="again")  # a job ends once


def test_claim_reads_small_bodies_for_the_next_raw(store: SqlStore, tmp_path: Path) -> None:
    # The worker reads the body right after claiming: a body kept in the database comes with the claim, so that
    # raw() needs no transaction of its own; it is still checked, handed out once, and a spooled body is read
    # from its file as before.
    from sqlalchemy import event

    small = _enqueue(store, size=200)
    large = _enqueue(store, size=4000)  # over inline_max (1024): in the spool
    jobs = store.claim("n1", T0, 60, 10)
    assert {j.message_id for j in jobs} == {small, large}
    begins: list[object] = []

    def count(_connection: object) -> None:
        begins.append(_connection)

    event.listen(store.engine, "begin", count)
    try:
        assert store.raw(small) == _message(200)
        assert begins == []  # from the claim
        assert store.raw(small) == _message(200)  # once handed out, read again from the database
        assert len(begins) == 1
        assert store.raw(large) == _message(4000)  # spooled: from its file, via its row
        assert len(begins) == 2
    finally:
        event.remove(store.engine, "begin", count)
    (path,) = (tmp_path / "spool").rglob("*.eml")
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(StorageError, match="SHA-256"):
        store.raw(large)


def test_retry_later_then_bounce_with_dsn(store: SqlStore) -> None:
    message_id = _enqueue(store)
    (job,) = store.claim("n1", T0, 60, 10)
    retry_at = T0 + timedelta(minutes=5)
    store.retry_later(job, T0 + timedelta(seconds=3), retry_at, target="smtp://mx:25", reply="451 4.4.1 busy")
    assert store.claim("n1", retry_at - timedelta(seconds=1), 60, 10) == []
    (again,) = store.claim("n2", retry_at, 60, 10)
    assert (again.attempt, again.node) == (2, "n2")
    with pytest.raises(StorageError, match="lost"):
        store.retry_later(job, retry_at, retry_at, target="", reply="")  # the first claim ended
    state = store.bounce(again, retry_at, "550 5.1.1 no such user", target="smtp://mx:25")
    assert state is RecipientState.BOUNCED
    detail = store.show("<m1@clinic>")  # by Message-ID header too
    assert detail.message.id == message_id
    assert [r.state for r in detail.message.recipients] == [RecipientState.BOUNCED]
    assert [(a.result, a.reply) for a in detail.attempts] == [
        (RecipientState.QUEUED, "451 4.4.1 busy"),
        (RecipientState.BOUNCED, "550 5.1.1 no such user"),
    ]
    (dsn,) = detail.notifications
    assert (dsn.kind, dsn.status, dsn.address) == (NotificationKind.DSN, NotificationStatus.PENDING, SENDER)
    assert [e.kind for e in detail.events] == [AuditKind.ACCEPT, AuditKind.BOUNCE]
    assert detail.events[-1].reason == "550 5.1.1 no such user"
    store.set_notification_status(dsn.id, NotificationStatus.SENT, retry_at)
    assert store.notifications(status=NotificationStatus.PENDING) == []
    with pytest.raises(StorageError, match="not allowed"):
        store.set_notification_status(dsn.id, NotificationStatus.FAILED, retry_at)


def test_bounce_of_a_bounce_fails_without_dsn(store: SqlStore) -> None:
    message_id = _enqueue(store, mail_from="")
    (job,) = store.claim("n1", T0, 60, 1)
    assert store.bounce(job, T0, "550 5.1.1 no such user") is RecipientState.FAILED
    detail = store.show(message_id)
    assert detail.notifications == ()
    assert detail.message.recipients[0].state is RecipientState.FAILED


def test_retry_later_refuses_the_past(store: SqlStore) -> None:
    _enqueue(store)
    (job,) = store.claim("n1", T0, 60, 1)
    with pytest.raises(StorageError, match="before now"):
        store.retry_later(job, T0, T0 - timedelta(seconds=1), target="", reply="")


def test_expired_lease_is_reclaimed_and_the_old_claim_is_lost(store: SqlStore) -> None:
    message_id = _enqueue(store)
    (job,) = store.claim("n1", T0, 30, 10)
    renewed = store.renew(job, T0 + timedelta(seconds=20), 30)
    assert renewed.lease_until == T0 + timedelta(seconds=50)
    assert store.claim("n2", T0 + timedelta(seconds=49), 30, 10) == []  # renewed lease still holds
    (taken,) = store.claim("n2", T0 + timedelta(seconds=50), 30, 10)  # n1 vanished: its lease ran out
    assert (taken.node, taken.attempt, taken.recipient_id) == ("n2", 2, job.recipient_id)
    for late in (
        lambda: store.renew(renewed, T0 + timedelta(seconds=51), 30),
        lambda: store.complete(renewed, T0 + timedelta(seconds=51), target="x", reply="250"),
        lambda: store.bounce(renewed, T0 + timedelta(seconds=51), "550"),
    ):
        with pytest.raises(StorageError, match="lost"):
            late()
    store.complete(taken, T0 + timedelta(seconds=55), target="x", reply="250 ok")
    detail = store.show(message_id)
    assert [(a.node, a.result) for a in detail.attempts] == [
        ("n1", RecipientState.QUEUED),  # the lost attempt, recorded at reclaim
        ("n2", RecipientState.DELIVERED),
    ]


def test_an_expired_but_unclaimed_lease_still_ends_the_job(store: SqlStore) -> None:
    _enqueue(store)
    (job,) = store.claim("n1", T0, 30, 10)
    store.complete(job, T0 + timedelta(minutes=5), target="x", reply="250 ok")
    assert store.claim("n2", T0 + timedelta(minutes=6), 30, 10) == []


def test_claim_limit_and_order(store: SqlStore) -> None:
    first = _enqueue(store, JONES, at=T0)
    second = _enqueue(store, LEE, at=T0 + timedelta(seconds=1))
    (a,) = store.claim("n1", T0 + timedelta(seconds=2), 60, 1)
    (b,) = store.claim("n1", T0 + timedelta(seconds=2), 60, 1)
    assert (a.message_id, b.message_id) == (first, second)
    with pytest.raises(StorageError):
        store.claim("n1", T0, 0, 1)
    with pytest.raises(StorageError):
        store.claim("n1", T0, 60, 0)
    with pytest.raises(StorageError):
        store.claim("", T0, 60, 1)


def test_a_message_leaves_the_queue_only_delivered_or_bounced(store: SqlStore) -> None:
    """Drive 30 recipients with every mix of outcomes until the queue is empty: each ends final, none is lost."""
    ids = [_enqueue(store, f"r{i}@direct.hospital.example", at=T0) for i in range(30)]
    now = T0
    for _round in range(10):
        jobs = store.claim("n1", now, 60, 100)
        for job in jobs:
            outcome = (job.recipient_id + job.attempt) % 3
            if outcome == 0:
                store.complete(job, now, target="t", reply="250")
            elif outcome == 1 and job.attempt < 3:
                store.retry_later(job, now, now + timedelta(minutes=1), target="t", reply="451")
            elif outcome == 1:
                store.bounce(job, now, "lifetime expired")
            # outcome 2: the node "dies" holding the job; the lease expires and it is reclaimed
        now += timedelta(minutes=2)
    states = [r.state for mid in ids for r in store.show(mid).message.recipients]
    assert len(states) == 30
    assert set(states) <= {RecipientState.DELIVERED, RecipientState.BOUNCED}
    assert store.list_messages(state=RecipientState.QUEUED) == []
    assert store.list_messages(state=RecipientState.IN_FLIGHT) == []


def test_list_and_show(store: SqlStore) -> None:
    old = _enqueue(store, JONES, at=T0)
    new = store.enqueue(
        Envelope(Direction.INCOMING, "a@direct.other.example", (LEE,), "<m2@other>"), b"x", now=T0 + timedelta(1)
    ).id
    assert [m.id for m in store.list_messages()] == [new, old]
    assert [m.id for m in store.list_messages(limit=1)] == [new]
    assert [m.id for m in store.list_messages(direction=Direction.OUTGOING)] == [old]
    (job,) = store.claim("n1", T0, 60, 10)
    assert job.message_id == old
    assert [m.id for m in store.list_messages(state=RecipientState.IN_FLIGHT)] == [old]
    assert [m.id for m in store.list_messages(state=RecipientState.QUEUED)] == [new]
    assert store.show("m2@other").message.id == new
    assert store.show(new).message.direction is Direction.INCOMING
    with pytest.raises(StorageError, match="no message"):
        store.show("<nope@nowhere>")
    with pytest.raises(StorageError):
        store.list_messages(limit=0)


def test_audit_events_append_in_order_and_cannot_change(store: SqlStore, db_url: str) -> None:
    message_id = _enqueue(store)
    record = AuditRecord(
        mail_from="mallory@direct.evil.example",
        recipients=(JONES,),
        fingerprints=("ab" * 32,),
        verdict="untrusted",
        reason="554 5.7.1 untrusted signer",
        remote="127.0.0.9",
    )
    reject = store.append(AuditKind.REJECT, T0 + timedelta(seconds=1), node="n1", record=record)
    notify = store.append(AuditKind.NOTIFY, T0 + timedelta(seconds=2), node="n1", message_id=message_id)
    events = store.events()
    assert [e.kind for e in events] == [AuditKind.ACCEPT, AuditKind.REJECT, AuditKind.NOTIFY]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert events[1] == reject
    assert (reject.fingerprints, reject.verdict, reject.remote, reject.message_id) == (
        ("ab" * 32,), "untrusted", "127.0.0.9", None,
    )
    assert events[0].recipients == (JONES,) and events[0].mail_from == SENDER
    assert store.events(after=reject.seq) == [notify]
    assert [e.kind for e in store.events(message_id=message_id)] == [AuditKind.ACCEPT, AuditKind.NOTIFY]
    for statement in ("UPDATE audit_events SET reason = 'edited'", "DELETE FROM audit_events"):
        with pytest.raises(Exception, match="append-only"), store.engine.begin() as connection:
            connection.execute(text(statement))
    assert store.events() == events
