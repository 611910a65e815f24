"""Enqueue is durable before it returns: the spool file is written and fsynced (file, then directory) before the
database commit, and a process killed right after enqueue returned leaves the message claimable, bytes intact.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from hisp.adapters.storage import SqlStore
from hisp.errors import StorageError
from hisp.ports import AuditKind, AuditRecord, Direction, Envelope, RecipientState

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
RAW = b"From: dr.smith@direct.clinic.example\r\nSubject: referral\r\n\r\n" + b"0123456789" * 10_000


def test_spool_file_is_fsynced_before_the_commit(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "spool"
    store = SqlStore.open(db_url, spool_dir=spool, inline_max=1024)
    log: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        log.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def on_commit(_connection: object) -> None:
        files = list(spool.rglob("*.eml"))
        # At commit time the final file exists, complete, and no temporary file is left.
        log.append(("commit", ";".join(str(f) for f in files)))
        assert [f.read_bytes() for f in files] == [RAW]
        assert [p for p in spool.rglob(".*")] == []

    monkeypatch.setattr(os, "fsync", fsync)
    event.listen(store.engine, "commit", on_commit)
    try:
        stored = store.enqueue(Envelope(Direction.OUTGOING, "a@x.example", ("b@y.example",)), RAW, now=T0)
    finally:
        event.remove(store.engine, "commit", on_commit)
    final = spool / stored.id[:2] / f"{stored.id}.eml"
    assert log == [
        ("dir", str(spool)),  # the new fan-out directory's entry
        ("file", str(final.parent / f".{stored.id}.tmp")),  # the body, before its rename
        ("dir", str(final.parent)),  # the rename
        ("commit", str(final)),  # only then the row that names it; enqueue returns after the commit
    ]
    assert store.raw(stored.id) == RAW
    store.close()


def test_sqlite_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    store = SqlStore.open(f"sqlite:///{tmp_path / 'h.sqlite3'}")
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    store.close()


def test_sqlite_reads_do_not_wait_for_the_writer_and_writes_still_take_the_lock(tmp_path: Path) -> None:
    """Reads (raw, tracking, listings) begin deferred and read the WAL snapshot while another connection holds
    the write lock (an fsynced commit in progress); a write still begins with BEGIN IMMEDIATE and waits."""
    path = tmp_path / "h.sqlite3"
    store = SqlStore.open(f"sqlite:///{path}", spool_dir=tmp_path / "spool", inline_max=1024)
    envelope = Envelope(Direction.OUTGOING, "a@x.example", ("b@y.example",), "<m1@x.example>")
    small = store.enqueue(envelope, b"Subject: s\r\n\r\nbody\r\n", now=T0).id
    large = store.enqueue(envelope, RAW, now=T0).id
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, held
    try:
        store.engine.dispose()
        started = time.monotonic()
        assert store.raw(small).endswith(b"body\r\n")
        assert store.raw(large) == RAW
        assert {m.id for m in store.list_messages()} == {small, large}
        assert store.show(small).message.id == small
        assert store.events(message_id=small)
        assert store.spool_orphans() == []
        with pytest.raises(StorageError, match="nothing is tracked"):
            store.tracking("<m1@x.example>")
        assert time.monotonic() - started < 5  # not the 30 s busy timeout
        failed: list[BaseException] = []

        def write() -> None:
            try:
                store.append(AuditKind.RELAY, T0, node="n1", message_id=small, record=AuditRecord(reason="x"))
            except BaseException as exc:  # reported below
                failed.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting for the lock
    finally:
        writer.execute("COMMIT")
        writer.close()
    thread.join(10)
    assert not thread.is_alive() and failed == []
    store.close()


_CRASH = """
import os, signal, sys
from datetime import datetime, UTC
from pathlib import Path
from hisp.adapters.storage import SqlStore
from hisp.ports import Direction, Envelope
url, spool, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
store = SqlStore.open(url, spool_dir=spool, inline_max=1024)
raw = bytes(range(256)) * (size // 256)
stored = store.enqueue(Envelope(Direction.INCOMING, "a@x.example", ("b@y.example", "c@y.example")), raw,
                       now=datetime(2026, 11, 30, 12, tzinfo=UTC))
sys.stdout.write(stored.id + "\\n")
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGKILL)  # the "250" would go out now; the node dies before doing anything else
"""


@pytest.mark.parametrize("size", [512, 256 * 400], ids=["inline", "spooled"])
def test_killed_right_after_enqueue_the_message_is_claimable(db_url: str, tmp_path: Path, size: int) -> None:
    spool = tmp_path / "spool"
    done = subprocess.run(
        [sys.executable, "-c", _CRASH, db_url, str(spool), str(size)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    message_id = done.stdout.strip()
    store = SqlStore.open(db_url, spool_dir=spool, inline_max=1024)
    try:
        jobs = store.claim("survivor", T0, 60, 10)
        assert sorted(j.address for j in jobs) == ["b@y.example", "c@y.example"]
        assert {j.message_id for j in jobs} == {message_id}
        assert store.raw(message_id) == bytes(range(256)) * (size // 256)
        assert store.show(message_id).message.spooled is (size > 1024)
        for job in jobs:
            store.complete(job, T0, target="maildir:/ehr", reply="delivered")
        assert {r.state for r in store.show(message_id).message.recipients} == {RecipientState.DELIVERED}
    finally:
        store.close()


@contextmanager
def lost_commit_acknowledgement(store: SqlStore) -> Iterator[list[int]]:
    """Make every COMMIT take effect and then fail, as when a PostgreSQL connection drops after the server
    committed but before its acknowledgement arrived: the caller sees an error, the rows are there."""
    dialect = store.engine.dialect
    real = dialect.do_commit
    commits: list[int] = []

    def do_commit(dbapi_connection: Any) -> None:
        real(dbapi_connection)
        commits.append(1)
        raise dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly (injected)")

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    try:
        yield commits
    finally:
        dialect.do_commit = real  # type: ignore[method-assign]


def test_a_failed_commit_keeps_the_spool_file_of_a_message_it_may_have_stored(db_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    store = SqlStore.open(db_url, spool_dir=spool, inline_max=1024)
    try:
        envelope = Envelope(Direction.OUTGOING, "a@x.example", ("b@y.example",))
        with lost_commit_acknowledgement(store) as commits, pytest.raises(StorageError, match="enqueue failed"):
            store.enqueue(envelope, RAW, now=T0)
        assert commits == [1]
        # The row committed: its body must still be readable (the spool file was not removed).
        (message,) = store.list_messages()
        assert message.spooled
        assert store.raw(message.id) == RAW
        assert [j.message_id for j in store.claim("n1", T0, 60, 10)] == [message.id]
        assert store.spool_orphans() == []
    finally:
        store.close()


def test_a_failure_before_the_commit_still_removes_the_spool_file(db_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    store = SqlStore.open(db_url, spool_dir=spool, inline_max=1024)

    def fail(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_EVENTS"):
            raise store.engine.dialect.loaded_dbapi.OperationalError("injected failure")

    event.listen(store.engine, "before_cursor_execute", fail)
    try:
        with pytest.raises(StorageError, match="injected failure"):
            store.enqueue(Envelope(Direction.OUTGOING, "a@x.example", ("b@y.example",)), RAW, now=T0)
    finally:
        event.remove(store.engine, "before_cursor_execute", fail)
    try:
        assert store.list_messages() == []
        assert list(spool.rglob("*.eml")) == []
    finally:
        store.close()
