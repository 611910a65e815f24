"""DN-9: the notification timeout counts from the send, not from the submission.

A message that cannot leave the sending HISP (the recipient's HISP is down) has not been sent: telling the edge
"the recipient's system did not confirm receipt in time" (5.4.71) while it still sits in our queue is false, and
when it is relayed later the edge then holds a failure notice for a message that was delivered. Found by a
fresh-user trial; these tests fail on the code before the fix (a 5.4.71 DSN while the message was queued).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_gateway_nodes import Steps, dns, run
from test_gateway_notifications import FAST_SCAN, Clock, hisp, mailbox, notices, send

from hisp.commands.demo import RECIPIENT, prepare, submit
from hisp.core.dsn import parse_dsn
from hisp.core.tracking import State
from hisp.ports import Direction, RecipientState

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")

#: Quick retries, and a queue lifetime (one day) far beyond the notification timeout (one hour).
LONG_LIFE = "retry_initial = 0.5\nretry_maximum = 1\nlifetime = 86400\nworkers = 2\npoll_interval = 0.2\n"


def _empty(setup) -> bool:
    return not mailbox(setup).is_dir() or not list(mailbox(setup).glob("*"))


def test_no_timeout_dsn_while_the_message_is_still_queued_and_the_timer_starts_at_the_relay(tmp_path: Path) -> None:
    """The hospital's HISP is down for more than the timeout: no 5.4.71 while the message waits in the clinic's
    queue; once relayed, the hour counts from the relay, and only then does the DSN come (once)."""
    setup = prepare(tmp_path, datetime.now(UTC), queue=LONG_LIFE, notifications="send_mdn = false\n" + FAST_SCAN)
    steps = Steps()
    clock = Clock()

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic", clock) as clinic:
            await submit(setup, send(setup, final=False))
            await steps.wait("clinic", "retry")  # the hospital is down: queued
            clock.offset = timedelta(hours=1, minutes=5)  # past the submission's deadline
            await asyncio.sleep(1.0)  # several scans
            assert _empty(setup), "a timeout DSN for a message that never left the queue"
            assert clinic.store is not None
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            assert clinic.store.tracking(sent.id).track.recipients[RECIPIENT].state is State.SENT

            async with hisp(setup.hospital.config, steps, "hospital"):  # back; it sends no MDN (send_mdn false)
                await steps.wait("clinic", "relayed", timeout=20)
                relayed_at = clock()
                clock.offset = timedelta(hours=1, minutes=50)  # 45 min after the relay: not yet
                await asyncio.sleep(1.0)
                assert _empty(setup), "the timeout counted from the submission, not from the relay"
                tracked = clinic.store.tracking(sent.id)
                assert not tracked.complete
                assert tracked.track.deadline >= relayed_at + timedelta(minutes=59)

                clock.offset = timedelta(hours=2, minutes=10)  # more than an hour after the relay
                (raw,) = await notices(setup, 1)
                ((block),) = parse_dsn(raw).recipients
                assert (block.address, block.status) == (RECIPIENT, "5.4.71")
                await asyncio.sleep(0.6)
                assert len(list(mailbox(setup).glob("*"))) == 1
                assert clinic.store.tracking(sent.id).track.recipients[RECIPIENT].state is State.TIMED_OUT

    run(main(), timeout=90)


def test_a_message_that_never_leaves_gets_the_queue_bounce_not_a_timeout(tmp_path: Path) -> None:
    """The hospital never comes back: the edge gets one notice, the queue's bounce when the lifetime ends
    (5.4.7), never a 5.4.71 "did not confirm receipt" for a message that was never sent (DN-8: one notice)."""
    setup = prepare(tmp_path, datetime.now(UTC), queue=LONG_LIFE, notifications="send_mdn = false\n" + FAST_SCAN)
    steps = Steps()
    clock = Clock()

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic", clock) as clinic:
            await submit(setup, send(setup, final=False))
            await steps.wait("clinic", "retry")
            clock.offset = timedelta(hours=3)
            await asyncio.sleep(1.0)
            assert _empty(setup)
            clock.offset = timedelta(days=1, hours=1)  # past the queue lifetime
            (raw,) = await notices(setup, 1, timeout=30)
            ((block),) = parse_dsn(raw).recipients
            assert block.address == RECIPIENT and block.status != "5.4.71", block.status
            assert block.status.startswith("5.")
            await asyncio.sleep(0.8)
            assert len(list(mailbox(setup).glob("*"))) == 1
            assert clinic.store is not None
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            assert sent.recipients[0].state is RecipientState.BOUNCED

    run(main(), timeout=90)
