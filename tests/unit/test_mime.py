"""Unit tests for hisp.core.mime: bounded parsing, canonical form (AS-16), wrapping (AS-12), S/MIME (AS-7).

Vectors: the public fixtures under ../shared/fixtures (provenance in their MANIFEST.md), never copied here.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import os
import re

import pytest
from conftest import FIXTURES, fixture_bytes

from hisp.core import mime
from hisp.core.mime import ContentType, MimeLimits
from hisp.core.policy import DigestAlgorithm
from hisp.errors import ConfigError, MessageFormatError


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def leaves(message: bytes) -> list[email.message.Message]:
    """Leaf parts as the stdlib parser (an independent oracle) sees them."""
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    return [part for part in parsed.walk() if not part.is_multipart()]


def assert_7bit_crlf(data: bytes) -> None:
    assert data.isascii()
    assert b"\x00" not in data
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


# --- Content-Type ------------------------------------------------------------------------------------

ENVELOPE_FIXTURES = {
    # file: (mime type, smime type, params that must be present)
    "dcdt/testDecryptMail_invalidMimeType.eml": ("text/plain", None, {}),
    "dcdt/testDecryptMail_pkcs7-mime_diffMimeTypeParamOrder.eml": (
        "application/pkcs7-mime",
        "enveloped-data",
        {"name": "smime.p7m", "smime-type": "enveloped-data"},
    ),
    "dcdt/testDecryptMail_pkcs7-mime_encryptedWithWrongKey.eml": (
        "application/pkcs7-mime",
        "enveloped-data",
        {"name": "smime.p7m", "smime-type": "enveloped-data"},
    ),
    "dcdt/testDecryptMail_pkcs7-mime_valid.eml": (
        "application/pkcs7-mime",
        "enveloped-data",
        {"name": "smime.p7m", "smime-type": "enveloped-data"},
    ),
    "dcdt/testDecryptMail_x-pkcs7-mime_noMatchingKeys.eml": (
        "application/x-pkcs7-mime",
        "enveloped-data",
        {"name": "smime.p7m", "smime-type": "enveloped-data"},
    ),
    "dcdt/testDecryptMail_x-pkcs7-mime_valid.eml": (
        "application/x-pkcs7-mime",
        "enveloped-data",
        {"name": "smime.p7m", "smime-type": "enveloped-data", "charset": "utf-8"},
    ),
    "nhin-d/envelopeSignatureContentType2.eml": (
        "application/pkcs7-mime",
        "enveloped-data",
        {"name": "smime.p7m", "smime-type": "enveloped-data"},
    ),
}


def test_every_dcdt_eml_is_covered() -> None:
    present = {f"dcdt/{p.name}" for p in (FIXTURES / "dcdt").glob("*.eml")}
    if not present:
        pytest.skip("fixtures not available")
    assert present <= set(ENVELOPE_FIXTURES)


@pytest.mark.parametrize(("relpath", "expected"), ENVELOPE_FIXTURES.items(), ids=list(ENVELOPE_FIXTURES))
def test_fixture_content_types(relpath: str, expected: tuple[str, str | None, dict[str, str]]) -> None:
    mime_type, kind, params = expected
    entity = mime.parse_entity(fixture_bytes(relpath))
    assert entity.content_type.mime_type == mime_type
    for name, value in params.items():
        assert entity.content_type.params[name] == value
    assert mime.smime_type(entity.content_type) == kind
    if kind is not None:
        # The body is the base64 envelope: it decodes to a DER SEQUENCE.
        assert mime.decode_body(entity)[:1] == b"\x30"


def test_no_space_after_colon() -> None:
    entity = mime.parse_entity(fixture_bytes("dcdt/testDecryptMail_pkcs7-mime_valid.eml"))
    assert (
        entity.header("content-type") == 'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"'
    )
    assert entity.header("Content-Transfer-Encoding") == "base64"
    assert entity.transfer_encoding == "base64"


def test_folded_params_with_stray_charset() -> None:
    entity = mime.parse_entity(fixture_bytes("dcdt/testDecryptMail_x-pkcs7-mime_valid.eml"))
    assert entity.header("Content-Type") == (
        'application/x-pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"; charset=utf-8'
    )
    assert dict(entity.content_type.params) == {
        "smime-type": "enveloped-data",
        "name": "smime.p7m",
        "charset": "utf-8",
    }


CONTENT_TYPE_VARIANTS = {
    "plain": ("text/plain", "text/plain", {}),
    "upper case": ("TEXT/HTML; CHARSET=UTF-8", "text/html", {"charset": "UTF-8"}),
    "no spaces": (
        'multipart/signed;boundary=abc;micalg=SHA1;protocol="application/pkcs7-signature"',
        "multipart/signed",
        {"boundary": "abc", "micalg": "SHA1", "protocol": "application/pkcs7-signature"},
    ),
    "folded": (
        'multipart/signed;\r\n protocol="application/pkcs7-signature";\r\n\tboundary="----=_Part_1"',
        "multipart/signed",
        {"protocol": "application/pkcs7-signature", "boundary": "----=_Part_1"},
    ),
    "quoted semicolon and escape": (
        'application/octet-stream; name="a;b \\"c\\".bin"; x=1',
        "application/octet-stream",
        {"name": 'a;b "c".bin', "x": "1"},
    ),
    "spaces around equals": ("text/plain ; charset = us-ascii ;", "text/plain", {"charset": "us-ascii"}),
    "comment": ("text/plain (a comment); charset=us-ascii", "text/plain", {"charset": "us-ascii"}),
    "stray parameter": (
        "application/pkcs7-mime; ; foo; smime-type=signed-data",
        "application/pkcs7-mime",
        {"smime-type": "signed-data"},
    ),
    "repeated parameter: first wins": (
        "multipart/mixed; boundary=a; boundary=b",
        "multipart/mixed",
        {"boundary": "a"},
    ),
    "rfc 2231 continuation": (
        "application/x-stuff; title*0*=us-ascii'en'This%20is%20even%20more%20;"
        " title*1*=%2A%2A%2Afun%2A%2A%2A%20;"
        ' title*2="isn\'t it!"',
        "application/x-stuff",
        {"title": "This is even more ***fun*** isn't it!"},
    ),
    "rfc 2231 utf-8": ("text/plain; name*=utf-8''r%C3%A9sum%C3%A9.txt", "text/plain", {"name": "résumé.txt"}),
    "unterminated quote": ('text/plain; name="abc', "text/plain", {"name": "abc"}),
    "garbage": ("this is not a type", "text/plain", {"charset": "us-ascii"}),
    "empty": ("", "text/plain", {"charset": "us-ascii"}),
}


@pytest.mark.parametrize(
    ("value", "mime_type", "params"), CONTENT_TYPE_VARIANTS.values(), ids=list(CONTENT_TYPE_VARIANTS)
)
def test_content_type_variants(value: str, mime_type: str, params: dict[str, str]) -> None:
    parsed = ContentType.parse(value)
    assert parsed.mime_type == mime_type
    assert dict(parsed.params) == params


def test_content_type_absent_is_text_plain() -> None:
    assert ContentType.parse(None).mime_type == "text/plain"
    assert mime.parse_entity(b"Subject: x\r\n\r\nhello").content_type.mime_type == "text/plain"


def test_header_params_for_content_disposition() -> None:
    assert mime.header_params('attachment;\r\n filename="smime.p7s"') == {"filename": "smime.p7s"}


SMIME_TYPES = {
    "enveloped quoted": ('application/pkcs7-mime; smime-type="enveloped-data"', "enveloped-data"),
    "enveloped upper": ("application/pkcs7-mime; SMIME-TYPE=Enveloped-Data", "enveloped-data"),
    "auth enveloped": ("application/pkcs7-mime; smime-type=authEnveloped-data", "authEnveloped-data"),
    "signed data": ("application/x-pkcs7-mime; smime-type=signed-data; name=smime.p7m", "signed-data"),
    "certs only": ("application/pkcs7-mime; smime-type=certs-only", "certs-only"),
    "inferred from name": ("application/pkcs7-mime; name=smime.p7m", "enveloped-data"),
    "inferred from quoted name": ('application/x-pkcs7-mime; name="SMIME.P7M"', "enveloped-data"),
    "nothing to infer": ("application/pkcs7-mime", None),
    "unknown value": ("application/pkcs7-mime; smime-type=frobnicated", None),
    "signature is not pkcs7-mime": ("application/pkcs7-signature; name=smime.p7s", None),
    "text": ("text/plain; smime-type=enveloped-data", None),
}


@pytest.mark.parametrize(("value", "expected"), SMIME_TYPES.values(), ids=list(SMIME_TYPES))
def test_smime_type(value: str, expected: str | None) -> None:
    assert mime.smime_type(ContentType.parse(value)) == expected


# --- parse_entity -------------------------------------------------------------------------------------


def test_parse_entity_keeps_exact_bytes() -> None:
    raw = crlf("Subject: a\n folded\nContent-Type: text/plain\n\nbody\n")
    entity = mime.parse_entity(raw)
    assert entity.raw == raw
    assert entity.header_block == crlf("Subject: a\n folded\nContent-Type: text/plain\n")
    assert entity.body == b"body\r\n"
    assert entity.raw == entity.header_block + b"\r\n" + entity.body
    assert entity.header("subject") == "a folded"
    assert entity.defects == ()


def test_parse_entity_lower_case_header_names() -> None:
    entity = mime.parse_entity(b"content-type: multipart/signed; boundary=x\r\nfrom: a@b\r\n\r\n")
    assert entity.header("Content-Type") == "multipart/signed; boundary=x"
    assert entity.header("FROM") == "a@b"
    assert entity.headers[0][0] == "content-type"  # names as received
    assert entity.content_type.params["boundary"] == "x"
    assert entity.defects == ()


def test_parse_entity_header_all_and_absent() -> None:
    entity = mime.parse_entity(b"Received: 1\r\nReceived: 2\r\n\r\n")
    assert entity.header_all("received") == ["1", "2"]
    assert entity.header("X-Missing") is None
    assert entity.header_all("X-Missing") == []


def test_parse_entity_strips_bom() -> None:
    raw = fixture_bytes("nhin-d/MDN.eml")
    assert raw.startswith(b"\xef\xbb\xbf")
    entity = mime.parse_entity(raw)
    assert mime.DEFECT_BOM in entity.defects
    assert entity.raw == raw[3:]
    assert entity.headers[0][0].isascii()
    assert entity.content_type.mime_type == "multipart/report"


def test_parse_entity_bare_lf() -> None:
    entity = mime.parse_entity(b"A: 1\nB: 2\n\nbody\n")
    assert entity.header_block == b"A: 1\nB: 2\n"
    assert entity.body == b"body\n"
    assert mime.DEFECT_BARE_LF in entity.defects


def test_parse_entity_without_body() -> None:
    entity = mime.parse_entity(b"Subject: only headers\r\n")
    assert entity.header("Subject") == "only headers"
    assert entity.body == b""
    entity = mime.parse_entity(b"Subject: no newline")
    assert entity.header("Subject") == "no newline"
    assert entity.body == b""


def test_parse_entity_without_headers() -> None:
    entity = mime.parse_entity(b"\r\nbody only")
    assert entity.header_block == b""
    assert entity.headers == ()
    assert entity.body == b"body only"
    assert entity.content_type.mime_type == "text/plain"


def test_parse_entity_records_malformed_lines() -> None:
    entity = mime.parse_entity(b" leading\r\nno colon here\r\nBad Name: x\r\nOk : y\r\n\r\n")
    assert entity.headers == (("Ok", "y"),)
    for defect in (
        mime.DEFECT_LEADING_CONTINUATION,
        mime.DEFECT_NO_COLON,
        mime.DEFECT_BAD_NAME,
        mime.DEFECT_SPACE_BEFORE_COLON,
    ):
        assert defect in entity.defects


def test_parse_entity_non_ascii_header_is_kept() -> None:
    entity = mime.parse_entity("Subject: résumé\r\n\r\n".encode())
    assert entity.header("Subject") == "résumé"
    assert mime.DEFECT_NON_ASCII_HEADER in entity.defects
    latin = mime.parse_entity(b"Subject: r\xe9sum\xe9\r\n\r\n")
    assert latin.header("Subject") == "résumé"


def test_parse_entity_long_header_line_is_a_defect() -> None:
    entity = mime.parse_entity(b"X-Long: " + b"a" * 1200 + b"\r\n\r\n")
    assert mime.DEFECT_LONG_HEADER_LINE in entity.defects


# --- limits -------------------------------------------------------------------------------------------


def test_oversize_message_refused() -> None:
    with pytest.raises(MessageFormatError, match="exceeds the limit"):
        mime.parse_entity(b"Subject: x\r\n\r\n" + b"a" * 2000, MimeLimits(max_message_bytes=1000))
    with pytest.raises(MessageFormatError):
        mime.canonicalize(b"Subject: x\r\n\r\n" + b"a" * 2000, MimeLimits(max_message_bytes=1000))


def test_huge_header_refused_with_defects() -> None:
    raw = b"\xef\xbb\xbfX-Big: " + b"a" * 300_000 + b"\r\n\r\nbody"
    with pytest.raises(MessageFormatError, match="header block") as caught:
        mime.parse_entity(raw)
    assert mime.DEFECT_BOM in caught.value.defects
    # Also without any blank line at all.
    with pytest.raises(MessageFormatError, match="header block"):
        mime.parse_entity(b"X-Big: " + b"a" * 300_000)


def test_too_many_headers_refused() -> None:
    raw = b"".join(b"X-%d: y\r\n" % i for i in range(20)) + b"\r\n"
    assert len(mime.parse_entity(raw, MimeLimits(max_headers=20)).headers) == 20
    with pytest.raises(MessageFormatError, match="header fields"):
        mime.parse_entity(raw, MimeLimits(max_headers=19))


def nested(depth: int) -> bytes:
    message = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for level in range(depth):
        boundary = b"b%d" % level
        message = (
            b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n"
            b"--" + boundary + b"\r\n" + message + b"\r\n--" + boundary + b"--\r\n"
        )
    return message


def test_nesting_depth_limit() -> None:
    assert mime.check_structure(nested(16)) == ()
    with pytest.raises(MessageFormatError, match="nesting deeper"):
        mime.check_structure(nested(17))
    with pytest.raises(MessageFormatError, match="nesting deeper"):
        mime.canonicalize(nested(17))


def test_rfc822_nesting_counts_as_depth() -> None:
    message = b"Subject: leaf\r\n\r\nx\r\n"
    for _ in range(5):
        message = b"Content-Type: message/rfc822\r\n\r\n" + message
    assert mime.check_structure(message, MimeLimits(max_depth=5)) == ()
    with pytest.raises(MessageFormatError):
        mime.check_structure(message, MimeLimits(max_depth=4))


def many_parts(count: int) -> bytes:
    parts = b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\n%d\r\n" % i for i in range(count))
    return b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" + parts + b"--p--\r\n"


def test_part_count_limit() -> None:
    assert mime.check_structure(many_parts(9), MimeLimits(max_parts=10)) == ()
    with pytest.raises(MessageFormatError, match="parts"):
        mime.check_structure(many_parts(10), MimeLimits(max_parts=10))
    with pytest.raises(MessageFormatError, match="parts"):
        mime.check_structure(many_parts(5000))


def test_multipart_without_boundary_refused() -> None:
    with pytest.raises(MessageFormatError, match="boundary"):
        mime.check_structure(b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\na\r\n--x--\r\n")
    with pytest.raises(MessageFormatError, match="no boundary delimiter"):
        mime.check_structure(b"Content-Type: multipart/mixed; boundary=y\r\n\r\n--x\r\n\r\na\r\n--x--\r\n")


def test_unterminated_multipart_is_a_defect_not_an_error() -> None:
    defects = mime.check_structure(b"Content-Type: multipart/mixed; boundary=y\r\n\r\n--y\r\n\r\na\r\n")
    assert mime.DEFECT_NO_CLOSE_DELIMITER in defects


def test_invalid_limits() -> None:
    with pytest.raises(ConfigError):
        MimeLimits(max_depth=0)


# --- decode_body --------------------------------------------------------------------------------------


def entity_with(encoding: str, body: bytes) -> mime.Entity:
    return mime.parse_entity(b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n" + body)


def test_decode_long_base64_line() -> None:
    payload = os.urandom(1500)
    line = base64.b64encode(payload)
    assert len(line) >= 1600
    assert mime.decode_body(entity_with("base64", line + b"\r\n")) == payload


def test_decode_base64_tolerances() -> None:
    assert mime.decode_body(entity_with("base64", b"aGVsbG8")) == b"hello"  # missing padding
    assert mime.decode_body(entity_with("Base64", b" aGVs\r\n\tbG8=\r\n")) == b"hello"
    assert mime.decode_body(entity_with("base64", b"aGVsbG8===")) == b"hello"
    with pytest.raises(MessageFormatError, match="invalid character"):
        mime.decode_body(entity_with("base64", b"aGVs*bG8="))
    with pytest.raises(MessageFormatError, match="invalid character"):
        mime.decode_body(entity_with("base64", b"aGVsbG8=aGVsbG8="))
    with pytest.raises(MessageFormatError, match="truncated"):
        mime.decode_body(entity_with("base64", b"aGVsb"))


def test_decode_other_encodings() -> None:
    assert (
        mime.decode_body(entity_with("quoted-printable", b"caf=C3=A9 =\r\nau lait"))
        == "café au lait".encode()
    )
    for identity in ("7bit", "8bit", "binary"):
        assert mime.decode_body(entity_with(identity, b"\x00\xff\r\n")) == b"\x00\xff\r\n"
    assert mime.decode_body(mime.parse_entity(b"Subject: x\r\n\r\nplain")) == b"plain"
    with pytest.raises(MessageFormatError, match="unknown Content-Transfer-Encoding"):
        mime.decode_body(entity_with("x-uuencode", b"begin 644 x\r\n"))


# --- canonicalize -------------------------------------------------------------------------------------


def test_canonicalize_lf_to_crlf_keeps_7bit_text() -> None:
    out = mime.canonicalize(b"Subject: x\nContent-Type: text/plain\n\nline 1\nline 2\rline 3\n")
    assert out == b"Subject: x\r\nContent-Type: text/plain\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"


def test_canonicalize_ends_with_crlf() -> None:
    assert mime.canonicalize(b"Subject: x\r\n\r\nno newline") == b"Subject: x\r\n\r\nno newline\r\n"


def test_canonicalize_keeps_header_folding() -> None:
    raw = b"Subject: a\n  folded\tsubject\nX-Y:tight\n\nbody\n"
    assert mime.canonicalize(raw).startswith(b"Subject: a\r\n  folded\tsubject\r\nX-Y:tight\r\n\r\n")


def test_canonicalize_8bit_text_to_base64() -> None:
    text = "Grüße\nà bientôt\n"
    raw = (
        b"Subject: x\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        + text.encode()
    )
    out = mime.canonicalize(raw)
    assert_7bit_crlf(out)
    entity = mime.parse_entity(out)
    assert entity.header_all("Content-Transfer-Encoding") == ["base64"]
    assert mime.decode_body(entity) == text.replace("\n", "\r\n").encode()


def test_canonicalize_undeclared_8bit_text_to_base64() -> None:
    out = mime.canonicalize("Subject: x\r\n\r\ncafé\r\n".encode())
    entity = mime.parse_entity(out)
    assert entity.header("Content-Transfer-Encoding") == "base64"
    assert mime.decode_body(entity) == "café\r\n".encode()


def test_canonicalize_relabels_ascii_8bit() -> None:
    out = mime.canonicalize(
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\nascii only\r\n"
    )
    assert out == b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n\r\nascii only\r\n"


def test_canonicalize_binary_attachment_to_base64() -> None:
    payload = bytes(range(256)) * 40 + b"\n\r\n\r."
    raw = (
        b"From: a@b.example\nContent-Type: multipart/mixed; boundary=zz\n\n"
        b"--zz\nContent-Type: text/plain\n\nsee attached\n"
        b"--zz\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: binary\n\n"
        + payload
        + b"\n--zz--\n"
    )
    out = mime.canonicalize(raw)
    assert_7bit_crlf(out)
    parts = leaves(out)
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/octet-stream"]
    assert parts[0].get_payload(decode=True) == b"see attached"
    assert parts[1]["Content-Transfer-Encoding"] == "base64"
    assert parts[1].get_payload(decode=True) == payload
    encoded = parts[1].get_payload()
    assert isinstance(encoded, str)
    assert max(len(line) for line in encoded.splitlines()) == 76


def test_canonicalize_long_lines() -> None:
    long_line = b"x" * 1500
    out = mime.canonicalize(b"Content-Type: text/plain\r\n\r\n" + long_line + b"\r\nshort\r\n")
    assert_7bit_crlf(out)
    entity = mime.parse_entity(out)
    assert entity.transfer_encoding == "base64"
    assert mime.decode_body(entity) == long_line + b"\r\nshort\r\n"
    # A base64 body on one 1,600+-character line is re-wrapped.
    payload = os.urandom(1500)
    out = mime.canonicalize(
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(payload)
    )
    assert_7bit_crlf(out)
    assert mime.decode_body(mime.parse_entity(out)) == payload


def test_canonicalize_qp_with_8bit_bytes_to_base64() -> None:
    raw = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nna\xefve =3D\r\n"
    out = mime.canonicalize(raw)
    entity = mime.parse_entity(out)
    assert entity.transfer_encoding == "base64"
    assert mime.decode_body(entity) == b"na\xefve =\r\n"


def test_canonicalize_nested_multiparts_and_rfc822() -> None:
    inner_message = (
        "From: x@y.example\nSubject: forwarded\nContent-Type: multipart/alternative; boundary=alt\n\n"
        "--alt\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nnaïve\n"
        "--alt\nContent-Type: text/html\n\n<p>x</p>\n--alt--\n"
    )
    raw = (
        "From: a@b.example\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=outer\n\n"
        "preamble\n--outer\nContent-Type: text/plain\n\nhello\n"
        "--outer\nContent-Type: message/rfc822\n\n" + inner_message + "\n--outer--\nepilogue\n"
    ).encode()
    out = mime.canonicalize(raw)
    assert_7bit_crlf(out)
    assert mime.canonicalize(out) == out
    assert b"\r\npreamble\r\n--outer\r\n" in b"\r\n" + out
    assert out.endswith(b"--outer--\r\nepilogue\r\n")
    parts = leaves(out)
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/plain", "text/html"]
    assert parts[1].get_payload(decode=True) == "naïve".encode()
    assert parts[2].get_payload(decode=True) == b"<p>x</p>"
    assert mime.check_structure(out) == ()


def test_canonicalize_decodes_base64_rfc822() -> None:
    raw = fixture_bytes("direct-ri-dotnet/Wrapped_Base64.eml")
    out = mime.canonicalize(raw)
    assert_7bit_crlf(out)
    entity = mime.parse_entity(out)
    assert entity.transfer_encoding == "7bit"
    assert mime.unwrap(entity) == mime.unwrap(mime.parse_entity(raw))
    assert mime.canonicalize(out) == out


def test_canonicalize_is_idempotent_on_fixtures() -> None:
    for relpath in (
        "direct-ri-java/messages/MessageWithAttachment.txt",
        "direct-ri-java/messages/MDNMessage.txt",
        "direct-ri-java/messages/DSNMessage.txt",
        "nhin-d/MDN.eml",
        "interop/nhin-d/Wrapped_Quoted.eml",
        "interop/abelian/decryptedMessage_wrapped_mdn.txt",
        "dcdt/testDecryptMail_x-pkcs7-mime_valid.eml",
    ):
        once = mime.canonicalize(fixture_bytes(relpath))
        assert mime.canonicalize(once) == once, relpath
        assert once.endswith(b"\r\n")


def test_message_with_attachment_structure_survives() -> None:
    raw = fixture_bytes("direct-ri-java/messages/MessageWithAttachment.txt")
    out = mime.canonicalize(raw)
    assert out == raw  # already canonical: CRLF, 7-bit, short lines
    before = leaves(raw)
    after = leaves(out)
    assert [p.get_content_type() for p in after] == ["text/plain", "image/png"]
    assert [p.get_payload(decode=True) for p in after] == [p.get_payload(decode=True) for p in before]
    image = after[1].get_payload(decode=True)
    assert isinstance(image, bytes)
    assert image.startswith(b"\x89PNG")


def test_message_with_attachment_survives_lf_round_trip() -> None:
    raw = fixture_bytes("direct-ri-java/messages/MessageWithAttachment.txt")
    assert mime.canonicalize(raw.replace(b"\r\n", b"\n")) == raw  # AS-16: an LF->CRLF round trip


def test_canonicalize_leaves_non_ascii_headers() -> None:
    raw = "Subject: Grüße\r\n\r\nbody\r\n".encode()
    assert mime.canonicalize(raw) == raw


def test_canonicalize_utf16_text_is_not_line_normalised() -> None:
    payload = "a\nb".encode("utf-16-le")
    raw = b"Content-Type: text/plain; charset=utf-16le\r\nContent-Transfer-Encoding: binary\r\n\r\n" + payload
    assert mime.decode_body(mime.parse_entity(mime.canonicalize(raw))) == payload


# --- wrap / unwrap ------------------------------------------------------------------------------------

PLAIN = crlf(
    "Received: from x\n"
    "From: Dr A <dr.a@direct.a.example>\n"
    "To: dr.b@direct.b.example\n"
    "Cc: dr.c@direct.b.example\n"
    "Bcc: hidden@direct.a.example\n"
    "Subject: Referral for patient\n"
    "Date: Thu, 01 Nov 2018 10:26:11 -0400\n"
    "Message-ID: <1@direct.a.example>\n"
    "In-Reply-To: <0@direct.b.example>\n"
    "References: <0@direct.b.example>\n"
    "X-Custom: kept inside only\n"
    "Content-Type: text/plain\n"
    "\n"
    "hello\n"
)


def test_wrap_copies_exactly_the_listed_headers() -> None:
    outer, entity = mime.wrap(PLAIN)
    assert [name for name, _ in outer] == [
        "From",
        "To",
        "Cc",
        "Subject",
        "Date",
        "Message-ID",
        "In-Reply-To",
        "References",
        "MIME-Version",
    ]
    assert dict(outer)["MIME-Version"] == "1.0"
    assert dict(outer)["From"] == "Dr A <dr.a@direct.a.example>"
    assert entity == b"Content-Type: message/rfc822\r\n\r\n" + mime.canonicalize(PLAIN)
    # The full original (Bcc included) is inside, protected by the signature.
    assert mime.unwrap(mime.parse_entity(entity)) == mime.canonicalize(PLAIN)


def test_wrap_without_subject_and_with_existing_mime_version() -> None:
    outer, _ = mime.wrap(
        b"MIME-Version: 1.0\r\nSubject: PHI\r\nBcc: x@y\r\nFrom: a@b\r\n\r\nx\r\n", copy_subject=False
    )
    assert outer == [("MIME-Version", "1.0"), ("From", "a@b")]


def test_unwrap_base64_wrapper() -> None:
    entity = mime.parse_entity(fixture_bytes("direct-ri-dotnet/Wrapped_Base64.eml"))
    inner = mime.unwrap(entity)
    assert inner is not None
    assert inner.startswith(b"X-Sender: toby@nhind.hsgincubator.com\r\n")
    inner_entity = mime.parse_entity(inner)
    assert inner_entity.header("Subject") == "This message has a base64 internal message"
    assert mime.decode_body(inner_entity) == b"Hello this is a message body that is moderately long.\r\n"


def test_unwrap_quoted_printable_wrapper() -> None:
    signed = mime.split_multipart_signed(
        mime.parse_entity(fixture_bytes("interop/nhin-d/Wrapped_Quoted.eml"))
    )
    inner = mime.unwrap(signed.content_entity)
    assert inner is not None
    assert b"=3D" not in inner
    entity = mime.parse_entity(inner)
    assert entity.header("Message-ID") == "<59dc9670-6e1c-404d-ada7-89972c742778@directaddress.net>"
    assert entity.content_type.params["boundary"] == "----=_NextPart_51415223.066511374841"
    assert "toby@direct.healthvault.com" in (entity.header("To") or "")
    assert mime.check_structure(inner)  # tolerated defects, no error


def test_unwrap_identity_is_exact_and_non_rfc822_is_none() -> None:
    entity = mime.parse_entity(b"Content-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nbody\r\n")
    assert mime.unwrap(entity) == b"Subject: x\r\n\r\nbody\r\n"
    assert mime.unwrap(mime.parse_entity(b"Content-Type: text/plain\r\n\r\nx")) is None


# --- multipart/signed ---------------------------------------------------------------------------------


def check_content_slice(raw: bytes, parts: mime.SignedParts, boundary: bytes) -> None:
    """The content is a slice of the raw message bordered by exactly the delimiter lines."""
    start = raw.find(parts.content)
    assert start > 0
    end = start + len(parts.content)
    before = raw[:start]
    assert before.endswith(b"--" + boundary + b"\r\n") or before.endswith(b"--" + boundary + b"\n")
    assert re.match(rb"\r?\n--" + re.escape(boundary) + rb"[ \t]*\r?\n", raw[end:])
    assert raw.count(parts.content) == 1


SIGNED_FIXTURES = {
    "abelian wrapped mdn (LF, one long base64 line)": (
        "interop/abelian/decryptedMessage_wrapped_mdn.txt",
        b"df9f75299f964e38a96aa19ba4f2c5b4",
        "sha256",
        "message/rfc822",
    ),
    "nhin-d wrapped quoted (folded header, QP rfc822)": (
        "interop/nhin-d/Wrapped_Quoted.eml",
        b"----=_NextPart_36463612.222761064091",
        "SHA1",
        "message/rfc822",
    ),
}


@pytest.mark.parametrize(
    ("relpath", "boundary", "micalg", "content_type"), SIGNED_FIXTURES.values(), ids=list(SIGNED_FIXTURES)
)
def test_split_fixture(relpath: str, boundary: bytes, micalg: str, content_type: str) -> None:
    raw = fixture_bytes(relpath)
    parts = mime.split_multipart_signed(mime.parse_entity(raw))
    check_content_slice(raw, parts, boundary)
    assert parts.signature[:1] == b"\x30"
    assert parts.micalg == micalg
    assert parts.protocol == "application/pkcs7-signature"
    assert parts.content_entity.content_type.mime_type == content_type
    assert parts.content_entity.raw == parts.content
    if b"\r\n" in parts.content:
        assert parts.content_crlf is parts.content
    else:
        assert parts.content_crlf == parts.content.replace(b"\n", b"\r\n")


def test_split_abelian_unwrapped() -> None:
    raw = fixture_bytes("abelian/decryptedMessage_unwrapped.txt")
    # The fixture's signature was deliberately altered ("ALTEREDDDD..."): not valid base64.
    with pytest.raises(MessageFormatError, match="signature part"):
        mime.split_multipart_signed(mime.parse_entity(raw))
    start = raw.index(b"ALTEREDDDDMIAG")
    end = raw.index(b"\n------=_Part_19531_318195001.1538036771786--")
    repaired = raw[:start] + base64.encodebytes(b"\x30\x80" + b"\x00" * 64).rstrip(b"\n") + raw[end:]
    parts = mime.split_multipart_signed(mime.parse_entity(repaired))
    check_content_slice(repaired, parts, b"----=_Part_19531_318195001.1538036771786")
    assert parts.signature[:1] == b"\x30"
    assert parts.micalg == "sha-1"
    assert parts.content_entity.content_type.mime_type == "multipart/mixed"
    assert parts.content.endswith(b"------=_Part_19529_740612616.1538036771769--\n\n")
    assert parts.content_crlf == parts.content.replace(b"\n", b"\r\n")


def signed_body(
    *parts: bytes, close: bool = True, second_type: bytes = b"application/pkcs7-signature"
) -> bytes:
    header = (
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;'
        b" boundary=B\r\n"
    )
    body = b"".join(b"--B\r\n" + part + b"\r\n" for part in parts)
    body = body.replace(b"SIGTYPE", second_type)
    return header + b"\r\n" + body + (b"--B--\r\n" if close else b"")


CONTENT = b"Content-Type: text/plain\r\n\r\nsigned\r\n"
SIGNATURE = b"Content-Type: SIGTYPE\r\nContent-Transfer-Encoding: base64\r\n\r\nMIIBAA=="


def test_split_refuses_wrong_part_counts() -> None:
    for parts in ((CONTENT,), (CONTENT, SIGNATURE, SIGNATURE)):
        with pytest.raises(MessageFormatError, match="exactly two body parts"):
            mime.split_multipart_signed(mime.parse_entity(signed_body(*parts)))


def test_split_refuses_structural_problems() -> None:
    with pytest.raises(MessageFormatError, match="closing delimiter"):
        mime.split_multipart_signed(mime.parse_entity(signed_body(CONTENT, SIGNATURE, close=False)))
    with pytest.raises(MessageFormatError, match="not application/pkcs7-signature"):
        mime.split_multipart_signed(
            mime.parse_entity(signed_body(CONTENT, SIGNATURE, second_type=b"text/plain"))
        )
    with pytest.raises(MessageFormatError, match="expected multipart/signed"):
        mime.split_multipart_signed(mime.parse_entity(b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"))
    no_boundary = b"Content-Type: multipart/signed\r\n\r\n--B\r\n\r\nx\r\n--B--\r\n"
    with pytest.raises(MessageFormatError, match="boundary"):
        mime.split_multipart_signed(mime.parse_entity(no_boundary))


def test_split_accepts_legacy_signature_type_and_padding() -> None:
    raw = signed_body(CONTENT, SIGNATURE, second_type=b"application/x-pkcs7-signature; name=smime.p7s")
    raw = raw.replace(b"\r\n--B\r\n", b"\r\n--B  \r\n")  # transport padding after the delimiter
    parts = mime.split_multipart_signed(mime.parse_entity(raw))
    assert parts.content == CONTENT
    assert parts.signature == b"\x30\x82\x01\x00"


def test_split_ignores_boundary_prefix_lines() -> None:
    content = b"Content-Type: text/plain\r\n\r\n--Bnot a delimiter\r\n x--B\r\n"
    parts = mime.split_multipart_signed(mime.parse_entity(signed_body(content, SIGNATURE)))
    assert parts.content == content


def test_build_then_split_round_trip() -> None:
    _, entity = mime.wrap(PLAIN)
    signature = b"\x30\x82" + os.urandom(3000)
    built = mime.build_multipart_signed(entity, signature, DigestAlgorithm.SHA256)
    assert_7bit_crlf(built)
    outer = mime.parse_entity(built)
    assert outer.content_type.mime_type == "multipart/signed"
    assert outer.content_type.params["micalg"] == "sha-256"
    assert outer.content_type.params["protocol"] == "application/pkcs7-signature"
    parts = mime.split_multipart_signed(outer)
    assert parts.content == entity
    assert parts.signature == signature
    assert parts.content_crlf is parts.content
    # An independent parser sees two parts and the same signature.
    parsed = email.message_from_bytes(built, policy=email.policy.compat32)
    payload = parsed.get_payload()
    assert isinstance(payload, list)
    assert len(payload) == 2
    signature_part = payload[1]
    assert isinstance(signature_part, email.message.Message)
    assert signature_part.get_payload(decode=True) == signature
    assert mime.check_structure(built) == ()


def test_build_multipart_signed_layout() -> None:
    built = mime.build_multipart_signed(b"E\r\n", b"\x30\x00", DigestAlgorithm.SHA384, boundary="bnd")
    assert built == (
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
        b' micalg=sha-384; boundary="bnd"\r\n'
        b"\r\n"
        b"--bnd\r\n"
        b"E\r\n"
        b"\r\n--bnd\r\n"
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n'
        b"\r\n"
        b"MAA=\r\n"
        b"--bnd--\r\n"
    )


def test_build_multipart_signed_boundaries() -> None:
    with pytest.raises(MessageFormatError):
        mime.build_multipart_signed(b"x\r\n--bnd\r\n", b"\x30\x00", DigestAlgorithm.SHA256, boundary="bnd")
    with pytest.raises(MessageFormatError):
        mime.build_multipart_signed(b"x", b"\x30\x00", DigestAlgorithm.SHA256, boundary="bad\r\nboundary")
    first = mime.build_multipart_signed(b"x", b"\x30\x00", DigestAlgorithm.SHA256)
    second = mime.build_multipart_signed(b"x", b"\x30\x00", DigestAlgorithm.SHA256)
    assert first != second  # random boundaries


# --- build_enveloped_message --------------------------------------------------------------------------


def test_build_enveloped_message() -> None:
    der = b"\x30\x82" + os.urandom(5000)
    long_to = ", ".join(f"recipient{i}@direct.example.org" for i in range(8))
    outer = [
        ("From", "dr.a@direct.a.example"),
        ("To", long_to),
        ("Subject", "Grüße"),
        ("MIME-Version", "1.0"),
    ]
    message = mime.build_enveloped_message(outer, der)
    head, _, body = message.partition(b"\r\n\r\n")
    assert message.count(b"\n") == message.count(b"\r\n")
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert body.endswith(b"\r\n")
    assert {len(line) for line in body.split(b"\r\n")[:-2]} == {76}
    entity = mime.parse_entity(message)
    assert entity.header("To") == long_to
    assert entity.header("Subject") == "Grüße"
    assert entity.header_all("MIME-Version") == ["1.0"]
    assert entity.content_type.mime_type == "application/pkcs7-mime"
    assert mime.smime_type(entity.content_type) == "enveloped-data"
    assert entity.content_type.params["name"] == "smime.p7m"
    assert mime.header_params(entity.header("Content-Disposition") or "") == {"filename": "smime.p7m"}
    assert mime.decode_body(entity) == der


def test_build_enveloped_message_authenticated_and_filtered() -> None:
    message = mime.build_enveloped_message(
        [("From", "a@b.example"), ("Content-Type", "text/plain")], b"\x30\x00", authenticated=True
    )
    entity = mime.parse_entity(message)
    assert mime.smime_type(entity.content_type) == "authEnveloped-data"
    assert entity.header_all("Content-Type") == [
        'application/pkcs7-mime; smime-type=authEnveloped-data; name="smime.p7m"'
    ]
    assert entity.header("MIME-Version") == "1.0"


def test_build_enveloped_message_refuses_header_injection() -> None:
    with pytest.raises(MessageFormatError, match="line break"):
        mime.build_enveloped_message([("Subject", "x\r\nBcc: evil@example.org")], b"\x30\x00")
    with pytest.raises(MessageFormatError, match="field name"):
        mime.build_enveloped_message([("Bad Name", "x")], b"\x30\x00")


def test_wrap_sign_envelope_layers() -> None:
    """The requirements' section 8.1 layering, end to end (without the crypto)."""
    outer, entity = mime.wrap(PLAIN)
    signed = mime.build_multipart_signed(entity, b"\x30\x03\x02\x01\x01", DigestAlgorithm.SHA256)
    sealed = mime.build_enveloped_message(outer, signed)
    envelope = mime.parse_entity(sealed)
    assert mime.header_params(envelope.header("Content-Type") or "")["smime-type"] == "enveloped-data"
    assert "Bcc" not in {name for name, _ in envelope.headers}
    inner = mime.parse_entity(mime.decode_body(envelope))
    parts = mime.split_multipart_signed(inner)
    assert parts.content == entity
    plain = mime.unwrap(parts.content_entity)
    assert plain == mime.canonicalize(PLAIN)
