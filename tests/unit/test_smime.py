"""Unit tests of hisp.core.smime: CMS SignedData / EnvelopedData / AuthEnvelopedData round trips and refusals.

Certificates come from the development CA (hisp.core.devca); nothing is mocked. The 3DES envelope is made
by ``openssl cms -encrypt -des3`` (skipped when the openssl command is missing).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from conftest import AT

from hisp.core import smime
from hisp.core.certs import Credential
from hisp.core.devca import Issued, KeyUsagePreset, create_ca, issue_certificate
from hisp.core.policy import (
    DEFAULT_POLICY,
    ContentCipher,
    DigestAlgorithm,
    KeyTransport,
    policy_from_name,
)
from hisp.errors import (
    ConfigError,
    DecryptionError,
    HispError,
    MessageFormatError,
    PolicyViolation,
    SignatureError,
)

CONTENT = b"Content-Type: text/plain\r\n\r\nReferral for patient 1234: see attached C-CDA.\r\n"
DIRECT_13 = policy_from_name("direct-1.3")
DIRECT_12 = policy_from_name("direct-1.2")


class Pki:
    """One development CA and the end-entity credentials the tests use."""

    def __init__(self) -> None:
        self.ca = create_ca("hisp smime test CA", at=AT)
        self.alice = issue_certificate(self.ca, at=AT, address="alice@direct.a.example")
        self.bob = issue_certificate(self.ca, at=AT, address="bob@direct.b.example")
        self.ec256 = issue_certificate(self.ca, at=AT, address="ec256@direct.a.example", key_type="ec-p256")
        self.ec384 = issue_certificate(self.ca, at=AT, address="ec384@direct.a.example", key_type="ec-p384")
        self.signing_only = issue_certificate(
            self.ca, at=AT, address="carol@direct.c.example", usage=KeyUsagePreset.SIGNING
        )
        self.encipher_only = issue_certificate(
            self.ca, at=AT, address="carol@direct.c.example", usage=KeyUsagePreset.ENCIPHERMENT
        )
        self.short = issue_certificate(self.ca, at=AT, address="short@direct.a.example", key_size=1024)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def _signer(pki: Pki, name: str) -> Issued:
    issued = getattr(pki, name)
    assert isinstance(issued, Issued)
    return issued


def _signed_data(der: bytes) -> asn1_cms.SignedData:
    return asn1_cms.ContentInfo.load(der)["content"]


def _content_info(signed_data: asn1_cms.SignedData) -> bytes:
    return bytes(asn1_cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump())


def _tamper_signature(der: bytes) -> bytes:
    """The same SignedData with the last byte of the (first) signature value flipped."""
    sd = _signed_data(der)
    si = sd["signer_infos"][0]
    signature = bytearray(si["signature"].native)
    signature[-1] ^= 0x01
    si["signature"] = bytes(signature)
    return _content_info(sd)


def _two_signers(first: bytes, second: bytes) -> bytes:
    """One SignedData carrying the SignerInfos and certificates of two detached SignedDatas, in order.

    asn1crypto sorts a SET OF when it encodes one; the two SignerInfo encodings are swapped back in the
    bytes when needed so that the order really is ``first``, ``second``.
    """
    sd1, sd2 = _signed_data(first), _signed_data(second)
    certs = list(sd1["certificates"]) + [
        c for c in sd2["certificates"] if c.dump() not in {x.dump() for x in sd1["certificates"]}
    ]
    digests = {a.dump(): a for a in list(sd1["digest_algorithms"]) + list(sd2["digest_algorithms"])}
    merged = asn1_cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": list(digests.values()),
            "encap_content_info": {"content_type": "data"},
            "certificates": certs,
            "signer_infos": [sd1["signer_infos"][0], sd2["signer_infos"][0]],
        }
    )
    der = _content_info(merged)
    si1, si2 = bytes(sd1["signer_infos"][0].dump()), bytes(sd2["signer_infos"][0].dump())
    if si2 + si1 in der:
        der = der.replace(si2 + si1, si1 + si2)
    assert si1 + si2 in der
    order = [bytes(si.dump()) for si in _signed_data(der)["signer_infos"]]
    assert order == [si1, si2]
    return der


# --- sign / verify -----------------------------------------------------------------------------------

SIGNERS = ["alice", "ec256", "ec384"]
DIGESTS = [DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512]


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize("digest", DIGESTS, ids=[d.value for d in DIGESTS])
@pytest.mark.parametrize("signer_name", SIGNERS)
def test_sign_verify_round_trip(pki: Pki, signer_name: str, digest: DigestAlgorithm, detached: bool) -> None:
    signer = _signer(pki, signer_name)
    der = smime.sign(CONTENT, signer.credential, digest=digest, at=AT, detached=detached)
    verdict = smime.verify(der, content=CONTENT if detached else None, policy=DIRECT_13)
    assert verdict.content == CONTENT
    assert verdict.invalid_signers == ()
    (result,) = verdict.valid_signers
    assert result.certificate == signer.certificate
    assert result.digest is digest
    assert result.signature_algorithm == ("rsa-pkcs1" if signer_name == "alice" else "ecdsa")
    assert result.signing_time == AT
    assert signer.certificate in verdict.certificates
    assert pki.ca.certificate in verdict.certificates  # credential.chain is carried


def test_signed_attributes_and_structure(pki: Pki) -> None:
    der = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    sd = _signed_data(der)
    assert sd["version"].native == "v1"
    assert sd["encap_content_info"]["content"].native is None  # detached
    si = sd["signer_infos"][0]
    assert si["sid"].name == "issuer_and_serial_number"
    assert si["signature_algorithm"]["algorithm"].dotted == "1.2.840.113549.1.1.1"
    types = [a["type"].native for a in si["signed_attrs"]]
    assert set(types) == {"content_type", "message_digest", "signing_time", "smime_capabilities"}
    encoded = [a.dump() for a in si["signed_attrs"]]
    assert encoded == sorted(encoded)  # DER SET OF order
    caps = next(a for a in si["signed_attrs"] if a["type"].native == "smime_capabilities")
    ids = [c["capability_id"].dotted for c in caps["values"][0]]
    assert ids == [
        "2.16.840.1.101.3.4.1.46",
        "2.16.840.1.101.3.4.1.6",
        "2.16.840.1.101.3.4.1.42",
        "2.16.840.1.101.3.4.1.2",
        "1.2.840.113549.1.1.7",
        "1.2.840.113549.1.1.1",
    ]


def test_custom_capabilities(pki: Pki) -> None:
    caps = smime.SmimeCapabilities(ciphers=(ContentCipher.AES128_CBC,), key_transports=(KeyTransport.RSA_PKCS1,))
    der = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT, capabilities=caps)
    si = _signed_data(der)["signer_infos"][0]
    attr = next(a for a in si["signed_attrs"] if a["type"].native == "smime_capabilities")
    assert [c["capability_id"].dotted for c in attr["values"][0]] == [
        "2.16.840.1.101.3.4.1.2",
        "1.2.840.113549.1.1.1",
    ]


def test_extra_certificates_are_carried_once(pki: Pki) -> None:
    der = smime.sign(
        CONTENT,
        pki.alice.credential,
        digest=DigestAlgorithm.SHA256,
        at=AT,
        extra_certificates=[pki.bob.certificate, pki.ca.certificate],
    )
    verdict = smime.verify(der, content=CONTENT, policy=DIRECT_13)
    # CertificateSet is a DER SET OF: its order is the encodings', not ours.
    assert len(verdict.certificates) == 3
    assert set(verdict.certificates) == {pki.alice.certificate, pki.ca.certificate, pki.bob.certificate}


def test_tampered_content_is_a_digest_mismatch(pki: Pki) -> None:
    der = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    with pytest.raises(SignatureError, match="message digest mismatch"):
        smime.verify(der, content=CONTENT.replace(b"1234", b"1235"), policy=DIRECT_13)


def test_tampered_encapsulated_content(pki: Pki) -> None:
    der = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False)
    tampered = der.replace(b"patient 1234", b"patient 9999")
    assert tampered != der
    with pytest.raises(SignatureError, match="message digest mismatch"):
        smime.verify(tampered, policy=DIRECT_13)


@pytest.mark.parametrize("signer_name", ["alice", "ec256"])
def test_tampered_signature_is_a_bad_signature(pki: Pki, signer_name: str) -> None:
    der = smime.sign(CONTENT, _signer(pki, signer_name).credential, digest=DigestAlgorithm.SHA256, at=AT)
    with pytest.raises(SignatureError, match="bad signature"):
        smime.verify(_tamper_signature(der), content=CONTENT, policy=DIRECT_13)


def test_tampered_signed_attribute_is_a_bad_signature(pki: Pki) -> None:
    der = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    # Change the signing time inside the signed attributes: digest still matches, signature does not.
    tampered = der.replace(AT.strftime("%y%m%d%H%M%SZ").encode(), b"990101000000Z")
    assert tampered != der
    with pytest.raises(SignatureError, match="bad signature"):
        smime.verify(tampered, content=CONTENT, policy=DIRECT_13)


def test_signature_over_signed_attributes_as_received(pki: Pki) -> None:
    """A peer's signedAttrs in non-DER order: the signature covers the bytes received, not a re-encoding."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    der = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    si = _signed_data(der)["signer_infos"][0]
    original = bytes(si["signed_attrs"].dump())
    assert original[0] == 0xA0
    encoded = [bytes(a.dump()) for a in si["signed_attrs"]]
    reordered = b"".join(reversed(encoded))  # not sorted: not DER, still a valid BER SET
    header = original[: len(original) - len(reordered)]
    key = pki.alice.private_key
    assert isinstance(key, rsa.RSAPrivateKey)
    signature = key.sign(b"\x31" + header[1:] + reordered, padding.PKCS1v15(), hashes.SHA256())
    old_signature = bytes(si["signature"].native)
    forged = der.replace(original, header + reordered).replace(old_signature, signature)
    assert forged != der
    verdict = smime.verify(forged, content=CONTENT, policy=DIRECT_13)
    assert verdict.valid_signers[0].certificate == pki.alice.certificate


@pytest.mark.parametrize("bad_first", [True, False], ids=["bad-first", "bad-second"])
def test_two_signers_one_bad_is_accepted_in_either_order(pki: Pki, bad_first: bool) -> None:
    """AS-15: every SignerInfo is checked; one valid signer is enough, the other is reported."""
    good = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    bad = _tamper_signature(smime.sign(CONTENT, pki.ec256.credential, digest=DigestAlgorithm.SHA384, at=AT))
    der = _two_signers(bad, good) if bad_first else _two_signers(good, bad)
    verdict = smime.verify(der, content=CONTENT, policy=DIRECT_13)
    assert [r.certificate for r in verdict.valid_signers] == [pki.alice.certificate]
    assert len(verdict.invalid_signers) == 1
    description, reason = verdict.invalid_signers[0]
    assert reason == "bad signature"
    assert "ec256@direct.a.example" in description


def test_two_valid_signers(pki: Pki) -> None:
    first = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    second = smime.sign(CONTENT, pki.ec384.credential, digest=DigestAlgorithm.SHA512, at=AT)
    verdict = smime.verify(_two_signers(first, second), content=CONTENT, policy=DIRECT_13)
    assert [r.digest for r in verdict.valid_signers] == [DigestAlgorithm.SHA256, DigestAlgorithm.SHA512]
    assert verdict.invalid_signers == ()


def test_two_signers_both_bad(pki: Pki) -> None:
    first = _tamper_signature(smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT))
    second = _tamper_signature(smime.sign(CONTENT, pki.bob.credential, digest=DigestAlgorithm.SHA256, at=AT))
    with pytest.raises(SignatureError, match="bad signature") as info:
        smime.verify(_two_signers(first, second), content=CONTENT, policy=DIRECT_13)
    assert len(info.value.context["signers"]) == 2


def test_sha1_signature_refused_by_direct_13_accepted_by_direct_12(pki: Pki) -> None:
    der = smime._sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA1, at=AT)
    with pytest.raises(PolicyViolation, match=r"^SHA-1 refused by policy direct-1\.3$"):
        smime.verify(der, content=CONTENT, policy=DIRECT_13)
    verdict = smime.verify(der, content=CONTENT, policy=DIRECT_12)
    assert verdict.valid_signers[0].digest is DigestAlgorithm.SHA1


def test_policy_failure_wins_over_signature_failure(pki: Pki) -> None:
    sha1 = smime._sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA1, at=AT)
    bad = _tamper_signature(smime.sign(CONTENT, pki.bob.credential, digest=DigestAlgorithm.SHA256, at=AT))
    with pytest.raises(PolicyViolation, match=r"SHA-1 refused by policy direct-1\.3"):
        smime.verify(_two_signers(bad, sha1), content=CONTENT, policy=DIRECT_13)


def test_md5_digest_refused_always(pki: Pki) -> None:
    der = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    sd = _signed_data(der)
    sd["signer_infos"][0]["digest_algorithm"] = {"algorithm": "md5"}
    for policy in (DIRECT_13, DIRECT_12):
        with pytest.raises(PolicyViolation, match="MD5 refused"):
            smime.verify(_content_info(sd), content=CONTENT, policy=policy)


@pytest.mark.parametrize("digest", [DigestAlgorithm.SHA1, DigestAlgorithm.MD5], ids=["sha1", "md5"])
def test_sign_refuses_weak_digests(pki: Pki, digest: DigestAlgorithm) -> None:
    with pytest.raises(PolicyViolation, match=digest.display_name):
        smime.sign(CONTENT, pki.alice.credential, digest=digest, at=AT)


def test_short_rsa_signer_key_refused(pki: Pki) -> None:
    der = smime.sign(CONTENT, pki.short.credential, digest=DigestAlgorithm.SHA256, at=AT)
    with pytest.raises(PolicyViolation, match="RSA-1024 signer key refused"):
        smime.verify(der, content=CONTENT, policy=DIRECT_13)
    assert smime.verify(der, content=CONTENT, policy=DIRECT_13.with_options(min_rsa_bits=1024)).valid_signers


def test_curve_refused_by_policy(pki: Pki) -> None:
    der = smime.sign(CONTENT, pki.ec384.credential, digest=DigestAlgorithm.SHA384, at=AT)
    policy = DIRECT_13.with_options(allowed_curves=frozenset({"secp256r1"}))
    with pytest.raises(PolicyViolation, match="secp384r1"):
        smime.verify(der, content=CONTENT, policy=policy)


def test_signer_certificate_not_found(pki: Pki) -> None:
    sd = _signed_data(smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT))
    sd["certificates"] = [c for c in sd["certificates"] if c.chosen.dump() != pki.alice.certificate.der]
    with pytest.raises(SignatureError, match="signer certificate not found"):
        smime.verify(_content_info(sd), content=CONTENT, policy=DIRECT_13)


def test_no_signer_infos(pki: Pki) -> None:
    sd = _signed_data(smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT))
    sd["signer_infos"] = []
    with pytest.raises(SignatureError, match="no signature"):
        smime.verify(_content_info(sd), content=CONTENT, policy=DIRECT_13)


def test_signing_certificate_without_digital_signature_refused(pki: Pki) -> None:
    with pytest.raises(PolicyViolation, match="digitalSignature"):
        smime.sign(CONTENT, pki.encipher_only.credential, digest=DigestAlgorithm.SHA256, at=AT)


def test_sign_needs_an_aware_time(pki: Pki) -> None:
    with pytest.raises(ConfigError):
        smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=datetime(2026, 1, 1))


def test_detached_and_opaque_mismatches(pki: Pki) -> None:
    detached = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    opaque = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False)
    with pytest.raises(MessageFormatError, match="must be given"):
        smime.verify(detached, policy=DIRECT_13)
    with pytest.raises(MessageFormatError, match="encapsulates"):
        smime.verify(opaque, content=CONTENT, policy=DIRECT_13)


# --- encrypt / decrypt -------------------------------------------------------------------------------

CIPHERS = list(ContentCipher)
TRANSPORTS = list(KeyTransport)


@pytest.mark.parametrize("rid", ["issuer_serial", "ski"])
@pytest.mark.parametrize("transport", TRANSPORTS, ids=[t.value for t in TRANSPORTS])
@pytest.mark.parametrize("cipher", CIPHERS, ids=[c.value for c in CIPHERS])
def test_encrypt_decrypt_round_trip(pki: Pki, cipher: ContentCipher, transport: KeyTransport, rid: str) -> None:
    der = smime.encrypt(
        CONTENT,
        [pki.alice.certificate],
        cipher=cipher,
        key_transport=transport,
        recipient_identifier=rid,  # type: ignore[arg-type]
    )
    info = asn1_cms.ContentInfo.load(der)
    assert info["content_type"].native == ("authenticated_enveloped_data" if cipher.authenticated else "enveloped_data")
    ktri = info["content"]["recipient_infos"][0].chosen
    assert ktri["rid"].name == ("subject_key_identifier" if rid == "ski" else "issuer_and_serial_number")
    assert ktri["version"].native == ("v2" if rid == "ski" else "v0")
    if not cipher.authenticated:
        assert info["content"]["version"].native == ("v2" if rid == "ski" else "v0")
    result = smime.decrypt(der, [pki.alice.credential], policy=DIRECT_13)
    assert result.content == CONTENT
    assert result.cipher is cipher
    assert result.key_transport == ("rsa-oaep-sha256" if transport is KeyTransport.RSA_OAEP else "rsa-pkcs1")
    assert result.recipient == pki.alice.certificate
    assert result.recipient_count == 1


def test_oaep_parameters_are_explicit_sha256(pki: Pki) -> None:
    der = smime.encrypt(CONTENT, [pki.alice.certificate])
    alg = asn1_cms.ContentInfo.load(der)["content"]["recipient_infos"][0].chosen["key_encryption_algorithm"]
    assert alg["algorithm"].dotted == "1.2.840.113549.1.1.7"
    assert alg["parameters"]["hash_algorithm"]["algorithm"].native == "sha256"
    assert alg["parameters"]["mask_gen_algorithm"]["parameters"]["algorithm"].native == "sha256"


def test_gcm_parameters(pki: Pki) -> None:
    der = smime.encrypt(CONTENT, [pki.alice.certificate], cipher=ContentCipher.AES256_GCM)
    body = asn1_cms.ContentInfo.load(der)["content"]
    assert body["version"].native == "v0"
    params = smime._GcmParameters.load(
        body["auth_encrypted_content_info"]["content_encryption_algorithm"]["parameters"].dump()
    )
    assert len(params["aes_nonce"].native) == 12
    assert params["aes_icv_len"].native == 16
    assert len(body["mac"].native) == 16


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100_000])
def test_cbc_padding_boundaries(pki: Pki, size: int) -> None:
    content = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    der = smime.encrypt(content, [pki.alice.certificate], cipher=ContentCipher.AES256_CBC)
    assert smime.decrypt(der, [pki.alice.credential], policy=DIRECT_13).content == content


def test_two_recipients_each_can_decrypt(pki: Pki) -> None:
    """AS-11: one RecipientInfo per recipient certificate; each recipient opens the same envelope."""
    der = smime.encrypt(CONTENT, [pki.alice.certificate, pki.bob.certificate])
    assert len(asn1_cms.ContentInfo.load(der)["content"]["recipient_infos"]) == 2
    for issued in (pki.alice, pki.bob):
        result = smime.decrypt(der, [issued.credential], policy=DIRECT_13)
        assert result.content == CONTENT
        assert result.recipient == issued.certificate
        assert result.recipient_count == 2


def test_wrong_key_no_recipient_matches(pki: Pki) -> None:
    der = smime.encrypt(CONTENT, [pki.alice.certificate])
    with pytest.raises(DecryptionError, match=r"^no recipient matches our keys$"):
        smime.decrypt(der, [pki.bob.credential, pki.ec256.credential], policy=DIRECT_13)
    with pytest.raises(DecryptionError, match="no recipient matches our keys"):
        smime.decrypt(der, [], policy=DIRECT_13)


def test_single_use_pair(pki: Pki) -> None:
    """AS-4: encrypt to the keyEncipherment certificate; the holder tries every credential it has."""
    der = smime.encrypt(CONTENT, [pki.encipher_only.certificate], recipient_identifier="ski")
    result = smime.decrypt(der, [pki.signing_only.credential, pki.encipher_only.credential], policy=DIRECT_13)
    assert result.content == CONTENT
    assert result.recipient == pki.encipher_only.certificate
    signed = smime.sign(CONTENT, pki.signing_only.credential, digest=DigestAlgorithm.SHA256, at=AT)
    assert smime.verify(signed, content=CONTENT, policy=DIRECT_13).valid_signers


def test_encrypt_refusals(pki: Pki) -> None:
    with pytest.raises(PolicyViolation, match="keyEncipherment"):
        smime.encrypt(CONTENT, [pki.alice.certificate, pki.signing_only.certificate])
    with pytest.raises(PolicyViolation, match="not RSA"):
        smime.encrypt(CONTENT, [pki.ec256.certificate])
    with pytest.raises(ConfigError):
        smime.encrypt(CONTENT, [])
    with pytest.raises(ConfigError):
        smime.encrypt(CONTENT, [pki.alice.certificate], recipient_identifier="name")  # type: ignore[arg-type]


def _swap_encrypted_key(der: bytes, credential: Credential, new_key: bytes) -> bytes:
    """Replace the first KTRI's encrypted key with PKCS#1 v1.5 of ``new_key`` for that credential."""
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    info = asn1_cms.ContentInfo.load(der)
    ktri = info["content"]["recipient_infos"][0].chosen
    public = credential.certificate.x509.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    ktri["encrypted_key"] = public.encrypt(new_key, padding.PKCS1v15()) if new_key else b"\x00" * 256
    return bytes(info.dump(force=True))


@pytest.mark.parametrize("new_key", [b"\x07" * 16, b"\x07" * 15, b""], ids=["wrong-key", "wrong-length", "garbage"])
def test_pkcs1_unwrap_failures_look_alike(pki: Pki, new_key: bytes) -> None:
    """Bleichenbacher countermeasure: every failure is reported as the same content decryption error."""
    der = smime.encrypt(
        CONTENT * 10,
        [pki.alice.certificate],
        key_transport=KeyTransport.RSA_PKCS1,
        cipher=ContentCipher.AES128_GCM,
    )
    with pytest.raises(DecryptionError, match=r"^content decryption failed$"):
        smime.decrypt(_swap_encrypted_key(der, pki.alice.credential, new_key), [pki.alice.credential], policy=DIRECT_13)


def test_tampered_gcm_ciphertext_fails(pki: Pki) -> None:
    der = bytearray(smime.encrypt(CONTENT, [pki.alice.certificate], cipher=ContentCipher.AES128_GCM))
    der[-40] ^= 0x01  # inside the ciphertext, before the 16-byte mac
    with pytest.raises(DecryptionError, match="content decryption failed"):
        smime.decrypt(bytes(der), [pki.alice.credential], policy=DIRECT_13)


def test_tampered_gcm_tag_fails(pki: Pki) -> None:
    der = bytearray(smime.encrypt(CONTENT, [pki.alice.certificate], cipher=ContentCipher.AES256_GCM))
    der[-1] ^= 0x80
    with pytest.raises(DecryptionError, match="content decryption failed"):
        smime.decrypt(bytes(der), [pki.alice.credential], policy=DIRECT_13)


def test_cipher_refused_by_policy(pki: Pki) -> None:
    der = smime.encrypt(CONTENT, [pki.alice.certificate], cipher=ContentCipher.AES128_CBC)
    policy = DIRECT_13.with_options(accepted_ciphers=frozenset({ContentCipher.AES256_CBC}))
    with pytest.raises(PolicyViolation, match="aes128-cbc refused by policy"):
        smime.decrypt(der, [pki.alice.credential], policy=policy)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("option,name", [("-des3", "3DES"), ("-des", "DES"), ("-rc2", "RC2")])
def test_weak_cipher_envelope_refused(pki: Pki, tmp_path: Path, option: str, name: str) -> None:
    cert = tmp_path / "alice.pem"
    cert.write_bytes(pki.alice.certificate.to_pem())
    (tmp_path / "in.txt").write_bytes(CONTENT)
    result = subprocess.run(
        [
            "openssl",
            "cms",
            "-encrypt",
            "-binary",
            option,
            "-outform",
            "DER",
            "-in",
            str(tmp_path / "in.txt"),
            *([] if name == "3DES" else ["-provider", "legacy", "-provider", "default"]),
            str(cert),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"openssl cannot make {name} envelopes here: {result.stderr[:200]!r}")
    for policy in (DIRECT_13, DIRECT_12):
        with pytest.raises(PolicyViolation, match=f"^{name} refused by policy {policy.name}$"):
            smime.decrypt(result.stdout, [pki.alice.credential], policy=policy)


# --- malformed input -----------------------------------------------------------------------------------

MALFORMED = {
    "empty": b"",
    "garbage": b"\x00\x01\x02 not DER at all",
    "truncated-sequence": b"\x30\x82\x10\x00\x06\x09",
    "wrong-tag": b"\x04\x03abc",
    "trailing-garbage-length": b"\x30\x84\xff\xff\xff\xff",
    "bare-oid": bytes(asn1_cms.ContentType("data").dump()),
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_der_is_a_message_format_error(pki: Pki, data: bytes) -> None:
    with pytest.raises(MessageFormatError):
        smime.verify(data, content=CONTENT, policy=DIRECT_13)
    with pytest.raises(MessageFormatError):
        smime.decrypt(data, [pki.alice.credential], policy=DIRECT_13)


def test_mutated_structures_raise_only_hisp_errors(pki: Pki) -> None:
    """Random byte mutations of valid structures: every failure is one of ours, never a raw exception."""
    rnd = random.Random(20260115)
    samples = [
        (
            "verify",
            smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False),
        ),
        (
            "verify",
            smime.sign(CONTENT, pki.ec256.credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False),
        ),
        ("decrypt", smime.encrypt(CONTENT, [pki.alice.certificate])),
        (
            "decrypt",
            smime.encrypt(
                CONTENT, [pki.alice.certificate], cipher=ContentCipher.AES256_GCM, recipient_identifier="ski"
            ),
        ),
    ]
    for _ in range(1500):
        kind, der = rnd.choice(samples)
        mutated = bytearray(der)
        for _ in range(rnd.randint(1, 3)):
            pos = rnd.randrange(len(mutated))
            choice = rnd.random()
            if choice < 0.6:
                mutated[pos] = rnd.randrange(256)
            elif choice < 0.8:
                del mutated[pos : pos + rnd.randint(1, 16)]
            else:
                mutated[pos:pos] = rnd.randbytes(rnd.randint(1, 4))
        try:
            if kind == "verify":
                smime.verify(bytes(mutated), policy=DIRECT_13)
            else:
                smime.decrypt(bytes(mutated), [pki.alice.credential], policy=DIRECT_13)
        except HispError:
            pass


def test_truncated_structures_are_message_format_errors(pki: Pki) -> None:
    signed = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    enveloped = smime.encrypt(CONTENT, [pki.alice.certificate])
    for cut in (10, len(signed) // 2, len(signed) - 1):
        with pytest.raises(MessageFormatError):
            smime.verify(signed[:cut], content=CONTENT, policy=DIRECT_13)
    for cut in (10, len(enveloped) // 2, len(enveloped) - 1):
        with pytest.raises(MessageFormatError):
            smime.decrypt(enveloped[:cut], [pki.alice.credential], policy=DIRECT_13)


def test_wrong_content_type_is_a_message_format_error(pki: Pki) -> None:
    signed = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    enveloped = smime.encrypt(CONTENT, [pki.alice.certificate])
    with pytest.raises(MessageFormatError, match="expected EnvelopedData or AuthEnvelopedData"):
        smime.decrypt(signed, [pki.alice.credential], policy=DIRECT_13)
    with pytest.raises(MessageFormatError, match="expected SignedData"):
        smime.verify(enveloped, content=CONTENT, policy=DIRECT_13)


def test_size_limit(pki: Pki) -> None:
    signed = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT)
    enveloped = smime.encrypt(CONTENT, [pki.alice.certificate])
    with pytest.raises(MessageFormatError, match="exceeds the limit"):
        smime.verify(signed, content=CONTENT, policy=DIRECT_13, max_bytes=len(signed) - 1)
    with pytest.raises(MessageFormatError, match="exceeds the limit"):
        smime.decrypt(enveloped, [pki.alice.credential], policy=DIRECT_13, max_bytes=100)
    assert smime.verify(signed, content=CONTENT, policy=DIRECT_13, max_bytes=len(signed)).valid_signers


def test_gcm_in_enveloped_data_is_malformed(pki: Pki) -> None:
    der = smime.encrypt(CONTENT, [pki.alice.certificate], cipher=ContentCipher.AES128_GCM)
    body = asn1_cms.ContentInfo.load(der)["content"]
    enveloped = asn1_cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": body["recipient_infos"],
            "encrypted_content_info": body["auth_encrypted_content_info"],
        }
    )
    forged = asn1_cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()
    with pytest.raises(MessageFormatError, match="AES-128-GCM in EnvelopedData"):
        smime.decrypt(forged, [pki.alice.credential], policy=DIRECT_13)


# --- names and values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "oid,name",
    [
        ("1.2.840.113549.3.7", "3DES"),
        ("1.3.14.3.2.7", "DES"),
        ("1.2.840.113549.3.2", "RC2"),
        ("2.16.840.1.101.3.4.1.2", "AES-128-CBC"),
        ("2.16.840.1.101.3.4.1.42", "AES-256-CBC"),
        ("2.16.840.1.101.3.4.1.6", "AES-128-GCM"),
        ("1.3.14.3.2.26", "SHA-1"),
        ("2.16.840.1.101.3.4.2.1", "SHA-256"),
        ("1.2.840.113549.2.5", "MD5"),
        ("1.2.840.113549.1.1.7", "RSAES-OAEP"),
        ("1.2.3.4", "1.2.3.4"),
    ],
)
def test_algorithm_name(oid: str, name: str) -> None:
    assert smime.algorithm_name(oid) == name


def test_public_surface() -> None:
    assert set(smime.__all__) >= {
        "SignerResult",
        "SignatureVerdict",
        "DecryptedContent",
        "SmimeCapabilities",
        "sign",
        "verify",
        "encrypt",
        "decrypt",
        "algorithm_name",
    }
    assert DEFAULT_POLICY.name == "direct-1.3"


@pytest.mark.parametrize("kind", ["signed", "enveloped", "auth-enveloped"])
def test_lifting_the_content_keeps_a_valid_structure(pki: Pki, kind: str) -> None:
    """The zero-copy path cuts the big OCTET STRING out; what remains is still a valid ContentInfo."""
    if kind == "signed":
        der = smime.sign(CONTENT, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False)
        expected: tuple[str, ...] = (smime._OID_SIGNED_DATA,)
    else:
        cipher = ContentCipher.AES128_GCM if kind == "auth-enveloped" else ContentCipher.AES128_CBC
        der = smime.encrypt(CONTENT, [pki.alice.certificate], cipher=cipher)
        expected = (smime._OID_ENVELOPED_DATA, smime._OID_AUTH_ENVELOPED_DATA)
    lifted = smime._lift_content(der, expected)
    assert lifted is not None
    reduced, view = lifted
    info = asn1_cms.ContentInfo.load(reduced, strict=True)
    original = asn1_cms.ContentInfo.load(der)
    if kind == "signed":
        assert bytes(view) == CONTENT
        assert info["content"]["encap_content_info"]["content"].native is None
        assert info["content"]["signer_infos"].dump() == original["content"]["signer_infos"].dump()
    else:
        field = "auth_encrypted_content_info" if kind == "auth-enveloped" else "encrypted_content_info"
        assert bytes(view) == original["content"][field]["encrypted_content"].native
        assert info["content"][field]["encrypted_content"].native is None
        assert info["content"]["recipient_infos"].dump() == original["content"]["recipient_infos"].dump()
    assert smime._lift_content(der, ()) is None  # not an expected type: left to asn1crypto
    assert smime._lift_content(der + b"\x00", expected) is None  # trailing bytes: left to asn1crypto


@pytest.mark.parametrize("size", [0, 100, 200, 70_000, 16_777_300])
def test_opaque_signature_length_boundaries(pki: Pki, size: int) -> None:
    """DER length fields of 1 to 4 bytes around the spliced content stay consistent."""
    content = b"x" * size
    der = smime.sign(content, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False)
    assert asn1_cms.ContentInfo.load(der, strict=True)["content"]["encap_content_info"]["content"].native == (content)
    assert smime.verify(der, policy=DIRECT_13).content == content


def test_large_content_round_trip(pki: Pki) -> None:
    content = (b"0123456789abcdef" * 65536) * 8 + b"tail"  # 8 MiB and a partial block
    signed = smime.sign(content, pki.alice.credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False)
    assert smime.verify(signed, policy=DIRECT_13).content == content
    for cipher in (ContentCipher.AES128_CBC, ContentCipher.AES256_GCM):
        der = smime.encrypt(content, [pki.alice.certificate], cipher=cipher)
        assert smime.decrypt(der, [pki.alice.credential], policy=DIRECT_13).content == content


@pytest.mark.parametrize("year", [2049, 2050, 2051], ids=["utc-time", "generalized-2050", "generalized-2051"])
def test_signing_time_after_2049_is_generalized_time(year: int) -> None:
    """RFC 5652 section 11.3: signingTime is UTCTime for 1950-2049 and GeneralizedTime otherwise."""
    from hisp.testing.pki import TestPKI

    at = datetime(year, 6, 1, tzinfo=UTC)
    signer = TestPKI(at=at).user("a@direct.example").credential
    der = smime.sign(b"content", signer, digest=DigestAlgorithm.SHA256, at=at)
    attrs = asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]["signed_attrs"]
    (signing_time,) = [a for a in attrs if a["type"].native == "signing_time"]
    assert signing_time["values"][0].name == ("utc_time" if year <= 2049 else "generalized_time")
    verdict = smime.verify(der, content=b"content", policy=policy_from_name("direct-1.3"))
    assert verdict.valid_signers[0].signing_time == at
