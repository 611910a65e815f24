"""Adversarial probe: can notifications ping-pong between two real HISPs? (issue 6, AS-19, RFC 5321 4.5.5)

Two HISPs on loopback (hisp.app.Node, our DNS responder, real SMTP), and both edges refuse everything (550):
the hospital's EHR refuses the referrals, so it owes failed MDNs or 5.5.0 DSNs; the clinic's EHR refuses those
notices, the processed MDNs and (after the clock jumps past the timeout) its own timeout DSNs. No notice may be
answered by another notice: the traffic must stop, and each store must hold a bounded number of messages.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_gateway_nodes import QUICK, Sink, Steps, dns, run, sink_on
from test_gateway_notifications import FAST_SCAN, Clock, hisp, send

from hisp.commands.demo import prepare, submit
from hisp.ports import Direction
from hisp.testing.process import free_port

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")


def test_edges_refusing_everything_on_both_sides_do_not_make_a_notification_loop(tmp_path: Path) -> None:
    clinic_ehr, hospital_ehr = free_port(), free_port()
    setup = prepare(
        tmp_path, datetime.now(UTC), queue=QUICK, hospital_endpoint=f"smtp://127.0.0.1:{hospital_ehr}",
        notifications=FAST_SCAN,
    )
    text = setup.clinic.config.read_text()
    setup.clinic.config.write_text(text.replace('endpoint = "maildir:ehr/Maildir"', f'endpoint = "smtp://127.0.0.1:{clinic_ehr}"'))
    steps = Steps()
    clock = Clock()

    def counts(*stores) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
        return tuple(len(s.list_messages(limit=1000)) for s in stores)

    async def settled(*stores_and_ready, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        """Until ``ready()`` and no recipient of either store is queued or in flight."""
        *stores, ready = stores_and_ready
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            busy = [r for s in stores for m in s.list_messages(limit=1000) for r in m.recipients
                    if r.state.value in ("queued", "in_flight")]
            if ready() and not busy:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the two HISPs never settled")

    async def main() -> None:
        refuse = "550 5.1.1 refused by policy"
        async with dns(setup), sink_on(clinic_ehr, Sink(refuse)), sink_on(hospital_ehr, Sink(refuse)), \
                hisp(setup.clinic.config, steps, "clinic", clock) as clinic, \
                hisp(setup.hospital.config, steps, "hospital") as hospital:
            await submit(setup, send(setup, final=True))
            await submit(setup, send(setup, final=False))
            assert clinic.store is not None and hospital.store is not None
            # referrals refused at the hospital; its notices relayed, then refused (or kept back, DN-8) at the clinic
            await settled(clinic.store, hospital.store, lambda: len(
                hospital.store.list_messages(direction=Direction.OUTGOING)) >= 4)  # type: ignore[union-attr]
            clock.offset = timedelta(hours=2)  # timeout DSNs for whatever is incomplete, refused too
            await asyncio.sleep(0.5)
            await settled(clinic.store, hospital.store, lambda: True)
            assert clinic.store is not None and hospital.store is not None
            first = counts(clinic.store, hospital.store)
            await asyncio.sleep(1.5)
            assert counts(clinic.store, hospital.store) == first, "traffic is still growing"
            # clinic: 2 referrals out; in: at most 2 processed + 1 failed MDN + 1 DSN 5.5.0 (+ timeout DSNs)
            assert len(clinic.store.list_messages(direction=Direction.OUTGOING)) == 2
            assert len(clinic.store.list_messages(direction=Direction.INCOMING)) <= 6
            # hospital: 2 referrals in; out: 2 processed MDNs + 1 failed MDN + 1 DSN 5.5.0, nothing for notices
            assert len(hospital.store.list_messages(direction=Direction.INCOMING)) == 2
            assert len(hospital.store.list_messages(direction=Direction.OUTGOING)) == 4
            assert sum(w == "hospital" for w, s, _ in steps.seen if s == "bounced") == 2  # the referrals only
            assert not [d for w, s, d in steps.seen if w == "clinic" and s == "mdn"]  # AS-19: the clinic never answers

    run(main(), timeout=40)
