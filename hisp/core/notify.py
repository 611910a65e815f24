"""Which notifications a message owes or carries: the Direct notification rules between the pipeline and the
MDN, DSN and tracking cores.

Pure: no clock, no storage, no mail. The pipeline calls these and enqueues what they return.

* Receiving side: :func:`owed_mdns` (one MDN per recipient to Disposition-Notification-To or From, never for
  a notification, AS-18/AS-19) and :func:`wants_final_delivery` (DN-1/DN-3/DN-4).
* Sending side: :func:`read_notice` turns a received MDN or DSN into tracking events keyed by the original's
  Message-ID (DN-2), :func:`apply_notice` applies them to a track and says whether the notice reaches the
  edge (DN-8, DN-10), and :func:`timeout_dsn` / :func:`failure_dsn` build the DSNs the sending HISP owes its
  edge (DN-6, DN-7).

Spec: AS-18, AS-19, AS-22, DN-1..DN-10; RFC 8098; RFC 3464; requirements sections 8.3-8.4.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

from hisp.addresses import bare_address
from hisp.core.dsn import NOT_DELIVERABLE, DsnRecipient, build_dsn, parse_dsn
from hisp.core.mdn import Disposition, build_mdn, is_notification, mdn_recipient, parse_mdn, requests_final_delivery
from hisp.core.tracking import Action, Event, MessageTrack, Transition, correlation_key, event_for_dsn, event_for_mdn

__all__ = [
    "HEADER_CACHE_MAX",
    "MAX_NOTICE_EVENTS",
    "NOT_DELIVERABLE",
    "Notice",
    "NoticeOutcome",
    "OwedMdn",
    "apply_notice",
    "failure_dsn",
    "header_block",
    "header_fields",
    "header_pairs",
    "new_message_id",
    "owed_mdns",
    "read_notice",
    "restrict_to_signer",
    "timeout_dsn",
    "wants_final_delivery",
]

#: Events read from one notice at most (a message has at most a few hundred recipients; a DSN repeating one
#: recipient thousands of times must not write thousands of history rows).
MAX_NOTICE_EVENTS = 256

#: Header bytes read to decide about a message (its header section; the body is never needed here).
_HEADER_LIMIT = 256 * 1024


def header_block(raw: bytes) -> bytes:
    """The header section of ``raw`` (through the blank line), at most 256 KiB; all of it when there is no body."""
    head = raw[:_HEADER_LIMIT]
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = head.find(separator)
        if end >= 0:
            return head[: end + len(separator)]
    return head


#: Header sections up to this many bytes are read once and their fields remembered (see :func:`header_fields`).
HEADER_CACHE_MAX = 16 * 1024


def header_pairs(raw: bytes) -> tuple[tuple[str, str], ...]:
    """The ``(name, value)`` header fields of ``raw``, unfolded, in order (compat32: never raises on odd bytes)."""
    return _section(raw)[1]


def header_fields(raw: bytes) -> tuple[tuple[str, str], ...]:
    """The ``(name, value)`` header fields of ``raw``, in order, values as ``BytesHeaderParser(policy=compat32)``
    gives them (folding kept; :func:`header_pairs` unfolds them). Never raises on odd bytes.

    One message is looked at several times on its way (its From at submission, the final-delivery request, the
    MDN's addresses): a header section of at most :data:`HEADER_CACHE_MAX` bytes is read once and its fields
    remembered for the next look at the same bytes (a pure function of them; bounded, thread-safe). A plain
    ASCII section is read without the ``email`` parser, to the same fields (tests/property/test_mailbox_pairs.py).
    """
    return _section(raw)[0]


_Fields = tuple[tuple[str, str], ...]


def _section(raw: bytes) -> tuple[_Fields, _Fields]:
    block = header_block(raw)
    if type(block) is not bytes:
        block = bytes(block)  # a bytearray's slice: the remembered key must be immutable
    if len(block) <= HEADER_CACHE_MAX:
        return _remembered_section(block)
    return _read_section(block)


def _read_section(block: bytes) -> tuple[_Fields, _Fields]:
    """``(fields as parsed, fields unfolded)`` of a header section."""
    fields = _parse_fields(block)
    return fields, tuple((name, " ".join(value.split())) for name, value in fields)


#: The header sections read lately (a pure function of the bytes; thread-safe).
_remembered_section = functools.lru_cache(maxsize=256)(_read_section)

# A header section the parser reads in the plain way: printable ASCII, tabs and line ends only (no control
# character the stdlib's line splitting could treat apart).
_PLAIN_SECTION = re.compile(rb"[\t\r\n\x20-\x7e]*")
# A field's first line as the parser's header pattern reads it: a non-empty name of printable characters but
# the colon, then the colon (a "From " line, an empty name or any other line is left to the parser).
_FIELD_START = re.compile(r"[!-9;-~]+:")


def _parse_fields(block: bytes) -> _Fields:
    """The fields of a header section, as ``BytesHeaderParser(policy=compat32)`` reads them."""
    plain = _plain_fields(block)
    if plain is not None:
        return plain
    parsed = BytesHeaderParser(policy=compat32).parsebytes(block, headersonly=True)
    return tuple((str(name), str(value)) for name, value in parsed.items())


def _plain_fields(block: bytes) -> _Fields | None:
    """The fields of a plain header section, read as the compat32 feed parser does (a field's value: the rest of
    its first line without leading blanks, its continuation lines as they are, trailing line ends removed);
    ``None`` when the section holds anything else (8-bit or control bytes, a continuation first, a line that is
    neither a field nor a continuation before the blank line): the parser reads those.
    """
    if _PLAIN_SECTION.fullmatch(block) is None:
        return None
    fields: list[tuple[str, str]] = []
    name: str | None = None
    lines: list[str] = []
    for line in block.decode("ascii").splitlines(keepends=True):
        if line[0] in "\r\n":
            break  # the blank line ends the header section
        if line[0] in " \t":
            if name is None:
                return None
            lines.append(line)
            continue
        start = _FIELD_START.match(line)
        if start is None:
            return None
        if name is not None:
            fields.append((name, "".join(lines).rstrip("\r\n")))
        name = line[: start.end() - 1]
        lines = [line[start.end() :].lstrip(" \t")]
    if name is not None:
        fields.append((name, "".join(lines).rstrip("\r\n")))
    return tuple(fields)


def new_message_id(domain: str) -> str:
    """A fresh, globally unique Message-ID ``<32 hex digits@domain>`` (DN-2)."""
    return f"<{uuid.uuid4().hex}@{domain}>"


def wants_final_delivery(raw: bytes) -> bool:
    """Whether ``raw`` asks for final-destination delivery notification and is not itself a notification.

    :param raw: a plain message.
    :returns: a well-formed ``X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true`` request (case and
        whitespace ignored) on a message that is not an MDN or DSN; a malformed request is no request (DN-4).

    Spec: DN-1, DN-3, DN-4, AS-19.
    """
    return requests_final_delivery(header_pairs(raw)) and not is_notification(raw)


@dataclass(frozen=True)
class OwedMdn:
    """One MDN a receiving HISP owes: from ``recipient`` to ``to``, ready to seal and send.

    :ivar recipient: our recipient the MDN speaks for (its From and Final-Recipient).
    :ivar to: where it goes: the original's Disposition-Notification-To, else its From (AS-18).
    :ivar message_id: the MDN's Message-ID.
    :ivar raw: the MDN, CRLF line endings.
    """

    recipient: str
    to: str
    message_id: str
    raw: bytes


def owed_mdns(
    plain: bytes,
    recipients: Sequence[str],
    *,
    disposition: Disposition,
    reporting_ua: str,
    at: datetime,
    failure: str | None = None,
    known_not_notification: bool = False,
) -> list[OwedMdn]:
    """The MDNs owed for a received message, one per recipient; none for a notification (AS-19) or when the
    message names nobody to answer (no Disposition-Notification-To and no From).

    :param plain: the received plain message (after decryption and unwrapping; a trust header line may lead).
    :param recipients: our recipients it was accepted for.
    :param disposition: ``processed`` (AS-18), ``dispatched`` (DN-3) or ``failed`` (DN-5).
    :param reporting_ua: ``"<our host name>; hisp"``.
    :param at: the MDNs' Date.
    :param failure: the reason, for ``failed``.
    :param known_not_notification: the caller already found ``plain`` is no MDN or DSN (:func:`read_notice`
        returned ``None``): the message is not walked a second time.
    :returns: the MDNs, in recipient order.
    :raises HispError: ``failure`` missing for ``failed`` or given for another disposition.

    Spec: AS-18, AS-19, DN-3, DN-5; RFC 8098 section 3.
    """
    if not known_not_notification and is_notification(plain):
        return []
    headers = header_pairs(plain)
    to = mdn_recipient(headers)
    if to is None:
        return []
    owed = []
    for recipient in recipients:
        domain = recipient.rpartition("@")[2] or "localhost"
        message_id = new_message_id(domain)
        raw = build_mdn(
            headers, recipient=recipient, disposition=disposition, reporting_ua=reporting_ua,
            message_id=functools.partial(str, message_id), at=at, failure=failure, original_recipient=recipient,
        )
        owed.append(OwedMdn(recipient, to, message_id, raw))
    return owed


@dataclass(frozen=True)
class Notice:
    """A received MDN or DSN read as tracking events.

    :ivar kind: ``"MDN"`` or ``"DSN"``.
    :ivar key: the original's Message-ID (Original-Message-ID / X-Original-Message-ID, In-Reply-To as a
        fallback), or ``""`` when the notice names none (it cannot be matched).
    :ivar events: ``(recipient address, event, detail)`` for each recipient the notice speaks for.
    :ivar defects: what the parser tolerated or could not read.
    :ivar aliases: see the attribute comment.

    At most :data:`MAX_NOTICE_EVENTS` events, each ``(recipient, event)`` once.

    Spec: DN-2; RFC 8098 section 3.2; RFC 3464 section 2.3.
    """

    kind: str
    key: str
    events: tuple[tuple[str, Event, str], ...]
    defects: tuple[str, ...] = ()
    #: ``(Final-Recipient, Original-Recipient)`` pairs: a peer that rewrote the recipient (an alias, a mailbox)
    #: still names ours as the Original-Recipient, which is then matched instead.
    aliases: tuple[tuple[str, str], ...] = ()


def read_notice(plain: bytes, *, envelope_sender: str = "") -> Notice | None:
    """Read a received plain message as a notification, or ``None`` when it is not one.

    The MDN's recipient is its Final-Recipient, else its Original-Recipient, else its From (the envelope
    sender when even that is missing). A DSN gives one event per recipient block. Never raises: what cannot
    be read is a defect, and a notice without a key is still returned (to be forwarded unmatched).

    :param plain: the decrypted, unwrapped message.
    :param envelope_sender: the SMTP MAIL FROM it came with, the last fallback for the MDN's recipient.
    :returns: the notice, or ``None`` for a message that is not an MDN or DSN.

    Spec: DN-2, DN-7; AS-19; conformance.md section 2.9 (tolerant parsing).
    """
    if not is_notification(plain):
        return None
    headers = header_pairs(plain)
    mdn = parse_mdn(plain)
    if "no disposition-notification part" not in mdn.defects:
        sender = None
        for name, value in headers:
            if name.lower() == "from":
                sender = value
        who = mdn.final_recipient or mdn.original_recipient or _bare(sender) or envelope_sender
        key = mdn.original_message_id or mdn.in_reply_to or ""
        detail = f"MDN {mdn.disposition or 'unknown'} {mdn.message_id or ''} from {who}".replace("  ", " ")
        if mdn.failure:
            detail += f": {mdn.failure}"
        named = ((who, event_for_mdn(mdn), detail),) if who else ()
        renamed = ((who, mdn.original_recipient),) if who and mdn.original_recipient else ()
        return Notice("MDN", correlation_key(key), named, mdn.defects, renamed)
    dsn = parse_dsn(plain)
    key = dsn.original_message_id or dsn.in_reply_to or ""
    events: list[tuple[str, Event, str]] = []
    aliases: list[tuple[str, str]] = []
    seen: set[tuple[str, Event]] = set()
    defects = list(dsn.defects)
    for block in dsn.recipients:
        if not block.address:
            continue
        event = event_for_dsn(block)
        if (block.address.lower(), event) in seen:
            continue
        if len(events) >= MAX_NOTICE_EVENTS:
            defects.append(f"more than {MAX_NOTICE_EVENTS} recipient blocks: the rest ignored")
            break
        seen.add((block.address.lower(), event))
        detail = f"DSN {block.action or 'unknown'} {block.status or ''} {dsn.message_id or ''}".replace("  ", " ")
        if block.diagnostic:
            detail += f": {block.diagnostic}"
        events.append((block.address, event, detail))
        if block.original_recipient:
            aliases.append((block.address, block.original_recipient))
    return Notice("DSN", correlation_key(key), tuple(events), tuple(defects), tuple(aliases))


def restrict_to_signer(notice: Notice, signer_domain: str) -> Notice:
    """Keep only the events about recipients of the health domain that signed the notice.

    A notice is verified against its From address (AS-14): a HISP may speak for its own recipients only, so a
    notice naming a recipient of another domain cannot move that recipient's tracking; such events are dropped
    and listed as a defect. Domains are compared case-insensitively.

    :param notice: the notice read from the verified message.
    :param signer_domain: the domain of the address the signer is bound to.
    :returns: the notice with only the events it may carry.

    Spec: AS-14 (the signer is bound to the From address); DN-2; issue 6 (a notification is evidence only about
    what its sender handles).
    """
    domain = signer_domain.strip().rstrip(".").lower()

    def ours(address: str) -> bool:
        return address.rpartition("@")[2].strip().rstrip(".").lower() == domain

    kept = tuple(e for e in notice.events if ours(e[0]))
    aliases = tuple(pair for pair in notice.aliases if ours(pair[0]) and ours(pair[1]))
    if len(kept) == len(notice.events) and len(aliases) == len(notice.aliases):
        return notice
    others = ", ".join(e[0] for e in notice.events if e not in kept)[:300]
    defects = notice.defects
    if others:
        defects = (*defects, f"names recipients outside the signer's domain {domain}, not applied: {others}")
    return dataclasses.replace(notice, events=kept, aliases=aliases, defects=defects)


def _bare(value: str | None) -> str | None:
    if not value:
        return None
    address = bare_address(value)  # parseaddr(value)[1]
    return address or None


@dataclass(frozen=True)
class NoticeOutcome:
    """What applying a notice did.

    :ivar forward: the notice goes on to the edge (at least one recipient's transition says forward, or no
        recipient it names is tracked for the message: unmatched notices are forwarded).
    :ivar transitions: ``(recipient, event, transition or None when not tracked)`` per event of the notice.
    """

    forward: bool
    transitions: tuple[tuple[str, Event, Transition | None], ...]

    def explain(self) -> str:
        """One line: each recipient's event, new state and action (``dr.b@x: processed -> processed, forward``)."""
        parts = []
        for address, event, transition in self.transitions:
            if transition is None:
                parts.append(f"{address}: {event.value}, not tracked")
            else:
                parts.append(f"{address}: {event.value} -> {transition.state.value}, {transition.action.value}")
        return "; ".join(parts) or "no recipient named"


def apply_notice(track: MessageTrack, notice: Notice, at: datetime) -> NoticeOutcome:
    """Apply every event of ``notice`` to ``track`` (mutating it) and decide whether the edge sees the notice.

    A notice is forwarded when any of its events is forwarded (:attr:`Action.FORWARD`), or when none of them
    names a recipient the track has (unmatched); it is kept back when every matched event is consumed, recorded
    or dropped (DN-8: at most one terminal notice per recipient; DN-10: processed MDNs consumed by
    configuration). A recipient the peer rewrote is matched by its Original-Recipient (:attr:`Notice.aliases`).

    :param track: the original message's track.
    :param notice: the received notice.
    :param at: when it was received.
    :returns: the outcome.

    Spec: DN-7, DN-8, DN-10.
    """
    aliases = {final.strip().lower(): original for final, original in notice.aliases}
    transitions: list[tuple[str, Event, Transition | None]] = []
    for address, event, detail in notice.events:
        if address.strip().lower() not in track.recipients and address.strip().lower() in aliases:
            address = aliases[address.strip().lower()]  # the peer rewrote the recipient; ours is the original
        transitions.append((address, event, track.apply(address, event, at, detail=detail)))
    matched = [t for _, _, t in transitions if t is not None]
    # forwarded when some event says so, or when nothing in it matched (unmatched notices go on as they are);
    # a notice mixing a matched duplicate with a stranger's block is not a second terminal notice (DN-8)
    forward = not matched or any(t.action is Action.FORWARD for t in matched)
    return NoticeOutcome(forward, tuple(transitions))


def timeout_dsn(
    original: bytes,
    expired: Iterable[tuple[str, Transition]],
    *,
    sender: str,
    postmaster: str,
    reporting_mta: str,
    at: datetime,
) -> tuple[str, bytes]:
    """The one DSN for the recipients that timed out (DN-7: 5.4.71 no processed MDN, 5.4.72 no dispatched MDN).

    :param original: the original message (only its header section is used).
    :param expired: from :meth:`MessageTrack.expire`: ``(address, transition)`` with the status.
    :param sender: the original's envelope sender (our edge user), where the DSN goes.
    :param postmaster: the DSN's From (``postmaster@<our domain>``).
    :param reporting_mta: our host name.
    :param at: the DSN's Date.
    :returns: ``(Message-ID, DSN bytes)``.
    :raises HispError: nothing expired, or no address to send to.

    Spec: DN-7, DN-9; requirements section 8.4; RFC 3464.
    """
    blocks = [DsnRecipient(address, transition.status or "5.4.71") for address, transition in expired]
    return _dsn(original, blocks, sender=sender, postmaster=postmaster, reporting_mta=reporting_mta, at=at)


def failure_dsn(
    original: bytes,
    recipient: str,
    status: str,
    reason: str,
    *,
    sender: str,
    postmaster: str,
    reporting_mta: str,
    at: datetime,
) -> tuple[str, bytes]:
    """A DSN for one failed recipient: to our edge sender (no certificate 5.7.31, untrusted 5.7.11, permanent
    SMTP failure, DN-6) or to a partner (5.5.0, not deliverable to the final destination, DN-5).

    :param original: the original message (only its header section is used).
    :param recipient: the recipient that failed.
    :param status: its RFC 3463 status (a 5.x.x: ``Action: failed``).
    :param reason: the diagnostic, one line.
    :param sender: where the DSN goes (the original's envelope sender).
    :param postmaster: the DSN's From: ``postmaster@<our domain>``, or our recipient's address when only it
        has a certificate to sign with (a DSN to a partner is a Direct message).
    :param reporting_mta: our host name.
    :param at: the DSN's Date.
    :returns: ``(Message-ID, DSN bytes)``.
    :raises HispError: a malformed status or address.

    Spec: DN-5, DN-6, AS-22; requirements section 8.4; RFC 3464.
    """
    block = DsnRecipient(recipient, status, diagnostic=reason[:400] or None)
    return _dsn(original, [block], sender=sender, postmaster=postmaster, reporting_mta=reporting_mta, at=at)


def _dsn(
    original: bytes, blocks: list[DsnRecipient], *, sender: str, postmaster: str, reporting_mta: str, at: datetime
) -> tuple[str, bytes]:
    message_id = new_message_id(postmaster.rpartition("@")[2] or reporting_mta)
    raw = build_dsn(
        header_block(original), recipients=blocks, reporting_mta=reporting_mta, sender=postmaster,
        message_id=lambda: message_id, at=at, to=sender,
    )
    return message_id, raw
