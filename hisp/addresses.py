"""Direct addresses and health domains: parse, normalise, compare (AS-1, AS-2, CD-3).

A Direct address is an RFC 5321 mailbox ``local@health.domain``. Comparison is case-insensitive in
both parts (AS-2: binding compares the whole address case-insensitively).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import getaddresses, parseaddr

from hisp.errors import AddressError

__all__ = ["DirectAddress", "HealthDomain", "bare_address", "mailbox_pairs", "parse_address_list", "simple_mailbox"]

# RFC 5321 section 4.5.3.1: local part at most 64 octets, domain at most 255, path at most 256.
_MAX_LOCAL = 64
_MAX_DOMAIN = 255
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# dot-atom local part (RFC 5322 section 3.2.3); quoted local parts are not used by Direct.
_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# A bare addr-spec: dot-atom local part, "@", dot-separated labels of letters, digits and hyphens (no spaces,
# quotes, comments, brackets or display name), for which getaddresses returns the text itself.
_PLAIN_ADDRESS = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# The usual mailbox of a header field, ``Name <local@domain>`` or ``local@domain``: a display name of ASCII words
# (atext and dots, as the stdlib's obs-phrase reading allows) separated by white space, no quotes, comments,
# groups or domain literals. For these ``email.utils.getaddresses`` gives the words joined by one space and the
# addr-spec as written (tests/property/test_mailbox_pairs.py compares the two).
_WORD = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"
_WSP = r"[ \t\r\n]"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
_SIMPLE_MAILBOX = re.compile(rf"{_WSP}*(?:({_WORD}(?:{_WSP}+{_WORD})*){_WSP}*<({_ADDR_SPEC})>|({_ADDR_SPEC})){_WSP}*")
#: The longest field text whose general (slow) parse is remembered.
_MAX_REMEMBERED_FIELDS = 1024


def simple_mailbox(text: str) -> tuple[str, str] | None:
    """``(display name, addr-spec)`` of one mailbox in the usual simple form, else ``None``.

    :param text: e.g. ``"Dr Smith <dr.smith@direct.clinic.example>"`` or ``"dr.smith@direct.clinic.example"``.
    :returns: what ``email.utils.getaddresses([text])`` gives as its only pair (the name's words joined by one
        space, ``""`` without a name); ``None`` for any other form (quotes, comments, groups, several addresses,
        non-ASCII...), which the caller hands to the stdlib parser.
    """
    match = _SIMPLE_MAILBOX.fullmatch(text)
    if match is None:
        return None
    if match.group(3) is not None:
        return ("", match.group(3))
    return (" ".join(match.group(1).split()), match.group(2))


def mailbox_pairs(values: Iterable[object]) -> list[tuple[str, str]]:
    """``email.utils.getaddresses(values)``, the same list, faster for the usual forms.

    Field values whose every comma-separated piece is a :func:`simple_mailbox` are read with one regular
    expression; anything else goes to ``getaddresses`` (its result for a text of at most 1 KiB remembered: a
    message's From, To and recipients recur along its way). The stdlib's exceptions on hostile input propagate.

    :param values: header field values (``str``, or what ``str()`` makes one of, as ``getaddresses`` takes).
    :returns: ``(display name, address)`` pairs, in order; a new list each call.
    """
    text = ", ".join(str(value) for value in values)
    pairs: list[tuple[str, str]] = []
    for piece in text.split(","):
        pair = simple_mailbox(piece)
        if pair is None:
            if len(text) <= _MAX_REMEMBERED_FIELDS:
                return list(_remembered_getaddresses(text))
            return getaddresses([text])
        pairs.append(pair)
    return pairs


@functools.lru_cache(maxsize=256)
def _remembered_getaddresses(text: str) -> tuple[tuple[str, str], ...]:
    """``getaddresses([text])``, remembered by the text (a pure function of it)."""
    return tuple(getaddresses([text]))


def bare_address(text: str) -> str:
    """``email.utils.parseaddr(text)[1]``, without the stdlib parser for a :func:`simple_mailbox`."""
    pair = simple_mailbox(text)
    return pair[1] if pair is not None else parseaddr(text)[1]


@dataclass(frozen=True)
class HealthDomain:
    """A health domain name, stored lower-case without a trailing dot.

    :ivar name: e.g. ``"direct.clinic.example"``.
    """

    name: str

    @classmethod
    def parse(cls, text: str) -> HealthDomain:
        """Parse and normalise a domain name.

        :param text: e.g. ``"Direct.Clinic.Example."``.
        :raises AddressError: when it is not a valid DNS host name (RFC 1123 section 2.1).
        """
        if cls is HealthDomain and type(text) is str and len(text) <= _MAX_DOMAIN:
            return _parse_domain(text)  # the same few domains recur: parsed once (HealthDomain is immutable)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> HealthDomain:
        name = text.strip().rstrip(".").lower()
        if not name or len(name) > _MAX_DOMAIN or "." not in name:
            raise AddressError(f"not a valid health domain: {text!r}", domain=text)
        if not all(_LABEL.match(label) for label in name.split(".")):
            raise AddressError(f"not a valid health domain: {text!r}", domain=text)
        return cls(name)

    def dns_name(self) -> str:
        """The DNS owner name of domain-bound CERT records (CD-3), absolute: ``"example.org."``."""
        return self.name + "."

    def __str__(self) -> str:
        return self.name


@functools.lru_cache(maxsize=1024)
def _parse_domain(text: str) -> HealthDomain:
    """``HealthDomain._parse(text)``, remembered by the text (failures raise and are not remembered)."""
    return HealthDomain._parse(text)


@dataclass(frozen=True)
class DirectAddress:
    """A Direct address, compared case-insensitively (AS-2).

    :ivar local: the local part, lower-case.
    :ivar domain: the health domain.
    """

    local: str
    domain: HealthDomain

    @classmethod
    def parse(cls, text: str) -> DirectAddress:
        """Parse ``local@domain``, optionally inside ``<...>`` or with a display name.

        :param text: e.g. ``"Dr A <Dr.A@Direct.Clinic.Example>"``.
        :raises AddressError: when there is not exactly one valid address.
        """
        if cls is DirectAddress and type(text) is str and len(text) <= _MAX_REMEMBERED:
            # the same few addresses recur (From, To, the SMTP envelope): parsed once (DirectAddress is immutable)
            return _parse_address(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> DirectAddress:
        plain = _PLAIN_ADDRESS.fullmatch(text)
        if plain is not None and len(plain.group(1)) <= _MAX_LOCAL:
            # A bare local@domain, as nearly every From is: getaddresses would return it unchanged.
            try:
                return cls(plain.group(1).lower(), HealthDomain.parse(plain.group(2)))
            except AddressError:
                pass  # the general path below decides, and words the error
        candidates = [addr for _, addr in mailbox_pairs([text]) if addr]
        if len(candidates) != 1:
            raise AddressError(f"not a single e-mail address: {text!r}", address=text)
        local, sep, domain = candidates[0].rpartition("@")
        if not sep or not local or len(local) > _MAX_LOCAL or not _LOCAL.match(local):
            raise AddressError(f"not a valid Direct address: {text!r}", address=text)
        return cls(local.lower(), HealthDomain.parse(domain))

    def dns_name(self) -> str:
        """The DNS owner name of address-bound CERT records (CD-3): ``user@example.org`` -> ``user.example.org.``."""
        return f"{self.local}.{self.domain.dns_name()}"

    def __str__(self) -> str:
        return f"{self.local}@{self.domain.name}"


#: The longest text :meth:`DirectAddress.parse` remembers (a header value can be far longer; those are parsed anew).
_MAX_REMEMBERED = 512


@functools.lru_cache(maxsize=1024)
def _parse_address(text: str) -> DirectAddress:
    """``DirectAddress._parse(text)``, remembered by the text (failures raise and are not remembered)."""
    return DirectAddress._parse(text)


def parse_address_list(values: list[str]) -> list[DirectAddress]:
    """Parse every address of some header values (To, Cc), skipping empty groups.

    :param values: raw header values, e.g. ``["a@x.org, B <b@y.org>"]``.
    :returns: the addresses in order.
    :raises AddressError: when one of them is not valid.
    """
    out: list[DirectAddress] = []
    for _, addr in mailbox_pairs(values):
        if addr:
            out.append(DirectAddress.parse(addr))
    return out
