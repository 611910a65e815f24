"""The MIME and address fast paths give exactly what the general code gives (hypothesis).

* ``mime._parse_plain_headers``: a header block with nothing to remark on, parsed by one regular expression
  (its fields tiling the block); whenever it answers, ``mime._parse_headers_slow`` gives the same fields and
  records no defect, and it answers exactly when the block regex ``_PLAIN_BLOCK`` matches the whole block.
* ``mime._has_bare_lf`` / ``_has_bare_cr``: a regex search instead of counting CRLF, LF and CR.
* ``mime._wrap`` / ``_canonical_pieces`` reusing the entities ``_check_structure`` parsed (its ``memo``): the same
  outer headers and signed entity as parsing again.
* ``mime._b64encode_lines``: the partial last step cut by one struct.
* ``DirectAddress.parse`` of a bare ``local@domain`` without ``getaddresses``, and remembered by its text.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hisp import addresses
from hisp.addresses import DirectAddress
from hisp.core import mime
from hisp.errors import AddressError, MessageFormatError

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMITS = mime.MimeLimits()

# Header pieces: names valid and not, colons, folding, every kind of line ending, non-ASCII and NUL.
_HEADER_PIECES = st.sampled_from(
    [
        b"From",
        b"Content-Type",
        b"X-A",
        b":",
        b": ",
        b" ",
        b"\t",
        b"a",
        b"value",
        b"\r\n",
        b"\n",
        b"\r",
        b"\r\n ",
        b"\n\t",
        b" :",
        b"(x)",
        b"\xc3\xa9",
        b"\xff",
        b"\x00",
        b"=?utf-8?q?x?=",
        b";",
        b'"q"',
    ]
)


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["pieces", "fields"]))
    if kind == "pieces":
        return b"".join(draw(st.lists(_HEADER_PIECES, max_size=40)))
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    fields = []
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.from_regex(rb"[!-9;-~]{1,12}", fullmatch=True))
        value = draw(st.from_regex(rb"[ -~\t]{0,40}", fullmatch=True))
        folds = draw(st.lists(st.from_regex(rb"[ \t][ -~]{0,20}", fullmatch=True), max_size=2))
        fields.append(name + b":" + value + b"".join(newline + fold for fold in folds) + newline)
    block = b"".join(fields)
    if block and draw(st.booleans()):
        block = block[: -len(newline)]  # the last line without its line ending
    return block


@SETTINGS
@given(header_blocks())
@example(b"From: a@b.example\r\nSubject: x\r\n y\r\n")
@example(b"A:\r\n \r\n")
@example(b"A: b\r\r\n")
def test_plain_header_blocks_parse_as_the_general_parser_does(block: bytes) -> None:
    defects: list[str] = []
    try:
        slow: Any = mime._parse_headers_slow(block, LIMITS, defects)
    except MessageFormatError as exc:
        slow = exc
    fast = mime._parse_plain_headers(block, LIMITS)
    if fast is not None:
        assert fast == slow
        assert defects == []
    assert mime._parse_headers(block, LIMITS, []) == (fast if fast is not None else slow)


def test_plain_header_blocks_are_taken() -> None:
    block = (
        b"From: dr.bench@direct.clinic.example\r\nTo: intake@direct.hospital.example\r\n"
        b'Content-Type: multipart/mixed;\r\n boundary="=_b"\r\nMIME-Version: 1.0\r\n'
    )
    assert mime._parse_plain_headers(block, LIMITS) == (
        ("From", "dr.bench@direct.clinic.example"),
        ("To", "intake@direct.hospital.example"),
        ("Content-Type", 'multipart/mixed; boundary="=_b"'),
        ("MIME-Version", "1.0"),
    )
    assert mime._parse_plain_headers(b"A: b\r\n" * 5, mime.MimeLimits(max_headers=4)) is None


@SETTINGS
@given(
    st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\n\r", b"bc"]), max_size=30).map(b"".join),
    st.integers(0, 70),
    st.integers(0, 70),
)
def test_bare_line_endings_as_counted(data: bytes, start: int, end: int) -> None:
    start, end = min(start, len(data)), min(max(start, end), len(data))
    crlf = data.count(b"\r\n", start, end)
    assert mime._has_bare_lf(data, start, end) == (data.count(b"\n", start, end) != crlf)
    assert mime._has_bare_cr(data, start, end) == (data.count(b"\r", start, end) != crlf)


@SETTINGS
@given(
    st.lists(
        st.sampled_from([b"a", b":", b"\r", b"\n", b"\r\n", b"\n\r", b"\r\r", b"\n\n", b" ", b"\r\n\r\n"]), max_size=30
    ).map(b"".join),
    st.integers(0, 70),
    st.integers(0, 70),
)
@example(b"a:b\r\n" * 70 + b"\r\nbody", 0, 1000)  # more lines than the finder steps over
@example(b"a:b\r\n" * 63 + b"\r\nbody", 0, 1000)
@example(b"a:b\r\n" * 64 + b"\r\nbody", 0, 1000)
@example(b"a:b\rc:d\r\n\r\n", 0, 12)  # a bare CR before the blank line
@example(b"a:b\n\rc", 0, 6)  # LF then a bare CR: a blank line
@example(b"a\n\r\n\r\n", 0, 6)  # an LF-ended line, then a blank line, just before a CRLF CRLF
@example(b"a\r\n\n\r\n", 0, 6)
@example(b"a\r\r\n\r\n", 0, 6)
@example(b"a\r\n\r\n", 1, 5)
@example(b"\r\n\r\n", 0, 4)
def test_header_end_as_the_regex_finds_it(data: bytes, start: int, end: int) -> None:
    start, end = min(start, len(data)), min(max(start, end), len(data))
    assert mime._find_header_end(data, start, end) == mime._regex_header_end(data, start, end)


def test_header_end_exhaustively_on_short_inputs() -> None:
    """Every string of up to 8 bytes over a, CR and LF, every range: the finder agrees with the regex."""
    import itertools

    for length in range(9):
        for letters in itertools.product(b"a\r\n", repeat=length):
            data = bytes(letters)
            for start in range(length + 1):
                for end in range(start, length + 1):
                    assert mime._find_header_end(data, start, end) == mime._regex_header_end(data, start, end), (
                        data,
                        start,
                        end,
                    )


# -- wrap with the structure check's memo ---------------------------------------------------------------------

_BODIES = [
    b"Hello\r\n",
    b"8bit \xc3\xa9 text\r\n",
    b"bare\nLF\n",
    b"bare\rCR\r",
    b"L" * 1200 + b"\r\n",
    b"\x00binary\r\n",
]


@st.composite
def plain_messages(draw: st.DrawFn) -> bytes:
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    bom = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
    head = b"From: a@direct.example" + newline + b"To: b@direct.example" + newline + b"Subject: s" + newline
    kind = draw(st.sampled_from(["leaf", "multipart", "rfc822", "encoded-rfc822"]))
    encoding = draw(st.sampled_from([b"", b"Content-Transfer-Encoding: 8bit" + newline]))
    body = draw(st.sampled_from(_BODIES))
    leaf = b"Content-Type: text/plain" + newline + encoding + newline + body
    if kind == "leaf":
        return bom + head + encoding + newline + body
    if kind == "rfc822":
        return bom + head + b"Content-Type: message/rfc822" + newline + newline + b"Subject: in" + newline + leaf
    if kind == "encoded-rfc822":
        inner = base64.encodebytes(b"Subject: in\r\n" + leaf)
        return (
            bom + head + b"Content-Type: message/rfc822" + newline + b"Content-Transfer-Encoding: base64" + newline
            + newline + inner
        )  # fmt: skip
    parts = draw(
        st.lists(
            st.sampled_from([leaf, b"Content-Type: message/rfc822" + newline + newline + leaf]), min_size=0, max_size=3
        )
    )
    multipart = b"Content-Type: multipart/mixed; boundary=b" + newline + newline
    multipart += b"".join(b"--b" + newline + part + newline for part in parts)
    multipart += draw(st.sampled_from([b"--b--" + newline, b"", b"--b--"]))  # closed, not closed, at the end
    return bom + head + multipart


@SETTINGS
@given(plain_messages(), st.booleans())
def test_wrap_with_the_memo_is_wrap(message: bytes, copy_subject: bool) -> None:
    memo: dict[tuple[int, int], Any] = {}
    try:
        _, line_endings = mime._check_structure(message, LIMITS, need_cr=True, memo=memo)
    except MessageFormatError as exc:  # then wrap refuses it as well
        try:
            mime.wrap(message)
        except MessageFormatError as wrap_exc:
            assert wrap_exc.message == exc.message
            return
        raise AssertionError("wrap accepted a message the structure check refused") from exc
    assert mime._wrap(message, copy_subject=copy_subject, line_endings=line_endings, memo=memo) == mime.wrap(
        message, copy_subject=copy_subject
    )
    assert b"".join(mime._canonical_pieces(message, LIMITS, line_endings, memo)) == mime.canonicalize(message)


_SIGNATURE_PART = (
    b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\nMIIB\r\n"
)


@st.composite
def signed_layers(draw: st.DrawFn) -> bytes:
    """multipart/signed entities, well formed or not: parts missing or extra, no closing delimiter, encoded, BOM."""
    parts = draw(
        st.lists(st.sampled_from([b"Content-Type: text/plain\r\n\r\nhello", _SIGNATURE_PART, b"", b"junk"]), max_size=3)
    )
    body = b"".join(b"--s\r\n" + part + b"\r\n" for part in parts)
    body += draw(st.sampled_from([b"--s--\r\n", b"--s--", b"", b"--s--\r\nepilogue"]))
    head = b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary=s\r\n'
    if draw(st.booleans()):
        head += b"Content-Transfer-Encoding: base64\r\n"
        body = base64.encodebytes(body)
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + head + b"\r\n" + body


def _outcome(fn: Any) -> Any:
    try:
        value = fn()
    except MessageFormatError as exc:
        return ("error", exc.message, exc.defects)
    entity, parts = value
    fields = None if parts is None else (parts.content, parts.signature, parts.micalg, parts.content_crlf)
    return entity.raw, entity.defects, fields


@SETTINGS
@given(signed_layers())
def test_open_signed_layer_splits_as_split_multipart_signed(layer: bytes) -> None:
    def general() -> Any:
        mime.check_structure(layer, LIMITS)
        entity = mime.parse_entity(layer, LIMITS)
        if entity.content_type.mime_type != "multipart/signed":
            return entity, None
        return entity, mime.split_multipart_signed(entity, LIMITS)

    assert _outcome(lambda: mime._open_signed_layer(layer, LIMITS)) == _outcome(general)


def test_memo_serves_only_limits_no_looser_than_the_defaults() -> None:
    assert mime._memo_serves(mime.MimeLimits())
    assert mime._memo_serves(mime.MimeLimits(max_headers=10, max_header_bytes=1000, max_message_bytes=10**6))
    assert not mime._memo_serves(mime.MimeLimits(max_headers=5000))
    assert not mime._memo_serves(mime.MimeLimits(max_header_bytes=10**6))
    assert not mime._memo_serves(mime.MimeLimits(max_message_bytes=10**9))


@SETTINGS
@given(st.integers(0, 3 * 57 * 1024 + 200))
def test_base64_lines(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert mime._b64encode_lines(data) == base64.encodebytes(data).replace(b"\n", b"\r\n")


def _b64decode_tolerant_general(data: bytes) -> Any:
    """The tolerant decoding without the strict first attempt (what _b64decode_tolerant did before it)."""
    compact = data.translate(None, mime._WHITESPACE)
    others = compact.translate(None, mime._B64_ALPHABET)
    padding = len(others)
    if others.strip(b"=") or not compact.endswith(others):
        return "invalid"
    length = len(compact) - padding
    if length % 4 == 1:
        return "truncated"
    return base64.b64decode(compact[:length] + b"=" * (-length % 4))


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=60).map(base64.encodebytes),
        st.lists(
            st.sampled_from([b"QUJD", b"QQ", b"=", b"==", b"\r\n", b" ", b"A", b"*", b"\x00", b"Zg=="]), max_size=12
        ).map(b"".join),
    )
)
def test_base64_decoding_is_the_tolerant_decoding(data: bytes) -> None:
    try:
        decoded: Any = mime._b64decode_tolerant(data)
    except MessageFormatError as exc:
        decoded = "truncated" if "truncated" in exc.message else "invalid"
    assert decoded == _b64decode_tolerant_general(data)


# -- addresses ---------------------------------------------------------------------------------------------------


def _parse_general(text: str) -> Any:
    # DirectAddress._parse: the parse itself, not the memo (which may remember the fast path's answer)
    with mock.patch.object(addresses, "_PLAIN_ADDRESS", re.compile(r"(?!)")):
        try:
            return DirectAddress._parse(text)
        except AddressError as exc:
            return ("error", exc.message)


def _parse(text: str) -> Any:
    try:
        return DirectAddress.parse(text)
    except AddressError as exc:
        return ("error", exc.message)


@SETTINGS
@given(
    st.one_of(
        st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,70}@[A-Za-z0-9.-]{1,70}", fullmatch=True),
        st.lists(
            st.sampled_from(["a", "B", ".", "@", "-", "..", " ", "<", ">", '"', "(c)", ",", "x.org", "é", "\n", "_"]),
            max_size=12,
        ).map("".join),
    )
)
@example("dr.bench@direct.clinic.example")
@example("Dr.Bench@Direct.Clinic.Example")
@example("a..b@x.org")
@example("a@-x.org")
@example("a@x..org")
@example("a@" + "x" * 64 + ".org")
@example("a" * 65 + "@x.org")
def test_plain_addresses_parse_as_getaddresses_does(text: str) -> None:
    assert _parse(text) == _parse_general(text)


def _parse_uncached(text: str) -> Any:
    try:
        return DirectAddress._parse(text)
    except AddressError as exc:
        return ("error", exc.message)


@SETTINGS
@given(
    st.one_of(
        st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,70}@[A-Za-z0-9.-]{1,70}", fullmatch=True),
        st.lists(
            st.sampled_from(["a", "B", ".", "@", "-", "..", " ", "<", ">", '"', "(c)", ",", "x.org", "é", "\n", "_"]),
            max_size=12,
        ).map("".join),
        st.text(max_size=40),
    )
)
@example("Dr A <Dr.A@Direct.Clinic.Example>")
@example("a@x.org, b@x.org")
@example("x" * 600 + "@x.org")
def test_remembered_addresses_are_parsed_addresses(text: str) -> None:
    # asked twice: the second answer may come from the memo; both are the parse's answer (errors never remembered)
    expected = _parse_uncached(text)
    assert _parse(text) == expected
    assert _parse(text) == expected


def _crlf_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


@st.composite
def _line_layouts(draw: Any) -> bytes:
    """Base64 in 76-character CRLF lines (as senders write it), often changed in one or two places."""
    encoded = bytearray(_crlf_lines(draw(st.binary(min_size=57, max_size=57 * 2100))))
    for _ in range(draw(st.integers(0, 2))):
        position = draw(st.integers(0, len(encoded) - 1))
        change = draw(st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\r\n", b"=", b"*", b"A", b"\x0b", b""]))
        encoded[position : position + draw(st.integers(0, 2))] = change
    return bytes(encoded)


@SETTINGS
@given(_line_layouts())
@example(_crlf_lines(bytes(57)))
@example(_crlf_lines(bytes(57 * 1024)))
@example(_crlf_lines(bytes(57 * 1025 + 3)))
@example(_crlf_lines(bytes(57 * 3))[:-2])
@example(b"QUJD" * 19 + b"\r\n" + b"QU D" * 19 + b"\r\n")
def test_base64_line_layouts_decode_as_the_tolerant_decoding(data: bytes) -> None:
    compact = mime._b64_compact_lines(data)
    if compact is not None and compact.translate(None, mime._B64_ALPHABET + b"=") == b"":
        # only what a strict decoding accepts is used: then the lines held no whitespace
        assert compact == data.translate(None, mime._WHITESPACE)
    try:
        decoded: Any = mime._b64decode_tolerant(data)
    except MessageFormatError as exc:
        decoded = "truncated" if "truncated" in exc.message else "invalid"
    assert decoded == _b64decode_tolerant_general(data)


def test_base64_line_layouts_are_taken() -> None:
    data = _crlf_lines(bytes(range(256)) * 100)
    assert mime._b64_compact_lines(data) == data.translate(None, mime._WHITESPACE)


@SETTINGS
@given(header_blocks())
@example(b"")
@example(b"A:b")
@example(b"A:b\n")
@example(b"A:b\nx")
@example(b"A:b\n\n")
@example(b"A:b\n c\nB:")
@example(b" A:b\n")
def test_plain_fields_tile_the_block_exactly_when_the_block_regex_matches(block: bytes) -> None:
    text = block.decode("latin-1").replace("\r\n", "\n")
    if "\r" in text or len(block) > mime._MAX_LINE or not block.isascii():
        return  # declined before the regex
    answered = mime._parse_plain_headers(block, LIMITS) is not None
    assert answered == (mime._PLAIN_BLOCK.fullmatch(text) is not None)


_INNER_MESSAGES = [
    b"From: a@x.org\r\nTo: b@y.org\r\n\r\nbody\r\n",
    b"\xef\xbb\xbfFrom: a@x.org\r\n\r\nbody\r\n",
    b"From: a@x.org\nSubject: lf\n\nbody\n",
    b"From: a@x.org\r\nFrom: c@x.org\r\n\r\n",
    b"From:  <a@x.org>\r\n folded\r\n\r\n",
    b"Bad Header\r\nFrom: a@x.org\r\n\r\n",
    b"From: \xc3\xa9@x.org\r\n\r\n",
    b"",
]


@st.composite
def signed_message_layers(draw: st.DrawFn) -> bytes:
    """multipart/signed around a message/rfc822 part (encoded or not, with or without headers of its own)."""
    inner = draw(st.sampled_from(_INNER_MESSAGES))
    encoding = draw(
        st.sampled_from([b"", b"Content-Transfer-Encoding: 7bit\r\n", b"Content-Transfer-Encoding: base64\r\n"])
    )
    body = base64.encodebytes(inner) if b"base64" in encoding else inner
    kind = draw(st.sampled_from([b"message/rfc822", b"text/plain", b"Message/RFC822"]))
    part = b"Content-Type: " + kind + b"\r\n" + encoding + b"\r\n" + body
    parts = [part, _SIGNATURE_PART]
    if draw(st.booleans()):
        parts.append(part)
    layer = b"".join(b"--s\r\n" + p + b"\r\n" for p in parts) + b"--s--\r\n"
    head = b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary=s\r\n'
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + head + b"\r\n" + layer


@SETTINGS
@given(st.one_of(signed_message_layers(), signed_layers()))
def test_signed_message_headers_are_the_parsed_headers(layer: bytes) -> None:
    memo: dict[tuple[int, int], Any] = {}
    try:
        mime._open_signed_layer(layer, LIMITS, memo)
    except MessageFormatError:
        return
    found = mime._signed_message_headers(layer, memo)
    if found is None:
        return
    start, end, headers = found
    assert headers == mime._parse_header_fields(layer[start:end], LIMITS)
    # and the range is the body of the first part, as unwrap gives it
    _, parts = mime._open_signed_layer(layer, LIMITS)
    assert parts is not None
    assert mime.unwrap(parts.content_entity) == layer[start:end]


def test_signed_message_headers_are_found() -> None:
    inner = b"From: a@x.org\r\nTo: b@y.org\r\n\r\nbody\r\n"
    layer = (
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary=s\r\n\r\n'
        b"--s\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--s\r\n" + _SIGNATURE_PART + b"\r\n--s--\r\n"
    )
    memo: dict[tuple[int, int], Any] = {}
    mime._open_signed_layer(layer, LIMITS, memo)
    found = mime._signed_message_headers(layer, memo)
    assert found is not None and layer[found[0] : found[1]] == inner
    assert found[2] == (("From", "a@x.org"), ("To", "b@y.org"))
