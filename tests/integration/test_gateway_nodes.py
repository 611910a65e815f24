"""Two HISP nodes on loopback (:class:`hisp.app.Node`), our DNS responder, real SMTP: the gateway's promises.

What this proves (issue 5, "Tests"): submission with STARTTLS + AUTH delivered end to end to a maildir with the
queue and audit trail to show for it; a message from an untrusted HISP and an unencrypted one answered 554 with
nothing stored; a peer HISP that is down is retried and delivered when it comes back; a peer that answers 5xx
makes a bounce with an RFC 3464 DSN to the sender; an EHR endpoint that is down gets the message later.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import Envelope, Session

from hisp.adapters.dns_server import DnsServer
from hisp.adapters.smtp_relay import client_tls_context
from hisp.app import Node
from hisp.commands.demo import RECIPIENT, SENDER, DemoSetup, attachment_of, prepare, referral, submit
from hisp.config import load_config
from hisp.core import devca
from hisp.ports import AuditKind, Direction, RecipientState
from hisp.testing.pki import seal

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")

ATTACHMENT = b"<ClinicalDocument>synthetic</ClinicalDocument>\n" * 20
QUICK = "retry_initial = 0.5\nretry_maximum = 1\nlifetime = 60\nworkers = 2\npoll_interval = 0.2\n"


def run(coro: Awaitable[Any], timeout: float = 40.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


class Steps:
    """The pipeline's observer: every step of every node, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def of(self, who: str) -> Callable[[str, str], None]:
        return lambda step, detail: self.seen.append((who, step, detail))

    async def wait(self, who: str, step: str, timeout: float = 15.0) -> str:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for w, s, d in self.seen:
                if (w, s) == (who, step):
                    return d
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {who} {step} within {timeout} s; saw {self.seen}")


async def wait_files(directory: Path, timeout: float = 15.0) -> list[Path]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        files = sorted(directory.glob("*")) if directory.is_dir() else []
        if files:
            return files
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing in {directory} within {timeout} s")


@asynccontextmanager
async def dns(setup: DemoSetup) -> AsyncIterator[DnsServer]:
    server = DnsServer(setup.zones(), "127.0.0.1", setup.dns_port)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@asynccontextmanager
async def node(site_config: Path, steps: Steps, who: str) -> AsyncIterator[Node]:
    running = Node(load_config(site_config), environ=os.environ, observer=steps.of(who))
    await running.start()
    try:
        yield running
    finally:
        await running.stop(grace=5.0)


class Sink:
    """A plain SMTP server standing for a peer HISP or an EHR: answers DATA with ``reply``, keeps the bytes."""

    def __init__(self, reply: str = "250 2.0.0 Ok") -> None:
        self.reply = reply
        self.received: list[bytes] = []

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        if self.reply.startswith("250"):
            self.received.append(bytes(envelope.original_content or b""))
        return self.reply


@asynccontextmanager
async def sink_on(port: int, sink: Sink) -> AsyncIterator[Sink]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: AioSMTP(sink, decode_data=False), "127.0.0.1", port)
    try:
        yield sink
    finally:
        server.close()
        await server.wait_closed()


def test_submission_to_maildir_end_to_end(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()

    async def main() -> None:
        async with dns(setup), node(setup.clinic.config, steps, "clinic") as clinic, \
                node(setup.hospital.config, steps, "hospital") as hospital:
            reply = await submit(setup, referral(ATTACHMENT, "note.xml", datetime.now(UTC)))
            assert reply.startswith("2.0.0 Ok: queued as")
            (delivered,) = await wait_files(setup.hospital.directory / "ehr" / "Maildir" / "new")
            data = delivered.read_bytes()
            assert data.startswith(b"X-Direct-Trust: pass; sender=dr.smith@direct.clinic.example; binding=address")
            assert attachment_of(data, "note.xml") == ATTACHMENT
            await steps.wait("hospital", "delivered")
            assert clinic.store is not None and hospital.store is not None
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            assert [r.state for r in sent.recipients] == [RecipientState.DELIVERED]
            kinds = [e.kind for e in clinic.store.events(message_id=sent.id)]
            assert kinds == [AuditKind.ACCEPT, AuditKind.RELAY]
            relay = clinic.store.events(message_id=sent.id)[-1]
            assert len(relay.fingerprints) == 2 and "Hospital Demo CA" in relay.verdict
            (received,) = hospital.store.list_messages(direction=Direction.INCOMING)
            accept, deliver = hospital.store.events(message_id=received.id)
            assert (accept.kind, deliver.kind) == (AuditKind.ACCEPT, AuditKind.DELIVER)
            assert "anchor CN=Clinic Demo CA" in accept.verdict and len(accept.fingerprints) == 2

    run(main())


def _forged(setup: DemoSetup, *, trusted_signer: bool, encrypt: bool) -> bytes:
    at = datetime.now(UTC)
    signer = setup.issued["smith"]
    if not trusted_signer:
        rogue = devca.create_ca("Rogue CA", at=at)
        signer = devca.issue_certificate(rogue, at=at, address=SENDER)
    plain = referral(ATTACHMENT, "note.xml", at)
    return seal(plain, [signer.credential], [setup.issued["jones"].certificate], at=at, encrypt=encrypt)


@pytest.mark.parametrize(
    ("trusted_signer", "encrypt", "reason"),
    [(False, True, "untrusted"), (True, False, "unencrypted")],
    ids=["untrusted-hisp", "unencrypted"],
)
def test_backbone_refuses_with_554_and_stores_nothing(
    tmp_path: Path, trusted_signer: bool, encrypt: bool, reason: str
) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()
    message = _forged(setup, trusted_signer=trusted_signer, encrypt=encrypt)

    async def main() -> None:
        async with node(setup.hospital.config, steps, "hospital") as hospital:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=setup.hospital.backbone, start_tls=False)
            await client.connect()
            await client.starttls(tls_context=client_tls_context())  # offered on the backbone; opportunistic
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await client.sendmail(SENDER, [RECIPIENT], message)
            await client.quit()
            assert refused.value.code == 554 and refused.value.message.startswith("5.7.")
            assert reason in refused.value.message
            assert hospital.store is not None
            assert hospital.store.list_messages() == []
            (event,) = hospital.store.events()
            assert event.kind is AuditKind.REJECT and event.message_id is None and "554 5.7." in event.reason
            assert not (setup.hospital.directory / "ehr" / "Maildir").exists()

    run(main())


def test_peer_down_is_retried_and_delivered_when_it_comes_back(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()

    async def main() -> None:
        async with dns(setup), node(setup.clinic.config, steps, "clinic") as clinic:
            await submit(setup, referral(ATTACHMENT, "note.xml", datetime.now(UTC)))
            detail = await steps.wait("clinic", "retry")
            assert "cannot connect" in detail or "refused" in detail.lower()
            assert clinic.store is not None
            (queued,) = clinic.store.list_messages(state=RecipientState.QUEUED)
            async with node(setup.hospital.config, steps, "hospital"):
                (delivered,) = await wait_files(setup.hospital.directory / "ehr" / "Maildir" / "new", timeout=20)
                assert attachment_of(delivered.read_bytes(), "note.xml") == ATTACHMENT
                await steps.wait("clinic", "relayed")
            (message,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            assert message.id == queued.id and message.recipients[0].state is RecipientState.DELIVERED
            assert message.recipients[0].attempts >= 2

    run(main())


def test_peer_5xx_bounces_with_a_dsn_to_the_sender(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()

    async def main() -> None:
        async with dns(setup), node(setup.clinic.config, steps, "clinic") as clinic, \
                sink_on(setup.hospital.backbone, Sink("554 5.7.1 refused by the test peer")):
            await submit(setup, referral(ATTACHMENT, "note.xml", datetime.now(UTC)))
            (dsn,) = await wait_files(setup.clinic.directory / "ehr" / "Maildir" / "new")
            text = dsn.read_bytes().decode("ascii")
            assert "multipart/report; report-type=delivery-status" in text
            assert f"Final-Recipient: rfc822; {RECIPIENT}" in text and "Action: failed" in text
            assert "Status: 5.7.1" in text and "refused by the test peer" in text
            assert f"To: {SENDER}" in text
            assert clinic.store is not None
            (message,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            assert message.recipients[0].state is RecipientState.BOUNCED
            kinds = [e.kind for e in clinic.store.events(message_id=message.id)]
            assert kinds == [AuditKind.ACCEPT, AuditKind.BOUNCE, AuditKind.NOTIFY]

    run(main())


def test_ehr_endpoint_down_then_up(tmp_path: Path) -> None:
    from hisp.testing.process import free_port

    ehr_port = free_port()
    setup = prepare(tmp_path, datetime.now(UTC), hospital_endpoint=f"smtp://127.0.0.1:{ehr_port}", queue=QUICK)
    steps = Steps()

    async def main() -> None:
        async with dns(setup), node(setup.clinic.config, steps, "clinic"), \
                node(setup.hospital.config, steps, "hospital") as hospital:
            await submit(setup, referral(ATTACHMENT, "note.xml", datetime.now(UTC)))
            await steps.wait("hospital", "retry")
            async with sink_on(ehr_port, Sink()) as ehr:
                await steps.wait("hospital", "delivered", timeout=20)
                (data,) = ehr.received
            assert data.startswith(b"X-Direct-Trust: pass;")
            assert attachment_of(data, "note.xml") == ATTACHMENT
            assert hospital.store is not None
            (message,) = hospital.store.list_messages(direction=Direction.INCOMING)
            assert message.recipients[0].state is RecipientState.DELIVERED and message.recipients[0].attempts >= 2

    run(main())


class SlowSink(Sink):
    """An EHR endpoint that takes ``delay`` seconds to answer DATA; counts the DATA commands begun."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.begun = 0

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        self.begun += 1
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


async def send_backbone(port: int, message: bytes, recipients: tuple[str, ...] = (RECIPIENT,)) -> str:
    """Send ``message`` from dr.smith to a node's backbone as a peer HISP would (STARTTLS)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=20)
    await client.connect()
    try:
        await client.starttls(tls_context=client_tls_context())
        _, reply = await client.sendmail(SENDER, list(recipients), message)
    finally:
        await client.quit()
    return reply


def test_slow_ehr_delivery_renews_the_lease_and_is_not_claimed_twice(tmp_path: Path) -> None:
    """A delivery lasting three leases: the worker renews its lease (every third of it), so no other worker
    reclaims the job meanwhile, and the EHR gets the message once, in one attempt."""
    from hisp.testing.process import free_port

    ehr_port = free_port()
    queue = QUICK.replace("workers = 2", "workers = 3") + "lease = 1\n"
    setup = prepare(tmp_path, datetime.now(UTC), hospital_endpoint=f"smtp://127.0.0.1:{ehr_port}", queue=queue)
    steps = Steps()
    at = datetime.now(UTC)
    sealed = seal(referral(ATTACHMENT, "note.xml", at), [setup.issued["smith"].credential],
                  [setup.issued["jones"].certificate], at=at)

    async def main() -> None:
        async with node(setup.hospital.config, steps, "hospital") as hospital, \
                sink_on(ehr_port, SlowSink(3.2)) as ehr:
            assert hospital.pipeline is not None and hospital.pipeline.lease_seconds == 1
            assert (await send_backbone(setup.hospital.backbone, sealed)).startswith("2.0.0 Ok: queued as")
            await steps.wait("hospital", "delivered", timeout=15)
            await asyncio.sleep(1.5)  # more than a lease: a reclaim would have begun a second DATA by now
            assert isinstance(ehr, SlowSink) and ehr.begun == 1 and len(ehr.received) == 1
            assert hospital.store is not None
            (message,) = hospital.store.list_messages(direction=Direction.INCOMING)
            assert message.recipients[0].state is RecipientState.DELIVERED and message.recipients[0].attempts == 1
            detail = hospital.store.show(message.id)
            assert [a.result for a in detail.attempts] == [RecipientState.DELIVERED]
            assert [e.kind for e in detail.events] == [AuditKind.ACCEPT, AuditKind.DELIVER]

    run(main())
