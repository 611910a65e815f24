"""Property tests for hisp.core.mime (hypothesis).

The stdlib ``email`` parser serves as an independent oracle for the structure and payloads of canonical
output; the generated payloads are the ground truth.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email
import email.policy
import re
from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hisp.core import mime
from hisp.core.policy import DigestAlgorithm
from hisp.errors import MessageFormatError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# No "=" in generated text, so that no text can contain a "=_" boundary.
TEXT_CHARS = st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n=")
ASCII_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="=")


@dataclass
class Leaf:
    content_type: str
    payload: bytes  # the decoded payload the sender meant (text: CRLF line breaks)
    text: bool


def _lines_to_body(lines: list[bytes], newline: bytes) -> bytes:
    return newline.join(lines)


@st.composite
def leaf(draw: st.DrawFn, newline: bytes) -> tuple[bytes, list[Leaf]]:
    kind = draw(st.sampled_from(["text8", "ascii7", "long", "qp", "binary", "b64", "b64long"]))
    if kind in ("text8", "ascii7", "long", "qp"):
        chars = TEXT_CHARS if kind in ("text8", "qp") else ASCII_CHARS
        lines = [
            line.encode("utf-8")
            for line in draw(st.lists(st.text(chars, max_size=60), min_size=1, max_size=8))
        ]
        if kind == "long":
            lines.insert(draw(st.integers(0, len(lines))), b"L" * draw(st.integers(999, 2500)))
        payload = b"\r\n".join(lines)
        if kind == "qp":
            encoded = binascii.b2a_qp(b"\n".join(lines)).replace(b"\n", newline)
            headers = b"Content-Type: text/plain; charset=utf-8" + newline
            headers += b"Content-Transfer-Encoding: quoted-printable" + newline
            return headers + newline + encoded, [Leaf("text/plain", payload, True)]
        headers = b"Content-Type: text/plain; charset=utf-8" + newline
        if kind == "text8":
            headers += b"Content-Transfer-Encoding: 8bit" + newline
        return headers + newline + _lines_to_body(lines, newline), [Leaf("text/plain", payload, True)]
    payload = draw(st.binary(max_size=3000))
    if kind == "binary":
        assume(b"=_" not in payload)
        if newline == b"\n":
            # "...\r\n--b" in an LF message is ambiguous: the CR may belong to the delimiter.
            assume(not payload.endswith(b"\r"))
        headers = b"Content-Type: application/octet-stream" + newline
        headers += b"Content-Transfer-Encoding: binary" + newline
        return headers + newline + payload, [Leaf("application/octet-stream", payload, False)]
    encoded = base64.b64encode(payload)
    if kind == "b64":
        encoded = base64.encodebytes(payload).replace(b"\n", newline)
    headers = b"Content-Type: application/pdf; name=x.pdf" + newline
    headers += b"Content-Transfer-Encoding: base64" + newline
    return headers + newline + encoded, [Leaf("application/pdf", payload, False)]


@st.composite
def entity(
    draw: st.DrawFn, newline: bytes, depth: int, counter: list[int], top: bool = False
) -> tuple[bytes, list[Leaf]]:
    choices = ["multipart"] if top else (["leaf"] if depth >= 3 else ["leaf", "leaf", "multipart", "rfc822"])
    kind = draw(st.sampled_from(choices))
    if kind == "leaf":
        return draw(leaf(newline))
    if kind == "rfc822":
        inner, inner_leaves = draw(entity(newline, depth + 1, counter))
        headers = b"Content-Type: message/rfc822" + newline + newline
        return headers + b"Subject: inner" + newline + inner, inner_leaves
    counter[0] += 1
    boundary = b"=_b%d" % counter[0]
    children = draw(st.lists(entity(newline, depth + 1, counter), min_size=1, max_size=3))
    subtype = draw(st.sampled_from([b"mixed", b"alternative", b"related"]))
    head = b"Content-Type: multipart/" + subtype + b';\r\n boundary="' + boundary + b'"' + newline
    head = head.replace(b"\r\n", newline)
    if top:
        head = b"From: a@direct.example" + newline + b"MIME-Version: 1.0" + newline + head
    preamble = draw(st.sampled_from([b"", b"This is a multi-part message in MIME format." + newline]))
    body = preamble
    leaves: list[Leaf] = []
    for child, child_leaves in children:
        body += b"--" + boundary + newline + child + newline
        leaves.extend(child_leaves)
    body += b"--" + boundary + b"--" + draw(st.sampled_from([b"", newline, newline + b"epilogue" + newline]))
    return head + newline + body, leaves


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, list[Leaf]]:
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    return draw(entity(newline, 0, [0], top=True))


def _lf(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\n", data)


@SETTINGS
@given(messages())
def test_canonicalize_idempotent_and_preserves_payloads(case: tuple[bytes, list[Leaf]]) -> None:
    message, expected = case
    once = mime.canonicalize(message)
    assert mime.canonicalize(once) == once
    # 7-bit, CRLF only, lines of at most 998 octets (headers here are ASCII).
    assert once.isascii()
    assert once.count(b"\n") == once.count(b"\r\n") == once.count(b"\r")
    assert all(len(line) <= 998 for line in once.split(b"\r\n"))
    assert once.endswith(b"\r\n")
    mime.check_structure(once)

    parsed = email.message_from_bytes(once, policy=email.policy.compat32)
    leaves = [part for part in parsed.walk() if not part.is_multipart()]
    assert [part.get_content_type() for part in leaves] == [leaf.content_type for leaf in expected]
    for part, want in zip(leaves, expected, strict=True):
        got = part.get_payload(decode=True)
        assert isinstance(got, bytes)
        encoding = (part["Content-Transfer-Encoding"] or "7bit").lower()
        if not want.text or encoding == "base64":
            assert got == want.payload
        else:
            assert _lf(got) == _lf(want.payload)


@SETTINGS
@given(st.binary(max_size=4000), st.binary(max_size=3000), st.sampled_from(list(DigestAlgorithm)))
def test_multipart_signed_round_trip(content: bytes, signature: bytes, digest: DigestAlgorithm) -> None:
    built = mime.build_multipart_signed(content, signature, digest)
    parts = mime.split_multipart_signed(mime.parse_entity(built))
    assert parts.content == content
    assert parts.signature == signature
    assert parts.micalg == digest.value
    assert parts.protocol == "application/pkcs7-signature"


@SETTINGS
@given(messages(), st.binary(min_size=1, max_size=600))
def test_signed_canonical_message_round_trip(case: tuple[bytes, list[Leaf]], signature: bytes) -> None:
    _, entity_bytes = mime.wrap(case[0])
    parts = mime.split_multipart_signed(
        mime.parse_entity(mime.build_multipart_signed(entity_bytes, signature, DigestAlgorithm.SHA256))
    )
    assert parts.content == entity_bytes
    assert parts.content_crlf is parts.content
    assert mime.unwrap(parts.content_entity) == mime.canonicalize(case[0])


@SETTINGS
@given(st.text(max_size=300))
def test_content_type_parse_never_raises(value: str) -> None:
    parsed = mime.ContentType.parse(value)
    assert parsed.mime_type == parsed.mime_type.lower()
    assert all(name == name.lower() for name in parsed.params)
    mime.smime_type(parsed)
    mime.header_params(value)


@SETTINGS
@given(
    st.text(alphabet=st.sampled_from(list("ab/;=\"'*\\ \t\r\n()%0x-")), max_size=80).map(
        lambda tail: "application/pkcs7-mime;" + tail
    )
)
def test_content_type_parse_dense_syntax(value: str) -> None:
    parsed = mime.ContentType.parse(value)
    assert parsed.mime_type == "application/pkcs7-mime"


RANDOM_PREFIXES = [
    b"",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n",
    b"Content-Type: multipart/signed; boundary=b\r\n\r\n--b\r\n",
    b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    b"\xef\xbb\xbf",
]


@SETTINGS
@given(st.sampled_from(RANDOM_PREFIXES), st.binary(max_size=2000))
def test_random_bytes_raise_only_message_format_error(prefix: bytes, tail: bytes) -> None:
    raw = prefix + tail
    limits = mime.MimeLimits(max_header_bytes=512, max_headers=20, max_parts=20, max_depth=4)
    try:
        once = mime.canonicalize(raw, limits)
    except MessageFormatError:
        pass
    else:
        assert mime.canonicalize(once, limits) == once
    for operation in (
        lambda: mime.parse_entity(raw, limits),
        lambda: mime.check_structure(raw, limits),
        lambda: mime.canonicalize(raw, limits),
        lambda: mime.split_multipart_signed(mime.parse_entity(raw, limits), limits),
        lambda: mime.decode_body(mime.parse_entity(raw, limits)),
        lambda: mime.unwrap(mime.parse_entity(raw, limits)),
    ):
        with contextlib.suppress(MessageFormatError):
            operation()


@SETTINGS
@given(
    st.lists(
        st.sampled_from([b"a", b"\r", b"\n", b"--b", b"--", b":", b" ", b"\xff", b"=", b"Content-Type: "]),
        max_size=60,
    ).map(b"".join)
)
def test_canonicalize_idempotent_on_dense_noise(tail: bytes) -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + tail
    try:
        once = mime.canonicalize(raw)
    except MessageFormatError:
        return
    assert mime.canonicalize(once) == once
