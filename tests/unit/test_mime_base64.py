"""The base64 codec under the MIME layer (RFC 2045 section 6.8) gives exactly what Python's own does.

hisp.core.mime decodes and encodes base64 with pybase64 (SIMD) for speed; these properties pin it to
``binascii``'s strict decoder and encoder, refusals included, so that the speed changes nothing a sender or a
receiving HISP can see (AS-6: a message is read as sent).
"""

from __future__ import annotations

import base64
import binascii
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hisp.core import mime
from hisp.errors import MessageFormatError

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _binascii_strict(data: bytes) -> bytes | None:
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


def _ours(data: bytes) -> bytes | None:
    try:
        return mime._b64decode_strict(data)
    except binascii.Error:
        return None


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_encoding_is_binascii_encoding(data: bytes) -> None:
    assert mime._b64encode(data) == binascii.b2a_base64(data, newline=False)
    assert mime._b64encode(memoryview(data)) == binascii.b2a_base64(data, newline=False)


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_lines_are_encodebytes_with_crlf(data: bytes) -> None:
    assert mime._b64encode_lines(data) == base64.encodebytes(data).replace(b"\n", b"\r\n")


@settings(max_examples=40)
@given(st.integers(0, 2**32), st.integers(57 * 1024 - 60, 57 * 1024 * 2 + 60))
def test_long_bodies_are_encodebytes_with_crlf(seed: int, length: int) -> None:
    # around the 1024-line steps of _b64_write, where a step's lines are cut apart by one struct
    data = random.Random(seed).randbytes(length)
    assert mime._b64encode_lines(data) == base64.encodebytes(data).replace(b"\n", b"\r\n")


@settings(max_examples=1000)
@given(st.lists(st.sampled_from([*ALPHABET, 0x0A, 0x0D, 0x20, 0x21, 0x2D]), max_size=40).map(bytes))
def test_strict_decoding_accepts_only_what_binascii_does(data: bytes) -> None:
    # pybase64 is the stricter of the two on one point: excess padding after a whole group ("AAAA=") it
    # refuses where binascii's strict mode accepts; the tolerant reading below then decodes it as before.
    ours = _ours(data)
    if ours is not None:
        assert ours == _binascii_strict(data)


@settings(max_examples=1000)
@given(st.lists(st.sampled_from([*ALPHABET, 0x0A, 0x0D, 0x20, 0x09]), max_size=60).map(bytes))
def test_tolerant_decoding_reads_what_python_reads(data: bytes) -> None:
    # alphabet and whitespace only: where both read it, the body decoder reads what binascii's lenient decoder
    # reads (the body decoder also supplies missing padding, which binascii refuses)
    try:
        decoded = mime._b64decode_tolerant(data)
        expected = binascii.a2b_base64(data)
    except (MessageFormatError, binascii.Error):
        return
    assert decoded == expected


@settings(max_examples=300)
@given(st.binary(max_size=5000))
def test_canonical_base64_round_trips(data: bytes) -> None:
    assert _ours(binascii.b2a_base64(data, newline=False)) == data


@pytest.mark.parametrize(
    "text",
    [b"QQ==QQ==", b"QQ=", b"Q===", b"QQ==A", b"QU=D", b"====", b"QUJ", b"QQ==\r\n", b"QU JD"],
)
def test_non_canonical_text_is_refused_by_the_strict_decoder(text: bytes) -> None:
    assert _ours(text) is None
    assert _binascii_strict(text) is None


@settings(max_examples=200)
@given(st.binary(max_size=3000))
def test_a_base64_part_decodes_to_its_bytes(data: bytes) -> None:
    body = base64.encodebytes(data).replace(b"\n", b"\r\n")
    header = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    entity = mime.parse_entity(header + body)
    assert mime.decode_body(entity) == data


def test_a_part_with_a_character_outside_the_alphabet_is_refused() -> None:
    entity = mime.parse_entity(b"Content-Transfer-Encoding: base64\r\n\r\nQU!D\r\n")
    with pytest.raises(MessageFormatError, match="invalid character"):
        mime.decode_body(entity)
