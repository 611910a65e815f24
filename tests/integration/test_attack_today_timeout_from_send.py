"""Adversarial probes of today's DN-9 change (MessageTrack.expire with ``sent``; Pipeline.expire_once and
_sending_times): the timeout counts from the send; a queued recipient is never timed out; a re-armed deadline
is persisted; one terminal notice per recipient (DN-8), across a restart and with two nodes on one database.

Real store and pipeline (the demo clinic, no listeners or workers), on an injected clock; the relay is played
by claiming the job and completing it in the store, as a worker does.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_attack_notifications_pipeline import (
    Clock,
    clinic_side,
    edge_messages,
    original,
    pki_setup,  # noqa: F401  (the module's fixture)
    run,
    submit,
)

from hisp.commands.demo import DemoSetup
from hisp.core.tracking import State
from hisp.ports import Direction


def _timeout_dsns(side) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [m for m in edge_messages(side) if b"5.4.7" in m]


def _relay(side, at) -> None:  # type: ignore[no-untyped-def]
    side.clock.now = at
    (job,) = [j for j in side.store.claim("relay", at, 60.0, 10) if j.direction is Direction.OUTGOING]
    side.store.complete(job, at, target="127.0.0.1", reply="250 2.0.0 ok")


def test_queued_recipient_is_rearmed_persisted_and_not_reclaimed_in_a_loop(
    pki_setup: DemoSetup, tmp_path: Path  # noqa: F811
) -> None:
    """DN-9: past the submission's deadline a recipient still queued gets no timeout DSN; the re-armed deadline
    is persisted (a restarted node sees it) and the message is not claimed again at every scan until then."""
    clock = Clock()
    start = clock.now

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path, clock=clock) as side:
            queue_id = await submit(side, original(final=False))
            timeout = side.store.tracking(queue_id).track.timeout
            clock.now = start + timeout + timedelta(minutes=5)
            assert await side.pipeline.expire_once() == 1
            assert _timeout_dsns(side) == []
            rearmed = side.store.tracking(queue_id).track.deadline
            assert rearmed > clock.now
            assert await side.pipeline.expire_once() == 0, "claimed again before the re-armed deadline"
        async with clinic_side(pki_setup, tmp_path, clock=clock) as again:  # restart: same database
            assert again.store.tracking(queue_id).track.deadline == rearmed
            assert await again.pipeline.expire_once() == 0
            assert _timeout_dsns(again) == []

    run(main)


def test_timer_counts_from_the_relay_and_gives_one_dsn_even_with_two_nodes(
    pki_setup: DemoSetup, tmp_path: Path  # noqa: F811
) -> None:
    """DN-9 + DN-8: relayed 2 h after submission, the recipient is not timed out 59 min after the relay, is timed
    out once after the timeout, and two nodes scanning one database at once queue exactly one DSN."""
    clock = Clock()
    start = clock.now
    db = tmp_path / "shared.sqlite3"

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path, db=db, clock=clock) as one, clinic_side(
            pki_setup, tmp_path, name="clinic2", db=db, clock=clock
        ) as two:
            queue_id = await submit(one, original(final=False))
            timeout = one.store.tracking(queue_id).track.timeout
            clock.now = start + timeout + timedelta(minutes=1)
            await one.pipeline.expire_once()  # queued: re-armed
            relayed = start + 2 * timeout
            _relay(one, relayed)
            clock.now = relayed + timeout - timedelta(minutes=1)
            await asyncio.gather(one.pipeline.expire_once(), two.pipeline.expire_once())
            assert _timeout_dsns(one) == [], "timed out before a whole timeout after the relay"
            clock.now = relayed + timeout + timedelta(seconds=1)
            await asyncio.gather(one.pipeline.expire_once(), two.pipeline.expire_once())
            await asyncio.gather(one.pipeline.expire_once(), two.pipeline.expire_once())
            assert len(_timeout_dsns(one)) == 1
            tracked = one.store.tracking(queue_id)
            assert tracked.complete
            assert all(t.state is not State.SENT for t in tracked.track.recipients.values())
            clock.now += 10 * timeout
            await one.pipeline.expire_once()
            assert len(_timeout_dsns(one)) == 1, "a second terminal notice (DN-8)"

    run(main)
