"""Delivery notifications between two real HISPs on loopback (issue 6, "Tests").

The clinic's HISP (sending) and the hospital's HISP (receiving) run as :class:`hisp.app.Node` with our DNS
responder and real SMTP. The clinic's clock is injected, so timeouts are reached by moving it forward, not by
waiting an hour. What reaches dr.smith's mailbox at the clinic (the edge) is what the rules promise:

* processed MDN for every message (AS-18), dispatched too when asked (DN-3), never an MDN for an MDN (AS-19);
* a failed MDN when the hospital's EHR refuses (DN-5), a DSN 5.5.0 when not asked;
* a DSN 5.4.71 when no MDN comes in time, 5.4.72 when processed but never dispatched (DN-7, DN-9);
* a dispatched MDN arriving after the timeout DSN is recorded and not forwarded (DN-8);
* two recipients, one without a certificate: one DSN for that one only (AS-22, DN-6);
* a malformed request means processed only (DN-4);
* a restart of the sending HISP in the middle does not lose the timer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_gateway_nodes import QUICK, Sink, Steps, dns, run, sink_on

from hisp.app import Node
from hisp.commands.demo import RECIPIENT, SENDER, DemoSetup, prepare, referral, submit
from hisp.config import load_config
from hisp.core.dsn import parse_dsn
from hisp.core.mdn import FINAL_DELIVERY_FIELD, parse_mdn
from hisp.core.tracking import State
from hisp.ports import Direction
from hisp.testing.process import free_port

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")

ATTACHMENT = b"<ClinicalDocument>synthetic</ClinicalDocument>\n" * 10
FAST_SCAN = "scan_interval = 0.2\n"


class Clock:
    """The clinic's injected clock: real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@asynccontextmanager
async def hisp(config: Path, steps: Steps, who: str, clock: Clock | None = None) -> AsyncIterator[Node]:
    running = Node(load_config(config), environ=os.environ, observer=steps.of(who), clock=clock or Clock())
    await running.start()
    try:
        yield running
    finally:
        await running.stop(grace=5.0)


def mailbox(setup: DemoSetup) -> Path:
    """dr.smith's mailbox at the clinic: where notifications for the sender arrive."""
    return setup.clinic.directory / "ehr" / "Maildir" / "new"


async def notices(setup: DemoSetup, count: int, timeout: float = 20.0) -> list[bytes]:
    """Wait until dr.smith's mailbox holds ``count`` messages; return them, oldest first."""
    deadline = asyncio.get_running_loop().time() + timeout
    files: list[Path] = []
    while asyncio.get_running_loop().time() < deadline:
        files = sorted(mailbox(setup).glob("*"), key=lambda p: p.stat().st_mtime_ns) if mailbox(setup).is_dir() else []
        if len(files) >= count:
            return [f.read_bytes() for f in files]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(files)} of {count} notices in {mailbox(setup)} within {timeout} s")


def dispositions(messages: list[bytes]) -> list[str | None]:
    return [parse_mdn(m).disposition for m in messages]


def send(setup: DemoSetup, *, final: bool, header: bytes = b"") -> bytes:
    """dr.smith's referral, asking for final-delivery notification or not, with ``header`` put first."""
    del setup
    return header + referral(ATTACHMENT, "note.xml", datetime.now(UTC), final_delivery=final)


def test_happy_path_with_final_delivery_gives_processed_then_dispatched(tmp_path: Path) -> None:
    """DN-3: processed, then dispatched with the extension; both signed and encrypted (they passed our own
    incoming checks: the trust header names dr.jones as the verified signer), correlated, tracked complete."""
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic") as clinic, \
                hisp(setup.hospital.config, steps, "hospital") as hospital:
            message = send(setup, final=True)
            await submit(setup, message)
            assert clinic.store is not None and hospital.store is not None
            await steps.wait("clinic", "notification")
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            deadline = asyncio.get_running_loop().time() + 20
            while asyncio.get_running_loop().time() < deadline:
                history = clinic.store.tracking(sent.id).track.recipients[RECIPIENT].history
                if {r.event.value for r in history} >= {"processed", "dispatched"}:
                    break
                await asyncio.sleep(0.05)
            # both MDNs came back; the edge gets the dispatched one, and the processed one only if it came first
            # (after the dispatched MDN completed the recipient it is recorded, not forwarded: DN-8, ETT MT29)
            forwarded = [r.event.value for r in history if r.action.value == "forward"]
            assert forwarded in (["processed", "dispatched"], ["dispatched"])
            got = await notices(setup, len(forwarded))
            await asyncio.sleep(0.5)  # nothing else comes
            assert len(list(mailbox(setup).glob("*"))) == len(forwarded)
            assert sorted(dispositions(got)) == sorted(forwarded)
            original_id = next(line for line in message.split(b"\r\n") if line.startswith(b"Message-ID:"))
            for raw in got:
                assert raw.startswith(f"X-Direct-Trust: pass; sender={RECIPIENT}; binding=address".encode())
                mdn = parse_mdn(raw)
                assert mdn.original_message_id == original_id.split(b": ", 1)[1].decode()
                assert mdn.final_recipient == RECIPIENT
                assert mdn.final_delivery is (mdn.disposition == "dispatched")
            tracked = clinic.store.tracking(sent.id)
            assert tracked.complete and tracked.track.recipients[RECIPIENT].state is State.DISPATCHED
            # the hospital sent two MDNs, and the clinic answered neither with an MDN (AS-19)
            assert len(hospital.store.list_messages(direction=Direction.OUTGOING)) == 2
            assert len(clinic.store.list_messages(direction=Direction.OUTGOING)) == 1
            assert all(f"{FINAL_DELIVERY_FIELD}".encode() not in raw.split(b"\r\n\r\n")[0] for raw in got)

    run(main(), timeout=60)


def test_without_the_request_processed_only_and_general_tracking(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic") as clinic, \
                hisp(setup.hospital.config, steps, "hospital"):
            await submit(setup, send(setup, final=False))
            got = await notices(setup, 1)
            await steps.wait("hospital", "delivered")
            await asyncio.sleep(1.0)  # a dispatched MDN would have come by now
            assert dispositions(got) == ["processed"] and len(list(mailbox(setup).glob("*"))) == 1
            assert clinic.store is not None
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            tracked = clinic.store.tracking(sent.id)
            assert tracked.track.mode.value == "general" and tracked.complete

    run(main(), timeout=60)


def test_dn4_malformed_request_means_processed_only(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()
    malformed = f"Disposition-Notification-Options: {FINAL_DELIVERY_FIELD}=optional\r\n".encode()

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic"), \
                hisp(setup.hospital.config, steps, "hospital"):
            await submit(setup, send(setup, final=False, header=malformed))
            got = await notices(setup, 1)
            await steps.wait("hospital", "delivered")
            await asyncio.sleep(1.0)
            assert dispositions(got) == ["processed"] and len(list(mailbox(setup).glob("*"))) == 1

    run(main(), timeout=60)


def test_dn5_ehr_refuses_failed_mdn_reaches_the_sender(tmp_path: Path) -> None:
    ehr = free_port()
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK, hospital_endpoint=f"smtp://127.0.0.1:{ehr}")
    steps = Steps()

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic") as clinic, \
                hisp(setup.hospital.config, steps, "hospital"), \
                sink_on(ehr, Sink("550 5.1.1 no such patient mailbox")):
            await submit(setup, send(setup, final=True))
            # the failed MDN may overtake the processed one, which is then recorded and not forwarded (DN-8)
            got = await notices(setup, 1)
            while "failed" not in dispositions(got):
                got = await notices(setup, len(got) + 1)
            assert sorted(dispositions(got)) in (["failed"], ["failed", "processed"])
            failed = next(parse_mdn(m) for m in got if parse_mdn(m).disposition == "failed")
            assert failed.failure and "no such patient mailbox" in failed.failure
            assert clinic.store is not None
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            assert clinic.store.tracking(sent.id).track.recipients[RECIPIENT].state is State.FAILED

    run(main(), timeout=60)


def test_dn5_ehr_refuses_without_request_dsn_5_5_0_from_the_partner(tmp_path: Path) -> None:
    ehr = free_port()
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK, hospital_endpoint=f"smtp://127.0.0.1:{ehr}")
    steps = Steps()

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic"), \
                hisp(setup.hospital.config, steps, "hospital"), \
                sink_on(ehr, Sink("550 5.1.1 no such patient mailbox")):
            await submit(setup, send(setup, final=False))
            # the DSN may overtake the processed MDN; an MDN arriving after the failure is recorded, not forwarded
            got = await notices(setup, 1)
            while not any(parse_dsn(m).recipients for m in got):
                got = await notices(setup, len(got) + 1)
            dsn = next(parse_dsn(m) for m in got if parse_dsn(m).recipients)
            ((block),) = dsn.recipients
            assert (block.address, block.status, block.action) == (RECIPIENT, "5.5.0", "failed")
            # it came sealed from the hospital: our own incoming checks passed it
            assert any(m.startswith(b"X-Direct-Trust: pass;") and b"5.5.0" in m for m in got)

    run(main(), timeout=60)


def test_dn7_peer_that_never_sends_mdns_gives_dsn_5_4_71_after_the_timeout(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK, notifications="send_mdn = false\n" + FAST_SCAN)
    steps = Steps()
    clock = Clock()

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic", clock) as clinic, \
                hisp(setup.hospital.config, steps, "hospital"):
            await submit(setup, send(setup, final=True))
            await steps.wait("hospital", "delivered")
            await asyncio.sleep(0.6)  # several scans before the deadline: nothing
            assert not mailbox(setup).is_dir() or not list(mailbox(setup).glob("*"))
            clock.offset = timedelta(hours=1, seconds=1)
            (raw,) = await notices(setup, 1)
            await asyncio.sleep(0.6)  # later scans add nothing: one DSN
            assert len(list(mailbox(setup).glob("*"))) == 1
            ((block),) = parse_dsn(raw).recipients
            assert (block.address, block.status) == (RECIPIENT, "5.4.71")
            assert clinic.store is not None
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            tracked = clinic.store.tracking(sent.id)
            assert tracked.complete and tracked.track.recipients[RECIPIENT].state is State.TIMED_OUT

    run(main(), timeout=60)


def test_dn7_processed_but_never_dispatched_gives_5_4_72_and_dn8_late_dispatched_is_not_forwarded(
    tmp_path: Path,
) -> None:
    ehr = free_port()
    setup = prepare(
        tmp_path, datetime.now(UTC), queue=QUICK, hospital_endpoint=f"smtp://127.0.0.1:{ehr}", notifications=FAST_SCAN
    )
    steps = Steps()
    clock = Clock()

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic", clock) as clinic, \
                hisp(setup.hospital.config, steps, "hospital"):
            await submit(setup, send(setup, final=True))
            (processed,) = await notices(setup, 1)  # the EHR is down: processed only
            assert dispositions([processed]) == ["processed"]
            await steps.wait("hospital", "retry")
            clock.offset = timedelta(hours=1, seconds=1)
            got = await notices(setup, 2)
            ((block),) = parse_dsn(got[1]).recipients
            assert (block.address, block.status) == (RECIPIENT, "5.4.72")
            async with sink_on(ehr, Sink()):  # the EHR comes back: the dispatched MDN comes, too late
                await steps.wait("hospital", "delivered", timeout=20)
                await steps.wait("clinic", "notification", timeout=20)
                await asyncio.sleep(0.5)
            assert len(list(mailbox(setup).glob("*"))) == 2  # DN-8: not forwarded
            assert clinic.store is not None
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            history = clinic.store.tracking(sent.id).track.recipients[RECIPIENT].history
            assert [(r.event.value, r.action.value) for r in history][-1] == ("dispatched", "record")
            assert clinic.store.tracking(sent.id).track.recipients[RECIPIENT].state is State.TIMED_OUT

    run(main(), timeout=90)


def test_as22_two_recipients_one_without_certificate_one_dsn_for_that_one(tmp_path: Path) -> None:
    """dr.jones has a certificate; nobody@ has none: the referral goes to dr.jones, and one DSN (5.7.31) names
    nobody@ only; dr.jones' processed MDN follows."""
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()
    nobody = "nobody@direct.hospital.example"

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic") as clinic, \
                hisp(setup.hospital.config, steps, "hospital"):
            await submit(setup, send(setup, final=False), recipients=(RECIPIENT, nobody))
            got = await notices(setup, 2)
            dsns = [parse_dsn(m) for m in got if parse_mdn(m).disposition is None]
            (dsn,) = dsns
            assert [(r.address, r.status) for r in dsn.recipients] == [(nobody, "5.7.31")]
            assert dispositions(got).count("processed") == 1
            assert clinic.store is not None
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            states = {a: r.state for a, r in clinic.store.tracking(sent.id).track.recipients.items()}
            assert states == {RECIPIENT: State.PROCESSED, nobody: State.FAILED}

    run(main(), timeout=60)


def test_restart_of_the_sending_hisp_keeps_the_timer(tmp_path: Path) -> None:
    """The clinic stops after relaying; it starts again after the deadline; the DSN still comes, once."""
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK, notifications="send_mdn = false\n" + FAST_SCAN)
    steps = Steps()
    clock = Clock()

    async def main() -> None:
        async with dns(setup), hisp(setup.hospital.config, steps, "hospital"):
            async with hisp(setup.clinic.config, steps, "clinic", clock):
                await submit(setup, send(setup, final=False))
                await steps.wait("clinic", "relayed")
            clock.offset = timedelta(hours=2)
            async with hisp(setup.clinic.config, steps, "clinic-again", clock) as again:
                (raw,) = await notices(setup, 1)
                ((block),) = parse_dsn(raw).recipients
                assert (block.address, block.status) == (RECIPIENT, "5.4.71")
                await asyncio.sleep(0.6)
                assert len(list(mailbox(setup).glob("*"))) == 1
                assert again.store is not None
                (sent,) = again.store.list_messages(direction=Direction.OUTGOING)
                assert again.store.tracking(sent.id).complete

    run(main(), timeout=60)


def test_an_mdn_nobody_tracks_is_forwarded_and_never_answered(tmp_path: Path) -> None:
    """An MDN about a message the clinic never sent: recorded as unmatched and forwarded to dr.smith; no MDN
    goes back for it (AS-19)."""
    import aiosmtplib

    from hisp.adapters.smtp_relay import client_tls_context
    from hisp.core.mdn import build_mdn
    from hisp.testing.pki import seal

    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()
    at = datetime.now(UTC)
    original = (
        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: never sent\r\nMessage-ID: <never-sent@x>\r\n\r\nhi\r\n"
    ).encode()
    mdn = build_mdn(original, recipient=RECIPIENT, disposition="processed", reporting_ua="mx; test",
                    message_id=lambda: "<stray@direct.hospital.example>", at=at)
    sealed = seal(mdn, [setup.issued["jones"].credential], [setup.issued["smith"].certificate], at=at)

    async def main() -> None:
        async with dns(setup), hisp(setup.clinic.config, steps, "clinic") as clinic:
            reply = await send_backbone_from(setup.clinic.backbone, sealed)
            assert reply.startswith("2.0.0 Ok: queued as")
            (raw,) = await notices(setup, 1)
            assert parse_mdn(raw).original_message_id == "<never-sent@x>"
            assert "not tracked here" in await steps.wait("clinic", "notification")
            assert clinic.store is not None
            assert clinic.store.list_messages(direction=Direction.OUTGOING) == []

    async def send_backbone_from(port: int, message: bytes) -> str:
        """As the hospital's HISP sends an MDN: null reverse-path, STARTTLS."""
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=20)
        await client.connect()
        try:
            await client.starttls(tls_context=client_tls_context())
            _, reply = await client.sendmail("", [SENDER], message)
        finally:
            await client.quit()
        return reply

    run(main(), timeout=60)
