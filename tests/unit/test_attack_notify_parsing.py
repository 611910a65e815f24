"""Adversarial probes of the notification readers (hisp.core.notify / mdn / dsn): pure, no I/O.

Each probe pins a property; those that first demonstrated a defect (see the git history) pass since its fix.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hisp.core.mdn import Disposition, build_mdn
from hisp.core.notify import owed_mdns, read_notice, restrict_to_signer
from hisp.core.tracking import Event

AT = datetime(2026, 11, 30, 12, tzinfo=UTC)
ORIGINAL = (
    b"From: s@clinic.example\r\nTo: j@hosp.example\r\nMessage-ID: <m1@clinic.example>\r\nSubject: x\r\n\r\nhi\r\n"
)


def dispatched() -> bytes:
    return build_mdn(
        ORIGINAL, recipient="j@hosp.example", disposition="dispatched", reporting_ua="mx; t",
        message_id=lambda: "<n@hosp.example>", at=AT,
    )


@pytest.mark.parametrize(
    "name, raw",
    [
        ("BOM before the top header", b"\xef\xbb\xbf" + dispatched()),
        (
            "mixed-case types and quoted report-type",
            dispatched()
            .replace(
                b"multipart/report; report-type=disposition-notification",
                b'Multipart/Report; Report-Type="Disposition-Notification"',
            )
            .replace(
                b"Content-Type: message/disposition-notification", b"content-type: Message/Disposition-Notification"
            ),
        ),
        ("disposition in capitals", dispatched().replace(b";dispatched", b"; DISPATCHED")),
    ],
)
def test_tolerated_top_level_variants_are_read_and_never_answered(name: str, raw: bytes) -> None:
    notice = read_notice(raw)
    assert notice is not None and notice.key == "m1@clinic.example"
    assert [(a, e) for a, e, _ in notice.events] == [("j@hosp.example", Event.DISPATCHED)]
    assert owed_mdns(raw, ["s@clinic.example"], disposition=Disposition.PROCESSED, reporting_ua="x", at=AT) == []


def test_deeply_nested_notification_beyond_the_depth_bound_is_not_one() -> None:
    inner = dispatched()
    for _ in range(30):
        inner = b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" + inner
    assert read_notice(inner) is None


def test_restrict_to_signer_drops_other_domains_and_look_alikes() -> None:
    raw = dispatched()
    notice = read_notice(raw)
    assert notice is not None
    for domain in ("evil.example", "hosp.example.evil.example", "xhosp.example", "sub.hosp.example"):
        assert restrict_to_signer(notice, domain).events == ()
    assert restrict_to_signer(notice, "HOSP.EXAMPLE.").events == notice.events


@pytest.mark.parametrize("message_id", [None, "<a b@clinic.example>", "<>", "<a<b@clinic.example>"])
def test_owed_mdns_never_raises_for_a_received_original(message_id: str | None) -> None:
    head = b"From: s@clinic.example\r\nTo: j@hosp.example\r\nSubject: x\r\n"
    if message_id is not None:
        head += f"Message-ID: {message_id}\r\n".encode()
    owed_mdns(head + b"\r\nhi\r\n", ["j@hosp.example"], disposition=Disposition.PROCESSED, reporting_ua="x", at=AT)
