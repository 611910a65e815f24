"""Adversarial probes of today's trust evidence in the audit trail (hisp.core.evidence; reject events) with a
hostile certificate subject: a peer whose CA name carries CR LF, a fake SMTP reply and terminal escapes."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from test_attack_notifications_pipeline import (
    CLINIC,
    SENDER,
    clinic_side,
    pki_setup,  # noqa: F401  (the module's fixture)
    run,
)

from hisp.adapters.smtp_server import _well_formed_error
from hisp.cli import main
from hisp.commands.demo import DemoSetup
from hisp.errors import HispError
from hisp.ports import AuditKind
from hisp.testing.pki import TestPKI, plain_message, seal

EVIL_NAME = "Evil\r\n250 2.0.0 OK forged\r\n\x1b]0;owned\x07\x1b[31mCA"
EVIL = "dr.evil@direct.evil.example"
MID = f"<hostile-1@{CLINIC}>"


def _hostile(setup: DemoSetup) -> bytes:
    at = datetime.now(UTC) - timedelta(minutes=1)
    evil = TestPKI(at=at, name=EVIL_NAME)
    plain = plain_message(EVIL, SENDER).replace(b"\r\n\r\n", f"\r\nMessage-ID: {MID}\r\n\r\n".encode(), 1)
    return seal(plain, [evil.user(EVIL).credential], [setup.issued["smith"].certificate], at=at)


async def _refuse(setup: DemoSetup, tmp_path: Path) -> tuple[HispError, str]:
    async with clinic_side(setup, tmp_path) as side:
        with pytest.raises(HispError) as refused:
            await side.pipeline.accept_incoming(EVIL, [SENDER], _hostile(setup))
        return refused.value, f"sqlite:///{tmp_path / 'clinic.sqlite3'}"


def test_hostile_subject_in_the_reject_event_is_escaped_in_the_reply_show_and_json(
    pki_setup: DemoSetup, tmp_path: Path  # noqa: F811
) -> None:
    """AS-14 / AS-20: the refusal of an untrusted signer is recorded with its reason; `hisp messages rejected`
    and `messages show` (by the outer Message-ID, when the peer sent one) print it with no raw control character
    (no forged line, no terminal escape), and --json keeps the exact text."""
    found: dict[str, object] = {}

    async def main_() -> None:
        _exc, url = await _refuse(pki_setup, tmp_path)
        found["url"] = url

    run(main_)
    url = str(found["url"])
    data = json.loads(CliRunner().invoke(main, ["messages", "rejected", "--db", url, "--json"]).output)
    (event,) = data["rejected"]
    assert event["kind"] == AuditKind.REJECT.value
    # the reason is the SMTP reply given, one line: the peer's CR LF shown escaped, never a line of its own
    assert len(event["reason"]) <= 500 and "\\r\\n250 2.0.0 OK forged" in event["reason"]
    assert "\r" not in event["reason"] and "\n" not in event["reason"]
    outputs = [CliRunner().invoke(main, ["messages", "rejected", "--db", url])]
    if event["header_message_id"]:
        outputs.append(CliRunner().invoke(main, ["messages", "show", "--db", url, event["header_message_id"]]))
        assert "refused before its 250 reply" in outputs[-1].output
    for result in outputs:
        assert result.exit_code == 0, result.output
        assert "forged" in result.output
        assert "\x1b" not in result.output and "\x07" not in result.output and "\r" not in result.output
        assert not any(line.startswith("250 ") for line in result.output.splitlines())


def test_hostile_issuer_name_still_gets_a_permanent_554(pki_setup: DemoSetup, tmp_path: Path) -> None:  # noqa: F811
    """AS-14 (reject an untrusted signer): the refusal must stay a permanent 5xx on the wire whatever the
    certificate names hold; a CR/LF in a name must be escaped in the reply, not turn it into 451."""
    got: dict[str, HispError] = {}

    async def main_() -> None:
        got["exc"], _ = await _refuse(pki_setup, tmp_path)

    run(main_)
    reply = got["exc"].smtp_reply()
    assert reply.startswith("554 ")
    assert _well_formed_error(reply), "the listener would answer 451 instead of this 554"
