"""SMTP rules as data: the replies the listeners give, address and size rules, MX ordering, AS-13, passwords.

Sans-I/O (DESIGN.md section 6, rule 1): nothing here opens a socket or reads a clock. The adapters
(:mod:`hisp.adapters.smtp_server`, :mod:`hisp.adapters.smtp_relay`, :mod:`hisp.adapters.edge`) move bytes and
ask this module what to answer and what to do next.

- :data:`REPLIES`: every reply of our own the listeners give, by name, with its RFC 5321 code and RFC 3463
  enhanced status (the table the listeners and their tests share).
- :func:`find_bare_line_ending`: lines must end in CRLF (RFC 5321 sections 2.3.8 and 4.1.1.4).
- :func:`sender_allowed`, :func:`header_from_addresses`: an edge user sends only from its own addresses.
- :func:`check_routing`: the AS-13 envelope/header check applied to a decrypted incoming message.
- :func:`order_mx`: MX records to the hosts to try, in order (RFC 5321 section 5.1, RFC 7505 null MX).
- :func:`classify_reply`, :class:`RecipientResult`: what a reply code means for a recipient.
- :func:`hash_password`, :func:`verify_password`, :func:`parse_password_hash`: scrypt hashes for edge users
  (``hisp user add``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
import random
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32

from hisp.addresses import mailbox_pairs
from hisp.core.notify import header_fields
from hisp.errors import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    PolicyViolation,
    TransientDeliveryError,
)

__all__ = [
    "MAX_HEADER_BYTES",
    "REPLIES",
    "DeliveryOutcome",
    "MxHost",
    "PasswordHash",
    "RecipientResult",
    "Reply",
    "check_routing",
    "classify_reply",
    "find_bare_line_ending",
    "hash_password",
    "header_from_addresses",
    "normalize_mailbox",
    "order_mx",
    "parse_password_hash",
    "parse_reply",
    "sender_allowed",
    "verify_password",
]


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: basic code, enhanced status and text.

    :ivar code: RFC 5321 section 4.2 reply code, e.g. ``550``.
    :ivar status: RFC 3463 enhanced status code, e.g. ``"5.1.1"``.
    :ivar text: one line for a person (no CR or LF).

    Spec: RFC 5321 section 4.2; RFC 2034 / RFC 3463 (enhanced status codes).
    """

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def success(self) -> bool:
        """A 2xx reply."""
        return 200 <= self.code < 300


#: The replies of our own, by name. ``{hostname}``-free so that they are constants; see the module docstring.
REPLIES: dict[str, Reply] = {
    # RFC 5321 section 3.6.2 and 7.1: no open relay; section 4.2.2: 550 mailbox unavailable.
    "no_relay": Reply(550, "5.1.1", "No such user here: we do not relay for this address"),
    # RFC 3463 X.7.1: delivery not authorized; the authenticated user does not own the sender address.
    "sender_not_owned": Reply(550, "5.7.1", "Sender address is not one of the authenticated user's addresses"),
    "header_from_not_owned": Reply(550, "5.7.1", "From header is not one of the authenticated user's addresses"),
    # RFC 4954 section 6: 535 5.7.8 authentication credentials invalid.
    "auth_failed": Reply(535, "5.7.8", "Authentication credentials invalid"),
    # RFC 1870 section 6.1 / RFC 3463 X.3.4: message too big for system.
    "too_big": Reply(552, "5.3.4", "Message size exceeds fixed maximum message size"),
    # RFC 5321 sections 2.3.8 and 4.1.1.4: lines end in CRLF; bare LF is not accepted.
    "bare_line_ending": Reply(554, "5.6.0", "Bare LF or CR in message; lines must end with CRLF (RFC 5321 2.3.8)"),
    # RFC 5321 section 4.5.3.1.6: text lines at most 1000 octets with CRLF.
    "line_too_long": Reply(500, "5.5.2", "Line too long (RFC 5321 4.5.3.1.6: 1000 octets with CRLF)"),
    # RFC 5321 section 4.5.3.1.4: command lines at most 512 octets.
    "command_too_long": Reply(500, "5.5.2", "Command line too long (RFC 5321 4.5.3.1.4: 512 octets)"),
    # RFC 5321 section 4.5.3.1.10: 452 too many recipients.
    "too_many_recipients": Reply(452, "4.5.3", "Too many recipients"),
    # RFC 3207 section 4: 530 must issue STARTTLS first.
    "starttls_first": Reply(530, "5.7.0", "Must issue a STARTTLS command first"),
    # RFC 5321 section 3.8: 421 when the service must close the channel.
    "too_many_connections": Reply(421, "4.7.0", "Too many connections, try again later"),
    # Our own failure, details only in our log (RFC 5321 4.2.2: 451 local error in processing).
    "temporary_failure": Reply(451, "4.3.0", "Temporary local problem, try again later"),
    "malformed_address": Reply(553, "5.1.3", "Malformed address"),
}

#: Header section bytes read to find the From field (the rest of a message is never parsed here).
MAX_HEADER_BYTES = 256 * 1024

_REPLY = re.compile(r"^([245])(\d\d)(?: ([245]\.\d{1,3}\.\d{1,3}))?(?: (.*))?$", re.DOTALL)


def parse_reply(text: str) -> Reply:
    """Parse a single reply line such as ``"250 2.0.0 queued as X"`` (enhanced status optional).

    :param text: one reply line without CRLF.
    :returns: the reply; without an enhanced status one is made from the code's class (``x.0.0``).
    :raises ValueError: not a well-formed 2xx/4xx/5xx reply line, or it contains CR or LF.

    Spec: RFC 5321 section 4.2 (reply-line); RFC 3463 section 2.
    """
    if "\r" in text or "\n" in text:
        raise ValueError("an SMTP reply line must not contain CR or LF")
    match = _REPLY.match(text)
    if match is None:
        raise ValueError(f"not an SMTP reply line: {text[:80]!r}")
    code = int(match.group(1) + match.group(2))
    status = match.group(3) or f"{match.group(1)}.0.0"
    return Reply(code, status, match.group(4) or "")


def find_bare_line_ending(data: bytes) -> int:
    """The offset of the first CR not followed by LF or LF not preceded by CR, or -1 when there is none.

    :param data: message data as received (after the end-of-data line was removed).
    :returns: the offset, or -1.

    Spec: RFC 5321 section 2.3.8 ("the CR and LF ... MUST only occur together as CRLF") and section 4.1.1.4
    (servers MUST NOT accept lines ending in LF only).
    """
    lf_count = data.count(b"\n")
    if lf_count == data.count(b"\r") == data.count(b"\r\n"):
        return -1  # every CR and every LF is part of a CRLF: the common case, three C-speed counts
    start = 0
    while True:
        lf = data.find(b"\n", start)
        if lf == -1:
            break
        if lf == 0 or data[lf - 1] != 0x0D:
            return lf
        start = lf + 1
    start = 0
    while True:
        cr = data.find(b"\r", start)
        if cr == -1:
            return -1
        if cr + 1 >= len(data) or data[cr + 1] != 0x0A:
            return cr
        start = cr + 1


def normalize_mailbox(text: str) -> str:
    """An envelope address compared case-insensitively: ``<Dr.A@Example.org>`` -> ``dr.a@example.org``.

    The null reverse-path ``<>`` becomes ``""``.

    :param text: the address as given in MAIL FROM / RCPT TO or configuration.
    :returns: the lower-cased address without angle brackets.

    Spec: RFC 5321 section 4.1.2 (Path); AS-2 (addresses compare case-insensitively).
    """
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.strip().lower()


def sender_allowed(allowed: Collection[str], address: str) -> bool:
    """Whether an edge user owning ``allowed`` addresses may use ``address`` as sender.

    :param allowed: the user's addresses, already normalised by :func:`normalize_mailbox`.
    :param address: the MAIL FROM or From header address; the null sender is never allowed to an edge user.
    :returns: True when it is one of them.

    Spec: RFC 6409 section 6.1 (submission servers may check the sender); Direct: the HISP signs with the
    sender's credential, so only its owner may use it.
    """
    candidate = normalize_mailbox(address)
    return bool(candidate) and candidate in allowed


def header_from_addresses(raw: bytes, *, limit: int = MAX_HEADER_BYTES) -> tuple[str, ...]:
    """The addresses of the From header fields of a message, normalised.

    Only the header section (at most ``limit`` bytes) is parsed; the message bytes are not changed.

    :param raw: the message as received.
    :param limit: header section bytes read (bytes).
    :returns: every address in every From field (normally one), in order; empty when there is none.

    Spec: RFC 5322 section 3.6.2 (From), section 2.2 (header fields end at the first empty line).
    """
    if limit == MAX_HEADER_BYTES:
        # the fields of the same section as the notification rules read (remembered: the pipeline reads it next)
        fields = [value for name, value in header_fields(raw) if name.lower() == "from"]
    else:
        end = raw.find(b"\r\n\r\n", 0, limit)
        head = raw[:limit] if end == -1 else raw[: end + 2]
        message = BytesHeaderParser(policy=compat32).parsebytes(head)
        fields = [str(value) for value in message.get_all("From", [])]
    return tuple(normalize_mailbox(addr) for _, addr in mailbox_pairs(fields) if addr)


def check_routing(
    mail_from: str,
    recipients: Sequence[str],
    headers: Iterable[tuple[str, str]],
    *,
    allow_null_sender: bool = False,
) -> None:
    """The AS-13 routing/tamper check of a decrypted incoming message: envelope and protected headers agree.

    MAIL FROM must equal the inner From or Sender, every RCPT must be in the inner To or Cc, and the inner
    message must have no Bcc field (a Bcc recipient would be revealed to the others or mis-routed).

    :param mail_from: the envelope sender (``""`` for the null reverse-path).
    :param recipients: the envelope recipients accepted for this message.
    :param headers: the inner (wrapped, signed) message's header fields as (name, value).
    :param allow_null_sender: accept the null reverse-path (DSNs, RFC 5321 section 4.5.5) without the From match.
    :raises PolicyViolation: when a rule is broken (554 5.7.1), naming the rule.

    Spec: AS-13 (Direct Applicability Statement: envelope recipients and sender match the protected headers).
    """
    fields: dict[str, list[str]] = {}
    for name, value in headers:
        fields.setdefault(name.strip().lower(), []).append(str(value))
    if fields.get("bcc"):
        raise PolicyViolation("AS-13: the protected message has a Bcc field", rule="bcc")
    senders = {normalize_mailbox(a) for _, a in mailbox_pairs(fields.get("from", []) + fields.get("sender", [])) if a}
    sender = normalize_mailbox(mail_from)
    if not (sender == "" and allow_null_sender) and sender not in senders:
        raise PolicyViolation(
            f"AS-13: MAIL FROM {mail_from!r} is not the protected From or Sender", rule="sender", mail_from=mail_from
        )
    listed = {normalize_mailbox(a) for _, a in mailbox_pairs(fields.get("to", []) + fields.get("cc", [])) if a}
    for recipient in recipients:
        if normalize_mailbox(recipient) not in listed:
            raise PolicyViolation(
                f"AS-13: RCPT {recipient!r} is not in the protected To or Cc", rule="recipient", recipient=recipient
            )


@dataclass(frozen=True)
class MxHost:
    """One mail exchanger to try.

    :ivar name: host name, lower-case, without the trailing dot.
    :ivar preference: the MX preference (lower first); 0 for the implicit MX.
    :ivar implicit: True when the domain has no MX and its own address records are used.

    Spec: RFC 5321 section 5.1.
    """

    name: str
    preference: int
    implicit: bool = False


def order_mx(
    domain: str, records: Sequence[tuple[int, str]], *, rng: random.Random | None = None, limit: int = 10
) -> tuple[MxHost, ...]:
    """The hosts to try for ``domain``, in order: by preference, equal preferences in random order.

    :param domain: the recipient domain.
    :param records: the MX records as (preference, exchange name); empty when the domain has none (NODATA),
        in which case the domain itself is the implicit MX.
    :param rng: the random source for equal preferences (a seeded one in tests); None uses :mod:`random`.
    :param limit: at most this many hosts (RFC 5321 section 5.1 lets a client cap the list).
    :returns: the hosts, at least one.
    :raises PermanentDeliveryError: the domain publishes a null MX (it accepts no mail).

    Spec: RFC 5321 section 5.1 (MX order, random among equals, implicit MX); RFC 7505 section 3 (null MX).
    """
    names = [(pref, name.rstrip(".").lower()) for pref, name in records]
    if any(name == "" for _, name in names):
        raise PermanentDeliveryError(
            f"{domain} publishes a null MX: it accepts no mail (RFC 7505)", domain=domain, status="5.1.10"
        )
    if not names:
        return (MxHost(domain.rstrip(".").lower(), 0, implicit=True),)
    chooser = rng or random.Random()
    ranked = sorted(names, key=lambda item: (item[0], chooser.random()))
    seen: set[str] = set()
    hosts: list[MxHost] = []
    for pref, name in ranked:
        if name not in seen:
            seen.add(name)
            hosts.append(MxHost(name, pref))
    return tuple(hosts[:limit])


class DeliveryOutcome(enum.Enum):
    """What happened to one recipient."""

    DELIVERED = "delivered"
    TRANSIENT = "transient"  # retry on the queue's schedule
    PERMANENT = "permanent"  # bounce with a DSN


def classify_reply(code: int) -> DeliveryOutcome:
    """The outcome a reply code means for a recipient: 2xx delivered, 4xx transient, 5xx (and others) permanent.

    :param code: the three-digit reply code.
    :returns: the outcome.

    Spec: RFC 5321 section 4.2.1 (reply code classes).
    """
    if 200 <= code < 300:
        return DeliveryOutcome.DELIVERED
    if 400 <= code < 500:
        return DeliveryOutcome.TRANSIENT
    return DeliveryOutcome.PERMANENT


@dataclass(frozen=True)
class RecipientResult:
    """The result of relaying or delivering to one recipient.

    :ivar recipient: the envelope recipient.
    :ivar error: None when delivered; :class:`~hisp.errors.TransientDeliveryError` (4xx, connection failure,
        timeout) or :class:`~hisp.errors.PermanentDeliveryError` (5xx) otherwise, with the server's reply text.
    :ivar reply: the server's last reply for this recipient (``"250 2.0.0 Ok"``), or our description of
        a failure without one (connection refused, timeout).
    :ivar host: the host (MX name, endpoint) that gave the reply, or None.

    Spec: RFC 5321 section 4.2.1; RFC 3464 (what a DSN reports per recipient).
    """

    recipient: str
    error: DeliveryError | None
    reply: str
    host: str | None = None

    @property
    def outcome(self) -> DeliveryOutcome:
        """Delivered, transient or permanent."""
        if self.error is None:
            return DeliveryOutcome.DELIVERED
        if isinstance(self.error, TransientDeliveryError):
            return DeliveryOutcome.TRANSIENT
        return DeliveryOutcome.PERMANENT

    @property
    def delivered(self) -> bool:
        """True when delivered."""
        return self.error is None


# -- passwords -------------------------------------------------------------------------------------------

#: scrypt cost: N=2**15, r=8, p=1 uses 32 MiB and about 0.1 s per check (RFC 7914 section 2 recommends
#: N=2**20 for file encryption; interactive logins use the lower figure, as OWASP's guidance does).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
_SALT_BYTES, _HASH_BYTES = 16, 32


def hash_password(password: str | bytes, *, salt: bytes | None = None) -> str:
    """A password hash for the configuration: ``scrypt$N$r$p$salt$hash`` (salt and hash in base64).

    :param password: the password (str is encoded as UTF-8).
    :param salt: 16 random bytes; None draws them from :func:`os.urandom` (give one only in tests).
    :returns: the hash string, ASCII, which :func:`parse_password_hash` accepts.
    :raises ValueError: an empty password, or a salt that is not 16 bytes.

    Spec: RFC 7914 (scrypt); RFC 4954 section 4 (the server checks the credentials).
    """
    secret = password.encode("utf-8") if isinstance(password, str) else password
    if not secret:
        raise ValueError("an empty password cannot be hashed")
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    if len(salt) != _SALT_BYTES:
        raise ValueError(f"the salt must be {_SALT_BYTES} bytes, not {len(salt)}")
    digest = hashlib.scrypt(
        secret, salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, maxmem=_SCRYPT_MAXMEM, dklen=_HASH_BYTES
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


@dataclass(frozen=True)
class PasswordHash:
    """A parsed ``scrypt$N$r$p$salt$hash`` string (see :func:`parse_password_hash`).

    :ivar n: scrypt CPU/memory cost, a power of two.
    :ivar r: scrypt block size.
    :ivar p: scrypt parallelisation.
    :ivar salt: the salt, as many bytes as :func:`hash_password` draws (16).
    :ivar digest: the derived key, as many bytes as :func:`hash_password` makes (32).

    Spec: RFC 7914 section 2 (parameters N, r, p, dkLen).
    """

    n: int
    r: int
    p: int
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)


_DECIMAL = re.compile(r"[1-9][0-9]{0,9}")


def _b64_exact(text: str, what: str, size: int) -> bytes:
    """Strict base64 of exactly ``size`` bytes; :raises ValueError: otherwise (naming ``what``)."""
    try:
        value = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(f"the {what} is not base64") from None
    if len(value) != size:
        raise ValueError(f"the {what} decodes to {len(value)} bytes, not {size}")
    return value


def parse_password_hash(stored: str) -> PasswordHash:
    """Parse and check a password hash as :func:`hash_password` writes it: ``scrypt$N$r$p$salt$hash``.

    N, r and p must be decimal integers within the bounds this module accepts (N a power of two of at least 2,
    ``1 <= r <= 32``, ``1 <= p <= 16``, at most 64 MiB of memory); the salt must be standard base64 of 16 bytes
    and the hash standard base64 of 32 bytes, the lengths :func:`hash_password` produces. So a placeholder such
    as ``scrypt$16384$8$1$SALT$HASH`` is refused here, when the configuration is loaded, instead of making
    every login fail.

    :param stored: the hash string from the configuration.
    :returns: the parsed hash.
    :raises ValueError: it is not such a hash; the message says which part is wrong (never the secret parts).

    Spec: RFC 7914 (scrypt); RFC 4648 section 4 (base64).
    """
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not scrypt$N$r$p$salt$hash")
    if not all(_DECIMAL.fullmatch(part) for part in parts[1:4]):
        raise ValueError("the scrypt parameters N, r and p must be decimal integers")
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    if n < 2 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or 128 * r * n * p > _SCRYPT_MAXMEM:
        raise ValueError(f"scrypt cost N={n}, r={r}, p={p} is out of bounds")
    salt = _b64_exact(parts[4], "salt", _SALT_BYTES)
    digest = _b64_exact(parts[5], "hash", _HASH_BYTES)
    return PasswordHash(n, r, p, salt, digest)


def verify_password(password: str | bytes, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (made by :func:`hash_password`); the compare is constant-time.

    :param password: the password given (str is encoded as UTF-8).
    :param stored: the hash string from the configuration.
    :returns: True on a match.
    :raises ConfigError: ``stored`` is not a hash this module makes (see :func:`parse_password_hash`).

    Spec: RFC 7914 (scrypt); RFC 4954 section 4.
    """
    secret = password.encode("utf-8") if isinstance(password, str) else password
    try:
        parsed = parse_password_hash(stored)
    except ValueError as exc:
        raise ConfigError(f"not a password hash made by 'hisp user add': {exc}") from None
    digest = hashlib.scrypt(
        secret, salt=parsed.salt, n=parsed.n, r=parsed.r, p=parsed.p, maxmem=_SCRYPT_MAXMEM, dklen=len(parsed.digest)
    )
    return hmac.compare_digest(digest, parsed.digest)
