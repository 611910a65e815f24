"""Unit tests for hisp.core.notify: which notifications a message owes or carries (AS-18, AS-19, DN-1..DN-10).

The receiving side owes one MDN per recipient and none for a notification; the sending side reads MDNs and DSNs
as tracking events keyed by the original's Message-ID, forwards at most one terminal notice per recipient, and
builds the DSNs it owes its edge.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import AT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisp.core.dsn import DsnRecipient, build_dsn, parse_dsn
from hisp.core.mdn import Disposition, build_mdn, parse_mdn
from hisp.core.notify import (
    apply_notice,
    failure_dsn,
    header_block,
    owed_mdns,
    read_notice,
    timeout_dsn,
    wants_final_delivery,
)
from hisp.core.tracking import Action, Event, MessageTrack, State
from hisp.errors import HispError

ORIGINAL = (
    b'From: "Dr A" <dr.a@direct.a.org>\r\n'
    b"To: dr.b@direct.b.org, dr.c@direct.b.org\r\n"
    b"Subject: Referral\r\n"
    b"Message-ID: <Orig-ID@direct.a.org>\r\n"
    b"\r\n"
    b"hello\r\n"
)
REQUEST = b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true\r\n"
TRUST = b"X-Direct-Trust: pass; sender=dr.a@direct.a.org\r\n"


def mdn_from(recipient: str, disposition: str, *, failure: str | None = None, original: bytes = ORIGINAL) -> bytes:
    return build_mdn(
        original, recipient=recipient, disposition=disposition, reporting_ua="direct.b.org; hisp",
        message_id=lambda: "<m1@direct.b.org>", at=AT, failure=failure,
    )


def track(*, reliable: bool, recipients: tuple[str, ...] = ("dr.b@direct.b.org", "dr.c@direct.b.org")) -> MessageTrack:
    return MessageTrack.start("<Orig-ID@direct.a.org>", recipients, at=AT, reliable=reliable)


# --- receiving side: AS-18, AS-19, DN-1, DN-4 ---------------------------------------------------------------


def test_as18_one_processed_mdn_per_recipient_to_from() -> None:
    owed = owed_mdns(
        TRUST + ORIGINAL, ["dr.b@direct.b.org", "dr.c@direct.b.org"], disposition=Disposition.PROCESSED,
        reporting_ua="mx.b.org; hisp", at=AT,
    )
    assert [(m.recipient, m.to) for m in owed] == [
        ("dr.b@direct.b.org", "dr.a@direct.a.org"), ("dr.c@direct.b.org", "dr.a@direct.a.org"),
    ]
    assert len({m.message_id for m in owed}) == 2
    for m in owed:
        parsed = parse_mdn(m.raw)
        assert parsed.disposition == "processed" and parsed.final_recipient == m.recipient
        assert parsed.original_message_id == "<Orig-ID@direct.a.org>"
        assert parsed.message_id == m.message_id
        assert b"Disposition-Notification-To" not in m.raw  # AS-19: an MDN never asks for one


def test_as18_disposition_notification_to_wins_over_from() -> None:
    original = b"Disposition-Notification-To: <tracker@direct.a.org>\r\n" + ORIGINAL
    (owed,) = owed_mdns(
        original, ["dr.b@direct.b.org"], disposition=Disposition.PROCESSED, reporting_ua="ua", at=AT
    )
    assert owed.to == "tracker@direct.a.org"


def test_as19_no_mdn_for_an_mdn_or_a_dsn() -> None:
    mdn = mdn_from("dr.b@direct.b.org", "processed")
    dsn = build_dsn(
        ORIGINAL, recipients=[DsnRecipient("dr.b@direct.b.org", "5.7.31")], reporting_mta="mx.a.org",
        sender="postmaster@direct.a.org", message_id=lambda: "<d1@a>", at=AT,
    )
    for notification in (mdn, dsn):
        assert owed_mdns(notification, ["dr.a@direct.a.org"], disposition=Disposition.PROCESSED,
                         reporting_ua="ua", at=AT) == []


def test_no_mdn_when_nobody_can_be_answered() -> None:
    anonymous = b"To: dr.b@direct.b.org\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n"
    assert owed_mdns(anonymous, ["dr.b@direct.b.org"], disposition=Disposition.PROCESSED,
                     reporting_ua="ua", at=AT) == []


def test_dn3_dispatched_mdn_carries_the_extension_and_dn5_failed_carries_the_reason() -> None:
    (dispatched,) = owed_mdns(REQUEST + ORIGINAL, ["dr.b@direct.b.org"], disposition=Disposition.DISPATCHED,
                              reporting_ua="ua", at=AT)
    assert parse_mdn(dispatched.raw).final_delivery
    (failed,) = owed_mdns(REQUEST + ORIGINAL, ["dr.b@direct.b.org"], disposition=Disposition.FAILED,
                          reporting_ua="ua", at=AT, failure="550 mailbox unavailable")
    parsed = parse_mdn(failed.raw)
    assert parsed.disposition == "failed" and parsed.failure and "mailbox unavailable" in parsed.failure
    with pytest.raises(HispError):
        owed_mdns(ORIGINAL, ["dr.b@direct.b.org"], disposition=Disposition.FAILED, reporting_ua="ua", at=AT)


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        (REQUEST, True),
        (b"disposition-notification-options:  x-direct-final-destination-delivery = Optional , TRUE \r\n", True),
        (b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional\r\n", False),
        (b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=maybe,true\r\n", False),
        (b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION=optional,true\r\n", False),
        (b"", False),
    ],
    ids=["exact", "case-and-spaces", "no-value", "bad-importance", "wrong-name", "absent"],
)
def test_dn1_dn4_final_delivery_request(header: bytes, wanted: bool) -> None:
    assert wants_final_delivery(TRUST + header + ORIGINAL) is wanted


def test_dn1_an_mdn_never_wants_final_delivery() -> None:
    assert not wants_final_delivery(REQUEST + mdn_from("dr.b@direct.b.org", "processed"))


# --- sending side: reading notices, DN-2 ---------------------------------------------------------------------


def test_dn2_mdn_read_as_an_event_keyed_by_original_message_id() -> None:
    notice = read_notice(mdn_from("dr.b@direct.b.org", "dispatched"))
    assert notice is not None and notice.kind == "MDN"
    assert notice.key == "orig-id@direct.a.org"  # brackets and case removed
    ((address, event, detail),) = notice.events
    assert (address, event) == ("dr.b@direct.b.org", Event.DISPATCHED)
    assert "dispatched" in detail


def test_dn2_dsn_read_as_one_event_per_recipient() -> None:
    dsn = build_dsn(
        ORIGINAL,
        recipients=[DsnRecipient("dr.b@direct.b.org", "5.7.31"), DsnRecipient("dr.c@direct.b.org", "5.1.1")],
        reporting_mta="mx.a.org", sender="postmaster@direct.a.org", message_id=lambda: "<d1@a>", at=AT,
    )
    notice = read_notice(dsn)
    assert notice is not None and notice.kind == "DSN" and notice.key == "orig-id@direct.a.org"
    assert [(a, e) for a, e, _ in notice.events] == [
        ("dr.b@direct.b.org", Event.FAILED), ("dr.c@direct.b.org", Event.FAILED),
    ]


def test_a_plain_message_is_not_a_notice() -> None:
    assert read_notice(ORIGINAL) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_read_notice_never_raises(data: bytes) -> None:
    head = b"Content-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n\r\n--b\r\n"
    for raw in (data, head + data):
        notice = read_notice(raw)
        assert notice is None or notice.kind in ("MDN", "DSN")


# --- sending side: DN-7, DN-8, DN-10 --------------------------------------------------------------------------


def test_dn7_reliable_processed_is_forwarded_then_dispatched_completes() -> None:
    tracked = track(reliable=True, recipients=("dr.b@direct.b.org",))
    processed = read_notice(mdn_from("dr.b@direct.b.org", "processed"))
    dispatched = read_notice(mdn_from("dr.b@direct.b.org", "dispatched"))
    assert processed is not None and dispatched is not None
    assert apply_notice(tracked, processed, AT).forward
    outcome = apply_notice(tracked, dispatched, AT + timedelta(seconds=5))
    assert outcome.forward and tracked.complete
    assert tracked.recipients["dr.b@direct.b.org"].state is State.DISPATCHED


def test_dn8_a_second_dispatched_mdn_and_a_late_one_after_timeout_are_kept_back() -> None:
    tracked = track(reliable=True, recipients=("dr.b@direct.b.org",))
    dispatched = read_notice(mdn_from("dr.b@direct.b.org", "dispatched"))
    assert dispatched is not None
    assert apply_notice(tracked, dispatched, AT).forward
    again = apply_notice(tracked, dispatched, AT)
    assert not again.forward and again.transitions[0][2] is not None
    assert again.transitions[0][2].action is Action.DROP

    late = track(reliable=True, recipients=("dr.b@direct.b.org",))
    assert [a for a, _ in late.expire(AT + timedelta(hours=1))] == ["dr.b@direct.b.org"]
    outcome = apply_notice(late, dispatched, AT + timedelta(hours=2))
    assert not outcome.forward and late.recipients["dr.b@direct.b.org"].state is State.TIMED_OUT


def test_dn10_processed_consumed_by_configuration() -> None:
    tracked = MessageTrack.start("<o@a>", ["dr.b@direct.b.org"], at=AT, reliable=False, consume_processed=True)
    processed = read_notice(mdn_from("dr.b@direct.b.org", "processed"))
    assert processed is not None
    outcome = apply_notice(tracked, processed, AT)
    assert not outcome.forward and outcome.transitions[0][2] is not None
    assert outcome.transitions[0][2].action is Action.CONSUME


def test_a_notice_for_a_recipient_not_tracked_is_forwarded() -> None:
    tracked = track(reliable=True, recipients=("dr.c@direct.b.org",))
    notice = read_notice(mdn_from("stranger@direct.b.org", "processed"))
    assert notice is not None
    outcome = apply_notice(tracked, notice, AT)
    assert outcome.forward and outcome.transitions == (("stranger@direct.b.org", Event.PROCESSED, None),)
    assert "not tracked" in outcome.explain()


def test_dn7_timeout_dsn_lists_each_incomplete_recipient_with_its_status() -> None:
    tracked = track(reliable=True)
    processed = read_notice(mdn_from("dr.b@direct.b.org", "processed"))
    assert processed is not None
    apply_notice(tracked, processed, AT)
    expired = tracked.expire(AT + timedelta(hours=1))
    message_id, raw = timeout_dsn(
        ORIGINAL, expired, sender="dr.a@direct.a.org", postmaster="postmaster@direct.a.org",
        reporting_mta="mx.a.org", at=AT + timedelta(hours=1),
    )
    dsn = parse_dsn(raw)
    assert {(r.address, r.status) for r in dsn.recipients} == {
        ("dr.b@direct.b.org", "5.4.72"), ("dr.c@direct.b.org", "5.4.71"),
    }
    assert dsn.original_message_id == "<Orig-ID@direct.a.org>" and dsn.message_id == message_id
    assert b"To: dr.a@direct.a.org" in raw and b"From: postmaster@direct.a.org" in raw


def test_dn5_failure_dsn_to_a_partner_says_5_5_0() -> None:
    _, raw = failure_dsn(
        TRUST + ORIGINAL + b"body that is not returned\r\n" * 10, "dr.b@direct.b.org", "5.5.0",
        "550 5.1.1 no such mailbox", sender="dr.a@direct.a.org", postmaster="postmaster@direct.b.org",
        reporting_mta="mx.b.org", at=AT,
    )
    dsn = parse_dsn(raw)
    ((block),) = dsn.recipients
    assert (block.address, block.status, block.action) == ("dr.b@direct.b.org", "5.5.0", "failed")
    assert b"body that is not returned" not in raw  # headers only (RFC 3462 text/rfc822-headers)


def test_header_block_stops_at_the_blank_line() -> None:
    assert header_block(ORIGINAL).endswith(b"\r\n\r\n") and b"hello" not in header_block(ORIGINAL)
    assert header_block(b"Subject: x") == b"Subject: x"


def test_a_notice_moves_only_recipients_of_the_domain_that_signed_it() -> None:
    """A HISP speaks for its own recipients: an MDN signed for direct.b.org naming dr.x@direct.c.org cannot
    complete dr.x's tracking (AS-14: the signer is bound to the From address)."""
    from hisp.core.notify import restrict_to_signer

    notice = read_notice(mdn_from("dr.x@direct.c.org", "dispatched"))
    assert notice is not None
    restricted = restrict_to_signer(notice, "direct.b.org")
    assert restricted.events == () and any("outside the signer's domain" in d for d in restricted.defects)
    own = read_notice(mdn_from("dr.b@direct.b.org", "dispatched"))
    assert own is not None and restrict_to_signer(own, "DIRECT.B.ORG.") is own
