"""The audit trail carries each trust decision's evidence (AS-20, AS-14): real nodes on loopback.

Issue 3, "Explainable decisions": every decision "is logged in the audit record" with the certificate, the chain
built, the anchor reached, the revocation result and source and the policy rule; an unreachable revocation source
accepted in soft mode is a warning "in the verdict and the audit record".
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
import pytest
from click.testing import CliRunner
from test_gateway_nodes import ATTACHMENT, QUICK, Steps, dns, node, run, wait_files

from hisp.adapters.smtp_relay import client_tls_context
from hisp.cli import main as cli_main
from hisp.commands.demo import RECIPIENT, SENDER, prepare, referral, submit
from hisp.core import devca
from hisp.ports import AuditKind, Direction
from hisp.testing.pki import seal

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_accepted_message_and_relay_record_the_whole_verdict(tmp_path: Path) -> None:
    """AS-20: the hospital's accept event names the signer, the chain, the anchor and where it was configured,
    the revocation result and the rule; the clinic's relay event does the same for the recipient's certificate."""
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    steps = Steps()

    async def main() -> None:
        async with dns(setup), node(setup.clinic.config, steps, "clinic") as clinic, \
                node(setup.hospital.config, steps, "hospital") as hospital:
            await submit(setup, referral(ATTACHMENT, "note.xml", datetime.now(UTC)))
            await wait_files(setup.hospital.directory / "ehr" / "Maildir" / "new")
            await steps.wait("clinic", "relayed")
            assert clinic.store is not None and hospital.store is not None
            (received,) = hospital.store.list_messages(direction=Direction.INCOMING)
            accept = hospital.store.events(message_id=received.id)[0]
            assert accept.kind is AuditKind.ACCEPT
            smith = setup.issued["smith"].certificate
            assert accept.verdict.startswith(
                f"trusted signer {smith.subject} (sha256 {smith.fingerprint_sha256[:16]})"
            ), accept.verdict
            assert f"chain {smith.subject} > CN=Clinic Demo CA" in accept.verdict
            assert "anchor CN=Clinic Demo CA (from " in accept.verdict
            assert "revocation not checked (mode soft)" in accept.verdict and "; rule direct-1.3" in accept.verdict
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            relay = clinic.store.events(message_id=sent.id)[-1]
            assert relay.kind is AuditKind.RELAY
            jones = setup.issued["jones"].certificate
            assert relay.verdict.startswith(f"trusted recipient {jones.subject}"), relay.verdict
            assert "anchor CN=Hospital Demo CA (from " in relay.verdict

    run(main())


def test_soft_mode_revocation_warning_is_in_the_audit_record(tmp_path: Path) -> None:
    """AS-20: a signer whose CRL cannot be fetched is accepted in soft mode (the demo's mode), and the accept
    event says so: revocation unknown, its source, and the warning."""
    at = datetime.now(UTC)
    setup = prepare(tmp_path, at, queue=QUICK)
    steps = Steps()
    crl = f"http://127.0.0.1:{_closed_port()}/clinic.crl"
    signer = devca.issue_certificate(setup.issued["clinic-ca"], at=at, address=SENDER, crl_url=crl)
    message = seal(referral(ATTACHMENT, "note.xml", at), [signer.credential], [setup.issued["jones"].certificate],
                   at=at)

    async def main() -> None:
        async with node(setup.hospital.config, steps, "hospital") as hospital:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=setup.hospital.backbone, start_tls=False)
            await client.connect()
            await client.starttls(tls_context=client_tls_context())
            await client.sendmail(SENDER, [RECIPIENT], message)
            await client.quit()
            assert hospital.store is not None
            (received,) = hospital.store.list_messages(direction=Direction.INCOMING)
            accept = hospital.store.events(message_id=received.id)[0]
            assert accept.kind is AuditKind.ACCEPT
            assert f"revocation unknown (mode soft) from {crl}" in accept.verdict, accept.verdict
            assert "warning: revocation status unknown, accepted in soft mode" in accept.verdict
            assert signer.certificate.fingerprint_sha256 in accept.fingerprints

    run(main())


def test_refused_signer_is_explained_in_the_reject_event(tmp_path: Path) -> None:
    """AS-14: the reject event of a message from an untrusted HISP names the signer's certificate (fingerprint
    too), why it failed and that no configured anchor is reachable, beside the 554 reply."""
    at = datetime.now(UTC)
    setup = prepare(tmp_path, at, queue=QUICK)
    steps = Steps()
    rogue = devca.issue_certificate(devca.create_ca("Rogue CA", at=at), at=at, address=SENDER)
    plain = referral(ATTACHMENT, "note.xml", at)
    message_id = next(line.split(b":", 1)[1].strip().decode() for line in plain.split(b"\r\n")
                      if line.lower().startswith(b"message-id:"))
    message = seal(plain, [rogue.credential], [setup.issued["jones"].certificate], at=at)

    async def main() -> None:
        async with node(setup.hospital.config, steps, "hospital") as hospital:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=setup.hospital.backbone, start_tls=False)
            await client.connect()
            await client.starttls(tls_context=client_tls_context())
            with pytest.raises(aiosmtplib.SMTPDataError):
                await client.sendmail(SENDER, [RECIPIENT], message)
            await client.quit()
            assert hospital.store is not None
            (event,) = hospital.store.events()
            assert event.kind is AuditKind.REJECT and "554 5.7." in event.reason
            assert event.verdict.startswith("not trusted (untrusted: "), event.verdict
            assert f"{rogue.certificate.subject} (sha256 {rogue.certificate.fingerprint_sha256[:16]})" in event.verdict
            assert rogue.certificate.fingerprint_sha256 in event.fingerprints
            # found again by the Message-ID the peer sent, though nothing was stored
            assert event.header_message_id == message_id
            assert [e.seq for e in hospital.store.rejections(header_message_id=message_id.strip("<>"))] == [event.seq]

    run(main())
    config = str(setup.hospital.config)
    shown = CliRunner().invoke(cli_main, ["messages", "show", "-c", config, message_id])
    assert shown.exit_code == 0, shown.output
    assert "was refused before its 250 reply and never stored" in shown.stdout
    assert "reject" in shown.stdout and "not trusted (untrusted: " in shown.stdout and "554 5.7." in shown.stdout
    listed = CliRunner().invoke(cli_main, ["messages", "rejected", "-c", config, "--json"])
    assert listed.exit_code == 0, listed.output
    (only,) = json.loads(listed.stdout)["rejected"]
    assert only["header_message_id"] == message_id and only["kind"] == "reject"
