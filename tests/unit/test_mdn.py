"""Unit tests for hisp.core.mdn: build and parse MDNs, the DN request, the MDN recipient (AS-18, AS-19, DN-1..DN-5).

Vectors: the public fixtures under ../shared/fixtures (read in place) and the ETT variants of conformance.md 2.9.
"""

from __future__ import annotations

import email
import email.policy
from datetime import datetime

import pytest
from conftest import AT, fixture_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisp.core import mime
from hisp.core.mdn import (
    FINAL_DELIVERY_FIELD,
    Disposition,
    Mdn,
    build_mdn,
    is_notification,
    mdn_recipient,
    parse_mdn,
    requests_final_delivery,
)
from hisp.errors import HispError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ORIGINAL = (
    b'From: "Dr A" <dr.a@direct.a.org>\r\n'
    b"To: dr.b@direct.b.org\r\n"
    b"Subject: Referral\r\n"
    b"Message-ID: <orig-id@direct.a.org>\r\n"
    b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true\r\n"
    b"\r\n"
    b"hello\r\n"
)


def build(disposition: str = "processed", **kwargs: object) -> bytes:
    args: dict[str, object] = {
        "recipient": "dr.b@direct.b.org",
        "disposition": disposition,
        "reporting_ua": "direct.b.org; hisp",
        "message_id": lambda: "new-id@direct.b.org",
        "at": AT,
    }
    args.update(kwargs)
    return build_mdn(ORIGINAL, **args)  # type: ignore[arg-type]


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def mdn_text(fields: str, *, top: str = "") -> bytes:
    """A minimal MDN with the given notification block (ETT variants)."""
    return crlf(
        "From: dr.b@direct.b.org\nTo: dr.a@direct.a.org\nMessage-ID: <m@b>\n"
        + top
        + 'Content-Type: multipart/report; report-type=disposition-notification; boundary="R"\n\n'
        "--R\nContent-Type: text/plain\n\nhuman\n--R\nContent-Type: message/disposition-notification\n\n"
        + fields
        + "\n--R--\n"
    )


# --- building ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("disposition", ["processed", "dispatched", "failed"])
def test_build_parse_round_trip(disposition: str) -> None:
    failure = "EHR endpoint refused the message" if disposition == "failed" else None
    raw = build(disposition, failure=failure, original_recipient="dr.b@direct.b.org")
    assert raw.isascii()
    assert raw.count(b"\n") == raw.count(b"\r\n")
    mdn = parse_mdn(raw)
    assert mdn.defects == ()
    assert mdn.disposition == disposition
    assert mdn.action_mode == "automatic-action"
    assert mdn.sending_mode == "mdn-sent-automatically"
    assert mdn.final_recipient == "dr.b@direct.b.org"
    assert mdn.original_recipient == "dr.b@direct.b.org"
    assert mdn.original_message_id == "<orig-id@direct.a.org>"
    assert mdn.reporting_ua == "direct.b.org; hisp"
    assert mdn.message_id == "<new-id@direct.b.org>"
    assert mdn.in_reply_to == "<orig-id@direct.a.org>"
    assert mdn.final_delivery is (disposition == "dispatched")
    assert mdn.failure == failure
    assert mdn.is_failure is (disposition == "failed")
    assert is_notification(raw)


def test_built_mdn_headers_and_structure() -> None:
    raw = build()
    entity = mime.parse_entity(raw)
    assert entity.header("From") == "dr.b@direct.b.org"
    assert entity.header("To") == "dr.a@direct.a.org"
    assert entity.header("Subject") == "Processed: Referral"
    assert entity.header("Message-ID") == "<new-id@direct.b.org>"
    assert entity.header("Date") == "Mon, 30 Nov 2026 12:00:00 +0000"
    assert entity.content_type.mime_type == "multipart/report"
    assert entity.content_type.params["report-type"] == "disposition-notification"
    assert b"Disposition-Notification-To" not in raw  # AS-19
    assert b"Disposition: automatic-action/MDN-sent-automatically;processed\r\n" in raw
    assert b"Failure:" not in raw and FINAL_DELIVERY_FIELD.encode() not in raw
    # an independent oracle sees a text part and the notification part
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    types = [part.get_content_type() for part in parsed.walk()]
    assert types[:3] == ["multipart/report", "text/plain", "message/disposition-notification"]
    assert mime.check_structure(raw) == ()


def test_dispatched_carries_the_extension_field_empty() -> None:
    raw = build("dispatched")
    assert b"\r\nX-DIRECT-FINAL-DESTINATION-DELIVERY:\r\n" in raw
    assert b";dispatched\r\n" in raw


def test_failed_carries_failure_and_requires_it() -> None:
    raw = build("failed", failure="no such\r\nmailbox")
    assert b"Failure: no such mailbox\r\n" in raw  # no header injection
    with pytest.raises(HispError):
        build("failed")
    with pytest.raises(HispError):
        build("processed", failure="x")


def test_build_refuses_other_dispositions_and_naive_time() -> None:
    with pytest.raises(HispError):
        build(Disposition.DISPLAYED)
    with pytest.raises(HispError):
        build(at=datetime(2026, 1, 1))


def test_build_without_a_usable_original_message_id_still_answers() -> None:
    """AS-18: the original is answered even without a Message-ID; RFC 8098 section 3.2.5 then omits the field."""
    for head in (b"From: a@b.org\r\n\r\n", b"From: a@b.org\r\nMessage-ID: <>\r\n\r\n"):
        raw = build_mdn(head, recipient="x@y.org", disposition="processed", reporting_ua="y",
                        message_id=lambda: "1@y", at=AT)
        mdn = parse_mdn(raw)
        assert mdn.disposition == "processed" and mdn.original_message_id is None
        assert b"In-Reply-To" not in raw
    spaced = build_mdn(b"From: a@b.org\r\nMessage-ID: <two words@b.org>\r\n\r\n", recipient="x@y.org",
                       disposition="processed", reporting_ua="y", message_id=lambda: "1@y", at=AT)
    assert parse_mdn(spaced).original_message_id == "<twowords@b.org>"


def test_build_goes_to_disposition_notification_to() -> None:
    original = b"From: a@a.org\r\nDisposition-Notification-To: <edge@a.org>\r\nMessage-ID: <1@a>\r\n\r\n"
    raw = build_mdn(
        original,
        recipient="Dr B <dr.b@b.org>",
        disposition="processed",
        reporting_ua="b.org",
        message_id=lambda: "<2@b>",
        at=AT,
    )
    entity = mime.parse_entity(raw)
    assert entity.header("To") == "edge@a.org"
    assert entity.header("From") == "dr.b@b.org"
    assert entity.header("Subject") == "Processed:"


def test_build_encodes_non_ascii_subject() -> None:
    original = "From: a@a.org\r\nSubject: Überweisung\r\nMessage-ID: <1@a>\r\n\r\n".encode()
    raw = build_mdn(
        original, recipient="b@b.org", disposition="processed", reporting_ua="b", message_id=lambda: "2@b", at=AT
    )
    assert raw.isascii()
    assert b"Subject: =?utf-8?b?" in raw


def test_build_uses_injected_message_id_every_time() -> None:
    ids = iter(["a@x", "b@x"])
    first = build(message_id=lambda: next(ids))
    second = build(message_id=lambda: next(ids))
    assert parse_mdn(first).message_id == "<a@x>" and parse_mdn(second).message_id == "<b@x>"


# --- parsing fixtures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "disposition", "final", "original_id", "extension"),
    [
        (
            "direct-ri-java/messages/MDNMessage.txt",
            "processed",
            "externUser1@starugh-stateline.com",
            "<9501051053.aa04167@IETF.CNR I.Reston.VA.US>",
            False,
        ),
        (
            "direct-ri-java/messages/MDNDispatchedMessage.txt",
            "dispatched",
            "externUser1@starugh-stateline.com",
            "<9501051053.aa04167@IETF.CNR I.Reston.VA.US>",
            True,
        ),
        (
            "nhin-d/MDN.eml",
            "processed",
            "Jean@opsstation.lab",
            "<c8a0389fd14c40c185956ff9108bab07@Direct.Surescripts.com>",
            False,
        ),
        (
            "nhin-d/dispatched-MDN-named-DSN.eml",
            "dispatched",
            "Jean@opsstation.lab",
            "<cbjfnk7ziimajrb8prk5r0ehk9lb3g@Direct.Surescripts.com>",
            True,
        ),
    ],
)
def test_fixtures(path: str, disposition: str, final: str, original_id: str, extension: bool) -> None:
    raw = fixture_bytes(path)
    mdn = parse_mdn(raw)
    assert mdn.disposition == disposition
    assert mdn.final_recipient == final
    assert mdn.original_message_id == original_id
    assert mdn.final_delivery is extension
    assert mdn.reporting_ua is not None
    assert is_notification(raw)


def test_fixture_ri_final_recipient_without_type_is_a_defect() -> None:
    mdn = parse_mdn(fixture_bytes("direct-ri-java/messages/MDNMessage.txt"))
    assert "Final-Recipient without address type" in mdn.defects


def test_fixture_bom_is_tolerated() -> None:
    mdn = parse_mdn(fixture_bytes("nhin-d/MDN.eml"))
    assert mdn.subject == "processed:Test Subject 40bec126-77d3-4364-9e63-b98c282209ba"
    assert any("BOM" in d or "byte order mark" in d for d in mdn.defects)


def test_fixture_abelian_wrapped_mdn() -> None:
    raw = fixture_bytes("interop/abelian/decryptedMessage_wrapped_mdn.txt")
    signed = mime.split_multipart_signed(mime.parse_entity(raw))
    inner = mime.unwrap(signed.content_entity)
    assert inner is not None
    mdn = parse_mdn(inner)
    assert mdn.disposition == "processed"
    assert mdn.final_recipient == "clayton.willey@my.provider-directmsg.com"
    assert mdn.original_message_id == "<1541082244213@direct.orocert.medicasoft.md>"
    assert mdn.reporting_ua == "my.provider-directmsg.com;Direct Agent"
    assert is_notification(inner)
    # the wrapped form is found too, through the message/rfc822 part
    assert parse_mdn(raw).original_message_id == mdn.original_message_id


def test_dsn_fixture_is_not_an_mdn_but_a_notification() -> None:
    raw = fixture_bytes("direct-ri-java/messages/DSNMessage.txt")
    assert "no disposition-notification part" in parse_mdn(raw).defects
    assert is_notification(raw)


# --- ETT variants (conformance.md 2.9) --------------------------------------------------------------------

STANDARD = (
    "Reporting-UA: ett.healthit.gov; ETT\nFinal-Recipient: rfc822; dr.b@ett.healthit.gov\n"
    "Original-Message-ID: <o@a.org>\nDisposition: automatic-action/MDN-sent-automatically;dispatched\n"
    "X-DIRECT-FINAL-DESTINATION-DELIVERY:"
)


@pytest.mark.parametrize(
    "fields",
    [
        STANDARD,
        STANDARD.lower().replace("<o@a.org>", "<o@a.org>"),  # MDNDifferentCaseGenerator
        STANDARD.replace("; ", ";\n "),  # MDNGeneratorExtraLineBreaks: folded after ';'
        STANDARD.replace("Final-Recipient:", "Final-Recipient :").replace(
            "Disposition:", "Disposition  :"
        ),  # MDNWhiteSpaces
        STANDARD.replace("ett.healthit.gov; ETT", "ett.healthit.gov;ETT"),  # MDNExtraSpaceDisposition
        STANDARD.replace(";dispatched", "; dispatched"),  # one space after ';'
        STANDARD.replace("rfc822; dr.b@ett.healthit.gov", 'rfc822; "Dr B" <dr.b@ett.healthit.gov>'),
    ],
)
def test_ett_variants(fields: str) -> None:
    mdn = parse_mdn(mdn_text(fields))
    assert mdn.disposition == "dispatched"
    assert mdn.final_recipient == "dr.b@ett.healthit.gov"
    assert mdn.original_message_id == "<o@a.org>"
    assert mdn.final_delivery
    assert not any(d.startswith("missing") for d in mdn.defects)


def test_ett_missing_disposition() -> None:
    mdn = parse_mdn(mdn_text(STANDARD.replace("Disposition: automatic-action/MDN-sent-automatically;dispatched\n", "")))
    assert mdn.disposition is None
    assert "missing Disposition" in mdn.defects
    assert mdn.original_message_id == "<o@a.org>"


def test_missing_optional_and_required_fields_are_defects() -> None:
    mdn = parse_mdn(mdn_text("Disposition: automatic-action/MDN-sent-automatically;processed"))
    assert mdn.disposition == "processed"
    assert {"missing Final-Recipient", "missing Original-Message-ID", "missing Reporting-UA"} <= set(mdn.defects)
    assert mdn.original_recipient is None


def test_unindented_continuation_and_malformed_disposition() -> None:
    mdn = parse_mdn(mdn_text("Final-Recipient: rfc822;\ndr.b@b.org\nDisposition: processed please"))
    assert mdn.final_recipient == "dr.b@b.org"
    assert "unindented continuation line" in mdn.defects
    assert mdn.disposition == "processed"
    assert any(d.startswith("malformed Disposition") for d in mdn.defects)


def test_denied_and_error_modifiers_are_failures() -> None:
    assert parse_mdn(mdn_text("Disposition: automatic-action/MDN-sent-automatically;denied")).is_failure
    error = parse_mdn(mdn_text("Disposition: automatic-action/MDN-sent-automatically;processed/error"))
    assert error.disposition_modifiers == ("error",) and error.is_failure


def test_disposition_notification_to_inside_an_mdn_is_a_defect() -> None:
    mdn = parse_mdn(mdn_text(STANDARD, top="Disposition-Notification-To: x@a.org\n"))
    assert any("Disposition-Notification-To" in d for d in mdn.defects)


def test_not_bytes_is_a_defect() -> None:
    mdn = parse_mdn("text")  # type: ignore[arg-type]
    assert mdn == Mdn(defects=mdn.defects) and mdn.defects


# --- DN-1 / DN-4 request header ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true",
        "x-direct-final-destination-delivery=optional,true",
        "  X-DIRECT-FINAL-DESTINATION-DELIVERY = optional , true  ",
        "X-Direct-Final-Destination-Delivery=Optional,TRUE",
        "X-DIRECT-FINAL-DESTINATION-DELIVERY=required,true",
        "signed-receipt=optional,pkcs7-signature; X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true",
        "X-DIRECT-FINAL-DESTINATION-\r\n DELIVERY=optional,true",
    ],
)
def test_requests_final_delivery(value: str) -> None:
    assert requests_final_delivery([("Disposition-Notification-Options", value)])
    assert requests_final_delivery([("disposition-notification-options", value)])


@pytest.mark.parametrize(
    "value",
    [
        "",
        "X-DIRECT-FINAL-DESTINATION-DELIVERY",
        "X-DIRECT-FINAL-DESTINATION-DELIVERY=true",
        "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,false",
        "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true,true",
        "X-DIRECT-FINAL-DESTINATION-DELIVERY=sometimes,true",
        "X-DIRECT-FINAL-DESTINATION-DELIVERY:optional,true",
        "X-DIRECT-FINAL-DESTINATION=optional,true",
        "garbage",
    ],
)
def test_malformed_request_means_processed_only(value: str) -> None:
    assert not requests_final_delivery([("Disposition-Notification-Options", value)])


def test_request_in_another_field_does_not_count() -> None:
    assert not requests_final_delivery([("X-Options", "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true")])
    assert not requests_final_delivery([])
    assert requests_final_delivery(mime.parse_entity(ORIGINAL).headers)


# --- AS-18 recipient and AS-19 -----------------------------------------------------------------------------


def test_mdn_recipient() -> None:
    assert mdn_recipient([("From", '"A" <a@a.org>')]) == "a@a.org"
    assert mdn_recipient([("From", "a@a.org"), ("disposition-notification-to", "Edge <edge@a.org>")]) == "edge@a.org"
    assert mdn_recipient([("From", "a@a.org"), ("Disposition-Notification-To", "nonsense")]) == "a@a.org"
    assert mdn_recipient([("To", "b@b.org")]) is None


def test_is_notification() -> None:
    assert not is_notification(ORIGINAL)
    assert is_notification(build())
    assert is_notification(mime.parse_entity(build()))
    dsn = crlf('From: a@a.org\nContent-Type: multipart/report; report-type=delivery-status; boundary="D"\n\n--D--\n')
    assert is_notification(dsn)
    assert not is_notification(b"\x00\xff garbage")
    assert not is_notification(b"")


# --- hypothesis: never raises -------------------------------------------------------------------------------

FIXTURE_MDNS = [
    fixture_bytes("direct-ri-java/messages/MDNMessage.txt"),
    fixture_bytes("nhin-d/dispatched-MDN-named-DSN.eml"),
    mdn_text(STANDARD),
]


@SETTINGS
@given(st.binary(max_size=2000))
def test_parse_random_bytes_never_raises(data: bytes) -> None:
    assert isinstance(parse_mdn(data), Mdn)
    assert isinstance(is_notification(data), bool)


@SETTINGS
@given(
    st.sampled_from(FIXTURE_MDNS),
    st.lists(st.tuples(st.integers(min_value=0, max_value=5000), st.binary(max_size=8)), max_size=6),
    st.integers(min_value=0, max_value=5000),
)
def test_parse_mutated_fixtures_never_raises(base: bytes, edits: list[tuple[int, bytes]], cut: int) -> None:
    data = bytearray(base)
    for position, replacement in edits:
        position %= len(data) + 1
        data[position : position + len(replacement)] = replacement
    mutated = bytes(data[: max(cut, len(data) // 2)])
    result = parse_mdn(mutated)
    assert isinstance(result, Mdn)
    assert isinstance(is_notification(mutated), bool)


@SETTINGS
@given(st.text(max_size=200))
def test_request_header_never_raises(value: str) -> None:
    assert isinstance(requests_final_delivery([("Disposition-Notification-Options", value)]), bool)
    assert mdn_recipient([("From", value)]) is None or "@" in (mdn_recipient([("From", value)]) or "")


@SETTINGS
@given(st.text(max_size=300), st.sampled_from(["processed", "dispatched"]))
def test_build_any_subject_round_trips(subject: str, disposition: str) -> None:
    original = b"From: a@a.org\r\nMessage-ID: <1@a>\r\nSubject: " + subject.encode("utf-8", "replace") + b"\r\n\r\n"
    try:
        raw = build_mdn(
            original, recipient="b@b.org", disposition=disposition, reporting_ua="b", message_id=lambda: "2@b", at=AT
        )
    except HispError:
        return
    assert raw.isascii()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    mdn = parse_mdn(raw)
    assert mdn.disposition == disposition and mdn.original_message_id == "<1@a>" and mdn.final_recipient == "b@b.org"
