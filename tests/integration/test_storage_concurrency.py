"""Workers claiming concurrently never get the same recipient: threads (each its own engine, like separate
nodes) and separate processes, on SQLite (BEGIN IMMEDIATE) and PostgreSQL (FOR UPDATE SKIP LOCKED).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from hisp.adapters.storage import SqlStore
from hisp.adapters.storage.testing import backends, scratch_database
from hisp.ports import Direction, Envelope, Job, RecipientState

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
MESSAGES = 40
PER_MESSAGE = 3


def _fill(url: str) -> set[int]:
    store = SqlStore.open(url)
    ids: set[int] = set()
    try:
        for m in range(MESSAGES):
            recipients = tuple(f"r{m}-{i}@direct.hospital.example" for i in range(PER_MESSAGE))
            stored = store.enqueue(Envelope(Direction.OUTGOING, "s@direct.clinic.example", recipients), b"x", now=T0)
            ids.update(r.id for r in stored.recipients)
    finally:
        store.close()
    return ids


def _work(url: str, node: str, start: threading.Barrier | None = None) -> list[int]:
    """Claim two at a time until nothing is due; complete every job; return the claimed recipient ids."""
    store = SqlStore.open(url, migrate=False)
    claimed: list[int] = []
    try:
        if start is not None:
            start.wait()
        while jobs := store.claim(node, T0, 300, 2):
            time.sleep(0.01)  # the delivery itself, outside any transaction: lets the others take the lock
            for job in jobs:
                claimed.append(job.recipient_id)
                store.complete(job, T0, target="t", reply="250")
    finally:
        store.close()
    return claimed


def _check(url: str, expected: set[int], claims: list[list[int]]) -> None:
    counts = Counter(rid for claimed in claims for rid in claimed)
    assert set(counts) == expected
    assert max(counts.values()) == 1, "a recipient was claimed twice"
    assert sum(1 for claimed in claims if claimed) >= 2, "one worker took everything: no concurrency exercised"
    store = SqlStore.open(url, migrate=False)
    try:
        assert store.list_messages(state=RecipientState.QUEUED, limit=1000) == []
        assert len(store.list_messages(state=RecipientState.DELIVERED, limit=1000)) == MESSAGES
    finally:
        store.close()


def test_threads_never_claim_the_same_recipient(db_url: str) -> None:
    expected = _fill(db_url)
    start = threading.Barrier(4)
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def run(node: str) -> None:
        try:
            results[node] = _work(db_url, node, start)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"node-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    _check(db_url, expected, list(results.values()))


_WORKER = """
import json, sys
sys.path.insert(0, sys.argv[3])
from test_storage_concurrency import _work
print("ready", flush=True)
sys.stdin.readline()  # start together
print(json.dumps(_work(sys.argv[1], sys.argv[2])))
"""


def test_processes_never_claim_the_same_recipient(db_url: str) -> None:
    expected = _fill(db_url)
    here = str(Path(__file__).parent)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, db_url, f"proc-{i}", here],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    claims = []
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        claims.append(json.loads(out))
    _check(db_url, expected, claims)


@pytest.mark.skipif("postgresql" not in backends(), reason="needs HISP_TEST_POSTGRES_URL")
def test_postgres_claim_skips_locked_rows_instead_of_waiting(tmp_path: Path) -> None:
    """A recipient row locked by another transaction (a node mid-claim) is skipped, not waited for."""
    with scratch_database("postgresql", tmp_path) as url:
        _fill(url)
        store = SqlStore.open(url, migrate=False)
        try:
            with store.engine.connect() as other:
                first = other.execute(
                    text("SELECT id FROM recipients ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE")
                ).scalar_one()
                result: list[Job] = []
                claimer = threading.Thread(target=lambda: result.extend(store.claim("n2", T0, 60, 1)), daemon=True)
                claimer.start()
                claimer.join(timeout=10)
                blocked = claimer.is_alive()
                other.rollback()  # unblocks a claim that waited, so the test ends either way
                claimer.join(timeout=10)
                assert not blocked, "claim waited for a locked row instead of skipping it"
                assert len(result) == 1 and result[0].recipient_id != first
        finally:
            store.close()
