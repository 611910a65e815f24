"""What the store's per-message operations send to the database (SQLite always, PostgreSQL when
HISP_TEST_POSTGRES_URL is set), and that the shorter forms keep their meaning: a claim is ended by one UPDATE that
checks the claim itself (a lost claim changes nothing and says why), the audit event of an ended claim carries the
message's Message-ID, an enqueue inserts each table's rows of all its messages in one statement and still returns
the main message's recipient ids, a track loads with every recipient's history in one statement, and unchanged
tracking states are not written again.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from hisp.adapters.storage import SqlStore
from hisp.adapters.storage.engine import _sqlite_begin
from hisp.core.tracking import Event, MessageTrack, State
from hisp.errors import StorageError
from hisp.ports import AuditKind, AuditRecord, Direction, Envelope, Outbound, RecipientState, TrackDecision

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
SENDER = "dr.smith@direct.clinic.example"
JONES = "dr.jones@direct.hospital.example"
LEE = "dr.lee@direct.hospital.example"
MESSAGE_ID = "<m1@clinic.example>"
RAW = b"From: dr.smith@direct.clinic.example\r\nMessage-ID: <m1@clinic.example>\r\n\r\nhello\r\n"


@contextmanager
def _statements(store: SqlStore) -> Iterator[list[str]]:
    """The statements SQLAlchemy sends while the block runs: their first words and table (``UPDATE recipients``)."""
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        words = statement.split()
        table = words[2] if words[0] in ("INSERT", "DELETE") else words[1] if words[0] == "UPDATE" else ""
        seen.append(f"{words[0]} {table}".strip())

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def _enqueue(store: SqlStore, *recipients: str, mail_from: str = SENDER) -> str:
    envelope = Envelope(Direction.OUTGOING, mail_from, recipients or (JONES,), MESSAGE_ID)
    return store.enqueue(envelope, RAW, now=T0, node="n1").id


def _sql(store: SqlStore, statement: str, **params: Any) -> None:
    with store.engine.begin() as connection:
        connection.execute(text(statement), params)


# -- ending a claim ----------------------------------------------------------------------------------------


def test_complete_is_one_update_and_two_inserts(store: SqlStore) -> None:
    message_id = _enqueue(store)
    (job,) = store.claim("n1", T0, 60, 10)
    with _statements(store) as seen:
        store.complete(job, T0, target="smtp://mx:25", reply="250 ok", audit=AuditRecord(verdict="pass"))
    assert seen == ["UPDATE recipients", "INSERT delivery_attempts", "INSERT audit_events"]
    detail = store.show(message_id)
    assert detail.message.recipients[0].state is RecipientState.DELIVERED
    relay = detail.events[-1]
    assert (relay.kind, relay.header_message_id, relay.verdict) == (AuditKind.RELAY, MESSAGE_ID, "pass")
    assert (relay.mail_from, relay.recipients, relay.node) == (SENDER, (JONES,), "n1")


def test_the_bounce_event_carries_the_message_id(store: SqlStore) -> None:
    message_id = _enqueue(store)
    (job,) = store.claim("n1", T0, 60, 10)
    assert store.bounce(job, T0, "550 5.1.1 no such user") is RecipientState.BOUNCED
    bounce = store.show(message_id).events[-1]
    assert (bounce.kind, bounce.header_message_id, bounce.reason) == (
        AuditKind.BOUNCE, MESSAGE_ID, "550 5.1.1 no such user",
    )  # fmt: skip


def test_renew_is_one_update(store: SqlStore) -> None:
    _enqueue(store)
    (job,) = store.claim("n1", T0, 60, 10)
    with _statements(store) as seen:
        renewed = store.renew(job, T0 + timedelta(seconds=10), 60)
    assert seen == ["UPDATE recipients"]
    assert renewed.lease_until == T0 + timedelta(seconds=70)
    assert store.claim("n2", T0 + timedelta(seconds=69), 60, 10) == []


def _attempts_and_events(store: SqlStore, message_id: str) -> tuple[int, int]:
    detail = store.show(message_id)
    return len(detail.attempts), len(detail.events)


@pytest.mark.parametrize("end", ["complete", "retry_later", "bounce", "renew"])
def test_a_lost_claim_changes_nothing_and_says_why(store: SqlStore, end: str) -> None:
    message_id = _enqueue(store)
    (job,) = store.claim("n1", T0, 30, 10)
    (taken,) = store.claim("n2", T0 + timedelta(seconds=30), 30, 10)  # n1's lease ran out
    before = _attempts_and_events(store, message_id)
    later = T0 + timedelta(seconds=31)
    calls = {
        "complete": lambda: store.complete(job, later, target="x", reply="250"),
        "retry_later": lambda: store.retry_later(job, later, later, target="x", reply="451"),
        "bounce": lambda: store.bounce(job, later, "550"),
        "renew": lambda: store.renew(job, later, 30),
    }
    with pytest.raises(StorageError, match=re.escape("was lost (state in_flight, held by n2)")) as caught:
        calls[end]()
    assert caught.value.context["claimed_by"] == "n2"
    assert _attempts_and_events(store, message_id) == before
    (recipient,) = store.show(message_id).message.recipients
    assert (recipient.state, recipient.claimed_by) == (RecipientState.IN_FLIGHT, "n2")
    store.complete(taken, later, target="x", reply="250")  # the new claim is untouched


def test_ending_a_claim_twice_fails_the_second_time(store: SqlStore) -> None:
    message_id = _enqueue(store)
    (job,) = store.claim("n1", T0, 60, 10)
    store.complete(job, T0, target="x", reply="250")
    with pytest.raises(StorageError, match=re.escape("was lost (state delivered, held by None)")):
        store.complete(job, T0, target="x", reply="250")
    assert [a.result for a in store.show(message_id).attempts] == [RecipientState.DELIVERED]


def test_a_claim_on_a_recipient_that_is_gone(store: SqlStore) -> None:
    message_id = _enqueue(store)
    (job,) = store.claim("n1", T0, 60, 10)
    _sql(store, "DELETE FROM messages WHERE id = :id", id=message_id)  # recipients go with it (ON DELETE CASCADE)
    with pytest.raises(StorageError, match=f"no recipient {job.recipient_id}"):
        store.complete(job, T0, target="x", reply="250")


def test_a_matching_token_outside_in_flight_is_a_refused_transition(store: SqlStore) -> None:
    """Never made by the store (the token is cleared when a claim ends); refused all the same if found."""
    message_id = _enqueue(store)
    (job,) = store.claim("n1", T0, 60, 10)
    _sql(store, "UPDATE recipients SET state = 'delivered' WHERE id = :id", id=job.recipient_id)
    with pytest.raises(StorageError, match="delivered -> bounced is not allowed"):
        store.bounce(job, T0, "550")
    with pytest.raises(StorageError, match="delivered -> in_flight is not allowed"):
        store.renew(job, T0, 60)
    _sql(store, "UPDATE recipients SET state = 'queued' WHERE id = :id", id=job.recipient_id)
    with pytest.raises(StorageError, match="is queued, not in flight"):
        store.renew(job, T0, 60)  # queued -> in_flight is a claim, not a renewal
    with pytest.raises(StorageError, match="queued -> queued is not allowed"):
        store.retry_later(job, T0, T0, target="x", reply="451")
    assert store.show(message_id).attempts == ()


# -- enqueue ------------------------------------------------------------------------------------------------


def test_enqueue_inserts_each_table_once_for_all_its_messages(store: SqlStore) -> None:
    also = [
        Outbound(
            Envelope(Direction.OUTGOING, "", (SENDER,), f"<mdn{i}@hospital.example>"),
            RAW,
            AuditRecord(reason=f"mdn {i}"),
        )
        for i in range(3)
    ]
    track = MessageTrack.start(MESSAGE_ID, (JONES, LEE), at=T0, reliable=True, timeout=timedelta(hours=1))
    envelope = Envelope(Direction.INCOMING, SENDER, (LEE, JONES, LEE), MESSAGE_ID)  # LEE twice: stored once
    with _statements(store) as seen:
        stored = store.enqueue(envelope, RAW, now=T0, node="n1", also=also, track=track)
    assert seen == [
        "INSERT messages", "INSERT recipients", "INSERT audit_events", "INSERT tracked_messages",
        "INSERT tracked_recipients",
    ]  # fmt: skip
    assert [r.address for r in stored.recipients] == [LEE, JONES]  # in id order: as given
    detail = store.show(stored.id)
    assert [(r.id, r.address) for r in detail.message.recipients] == [(r.id, r.address) for r in stored.recipients]
    assert [e.kind for e in detail.events] == [AuditKind.ACCEPT]
    for i, item in enumerate(also):
        other = store.show(item.envelope.message_id or "")
        assert [r.address for r in other.message.recipients] == [SENDER]
        assert [(e.kind, e.reason) for e in other.events] == [(AuditKind.ACCEPT, f"mdn {i}")]
    jobs = store.claim("n1", T0, 60, 10)
    assert len(jobs) == 5


# -- tracking -----------------------------------------------------------------------------------------------


def test_a_track_loads_in_one_statement_with_each_recipients_history(store: SqlStore) -> None:
    track = MessageTrack.start(MESSAGE_ID, (JONES, LEE), at=T0, reliable=True, timeout=timedelta(hours=1))
    store.enqueue(Envelope(Direction.OUTGOING, SENDER, (JONES, LEE), MESSAGE_ID), RAW, now=T0, track=track)
    steps = [(JONES, Event.PROCESSED), (LEE, Event.PROCESSED), (JONES, Event.DISPATCHED), (LEE, Event.FAILED)]
    for i, (address, what) in enumerate(steps):
        at = T0 + timedelta(seconds=i + 1)

        def decide(tracked: Any, address: str = address, what: Event = what, at: datetime = at) -> Any:
            return TrackDecision(tracked.track.apply(address, what, at))

        store.update_tracking(decide, now=at, header_message_id=MESSAGE_ID)
    with _statements(store) as seen:
        tracked = store.tracking(MESSAGE_ID)
    assert seen == ["SELECT", "SELECT"]  # the track, then its recipients with their histories
    recipients = tracked.track.recipients
    assert list(recipients) == [JONES, LEE]
    assert [(r.event, r.after) for r in recipients[JONES].history] == [
        (Event.PROCESSED, State.PROCESSED), (Event.DISPATCHED, State.DISPATCHED),
    ]  # fmt: skip
    assert [r.event for r in recipients[LEE].history] == [Event.PROCESSED, Event.FAILED]
    assert [r.at for r in recipients[LEE].history] == [T0 + timedelta(seconds=2), T0 + timedelta(seconds=4)]


def test_a_recipient_without_history_loads_with_none(store: SqlStore) -> None:
    track = MessageTrack.start(MESSAGE_ID, (JONES,), at=T0, reliable=False, timeout=timedelta(hours=1))
    store.enqueue(Envelope(Direction.OUTGOING, SENDER, (JONES,), MESSAGE_ID), RAW, now=T0, track=track)
    assert store.tracking(MESSAGE_ID).track.recipients[JONES].history == []


def test_unchanged_tracking_states_are_not_written(store: SqlStore) -> None:
    track = MessageTrack.start(MESSAGE_ID, (JONES, LEE), at=T0, reliable=True, timeout=timedelta(hours=1))
    store.enqueue(Envelope(Direction.OUTGOING, SENDER, (JONES, LEE), MESSAGE_ID), RAW, now=T0, track=track)
    with _statements(store) as seen:
        result = store.update_tracking(lambda _tracked: TrackDecision("nothing"), now=T0, header_message_id=MESSAGE_ID)
    assert result == "nothing"
    assert "UPDATE tracked_recipients" not in seen and "INSERT tracking_events" not in seen
    assert "UPDATE tracked_messages" in seen  # the timeout claim is released all the same

    def processed(tracked: Any) -> Any:
        return TrackDecision(tracked.track.apply(JONES, Event.PROCESSED, T0))

    with _statements(store) as seen:
        store.update_tracking(processed, now=T0, header_message_id=MESSAGE_ID)
    assert seen.count("UPDATE tracked_recipients") == 1
    states = {k: r.state for k, r in store.tracking(MESSAGE_ID).track.recipients.items()}
    assert states == {JONES: State.PROCESSED, LEE: State.SENT}


# -- SQLite: BEGIN on the driver's connection -----------------------------------------------------------------


def test_a_failing_sqlite_begin_is_a_sqlalchemy_error() -> None:
    class Driver:
        def execute(self, statement: str) -> None:
            raise sqlite3.OperationalError(f"database is locked ({statement})")

    class Pooled:
        driver_connection = Driver()

    class Connection:
        connection = Pooled()

        def get_execution_options(self) -> dict[str, object]:
            return {}

    with pytest.raises(OperationalError, match=r"database is locked \(BEGIN IMMEDIATE\)"):
        _sqlite_begin(Connection())


_OLD_SQLITE = r'''
import sqlite3, sqlite3.dbapi2, sys
from datetime import UTC, datetime
sqlite3.sqlite_version_info = sqlite3.dbapi2.sqlite_version_info = (3, 34, 1)  # as SQLAlchemy sees Debian 11's
from sqlalchemy import event
from hisp.adapters.storage import SqlStore
from hisp.ports import Direction, Envelope
store = SqlStore.open("sqlite:///" + sys.argv[1])
assert store.engine.dialect.insert_returning is False
sent = []
event.listen(store.engine, "before_cursor_execute", lambda c, cur, stmt, p, ctx, many: sent.append(stmt))
now = datetime(2026, 11, 30, 12, tzinfo=UTC)
for n, recipients in enumerate((("r@h.example",), ("r@h.example", "s@h.example", "r@h.example"))):
    envelope = Envelope(Direction.OUTGOING, "a@c.example", recipients, f"<m{n}@c>")
    stored = store.enqueue(envelope, b"A: b\r\n\r\nc\r\n", now=now)
    print(n, sorted(r.address for r in stored.recipients))
jobs = store.claim("node", now, 60, 10)
print("claimed", sorted((job.message_id[:4] != "", job.address) for job in jobs))
print("returning", sum("RETURNING" in s.upper() for s in sent))
store.close()
'''


def test_enqueue_on_sqlite_without_returning(tmp_path: Path) -> None:
    """SQLite before 3.35 (Debian 11, Ubuntu 20.04) has no RETURNING: the recipients are inserted one by one and
    every one is queued and claimable (found by an adversarial review: the one-statement insert failed there)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _OLD_SQLITE, str(tmp_path / "old.sqlite3")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "0 ['r@h.example']"
    assert lines[1] == "1 ['r@h.example', 's@h.example']"  # duplicate addresses are stored once
    assert lines[2] == "claimed [(True, 'r@h.example'), (True, 'r@h.example'), (True, 's@h.example')]"
    assert lines[3] == "returning 0"
