"""Unit tests for hisp.core.dsn: building and parsing DSNs (RFC 3464; DN-5, DN-6, DN-7, AS-22).

Vectors: the public fixtures under ../shared/fixtures (read in place).
"""

from __future__ import annotations

import email
import email.policy

import pytest
from conftest import AT, fixture_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisp.core import mime
from hisp.core.dsn import (
    NO_CERTIFICATE,
    NO_DISPATCHED_MDN,
    NO_PROCESSED_MDN,
    NOT_DELIVERABLE,
    UNTRUSTED,
    Dsn,
    DsnRecipient,
    build_dsn,
    parse_dsn,
)
from hisp.core.mdn import is_notification
from hisp.errors import HispError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ORIGINAL = (
    b'From: "Dr A" <dr.a@direct.a.org>\r\n'
    b"To: dr.b@direct.b.org, dr.c@direct.c.org\r\n"
    b"Subject: Referral\r\n"
    b"Message-ID: <orig-id@direct.a.org>\r\n"
    b"\r\n"
    b"hello\r\n"
)


def build(recipients: list[DsnRecipient], **kwargs: object) -> bytes:
    args: dict[str, object] = {
        "recipients": recipients,
        "reporting_mta": "hisp.a.org",
        "sender": "postmaster@direct.a.org",
        "message_id": lambda: "dsn-1@direct.a.org",
        "at": AT,
    }
    args.update(kwargs)
    return build_dsn(ORIGINAL, **args)  # type: ignore[arg-type]


def test_status_constants() -> None:
    assert (NO_CERTIFICATE, UNTRUSTED, NO_PROCESSED_MDN, NO_DISPATCHED_MDN, NOT_DELIVERABLE) == (
        "5.7.31",
        "5.7.11",
        "5.4.71",
        "5.4.72",
        "5.5.0",
    )


def test_build_parse_round_trip_one_recipient() -> None:
    raw = build([DsnRecipient("dr.c@direct.c.org", NO_CERTIFICATE)])
    assert raw.isascii() and raw.count(b"\n") == raw.count(b"\r\n")
    dsn = parse_dsn(raw)
    assert dsn.defects == ()
    assert dsn.reporting_mta == "dns; hisp.a.org"
    assert dsn.original_message_id == "<orig-id@direct.a.org>"
    assert dsn.message_id == "<dsn-1@direct.a.org>"
    assert dsn.in_reply_to == "<orig-id@direct.a.org>"
    assert [(r.address, r.action, r.status) for r in dsn.recipients] == [("dr.c@direct.c.org", "failed", "5.7.31")]
    assert "no certificate" in (dsn.recipients[0].diagnostic or "")
    assert is_notification(raw)


def test_build_several_recipients_and_original_headers() -> None:
    raw = build(
        [
            DsnRecipient("dr.b@direct.b.org", NO_PROCESSED_MDN),
            DsnRecipient("Dr C <dr.c@direct.c.org>", NO_DISPATCHED_MDN, diagnostic="custom\r\nreason"),
        ]
    )
    entity = mime.parse_entity(raw)
    assert entity.header("To") == "dr.a@direct.a.org"
    assert entity.header("From") == "postmaster@direct.a.org"
    assert entity.content_type.params["report-type"] == "delivery-status"
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    types = [part.get_content_type() for part in parsed.walk()]
    assert types[:3] == ["multipart/report", "text/plain", "message/delivery-status"]
    assert "text/rfc822-headers" in types
    assert b"\r\nMessage-ID: <orig-id@direct.a.org>\r\nSubject" not in raw  # headers are returned as received
    assert b'From: "Dr A" <dr.a@direct.a.org>\r\nTo: dr.b@direct.b.org, dr.c@direct.c.org\r\n' in raw
    assert b"X-Original-Message-ID: <orig-id@direct.a.org>\r\n" in raw
    dsn = parse_dsn(raw)
    assert [(r.address, r.status) for r in dsn.recipients] == [
        ("dr.b@direct.b.org", "5.4.71"),
        ("dr.c@direct.c.org", "5.4.72"),
    ]
    assert dsn.recipients[1].diagnostic == "x-direct; custom reason"
    assert mime.check_structure(raw) == ()


def test_build_to_override_and_5_5_0() -> None:
    raw = build([DsnRecipient("dr.b@direct.b.org", NOT_DELIVERABLE)], to="edge@direct.a.org")
    assert mime.parse_entity(raw).header("To") == "edge@direct.a.org"
    assert parse_dsn(raw).recipients[0].status == "5.5.0"


@pytest.mark.parametrize(
    "recipients",
    [
        [],
        [DsnRecipient("dr.b@direct.b.org", "9.9.9")],
        [DsnRecipient("nobody", UNTRUSTED)],
        [DsnRecipient("a@b", None)],
    ],
)
def test_build_refuses_bad_input(recipients: list[DsnRecipient]) -> None:
    with pytest.raises(HispError):
        build(recipients)


def test_build_refuses_original_without_from() -> None:
    with pytest.raises(HispError):
        build_dsn(
            b"Message-ID: <1@a>\r\n\r\n",
            recipients=[DsnRecipient("b@b.org", UNTRUSTED)],
            reporting_mta="a",
            sender="p@a",
            message_id=lambda: "2@a",
            at=AT,
        )


def test_fixture_ri_dsn() -> None:
    dsn = parse_dsn(fixture_bytes("direct-ri-java/messages/DSNMessage.txt"))
    assert dsn.reporting_mta == "dns; Example.ORG"
    assert dsn.original_envelope_id == "QQ314159"
    # the RI's X-CERN-Original-Message-Id extension is accepted as the correlation key
    assert dsn.original_message_id == "<9501051053.aa04167@IETF.CNR I.Reston.VA.US>"
    assert len(dsn.recipients) == 1
    recipient = dsn.recipients[0]
    assert (recipient.address, recipient.original_recipient, recipient.action, recipient.status) == (
        "Carol@Ivory.EDU",
        "Carol@Ivory.EDU",
        "failed",
        "5.0.0",
    )
    assert recipient.diagnostic == "smtp; 550 error - no such recipient"


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def dsn_text(status: str, *, top: str = "", returned: str = "") -> bytes:
    return crlf(
        "From: mailer@b.org\nTo: a@a.org\n"
        + top
        + 'Content-Type: multipart/report; report-type=delivery-status; boundary="D"\n\n'
        "--D\nContent-Type: text/plain\n\nfailed\n--D\nContent-Type: message/delivery-status\n\n"
        + status
        + "\n"
        + returned
        + "--D--\n"
    )


def test_ett_style_delivered_dsn_and_tolerance() -> None:
    raw = dsn_text(
        "reporting-mta : dsn; ett.healthit.gov\nOriginal-Envelope-ID: env-1\n\n"
        'final-recipient: rfc822;\n "Dr B" <dr.b@ett.healthit.gov>\nACTION: Delivered\nStatus: 2.0.0 (ok)',
        top="In-Reply-To: <o@a.org>\n",
    )
    dsn = parse_dsn(b"\xef\xbb\xbf" + raw)
    assert dsn.reporting_mta == "dsn; ett.healthit.gov"
    assert dsn.original_message_id == "<o@a.org>"  # In-Reply-To fallback
    assert [(r.address, r.action, r.status) for r in dsn.recipients] == [
        ("dr.b@ett.healthit.gov", "delivered", "2.0.0")
    ]


def test_correlation_from_returned_headers() -> None:
    raw = dsn_text(
        "Reporting-MTA: dns; b.org\n\nFinal-Recipient: rfc822; b@b.org\nAction: failed\nStatus: 5.1.1\n",
        top="In-Reply-To: <other@a.org>\n",
        returned="--D\nContent-Type: text/rfc822-headers\n\nFrom: a@a.org\nMessage-ID: <returned@a.org>\n\n",
    )
    assert parse_dsn(raw).original_message_id == "<returned@a.org>"


def test_x_original_message_id_wins() -> None:
    raw = dsn_text(
        "Reporting-MTA: dns; b.org\nX-Original-Message-ID: <x@a.org>\n\nFinal-Recipient: rfc822; b@b.org\n"
        "Action: failed\nStatus: 5.1.1\n",
        top="In-Reply-To: <other@a.org>\n",
    )
    assert parse_dsn(raw).original_message_id == "<x@a.org>"


def test_missing_fields_are_defects() -> None:
    dsn = parse_dsn(dsn_text("Arrival-Date: today\n\nAction: failed\nStatus: five"))
    assert {"missing Reporting-MTA", "recipient block without Final-Recipient", "no original message id"} <= set(
        dsn.defects
    )
    assert any(d.startswith("missing or malformed Status") for d in dsn.defects)
    assert dsn.recipients[0].address is None


def test_not_a_dsn() -> None:
    assert "no delivery-status part" in parse_dsn(b"From: a@a.org\r\n\r\nhi\r\n").defects
    assert "no delivery-status part" in parse_dsn(fixture_bytes("nhin-d/MDN.eml")).defects
    assert parse_dsn("x").defects  # type: ignore[arg-type]


@SETTINGS
@given(st.binary(max_size=2000))
def test_parse_random_bytes_never_raises(data: bytes) -> None:
    assert isinstance(parse_dsn(data), Dsn)


@SETTINGS
@given(
    st.sampled_from(
        [
            fixture_bytes("direct-ri-java/messages/DSNMessage.txt"),
            dsn_text("Reporting-MTA: dns; b\n\nFinal-Recipient: rfc822; b@b\nAction: failed\nStatus: 5.0.0"),
        ]
    ),
    st.lists(st.tuples(st.integers(min_value=0, max_value=3000), st.binary(max_size=8)), max_size=6),
    st.integers(min_value=0, max_value=3000),
)
def test_parse_mutated_fixtures_never_raises(base: bytes, edits: list[tuple[int, bytes]], cut: int) -> None:
    data = bytearray(base)
    for position, replacement in edits:
        position %= len(data) + 1
        data[position : position + len(replacement)] = replacement
    assert isinstance(parse_dsn(bytes(data[: max(cut, len(data) // 2)])), Dsn)


@SETTINGS
@given(st.text(max_size=200), st.sampled_from([NO_CERTIFICATE, UNTRUSTED, NO_PROCESSED_MDN]))
def test_build_any_diagnostic_round_trips(diagnostic: str, status: str) -> None:
    raw = build([DsnRecipient("b@b.org", status, diagnostic=diagnostic or None)])
    assert raw.isascii()
    dsn = parse_dsn(raw)
    assert [(r.address, r.status, r.action) for r in dsn.recipients] == [("b@b.org", status, "failed")]
    assert dsn.original_message_id == "<orig-id@direct.a.org>"
