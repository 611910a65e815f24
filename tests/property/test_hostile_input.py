"""Property tests: hostile input never escapes as anything but a HispError (DESIGN.md section 4).

The security agent, the CMS layer, the certificate loaders and the MIME parser get random bytes and random
mutations (bit flips, truncations, insertions, duplicated boundaries, injected header fields) of valid
inputs. Only :class:`~hisp.errors.HispError` subclasses may escape, and a Direct message the agent accepts
must deliver exactly the original plain message: a mutation that still verifies must not change what is
delivered. Mutations of the inner layers are re-encrypted to us (``smime.encrypt`` and
``mime.build_enveloped_message``, as :func:`hisp.testing.pki.seal` does) so that they reach the MIME and
CMS parsers behind the decryption.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conftest import AT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisp.core import certs, mime, smime
from hisp.core.agent import SecurityAgent
from hisp.core.policy import DEFAULT_POLICY, DigestAlgorithm
from hisp.errors import HispError
from hisp.testing.pki import TestPKI, plain_message, seal

SENDER = "dr.example@direct.clinic.example"
RECIPIENT = "intake@direct.hospital.example"

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(SETTINGS, max_examples=30)

# Small limits so that hostile structures hit the bounds quickly.
LIMITS = mime.MimeLimits(max_depth=8, max_parts=64, max_header_bytes=16 * 1024, max_headers=64)


@dataclass(frozen=True)
class World:
    pki: TestPKI
    agent: SecurityAgent
    plain: bytes
    sealed: bytes  # the valid Direct message
    signed_layer: bytes  # its decrypted inner layer: multipart/signed over message/rfc822
    opaque_layer: bytes  # the same message as application/pkcs7-mime signed-data
    outer_headers: tuple[tuple[str, str], ...]
    signature: bytes  # the detached SignedData of signed_layer
    envelope: bytes  # the EnvelopedData of sealed
    key_files: tuple[bytes, ...]  # certificate, key and PKCS#12 files


@functools.cache
def world() -> World:
    pki = TestPKI(at=AT)
    sender, recipient = pki.user(SENDER), pki.user(RECIPIENT)
    plain = plain_message(SENDER, RECIPIENT)
    sealed = seal(plain, [sender.credential], [recipient.certificate], at=AT)
    outer_headers, entity = mime.wrap(plain)
    signature = smime.sign(entity, sender.credential, digest=DigestAlgorithm.SHA256, at=AT)
    signed_layer = mime.build_multipart_signed(entity, signature, DigestAlgorithm.SHA256)
    opaque = smime.sign(entity, sender.credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False)
    opaque_layer = (
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(opaque).replace(b"\n", b"\r\n")
    )
    key = recipient.credential.private_key
    key_files = (
        recipient.certificate.der,
        recipient.certificate.to_pem() + pki.ca.certificate.to_pem(),
        certs.private_key_to_pem(key),
        certs.private_key_to_pem(key, b"pw"),
        key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        ),
        pkcs12.serialize_key_and_certificates(
            b"x",
            key,
            recipient.certificate.x509,
            [pki.ca.certificate.x509],
            serialization.BestAvailableEncryption(b"pw"),
        ),
    )
    envelope = mime.decode_body(mime.parse_entity(sealed))
    return World(
        pki,
        SecurityAgent(),
        plain,
        sealed,
        signed_layer,
        opaque_layer,
        tuple(outer_headers),
        signature,
        envelope,
        key_files,
    )


def _open(raw: bytes) -> Any:
    w = world()
    return w.agent.process_incoming(raw, credentials=[w.pki.user(RECIPIENT).credential], trust=w.pki.anchors, at=AT)


def _reencrypt(layer: bytes) -> bytes:
    w = world()
    der = smime.encrypt(layer, [w.pki.user(RECIPIENT).certificate])
    return mime.build_enveloped_message(w.outer_headers, der)


def _only_hisp_errors(call: Callable[[], Any]) -> Any:
    """Run ``call``; a HispError is a refusal (None), any other exception fails the test."""
    try:
        return call()
    except HispError:
        return None


# -- mutations -----------------------------------------------------------------------------------------

_INJECTED_LINES = [
    b"Content-Type: text/plain\r\n",
    b"Content-Type: multipart/mixed; boundary=x\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"From: mallory@direct.evil.example\r\n",
    b" From: mallory@direct.evil.example\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"--\r\n",
    b"X-Long: " + b"a" * 1200 + b"\r\n",
]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one to three random mutations."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if not out:
            out += draw(st.binary(min_size=1, max_size=16))
            continue
        kind = draw(st.sampled_from(["flip", "truncate", "delete", "insert", "duplicate", "boundary", "header"]))
        at = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del out[at:]
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "duplicate":
            start = draw(st.integers(0, len(out) - 1))
            out[at:at] = out[start : start + draw(st.integers(1, 200))]
        else:
            # at the start of a line: a repeated delimiter line of any boundary, or an injected header field
            line_starts = [0] + [m.end() for m in re.finditer(rb"\n", bytes(out))]
            where = draw(st.sampled_from(line_starts))
            if kind == "boundary":
                boundaries = re.findall(rb'boundary="?([^";\r\n]+)', bytes(out)) or [b"x"]
                line = b"--" + draw(st.sampled_from(boundaries)) + draw(st.sampled_from([b"", b"--"])) + b"\r\n"
            else:
                line = draw(st.sampled_from(_INJECTED_LINES))
            out[where:where] = line
    return bytes(out)


def _lazy_mutated(pick: Callable[[World], bytes]) -> st.SearchStrategy[bytes]:
    return st.deferred(lambda: mutated(pick(world())))


# -- the security agent ------------------------------------------------------------------------------------


def _check_delivery(result: Any) -> None:
    if result is not None:
        assert result.message == world().plain


@SETTINGS
@given(st.binary(max_size=2048))
def test_agent_random_bytes(raw: bytes) -> None:
    assert _only_hisp_errors(lambda: _open(raw)) is None


@SETTINGS
@given(_lazy_mutated(lambda w: w.sealed))
def test_agent_mutated_sealed_message(raw: bytes) -> None:
    _check_delivery(_only_hisp_errors(lambda: _open(raw)))


@SETTINGS
@given(_lazy_mutated(lambda w: w.signed_layer))
def test_agent_mutated_signed_layer_reencrypted(layer: bytes) -> None:
    _check_delivery(_only_hisp_errors(lambda: _open(_reencrypt(layer))))


@FEW
@given(_lazy_mutated(lambda w: w.opaque_layer))
def test_agent_mutated_opaque_signed_layer_reencrypted(layer: bytes) -> None:
    _check_delivery(_only_hisp_errors(lambda: _open(_reencrypt(layer))))


@FEW
@given(st.binary(max_size=1024))
def test_agent_random_inner_layer_reencrypted(layer: bytes) -> None:
    assert _only_hisp_errors(lambda: _open(_reencrypt(layer))) is None


# -- CMS -----------------------------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


_OIDS = [bytes.fromhex("06092a864886f70d010702"), bytes.fromhex("06092a864886f70d010703"), b"\x06\x01\x00"]


@st.composite
def hostile_der(draw: st.DrawFn) -> bytes:
    """BER/DER-ish structures: deep nesting, huge or indefinite lengths, wrong tags, around a ContentInfo."""
    depth = draw(st.integers(1, 3000))
    tag = draw(st.sampled_from([0x30, 0x31, 0x24, 0x04, 0xA0, 0x80, 0x02, 0x1F]))
    kind = draw(st.sampled_from(["indefinite", "definite", "huge", "long-form", "garbage"]))
    leaf = draw(st.binary(max_size=8))
    if kind == "indefinite":
        inner = bytes([tag, 0x80]) * depth + leaf + b"\x00\x00" * draw(st.integers(0, depth))
    elif kind == "definite":
        inner = leaf
        for _ in range(min(depth, 300)):
            inner = bytes([tag]) + _length(len(inner)) + inner
    elif kind == "huge":
        inner = bytes([tag]) + _length(draw(st.sampled_from([2**31, 2**32 - 1, 2**63, 2**64 + 1]))) + leaf
    elif kind == "long-form":
        inner = bytes([tag, 0x80 | draw(st.integers(0, 127))]) + draw(st.binary(max_size=16)) + leaf
    else:
        inner = draw(st.binary(max_size=64))
    oid = draw(st.sampled_from(_OIDS))
    wrap = draw(st.sampled_from(["bare", "content-info", "indefinite-content-info"]))
    if wrap == "bare":
        return inner
    if wrap == "content-info":
        explicit = b"\xa0" + _length(len(inner)) + inner
        return b"\x30" + _length(len(oid) + len(explicit)) + oid + explicit
    return b"\x30\x80" + oid + b"\xa0\x80" + inner + b"\x00\x00\x00\x00"


def _verify(der: bytes, content: bytes | None) -> Any:
    return smime.verify(der, content=content, policy=DEFAULT_POLICY, max_bytes=1024 * 1024)


def _decrypt(der: bytes) -> Any:
    return smime.decrypt(der, [world().pki.user(RECIPIENT).credential], policy=DEFAULT_POLICY, max_bytes=1024 * 1024)


@SETTINGS
@given(st.one_of(st.binary(max_size=512), hostile_der()), st.sampled_from([None, b"content"]))
def test_cms_random_and_hostile_der(der: bytes, content: bytes | None) -> None:
    _only_hisp_errors(lambda: _verify(der, content))
    _only_hisp_errors(lambda: _decrypt(der))


@SETTINGS
@given(_lazy_mutated(lambda w: w.signature))
def test_verify_mutated_signature(der: bytes) -> None:
    content = world().signed_layer
    entity = mime.split_multipart_signed(mime.parse_entity(content)).content
    verdict = _only_hisp_errors(lambda: _verify(der, entity))
    if verdict is not None:
        assert verdict.content == entity


@SETTINGS
@given(_lazy_mutated(lambda w: w.envelope))
def test_decrypt_mutated_envelope(der: bytes) -> None:
    w = world()
    result = _only_hisp_errors(lambda: _decrypt(der))
    if result is not None:
        # AES-CBC is not authenticated: a flipped ciphertext bit may decrypt; it must then fail verification.
        opened = _only_hisp_errors(lambda: _open(mime.build_enveloped_message(w.outer_headers, der)))
        _check_delivery(opened)


# -- certificates and keys -----------------------------------------------------------------------------------


def _load_all(data: bytes) -> None:
    _only_hisp_errors(lambda: certs.load_certificates(data))
    _only_hisp_errors(lambda: certs.load_private_key(data, b"pw"))
    _only_hisp_errors(lambda: certs.load_private_key(data))
    _only_hisp_errors(lambda: certs.load_pkcs12(data, b"pw"))


@SETTINGS
@given(st.one_of(st.binary(max_size=1024), hostile_der()))
def test_certs_random_data(data: bytes) -> None:
    _load_all(data)


_PEM_NOISE = st.sampled_from(
    [
        b"-----BEGIN CERTIFICATE-----\n",
        b"-----END CERTIFICATE-----\n",
        b"-----BEGIN PKCS7-----\nMAA=\n-----END PKCS7-----\n",
        b"-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n",
    ]
)


@SETTINGS
@given(
    st.sampled_from([0, 1, 2, 5]).flatmap(lambda i: _lazy_mutated(lambda w: w.key_files[i])), _PEM_NOISE, st.booleans()
)
def test_certs_mutated_files(data: bytes, noise: bytes, add_noise: bool) -> None:
    """Certificates (DER, PEM), a plain PEM key and a PKCS#12 file, mutated."""
    _load_all(noise + data if add_noise else data)


@settings(SETTINGS, max_examples=150, derandomize=True, database=None, report_multiple_bugs=False)
@given(st.sampled_from([3, 4]).flatmap(lambda i: _lazy_mutated(lambda w: w.key_files[i])))
def test_certs_mutated_encrypted_keys(data: bytes) -> None:
    """Encrypted PKCS#8 keys (PEM and DER), mutated: only CertificateError may escape."""
    _only_hisp_errors(lambda: certs.load_private_key(data, b"pw"))


# -- MIME ----------------------------------------------------------------------------------------------------

_FIELD = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=b",
        b'Content-Type: multipart/signed; boundary="b"; micalg=sha-256; protocol="application/pkcs7-signature"',
        b"Content-Type: message/rfc822",
        b"Content-Type: application/pkcs7-signature",
        b"Content-Type: text/plain; charset*0*=utf-8''%ff; charset*1=x",
        b"Content-Type: multipart/mixed; boundary*0=b; boundary*1=c",
        b"Content-Type: ;;;===",
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: quoted-printable",
        b"Content-Transfer-Encoding: x-uuencode",
        b"From: a@b.example",
        b" folded",
        b"\tfolded",
        b"no colon",
        b"\xff\xfe: x",
        b"X: " + b"y" * 1100,
    ]
)
_BODY_LINE = st.one_of(
    st.sampled_from([b"--b", b"--b--", b"--bc", b"--bc--", b"", b"=", b"=\r", b"QUJD", b"****"]),
    st.binary(max_size=40),
)


@st.composite
def mime_ish(draw: st.DrawFn, depth: int = 0) -> bytes:
    newline = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    fields = draw(st.lists(_FIELD, max_size=4))
    lines = draw(st.lists(_BODY_LINE, max_size=8))
    if depth < 3 and draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(mime_ish(depth + 1)))
    separator = draw(st.sampled_from([newline, b"", newline + b" " + newline]))
    return newline.join(fields) + newline + separator + newline.join(lines)


def _nested(depth: int, kind: str) -> bytes:
    if kind == "rfc822":
        return b"Content-Type: message/rfc822\r\n\r\n" * depth + b"x"
    body = b"x"
    for _ in range(depth):
        body = b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n" + body + b"\r\n--q--\r\n"
    return body


def _exercise_mime(raw: bytes) -> None:
    entity = _only_hisp_errors(lambda: mime.parse_entity(raw, LIMITS))
    _only_hisp_errors(lambda: mime.check_structure(raw, LIMITS))
    canonical = _only_hisp_errors(lambda: mime.canonicalize(raw, LIMITS))
    if canonical is not None:
        assert _only_hisp_errors(lambda: mime.canonicalize(canonical, LIMITS)) == canonical
    if entity is not None:
        _only_hisp_errors(lambda: mime.decode_body(entity))
        _only_hisp_errors(lambda: mime.split_multipart_signed(entity, LIMITS))
        _only_hisp_errors(lambda: mime.unwrap(entity))
        mime.smime_type(entity.content_type)


@SETTINGS
@given(st.one_of(mime_ish(), st.binary(max_size=1024)))
def test_mime_random_structures(raw: bytes) -> None:
    _exercise_mime(raw)


@FEW
@given(st.integers(1, 5000), st.sampled_from(["rfc822", "multipart"]))
def test_mime_deep_nesting(depth: int, kind: str) -> None:
    _exercise_mime(_nested(depth if kind == "rfc822" else min(depth, 500), kind))


@SETTINGS
@given(_lazy_mutated(lambda w: w.signed_layer))
def test_mime_mutated_signed_layer(raw: bytes) -> None:
    _exercise_mime(raw)
