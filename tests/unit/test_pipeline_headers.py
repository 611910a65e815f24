"""The pipeline's header lookups parse a message's header section once (through
:func:`hisp.core.notify.header_fields`, shared with the notices): the fields of the same bytes come from the cache,
equal to a fresh parse; a large header section is parsed each time and not kept.
"""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32

from hisp.core import notify
from hisp.core.notify import HEADER_CACHE_MAX
from hisp.pipeline import _from_address, _header, _headers


def _fresh(raw: bytes) -> list[tuple[str, str]]:
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head, headersonly=True)
    return [(str(name), str(value)) for name, value in parsed.items()]


RAW = (
    b"From: Dr Smith <dr.smith@direct.clinic.example>\r\n"
    b"To: dr.jones@direct.hospital.example\r\n"
    b"Subject: a folded\r\n  subject\r\n"
    b"Message-ID: <m1@clinic.example>\r\n"
    b"X-Odd: \xff\xfe bytes\r\n"
    b"\r\n"
    b"body\r\n"
)


def test_the_same_bytes_are_parsed_once() -> None:
    raw = RAW.replace(b"<m1@", b"<cached-once@")
    before = notify._remembered_section.cache_info()
    first = _headers(raw)
    assert first == _fresh(raw)
    assert _header(raw, "message-id") == "<cached-once@clinic.example>"
    assert _header(raw, "Subject") == "a folded subject"
    assert str(_from_address(raw)) == "dr.smith@direct.clinic.example"
    after = notify._remembered_section.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 3)
    first.append(("X-Changed", "by the caller"))  # each caller gets its own list
    assert _headers(raw) == _fresh(raw)


def test_a_large_header_section_is_parsed_each_time_and_not_kept() -> None:
    raw = RAW.replace(b"X-Odd:", b"X-Long: " + b"a" * HEADER_CACHE_MAX + b"\r\nX-Odd:")
    before = notify._remembered_section.cache_info()
    assert _headers(raw) == _fresh(raw)
    assert _header(raw, "Message-ID") == "<m1@clinic.example>"
    after = notify._remembered_section.cache_info()
    assert (after.misses, after.hits, after.currsize) == (before.misses, before.hits, before.currsize)
