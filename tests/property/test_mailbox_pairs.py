"""The address and header-section fast paths give exactly what the stdlib gives (hypothesis).

* ``addresses.mailbox_pairs``: ``email.utils.getaddresses`` of the same values, the usual ``Name <local@domain>``
  / ``local@domain`` forms read by one regular expression, anything else by the stdlib (remembered);
  ``addresses.simple_mailbox`` answers only for one such mailbox, with getaddresses' only pair;
  ``addresses.bare_address`` is ``parseaddr(text)[1]``.
* ``mdn._part_bodies``: the parts of a multipart body found by searching for the delimiter, as reading every line.
* ``notify.header_fields`` / ``header_pairs``: a plain ASCII header section read without the ``email`` parser,
  equal to ``BytesHeaderParser(policy=compat32)`` on every input, and remembered by the bytes.
"""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hisp import addresses
from hisp.addresses import bare_address, mailbox_pairs, simple_mailbox
from hisp.core import mdn, notify, smtp_policy

SETTINGS = settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Pieces near the simple forms and across their edges: atoms, dots, specials, white space, quotes, comments.
_ADDRESS_PIECES = st.sampled_from(
    [
        "dr.smith", "a", "B-c", "x_y+z", "o'neil", "#!$%&*/=?^`{|}~", "@", "@", ".", "..", " ", "  ", "\t",
        "\r\n ", "<", ">", ",", ", ", ";", ":", '"', '"Smith, J"', "(comment)", "\\", "[1.2.3.4]", "direct",
        "clinic", "example", "Dr.", "Dr", "Smith", "é", "=?utf-8?q?x?=", "Müller", "\x00", "-", "",
    ]
)
_ADDRESS_TEXT = st.lists(_ADDRESS_PIECES, max_size=14).map("".join)
_SIMPLE_TEXT = st.builds(
    lambda name, local, domain, space, bracket: (
        f"{name}{space}<{local}@{domain}>" if bracket else f"{space}{local}@{domain}{space}"
    ),
    st.sampled_from(["", "Dr Smith", "Dr. Smith", "dr.smith", "A  B", "x", "Dr\r\n Smith", "O'Neil J."]),
    st.sampled_from(["dr.smith", "a", "x+y", "a.b.c", "o'neil"]),
    st.sampled_from(["direct.clinic.example", "x", "a-b.c", "b.c.d"]),
    st.sampled_from(["", " ", "  ", "\t", "\r\n "]),
    st.booleans(),
)


@SETTINGS
@given(st.lists(st.one_of(_ADDRESS_TEXT, _SIMPLE_TEXT), max_size=3))
@example(["Dr Smith <dr.smith@direct.clinic.example>"])
@example(["dr.smith@direct.clinic.example", "B <b@x.org>, c@y.org"])
@example(["a@b.c, "])
@example(['"Smith, J" <a@b.c>'])
@example(["A <a@b.c> x"])
@example([""])
@example([])
def test_mailbox_pairs_is_getaddresses(values: list[str]) -> None:
    try:
        expected = getaddresses(values)
    except Exception as exc:  # the stdlib raises on some hostile input: so must the fast path
        try:
            mailbox_pairs(values)
        except type(exc):
            return
        raise AssertionError(f"getaddresses raised {exc!r}, mailbox_pairs did not") from None
    assert mailbox_pairs(values) == expected
    assert mailbox_pairs(values) == expected  # the remembered answer is the same, and a fresh list
    assert mailbox_pairs(values) is not mailbox_pairs(values)


@SETTINGS
@given(st.one_of(_ADDRESS_TEXT, _SIMPLE_TEXT))
@example("Dr Smith <dr.smith@direct.clinic.example>")
@example("a@b.c, d@e.f")
def test_simple_mailbox_and_bare_address(text: str) -> None:
    pair = simple_mailbox(text)
    if pair is not None:
        assert [pair] == getaddresses([text])
        assert pair == parseaddr(text)
    try:
        expected = parseaddr(text)[1]
    except Exception:
        return
    assert bare_address(text) == expected


def test_the_usual_forms_take_the_fast_path() -> None:
    assert simple_mailbox("Dr Smith <dr.smith@direct.clinic.example>") == (
        "Dr Smith",
        "dr.smith@direct.clinic.example",
    )
    assert simple_mailbox(" dr.smith@direct.clinic.example ") == ("", "dr.smith@direct.clinic.example")
    assert simple_mailbox('"Smith, J" <a@b.c>') is None
    before = addresses._remembered_getaddresses.cache_info()
    assert mailbox_pairs(["A <a@b.c>", "b@c.d, C D <c@d.e>"]) == [("A", "a@b.c"), ("", "b@c.d"), ("C D", "c@d.e")]
    assert addresses._remembered_getaddresses.cache_info() == before  # the stdlib parser was not needed


# Header-section pieces: names valid and not, colons, folding, every kind of line ending, 8-bit, controls.
_HEADER_PIECES = st.sampled_from(
    [
        b"From", b"To", b"Subject", b"X-A", b"Message-ID", b"From ", b"Bad Name", b":", b": ", b" :", b"a",
        b"Dr <a@b.c>", b"v", b"  ", b"\t", b" ", b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\t", b"\r\n\r\n",
        b"\n\n", b"\xff", b"\xc3\xa9", b"\x00", b"\x0b", b"\x0c", b"\x1c", b"\x7f", b"=?utf-8?q?x?=", b"body",
    ]
)
_HEADER_SECTION = st.lists(_HEADER_PIECES, max_size=24).map(b"".join)
_PLAIN_SECTION = st.lists(
    st.tuples(
        st.sampled_from([b"From", b"To", b"Subject", b"X-Odd", b"Disposition-Notification-Options", b"a"]),
        st.sampled_from([b":", b": ", b":  ", b":\t"]),
        st.sampled_from([b"", b"x", b"Dr Smith <a@b.c>", b"a  b ", b"\t"]),
        st.sampled_from([b"", b"\r\n folded", b"\r\n\tmore\r\n  again", b"\n x"]),
        st.sampled_from([b"\r\n", b"\n", b"\r"]),
    ).map(b"".join),
    max_size=8,
).map(lambda fields: b"".join(fields) + b"\r\nbody\r\n")


def _stdlib_fields(raw: bytes) -> tuple[tuple[str, str], ...]:
    parsed = BytesHeaderParser(policy=compat32).parsebytes(notify.header_block(raw), headersonly=True)
    return tuple((str(name), str(value)) for name, value in parsed.items())


@SETTINGS
@given(st.one_of(_HEADER_SECTION, _PLAIN_SECTION))
@example(b"From: a@b.c\r\nSubject: x\r\n folded\r\n\r\nbody")
@example(b"From a@b.c Mon\r\nTo: x\r\n\r\n")
@example(b" first continued\r\nTo: x\r\n\r\n")
@example(b"To: x\r\n: no name\r\nBad Name: y\r\n\r\n")
@example(b"To: x")
@example(b"")
def test_header_fields_is_the_compat32_parser(raw: bytes) -> None:
    expected = _stdlib_fields(raw)
    assert notify._parse_fields(notify.header_block(raw)) == expected
    assert notify.header_fields(raw) == expected
    assert notify.header_pairs(raw) == tuple((name, " ".join(value.split())) for name, value in expected)


def _old_header_from_addresses(raw: bytes, limit: int = 256 * 1024) -> tuple[str, ...]:
    """header_from_addresses as it was, parsing its own head each call."""
    end = raw.find(b"\r\n\r\n", 0, limit)
    head = raw[:limit] if end == -1 else raw[: end + 2]
    message = BytesHeaderParser(policy=compat32).parsebytes(head)
    fields = [str(value) for value in message.get_all("From", [])]
    return tuple(smtp_policy.normalize_mailbox(addr) for _, addr in getaddresses(fields) if addr)


@SETTINGS
@given(st.one_of(_HEADER_SECTION, _PLAIN_SECTION), st.sampled_from([b"", b"From: Dr <A@B.c>\r\n", b"From: x\n\n"]))
@example(b"To: x\r\n", b"From: a@b.c, C <c@d.e>\r\n\r\nFrom: no@x.y\r\n")
@example(b"From: a@b.c\nTo: x\n\nFrom: body@x.y\r\n\r\n", b"")
@example(b"X: " + b"a" * (256 * 1024) + b"\r\nFrom: late@x.y\r\n\r\n", b"")
def test_header_from_addresses_as_before(section: bytes, lead: bytes) -> None:
    raw = lead + section
    try:
        expected = _old_header_from_addresses(raw)
    except Exception as exc:
        try:
            smtp_policy.header_from_addresses(raw)
        except type(exc):
            return
        raise AssertionError(f"the old reading raised {exc!r}, the new one did not") from None
    assert smtp_policy.header_from_addresses(raw) == expected


def test_a_header_section_is_read_once_and_remembered() -> None:
    raw = b"From: Dr Smith <dr.smith@direct.clinic.example>\r\nMessage-ID: <once-1@x>\r\nSubject: a\r\n b\r\n\r\nbody"
    before = notify._remembered_section.cache_info()
    assert smtp_policy.header_from_addresses(raw) == ("dr.smith@direct.clinic.example",)
    assert notify.header_pairs(raw)[2] == ("Subject", "a b")
    assert notify.header_fields(raw)[2] == ("Subject", "a\r\n b")
    assert notify.header_pairs(raw + b" more body") == notify.header_pairs(raw)  # the same header section
    after = notify._remembered_section.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 4)
    large = b"X-Long: " + b"a" * notify.HEADER_CACHE_MAX + b"\r\n" + raw
    assert notify.header_pairs(large)[0] == ("X-Long", "a" * notify.HEADER_CACHE_MAX)
    assert notify._remembered_section.cache_info().currsize == after.currsize  # not kept
    assert notify.header_pairs(bytearray(raw)) == notify.header_pairs(raw)


# Multipart bodies: delimiters and near-delimiters, every line ending, blanks after the marker, a marker inside
# a line, the close delimiter (or none).
_PART_PIECES = st.sampled_from(
    [b"--b", b"--b--", b"--bx", b"-b", b"b", b"--", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\r\r\n", b"text",
     b"Content-Type: text/plain", b"--b ", b"--b--\t", b"x--b", b"\x00", b"\xff"]
)


@SETTINGS
@given(st.lists(_PART_PIECES, max_size=30).map(b"".join), st.sampled_from([b"--b", b"--b ", b"--"]))
@example(b"pre\r\n--b\r\nA\r\n--b\r\nB\r\n--b--\r\nepilogue\r\n--b\r\n", b"--b")
@example(b"--b\nA\n--b \t\nB", b"--b")
@example(b"--b\r\r\nA\r--b--", b"--b")
def test_part_bodies_by_search_is_by_line(body: bytes, marker: bytes) -> None:
    fast: list[str] = []
    slow: list[str] = []
    assert mdn._part_bodies(body, marker, fast) == mdn._part_bodies_by_line(body, marker, slow)
    assert fast == slow
