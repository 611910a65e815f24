"""Adversarial probes of today's submission Bcc refusal (pipeline.accept_outgoing, AS-13).

Driven through the real pipeline of the demo clinic (no listeners), as in test_attack_notifications_pipeline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_attack_notifications_pipeline import (
    CLINIC,
    SENDER,
    clinic_side,
    original,
    pki_setup,  # noqa: F401  (the module's fixture)
    run,
    submit,
)

from hisp.commands.demo import DemoSetup
from hisp.errors import PolicyViolation


def _note(extra: str, mid: str) -> bytes:
    return original(f"<{mid}@{CLINIC}>", final=False, extra=extra)


@pytest.mark.parametrize("field", ["bcc: x@direct.third.example", "BCC: x@direct.third.example",
                                   "Bcc:\r\n x@direct.third.example", "Bcc:"])
def test_bcc_case_and_folding_variants_are_refused(pki_setup: DemoSetup, tmp_path: Path, field: str) -> None:  # noqa: F811
    """AS-13 (Bcc is not allowed): lower/upper case, a folded value and an empty Bcc are refused at DATA
    (554 5.7.1) and nothing is stored."""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            with pytest.raises(PolicyViolation, match="Bcc is not allowed") as refused:
                await submit(side, _note(field, "v"))
            assert refused.value.smtp_reply().startswith("554 5.7.1")
            assert side.store.list_messages(limit=100) == []

    run(main)


def test_bcc_with_space_before_colon_is_refused(pki_setup: DemoSetup, tmp_path: Path) -> None:  # noqa: F811
    """AS-13: 'BCC : addr' is a Bcc field (RFC 5322 section 4.5.3 obs-optional allows WSP before ':'); it must be
    refused at submission like 'Bcc: addr', not accepted with 250."""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            with pytest.raises(PolicyViolation, match="Bcc"):
                await submit(side, _note("BCC : x@direct.third.example", "space"))
            assert side.store.list_messages(limit=100) == []

    run(main)


def test_bcc_inside_an_attached_message_is_not_refused(pki_setup: DemoSetup, tmp_path: Path) -> None:  # noqa: F811
    """AS-13 concerns the message's own header: a Bcc inside an attached message/rfc822 must not refuse it."""
    inner = (
        "From: old@direct.third.example\r\nTo: x@direct.third.example\r\nBcc: hidden@direct.third.example\r\n"
        "Subject: forwarded\r\n\r\nold body\r\n"
    )
    raw = (
        f"From: {SENDER}\r\nTo: {SENDER}\r\nSubject: fwd\r\nMessage-ID: <att@{CLINIC}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        f"--b1\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--b1--\r\n"
    ).encode()

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            queue_id = await submit(side, raw, (SENDER,))
            assert queue_id
            assert len(side.store.list_messages(limit=100)) == 1

    run(main)


def test_resent_bcc_is_not_taken_for_bcc(pki_setup: DemoSetup, tmp_path: Path) -> None:  # noqa: F811
    """AS-13 names Bcc; a Resent-Bcc field is a trace of an earlier resend, not this message's Bcc: the
    submission check (exact name 'bcc') does not refuse it. Pinned so a change is deliberate."""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            assert await submit(side, _note("Resent-Bcc: x@direct.third.example", "resent"))

    run(main)
