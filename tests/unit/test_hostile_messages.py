"""Hand-crafted hostile Direct messages against the security agent (DESIGN.md section 4 contract).

Every failure on hostile input must be a typed :class:`~hisp.errors.HispError`, found in bounded time, and a
message that fails any check is never returned as accepted. Each test names the attack it mounts and the
outcome the agent owes. The messages are built layer by layer (as :func:`hisp.testing.pki.seal` does) so
that the hostile part reaches the parser behind the decryption.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence

import pytest
from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from conftest import AT

from hisp.addresses import DirectAddress
from hisp.core import certs, mime, smime
from hisp.core.agent import IncomingResult, SecurityAgent
from hisp.core.certs import Certificate, Credential
from hisp.core.policy import DEFAULT_POLICY, DigestAlgorithm, KeyTransport
from hisp.errors import (
    AddressError,
    CertificateError,
    DecryptionError,
    HispError,
    MessageFormatError,
    PolicyViolation,
    SignatureError,
    TrustError,
)
from hisp.testing.pki import TestPKI, plain_message, seal

SENDER = "dr.example@direct.clinic.example"
RECIPIENT = "intake@direct.hospital.example"
VICTIM = "chief@direct.hospital.example"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(at=AT)


@pytest.fixture(scope="module")
def agent() -> SecurityAgent:
    return SecurityAgent()


# -- builders ----------------------------------------------------------------------------------------


def _open(agent: SecurityAgent, pki: TestPKI, raw: bytes) -> IncomingResult:
    return agent.process_incoming(raw, credentials=[pki.user(RECIPIENT).credential], trust=pki.anchors, at=AT)


def _outer_headers(frm: str = SENDER) -> list[tuple[str, str]]:
    return [
        ("From", frm),
        ("To", RECIPIENT),
        ("Date", "Mon, 30 Nov 2026 09:00:00 +0000"),
        ("Message-ID", "<hostile@direct.clinic.example>"),
        ("MIME-Version", "1.0"),
    ]


def _envelope(pki: TestPKI, layer: bytes, headers: Sequence[tuple[str, str]] | None = None) -> bytes:
    """``layer`` encrypted to RECIPIENT under Direct outer headers (what seal() does after signing)."""
    der = smime.encrypt(layer, [pki.user(RECIPIENT).certificate])
    return mime.build_enveloped_message(_outer_headers() if headers is None else headers, der)


def _signature(entity: bytes, signer: Credential, digest: DigestAlgorithm = DigestAlgorithm.SHA256) -> bytes:
    return smime._sign(entity, signer, digest=digest, at=AT)


def _signed_layer(entity: bytes, signer: Credential, digest: DigestAlgorithm = DigestAlgorithm.SHA256) -> bytes:
    return mime.build_multipart_signed(entity, _signature(entity, signer, digest), digest)


def _wrapped(message: bytes) -> bytes:
    return mime.wrap(message)[1]


def _multipart_signed(boundary: str, parts: Sequence[bytes], micalg: str = "sha-256") -> bytes:
    head = (
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        + f'micalg={micalg}; boundary="{boundary}"\r\n\r\n'.encode()
    )
    dash = b"--" + boundary.encode()
    body = b"".join(dash + b"\r\n" + part + b"\r\n" for part in parts)
    return head + body + dash + b"--\r\n"


def _signature_part(der: bytes) -> bytes:
    return (
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(der).replace(b"\n", b"\r\n")
    )


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _with_extension(cert_der: bytes, extension_der: bytes) -> bytes:
    """A copy of a certificate with one more extension (its signature no longer matches; parsing is the point)."""
    cert = asn1_x509.Certificate.load(cert_der)
    tbs = cert["tbs_certificate"]
    tbs["extensions"] = asn1_x509.Extensions([*tbs["extensions"], asn1_x509.Extension.load(extension_der)])
    return bytes(
        asn1_x509.Certificate(
            {
                "tbs_certificate": tbs,
                "signature_algorithm": cert["signature_algorithm"],
                "signature_value": cert["signature_value"],
            }
        ).dump()
    )


def _add_certificates(signature_der: bytes, extra: Sequence[bytes]) -> bytes:
    info = cms.ContentInfo.load(signature_der)
    signed_data = info["content"]
    signed_data["certificates"] = [
        *signed_data["certificates"],
        *(cms.CertificateChoices({"certificate": asn1_x509.Certificate.load(d)}) for d in extra),
    ]
    return bytes(info.dump())


# -- multipart/signed framing ------------------------------------------------------------------------


def test_boundary_inside_signed_part_is_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """The multipart/signed boundary occurs as a delimiter line inside the signed entity (part 1)."""
    boundary = "hostile-boundary"
    entity = _wrapped(plain_message(SENDER, RECIPIENT, body=b"text\r\n--hostile-boundary\r\nmore\r\n"))
    signature = _signature(entity, pki.user(SENDER).credential)
    layer = _multipart_signed(boundary, [entity, _signature_part(signature)])
    with pytest.raises((MessageFormatError, SignatureError)):
        _open(agent, pki, _envelope(pki, layer))


def test_three_parts_are_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """A third body part after the signature (content smuggled next to a valid signature)."""
    entity = _wrapped(plain_message(SENDER, RECIPIENT))
    signature = _signature(entity, pki.user(SENDER).credential)
    evil = b"Content-Type: text/plain\r\n\r\nWire the money.\r\n"
    for parts in ([entity, _signature_part(signature), evil], [entity, evil, _signature_part(signature)]):
        with pytest.raises(MessageFormatError, match="exactly two body parts"):
            _open(agent, pki, _envelope(pki, _multipart_signed("b3", parts)))


def test_second_content_type_on_signed_layer_first_wins_and_is_a_defect(pki: TestPKI, agent: SecurityAgent) -> None:
    """A second Content-Type on the multipart/signed layer: the first decides, the oddity is recorded."""
    plain = plain_message(SENDER, RECIPIENT)
    layer = _signed_layer(_wrapped(plain), pki.user(SENDER).credential)
    head, sep, body = layer.partition(b"\r\n\r\n")
    smuggled = head + b"\r\nContent-Type: text/plain" + sep + body
    opened = _open(agent, pki, _envelope(pki, smuggled))
    assert opened.message == plain
    assert mime.DEFECT_DUPLICATE_CONTENT_TYPE in opened.defects
    # the other order: text/plain first means the layer is not signed at all
    with pytest.raises(PolicyViolation, match="unsigned"):
        _open(agent, pki, _envelope(pki, b"Content-Type: text/plain\r\n" + layer))


def test_second_from_in_signed_inner_message_is_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """A properly signed inner message with a second From, hidden in each way a parser may disagree on."""
    base = plain_message(SENDER, RECIPIENT)
    variants = [
        base.replace(b"Subject:", b"From: " + VICTIM.encode() + b"\r\nSubject:"),
        base.replace(b"Subject:", b"From : " + VICTIM.encode() + b"\r\nSubject:"),
        base.replace(b"Subject:", b"FROM:\t" + VICTIM.encode() + b"\r\nSubject:"),
        base.replace(b"Subject: Referral", b"Subject: Referral\rFrom: " + VICTIM.encode()),
    ]
    for message in variants:
        layer = _signed_layer(_wrapped(message), pki.user(SENDER).credential)
        with pytest.raises(AddressError, match="exactly one From"):
            _open(agent, pki, _envelope(pki, layer))


def test_folded_from_continuation_is_not_a_second_from(pki: TestPKI, agent: SecurityAgent) -> None:
    """A continuation line that reads like a From header belongs to the field above it: delivered as signed."""
    message = plain_message(SENDER, RECIPIENT).replace(
        b"Subject: Referral", b"Subject: Referral\r\n From: " + VICTIM.encode()
    )
    opened = _open(agent, pki, _envelope(pki, _signed_layer(_wrapped(message), pki.user(SENDER).credential)))
    assert opened.sender == DirectAddress.parse(SENDER)
    assert opened.message == message


def test_wrapped_inner_from_is_the_one_bound_and_delivered(pki: TestPKI, agent: SecurityAgent) -> None:
    """Outer (unprotected) From differs from the signed inner From: the inner one is checked and delivered."""
    inner = plain_message(SENDER, RECIPIENT)
    layer = _signed_layer(_wrapped(inner), pki.user(SENDER).credential)
    # the outer From names someone else: ignored, the inner From is bound to the signer
    opened = _open(agent, pki, _envelope(pki, layer, _outer_headers(frm=VICTIM)))
    assert opened.sender == DirectAddress.parse(SENDER)
    assert opened.message == inner
    # the signer's own address outside, someone else's inside: the inner From is checked, and refused
    spoof = plain_message(VICTIM, RECIPIENT)
    layer = _signed_layer(_wrapped(spoof), pki.user(SENDER).credential)
    with pytest.raises(TrustError) as caught:
        _open(agent, pki, _envelope(pki, layer, _outer_headers(frm=SENDER)))
    assert caught.value.reason == "signer not bound to sender"


def test_signature_over_other_content_is_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """A valid signature of one entity delivered next to another entity."""
    signed = _wrapped(plain_message(SENDER, RECIPIENT))
    delivered = _wrapped(plain_message(SENDER, RECIPIENT, body=b"Different instructions.\r\n"))
    layer = mime.build_multipart_signed(
        delivered, _signature(signed, pki.user(SENDER).credential), DigestAlgorithm.SHA256
    )
    with pytest.raises(SignatureError, match="message digest mismatch"):
        _open(agent, pki, _envelope(pki, layer))


# -- unwrapped messages --------------------------------------------------------------------------------


def test_unwrapped_outer_content_headers_do_not_smuggle_content(pki: TestPKI, agent: SecurityAgent) -> None:
    """Unwrapped: Content-* fields added to the unprotected outer header are never delivered."""
    plain = plain_message(SENDER, RECIPIENT)
    sealed = seal(plain, [pki.user(SENDER).credential], [pki.user(RECIPIENT).certificate], at=AT, wrap=False)
    head, sep, body = sealed.partition(b"\r\n\r\n")
    smuggled = (
        head
        + b"\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable"
        + b"\r\ncontent-disposition: inline;\r\n filename=evil.html"
        + sep
        + body
    )
    opened = _open(agent, pki, smuggled)
    assert not opened.wrapped
    delivered = mime.parse_entity(opened.message)
    assert delivered.header_all("Content-Type") == ["text/plain; charset=us-ascii"]
    assert delivered.header_all("Content-Transfer-Encoding") == []
    assert delivered.header_all("Content-Disposition") == []
    assert b"evil" not in opened.message
    assert delivered.body == b"Please see the referral.\r\n"


def test_unwrapped_signed_entity_cannot_add_a_second_from(pki: TestPKI, agent: SecurityAgent) -> None:
    """Unwrapped: the signed entity carries its own From; the delivered message would have two From fields.

    The agent checks From on the outer header only, then delivers outer header + signed entity: the
    message delivered must pass the same "exactly one From" check, so this must be refused.
    """
    entity = (
        b"From: " + VICTIM.encode() + b"\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\nPlease pay the invoice.\r\n"
    )
    layer = _signed_layer(entity, pki.user(SENDER).credential)
    with pytest.raises(AddressError, match="exactly one From"):
        _open(agent, pki, _envelope(pki, layer, _outer_headers(frm=SENDER)))


# -- nested and opaque CMS -------------------------------------------------------------------------------


def test_envelope_inside_envelope_is_refused_as_unsigned(pki: TestPKI, agent: SecurityAgent) -> None:
    """Nested encryption: the decrypted layer is another envelope, not a signature."""
    signed = _signed_layer(_wrapped(plain_message(SENDER, RECIPIENT)), pki.user(SENDER).credential)
    inner_envelope = _envelope(pki, signed, headers=[])
    with pytest.raises(PolicyViolation, match="unsigned"):
        _open(agent, pki, _envelope(pki, inner_envelope))


def test_opaque_signed_data_with_empty_content_is_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """A valid signature of b"" (opaque signed-data with empty eContent, or an empty detached part 1)."""
    der = smime._sign(b"", pki.user(SENDER).credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False)
    assert smime.verify(der, policy=DEFAULT_POLICY).content == b""
    layer = (
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(der).replace(b"\n", b"\r\n")
    )
    # Before the fix this was accepted: the delivered message was the unprotected outer header alone.
    with pytest.raises(MessageFormatError, match="signed content is empty"):
        _open(agent, pki, _envelope(pki, layer, _outer_headers(frm=SENDER)))
    detached = mime.build_multipart_signed(b"", _signature(b"", pki.user(SENDER).credential), DigestAlgorithm.SHA256)
    with pytest.raises(MessageFormatError, match="signed content is empty"):
        _open(agent, pki, _envelope(pki, detached, _outer_headers(frm=SENDER)))


def test_opaque_signed_data_delivers_the_encapsulated_message(pki: TestPKI, agent: SecurityAgent) -> None:
    """application/pkcs7-mime signed-data: what is delivered is exactly the signed (encapsulated) message."""
    plain = plain_message(SENDER, RECIPIENT)
    der = smime._sign(
        _wrapped(plain), pki.user(SENDER).credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False
    )
    layer = (
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(der).replace(b"\n", b"\r\n")
    )
    opened = _open(agent, pki, _envelope(pki, layer, _outer_headers(frm=VICTIM)))
    assert opened.message == plain
    assert opened.sender == DirectAddress.parse(SENDER)


def test_too_many_signer_infos_are_refused_before_any_check(pki: TestPKI, agent: SecurityAgent) -> None:
    """Thousands of SignerInfos (each a real RSA check) would burn CPU: more than 16 is malformed."""
    entity = _wrapped(plain_message(SENDER, RECIPIENT))
    signature = smime.sign(entity, pki.user(SENDER).credential, digest=DigestAlgorithm.SHA256, at=AT)
    info = cms.ContentInfo.load(signature)
    one = info["content"]["signer_infos"][0]
    body = bytes(one.dump(force=True)) * (smime.MAX_SIGNER_INFOS + 1)
    info["content"]["signer_infos"] = cms.SignerInfos.load(b"\x31" + _der_length(len(body)) + body)
    hostile = bytes(info.dump())
    with pytest.raises(MessageFormatError, match=f"at most {smime.MAX_SIGNER_INFOS}"):
        _open(agent, pki, _envelope(pki, mime.build_multipart_signed(entity, hostile, DigestAlgorithm.SHA256)))


def _decoy_certificates(pki: TestPKI, count: int) -> list[bytes]:
    """Certificates claiming to be the CA, each with a different (bad) signature value."""
    ca = asn1_x509.Certificate.load(pki.ca.certificate.der)
    decoys = []
    for serial in range(count):
        value = bytearray(ca["signature_value"].native)
        value[-4:] = serial.to_bytes(4, "big")
        decoy = asn1_x509.Certificate.load(ca.dump())
        decoy["signature_value"] = bytes(value)
        decoys.append(bytes(decoy.dump(force=True)))
    return decoys


def test_decoy_certificates_do_not_confuse_path_building(pki: TestPKI, agent: SecurityAgent) -> None:
    """A valid signature carrying decoys of the CA certificate (up to the cap) still verifies and validates."""
    plain = plain_message(SENDER, RECIPIENT)
    entity = _wrapped(plain)
    signature = smime.sign(entity, pki.user(SENDER).credential, digest=DigestAlgorithm.SHA256, at=AT)
    carried = len(cms.ContentInfo.load(signature)["content"]["certificates"])
    hostile = _add_certificates(signature, _decoy_certificates(pki, smime.MAX_CERTIFICATES - carried))
    opened = _open(agent, pki, _envelope(pki, mime.build_multipart_signed(entity, hostile, DigestAlgorithm.SHA256)))
    assert opened.message == plain


def test_too_many_certificates_are_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    entity = _wrapped(plain_message(SENDER, RECIPIENT))
    signature = smime.sign(entity, pki.user(SENDER).credential, digest=DigestAlgorithm.SHA256, at=AT)
    hostile = _add_certificates(signature, _decoy_certificates(pki, smime.MAX_CERTIFICATES))
    with pytest.raises(MessageFormatError, match=f"at most {smime.MAX_CERTIFICATES}"):
        _open(agent, pki, _envelope(pki, mime.build_multipart_signed(entity, hostile, DigestAlgorithm.SHA256)))


# -- certificates carried by the signature ---------------------------------------------------------------

_DUPLICATE_BASIC_CONSTRAINTS = _tlv(0x30, bytes.fromhex("0603551d13") + _tlv(0x04, _tlv(0x30, b"")))
_EDI_PARTY_SAN = _tlv(
    0x30, bytes.fromhex("0603551d11") + _tlv(0x04, _tlv(0x30, _tlv(0xA5, _tlv(0xA1, _tlv(0x0C, b"x")))))
)
@pytest.mark.parametrize("extension", [_DUPLICATE_BASIC_CONSTRAINTS, _EDI_PARTY_SAN], ids=["dup-ext", "edi-san"])
def test_certificate_with_unparsable_extension_is_a_certificate_error(pki: TestPKI, extension: bytes) -> None:
    """A certificate with two basicConstraints, or an ediPartyName SAN, cannot be loaded: CertificateError."""
    der = _with_extension(pki.ca.certificate.der, extension)
    with pytest.raises(CertificateError):
        Certificate.from_der(der)


@pytest.mark.parametrize("extension", [_DUPLICATE_BASIC_CONSTRAINTS, _EDI_PARTY_SAN], ids=["dup-ext", "edi-san"])
def test_signature_carrying_unparsable_certificate_is_typed(
    pki: TestPKI, agent: SecurityAgent, extension: bytes
) -> None:
    """An otherwise valid signature carrying one extra unloadable certificate: skip it (or a typed error)."""
    plain = plain_message(SENDER, RECIPIENT)
    entity = _wrapped(plain)
    signature = smime.sign(entity, pki.user(SENDER).credential, digest=DigestAlgorithm.SHA256, at=AT)
    hostile = _add_certificates(signature, [_with_extension(pki.ca.certificate.der, extension)])
    raw = _envelope(pki, mime.build_multipart_signed(entity, hostile, DigestAlgorithm.SHA256))
    try:
        opened = _open(agent, pki, raw)
    except HispError:
        return
    assert opened.message == plain


_ENCRYPTED_KEY_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n%s\n-----END ENCRYPTED PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    "data",
    [
        _ENCRYPTED_KEY_PEM % b"MIIB",  # 30 82 01: truncated DER
        _ENCRYPTED_KEY_PEM % b"MAA=",  # 30 00: an empty SEQUENCE, fields missing
        _ENCRYPTED_KEY_PEM % b"BAA=",  # 04 00: not a SEQUENCE
    ],
    ids=["truncated", "empty-sequence", "octet-string"],
)
def test_malformed_encrypted_pem_key_is_a_certificate_error(data: bytes) -> None:
    """A PEM ENCRYPTED PRIVATE KEY block whose DER is not an EncryptedPrivateKeyInfo."""
    with pytest.raises(CertificateError):
        certs.load_private_key(data, b"password")


def test_encrypted_key_with_unknown_inner_algorithm_is_a_certificate_error(pki: TestPKI) -> None:
    """An encrypted PKCS#8 key whose CBC IV is bit-flipped: the decrypted key names OID 1.2.6.72.113549.1.1.1."""
    from asn1crypto import keys
    from cryptography.hazmat.primitives import serialization

    key = pki.user(RECIPIENT).credential.private_key
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    info = keys.EncryptedPrivateKeyInfo.load(der)
    cipher = info["encryption_algorithm"]["parameters"]["encryption_scheme"]
    iv = bytearray(cipher["parameters"].native)
    iv[12] ^= 0x80  # plaintext byte 12 is the 0x86 of 1.2.840 in the rsaEncryption OID
    cipher["parameters"] = bytes(iv)
    with pytest.raises(CertificateError):
        certs.load_private_key(bytes(info.dump(force=True)), b"pw")


# -- size and depth bounds ---------------------------------------------------------------------------------


def test_one_megabyte_header_line_is_refused_quickly(pki: TestPKI, agent: SecurityAgent) -> None:
    """A 1 MB header line, outside (unprotected) and inside (signed) the envelope."""
    huge = "x" * 1024 * 1024
    started = time.monotonic()
    sealed = seal(
        plain_message(SENDER, RECIPIENT), [pki.user(SENDER).credential], [pki.user(RECIPIENT).certificate], at=AT
    )
    with pytest.raises(MessageFormatError, match="header block exceeds"):
        _open(agent, pki, b"X-Huge: " + huge.encode() + b"\r\n" + sealed)
    inner = plain_message(SENDER, RECIPIENT, extra_headers=[("X-Huge", huge)])
    layer = _signed_layer(b"Content-Type: message/rfc822\r\n\r\n" + inner, pki.user(SENDER).credential)
    with pytest.raises(MessageFormatError, match="header block exceeds"):
        _open(agent, pki, _envelope(pki, layer))
    assert time.monotonic() - started < 10


def test_hundred_level_nested_multipart_is_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """100 nested multipart/mixed levels inside the signed message: the depth bound, not a RecursionError."""
    body = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for level in range(100):
        boundary = f"level{level}".encode()
        body = (
            b"Content-Type: multipart/mixed; boundary="
            + boundary
            + b"\r\n\r\n--"
            + boundary
            + b"\r\n"
            + body
            + b"\r\n--"
            + boundary
            + b"--\r\n"
        )
    message = plain_message(SENDER, RECIPIENT).partition(b"MIME-Version")[0] + b"MIME-Version: 1.0\r\n" + body
    layer = _signed_layer(b"Content-Type: message/rfc822\r\n\r\n" + message, pki.user(SENDER).credential)
    with pytest.raises(MessageFormatError, match="nesting deeper"):
        _open(agent, pki, _envelope(pki, layer))


def test_deep_message_rfc822_nesting_is_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """5,000 nested message/rfc822 entities as the decrypted layer: bounded, typed."""
    layer = b"Content-Type: message/rfc822\r\n\r\n" * 5000 + b"From: x@y.example\r\n\r\nbody\r\n"
    with pytest.raises(MessageFormatError):
        _open(agent, pki, _envelope(pki, layer))


def test_invalid_base64_is_a_format_error(pki: TestPKI, agent: SecurityAgent) -> None:
    """Characters outside the base64 alphabet in the envelope body and in the signature part."""
    sealed = seal(
        plain_message(SENDER, RECIPIENT), [pki.user(SENDER).credential], [pki.user(RECIPIENT).certificate], at=AT
    )
    head, sep, body = sealed.partition(b"\r\n\r\n")
    for junk in (b"*", b"\xff", b"!!", b"=A"):
        with pytest.raises(MessageFormatError, match="base64"):
            _open(agent, pki, head + sep + body[:40] + junk + body[40:])
    layer = _signed_layer(_wrapped(plain_message(SENDER, RECIPIENT)), pki.user(SENDER).credential)
    index = layer.rindex(b"Content-Disposition")
    index = layer.index(b"\r\n\r\n", index) + 10
    with pytest.raises(MessageFormatError, match="base64"):
        _open(agent, pki, _envelope(pki, layer[:index] + b"$" + layer[index:]))


@pytest.mark.parametrize("length", [2**31, 2**63, 2**64 - 1, 2**1000])
def test_huge_der_length_is_refused_without_allocation(pki: TestPKI, agent: SecurityAgent, length: int) -> None:
    """A CMS envelope, signature and OCTET STRING whose length prefix claims 2^31 bytes or more."""
    oid_enveloped = bytes.fromhex("06092a864886f70d010703")
    oid_signed = bytes.fromhex("06092a864886f70d010702")
    huge = b"\x04" + _der_length(length) + b"AAAA"
    candidates = [
        b"\x30" + _der_length(length) + oid_enveloped,
        _tlv(0x30, oid_enveloped + _tlv(0xA0, b"\x30" + _der_length(length) + b"\x02\x01\x00")),
        _tlv(0x30, oid_enveloped + _tlv(0xA0, _tlv(0x30, b"\x02\x01\x00\x31\x00" + _tlv(0x30, huge)))),
    ]
    started = time.monotonic()
    for der in candidates:
        with pytest.raises(MessageFormatError):
            smime.decrypt(der, [pki.user(RECIPIENT).credential], policy=DEFAULT_POLICY)
        with pytest.raises(MessageFormatError):
            _open(agent, pki, mime.build_enveloped_message(_outer_headers(), der))
        signed = der.replace(oid_enveloped, oid_signed)
        with pytest.raises(MessageFormatError):
            smime.verify(signed, content=b"x", policy=DEFAULT_POLICY)
    assert time.monotonic() - started < 5


def test_deep_indefinite_ber_nesting_is_a_format_error(pki: TestPKI) -> None:
    """100,000 nested indefinite-length SEQUENCEs and constructed OCTET STRINGs: typed, no RecursionError."""
    oid_signed = bytes.fromhex("06092a864886f70d010702")
    depth = 100_000
    nested = b"\x30\x80" * depth + b"\x00\x00" * depth
    octets = b"\x24\x80" * depth + b"\x04\x01a" + b"\x00\x00" * depth
    encap = b"\x30\x80\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01\xa0\x80" + octets + b"\x00\x00\x00\x00"
    signed = b"\x30\x80" + oid_signed + b"\xa0\x80\x30\x80\x02\x01\x01\x31\x00" + encap + b"\x31\x00" + b"\x00\x00" * 3
    for der in (nested, b"\x30\x80" + oid_signed + b"\xa0\x80" + nested + b"\x00\x00\x00\x00", signed):
        with pytest.raises(MessageFormatError):
            smime.verify(der, policy=DEFAULT_POLICY)
        with pytest.raises(MessageFormatError):
            smime.decrypt(der, [pki.user(RECIPIENT).credential], policy=DEFAULT_POLICY)


# -- decryption oracles ------------------------------------------------------------------------------------


def test_cbc_padding_and_wrong_key_errors_are_identical(pki: TestPKI) -> None:
    """Padding oracle: a tampered last block (bad padding) and a wrong key give the same error, word for word."""
    credential = pki.user(RECIPIENT).credential
    content = b"Content-Type: text/plain\r\n\r\n" + b"x" * 40
    envelope = smime.encrypt(content, [credential.certificate])
    bad_padding = bytearray(envelope)
    bad_padding[-17] ^= 0x01  # the last byte of the second-last block: flips the last plaintext byte (padding)
    wrong_key = smime.encrypt(content, [credential.certificate])
    info = cms.ContentInfo.load(wrong_key)
    ktri = info["content"]["recipient_infos"][0].chosen
    other_info = cms.ContentInfo.load(smime.encrypt(content, [credential.certificate]))
    ktri["encrypted_key"] = other_info["content"]["recipient_infos"][0].chosen["encrypted_key"].native
    wrong_key_der = bytes(info.dump(force=True))
    pkcs1 = smime.encrypt(content, [credential.certificate], key_transport=KeyTransport.RSA_PKCS1)
    pkcs1_bad = bytearray(pkcs1)
    pkcs1_bad[-17] ^= 0x01
    garbled_key = cms.ContentInfo.load(pkcs1)
    garbled_key["content"]["recipient_infos"][0].chosen["encrypted_key"] = b"\x01" * 256
    errors = []
    for der in (bytes(bad_padding), wrong_key_der, bytes(pkcs1_bad), bytes(garbled_key.dump(force=True))):
        with pytest.raises(DecryptionError) as caught:
            smime.decrypt(der, [credential], policy=DEFAULT_POLICY)
        errors.append((type(caught.value), caught.value.message, caught.value.smtp_reply()))
    assert len(set(errors)) == 1, errors


# -- weak and inconsistent algorithms ----------------------------------------------------------------------


def test_sha1_signature_with_sha256_micalg_is_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """The SignerInfo's digestAlgorithm (SHA-1) decides, not the advisory micalg (sha-256)."""
    entity = _wrapped(plain_message(SENDER, RECIPIENT))
    signature = _signature(entity, pki.user(SENDER).credential, DigestAlgorithm.SHA1)
    layer = mime.build_multipart_signed(entity, signature, DigestAlgorithm.SHA256)
    assert b"micalg=sha-256" in layer
    with pytest.raises(PolicyViolation, match="SHA-1"):
        _open(agent, pki, _envelope(pki, layer))


def test_md5_signature_is_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """A SignerInfo naming MD5 (digestAlgorithm and md5WithRSA) is refused by name, micalg md5 or not."""
    entity = _wrapped(plain_message(SENDER, RECIPIENT))
    info = cms.ContentInfo.load(_signature(entity, pki.user(SENDER).credential))
    signer_info = info["content"]["signer_infos"][0]
    signer_info["digest_algorithm"] = {"algorithm": "md5"}
    info["content"]["digest_algorithms"] = [{"algorithm": "md5"}]
    md5 = bytes(info.dump(force=True))
    signer_info["signature_algorithm"] = {"algorithm": "md5_rsa"}
    md5_rsa = bytes(info.dump(force=True))
    for der in (md5, md5_rsa):
        with pytest.raises(PolicyViolation, match="MD5"):
            smime.verify(der, content=entity, policy=DEFAULT_POLICY)
        for micalg in ("md5", "sha-256"):
            layer = _multipart_signed("b-md5", [entity, _signature_part(der)], micalg=micalg)
            with pytest.raises(PolicyViolation, match="MD5"):
                _open(agent, pki, _envelope(pki, layer))


def test_signature_algorithm_disagreeing_with_digest_is_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """digestAlgorithm SHA-256 but signatureAlgorithm sha1WithRSA: refused, never verified with either."""
    entity = _wrapped(plain_message(SENDER, RECIPIENT))
    info = cms.ContentInfo.load(_signature(entity, pki.user(SENDER).credential))
    info["content"]["signer_infos"][0]["signature_algorithm"] = {"algorithm": "sha1_rsa"}
    layer = _multipart_signed("b-mix", [entity, _signature_part(bytes(info.dump(force=True)))])
    with pytest.raises((PolicyViolation, SignatureError)):
        _open(agent, pki, _envelope(pki, layer))


def test_unsigned_and_unencrypted_are_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """Baselines the hostile variants build on: plain text in an envelope; a signed message sent in clear."""
    plain = plain_message(SENDER, RECIPIENT)
    with pytest.raises(PolicyViolation, match="unsigned"):
        _open(agent, pki, _envelope(pki, _wrapped(plain)))
    clear = seal(plain, [pki.user(SENDER).credential], [pki.user(RECIPIENT).certificate], at=AT, encrypt=False)
    with pytest.raises(PolicyViolation, match="unencrypted"):
        _open(agent, pki, clear)
