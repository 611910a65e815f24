"""Canonical, bounded MIME for Direct: parse, canonicalise, wrap, and build or split S/MIME layers.

Everything here works on bytes and is pure (no I/O). The stdlib ``email`` package is never used: every
byte that is signed or verified is sliced from the input or written by this module ("signed bytes are
sacred", DESIGN.md section 3). ``email.generator`` refolds headers when it re-renders an entity
(CPython issues 99533 and 153822) and so breaks signatures; nothing here re-renders a header.

* :func:`parse_entity` splits one entity into its header block and body, within :class:`MimeLimits`.
* :func:`check_structure` walks a whole MIME tree (depth and part-count caps).
* :func:`canonicalize` writes the form to sign (AS-16): CRLF everywhere, 7-bit-safe encodings.
* :func:`wrap` / :func:`unwrap` protect headers with message/rfc822 (AS-12, RFC 8551 section 3.1).
* :func:`build_multipart_signed` / :func:`split_multipart_signed` write and read the signed layer
  (RFC 1847, RFC 8551 section 3.5.3) on raw bytes.
* :func:`build_enveloped_message` writes the outgoing Direct message (AS-7, requirements section 8.1).

All malformed or oversized input raises :class:`~hisp.errors.MessageFormatError` carrying the tolerated
oddities seen so far in ``.defects``; no other exception escapes on hostile input.
"""

from __future__ import annotations

import binascii
import functools
import io
import itertools
import re
import secrets
import struct
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import pybase64

from hisp.core.policy import DigestAlgorithm
from hisp.errors import ConfigError, MessageFormatError

__all__ = [
    "ContentType",
    "Entity",
    "MimeLimits",
    "SignedParts",
    "build_enveloped_message",
    "build_multipart_signed",
    "canonicalize",
    "check_structure",
    "decode_body",
    "header_params",
    "parse_entity",
    "smime_type",
    "split_multipart_signed",
    "unwrap",
    "wrap",
]

CRLF = b"\r\n"
_BOM = b"\xef\xbb\xbf"
# RFC 5322 section 2.1.1: a line is at most 998 octets, excluding the CRLF.
_MAX_LINE = 998
# RFC 5322 section 2.1.1: lines SHOULD be at most 78 characters.
_FOLD_AT = 78

# A blank line: two line endings in a row, each CRLF, LF or a bare CR (as _to_crlf counts them).
_HEADER_END = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 section 3.6.8: printable ASCII except ":"
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+"  # RFC 2045 section 5.1 token
_TYPE = re.compile(rf"\s*({_TOKEN})\s*/\s*({_TOKEN})\s*")
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_SEGMENT = re.compile(r'(?:"(?:[^"\\]|\\.)*(?:"|\\?$)|[^;"]+)+', re.DOTALL)
_CONTINUATION = re.compile(r"^(.+?)\*(\d{1,4})(\*?)$|^(.+?)(\*)$")
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_WHITESPACE = b" \t\r\n\x0b\x0c"
_WIDE_CHARSETS = ("utf-16", "utf-32", "ucs-2", "ucs-4", "ucs2", "ucs4")

_SMIME_TYPES = {
    "enveloped-data": "enveloped-data",
    "signed-data": "signed-data",
    "authenveloped-data": "authEnveloped-data",
    "certs-only": "certs-only",
    "compressed-data": "compressed-data",
}
_PKCS7_MIME = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_PKCS7_SIGNATURE = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
# AS-12: the header fields copied to the outer (unprotected) header of a wrapped message.
_WRAP_HEADERS = ("from", "to", "cc", "date", "message-id", "in-reply-to", "references", "mime-version")
_ENVELOPE_OWN_HEADERS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})

# Defect names (short, stable strings; recorded, never raised).
DEFECT_BOM = "UTF-8 byte order mark stripped"
DEFECT_BARE_LF = "bare LF line endings"
DEFECT_NO_SEPARATOR = "no blank line between header and body"
DEFECT_LONG_HEADER_LINE = "header line longer than 998 octets"
DEFECT_NON_ASCII_HEADER = "non-ASCII bytes in header"
DEFECT_NO_COLON = "header line without colon"
DEFECT_BAD_NAME = "invalid header field name"
DEFECT_SPACE_BEFORE_COLON = "whitespace before colon in header field name"
DEFECT_LEADING_CONTINUATION = "continuation line before the first header field"
DEFECT_DUPLICATE_CONTENT_TYPE = "more than one Content-Type header"
DEFECT_BAD_CONTENT_TYPE = "invalid Content-Type, treated as text/plain"
DEFECT_NO_CLOSE_DELIMITER = "multipart without closing delimiter"
DEFECT_NO_PARTS = "multipart with no body parts"
DEFECT_ENCODED_COMPOSITE = "composite type with base64 or quoted-printable transfer encoding"


@dataclass(frozen=True)
class MimeLimits:
    """Bounds on untrusted MIME input (DESIGN.md section 6.3).

    :ivar max_message_bytes: largest message accepted, in bytes (64 MiB: a 25 MB referral, base64-encoded
        and encrypted, with room to spare).
    :ivar max_depth: deepest nesting of multipart and message/rfc822 entities; the top entity is depth 0.
    :ivar max_parts: most entities in one MIME tree, the top entity included.
    :ivar max_header_bytes: largest header block of one entity, in bytes.
    :ivar max_headers: most header fields in one entity.
    :raises ConfigError: a limit is not a positive integer.

    Spec: RFC 2046 section 5.1 (nesting), RFC 5322 section 2.1.1.
    """

    max_message_bytes: int = 64 * 1024 * 1024
    max_depth: int = 16
    max_parts: int = 1000
    max_header_bytes: int = 256 * 1024
    max_headers: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_depth", "max_parts", "max_header_bytes", "max_headers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"MimeLimits.{name} must be a positive integer, not {value!r}")


_DEFAULT_LIMITS = MimeLimits()


@dataclass(frozen=True)
class ContentType:
    """A parsed Content-Type header field.

    :ivar maintype: the top-level media type, lower case (``"application"``).
    :ivar subtype: the subtype, lower case (``"pkcs7-mime"``).
    :ivar params: parameters: names lower case, values unquoted, RFC 2231 continuations joined and
        decoded. The first occurrence of a repeated parameter wins.

    Spec: RFC 2045 section 5, RFC 2231 sections 3-4.
    """

    maintype: str
    subtype: str
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def mime_type(self) -> str:
        """``maintype/subtype``, lower case, e.g. ``"application/pkcs7-mime"``."""
        return f"{self.maintype}/{self.subtype}"

    @classmethod
    def parse(cls, value: str | None) -> ContentType:
        """Parse a Content-Type field value, tolerantly.

        Accepts parameters in any order, quoted or not, folded (CRLF plus whitespace), stray or repeated
        parameters, comments, and missing spaces. A missing or unparsable type gives ``text/plain;
        charset=us-ascii`` (RFC 2045 section 5.2). Never raises.

        :param value: the field value (after the colon), folded or unfolded; ``None`` for an absent field.
        :returns: the content type.

        Spec: RFC 2045 sections 5.1-5.2, RFC 2231.
        """
        if not isinstance(value, str):
            return _DEFAULT_CONTENT_TYPE
        if cls is ContentType and type(value) is str and len(value) <= _CONTENT_TYPE_CACHE_VALUE:
            return _parse_content_type(value)
        return cls._parse(value)

    @classmethod
    def _parse(cls, value: str) -> ContentType:
        text = re.sub(r"\r\n|\n|\r", "", value)
        head, _, rest = text.partition(";")
        match = _TYPE.fullmatch(_COMMENT.sub("", head))
        if match is None:
            return _DEFAULT_CONTENT_TYPE
        return cls(match.group(1).lower(), match.group(2).lower(), MappingProxyType(_parse_params(rest)))


#: Content-Type values are few (a peer's envelope, ``message/rfc822``, its signature part, ...): short ones are
#: parsed once. A ContentType is immutable (its params a read-only mapping), so one object serves every use.
_CONTENT_TYPE_CACHE_VALUE = 512


@functools.lru_cache(maxsize=256)
def _parse_content_type(value: str) -> ContentType:
    """``ContentType._parse(value)``, remembered by the value."""
    return ContentType._parse(value)


_DEFAULT_CONTENT_TYPE = ContentType("text", "plain", MappingProxyType({"charset": "us-ascii"}))


def header_params(value: str) -> dict[str, str]:
    """The parameters of a structured header field value such as Content-Type or Content-Disposition.

    Everything before the first ``;`` (the type or disposition) is ignored.

    :param value: the field value, folded or not.
    :returns: parameter names (lower case) to unquoted values, RFC 2231 continuations joined. Never raises.

    Spec: RFC 2045 section 5.1, RFC 2183 section 2, RFC 2231.
    """
    text = re.sub(r"\r\n|\n|\r", "", value)
    return _parse_params(text.partition(";")[2])


def _unquote(value: str) -> str:
    if value.startswith('"'):
        closed = len(value) > 1 and value.endswith('"') and not value.endswith('\\"')
        inner = value[1:-1] if closed else value[1:]
        return re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL)
    return value


def _decode_2231(value: str, charset: str | None) -> str:
    raw = urllib.parse.unquote_to_bytes(value)
    for encoding in (charset or "utf-8", "utf-8", "latin-1"):
        try:
            return raw.decode(encoding)
        except (LookupError, UnicodeDecodeError, ValueError):
            continue
    return raw.decode("latin-1")  # pragma: no cover - latin-1 decodes anything


def _parse_params(text: str) -> dict[str, str]:
    simple: dict[str, str] = {}
    # RFC 2231 pieces: name -> {index: (value, extended)}
    pieces: dict[str, dict[int, tuple[str, bool]]] = {}
    for match in _SEGMENT.finditer(text):
        segment = match.group(0).strip()
        name, eq, raw_value = segment.partition("=")
        name = _COMMENT.sub("", name).strip().lower()
        if not eq or not name or not _FIELD_NAME.fullmatch(name):
            continue
        value = raw_value.strip()
        continuation = _CONTINUATION.match(name)
        if continuation is not None:
            if continuation.group(1) is not None:
                base = continuation.group(1)
                index, extended = int(continuation.group(2)), bool(continuation.group(3))
            else:
                base, index, extended = continuation.group(4), 0, True
            slots = pieces.setdefault(base, {})
            if index not in slots:
                slots[index] = (value if extended else _unquote(value), extended)
            continue
        if name not in simple:
            simple[name] = _unquote(value)
    for base, slots in pieces.items():
        charset: str | None = None
        parts: list[str] = []
        order = sorted(slots)
        for index in order:
            value, extended = slots[index]
            if extended:
                if index == order[0]:
                    value = _unquote(value)
                    fields = value.split("'", 2)
                    if len(fields) == 3:
                        charset, value = fields[0] or None, fields[2]
                parts.append(_decode_2231(value, charset))
            else:
                parts.append(value)
        # RFC 2231 parameters take precedence over a plain fallback of the same name.
        simple[base] = "".join(parts)
    return simple


@dataclass(frozen=True, init=False)
class Entity:
    """One MIME entity exactly as received.

    ``raw == header_block + <blank line> + body`` holds, byte for byte.

    :ivar raw: the exact bytes of the entity (a leading UTF-8 BOM, if any, removed).
    :ivar header_block: the exact header bytes including the line ending of the last header line, without
        the blank line.
    :ivar headers: unfolded ``(name, value)`` pairs in order; names as received, values stripped of
        surrounding whitespace, decoded from UTF-8 (Latin-1 when not valid UTF-8).
    :ivar body: the exact body bytes (sliced from ``raw`` on first use: a large entity whose body is not
        needed is never copied).
    :ivar content_type: the parsed Content-Type (``text/plain`` when absent).
    :ivar defects: tolerated oddities, as short strings.

    Spec: RFC 5322 sections 2.1-2.2, RFC 2045.
    """

    raw: bytes
    header_block: bytes
    headers: tuple[tuple[str, str], ...]
    content_type: ContentType
    defects: tuple[str, ...]
    _body_start: int = field(repr=False)
    _body: bytes | None = field(default=None, repr=False, compare=False)

    def __init__(
        self,
        raw: bytes,
        header_block: bytes,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        content_type: ContentType,
        defects: tuple[str, ...] = (),
    ) -> None:
        self._set(raw, header_block, headers, len(raw) - len(body), content_type, defects, body)

    def _set(
        self,
        raw: bytes,
        header_block: bytes,
        headers: tuple[tuple[str, str], ...],
        body_start: int,
        content_type: ContentType,
        defects: tuple[str, ...],
        body: bytes | None,
    ) -> None:
        for name, value in (
            ("raw", raw),
            ("header_block", header_block),
            ("headers", headers),
            ("content_type", content_type),
            ("defects", defects),
            ("_body_start", body_start),
            ("_body", body),
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def _lazy(
        cls,
        raw: bytes,
        header_block: bytes,
        headers: tuple[tuple[str, str], ...],
        body_start: int,
        content_type: ContentType,
        defects: tuple[str, ...],
    ) -> Entity:
        """An entity whose body is ``raw[body_start:]``, sliced only when :attr:`body` is first read."""
        entity = cls.__new__(cls)
        entity._set(raw, header_block, headers, body_start, content_type, defects, raw if body_start == 0 else None)
        return entity

    @property
    def body(self) -> bytes:
        """The exact body bytes."""
        body = self._body
        if body is None:
            body = self.raw[self._body_start :]
            object.__setattr__(self, "_body", body)
        return body

    def _body_view(self) -> memoryview:
        """The body without a copy."""
        return memoryview(self.raw)[self._body_start :]

    def header(self, name: str) -> str | None:
        """The value of the first field called ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        for field_name, value in self.headers:
            if field_name.lower() == wanted:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        """Values of every field called ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for field_name, value in self.headers if field_name.lower() == wanted]

    @property
    def transfer_encoding(self) -> str:
        """The Content-Transfer-Encoding, lower case, ``"7bit"`` when absent (RFC 2045 section 6.1)."""
        return _transfer_encoding(self.header("Content-Transfer-Encoding"))


def _transfer_encoding(value: str | None) -> str:
    if value is None:
        return "7bit"
    return _transfer_encoding_of(value)


@functools.lru_cache(maxsize=256)
def _transfer_encoding_of(value: str) -> str:
    """:func:`_transfer_encoding` of a field's value (a pure function of it, remembered: a few values recur)."""
    cleaned = _COMMENT.sub("", value).partition(";")[0].strip().strip('"').strip().lower()
    return cleaned or "7bit"


def _error(message: str, defects: Sequence[str], **context: object) -> MessageFormatError:
    return MessageFormatError(message, defects=tuple(defects), **context)


def _decode_header_text(raw: bytes) -> str:
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _split_header_block(
    raw: bytes, limits: MimeLimits, defects: list[str], start: int = 0, end: int | None = None
) -> tuple[int, int]:
    """Return (end of header block, start of body) offsets in ``raw`` for the entity ``raw[start:end]``."""
    if end is None:
        end = len(raw)
    if raw.startswith(b"\r\n", start, end):
        return start, start + 2
    if raw[start : start + 1] in (b"\n", b"\r") and start < end:
        return start, start + 1
    search_end = min(end, start + limits.max_header_bytes + 4)
    found = _find_header_end(raw, start, search_end)
    if found is None:
        if end - start > limits.max_header_bytes:
            raise _error(
                f"header block exceeds the limit of {limits.max_header_bytes} bytes",
                defects,
                limit=limits.max_header_bytes,
            )
        if end > start:
            defects.append(DEFECT_NO_SEPARATOR)
        return end, end
    match_start, match_end = found
    # Keep the last header line's line ending in the header block.
    newline_length = 2 if raw[match_start : match_start + 2] == b"\r\n" else 1
    header_end = match_start + newline_length
    if header_end - start > limits.max_header_bytes:
        raise _error(
            f"header block exceeds the limit of {limits.max_header_bytes} bytes",
            defects,
            limit=limits.max_header_bytes,
        )
    return header_end, match_end


def _find_header_end(raw: bytes, start: int, end: int) -> tuple[int, int] | None:
    """The span of the first ``_HEADER_END`` match in ``raw[start:end]``, or None.

    Without a bare CR before it, a blank line is an LF followed by LF or CRLF (with the CR before that first LF,
    if any): ``bytes.find`` jumps from line to line in C, where the regex would try every position (the search
    never reads past the header, however large the body). After :data:`_HEADER_LINES_FOUND` lines, or with a
    bare CR before the blank line, the regex decides.
    """
    crlf2 = raw.find(b"\r\n\r\n", start, end)
    if (
        crlf2 != -1
        and raw.find(b"\n\r\n", start, crlf2 + 2) == -1  # one ending before this CRLF CRLF's second CRLF
        and raw.find(b"\n\n", start, crlf2 + 2) == -1
        and _BARE_CR.search(raw, start, crlf2 + 2) is None
    ):
        # CRLF line endings: the first CRLF CRLF is the first blank line when no LF-ended or bare-CR-ended line
        # comes before it (those are what could end an earlier one)
        return crlf2, crlf2 + 4
    pos = start
    for _ in range(_HEADER_LINES_FOUND):
        position = raw.find(b"\n", pos, end)
        if position == -1:
            break
        if raw.startswith(b"\n", position + 1, end):
            length = 2
        elif raw.startswith(b"\r\n", position + 1, end):
            length = 3
        else:
            pos = position + 1
            continue
        if _BARE_CR.search(raw, start, position + 1) is not None:
            break  # a bare CR may end a line (or a blank line) before it
        match_start = position - 1 if position > start and raw[position - 1] == 0x0D else position
        return match_start, position + length
    return _regex_header_end(raw, start, end)


#: Header lines :func:`_find_header_end` steps over before leaving the search to the regex (bounded work).
_HEADER_LINES_FOUND = 64


def _regex_header_end(raw: bytes, start: int, end: int) -> tuple[int, int] | None:
    match = _HEADER_END.search(raw, start, end)
    return None if match is None else match.span()


def _header_fields(header_block: bytes) -> list[bytes]:
    """Group the header block's lines into fields (each with its continuation lines and line endings)."""
    fields: list[list[bytes]] = []
    for line in header_block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)  # no bytes += here: a field of 100k folded lines stays linear
        else:
            fields.append([line])
    return [b"".join(lines) for lines in fields]


# A header block with nothing to remark on: fields of a valid name, a colon and a value with its continuation
# lines, each line ended by LF (CRLF as LF) except perhaps the last.
_PLAIN_FIELD = r"[!-9;-~]+:[^\n]*(?:\n[ \t][^\n]*)*(?:\n|\Z)"
_PLAIN_BLOCK = re.compile(rf"(?:{_PLAIN_FIELD})*")
_PLAIN_FIELDS = re.compile(r"([!-9;-~]+):([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)")


def _parse_plain_headers(header_block: bytes, limits: MimeLimits) -> tuple[tuple[str, str], ...] | None:
    """:func:`_parse_headers` of a block it would record no defect for, or None (the block goes to it).

    Such a block is ASCII, at most 998 octets (so no line is longer), has no bare CR, and every line is a field
    ``name:value`` (a valid name, no space before the colon) or a continuation line after one.
    """
    if len(header_block) > _MAX_LINE or not header_block.isascii():
        return None
    text = header_block.decode("ascii")
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            return None
        text = text.replace("\r\n", "\n")
    fields = _PLAIN_FIELDS.findall(text)
    # The fields must tile the text (what _PLAIN_BLOCK.fullmatch asks): each match is the name, the colon, the value
    # and its line ending (none for a last line without one), matches never overlap, so they leave no gap exactly
    # when their lengths add up to the text's.
    covered = sum(len(name) + len(value) for name, value in fields) + 2 * len(fields)
    if not text.endswith("\n") and fields:
        covered -= 1
    if covered != len(text):
        return None
    if len(fields) > limits.max_headers:
        return None
    # unfolded as _parse_headers does: the lines joined without their line endings
    return tuple((name, value.replace("\n", "").strip(" \t\r\n")) for name, value in fields)


def _parse_headers(
    header_block: bytes, limits: MimeLimits, defects: list[str]
) -> tuple[tuple[str, str], ...]:
    plain = _parse_plain_headers(header_block, limits)
    if plain is not None:
        return plain
    return _parse_headers_slow(header_block, limits, defects)


def _parse_headers_slow(
    header_block: bytes, limits: MimeLimits, defects: list[str]
) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    ascii_block = header_block.isascii()
    if not ascii_block:
        defects.append(DEFECT_NON_ASCII_HEADER)
    decode = _decode_ascii if ascii_block else _decode_header_text
    # Fields as _header_fields groups them: a line starting with SP or HTAB continues the field before it.
    lines = header_block.splitlines()
    # A line over 998 octets anywhere in the block (every line belongs to one field); the defect goes last.
    long_line = len(header_block) > _MAX_LINE and any(len(line) > _MAX_LINE for line in lines)
    count = len(lines)
    index = 0
    position = 0
    while position < count:
        following = position + 1
        while following < count and lines[following][:1] in (b" ", b"\t"):
            following += 1
        leading = index == 0 and lines[position][:1] in (b" ", b"\t")
        unfolded = lines[position] if following == position + 1 else b"".join(lines[position:following])
        position = following
        index += 1
        if leading:
            defects.append(DEFECT_LEADING_CONTINUATION)
            continue
        name_bytes, colon, value_bytes = unfolded.partition(b":")
        if not colon:
            defects.append(DEFECT_NO_COLON)
            continue
        stripped_name = name_bytes.rstrip(b" \t")
        if len(stripped_name) != len(name_bytes):
            defects.append(DEFECT_SPACE_BEFORE_COLON)
        name = decode(stripped_name)
        if not _FIELD_NAME.fullmatch(name):
            defects.append(DEFECT_BAD_NAME)
            continue
        headers.append((name, decode(value_bytes).strip(" \t\r\n")))
        if len(headers) > limits.max_headers:
            raise _error(
                f"more than {limits.max_headers} header fields in one entity",
                defects,
                limit=limits.max_headers,
            )
    if long_line:
        defects.append(DEFECT_LONG_HEADER_LINE)
    return tuple(headers)


def _decode_ascii(raw: bytes) -> str:
    return raw.decode("ascii")


def parse_entity(raw: bytes, limits: MimeLimits = MimeLimits()) -> Entity:
    """Split one MIME entity into header block and body, within bounds.

    The header block ends at the first empty line (CRLF CRLF or LF LF, mixed endings tolerated); a
    message with no empty line is all header and has an empty body. A leading UTF-8 BOM is stripped.
    Nothing is copied into a new form: ``header_block`` and ``body`` are slices of ``raw``.

    :param raw: the entity's bytes.
    :param limits: size bounds: ``max_message_bytes`` for ``raw`` (bytes), ``max_header_bytes`` for the
        header block (bytes), ``max_headers`` fields.
    :returns: the entity with its defects (bare LF, BOM stripped, long or malformed header lines, ...).
    :raises MessageFormatError: ``raw`` is not bytes or exceeds a bound.

    Spec: RFC 5322 sections 2.1-2.2 and 3.5, RFC 2045 section 3; AS-6.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MessageFormatError(f"a MIME entity must be bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    return _entity_of(_parse_range(raw, 0, len(raw), limits))


def _entity_of(parsed: _Parsed, whole: bytes | None = None) -> Entity:
    """The :class:`Entity` of a parsed range: ``parse_entity(buf[start:end])`` for the range it was parsed from.

    ``whole``: those bytes ``buf[start:end]`` (before any BOM was stripped), when the caller holds them already.
    """
    buf, start, end = parsed.buf, parsed.start, parsed.end
    if whole is not None and len(whole) == end - start:
        raw = whole  # no BOM was stripped: the entity is the caller's object, not another copy
    else:
        raw = buf if start == 0 and end == len(buf) else buf[start:end]
    return Entity._lazy(
        raw, parsed.header_block, parsed.headers, parsed.body_start - start, parsed.content_type, tuple(parsed.defects)
    )


def _parse_header_fields(raw: bytes, limits: MimeLimits = MimeLimits()) -> tuple[tuple[str, str], ...]:
    """``parse_entity(raw, limits).headers`` with the same errors, without counting or copying the body."""
    buf = _as_bytes(raw)
    return _parse_range(buf, 0, len(buf), limits, bare_lf=False).headers


@dataclass(slots=True)
class _Parsed:
    """One entity ``buf[start:end]`` (after a stripped BOM) parsed in place: what :class:`Entity` holds, as offsets."""

    buf: bytes
    start: int
    end: int
    body_start: int
    header_block: bytes
    headers: tuple[tuple[str, str], ...]
    content_type: ContentType
    defects: list[str]
    bare_lf: bool
    bare_cr: bool | None
    #: the split of a multipart body that is a range of ``buf`` (set by the structure check's walk)
    multipart: _Multipart | None = None
    #: the transfer encoding, once asked for (the structure check and the canonical form both ask)
    _encoding: str | None = None

    @property
    def transfer_encoding(self) -> str:
        encoding = self._encoding
        if encoding is None:
            encoding = "7bit"
            for name, value in self.headers:
                if name.lower() == "content-transfer-encoding":
                    encoding = _transfer_encoding(value)
                    break
            self._encoding = encoding
        return encoding

    def body(self) -> bytes:
        return self.buf[self.body_start : self.end]


# An LF not preceded by CR; a CR not followed by LF. The regex engine jumps from one LF (CR) to the next in C,
# twice as fast as counting CRLF pairs and LFs and comparing the counts.
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_BARE_CR = re.compile(rb"\r(?!\n)")


def _has_bare_lf(buf: bytes, start: int, end: int) -> bool:
    """Whether ``buf[start:end]`` holds an LF that is not the second half of a CRLF within it.

    The same answer as ``buf.count(b"\\n", start, end) != buf.count(b"\\r\\n", start, end)``: an LF at ``start``
    is bare (the regex's look-behind would see the byte before ``start``).
    """
    return buf.startswith(b"\n", start, end) or _BARE_LF.search(buf, start, end) is not None


def _has_bare_cr(buf: bytes, start: int, end: int) -> bool:
    """Whether ``buf[start:end]`` holds a CR that is not the first half of a CRLF within it.

    The same answer as ``buf.count(b"\\r", start, end) != buf.count(b"\\r\\n", start, end)`` (the look-ahead
    stops at ``end``).
    """
    return _BARE_CR.search(buf, start, end) is not None


def _parse_range(
    buf: bytes,
    start: int,
    end: int,
    limits: MimeLimits,
    *,
    bare_lf: bool | None = None,
    bare_cr: bool | None = None,
    need_cr: bool = False,
) -> _Parsed:
    """:func:`parse_entity` of ``buf[start:end]`` without copying the body.

    ``bare_lf`` / ``bare_cr``: whether the range holds a bare LF / CR, when the caller knows (``None``: count
    it; bare CR only when ``need_cr``).
    """
    defects: list[str] = []
    if end - start > limits.max_message_bytes:
        raise _error(
            f"message of {end - start} bytes exceeds the limit of {limits.max_message_bytes} bytes",
            defects,
            size=end - start,
            limit=limits.max_message_bytes,
        )
    if buf.startswith(_BOM, start, end):
        # every leading BOM: stripping only one would leave the next at the start of the canonical form,
        # and canonicalize would not be idempotent
        while buf.startswith(_BOM, start, end):
            start += len(_BOM)
        defects.append(DEFECT_BOM)
    if bare_lf is None:
        bare_lf = _has_bare_lf(buf, start, end)
    if bare_lf:
        defects.append(DEFECT_BARE_LF)
    if bare_cr is None and need_cr:
        bare_cr = _has_bare_cr(buf, start, end)
    header_end, body_start = _split_header_block(buf, limits, defects, start, end)
    header_block = buf[start:header_end]
    headers = _parse_headers(header_block, limits, defects)
    content_types = [value for name, value in headers if name.lower() == "content-type"]
    if len(content_types) > 1:
        defects.append(DEFECT_DUPLICATE_CONTENT_TYPE)
    content_type = ContentType.parse(content_types[0]) if content_types else _DEFAULT_CONTENT_TYPE
    if content_types and content_type is _DEFAULT_CONTENT_TYPE:
        defects.append(DEFECT_BAD_CONTENT_TYPE)
    return _Parsed(buf, start, end, body_start, header_block, headers, content_type, defects, bare_lf, bare_cr)


# --- transfer encodings ---------------------------------------------------------------------------


#: Base64 as senders write it (RFC 2045 section 6.8): lines of 76 characters, each ended by CRLF.
_B64_STRIDE = 78
_B64_STRIDES_PER_STEP = 1024


def _b64decode_strict(data: bytes) -> bytes:
    """Canonical base64 (the alphabet only, padded, nothing after the padding) decoded, else ``binascii.Error``.

    The same bytes and the same refusals as ``binascii.a2b_base64(data, strict_mode=True)``
    (``tests/unit/test_mime_base64.py`` compares them), by pybase64's SIMD decoder: a 26 kB envelope in about
    5 us instead of 70 (Python 3.11's decoder takes every byte through its Python-era loop).
    """
    return pybase64.b64decode(data, validate=True)


def _b64encode(data: bytes | memoryview) -> bytes:
    """``binascii.b2a_base64(data, newline=False)`` (no line breaks), by pybase64's SIMD encoder."""
    return pybase64.b64encode(data)


@functools.lru_cache(maxsize=64)
def _b64_strides_struct(count: int) -> struct.Struct:
    """A struct that takes the 76 characters of each of ``count`` 78-byte strides and skips the 2 after them."""
    return struct.Struct("76s2x" * count)


def _b64_compact_lines(data: bytes) -> bytes | None:
    """``data`` without its CRLFs, when it is 76-character lines ended by CRLF (any last line): else None.

    The CRLF at each line's end is checked (two strided slices); the 76 characters before it are taken by one
    ``struct`` unpack per 1024 lines and joined, where ``translate`` would look at every byte. Only whitespace
    within the lines is left in: the caller uses the result only if a strict base64 decoding (which refuses
    whitespace) accepts it, and then it equals ``data.translate(None, _WHITESPACE)``.
    """
    count = len(data) // _B64_STRIDE
    stop = count * _B64_STRIDE
    if count == 0 or data[76:stop:_B64_STRIDE] != b"\r" * count or data[77:stop:_B64_STRIDE] != b"\n" * count:
        return None
    lines: list[bytes] = []
    step = _B64_STRIDES_PER_STEP * _B64_STRIDE
    for offset in range(0, stop, step):
        lines += _b64_strides_struct(min(_B64_STRIDES_PER_STEP, (stop - offset) // _B64_STRIDE)).unpack_from(
            data, offset
        )
    lines.append(data[stop:].translate(None, _WHITESPACE))
    return b"".join(lines)


def _b64decode_tolerant(data: bytes | memoryview, defects: Sequence[str] = ()) -> bytes:
    if isinstance(data, bytes):
        lines = _b64_compact_lines(data)
        if lines is not None:
            try:
                # strict: the alphabet only, so the lines held no whitespace and this is the compact form below
                return _b64decode_strict(lines)
            except binascii.Error:
                pass
            del lines
        compact = data.translate(None, _WHITESPACE)
    else:  # a view of a large body: compacted a piece at a time into one buffer, the body never copied
        out = io.BytesIO()
        for offset in range(0, len(data), _ASCII_CHUNK):
            out.write(bytes(data[offset : offset + _ASCII_CHUNK]).translate(None, _WHITESPACE))
        compact = out.getvalue()
        del out
    try:
        # Canonical base64 (the alphabet, padded, nothing after the padding), as senders write it: decoded and
        # checked in one pass; the tolerant reading below would give the same bytes.
        return _b64decode_strict(compact)
    except binascii.Error:
        pass
    # Outside the alphabet only trailing "=" may remain (as if stripped, then checked).
    others = compact.translate(None, _B64_ALPHABET)
    padding = len(others)
    if others.strip(b"=") or not compact.endswith(others):
        raise _error("invalid character in base64 content", defects)
    length = len(compact) - padding
    if length % 4 == 1:
        raise _error("truncated base64 content", defects, length=length)
    missing = -length % 4
    try:
        if missing <= padding:
            # compact[:length + missing] is the stripped data plus exactly the padding it needs: no copy.
            return binascii.a2b_base64(memoryview(compact)[: length + missing])
        return binascii.a2b_base64(compact[:length] + b"=" * missing)
    except binascii.Error as exc:  # pragma: no cover - input validated above
        raise _error(f"invalid base64 content: {exc}", defects) from exc


def _b64encode_lines(data: bytes) -> bytes:
    """Base64 in lines of 76 characters, each ended by CRLF (RFC 2045 section 6.8).

    The same bytes as ``base64.encodebytes(data).replace(b"\\n", CRLF)``.
    """
    if len(data) > _B64_CHUNK:
        out = io.BytesIO()
        _b64_write(out, data)
        return out.getvalue()
    # one step (a signature, a small part): its lines joined at once, without a buffer
    encoded = _b64encode(data)
    count = len(encoded) // 76
    lines = list(_b64_lines_struct(count).unpack_from(encoded)) if count else []
    if count * 76 < len(encoded):
        lines.append(encoded[count * 76 :])
    lines.append(b"")
    return CRLF.join(lines) if len(lines) > 1 else b""


_B64_LINES_PER_STEP = 1024
_B64_STEP = struct.Struct("76s" * _B64_LINES_PER_STEP)  # cuts one step's encoding into its lines, in C
_B64_CHUNK = 57 * _B64_LINES_PER_STEP  # input bytes per step: whole 57-byte lines


@functools.lru_cache(maxsize=64)
def _b64_lines_struct(count: int) -> struct.Struct:
    """A struct that cuts ``count`` lines of 76 characters apart (the last, partial step of :func:`_b64_write`)."""
    return struct.Struct("76s" * count)


def _b64_write(out: io.BytesIO, data: bytes | memoryview) -> None:
    """Write ``data`` in base64 lines of 76 characters with CRLF to ``out``.

    Each step encodes 1024 lines' worth in one ``b2a_base64`` call and cuts the lines apart with one
    ``struct`` unpack, instead of one Python call per 57-byte line.
    """
    view = memoryview(data)
    for offset in range(0, len(view), _B64_CHUNK):
        encoded = _b64encode(view[offset : offset + _B64_CHUNK])
        if len(encoded) == _B64_STEP.size:
            out.write(CRLF.join(_B64_STEP.unpack(encoded)))
            out.write(CRLF)
            continue
        count = len(encoded) // 76
        lines = list(_b64_lines_struct(count).unpack_from(encoded)) if count else []
        if count * 76 < len(encoded):
            lines.append(encoded[count * 76 :])
        lines.append(b"")
        out.write(CRLF.join(lines))


def decode_body(entity: Entity) -> bytes:
    """Undo the entity's Content-Transfer-Encoding.

    ``7bit``, ``8bit``, ``binary`` and an absent field return the body unchanged (the same object).
    Base64 is decoded tolerantly: whitespace anywhere, lines of any length (one line of 1,600+
    characters), missing or extra trailing padding. Quoted-printable accepts CRLF or bare LF soft breaks.

    :param entity: the entity.
    :returns: the decoded body bytes.
    :raises MessageFormatError: base64 with a character outside the alphabet, padding inside the data, or
        a truncated final quantum; or an unknown transfer encoding.

    Spec: RFC 2045 sections 6.1-6.8.
    """
    encoding = entity.transfer_encoding
    if encoding == "base64":
        if len(entity.raw) - entity._body_start < _ASCII_CHUNK:
            # a small body: one slice, compacted by translate (the view is for large bodies, never copied whole)
            return _b64decode_tolerant(entity.body, entity.defects)
        return _b64decode_tolerant(entity._body_view(), entity.defects)
    return _decode(encoding, entity.body, entity.defects)


def _decode(encoding: str, body: bytes, defects: Sequence[str]) -> bytes:
    if encoding in _IDENTITY_ENCODINGS:
        return body
    if encoding == "base64":
        return _b64decode_tolerant(body, defects)
    if encoding == "quoted-printable":
        try:
            return binascii.a2b_qp(body)
        except (binascii.Error, ValueError) as exc:  # pragma: no cover - a2b_qp is lenient
            raise _error(f"invalid quoted-printable content: {exc}", defects) from exc
    raise _error(f"unknown Content-Transfer-Encoding {encoding!r}", defects, encoding=encoding)


def _to_crlf(data: bytes) -> bytes:
    """Every bare LF and bare CR as CRLF; the same object when nothing changes."""
    if not _has_bare_lf(data, 0, len(data)) and not _has_bare_cr(data, 0, len(data)):
        return data
    return data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


# --- multipart splitting ----------------------------------------------------------------------------


@dataclass
class _Delimiter:
    line_start: int  # where the newline preceding "--boundary" starts (it belongs to the delimiter)
    after: int  # first byte after the delimiter line and its line ending
    close: bool
    has_newline: bool  # the delimiter line ends with a line ending (not at end of data)


@dataclass
class _Multipart:
    preamble: bytes | None  # None: the body starts with the first delimiter
    parts: list[tuple[int, int]]
    closed: bool
    epilogue: bytes | None  # None: the close delimiter is the end of data (no line ending after it)


def _boundary_bytes(boundary: str) -> bytes:
    try:
        return boundary.encode("utf-8")
    except UnicodeEncodeError:  # pragma: no cover - header text never holds lone surrogates
        return boundary.encode("utf-8", "replace")


_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?=\r\n|\n|\r|\Z)")
# After this many "--boundary" hits that are not delimiter lines, the rest is left to the regex engine (C).
_MAX_FALSE_DELIMITERS = 64


def _split_multipart(
    body: bytes,
    boundary: str,
    limits: MimeLimits,
    defects: list[str],
    *,
    required_closed: bool = False,
    start: int = 0,
    end: int | None = None,
) -> _Multipart:
    """Find the delimiter lines of a multipart body (RFC 2046 section 5.1.1) on the raw bytes.

    The body is ``body[start:end]``; part offsets are into ``body``.
    """
    if not boundary:
        raise _error("multipart without a boundary parameter", defects)
    if end is None:
        end = len(body)
    dash = b"--" + _boundary_bytes(boundary)
    delimiters: list[_Delimiter] = []

    def add(line_start: int, stop: int, close: bool) -> None:
        newline = 2 if body.startswith(b"\r\n", stop, end) else (1 if stop < end else 0)
        if delimiters:
            line_start = max(line_start, delimiters[-1].after)
        delimiters.append(_Delimiter(line_start, stop + newline, close, newline > 0))
        if len(delimiters) > limits.max_parts + 1:
            raise _error(f"more than {limits.max_parts} body parts", defects, limit=limits.max_parts)

    first = _DELIMITER_TAIL.match(body, start + len(dash), end) if body.startswith(dash, start, end) else None
    if first is not None:
        add(start, first.end(), first.group(1) is not None)
    if first is None or first.group(1) is None:
        # A delimiter is "--boundary" right after a line ending: bytes.find jumps between candidates in C.
        pos = first.end() if first is not None else start
        false_hits = 0
        hit = body.find(dash, pos + 1, end)
        while hit != -1:
            before = body[hit - 1]
            if (before == 0x0A or before == 0x0D) and hit - 1 >= pos:
                line_start = hit - 2 if hit - 2 >= pos and body[hit - 2 : hit] == CRLF else hit - 1
                tail = _DELIMITER_TAIL.match(body, hit + len(dash), end)
                if tail is not None:
                    close = tail.group(1) is not None
                    add(line_start, tail.end(), close)
                    if close:
                        break
                    pos = tail.end()
                    hit = body.find(dash, pos + 1, end)
                    continue
            false_hits += 1
            if false_hits > _MAX_FALSE_DELIMITERS:
                # Many near misses (hostile or odd input): let the regex engine scan the rest in C.
                delimiter_line = re.compile(rb"(?:\r\n|\n|\r)" + re.escape(dash) + _DELIMITER_TAIL.pattern)
                for match in delimiter_line.finditer(body, pos, end):
                    close = match.group(1) is not None
                    add(match.start(), match.end(), close)
                    if close:
                        break
                break
            hit = body.find(dash, hit + 1, end)
    if not delimiters:
        raise _error("multipart body has no boundary delimiter", defects, boundary=boundary)
    preamble = None if first is not None else body[start : delimiters[0].line_start]
    closed = delimiters[-1].close
    parts: list[tuple[int, int]] = []
    for current, following in itertools.pairwise(delimiters):
        parts.append((current.after, following.line_start))
    epilogue: bytes | None = None
    if closed:
        last = delimiters[-1]
        epilogue = body[last.after : end] if last.has_newline else None
    else:
        if required_closed:
            raise _error("multipart without closing delimiter", defects, boundary=boundary)
        defects.append(DEFECT_NO_CLOSE_DELIMITER)
        parts.append((delimiters[-1].after, end))
    if not parts:
        defects.append(DEFECT_NO_PARTS)
    return _Multipart(preamble, parts, closed, epilogue)


# A range ``buf[start:end]`` with what is known of its line endings: ``bare_lf`` / ``bare_cr`` is True or False
# when known, None when it has to be counted.
_Range = tuple[bytes, int, int, bool | None, bool | None]


def _sub_range(outer: _Range, start: int, end: int) -> _Range:
    """A sub-range of ``outer``: a range without bare LF (CR) has one only if the sub-range starts with LF
    (ends with CR), whose CR (LF) is outside it."""
    buf, _, _, bare_lf, bare_cr = outer
    return (
        buf,
        start,
        end,
        buf.startswith(b"\n", start, end) if bare_lf is False else None,
        buf.endswith(b"\r", start, end) if bare_cr is False else None,
    )


def _composite_range(parsed: _Parsed, defects: list[str]) -> _Range:
    """:func:`_composite_body` as a range (the entity's own bytes unless they have to be decoded)."""
    encoding = parsed.transfer_encoding
    if encoding in ("base64", "quoted-printable"):
        defects.append(DEFECT_ENCODED_COMPOSITE)
        decoded = _decode(encoding, parsed.body(), tuple(parsed.defects))
        return decoded, 0, len(decoded), None, None
    whole: _Range = (parsed.buf, parsed.start, parsed.end, parsed.bare_lf, parsed.bare_cr)
    return _sub_range(whole, parsed.body_start, parsed.end)


def _as_bytes(raw: object) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if not isinstance(raw, bytearray | memoryview):
        raise MessageFormatError(f"a MIME entity must be bytes, not {type(raw).__name__}")
    return bytes(raw)


# --- structure check ------------------------------------------------------------------------------


def check_structure(raw: bytes, limits: MimeLimits = MimeLimits()) -> tuple[str, ...]:
    """Walk the whole MIME tree and enforce the depth and part-count bounds.

    Multipart bodies are split at their boundaries; message/rfc822 (and message/global) bodies are
    parsed as messages (decoded first if a peer base64- or QP-encoded them).

    :param raw: the message bytes.
    :param limits: ``max_depth`` (nesting levels below the top entity), ``max_parts`` (entities in the
        tree), and the per-entity bounds of :func:`parse_entity`.
    :returns: every distinct defect seen, in walk order.
    :raises MessageFormatError: a bound is exceeded; a multipart has no boundary parameter or no
        delimiter line; an encoded message/rfc822 body cannot be decoded.

    Spec: RFC 2046 sections 5.1 and 5.2.1, RFC 2045; DESIGN.md section 6.3.
    """
    return _check_structure(raw, limits)[0]


def _check_structure(
    raw: bytes, limits: MimeLimits, *, need_cr: bool = False, memo: dict[tuple[int, int], _Parsed] | None = None
) -> tuple[tuple[str, ...], tuple[bool, bool | None]]:
    """:func:`check_structure`, and whether the message holds a bare LF and (with ``need_cr``) a bare CR.

    The line-ending facts let :func:`_wrap` canonicalise the same message without counting again. ``memo``, when
    given, receives every entity parsed from ``raw`` itself (not from a decoded body), keyed by its range.
    """
    defects: list[str] = []
    counter = [0]
    try:
        buf = _as_bytes(raw)
        line_endings = _walk(
            (buf, 0, len(buf), None, None), 0, limits, defects, counter, need_cr=need_cr, memo=memo
        )
    except MessageFormatError as exc:
        merged = tuple(defects) + tuple(d for d in exc.defects if d not in defects)
        raise MessageFormatError(exc.message, defects=merged, **exc.context) from exc
    except RecursionError as exc:
        raise _error("MIME structure nested too deeply", defects) from exc
    return tuple(dict.fromkeys(defects)), line_endings


def _enter(depth: int, limits: MimeLimits, defects: list[str], counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] > limits.max_parts:
        raise _error(f"more than {limits.max_parts} MIME parts", defects, limit=limits.max_parts)
    if depth > limits.max_depth:
        raise _error(f"MIME nesting deeper than {limits.max_depth}", defects, limit=limits.max_depth)


def _walk(
    span: _Range,
    depth: int,
    limits: MimeLimits,
    defects: list[str],
    counter: list[int],
    *,
    need_cr: bool = False,
    memo: dict[tuple[int, int], _Parsed] | None = None,
) -> tuple[bool, bool | None]:
    _enter(depth, limits, defects, counter)
    buf, start, end, bare_lf, bare_cr = span
    parsed = _parse_range(buf, start, end, limits, bare_lf=bare_lf, bare_cr=bare_cr, need_cr=need_cr)
    if memo is not None:
        memo[start, end] = parsed
    defects.extend(parsed.defects)
    content_type = parsed.content_type
    if content_type.maintype == "multipart":
        body = _composite_range(parsed, defects)
        inner_memo = memo if body[0] is buf else None  # ranges of a decoded body are not ranges of the message
        structure = _split_multipart(
            body[0], content_type.params.get("boundary", ""), limits, defects, start=body[1], end=body[2]
        )
        if inner_memo is not None:
            parsed.multipart = structure
        for part_start, part_end in structure.parts:
            _walk(_sub_range(body, part_start, part_end), depth + 1, limits, defects, counter, memo=inner_memo)
    elif content_type.mime_type in _MESSAGE_TYPES:
        body = _composite_range(parsed, defects)
        _walk(body, depth + 1, limits, defects, counter, memo=memo if body[0] is buf else None)
    return parsed.bare_lf, parsed.bare_cr


# --- canonicalisation -----------------------------------------------------------------------------


def canonicalize(message: bytes, limits: MimeLimits = MimeLimits()) -> bytes:
    """The canonical form of a message, to be signed (and then never re-rendered).

    * CRLF line endings everywhere (bare LF and bare CR become CRLF).
    * Every leaf part that is not 7-bit-safe is re-encoded in base64 (76-character lines) and its
      Content-Transfer-Encoding replaced: parts declared ``binary``; parts with NUL or 8-bit bytes; parts
      with a line longer than 998 octets. Text parts (except UTF-16/32) are normalised to CRLF before
      encoding; other types are encoded exactly as received (decoded first if base64/QP).
    * A part declared ``8bit`` whose content is 7-bit-safe is relabelled ``7bit`` (bytes kept).
    * Multipart and message/rfc822 entities are recursed into; a message/rfc822 body illegally encoded in
      base64 or quoted-printable is decoded and labelled ``7bit`` (or left ``8bit`` when its header holds
      8-bit bytes). Composite entities labelled 8bit/binary whose canonical body is 7-bit are relabelled.
    * Parts already 7-bit-safe keep their bytes (only line endings fixed); headers keep their text,
      folding included (only line endings fixed); non-ASCII header bytes are left as they are.
    * The result ends with CRLF, and ``canonicalize(canonicalize(x)) == canonicalize(x)``.

    :param message: the message bytes (RFC 5322 + MIME).
    :param limits: bounds, as for :func:`check_structure`.
    :returns: the canonical message bytes.
    :raises MessageFormatError: a bound is exceeded; a multipart cannot be split; a body that has to be
        re-encoded cannot be decoded (invalid base64, unknown transfer encoding).

    Spec: AS-16; RFC 8551 section 3.1.1 (canonical text), RFC 2045 section 6, RFC 2046 section 5.1.
    """
    return b"".join(_canonical_pieces(message, limits))


#: The entities :func:`_check_structure` parsed, by their range in the message (see its ``memo``).
_Memo = dict[tuple[int, int], "_Parsed"]


def _memo_serves(limits: MimeLimits) -> bool:
    """Whether entities parsed within ``limits`` are what parsing within the default limits would give.

    Parsing depends on the limits only in where it raises; within limits no looser than the defaults it
    raised wherever the defaults would have.
    """
    default = _DEFAULT_LIMITS
    return (
        limits.max_message_bytes <= default.max_message_bytes
        and limits.max_header_bytes <= default.max_header_bytes
        and limits.max_headers <= default.max_headers
        and limits.max_parts <= default.max_parts
    )


def _canonical_pieces(
    message: bytes,
    limits: MimeLimits,
    line_endings: tuple[bool, bool | None] | None = None,
    memo: _Memo | None = None,
) -> list[bytes | memoryview]:
    """:func:`canonicalize` as pieces to join: unchanged bodies are views of ``message``, not copies.

    ``memo``: the entities of ``message`` :func:`_check_structure` parsed within limits that :func:`_memo_serves`
    ``limits``, used instead of parsing them again.
    """
    defects: list[str] = []
    if len(message) > limits.max_message_bytes:
        raise _error(
            f"message of {len(message)} bytes exceeds the limit of {limits.max_message_bytes} bytes",
            defects,
            size=len(message),
            limit=limits.max_message_bytes,
        )
    buf = _as_bytes(message)
    out: list[bytes | memoryview] = []
    try:
        bare_lf, bare_cr = line_endings or (None, None)
        known = (buf, memo) if memo is not None else None
        _canonical_entity((buf, 0, len(buf), bare_lf, bare_cr), 0, limits, defects, [0], out, known)
    except RecursionError as exc:
        raise _error("MIME structure nested too deeply", defects) from exc
    tail = b""
    for piece in reversed(out):
        tail = bytes(piece[-2:]) + tail
        if len(tail) >= 2:
            break
    if not tail.endswith(CRLF):
        out.append(CRLF)
    return out


def _is_7bit_safe(data: bytes) -> bool:
    """No NUL or 8-bit byte, no line over 998 octets (``data`` already CRLF-normalised)."""
    return _is_ascii(data) and not _has_long_line(data, 0, len(data))


def _has_long_line(buf: bytes, start: int, end: int) -> bool:
    """Whether a line of ``buf[start:end]`` starts with 999 octets that are neither CR nor LF.

    The same answer as ``re.search(rb"^[^\\r\\n]{999}", buf[start:end], re.MULTILINE)``, found by jumping from
    line start to line start with ``rfind`` over windows of 999 octets (no regex attempt at every byte).
    """
    pos = start
    while end - pos > _MAX_LINE:
        window_end = pos + _MAX_LINE + 1
        newline = buf.rfind(b"\n", pos, window_end)
        if newline != -1:
            pos = newline + 1  # every line starting in the window ends within it
            continue
        if buf.find(b"\r", pos, window_end) == -1:
            return True
        newline = buf.find(b"\n", window_end, end)  # the line at pos ends at that CR; skip to the next line
        if newline == -1:
            return False
        pos = newline + 1
    return False


_ASCII_CHUNK = 1 << 20


def _range_7bit_safe(buf: bytes, start: int, end: int) -> bool:
    """:func:`_is_7bit_safe` of ``buf[start:end]`` without copying it."""
    if buf.find(b"\x00", start, end) != -1:
        return False
    # A large range first tries the whole buffer (one fast scan, no copy); at most 64 ranges of 1 MiB fit in a
    # message, so this stays linear. Otherwise the range is checked a piece at a time.
    if end - start < _ASCII_CHUNK or not buf.isascii():
        view = memoryview(buf)
        for offset in range(start, end, _ASCII_CHUNK):
            if not bytes(view[offset : min(end, offset + _ASCII_CHUNK)]).isascii():
                return False
    return not _has_long_line(buf, start, end)


def _pieces_ascii(pieces: Sequence[bytes | memoryview]) -> bool:
    for piece in pieces:
        view = memoryview(piece)
        for offset in range(0, len(view), _ASCII_CHUNK):
            if not _is_ascii(bytes(view[offset : offset + _ASCII_CHUNK])):
                return False
    return True


def _is_ascii(data: bytes) -> bool:
    """No NUL and no 8-bit byte (RFC 2045 section 2.7); ``bytes.isascii`` is a fast C scan."""
    return data.isascii() and b"\x00" not in data


def _replace_transfer_encoding(header_block: bytes, encoding: str) -> bytes:
    """The CRLF header block with its Content-Transfer-Encoding field(s) replaced by one for ``encoding``."""
    kept: list[bytes] = []
    for raw_field in _header_fields(header_block):
        name = raw_field.partition(b":")[0].strip().lower()
        if name != b"content-transfer-encoding":
            kept.append(raw_field)
    kept.append(b"Content-Transfer-Encoding: " + encoding.encode("ascii") + CRLF)
    return b"".join(kept)


def _canonical_header_block(raw_header_block: bytes) -> bytes:
    header_block = _to_crlf(raw_header_block)
    if header_block and not header_block.endswith(CRLF):
        header_block += CRLF
    return header_block


def _canonical_entity(
    span: _Range,
    depth: int,
    limits: MimeLimits,
    defects: list[str],
    counter: list[int],
    out: list[bytes | memoryview],
    known: tuple[bytes, _Memo] | None = None,
) -> None:
    """Append the canonical form of the entity ``span`` to ``out`` (header block, blank line, body).

    ``known``: a buffer and the entities parsed from it (ranges of other buffers are parsed here).
    """
    _enter(depth, limits, defects, counter)
    buf, start, end, bare_lf, bare_cr = span
    parsed = known[1].get((start, end)) if known is not None and known[0] is buf else None
    if parsed is None:
        parsed = _parse_range(buf, start, end, limits, bare_lf=bare_lf, bare_cr=bare_cr, need_cr=True)
    elif parsed.bare_cr is None:  # the structure check did not need it for this entity
        parsed.bare_cr = _has_bare_cr(buf, parsed.start, parsed.end)
    defects.extend(parsed.defects)
    if parsed.start == parsed.end:
        return
    if parsed.bare_lf is False and parsed.bare_cr is False and parsed.header_block.endswith(CRLF):
        header_block = parsed.header_block  # the entity holds no bare LF or CR: already CRLF throughout
    else:
        header_block = _canonical_header_block(parsed.header_block)
    content_type = parsed.content_type
    encoding = parsed.transfer_encoding
    if content_type.maintype == "multipart" or content_type.mime_type in _MESSAGE_TYPES:
        slot = len(out)
        out.append(b"")  # the header block, once the body says whether it is 7bit
        if content_type.maintype == "multipart":
            _canonical_multipart(parsed, depth, limits, defects, counter, out, known)
        else:
            _canonical_entity(_composite_range(parsed, defects), depth + 1, limits, defects, counter, out, known)
        out[slot] = _relabel_composite(header_block, encoding, out[slot + 1 :]) + CRLF
        return
    _canonical_leaf(parsed, header_block, content_type, encoding, out)


def _relabel_composite(header_block: bytes, encoding: str, body: Sequence[bytes | memoryview]) -> bytes:
    if encoding in ("7bit",):
        return header_block
    if encoding in ("8bit", "binary", "base64", "quoted-printable"):
        target = "7bit" if _pieces_ascii(body) else "8bit"
        if target != encoding:
            return _replace_transfer_encoding(header_block, target)
    return header_block


def _canonical_multipart(
    parsed: _Parsed,
    depth: int,
    limits: MimeLimits,
    defects: list[str],
    counter: list[int],
    out: list[bytes | memoryview],
    known: tuple[bytes, _Memo] | None = None,
) -> None:
    body = _composite_range(parsed, defects)
    boundary = parsed.content_type.params.get("boundary", "")
    structure = parsed.multipart if known is not None and body[0] is known[0] else None
    if structure is None:
        structure = _split_multipart(body[0], boundary, limits, defects, start=body[1], end=body[2])
    else:  # split by the structure check: its defects, as splitting again would record them
        defects.extend(_multipart_defects(structure))
    dash_boundary = b"--" + _boundary_bytes(boundary)
    if structure.preamble is not None:
        out.append(_to_crlf(structure.preamble))
        out.append(CRLF)
    for index, (start, end) in enumerate(structure.parts):
        out.append(CRLF + dash_boundary + CRLF if index else dash_boundary + CRLF)
        _canonical_entity(_sub_range(body, start, end), depth + 1, limits, defects, counter, out, known)
    if structure.parts:
        out.append(CRLF)
    out.append(dash_boundary + b"--")
    if structure.epilogue is not None:
        out.append(CRLF)
        out.append(_to_crlf(structure.epilogue))


def _is_text(content_type: ContentType) -> bool:
    if content_type.maintype != "text":
        return False
    charset = content_type.params.get("charset", "").lower()
    return not charset.startswith(_WIDE_CHARSETS)


def _canonical_leaf(
    parsed: _Parsed, header_block: bytes, content_type: ContentType, encoding: str, out: list[bytes | memoryview]
) -> None:
    text = _is_text(content_type)
    buf, body_start, end = parsed.buf, parsed.body_start, parsed.end
    if encoding in ("7bit", "8bit", "base64", "quoted-printable"):
        body_lf = buf.startswith(b"\n", body_start, end) if parsed.bare_lf is False else True
        normalised: bytes | memoryview
        if not body_lf and parsed.bare_cr is False:
            # Already CRLF throughout: the body goes into the result as a view, never copied until the join.
            normalised = memoryview(buf)[body_start:end]
            safe = _range_7bit_safe(buf, body_start, end)
        else:
            normalised = _to_crlf(buf[body_start:end])
            safe = _is_7bit_safe(normalised)
        if safe:
            if encoding == "8bit":
                header_block = _replace_transfer_encoding(header_block, "7bit")
            out += [header_block + CRLF, normalised]
            return
        del normalised
    elif encoding != "binary":
        # An unknown encoding (x-uuencode, ...): we cannot decode it, so keep it, line endings fixed.
        out += [header_block + CRLF, _to_crlf(buf[body_start:end])]
        return
    payload = _decode(encoding, parsed.body(), tuple(parsed.defects))
    if text:
        payload = _to_crlf(payload)
    out += [_replace_transfer_encoding(header_block, "base64") + CRLF, _b64encode_lines(payload)]


# --- wrapping -------------------------------------------------------------------------------------


def wrap(message: bytes, *, copy_subject: bool = True) -> tuple[list[tuple[str, str]], bytes]:
    """Protect the headers: enclose the whole message in a message/rfc822 entity, to be signed.

    :param message: the original RFC 5322 message.
    :param copy_subject: copy Subject to the outer headers (turn off to keep PHI out of them).
    :returns: ``(outer_headers, entity)``: the unfolded ``(name, value)`` fields to put on the outer
        message: From, To, Cc, Date, Message-ID, In-Reply-To, References and MIME-Version (``1.0`` added
        when absent), and Subject when ``copy_subject``, in the message's order; never Bcc. ``entity`` is
        ``b"Content-Type: message/rfc822\\r\\n\\r\\n" + canonicalize(message)``.
    :raises MessageFormatError: the message cannot be parsed or canonicalised within the default bounds.

    Spec: AS-12, AS-13 (no Bcc); RFC 8551 section 3.1; AS-16.
    """
    return _wrap(message, copy_subject=copy_subject)


def _wrap(
    message: bytes,
    *,
    copy_subject: bool = True,
    line_endings: tuple[bool, bool | None] | None = None,
    memo: _Memo | None = None,
) -> tuple[list[tuple[str, str]], bytes]:
    """:func:`wrap`; ``line_endings`` as found by :func:`_check_structure` for this message, if known, and ``memo``
    the entities it parsed (within limits that :func:`_memo_serves` the defaults), used instead of parsing again."""
    buf = _as_bytes(message)
    top = memo.get((0, len(buf))) if memo is not None else None
    # Only the header fields are needed here (bare-LF defects are not): the body is neither counted nor copied.
    headers = top.headers if top is not None else _parse_range(buf, 0, len(buf), _DEFAULT_LIMITS, bare_lf=False).headers
    wanted = set(_WRAP_HEADERS)
    if copy_subject:
        wanted.add("subject")
    outer = [(name, value) for name, value in headers if name.lower() in wanted]
    if not any(name.lower() == "mime-version" for name, _ in outer):
        outer.append(("MIME-Version", "1.0"))
    pieces = _canonical_pieces(buf, _DEFAULT_LIMITS, line_endings, memo)
    return outer, b"".join([b"Content-Type: message/rfc822" + CRLF + CRLF, *pieces])


def unwrap(entity: Entity) -> bytes | None:
    """The message inside a message/rfc822 wrapper, or ``None`` when the entity is not one.

    A body in 7bit/8bit/binary is returned exactly as received; a body some peers illegally encode in
    base64 or quoted-printable is decoded.

    :param entity: the signed content entity.
    :returns: the inner message's bytes, or ``None`` when the entity is not message/rfc822.
    :raises MessageFormatError: an encoded body cannot be decoded.

    Spec: AS-12; RFC 8551 section 3.1; RFC 2046 section 5.2.1.
    """
    if entity.content_type.mime_type not in _MESSAGE_TYPES:
        return None
    return decode_body(entity)


# --- multipart/signed -----------------------------------------------------------------------------


def build_multipart_signed(
    entity: bytes, signature_der: bytes, digest: DigestAlgorithm, *, boundary: str | None = None
) -> bytes:
    """A complete multipart/signed entity around ``entity`` and its detached signature.

    ``entity`` is spliced in exactly: it is the content between ``--boundary CRLF`` and the ``CRLF`` that
    starts the next delimiter, i.e. exactly what was signed.

    :param entity: the canonical entity that was signed (see :func:`canonicalize`, :func:`wrap`).
    :param signature_der: the detached CMS SignedData, DER.
    :param digest: the signature's digest algorithm, written as ``micalg``.
    :param boundary: the boundary to use; by default a random one that does not occur in ``entity``.
    :returns: the entity bytes: header, blank line, two body parts, close delimiter, CRLF.
    :raises MessageFormatError: the given boundary is not a valid RFC 2046 boundary or occurs in ``entity``.

    Spec: AS-7; RFC 1847 section 2.1; RFC 8551 section 3.5.3; RFC 2046 section 5.1.1.
    """
    return b"".join(_multipart_signed_pieces(entity, signature_der, digest, boundary=boundary))


def _multipart_signed_pieces(
    entity: bytes, signature_der: bytes, digest: DigestAlgorithm, *, boundary: str | None = None
) -> list[bytes]:
    """:func:`build_multipart_signed` as pieces to join (or to encrypt one after the other, never joined)."""
    if boundary is None:
        boundary = _fresh_boundary(entity)
    elif not _BOUNDARY.fullmatch(boundary) or b"--" + boundary.encode("ascii") in entity:
        raise MessageFormatError(f"unusable multipart boundary {boundary!r}", boundary=boundary)
    dash = b"--" + boundary.encode("ascii")
    header = b"".join(
        [
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n',
            b' micalg=%s; boundary="%s"\r\n' % (digest.value.encode("ascii"), boundary.encode("ascii")),
        ]
    )
    encoded = _b64encode_lines(signature_der)
    if encoded.endswith(CRLF):
        encoded = encoded[:-2]
    # Small pieces are merged; the entity stays one piece of its own.
    return [
        header + CRLF + dash + CRLF,
        entity,
        CRLF + dash + CRLF + _SIGNATURE_PART_HEADER + encoded + CRLF + dash + b"--" + CRLF,
    ]


_SIGNATURE_PART_HEADER = (
    b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="smime.p7s"\r\n'
    b"\r\n"
)


def _fresh_boundary(entity: bytes) -> str:
    # "=_" cannot occur in quoted-printable text, and "=" never inside base64 lines.
    while True:
        boundary = "----=_hisp_" + secrets.token_hex(16)
        if boundary.encode("ascii") not in entity:
            return boundary


@dataclass(frozen=True)
class SignedParts:
    """The two parts of a received multipart/signed entity.

    :ivar content: part 1 exactly as received, between ``--boundary`` and its line ending and the line
        ending before the next delimiter (headers + body): the bytes that were signed.
    :ivar signature: part 2, decoded: the detached CMS SignedData (DER).
    :ivar micalg: the ``micalg`` parameter as received (advisory), or ``None``.
    :ivar protocol: the ``protocol`` parameter, or ``None``.
    :ivar content_entity: ``parse_entity(content)``.
    :ivar content_crlf: ``content`` with bare LF and bare CR converted to CRLF (the same object when it
        already uses CRLF only), for peers whose transport rewrote line endings (AS-16).

    Spec: RFC 1847 section 2.1; RFC 8551 section 3.5.3.
    """

    content: bytes
    signature: bytes
    micalg: str | None
    protocol: str | None
    content_entity: Entity
    content_crlf: bytes


def split_multipart_signed(entity: Entity, limits: MimeLimits = MimeLimits()) -> SignedParts:
    """Split a received multipart/signed entity into the signed content and the signature.

    Boundaries are found on the raw body; a delimiter is ``--boundary`` at the start of a line,
    optionally followed by ``--`` (close) and spaces or tabs, then CRLF, LF or the end of data. The line
    ending before a delimiter is not part of the content.

    :param entity: the multipart/signed entity, as received.
    :param limits: bounds for the parts (see :func:`parse_entity`).
    :returns: the parts.
    :raises MessageFormatError: not multipart/signed; no boundary; no delimiter or no closing delimiter;
        not exactly two body parts (ETT DTS 207); part 2 not application/(x-)pkcs7-signature; the
        signature cannot be decoded.

    Spec: AS-7; RFC 1847 section 2.1; RFC 8551 section 3.5.3; RFC 2046 section 5.1.1.
    """
    return _split_multipart_signed(entity, limits)


def _multipart_defects(structure: _Multipart) -> list[str]:
    """The defects :func:`_split_multipart` records for the split it returned."""
    defects = [] if structure.closed else [DEFECT_NO_CLOSE_DELIMITER]
    if not structure.parts:
        defects.append(DEFECT_NO_PARTS)
    return defects


def _open_signed_layer(
    raw: bytes, limits: MimeLimits, memo: _Memo | None = None
) -> tuple[Entity, SignedParts | None]:
    """``check_structure(raw, limits)``, then ``parse_entity(raw, limits)`` and, when it is multipart/signed,
    ``split_multipart_signed`` of it: the same results and errors, but every entity is parsed (and its line
    endings counted) once, by the structure check. ``memo``, when given, receives those entities (see
    :func:`_signed_message_headers`)."""
    if memo is None:
        memo = {}
    _check_structure(raw, limits, need_cr=True, memo=memo)
    top = memo[0, len(raw)]
    entity = _entity_of(top)
    if entity.content_type.mime_type != "multipart/signed":
        return entity, None
    # the walk split this body (a range of raw, when it starts at 0 and was not decoded): split it once
    structure = top.multipart if top.start == 0 else None
    return entity, _split_multipart_signed(entity, limits, memo, top.start, structure)


def _signed_message_headers(raw: bytes, memo: _Memo) -> tuple[int, int, tuple[tuple[str, str], ...]] | None:
    """Where the message inside the signed message/rfc822 part of the multipart/signed ``raw`` is, and its
    header fields, as :func:`_open_signed_layer` parsed them into ``memo``: ``(start, end, headers)``, or None
    when that part is not a message/rfc822 entity whose body is a range of ``raw`` (not transfer-encoded).

    ``headers`` are ``_parse_header_fields(raw[start:end], limits)`` for the limits of that walk: the same bytes
    parsed within the same limits.
    """
    top = memo.get((0, len(raw)))
    if top is None or top.start != 0 or top.multipart is None or not top.multipart.parts:
        return None
    part = memo.get(top.multipart.parts[0])
    if part is None or part.content_type.mime_type not in _MESSAGE_TYPES:
        return None
    if part.transfer_encoding in ("base64", "quoted-printable"):
        return None  # the walk parsed a decoded copy, not a range of raw
    inner = memo.get((part.body_start, part.end))
    if inner is None or inner.buf is not raw:
        return None
    return part.body_start, part.end, inner.headers


def _split_multipart_signed(
    entity: Entity,
    limits: MimeLimits,
    memo: dict[tuple[int, int], _Parsed] | None = None,
    base: int = 0,
    structure: _Multipart | None = None,
) -> SignedParts:
    """:func:`split_multipart_signed`; ``memo`` holds parsed ranges of a buffer in which ``entity.raw`` starts at
    ``base`` (see :func:`_open_signed_layer`), to be used instead of parsing those ranges again; ``structure``, when
    given, is the split of ``entity.raw``'s body found by the structure check (within the same limits)."""

    def part(start: int, end: int) -> tuple[bytes, Entity, _Parsed | None]:
        whole = body[start:end]
        known = memo.get((base + start, base + end)) if memo is not None else None
        return whole, (parse_entity(whole, limits) if known is None else _entity_of(known, whole)), known

    defects = list(entity.defects)
    content_type = entity.content_type
    if content_type.mime_type != "multipart/signed":
        raise _error(f"expected multipart/signed, found {content_type.mime_type}", defects)
    # Split on the entity's own bytes (``body`` is ``raw[_body_start:]``): the body is never copied.
    body = entity.raw
    if structure is None:
        structure = _split_multipart(
            body,
            content_type.params.get("boundary", ""),
            limits,
            defects,
            required_closed=True,
            start=entity._body_start,
        )
    elif not structure.closed:
        raise _error("multipart without closing delimiter", defects, boundary=content_type.params.get("boundary", ""))
    elif not structure.parts:
        defects.append(DEFECT_NO_PARTS)
    if len(structure.parts) != 2:
        raise _error(
            f"multipart/signed must have exactly two body parts, found {len(structure.parts)}",
            defects,
            parts=len(structure.parts),
        )
    (content_start, content_end), (signature_start, signature_end) = structure.parts
    _, signature_entity, _ = part(signature_start, signature_end)
    signature_type = signature_entity.content_type.mime_type
    if signature_type not in _PKCS7_SIGNATURE:
        raise _error(
            f"the second part of multipart/signed is {signature_type}, not application/pkcs7-signature",
            defects,
            content_type=signature_type,
        )
    try:
        signature = decode_body(signature_entity)
    except MessageFormatError as exc:
        raise _error(f"signature part: {exc.message}", defects) from exc
    content, content_entity, known = part(content_start, content_end)
    # Known to hold neither a bare LF nor a bare CR (a leading BOM holds neither): _to_crlf would return it as is.
    plain_crlf = known is not None and known.bare_lf is False and known.bare_cr is False
    return SignedParts(
        content=content,
        signature=signature,
        micalg=content_type.params.get("micalg"),
        protocol=content_type.params.get("protocol"),
        content_entity=content_entity,
        content_crlf=content if plain_crlf else _to_crlf(content),
    )


# --- application/pkcs7-mime -----------------------------------------------------------------------


def smime_type(content_type: ContentType) -> str | None:
    """What an application/pkcs7-mime (or x-pkcs7-mime) entity holds.

    The ``smime-type`` parameter is read in any case and quoting. When it is absent, a ``name`` ending
    in ``.p7m`` means enveloped-data, ``.p7c`` certs-only and ``.p7z`` compressed-data (RFC 8551 section
    3.2.1 file suffixes).

    :param content_type: the entity's content type.
    :returns: ``"enveloped-data"``, ``"authEnveloped-data"``, ``"signed-data"``, ``"certs-only"``,
        ``"compressed-data"``, or ``None`` (not pkcs7-mime, an unknown smime-type, or nothing to infer
        from). Never raises.

    Spec: RFC 8551 sections 3.2.1-3.2.2; AS-7.
    """
    if content_type.mime_type not in _PKCS7_MIME:
        return None
    declared = content_type.params.get("smime-type")
    if declared is not None:
        return _SMIME_TYPES.get(declared.strip().strip('"').strip().lower())
    name = (content_type.params.get("name") or content_type.params.get("filename") or "").strip().lower()
    if name.endswith(".p7m"):
        return "enveloped-data"
    if name.endswith(".p7c"):
        return "certs-only"
    if name.endswith(".p7z"):
        return "compressed-data"
    return None


def _fold(name: str, value: str) -> bytes:
    """``name: value`` folded at whitespace into lines of at most 78 characters where possible."""
    line = f"{name}: {value}"
    if len(line) <= _FOLD_AT:
        return line.encode("utf-8")
    out: list[str] = []
    current = ""
    for token in re.findall(r"[ \t]*[^ \t]+|[ \t]+$", line):
        if current and len(current) + len(token) > _FOLD_AT and token[0] in " \t":
            out.append(current)
            current = token
        else:
            current += token
    out.append(current)
    return "\r\n".join(out).encode("utf-8")


def build_enveloped_message(
    outer_headers: Sequence[tuple[str, str]], der: bytes, *, authenticated: bool = False
) -> bytes:
    """The outgoing Direct message: outer headers over a base64 application/pkcs7-mime body.

    Header values are written as given (UTF-8, never RFC 2047-encoded) and folded at whitespace to 78
    characters where they can be. Content-Type, Content-Transfer-Encoding and Content-Disposition in
    ``outer_headers`` are dropped (the envelope has its own); MIME-Version 1.0 is added when absent.

    :param outer_headers: ``(name, value)`` fields, unfolded (see :func:`wrap`).
    :param der: the CMS EnvelopedData or AuthEnvelopedData, DER.
    :param authenticated: ``True`` for AuthEnvelopedData (AES-GCM): ``smime-type=authEnveloped-data``.
    :returns: the message bytes, CRLF line endings, base64 in 76-character lines, ending with CRLF.
    :raises MessageFormatError: a header name is not a valid field name, or a value holds a line break.

    Spec: AS-7, requirements section 8.1; RFC 8551 sections 3.2-3.3 and 3.2.2 (authEnveloped-data);
    RFC 5322 section 2.2.3 (folding).
    """
    lines: list[bytes] = []
    has_version = False
    for name, value in outer_headers:
        if not _FIELD_NAME.fullmatch(name) or not name.isascii():
            raise MessageFormatError(f"invalid header field name {name!r}", name=name)
        if "\r" in value or "\n" in value:
            raise MessageFormatError(f"header {name} holds a line break", name=name)
        lowered = name.lower()
        if lowered in _ENVELOPE_OWN_HEADERS:
            continue
        has_version = has_version or lowered == "mime-version"
        lines.append(_fold(name, value.strip()))
    if not has_version:
        lines.append(b"MIME-Version: 1.0")
    kind = b"authEnveloped-data" if authenticated else b"enveloped-data"
    # Folded to keep within 78 characters (RFC 5322 section 2.1.1); unfolds to the one-line form.
    lines.append(b"Content-Type: application/pkcs7-mime; smime-type=" + kind + b';\r\n name="smime.p7m"')
    lines.append(b"Content-Transfer-Encoding: base64")
    lines.append(b'Content-Disposition: attachment; filename="smime.p7m"')
    # Written straight into one buffer that becomes the result (BytesIO.getvalue does not copy it).
    out = io.BytesIO()
    out.write(CRLF.join(lines) + CRLF + CRLF)
    _b64_write(out, der)
    return out.getvalue()
