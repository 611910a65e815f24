"""The DSN a bounce records as owed is settled with what the sender was actually told (RFC 3464; DN-8; AS-19).

Before, ``bounce()`` wrote a "DSN pending" row that nothing updated: ``hisp messages show`` said "pending" for a
DSN that had long been delivered (found by a fresh-user trial).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_gateway_nodes import ATTACHMENT, QUICK, Sink, Steps, dns, node, run, sink_on, wait_files

from hisp.adapters.storage import SqlStore
from hisp.adapters.storage.testing import backends, scratch_database
from hisp.commands.demo import prepare, referral, submit
from hisp.ports import Direction, Envelope, Job, NotificationKind, NotificationStatus

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
SENDER = "dr.smith@direct.clinic.example"
JONES = "dr.jones@direct.hospital.example"


@pytest.fixture(params=backends())
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    with scratch_database(request.param, tmp_path) as url:
        opened = SqlStore.open(url, spool_dir=tmp_path / "spool")
        yield opened
        opened.close()


def _bounced(store: SqlStore) -> tuple[str, Job]:
    raw = b"From: dr.smith@direct.clinic.example\r\nMessage-ID: <o1@clinic>\r\n\r\nbody\r\n"
    queue_id = store.enqueue(Envelope(Direction.OUTGOING, SENDER, (JONES,), "<o1@clinic>"), raw, now=T0).id
    (job,) = store.claim("n1", T0, 60, 1)
    store.bounce(job, T0, "550 5.1.1 no such user")
    return queue_id, job


def test_settled_with_how_the_sender_was_told(store: SqlStore) -> None:
    queue_id, job = _bounced(store)
    (owed,) = store.show(queue_id).notifications
    assert (owed.kind, owed.status) == (NotificationKind.DSN, NotificationStatus.PENDING)
    store.settle_owed_dsn(job, T0 + timedelta(seconds=1), detail="DSN queued as abc")
    (settled,) = store.show(queue_id).notifications
    assert (settled.status, settled.detail) == (NotificationStatus.SENT, "DSN queued as abc")
    assert settled.updated_at == T0 + timedelta(seconds=1)
    store.settle_owed_dsn(job, T0 + timedelta(seconds=2), detail="again")
    assert store.show(queue_id).notifications[0].detail == "DSN queued as abc"  # settled once


def test_removed_when_none_was_owed(store: SqlStore) -> None:
    queue_id, job = _bounced(store)
    store.settle_owed_dsn(job, T0, detail=None)
    assert store.show(queue_id).notifications == ()


def test_a_real_bounce_shows_the_dsn_it_sent(tmp_path: Path) -> None:
    """A peer answering 5xx: the clinic's bounce queues a DSN to dr.smith, and the owed notification says so."""
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()

    async def main() -> None:
        async with dns(setup), node(setup.clinic.config, steps, "clinic") as clinic, \
                sink_on(setup.hospital.backbone, Sink("554 5.7.1 refused by the test peer")):
            await submit(setup, referral(ATTACHMENT, "note.xml", datetime.now(UTC)))
            await wait_files(setup.clinic.directory / "ehr" / "Maildir" / "new")
            assert clinic.store is not None
            (message,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            (owed,) = clinic.store.show(message.id).notifications
            assert owed.status is NotificationStatus.SENT, owed
            assert owed.detail.startswith("DSN ") and "queued" in owed.detail

    run(main())
