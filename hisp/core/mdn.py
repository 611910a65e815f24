"""Message Disposition Notifications for Direct: build, parse, and the request and recipient rules.

Pure functions on bytes and header pairs; no I/O. Built MDNs are plain RFC 5322 messages (CRLF) that the
agent's outgoing path wraps, signs and encrypts like any Direct message (AS-18).

* :func:`build_mdn` writes a processed, dispatched or failed MDN (RFC 8098, requirements section 8.3).
* :func:`parse_mdn` reads one tolerantly: every oddity becomes a defect on the result, never an exception.
* :func:`requests_final_delivery`, :func:`mdn_recipient`, :func:`is_notification`: DN-1/DN-4, AS-18, AS-19.

Spec: RFC 8098; Direct Applicability Statement section 3; Delivery Notification IG v1.0; requirements
AS-18, AS-19, DN-1..DN-5, section 8.3; conformance.md sections 2.8-2.9.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from hisp.addresses import mailbox_pairs
from hisp.core.mime import Entity, MimeLimits, decode_body, parse_entity
from hisp.errors import HispError

__all__ = [
    "DISPOSITION_PREFIX",
    "FINAL_DELIVERY_FIELD",
    "Disposition",
    "Mdn",
    "build_mdn",
    "is_notification",
    "mdn_recipient",
    "parse_mdn",
    "requests_final_delivery",
]

CRLF = "\r\n"
#: The extension field a dispatched MDN carries when it reports delivery to the final destination (DN-3).
FINAL_DELIVERY_FIELD = "X-DIRECT-FINAL-DESTINATION-DELIVERY"
#: The action and sending modes of every MDN a HISP sends.
DISPOSITION_PREFIX = "automatic-action/MDN-sent-automatically"
#: Nesting bound of the notification parsers (multipart and message/rfc822 levels).
_MAX_DEPTH = 8
_MAX_FIELD_TEXT = 900
_LIMITS = MimeLimits(max_message_bytes=16 * 1024 * 1024)


class Disposition(StrEnum):
    """Disposition types (``dispatched`` comes from RFC 3798 and the Direct IG).

    Spec: RFC 8098 section 3.2.6.2; DN-3, DN-5.
    """

    PROCESSED = "processed"
    DISPATCHED = "dispatched"
    FAILED = "failed"
    DISPLAYED = "displayed"
    DELETED = "deleted"
    DENIED = "denied"


@dataclass(frozen=True)
class Mdn:
    """A parsed MDN; any field may be ``None`` when the peer left it out or it could not be read.

    :ivar disposition: the disposition type, lower case (``"processed"``...), or ``None``.
    :ivar disposition_modifiers: modifiers after ``/`` in the disposition type (``error``...), lower case.
    :ivar action_mode: ``automatic-action`` or ``manual-action`` as received, lower case.
    :ivar sending_mode: ``mdn-sent-automatically`` or ``mdn-sent-manually``, lower case.
    :ivar reporting_ua: the Reporting-UA value.
    :ivar original_recipient: the address of Original-Recipient (display name, brackets, type removed).
    :ivar final_recipient: the address of Final-Recipient, likewise.
    :ivar original_message_id: Original-Message-ID, the correlation key (DN-2).
    :ivar failure: the Failure (or Error) text.
    :ivar final_delivery: the ``X-DIRECT-FINAL-DESTINATION-DELIVERY`` extension field is present (DN-3).
    :ivar fields: every notification field as ``(lower-case name, value)``.
    :ivar message_id: the MDN's own Message-ID.
    :ivar in_reply_to: the MDN's In-Reply-To (a correlation fallback).
    :ivar subject: the MDN's Subject.
    :ivar defects: what was tolerated or missing, as short strings.

    Spec: RFC 8098 section 3; conformance.md sections 2.8-2.9.
    """

    disposition: str | None = None
    disposition_modifiers: tuple[str, ...] = ()
    action_mode: str | None = None
    sending_mode: str | None = None
    reporting_ua: str | None = None
    original_recipient: str | None = None
    final_recipient: str | None = None
    original_message_id: str | None = None
    failure: str | None = None
    final_delivery: bool = False
    fields: tuple[tuple[str, str], ...] = ()
    message_id: str | None = None
    in_reply_to: str | None = None
    subject: str | None = None
    defects: tuple[str, ...] = ()

    @property
    def is_failure(self) -> bool:
        """The MDN reports a failure: disposition ``failed`` or ``denied``, or an ``error`` modifier (DN-7)."""
        return self.disposition in ("failed", "denied") or "error" in self.disposition_modifiers


# --- shared helpers (also used by hisp.core.dsn) ----------------------------------------------------------


def _clean(value: str, limit: int = _MAX_FIELD_TEXT) -> str:
    """One header-safe line: CR/LF and other controls become spaces, runs of spaces collapse, bounded length."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f]+", " ", value)
    text = re.sub(r" {2,}", " ", text).strip()
    return text[:limit]


def _ascii_field(value: str) -> str:
    """:func:`_clean`, then an RFC 2047 encoded word when the text is not ASCII."""
    text = _clean(value)
    if text.isascii():
        return text
    import base64

    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return f"=?utf-8?b?{encoded}?="


def _msg_id(value: str) -> str:
    """A message id in angle brackets, header-safe."""
    text = _clean(value).strip("<> ")
    if not text or any(c in text for c in "<> "):
        raise HispError(f"not a usable message id: {value!r}")
    return f"<{text}>"


def _header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    wanted = name.lower()
    for field_name, value in headers:
        if field_name.strip().lower() == wanted:
            return value
    return None


def _headers_of(original: Entity | bytes | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    if isinstance(original, Entity):
        return original.headers
    if isinstance(original, bytes | bytearray):
        return parse_entity(bytes(original), _LIMITS).headers
    return tuple(original)


def _address(value: str | None) -> str | None:
    """The bare address in ``value``: an ``address-type;`` prefix, display name, brackets and comments removed."""
    if value is None:
        return None
    text = value.strip()
    if ";" in text and re.match(r"^\s*[A-Za-z0-9-]+\s*;", text):
        text = text.split(";", 1)[1]
    try:
        pairs = mailbox_pairs([text])  # email.utils.getaddresses, without its parser for the usual forms
    except Exception:  # the stdlib parser has raised on hostile input in some releases
        pairs = []
    for _name, addr in pairs:
        if "@" in addr:
            return addr.strip()
    match = re.search(r"[^\s<>\"();,:]+@[^\s<>\"();,:]+", text)
    return match.group(0) if match else None


def _fresh_boundary(*texts: str) -> str:
    while True:
        boundary = "=_report_" + secrets.token_hex(12)
        if not any(boundary in text for text in texts):
            return boundary


def _date(at: datetime) -> str:
    if at.tzinfo is None:
        raise HispError("the time of a notification must be timezone-aware")
    return email.utils.format_datetime(at)


def _report(
    *,
    top: Sequence[tuple[str, str]],
    report_type: str,
    text: str,
    parts: Sequence[tuple[str, str]],
) -> bytes:
    """A multipart/report message: ``top`` header fields, a text part, then ``(content-type, body)`` parts."""
    boundary = _fresh_boundary(text, *(body for _ct, body in parts))
    lines = [f"{name}: {value}" for name, value in top]
    lines += [
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type={report_type}; boundary="{boundary}"',
        "",
        f"--{boundary}",
        f"Content-Type: text/plain; charset={'us-ascii' if text.isascii() else 'utf-8'}",
        f"Content-Transfer-Encoding: {'7bit' if text.isascii() else '8bit'}",
        "",
        text,
    ]
    for content_type, body in parts:
        encoding = "7bit" if body.isascii() else "8bit"
        lines += [f"--{boundary}", f"Content-Type: {content_type}", f"Content-Transfer-Encoding: {encoding}", ""]
        lines.append(body.rstrip("\r\n"))
    lines.append(f"--{boundary}--")
    return (CRLF.join(lines) + CRLF).encode("utf-8")


def _walk(raw: bytes, defects: list[str]) -> Iterator[Entity]:
    """Every entity of ``raw`` (multipart parts, bounded), top first; never raises.

    A message/rfc822 body is entered only where it is the message itself: the whole message, or the signed
    content of a top-level multipart/signed (a wrapped Direct message, AS-12). A message/rfc822 part anywhere
    else is an attached message, and an MDN or DSN attached to a letter does not make the letter a notification.
    """
    try:
        top = parse_entity(raw, _LIMITS)
    except Exception as exc:  # MessageFormatError, or anything a hostile input provokes
        defects.append(f"unparsable message: {exc}")
        return
    defects.extend(top.defects)
    # (entity, depth, whether it stands for the message itself rather than an attachment)
    stack: list[tuple[Entity, int, bool]] = [(top, 0, True)]
    seen = 0
    while stack:
        entity, depth, itself = stack.pop(0)
        seen += 1
        if seen > 1000:
            defects.append("too many parts")
            return
        yield entity
        if depth >= _MAX_DEPTH:
            continue
        ctype = entity.content_type
        try:
            if ctype.maintype == "multipart":
                parts = _split_parts(entity, defects)
                signed = itself and ctype.mime_type == "multipart/signed"
                stack[0:0] = [(part, depth + 1, signed and n == 0) for n, part in enumerate(parts)]
            elif ctype.mime_type in ("message/rfc822", "message/global") and itself:
                stack.insert(0, (parse_entity(decode_body(entity), _LIMITS), depth + 1, True))
        except Exception as exc:
            defects.append(f"unparsable part: {exc}")


def _split_parts(entity: Entity, defects: list[str]) -> list[Entity]:
    """The body parts of a multipart entity, tolerant of LF-only lines and a missing close delimiter."""
    boundary = entity.content_type.params.get("boundary")
    if not boundary:
        defects.append("multipart without boundary")
        return []
    marker = b"--" + boundary.encode("latin-1", "replace")
    if b"\r" in marker or b"\n" in marker:
        bodies = _part_bodies_by_line(entity.body, marker, defects)  # no line is such a delimiter
    else:
        bodies = _part_bodies(entity.body, marker, defects)
    result = []
    for body in bodies:
        # The line ending before the next delimiter belongs to the delimiter (RFC 2046 section 5.1.1).
        if body.endswith(b"\r\n"):
            body = body[:-2]
        elif body.endswith(b"\n"):
            body = body[:-1]
        result.append(parse_entity(body, _LIMITS))
    return result


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _part_bodies(body: bytes, marker: bytes, defects: list[str]) -> list[bytes]:
    """The bytes between the delimiter lines of a multipart body (each with the line ending before the next
    delimiter), found by searching for the marker: the same as :func:`_part_bodies_by_line` reading every line.

    A delimiter line starts where a line starts (after CRLF, LF or a lone CR, as ``bytes.splitlines`` cuts) and
    is the marker, or the marker and ``--`` (the close delimiter), followed by nothing but spaces and tabs.
    """
    bodies: list[bytes] = []
    start: int | None = None  # where the current part's bytes begin
    at = body.find(marker)
    while at >= 0:
        if at == 0 or body[at - 1] in b"\r\n":
            end = _LINE_END.search(body, at + len(marker))
            line_end, next_line = (end.start(), end.end()) if end is not None else (len(body), len(body))
            stripped = body[at:line_end].rstrip(b" \t")
            if stripped == marker + b"--":
                if start is not None:
                    bodies.append(body[start:at])
                return bodies
            if stripped == marker:
                if start is not None:
                    bodies.append(body[start:at])
                start = next_line
                at = body.find(marker, next_line)
                continue
        at = body.find(marker, at + 1)
    if start is not None:
        bodies.append(body[start:])
    defects.append("multipart without close delimiter")
    return bodies


def _part_bodies_by_line(body: bytes, marker: bytes, defects: list[str]) -> list[bytes]:
    """:func:`_part_bodies`, line by line."""
    lines = body.splitlines(keepends=True)
    parts: list[list[bytes]] = []
    current: list[bytes] | None = None
    closed = False
    for line in lines:
        stripped = line.rstrip(b"\r\n").rstrip(b" \t")
        if stripped == marker + b"--":
            if current is not None:
                parts.append(current)
            current = None
            closed = True
            break
        if stripped == marker:
            if current is not None:
                parts.append(current)
            current = []
        elif current is not None:
            current.append(line)
    if current is not None:
        parts.append(current)
    if not closed:
        defects.append("multipart without close delimiter")
    return [b"".join(part) for part in parts]


def _field_blocks(body: bytes, defects: list[str]) -> list[list[tuple[str, str]]]:
    """Notification field blocks (separated by blank lines) as ``(lower-case name, value)`` pairs.

    Tolerates a BOM, LF-only lines, folded fields, spaces before the colon, and continuation lines a peer
    forgot to indent (joined to the previous field, with a defect).
    """
    text = body.decode("utf-8", "replace").lstrip("\ufeff")
    blocks: list[list[tuple[str, str]]] = []
    block: list[list[str]] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            if block:
                blocks.append([(n, " ".join(v.split())) for n, v in ((b[0], b[1]) for b in block)])
                block = []
            continue
        if line[0] in " \t" and block:
            block[-1][1] += " " + line.strip()
            continue
        raw_name, colon, value = line.partition(":")
        name = raw_name.strip().lower()
        if colon and name and re.fullmatch(r"[!-9;-~]+", name):
            if raw_name != raw_name.strip():
                defects.append(f"white space around field name {name!r}")
            block.append([name, value.strip()])
        elif block:
            defects.append("unindented continuation line")
            block[-1][1] += " " + line.strip()
        else:
            defects.append("line without field name")
    if block:
        blocks.append([(n, " ".join(v.split())) for n, v in ((b[0], b[1]) for b in block)])
    return blocks


# --- building ---------------------------------------------------------------------------------------------


def build_mdn(
    original: Entity | bytes | Sequence[tuple[str, str]],
    *,
    recipient: str,
    disposition: Disposition | str,
    reporting_ua: str,
    message_id: Callable[[], str],
    at: datetime,
    failure: str | None = None,
    original_recipient: str | None = None,
) -> bytes:
    """A processed, dispatched or failed MDN from ``recipient`` about ``original``.

    The MDN goes to :func:`mdn_recipient` of the original (AS-18); it never carries
    Disposition-Notification-To (AS-19). A dispatched MDN carries the empty ``X-DIRECT-FINAL-DESTINATION-DELIVERY``
    extension field (DN-3), a failed one a ``Failure`` field (RFC 8098 section 3.2.7).

    :param original: the original message (its entity, bytes, or header pairs).
    :param recipient: the Direct address the MDN speaks for: From and Final-Recipient.
    :param disposition: ``processed``, ``dispatched`` or ``failed``.
    :param reporting_ua: ``ua-name[; ua-product]``, e.g. ``"direct.b.org; hisp"``.
    :param message_id: returns the new Message-ID (with or without angle brackets).
    :param at: the Date of the MDN (timezone-aware).
    :param failure: the failure text; required for ``failed``, refused otherwise.
    :param original_recipient: the Original-Recipient address, when known.
    :returns: the RFC 5322 message, CRLF line endings.
    An original without a usable Message-ID (none, ``<>``, brackets inside) still gets its MDN, without
    Original-Message-ID and In-Reply-To (RFC 8098 section 3.2.5: supplied when the original had one); a
    Message-ID with whitespace inside is written without it (the form :func:`hisp.core.tracking.correlation_key`
    compares).

    :raises HispError: the original has no address to answer, or an argument is unusable.

    Spec: RFC 8098 sections 3.1-3.2; AS-18, AS-19, DN-3, DN-5; requirements section 8.3.
    """
    kind = Disposition(str(disposition).lower())
    if kind not in (Disposition.PROCESSED, Disposition.DISPATCHED, Disposition.FAILED):
        raise HispError(f"a HISP sends processed, dispatched or failed MDNs, not {kind.value}")
    if (failure is not None) != (kind is Disposition.FAILED):
        raise HispError("a Failure text is required for, and only for, a failed MDN")
    headers = _headers_of(original)
    original_id: str | None = None
    with contextlib.suppress(HispError):
        original_id = _msg_id("".join((_header(headers, "Message-ID") or "").split()))
    to = mdn_recipient(headers)
    sender = _address(recipient)
    if to is None or sender is None:
        raise HispError("an MDN needs the original's Disposition-Notification-To or From, and a recipient address")
    subject = _ascii_field(f"{kind.value.capitalize()}: {_header(headers, 'Subject') or ''}".rstrip())
    human = {
        Disposition.PROCESSED: "has been received and processed",
        Disposition.DISPATCHED: "has been delivered to its final destination",
        Disposition.FAILED: "could not be delivered to its final destination",
    }[kind]
    text = f"Your Direct message {original_id or '(without a Message-ID)'} to {sender} {human}."
    fields = [f"Reporting-UA: {_ascii_field(reporting_ua)}"]
    if original_recipient:
        fields.append(f"Original-Recipient: rfc822; {_address(original_recipient) or _clean(original_recipient)}")
    fields += [
        f"Final-Recipient: rfc822; {sender}",
        *([f"Original-Message-ID: {original_id}"] if original_id else []),
        f"Disposition: {DISPOSITION_PREFIX};{kind.value}",
    ]
    if failure is not None:
        fields.append(f"Failure: {_ascii_field(failure) or 'delivery failed'}")
    if kind is Disposition.DISPATCHED:
        fields.append(f"{FINAL_DELIVERY_FIELD}:")
    top = [
        ("From", sender),
        ("To", to),
        ("Date", _date(at)),
        ("Subject", subject),
        ("Message-ID", _msg_id(message_id())),
        *([("In-Reply-To", original_id)] if original_id else []),
    ]
    return _report(
        top=top,
        report_type="disposition-notification",
        text=text,
        parts=[("message/disposition-notification", CRLF.join(fields))],
    )


# --- parsing ----------------------------------------------------------------------------------------------

_DISPOSITION = re.compile(
    r"^\s*(?P<action>[a-z-]+)\s*/\s*(?P<sending>[a-z-]+)\s*;\s*(?P<type>[a-z-]+)\s*(?P<mods>(/\s*[a-z0-9-]+\s*)*)$"
)


def parse_mdn(raw: bytes) -> Mdn:
    """Read an MDN (the plain message, after decryption and unwrapping), tolerantly.

    The first ``message/disposition-notification`` part anywhere in the message is read. Lower-case field
    names, folded fields, spaces before colons, display names in Final-Recipient, a BOM and missing optional
    fields are accepted; what is missing or odd is listed in ``defects``. Never raises on any input.

    :param raw: the message bytes.
    :returns: the MDN; ``defects`` says ``"no disposition-notification part"`` when it is not one.

    Spec: RFC 8098 section 3; conformance.md sections 2.8-2.9 (DTS 452-466).
    """
    defects: list[str] = []
    try:
        return _parse_mdn(raw, defects)
    except Exception as exc:  # a bug or a hostile corner: still a result
        defects.append(f"unparsable MDN: {type(exc).__name__}: {exc}")
        return Mdn(defects=tuple(defects))


def _parse_mdn(raw: bytes, defects: list[str]) -> Mdn:
    if not isinstance(raw, bytes | bytearray | memoryview):
        defects.append(f"not bytes: {type(raw).__name__}")
        return Mdn(defects=tuple(defects))
    top: Entity | None = None
    part: Entity | None = None
    for entity in _walk(bytes(raw), defects):
        if top is None:
            top = entity
        if entity.content_type.mime_type == "message/disposition-notification":
            part = entity
            break
    if top is None:
        return Mdn(defects=tuple(defects))
    own = Mdn(message_id=top.header("Message-ID"), in_reply_to=top.header("In-Reply-To"), subject=top.header("Subject"))
    if part is None:
        defects.append("no disposition-notification part")
        return dataclasses.replace(own, defects=tuple(defects))
    try:
        body = decode_body(part)
    except Exception as exc:
        defects.append(f"undecodable notification: {exc}")
        body = part.body
    blocks = _field_blocks(body, defects)
    if len(blocks) > 1:
        defects.append("blank line inside the notification fields")
    fields = tuple(pair for block in blocks for pair in block)

    def get(name: str) -> str | None:
        value = _header(fields, name)
        return value if value else None

    if _header(fields, "disposition-notification-to") is not None or top.header("Disposition-Notification-To"):
        defects.append("Disposition-Notification-To in an MDN (AS-19, DTS 452)")
    disposition = get("disposition")
    action = sending = kind = None
    modifiers: tuple[str, ...] = ()
    if disposition is None:
        defects.append("missing Disposition")
    else:
        match = _DISPOSITION.match(disposition.lower())
        if match:
            action, sending, kind = match["action"], match["sending"], match["type"]
            modifiers = tuple(m.strip() for m in match["mods"].split("/") if m.strip())
            if kind not in {d.value for d in Disposition} and kind not in ("error",):
                defects.append(f"unknown disposition type {kind!r}")
        else:
            defects.append(f"malformed Disposition {disposition!r}")
            found = re.search(r"\b(processed|dispatched|failed|displayed|deleted|denied)\b", disposition.lower())
            kind = found.group(1) if found else None
    final = get("final-recipient")
    final_address = _address(final)
    if final is None:
        defects.append("missing Final-Recipient")
    else:
        if not re.match(r"^\s*[A-Za-z0-9-]+\s*;", final):
            defects.append("Final-Recipient without address type")
        if final_address is None:
            defects.append("Final-Recipient without a parsable address")
    original_recipient = get("original-recipient")
    original_id = get("original-message-id")
    if original_id is None:
        defects.append("missing Original-Message-ID")
    elif not re.fullmatch(r"<[^<>]+@[^<>]+>", original_id):
        defects.append("Original-Message-ID not <left@right>")
    reporting_ua = get("reporting-ua")
    if reporting_ua is None:
        defects.append("missing Reporting-UA")
    return dataclasses.replace(
        own,
        disposition=kind,
        disposition_modifiers=modifiers,
        action_mode=action,
        sending_mode=sending,
        reporting_ua=reporting_ua,
        original_recipient=_address(original_recipient),
        final_recipient=final_address,
        original_message_id=original_id,
        failure=get("failure") or get("error"),
        final_delivery=_header(fields, FINAL_DELIVERY_FIELD) is not None,
        fields=fields,
        defects=tuple(dict.fromkeys(defects)),
    )


# --- request and recipient rules ---------------------------------------------------------------------------


def requests_final_delivery(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether the sender asked for final-destination delivery notification (DN-1).

    True for ``Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true`` (also
    ``required,true``), matched case-insensitively, whitespace ignored, among other ``;``-separated
    parameters. Anything malformed means no request (DN-4).

    :param headers: the original message's ``(name, value)`` header pairs (e.g. ``Entity.headers``).
    :returns: the request is present and well formed.

    Spec: DN-1, DN-4; RFC 8098 section 2.2; requirements section 8.2.
    """
    for name, value in headers:
        if name.strip().lower() != "disposition-notification-options":
            continue
        compact = "".join(value.split()).lower()
        for parameter in compact.split(";"):
            attr, eq, rest = parameter.partition("=")
            if attr != FINAL_DELIVERY_FIELD.lower():
                continue
            values = rest.split(",")
            if eq and len(values) == 2 and values[0] in ("optional", "required") and values[1] == "true":
                return True
    return False


def mdn_recipient(headers: Iterable[tuple[str, str]]) -> str | None:
    """Where MDNs about a message go: its Disposition-Notification-To, else its From (AS-18).

    :param headers: the original message's header pairs.
    :returns: the bare address, or ``None`` when neither field holds one.

    Spec: AS-18; RFC 8098 section 2.1.
    """
    pairs = tuple(headers)
    for name in ("Disposition-Notification-To", "From"):
        address = _address(_header(pairs, name))
        if address:
            return address
    return None


def is_notification(message: Entity | bytes) -> bool:
    """Whether a message is an MDN or a DSN, which must never be answered with an MDN (AS-19).

    A ``multipart/report`` of report-type ``disposition-notification`` or ``delivery-status``, or a
    ``message/disposition-notification`` or ``message/delivery-status`` part anywhere (DTS 450 convention).

    :param message: the plain (decrypted, unwrapped) message.
    :returns: it is a notification; ``False`` for anything unparsable.

    Spec: AS-19; RFC 8098 section 2.1; RFC 3464.
    """
    raw = message.raw if isinstance(message, Entity) else message
    try:
        for entity in _walk(bytes(raw), []):
            ctype = entity.content_type
            report_type = ctype.params.get("report-type", "").strip().lower()
            if ctype.mime_type == "multipart/report" and report_type in ("disposition-notification", "delivery-status"):
                return True
            if ctype.mime_type in ("message/disposition-notification", "message/delivery-status"):
                return True
    except Exception:
        return False
    return False
