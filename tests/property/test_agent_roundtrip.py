"""Hypothesis round trips through the security agent: outgoing then incoming returns the same message.

Random bodies: binary attachments (sent as ``binary`` or base64), 8-bit UTF-8 text, LF or CRLF line
endings, lines longer than 998 octets, nested multiparts. The opened message is the canonical form of
the one sealed (AS-16), byte for byte, and every part decodes to the same payload (text modulo line
endings, binary exactly).
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass

from conftest import AT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisp.addresses import DirectAddress
from hisp.core import mime
from hisp.core.agent import SecurityAgent
from hisp.testing.pki import TestPKI

SENDER = "dr.example@direct.clinic.example"
RECIPIENT = "intake@direct.hospital.example"
PKI = TestPKI(at=AT)
AGENT = SecurityAgent()


@dataclass(frozen=True)
class Leaf:
    kind: str  # "text" | "binary"
    payload: bytes
    encoding: str  # "8bit" | "binary" | "base64" | "7bit"


@dataclass(frozen=True)
class Multipart:
    children: tuple[Leaf | Multipart, ...]


_line = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=60),
    st.text(alphabet="abc xyz", min_size=999, max_size=1500),  # over the RFC 5322 line limit
)
_text = st.lists(_line, min_size=1, max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8"))
_binary = st.binary(min_size=0, max_size=3000)

_leaf = st.one_of(
    st.builds(Leaf, st.just("text"), _text, st.sampled_from(["8bit", "7bit"])),
    st.builds(Leaf, st.just("binary"), _binary, st.sampled_from(["binary", "base64"])),
)
_tree = st.recursive(
    _leaf,
    lambda children: st.builds(Multipart, st.lists(children, min_size=1, max_size=3).map(tuple)),
    max_leaves=6,
)


def _render(node: Leaf | Multipart, eol: bytes, depth: int = 0) -> tuple[bytes, bytes]:
    """(content headers, body) of a node; boundaries are unique per depth and never in payloads."""
    if isinstance(node, Multipart):
        boundary = f"=_b{depth}_{len(node.children)}_q9Zx".encode()
        body = b""
        for child in node.children:
            headers, child_body = _render(child, eol, depth + 1)
            body += b"--" + boundary + eol + headers + eol + child_body + eol
        body += b"--" + boundary + b"--" + eol
        return b'Content-Type: multipart/mixed; boundary="' + boundary + b'"' + eol, body
    if node.kind == "text":
        payload = node.payload
        if node.encoding == "7bit":
            payload = payload.decode("utf-8").encode("ascii", "replace")
        body = payload.replace(b"\n", eol)
        headers = b"Content-Type: text/plain; charset=utf-8" + eol + b"Content-Transfer-Encoding: "
        return headers + node.encoding.encode() + eol, body
    import base64

    body = base64.encodebytes(node.payload).replace(b"\n", eol) if node.encoding == "base64" else node.payload
    headers = b"Content-Type: application/octet-stream" + eol + b"Content-Transfer-Encoding: "
    return headers + node.encoding.encode() + eol, body


def _message(tree: Leaf | Multipart, eol: bytes) -> bytes:
    headers, body = _render(tree, eol)
    top = eol.join(
        [
            f"From: {SENDER}".encode(),
            f"To: {RECIPIENT}".encode(),
            b"Subject: round trip",
            b"Message-ID: <rt@direct.clinic.example>",
            b"MIME-Version: 1.0",
        ]
    )
    return top + eol + headers + eol + body


def _payloads(raw: bytes) -> list[tuple[str, bytes]]:
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True) or b""
        if part.get_content_maintype() == "text":
            # line endings are canonicalised (AS-16), and a body that ended without one gains its final CRLF
            # (RFC 5322 section 2.3: body lines end in CRLF; SMTP DATA would add it anyway)
            data = data.replace(b"\r\n", b"\n").removesuffix(b"\n")
        out.append((part.get_content_type(), data))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_tree, eol=st.sampled_from([b"\r\n", b"\n"]))
def test_outgoing_then_incoming_returns_the_same_message(tree: Leaf | Multipart, eol: bytes) -> None:
    plain = _message(tree, eol)
    sealed = AGENT.process_outgoing(
        plain,
        sender=[PKI.user(SENDER).credential],
        recipients={DirectAddress.parse(RECIPIENT): [PKI.user(RECIPIENT).certificate]},
        at=AT,
    )
    opened = AGENT.process_incoming(
        sealed.message, credentials=[PKI.user(RECIPIENT).credential], trust=PKI.anchors, at=AT
    )
    assert opened.message == mime.canonicalize(plain)
    assert _payloads(opened.message) == _payloads(plain)
    # what went over the wire is 7-bit with CRLF line endings (AS-16)
    assert sealed.message.isascii()
    assert b"\n" not in sealed.message.replace(b"\r\n", b"")
