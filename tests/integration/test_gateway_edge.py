"""The gateway's edges against an independent SMTP client: ``swaks`` talking to running nodes (:class:`hisp.app.Node`).

What this proves (issue 5, "Tests", with swaks as the edge client; the listener-level rules are in
test_smtp_server.py, here they are checked on whole nodes with their pipeline and store):

- a referral submitted with STARTTLS + AUTH is relayed through the backbone (DNS discovery, both agents) to the
  hospital EHR's maildir, attachment intact, with the audit trail on both sides;
- a spoofed sender (MAIL FROM or From header) is refused with 550 5.7.1, a message over the configured size with
  552, and nothing is stored;
- the backbone refuses to relay (RCPT for an address not hosted: 550 5.1.1), and a message whose RCPT is not
  in the protected To/Cc (AS-13) is refused after decryption with 554 5.7.1, nothing stored, the reject audited.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_gateway_nodes import QUICK, Steps, dns, node, run, wait_files

from hisp.commands.demo import RECIPIENT, SENDER, DemoSetup, attachment_of, prepare, referral
from hisp.ports import AuditKind, Direction, RecipientState
from hisp.testing.pki import seal

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")

ATTACHMENT = b"<ClinicalDocument>swaks referral</ClinicalDocument>\n" * 40
SIZE_LIMIT = 30_000


async def swaks(port: int, *args: str) -> tuple[int, str]:
    assert shutil.which("swaks"), "swaks is not installed (Debian package swaks; .ci/run installs it)"
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "ehr.clinic.test", "--timeout", "15",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode("utf-8", "replace")


def data_file(path: Path, message: bytes) -> str:
    """``--data @FILE`` for swaks, which ends the data with CRLF . CRLF itself."""
    assert message.endswith(b"\r\n")
    path.write_bytes(message[:-2])
    return "@" + str(path)


def setup_for(tmp_path: Path) -> DemoSetup:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUICK)
    config = setup.clinic.config
    text = config.read_text()
    listener = f"[listeners.submission]\nhost = \"127.0.0.1\"\nport = {setup.clinic.submission}\n"
    assert listener in text
    config.write_text(text.replace(listener, listener + f"max_message_size = {SIZE_LIMIT}\n"))
    return setup


def as_smith(setup: DemoSetup) -> tuple[str, ...]:
    return ("--tls", "--auth", "PLAIN", "--auth-user", "dr.smith", "--auth-password=" + setup.password)


def test_swaks_starttls_auth_referral_reaches_the_ehr(tmp_path: Path) -> None:
    setup = setup_for(tmp_path)
    steps = Steps()
    message = data_file(tmp_path / "referral.eml", referral(ATTACHMENT, "note.xml", datetime.now(UTC)))

    async def main() -> None:
        async with dns(setup), node(setup.clinic.config, steps, "clinic") as clinic, \
                node(setup.hospital.config, steps, "hospital") as hospital:
            assert setup.clinic.submission is not None
            code, out = await swaks(
                setup.clinic.submission, *as_smith(setup), "--from", SENDER, "--to", RECIPIENT, "--data", message
            )
            assert code == 0, out
            assert "220 " in out and "235 2.7.0" in out and "250 2.0.0 Ok: queued as" in out
            (delivered,) = await wait_files(setup.hospital.directory / "ehr" / "Maildir" / "new")
            data = delivered.read_bytes()
            assert data.startswith(b"X-Direct-Trust: pass; sender=dr.smith@direct.clinic.example;")
            assert attachment_of(data, "note.xml") == ATTACHMENT
            await steps.wait("hospital", "delivered")
            assert clinic.store is not None and hospital.store is not None
            (sent,) = clinic.store.list_messages(direction=Direction.OUTGOING)
            assert [r.state for r in sent.recipients] == [RecipientState.DELIVERED]
            accept, relay = clinic.store.events(message_id=sent.id)
            assert (accept.kind, relay.kind) == (AuditKind.ACCEPT, AuditKind.RELAY)
            assert accept.reason == "submitted by edge user dr.smith"
            (received,) = hospital.store.list_messages(direction=Direction.INCOMING)
            assert [e.kind for e in hospital.store.events(message_id=received.id)] == [
                AuditKind.ACCEPT, AuditKind.DELIVER,
            ]

    run(main())


def test_swaks_submission_refuses_spoofed_senders_and_oversized_messages(tmp_path: Path) -> None:
    setup = setup_for(tmp_path)
    steps = Steps()
    at = datetime.now(UTC)
    forged_header = referral(b"<x/>", "note.xml", at).replace(
        f"From: Dr. Smith <{SENDER}>".encode(), b"From: Dr. Boss <boss@direct.clinic.example>"
    )
    big = referral(b"x" * SIZE_LIMIT, "note.xml", at)

    async def main() -> None:
        async with node(setup.clinic.config, steps, "clinic") as clinic:
            port = setup.clinic.submission
            assert port is not None
            code, out = await swaks(port, *as_smith(setup), "--from", "dr.jones@direct.hospital.example",
                                    "--to", RECIPIENT)
            assert code != 0 and "550 5.7.1" in out, out
            code, out = await swaks(port, *as_smith(setup), "--from", SENDER, "--to", RECIPIENT,
                                    "--data", data_file(tmp_path / "forged.eml", forged_header))
            assert code != 0 and "550 5.7.1" in out, out
            code, out = await swaks(port, *as_smith(setup), "--from", SENDER, "--to", RECIPIENT,
                                    "--data", data_file(tmp_path / "big.eml", big))
            assert code != 0 and "552 5.3.4" in out, out
            assert f"250-SIZE {SIZE_LIMIT}" in out
            assert clinic.store is not None
            assert clinic.store.list_messages() == []
            assert not [e for e in clinic.store.events() if e.kind is AuditKind.ACCEPT]

    run(main())


def test_swaks_backbone_no_open_relay_and_as13_routing_check(tmp_path: Path) -> None:
    setup = setup_for(tmp_path)
    steps = Steps()
    at = datetime.now(UTC)
    # signed by dr.smith and encrypted to dr.jones, but the protected To names someone else: the envelope
    # recipient dr.jones is not among the message's own recipients (AS-13), which only decryption can show
    plain = referral(ATTACHMENT, "note.xml", at).replace(
        f"To: Dr. Jones <{RECIPIENT}>".encode(), b"To: Dr. Other <dr.other@direct.hospital.example>"
    )
    sealed = seal(plain, [setup.issued["smith"].credential], [setup.issued["jones"].certificate], at=at)

    async def main() -> None:
        async with node(setup.hospital.config, steps, "hospital") as hospital:
            port = setup.hospital.backbone
            code, out = await swaks(port, "--tls", "--from", SENDER, "--to", "someone@elsewhere.example")
            assert code != 0 and "550 5.1.1" in out, out
            code, out = await swaks(port, "--tls", "--from", SENDER, "--to", RECIPIENT,
                                    "--data", data_file(tmp_path / "sealed.eml", sealed))
            assert code != 0, out
            # refused after decryption: only the decrypted message shows its protected To
            assert "554 5.7.1 AS-13: RCPT 'dr.jones@direct.hospital.example' is not in the protected To" in out, out
            assert hospital.store is not None
            assert hospital.store.list_messages() == []
            (reject,) = hospital.store.events()
            assert reject.kind is AuditKind.REJECT and reject.message_id is None and "554 5.7.1" in reject.reason
            assert not (setup.hospital.directory / "ehr" / "Maildir").exists()

    run(main())
