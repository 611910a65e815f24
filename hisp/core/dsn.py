"""Delivery Status Notifications for Direct: build and parse (RFC 3464).

Pure functions; no I/O. The sending HISP sends a DSN to its own edge when a recipient has no certificate,
is untrusted, or did not confirm in time (DN-6, DN-7, AS-22); the receiving HISP may send 5.5.0 to a
partner (as a Direct message) when the final destination refuses (DN-5).

* :func:`build_dsn` writes one DSN for one or more failed recipients of one message.
* :func:`parse_dsn` reads one tolerantly: oddities become defects on the result, never an exception.

Spec: RFC 3464; RFC 3462/6522 (multipart/report); requirements DN-5, DN-6, DN-7, AS-22, section 8.4;
conformance.md section 2.9 (ETT DSNs, X-Original-Message-ID correlation).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from hisp.core.mdn import (
    _LIMITS,
    _address,
    _ascii_field,
    _clean,
    _date,
    _field_blocks,
    _header,
    _msg_id,
    _report,
    _walk,
)
from hisp.core.mime import Entity, decode_body, parse_entity
from hisp.errors import HispError

__all__ = [
    "NOT_DELIVERABLE",
    "NO_CERTIFICATE",
    "NO_DISPATCHED_MDN",
    "NO_PROCESSED_MDN",
    "STATUS_TEXT",
    "UNTRUSTED",
    "Dsn",
    "DsnRecipient",
    "build_dsn",
    "parse_dsn",
]

#: No certificate found for the recipient (RI code).
NO_CERTIFICATE = "5.7.31"
#: The recipient's certificate is not trusted (RI code).
UNTRUSTED = "5.7.11"
#: No processed MDN arrived in time (RI code, DN-7).
NO_PROCESSED_MDN = "5.4.71"
#: Processed, but no dispatched MDN arrived in time (RI code, DN-7).
NO_DISPATCHED_MDN = "5.4.72"
#: Trusted, but not deliverable to the final destination (RI code, DN-5).
NOT_DELIVERABLE = "5.5.0"

#: The human-readable reason of each status this HISP sends.
STATUS_TEXT = {
    NO_CERTIFICATE: "no certificate was found for the recipient",
    UNTRUSTED: "the recipient's certificate is not trusted",
    NO_PROCESSED_MDN: "the recipient's system did not confirm receipt (no processed MDN) in time",
    NO_DISPATCHED_MDN: "the recipient's system did not confirm delivery (no dispatched MDN) in time",
    NOT_DELIVERABLE: "the message could not be delivered to its final destination",
}

_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class DsnRecipient:
    """One recipient's block of a DSN.

    :ivar address: the Final-Recipient address (bare).
    :ivar status: the RFC 3463 status code, e.g. ``"5.7.31"``.
    :ivar action: ``failed`` (what this HISP sends), or as received: ``delayed``, ``delivered``...
    :ivar diagnostic: free text for Diagnostic-Code (``smtp;`` or ``x-direct;`` type added when building).
    :ivar original_recipient: the Original-Recipient address, when known.
    :ivar fields: as parsed, every field as ``(lower-case name, value)``.

    Spec: RFC 3464 section 2.3.
    """

    address: str | None
    status: str | None
    action: str | None = "failed"
    diagnostic: str | None = None
    original_recipient: str | None = None
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Dsn:
    """A parsed DSN.

    :ivar reporting_mta: the Reporting-MTA value.
    :ivar original_message_id: the correlation key: X-Original-Message-ID (or another ``*-original-message-id``
        field), else the Message-ID of the returned original, else the DSN's In-Reply-To.
    :ivar original_envelope_id: Original-Envelope-ID.
    :ivar recipients: one block per recipient.
    :ivar fields: the per-message fields.
    :ivar message_id: the DSN's own Message-ID.
    :ivar in_reply_to: the DSN's In-Reply-To.
    :ivar subject: the DSN's Subject.
    :ivar defects: what was tolerated or missing.

    Spec: RFC 3464 sections 2.1-2.3; conformance.md section 2.9.
    """

    reporting_mta: str | None = None
    original_message_id: str | None = None
    original_envelope_id: str | None = None
    recipients: tuple[DsnRecipient, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    message_id: str | None = None
    in_reply_to: str | None = None
    subject: str | None = None
    defects: tuple[str, ...] = ()


def build_dsn(
    original: Entity | bytes,
    *,
    recipients: Sequence[DsnRecipient],
    reporting_mta: str,
    sender: str,
    message_id: Callable[[], str],
    at: datetime,
    to: str | None = None,
) -> bytes:
    """One DSN about ``original`` for the failed ``recipients``.

    :param original: the original message (its entity or bytes); its header block is returned as
        ``text/rfc822-headers`` and its Message-ID becomes ``X-Original-Message-ID`` and In-Reply-To.
    :param recipients: the failed recipients with their status codes (at least one).
    :param reporting_mta: the HISP's host name, written ``dns; <name>``.
    :param sender: the DSN's From, e.g. ``postmaster@hisp.a.org``.
    :param message_id: returns the new Message-ID.
    :param at: the DSN's Date (timezone-aware).
    :param to: where the DSN goes; by default the original's From (the edge sender).
    :returns: the RFC 5322 message, CRLF line endings.
    :raises HispError: no recipients, a malformed status, or no address to send to.

    Spec: RFC 3464 sections 2-3; DN-6, DN-7, AS-22; requirements section 8.4.
    """
    if not recipients:
        raise HispError("a DSN needs at least one recipient")
    entity = original if isinstance(original, Entity) else parse_entity(bytes(original), _LIMITS)
    destination = _address(to) if to else _address(entity.header("From"))
    if destination is None:
        raise HispError("a DSN needs an address to go to (the original's From)")
    original_id = entity.header("Message-ID")
    per_message = [f"Reporting-MTA: dns; {_clean(reporting_mta)}"]
    if original_id:
        per_message.append(f"X-Original-Message-ID: {_msg_id(original_id)}")
    blocks = ["\r\n".join(per_message)]
    reasons = []
    for recipient in recipients:
        address = _address(recipient.address)
        status = (recipient.status or "").strip()
        if address is None or not _STATUS.match(status):
            raise HispError(f"unusable DSN recipient {recipient.address!r} / status {recipient.status!r}")
        block = []
        if recipient.original_recipient:
            block.append(f"Original-Recipient: rfc822; {_address(recipient.original_recipient)}")
        block += [f"Final-Recipient: rfc822; {address}", f"Action: {_clean(recipient.action or 'failed')}"]
        block.append(f"Status: {status}")
        reason = recipient.diagnostic or STATUS_TEXT.get(status, "delivery failed")
        block.append(f"Diagnostic-Code: x-direct; {_ascii_field(reason)}")
        blocks.append("\r\n".join(block))
        plain = _clean(reason).encode("ascii", "backslashreplace").decode("ascii")
        reasons.append(f"  {address}: {plain} ({status})")
    header_block = entity.header_block.decode("utf-8", "replace")
    header_block = "\r\n".join(re.split(r"\r\n|\r|\n", header_block.rstrip("\r\n")))
    subject = f"Delivery Status Notification (Failure) for {_clean(entity.header('Subject') or '')}".rstrip()
    text = "\r\n".join(
        [
            f"Your message {_msg_id(original_id) if original_id else ''} could not be delivered to:".replace("  ", " "),
            *reasons,
        ]
    )
    top = [
        ("From", _address(sender) or _clean(sender)),
        ("To", destination),
        ("Date", _date(at)),
        ("Subject", _ascii_field(subject)),
        ("Message-ID", _msg_id(message_id())),
    ]
    if original_id:
        top.append(("In-Reply-To", _msg_id(original_id)))
    return _report(
        top=top,
        report_type="delivery-status",
        text=text,
        parts=[("message/delivery-status", "\r\n\r\n".join(blocks)), ("text/rfc822-headers", header_block)],
    )


def parse_dsn(raw: bytes) -> Dsn:
    """Read a DSN (the plain message), tolerantly; never raises on any input.

    :param raw: the message bytes.
    :returns: the DSN; ``defects`` says ``"no delivery-status part"`` when it is not one.

    Spec: RFC 3464 section 2; conformance.md section 2.9.
    """
    defects: list[str] = []
    try:
        return _parse_dsn(raw, defects)
    except Exception as exc:
        defects.append(f"unparsable DSN: {type(exc).__name__}: {exc}")
        return Dsn(defects=tuple(defects))


def _parse_dsn(raw: bytes, defects: list[str]) -> Dsn:
    if not isinstance(raw, bytes | bytearray | memoryview):
        defects.append(f"not bytes: {type(raw).__name__}")
        return Dsn(defects=tuple(defects))
    top: Entity | None = None
    status_part: Entity | None = None
    returned: Entity | None = None
    for entity in _walk(bytes(raw), defects):
        if top is None:
            top = entity
            continue
        mime_type = entity.content_type.mime_type
        if mime_type == "message/delivery-status" and status_part is None:
            status_part = entity
        elif status_part is not None and returned is None and mime_type in ("text/rfc822-headers", "message/rfc822"):
            returned = entity
    if top is None:
        return Dsn(defects=tuple(defects))
    message_id, in_reply_to, subject = top.header("Message-ID"), top.header("In-Reply-To"), top.header("Subject")
    if status_part is None:
        defects.append("no delivery-status part")
        return Dsn(message_id=message_id, in_reply_to=in_reply_to, subject=subject, defects=tuple(defects))
    try:
        body = decode_body(status_part)
    except Exception as exc:
        defects.append(f"undecodable delivery status: {exc}")
        body = status_part.body
    blocks = _field_blocks(body, defects)
    if not blocks:
        defects.append("empty delivery status")
        blocks = [[]]
    per_message = tuple(blocks[0])
    recipients = []
    for block in blocks[1:]:
        fields = tuple(block)
        final = _header(fields, "final-recipient")
        if final is None:
            defects.append("recipient block without Final-Recipient")
        status = _header(fields, "status")
        if status is not None:
            status = status.split()[0] if status.split() else None
        if status is None or not _STATUS.match(status):
            defects.append(f"missing or malformed Status {status!r}")
        action = _header(fields, "action")
        if action is None:
            defects.append("recipient block without Action")
        recipients.append(
            DsnRecipient(
                address=_address(final),
                status=status,
                action=action.strip().lower() if action else None,
                diagnostic=_header(fields, "diagnostic-code"),
                original_recipient=_address(_header(fields, "original-recipient")),
                fields=fields,
            )
        )
    if not recipients:
        defects.append("no recipient blocks")
    reporting_mta = _header(per_message, "reporting-mta")
    if reporting_mta is None:
        defects.append("missing Reporting-MTA")
    original_id = _header(per_message, "x-original-message-id")
    if original_id is None:
        original_id = next((v for n, v in per_message if n.endswith("original-message-id")), None)
    if original_id is None and returned is not None:
        try:
            headers = parse_entity(decode_body(returned), _LIMITS).headers
            original_id = _header(headers, "message-id")
        except Exception as exc:
            defects.append(f"unparsable returned headers: {exc}")
    if original_id is None:
        original_id = in_reply_to
    if original_id is None:
        defects.append("no original message id")
    return Dsn(
        reporting_mta=reporting_mta,
        original_message_id=original_id.strip() if original_id else None,
        original_envelope_id=_header(per_message, "original-envelope-id"),
        recipients=tuple(recipients),
        fields=per_message,
        message_id=message_id,
        in_reply_to=in_reply_to,
        subject=subject,
        defects=tuple(dict.fromkeys(defects)),
    )
