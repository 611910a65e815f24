"""Security agent gaps found by the issue 2 audit: what goes on the wire under each preset (C15), signatures
that survive relays rewriting line endings (AS-16), and the Java RI key-usage certificates fed to the real
signing and encryption paths (AS-4).

Each test names the requirement it checks (../shared/specs/direct-requirements.md, or the issue 2 bullet).
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import hashlib
import re
from collections.abc import Callable

import pytest
from asn1crypto import cms
from conftest import AT, fixture_bytes
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as symmetric_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hisp.addresses import DirectAddress
from hisp.core import mime, smime
from hisp.core.agent import SecurityAgent
from hisp.core.certs import Credential, load_pkcs12
from hisp.core.policy import DigestAlgorithm, policy_from_name
from hisp.errors import PolicyViolation, SignatureError, TrustError
from hisp.testing.pki import TestPKI, plain_message

SENDER = "dr.example@direct.clinic.example"
RECIPIENT = "intake@direct.hospital.example"
AGENT = SecurityAgent()


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(at=AT)


def _seal(agent: SecurityAgent, pki: TestPKI, plain: bytes) -> bytes:
    return agent.process_outgoing(
        plain,
        sender=[pki.user(SENDER).credential],
        recipients={DirectAddress.parse(RECIPIENT): [pki.user(RECIPIENT).certificate]},
        at=AT,
    ).message


# -- C15: each preset's defaults, read from the CMS on the wire ------------------------------------------


def _first_part_bytes(layer: bytes, boundary: str) -> bytes:
    """The exact bytes of part 1 of a multipart/signed layer (RFC 1847: what the signature covers)."""
    delimiter = b"--" + boundary.encode()
    start = layer.index(delimiter + b"\r\n") + len(delimiter) + 2
    return layer[start : layer.index(b"\r\n" + delimiter, start)]


@pytest.mark.parametrize("preset", ["direct-1.3", "direct-1.2"])
def test_c15_preset_defaults_on_the_wire(pki: TestPKI, preset: str) -> None:
    """Issue 2, policies as named presets and "on encrypt, OAEP-SHA256 or PKCS#1 v1.5 selectable (default decided
    by the policy)": direct-1.3 sends RSAES-OAEP with SHA-256 and MGF1-SHA-256 (AS-10), direct-1.2 RSA PKCS#1
    v1.5; both sign with SHA-256 ("still sends SHA-256", AS-8) and encrypt with the default AES-128-CBC (AS-9).

    Read from the produced CMS with asn1crypto, then decrypted and verified with cryptography primitives using
    exactly those algorithms, never from our own result object.
    """
    recipient = pki.user(RECIPIENT)
    sealed = _seal(SecurityAgent(policy=policy_from_name(preset)), pki, plain_message(SENDER, RECIPIENT))
    _, _, body = sealed.partition(b"\r\n\r\n")
    info = cms.ContentInfo.load(base64.b64decode(body))
    assert info["content_type"].native == "enveloped_data"
    enveloped = info["content"]
    (recipient_info,) = enveloped["recipient_infos"]
    assert recipient_info.name == "ktri"
    ktri = recipient_info.chosen
    algorithm = ktri["key_encryption_algorithm"]
    key = recipient.private_key
    assert isinstance(key, rsa.RSAPrivateKey)
    if preset == "direct-1.3":
        assert algorithm["algorithm"].native == "rsaes_oaep"
        parameters = algorithm["parameters"]
        assert parameters["hash_algorithm"]["algorithm"].native == "sha256"
        assert parameters["mask_gen_algorithm"]["algorithm"].native == "mgf1"
        assert parameters["mask_gen_algorithm"]["parameters"]["algorithm"].native == "sha256"
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        content_key = key.decrypt(ktri["encrypted_key"].native, oaep)
    else:
        assert algorithm["algorithm"].native == "rsaes_pkcs1v15"
        content_key = key.decrypt(ktri["encrypted_key"].native, padding.PKCS1v15())

    encrypted = enveloped["encrypted_content_info"]
    cipher = encrypted["content_encryption_algorithm"]
    assert cipher["algorithm"].native == "aes128_cbc"
    assert len(content_key) == 16
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(cipher["parameters"].native)).decryptor()
    padded = decryptor.update(encrypted["encrypted_content"].native) + decryptor.finalize()
    unpadder = symmetric_padding.PKCS7(128).unpadder()
    layer = unpadder.update(padded) + unpadder.finalize()

    signed = email.message_from_bytes(layer, policy=email.policy.compat32)
    assert signed.get_content_type() == "multipart/signed"
    assert signed.get_param("micalg") == "sha-256"
    boundary = signed.get_boundary()
    assert boundary is not None
    content = _first_part_bytes(layer, boundary)
    parts = signed.get_payload()
    assert isinstance(parts, list) and len(parts) == 2
    signature_part = parts[1]
    assert isinstance(signature_part, email.message.Message)
    assert signature_part.get_content_type() == "application/pkcs7-signature"
    signature_der = signature_part.get_payload(decode=True)
    signed_data = cms.ContentInfo.load(signature_der)["content"]
    assert [a["algorithm"].native for a in signed_data["digest_algorithms"]] == ["sha256"]
    (signer_info,) = signed_data["signer_infos"]
    assert signer_info["digest_algorithm"]["algorithm"].native == "sha256"
    assert signer_info["signature_algorithm"]["algorithm"].native in ("rsassa_pkcs1v15", "sha256_rsa")
    (message_digest,) = [
        a["values"][0].native for a in signer_info["signed_attrs"] if a["type"].native == "message_digest"
    ]
    assert message_digest == hashlib.sha256(content).digest()
    signer = next(
        x509.load_der_x509_certificate(c.chosen.dump())
        for c in signed_data["certificates"]
        if c.chosen.serial_number == signer_info["sid"].chosen["serial_number"].native
    )
    assert signer.serial_number == pki.user(SENDER).certificate.serial_number
    public_key = signer.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    signed_attributes = b"\x31" + signer_info["signed_attrs"].dump()[1:]  # [0] IMPLICIT -> SET OF (RFC 5652 5.4)
    public_key.verify(signer_info["signature"].native, signed_attributes, padding.PKCS1v15(), hashes.SHA256())


# -- AS-16: a signature survives relaying -----------------------------------------------------------------


def _crlf_to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def _lf_to_crlf(data: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def _signed_part_only(convert: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """A relay that rewrote only part 1 (the signed content) of the multipart/signed layer."""

    def rewrite(layer: bytes) -> bytes:
        found = re.search(rb'boundary="([^"]+)"', layer)
        assert found is not None
        delimiter = b"--" + found.group(1)
        start = layer.index(delimiter + b"\r\n") + len(delimiter) + 2
        end = layer.index(b"\r\n" + delimiter, start)
        return layer[:start] + convert(layer[start:end]) + layer[end:]

    return rewrite


def _relay(pki: TestPKI, sealed: bytes, convert: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
    """A relay that rewrote line endings inside the encrypted signed layer: decrypt, convert, re-encrypt to the
    same recipient with the same outer headers. Returns (the relayed message, the converted signed layer)."""
    outer = mime.parse_entity(sealed)
    layer = smime.decrypt(mime.decode_body(outer), [pki.user(RECIPIENT).credential], policy=AGENT.policy).content
    converted = convert(layer)
    assert converted != layer  # the relay really changed the bytes
    envelope = smime.encrypt(converted, [pki.user(RECIPIENT).certificate])
    return mime.build_enveloped_message(outer.headers, envelope), converted


@pytest.mark.parametrize(
    "convert", [_crlf_to_lf, _signed_part_only(_crlf_to_lf)], ids=["whole-signed-layer", "signed-part-only"]
)
def test_as16_signature_survives_a_relay_converting_crlf_to_lf(pki: TestPKI, convert: Callable[[bytes], bytes]) -> None:
    """AS-16, "so that a signature survives relaying": the signed layer of our sealed message reaches the
    recipient with LF line endings (a Unix relay rewrote them); it was signed in canonical CRLF form, so the
    agent's bare-LF fallback (hisp/core/agent.py, _verify_detached) verifies it in CRLF form, records the defect
    and delivers the original message."""
    plain = plain_message(SENDER, RECIPIENT, body=b"Referral attached.\r\nSecond line.\r\n\r\nAfter a blank line.\r\n")
    relayed, layer = _relay(pki, _seal(AGENT, pki, plain), convert)
    # the exact bytes received no longer match the signature: only the CRLF fallback can accept them
    parts = mime.split_multipart_signed(mime.parse_entity(layer))
    with pytest.raises(SignatureError):
        smime.verify(parts.signature, content=parts.content, policy=AGENT.policy)

    opened = AGENT.process_incoming(relayed, credentials=[pki.user(RECIPIENT).credential], trust=pki.anchors, at=AT)
    assert opened.message == plain
    assert opened.signer == pki.user(SENDER).certificate
    assert "signed content arrived with bare LF line endings; verified in CRLF form" in opened.defects


def test_as16_signature_survives_relays_converting_crlf_to_lf_and_lf_to_crlf(pki: TestPKI) -> None:
    """AS-16: canonicalisation before signing (CRLF line endings, base64 for binary and 8-bit parts) is what
    lets a signature survive relaying. An edge message with LF line endings, 8-bit UTF-8 text, a 1,200-character
    line and a binary attachment holding CR, LF and NUL octets is sealed; one relay converts the signed layer to
    LF, the next converts LF back to CRLF. Any bare LF left in the signed entity would be changed by the second
    relay and break the signature; here it verifies exactly (no fallback) and the canonical message comes out."""
    attachment = bytes(range(256)) + b"\r\n\n\r\x00tail"
    boundary = "=_lf_relay_b0"
    plain = (
        (
            f"From: {SENDER}\nTo: {RECIPIENT}\nSubject: LF edge\nMessage-ID: <lf@direct.clinic.example>\n"
            f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n'
            f"--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            f"Überweisung für Frau Müller\n{'x' * 1200}\n"
            f"--{boundary}\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: binary\n\n"
        ).encode()
        + attachment
        + f"\n--{boundary}--\n".encode()
    )
    sealed = _seal(AGENT, pki, plain)
    after_first, lf_layer = _relay(pki, sealed, _crlf_to_lf)
    relayed, crlf_layer = _relay(pki, after_first, _lf_to_crlf)
    assert b"\n" not in crlf_layer.replace(b"\r\n", b"")

    opened = AGENT.process_incoming(relayed, credentials=[pki.user(RECIPIENT).credential], trust=pki.anchors, at=AT)
    assert opened.message == mime.canonicalize(plain)
    assert not any("bare LF" in defect for defect in opened.defects)
    parsed = email.message_from_bytes(opened.message, policy=email.policy.compat32)
    binary = [p for p in parsed.walk() if p.get_content_type() == "application/octet-stream"]
    assert [p.get_payload(decode=True) for p in binary] == [attachment]
    assert lf_layer != crlf_layer


def test_as16_outer_message_relayed_with_lf_opens(pki: TestPKI) -> None:
    """AS-16: a relay (or a Unix mailbox) that stores the whole Direct message with LF line endings does not
    stop it from opening: the envelope is base64 and the outer header block is parsed with either ending."""
    plain = plain_message(SENDER, RECIPIENT)
    sealed = _seal(AGENT, pki, plain)
    opened = AGENT.process_incoming(
        _crlf_to_lf(sealed), credentials=[pki.user(RECIPIENT).credential], trust=pki.anchors, at=AT
    )
    assert opened.message == plain


# -- T7 / AS-4: the Java RI key-usage certificates on the real paths -------------------------------------

KEY_USAGE_DOMAIN = "keyusage.com"  # digSigOnly, keyEncOnly and dualUse are domain-bound (dNSName keyusage.com)
KU_ADDRESS = f"records@{KEY_USAGE_DOMAIN}"


#: The key-usage fixtures are RSA-1024: this agent accepts RSA-1024 so that key usage is the only fault left.
KU_AGENT = SecurityAgent(policy=policy_from_name("direct-1.3").with_options(min_rsa_bits=1024))


def _key_usage_fixture(name: str) -> Credential:
    return load_pkcs12(fixture_bytes(f"direct-ri-java/certs/{name}.p12"), b"")


def test_t7_dig_sig_only_is_never_encrypted_to(pki: TestPKI) -> None:
    """Issue 2 tests, "digSigOnly never used to encrypt" (AS-4; process_outgoing: keyUsage keyEncipherment for
    encryption): the Java RI digSigOnly.p12 certificate given as the recipient's only certificate is rejected
    with a reason naming key usage (AS-22: rejected recipient with a reason for the DSN)."""
    dig_sig_only = _key_usage_fixture("digSigOnly").certificate
    with pytest.raises(TrustError) as caught:
        KU_AGENT.process_outgoing(
            plain_message(SENDER, KU_ADDRESS),
            sender=[pki.user(SENDER).credential],
            recipients={DirectAddress.parse(KU_ADDRESS): [dig_sig_only]},
            at=AT,
        )
    assert caught.value.reason == "no valid recipient"
    (rejected,) = caught.value.context["rejected"]
    assert rejected.address == DirectAddress.parse(KU_ADDRESS)
    assert "keyUsage lacks keyEncipherment" in rejected.reason
    assert [reason for _, reason in rejected.certificates] == ["keyUsage lacks keyEncipherment"]
    with pytest.raises(PolicyViolation, match="keyUsage lacks keyEncipherment"):
        smime.encrypt(b"Content-Type: text/plain\r\n\r\nx\r\n", [dig_sig_only])


def test_t7_dig_sig_only_is_skipped_next_to_an_encipherment_certificate(pki: TestPKI) -> None:
    """Issue 2 tests, "digSigOnly never used to encrypt" (AS-4, AS-11): when the recipient also has a
    keyEncipherment certificate, the envelope holds one RecipientInfo, for that certificate, and none for
    digSigOnly.p12 (read from the CMS)."""
    dig_sig_only = _key_usage_fixture("digSigOnly").certificate
    encipherment = pki.domain(KEY_USAGE_DOMAIN, usage="encipherment").certificate
    sealed = KU_AGENT.process_outgoing(
        plain_message(SENDER, KU_ADDRESS),
        sender=[pki.user(SENDER).credential],
        recipients={DirectAddress.parse(KU_ADDRESS): [dig_sig_only, encipherment]},
        at=AT,
    )
    assert sealed.encrypted_to == (encipherment,)
    envelope = cms.ContentInfo.load(mime.decode_body(mime.parse_entity(sealed.message)))["content"]
    identifiers = [ri.chosen["rid"].chosen for ri in envelope["recipient_infos"]]
    assert len(identifiers) == 1
    rid = identifiers[0]
    if isinstance(rid, cms.IssuerAndSerialNumber):
        assert rid["serial_number"].native == encipherment.serial_number
    else:
        assert rid.native == encipherment.subject_key_identifier


def test_t7_key_enc_only_never_signs(pki: TestPKI) -> None:
    """Issue 2 tests, "keyEncOnly never used to sign" (AS-4; process_outgoing "signs with the sender's
    digitalSignature credential"): the Java RI keyEncOnly.p12 credential as the sender's only credential is
    refused with a PolicyViolation naming key usage, by the agent and by smime.sign itself."""
    key_enc_only = _key_usage_fixture("keyEncOnly")
    with pytest.raises(PolicyViolation, match="keyUsage lacks digitalSignature"):
        KU_AGENT.process_outgoing(
            plain_message(KU_ADDRESS, RECIPIENT),
            sender=[key_enc_only],
            recipients={DirectAddress.parse(RECIPIENT): [pki.user(RECIPIENT).certificate]},
            at=AT,
        )
    with pytest.raises(PolicyViolation, match="keyUsage lacks digitalSignature"):
        smime.sign(b"Content-Type: text/plain\r\n\r\nx\r\n", key_enc_only, digest=DigestAlgorithm.SHA256, at=AT)


def test_t7_key_enc_only_is_passed_over_for_a_signing_credential(pki: TestPKI) -> None:
    """Issue 2 tests, "keyEncOnly never used to sign" (AS-4): given keyEncOnly.p12 first and a
    digitalSignature credential second, the agent signs with the second; the SignedData on the wire names only
    that signer."""
    key_enc_only = _key_usage_fixture("keyEncOnly")
    signing = pki.domain(KEY_USAGE_DOMAIN, usage="signing")
    sealed = KU_AGENT.process_outgoing(
        plain_message(KU_ADDRESS, RECIPIENT),
        sender=[key_enc_only, signing.credential],
        recipients={DirectAddress.parse(RECIPIENT): [pki.user(RECIPIENT).certificate]},
        at=AT,
    )
    assert sealed.signer == signing.certificate
    layer = smime.decrypt(
        mime.decode_body(mime.parse_entity(sealed.message)), [pki.user(RECIPIENT).credential], policy=KU_AGENT.policy
    ).content
    parts = mime.split_multipart_signed(mime.parse_entity(layer))
    signed_data = cms.ContentInfo.load(parts.signature)["content"]
    serials = [si["sid"].chosen["serial_number"].native for si in signed_data["signer_infos"]]
    assert serials == [signing.certificate.serial_number]
    assert key_enc_only.certificate.serial_number not in serials
