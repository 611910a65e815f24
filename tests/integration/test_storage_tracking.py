"""SqlStore as the TrackingStore against real databases (SQLite always, PostgreSQL when HISP_TEST_POSTGRES_URL is
set): tracks created atomically with their message (and the ``also`` messages), update_tracking applying the core
state machine and enqueueing the decision's messages in the same transaction, lookups by Message-ID, timeout claims
(deadlines, leases, concurrent claimers), restart safety, and the r0002 migration up and down.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, inspect
from sqlalchemy.exc import OperationalError

from hisp.adapters.storage import SqlStore, current_revision, head_revision, open_engine, upgrade
from hisp.adapters.storage.migrate import MIGRATIONS_DIR
from hisp.adapters.storage.models import Base
from hisp.core.dsn import NO_PROCESSED_MDN
from hisp.core.tracking import Action, Event, MessageTrack, Mode, Record, State, Transition
from hisp.errors import StorageError
from hisp.ports import (
    AuditKind,
    AuditRecord,
    Direction,
    Envelope,
    Outbound,
    RecipientState,
    TrackDecision,
    TrackedMessage,
    TrackingStore,
)

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
SENDER = "dr.smith@direct.clinic.example"
JONES = "Dr.Jones@Direct.Hospital.example"  # mixed case: the track keys it lower-case, keeps it as given
LEE = "dr.lee@direct.hospital.example"
MESSAGE_ID = "<Ref-1@Clinic.example>"
TIMEOUT = timedelta(hours=1, seconds=1, microseconds=250)
TRACK_TABLES = {"tracked_messages", "tracked_recipients", "tracking_events"}


def _raw(message_id: str = MESSAGE_ID, size: int = 200) -> bytes:
    head = f"From: {SENDER}\r\nMessage-ID: {message_id}\r\nSubject: referral\r\n\r\n".encode()
    return head + (b"x" * 76 + b"\r\n") * (size // 78 + 1)


def _track(
    message_id: str = MESSAGE_ID, *recipients: str, at: datetime = T0, reliable: bool = True,
    timeout: timedelta = TIMEOUT, consume_processed: bool = False,
) -> MessageTrack:
    return MessageTrack.start(
        message_id, recipients or (JONES, LEE), at=at, reliable=reliable, timeout=timeout,
        consume_processed=consume_processed,
    )  # fmt: skip


def _send(
    store: SqlStore, message_id: str = MESSAGE_ID, *recipients: str, at: datetime = T0, size: int = 200,
    also: tuple[Outbound, ...] = (), timeout: timedelta = TIMEOUT,
) -> str:
    """Enqueue an outgoing message with its track; its queue id."""
    recipients = recipients or (JONES, LEE)
    envelope = Envelope(Direction.OUTGOING, SENDER, recipients, message_id)
    track = _track(message_id, *recipients, at=at, timeout=timeout)
    return store.enqueue(envelope, _raw(message_id, size), now=at, node="n1", also=also, track=track).id


def _notice(to: str = SENDER, size: int = 200, reason: str = "forwarded MDN") -> Outbound:
    """A notification for the edge, as a decision would enqueue it."""
    envelope = Envelope(Direction.INCOMING, "", (to,), "<mdn-1@hospital.example>")
    return Outbound(envelope, _raw("<mdn-1@hospital.example>", size), AuditRecord(reason=reason))


def _applying(
    address: str, event_: Event, at: datetime, *, enqueue: tuple[Outbound, ...] = (), detail: str = ""
) -> Callable[[TrackedMessage], TrackDecision[Transition | None]]:
    def decide(tracked: TrackedMessage) -> TrackDecision[Transition | None]:
        return TrackDecision(tracked.track.apply(address, event_, at, detail=detail), enqueue)

    return decide


@contextmanager
def _failing(engine: Engine, table: str) -> Iterator[None]:
    """Make every INSERT into ``table`` fail as a database error would (disk full, connection lost)."""

    def fail(conn: object, cursor: object, statement: str, params: object, context: object, many: bool) -> None:
        if statement.lstrip().upper().startswith(f"INSERT INTO {table.upper()}"):
            raise OperationalError(statement, None, RuntimeError("injected failure"))

    event.listen(engine, "before_cursor_execute", fail)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", fail)


def _spooled(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool").rglob("*.eml"))


# -- enqueue with a track ------------------------------------------------------------------------------------


def test_implements_the_tracking_store(store: SqlStore) -> None:
    assert isinstance(store, TrackingStore)


def test_enqueue_with_track_creates_the_track(store: SqlStore) -> None:
    queue_id = _send(store)
    tracked = store.tracking(queue_id)
    assert (tracked.queue_id, tracked.header_message_id, tracked.sender) == (queue_id, MESSAGE_ID, SENDER)
    assert tracked.complete is False
    track = tracked.track
    assert (track.message_id, track.mode, track.sent_at, track.consume_processed) == (
        MESSAGE_ID, Mode.RELIABLE, T0, False,
    )  # fmt: skip
    assert track.timeout == TIMEOUT  # exact, microseconds included
    assert track.deadline == T0 + TIMEOUT
    assert list(track.recipients) == [JONES.lower(), LEE]
    assert [(r.address, r.state, r.history) for r in track.recipients.values()] == [
        (JONES, State.SENT, []),
        (LEE, State.SENT, []),
    ]
    assert store.show(queue_id).message.recipients[0].state is RecipientState.QUEUED


def test_general_mode_and_consume_processed_round_trip(store: SqlStore) -> None:
    track = _track(reliable=False, consume_processed=True, timeout=timedelta(minutes=5))
    stored = store.enqueue(Envelope(Direction.OUTGOING, SENDER, (JONES, LEE), MESSAGE_ID), _raw(), now=T0, track=track)
    loaded = store.tracking(stored.id).track
    assert (loaded.mode, loaded.consume_processed, loaded.timeout) == (Mode.GENERAL, True, timedelta(minutes=5))


def test_every_state_and_history_is_stored(store: SqlStore) -> None:
    addresses = [f"r{i}@direct.hospital.example" for i in range(len(State))]
    track = _track(MESSAGE_ID, *addresses)
    for recipient, state in zip(track.recipients.values(), State, strict=True):
        recipient.state = state
    record = Record(T0, Event.DISPLAYED, State.SENT, State.SENT, Action.FORWARD, None, "read receipt")
    track.recipients[addresses[0]].history.append(record)
    envelope = Envelope(Direction.OUTGOING, SENDER, tuple(addresses), MESSAGE_ID)
    stored = store.enqueue(envelope, _raw(), now=T0, track=track)
    loaded = store.tracking(stored.id).track
    assert [r.state for r in loaded.recipients.values()] == list(State)
    assert loaded.recipients[addresses[0]].history == [record]


def test_also_messages_are_queued_with_the_main_one(store: SqlStore, tmp_path: Path) -> None:
    small, large = _notice(reason="processed MDN 1"), _notice(LEE, size=5000, reason="processed MDN 2")
    queue_id = _send(store, also=(small, large))
    messages = store.list_messages()
    assert len(messages) == 3
    others = [m for m in messages if m.id != queue_id]
    assert sorted(m.spooled for m in others) == [False, True]
    for message in others:
        detail = store.show(message.id)
        (accept,) = detail.events
        assert (accept.kind, accept.node, accept.mail_from) == (AuditKind.ACCEPT, "n1", "")
        assert accept.reason in ("processed MDN 1", "processed MDN 2")
        assert [r.state for r in message.recipients] == [RecipientState.QUEUED]
        assert message.direction is Direction.INCOMING
        expected = small if accept.reason == "processed MDN 1" else large
        assert store.raw(message.id) == expected.raw
    assert len(_spooled(tmp_path)) == 1
    assert len(store.claim("n1", T0, 60, 10)) == 4  # two recipients of the main message, one per notice


@pytest.mark.parametrize("table", ["tracked_recipients", "tracked_messages", "messages", "audit_events"])
def test_a_failing_enqueue_leaves_neither_message_nor_track(store: SqlStore, tmp_path: Path, table: str) -> None:
    with _failing(store.engine, table), pytest.raises(StorageError, match="injected failure"):
        _send(store, size=5000, also=(_notice(size=5000),))
    assert store.list_messages() == []
    assert _spooled(tmp_path) == []  # both spool files removed again
    with pytest.raises(StorageError, match="nothing is tracked"):
        store.tracking(MESSAGE_ID)
    assert store.events() == []
    queue_id = _send(store)  # and the store still works
    assert store.tracking(MESSAGE_ID).queue_id == queue_id


def test_enqueue_refuses_a_track_that_could_never_match(store: SqlStore) -> None:
    envelope = Envelope(Direction.OUTGOING, SENDER, (JONES,), None)
    with pytest.raises(StorageError, match="Message-ID"):
        store.enqueue(envelope, _raw(), now=T0, track=_track("<>", JONES))
    naive = replace(_track(MESSAGE_ID, JONES), sent_at=T0.replace(tzinfo=None))
    with pytest.raises(StorageError, match="aware"):
        store.enqueue(envelope, _raw(), now=T0, track=naive)
    with pytest.raises(StorageError, match="recipient"):
        store.enqueue(envelope, _raw(), now=T0, track=replace(_track(MESSAGE_ID, JONES), recipients={}))
    with pytest.raises(StorageError, match="recipient"):
        store.enqueue(envelope, _raw(), now=T0, also=(Outbound(replace(envelope, recipients=()), b"x"),))
    assert store.list_messages() == []


# -- update_tracking -----------------------------------------------------------------------------------------


def test_update_tracking_applies_persists_and_enqueues(store: SqlStore) -> None:
    queue_id = _send(store)
    at = T0 + timedelta(minutes=2)
    forward = _notice(reason="processed MDN from jones, forwarded")
    result = store.update_tracking(
        _applying(JONES, Event.PROCESSED, at, enqueue=(forward,), detail="MDN processed from jones"),
        now=at, node="n2", header_message_id=MESSAGE_ID,
    )  # fmt: skip
    assert result == Transition(State.PROCESSED, Action.FORWARD)
    tracked = store.tracking(queue_id)
    assert tracked.complete is False
    jones, lee = tracked.track.recipients.values()
    assert (jones.state, lee.state) == (State.PROCESSED, State.SENT)
    assert jones.history == [
        Record(at, Event.PROCESSED, State.SENT, State.PROCESSED, Action.FORWARD, None, "MDN processed from jones")
    ]
    assert lee.history == []
    (notice,) = [m for m in store.list_messages() if m.id != queue_id]
    assert store.raw(notice.id) == forward.raw
    assert notice.received_at == at
    (accept,) = store.show(notice.id).events
    assert (accept.kind, accept.node, accept.reason) == (AuditKind.ACCEPT, "n2", "processed MDN from jones, forwarded")

    # The dispatched MDNs (with the final-delivery extension) complete the message; a duplicate is dropped.
    later = at + timedelta(minutes=1)
    for address in (JONES.upper(), LEE, LEE):
        store.update_tracking(_applying(address, Event.DISPATCHED, later), now=later, queue_id=queue_id)
    tracked = store.tracking("ref-1@clinic.example")
    assert tracked.complete is True
    jones, lee = tracked.track.recipients.values()
    assert (jones.state, lee.state) == (State.DISPATCHED, State.DISPATCHED)
    assert [r.event for r in jones.history] == [Event.PROCESSED, Event.DISPATCHED]
    assert [(r.event, r.action) for r in lee.history] == [
        (Event.DISPATCHED, Action.FORWARD),
        (Event.DISPATCHED, Action.DROP),
    ]
    assert len(store.list_messages()) == 2  # those decisions enqueued nothing


class DecideFailed(Exception):
    pass


@pytest.mark.parametrize("error", [DecideFailed("no"), ValueError("bad notice"), StorageError("own error")])
def test_a_failing_decide_changes_nothing_and_its_exception_propagates(store: SqlStore, error: Exception) -> None:
    queue_id = _send(store)
    calls: list[TrackedMessage] = []

    def decide(tracked: TrackedMessage) -> TrackDecision[None]:
        calls.append(tracked)
        tracked.track.apply(JONES, Event.FAILED, T0)  # mutated, then failed: none of it may be stored
        raise error

    with pytest.raises(type(error)) as raised:
        store.update_tracking(decide, now=T0, queue_id=queue_id)
    assert raised.value is error
    assert len(calls) == 1
    tracked = store.tracking(queue_id)
    assert [(r.state, r.history) for r in tracked.track.recipients.values()] == [(State.SENT, [])] * 2
    assert [m.id for m in store.list_messages()] == [queue_id]


@pytest.mark.parametrize("table", ["tracking_events", "messages", "recipients", "audit_events"])
def test_a_failure_after_decide_persists_nothing_and_enqueues_nothing(
    store: SqlStore, tmp_path: Path, table: str
) -> None:
    queue_id = _send(store)
    with _failing(store.engine, table), pytest.raises(StorageError, match="injected failure"):
        store.update_tracking(
            _applying(LEE, Event.FAILED, T0, enqueue=(_notice(size=5000),)), now=T0, header_message_id=MESSAGE_ID
        )
    tracked = store.tracking(queue_id)
    assert [(r.state, r.history) for r in tracked.track.recipients.values()] == [(State.SENT, [])] * 2
    assert [m.id for m in store.list_messages()] == [queue_id]
    assert _spooled(tmp_path) == []


def test_a_failed_commit_keeps_the_spool_file_of_a_notice_it_may_have_stored(
    store: SqlStore, tmp_path: Path
) -> None:
    queue_id = _send(store)
    dialect = store.engine.dialect
    real = dialect.do_commit

    def do_commit(dbapi_connection: object) -> None:  # committed, then the acknowledgement is lost
        real(dbapi_connection)
        raise dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly (injected)")

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    try:
        with pytest.raises(StorageError, match="update tracking failed"):
            store.update_tracking(
                _applying(LEE, Event.FAILED, T0, enqueue=(_notice(size=5000),)), now=T0, header_message_id=MESSAGE_ID
            )
    finally:
        dialect.do_commit = real  # type: ignore[method-assign]
    (notice,) = [m for m in store.list_messages() if m.id != queue_id]
    assert notice.spooled
    assert store.raw(notice.id) == _raw("<mdn-1@hospital.example>", 5000)
    assert store.spool_orphans() == []


def test_a_decision_may_not_add_remove_or_rewrite(store: SqlStore) -> None:
    queue_id = _send(store)
    store.update_tracking(_applying(JONES, Event.PROCESSED, T0), now=T0, queue_id=queue_id)

    def remove(tracked: TrackedMessage) -> TrackDecision[None]:
        del tracked.track.recipients[LEE]
        return TrackDecision(None, (_notice(),))

    def rewrite(tracked: TrackedMessage) -> TrackDecision[None]:
        tracked.track.recipients[JONES.lower()].history.clear()
        tracked.track.apply(JONES, Event.DISPATCHED, T0)
        return TrackDecision(None)

    for decide, match in ((remove, "added or removed"), (rewrite, "rewrote the history")):
        with pytest.raises(StorageError, match=match):
            store.update_tracking(decide, now=T0, queue_id=queue_id)
    jones = store.tracking(queue_id).track.recipients[JONES.lower()]
    assert (jones.state, [r.event for r in jones.history]) == (State.PROCESSED, [Event.PROCESSED])
    assert len(store.list_messages()) == 1


@pytest.mark.parametrize("key", ["<ref-1@clinic.example>", "REF-1@CLINIC.EXAMPLE", " <Ref-1@Clinic.example> "])
def test_lookup_by_message_id_ignores_brackets_space_and_case(store: SqlStore, key: str) -> None:
    queue_id = _send(store)
    assert store.tracking(key).queue_id == queue_id
    assert store.update_tracking(_applying(LEE, Event.DISPLAYED, T0), now=T0, header_message_id=key) == Transition(
        State.SENT, Action.FORWARD
    )


def test_the_newest_track_of_a_message_id_wins(store: SqlStore) -> None:
    old = _send(store, at=T0)
    new = _send(store, at=T0 + timedelta(minutes=1))
    tie = _send(store, at=T0 + timedelta(minutes=1))  # same sent_at: the later row
    assert store.tracking(MESSAGE_ID).queue_id == tie
    store.update_tracking(_applying(JONES, Event.PROCESSED, T0), now=T0, header_message_id="ref-1@clinic.example")
    states = {q: store.tracking(q).track.recipients[JONES.lower()].state for q in (old, new, tie)}
    assert states == {old: State.SENT, new: State.SENT, tie: State.PROCESSED}
    assert store.tracking(old).queue_id == old  # by queue id: exactly that one


def test_unknown_keys(store: SqlStore) -> None:
    _send(store)
    called: list[TrackedMessage] = []

    def decide(tracked: TrackedMessage) -> TrackDecision[str]:
        called.append(tracked)
        return TrackDecision("called")

    assert store.update_tracking(decide, now=T0, header_message_id="<other@clinic.example>") is None
    assert store.update_tracking(decide, now=T0, header_message_id="") is None
    assert store.update_tracking(decide, now=T0, queue_id="0" * 32) is None
    assert called == []
    untracked = store.enqueue(Envelope(Direction.OUTGOING, SENDER, (JONES,), "<plain@x>"), _raw("<plain@x>"), now=T0)
    for key in ("<nobody@nowhere>", "0" * 32, untracked.id, "<plain@x>", "<>"):
        with pytest.raises(StorageError, match="nothing is tracked under"):
            store.tracking(key)
    with pytest.raises(StorageError, match="exactly one"):
        store.update_tracking(decide, now=T0)
    with pytest.raises(StorageError, match="exactly one"):
        store.update_tracking(decide, now=T0, header_message_id=MESSAGE_ID, queue_id="0" * 32)
    with pytest.raises(StorageError, match="aware"):
        store.update_tracking(decide, now=T0.replace(tzinfo=None), header_message_id=MESSAGE_ID)
    assert called == []


# -- timeouts ------------------------------------------------------------------------------------------------


def _expire(now: datetime) -> Callable[[TrackedMessage], TrackDecision[list[str]]]:
    def decide(tracked: TrackedMessage) -> TrackDecision[list[str]]:
        return TrackDecision([address for address, _ in tracked.track.expire(now)])

    return decide


def test_claim_expired_respects_deadlines_and_leases(store: SqlStore) -> None:
    hour = timedelta(hours=1)
    first = _send(store, "<a@clinic>", at=T0, timeout=hour)
    second = _send(store, "<b@clinic>", at=T0 + timedelta(minutes=10), timeout=hour)
    done = _send(store, "<c@clinic>", JONES, at=T0 - timedelta(hours=5), timeout=hour)
    store.update_tracking(_applying(JONES, Event.FAILED, T0), now=T0, queue_id=done)  # complete: never due
    assert store.claim_expired("n1", T0 + hour - timedelta(seconds=1), 60, 10) == []
    assert store.claim_expired("n1", T0 + hour, 60, 10) == [first]
    assert store.claim_expired("n2", T0 + hour + timedelta(seconds=59), 60, 10) == []  # n1's lease holds
    later = T0 + hour + timedelta(minutes=10)
    assert store.claim_expired("n2", later, 60, 10) == [first, second]  # n1's lease ran out; oldest deadline first
    assert store.claim_expired("n3", later + timedelta(minutes=1), 60, 1) == [first]  # limit
    expired = store.update_tracking(_expire(later), now=later, queue_id=first)
    assert expired == [JONES, LEE]
    tracked = store.tracking(first)
    assert tracked.complete is True
    assert {r.state for r in tracked.track.recipients.values()} == {State.TIMED_OUT}
    assert [(r.event, r.status) for r in tracked.track.recipients[LEE].history] == [(Event.TIMEOUT, NO_PROCESSED_MDN)]
    assert store.claim_expired("n3", later + timedelta(hours=1), 60, 10) == [second]  # first is complete


def test_update_tracking_releases_the_timeout_claim(store: SqlStore) -> None:
    queue_id = _send(store, timeout=timedelta(minutes=1))
    now = T0 + timedelta(minutes=1)
    assert store.claim_expired("n1", now, 300, 10) == [queue_id]
    assert store.claim_expired("n2", now, 300, 10) == []
    store.update_tracking(_applying(JONES, Event.DISPLAYED, now), now=now, queue_id=queue_id)  # still incomplete
    assert store.claim_expired("n2", now, 300, 10) == [queue_id]


def test_claim_expired_refuses_bad_arguments(store: SqlStore) -> None:
    for args in (("", T0, 60.0, 1), ("n1", T0, 0.0, 1), ("n1", T0, 86_401.0, 1), ("n1", T0, 60.0, 0)):
        with pytest.raises(StorageError):
            store.claim_expired(*args)
    with pytest.raises(StorageError, match="aware"):
        store.claim_expired("n1", T0.replace(tzinfo=None), 60, 1)


def test_two_nodes_never_claim_the_same_track(db_url: str) -> None:
    filler = SqlStore.open(db_url)
    try:
        expected = {_send(filler, f"<m{i}@clinic>", at=T0 + timedelta(seconds=i)) for i in range(30)}
    finally:
        filler.close()
    now = T0 + timedelta(days=1)
    start = threading.Barrier(2)
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def run(node: str) -> None:
        store = SqlStore.open(db_url, migrate=False)  # its own engine, like a separate node
        claimed: list[str] = []
        try:
            start.wait()
            while batch := store.claim_expired(node, now, 3600, 2):
                claimed.extend(batch)
                time.sleep(0.002)  # the DSN work, outside any transaction
            results[node] = claimed
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=run, args=(f"node-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    counts = Counter(q for claimed in results.values() for q in claimed)
    assert set(counts) == expected
    assert max(counts.values()) == 1, "a track was claimed twice"
    assert all(results.values()), "one node took everything: no concurrency exercised"


def test_concurrent_updates_of_one_track_are_all_kept(db_url: str) -> None:
    filler = SqlStore.open(db_url)
    try:
        queue_id = _send(filler)
    finally:
        filler.close()
    stores = [SqlStore.open(db_url, migrate=False) for _ in range(2)]
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def run(store: SqlStore, n: int) -> None:
        try:
            start.wait()
            for i in range(3):
                at = T0 + timedelta(seconds=n * 10 + i)
                store.update_tracking(
                    _applying(JONES, Event.DISPLAYED, at, detail=f"{n}-{i}"), now=at, header_message_id=MESSAGE_ID
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(stores[n % 2], n)) for n in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        history = stores[0].tracking(queue_id).track.recipients[JONES.lower()].history
    finally:
        for store in stores:
            store.close()
    assert sorted(r.detail for r in history) == sorted(f"{n}-{i}" for n in range(6) for i in range(3))


def test_state_history_and_claims_survive_a_restart(db_url: str, tmp_path: Path) -> None:
    first = SqlStore.open(db_url, spool_dir=tmp_path / "spool")
    queue_id = _send(first, timeout=timedelta(minutes=30))
    at = T0 + timedelta(minutes=5)
    first.update_tracking(_applying(LEE, Event.PROCESSED, at, detail="MDN processed"), now=at, queue_id=queue_id)
    deadline = T0 + timedelta(minutes=30)
    assert first.claim_expired("n1", deadline, 120, 10) == [queue_id]
    first.close()  # n1 goes away holding the claim

    second = SqlStore.open(db_url, spool_dir=tmp_path / "spool")
    try:
        tracked = second.tracking(MESSAGE_ID)
        assert tracked.track.recipients[LEE].state is State.PROCESSED
        assert tracked.track.recipients[LEE].history == [
            Record(at, Event.PROCESSED, State.SENT, State.PROCESSED, Action.FORWARD, None, "MDN processed")
        ]
        assert tracked.track.timeout == timedelta(minutes=30)
        assert second.claim_expired("n2", deadline + timedelta(seconds=119), 120, 10) == []  # n1's lease holds
        assert second.claim_expired("n2", deadline + timedelta(seconds=120), 120, 10) == [queue_id]
        now = deadline + timedelta(seconds=121)
        assert second.update_tracking(_expire(now), now=now, queue_id=queue_id) == [JONES, LEE]
        assert second.tracking(queue_id).complete is True
    finally:
        second.close()


# -- migration r0002 -----------------------------------------------------------------------------------------


def _downgrade(url: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = open_engine(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def test_migration_0002_up_and_down_keeps_the_queue(db_url: str) -> None:
    assert upgrade(db_url, "0001") == "0001"
    old = SqlStore.open(db_url, migrate=False)  # a queue written by the previous version
    try:
        kept = old.enqueue(Envelope(Direction.OUTGOING, SENDER, (JONES,), "<old@clinic>"), b"old", now=T0).id
    finally:
        old.close()
    assert upgrade(db_url) == head_revision() == "0002"
    engine = open_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TRACK_TABLES
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        store = SqlStore(engine)
        assert store.raw(kept) == b"old"
        _send(store)
        _downgrade(db_url, "0001")
        assert current_revision(engine) == "0001"
        assert not TRACK_TABLES & set(inspect(engine).get_table_names())
        assert store.raw(kept) == b"old"
        assert len(store.list_messages()) == 2  # the tracked message stays queued; only its track is gone
        assert upgrade(db_url) == "0002"
        with pytest.raises(StorageError, match="nothing is tracked"):
            store.tracking(MESSAGE_ID)
        _send(store)
        assert store.tracking(MESSAGE_ID).header_message_id == MESSAGE_ID
        _downgrade(db_url, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
