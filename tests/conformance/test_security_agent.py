"""The security agent against the Applicability Statement, requirement by requirement.

Each test names the requirement it checks (../shared/specs/direct-requirements.md).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from asn1crypto import cms
from conftest import AT

from hisp.addresses import DirectAddress
from hisp.core import mime
from hisp.core.agent import SecurityAgent, StaticAnchors
from hisp.core.certs import CertBinding
from hisp.core.policy import DigestAlgorithm, policy_from_name
from hisp.errors import (
    DecryptionError,
    PolicyViolation,
    SignatureError,
    TrustError,
)
from hisp.testing.pki import TestPKI, plain_message, seal

SENDER = "dr.example@direct.clinic.example"
RECIPIENT = "intake@direct.hospital.example"
SECOND = "cardiology@direct.hospital.example"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(at=AT)


@pytest.fixture(scope="module")
def agent() -> SecurityAgent:
    return SecurityAgent()


def _open(agent: SecurityAgent, pki: TestPKI, raw: bytes, address: str = RECIPIENT):
    return agent.process_incoming(
        raw, credentials=[pki.user(address).credential], trust=pki.anchors, at=AT
    )


def _recipients(pki: TestPKI, *addresses: str) -> dict[DirectAddress, list]:
    return {DirectAddress.parse(a): [pki.user(a).certificate] for a in addresses}


# -- the round trip ---------------------------------------------------------------------------------


def test_outgoing_then_incoming_returns_the_message(pki: TestPKI, agent: SecurityAgent) -> None:
    """process_incoming returns the unwrapped inner message and a verdict explaining which signer, which anchor,
    which chain (issue 2, hisp.core.agent)."""
    plain = plain_message(SENDER, RECIPIENT)
    sealed = agent.process_outgoing(
        plain, sender=[pki.user(SENDER).credential], recipients=_recipients(pki, RECIPIENT), at=AT
    )
    opened = _open(agent, pki, sealed.message)
    assert opened.message == plain
    assert opened.wrapped
    assert opened.sender == DirectAddress.parse(SENDER)
    assert opened.binding is CertBinding.ADDRESS
    assert opened.path.anchor == pki.ca.certificate
    explained = opened.path.explain()
    assert f"leaf: {pki.user(SENDER).certificate.describe()}" in explained  # the signer
    assert f"anchor: {pki.ca.certificate.describe()}" in explained  # the anchor: subject, fingerprint


def test_as7_layers_are_enveloped_over_multipart_signed(pki: TestPKI, agent: SecurityAgent) -> None:
    """AS-7: sign then encrypt; the outer layer is application/pkcs7-mime enveloped-data, with smime.p7m."""
    sealed = agent.process_outgoing(
        plain_message(SENDER, RECIPIENT),
        sender=[pki.user(SENDER).credential],
        recipients=_recipients(pki, RECIPIENT),
        at=AT,
    ).message
    outer = mime.parse_entity(sealed)
    assert outer.content_type.mime_type == "application/pkcs7-mime"
    assert outer.content_type.params["smime-type"] == "enveloped-data"
    assert outer.content_type.params["name"] == "smime.p7m"
    assert 'filename="smime.p7m"' in (outer.header("Content-Disposition") or "")
    assert outer.header("Bcc") is None
    assert b"\n" not in sealed.replace(b"\r\n", b"")  # CRLF only (AS-16)


def test_as12_outer_headers_copied_and_subject_configurable(pki: TestPKI) -> None:
    """AS-12: From, To, Date, Message-ID copied to the outer headers; Subject only when configured."""
    plain = plain_message(SENDER, RECIPIENT, subject="Patient X referral")
    private = SecurityAgent(policy=policy_from_name("direct-1.3").with_options(copy_subject=False))
    sealed = private.process_outgoing(
        plain, sender=[pki.user(SENDER).credential], recipients=_recipients(pki, RECIPIENT), at=AT
    ).message
    outer = mime.parse_entity(sealed)
    assert outer.header("From") == SENDER
    assert outer.header("To") == RECIPIENT
    assert outer.header("Message-ID") == "<test-0001@direct.clinic.example>"
    assert outer.header("Subject") is None
    assert _open(private, pki, sealed).message == plain


def test_as12_unwrapped_message_is_accepted(pki: TestPKI, agent: SecurityAgent) -> None:
    """AS-12: 1.1/1.2 peers may send unwrapped messages; they are still accepted."""
    plain = plain_message(SENDER, RECIPIENT)
    raw = seal(plain, [pki.user(SENDER).credential], [pki.user(RECIPIENT).certificate], at=AT, wrap=False)
    opened = _open(agent, pki, raw)
    assert not opened.wrapped
    assert opened.sender == DirectAddress.parse(SENDER)
    assert mime.parse_entity(opened.message).body == mime.parse_entity(plain).body


# -- AS-14: every reject case, each with its reason ---------------------------------------------------


def test_as14_unencrypted_message_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    raw = seal(plain_message(SENDER, RECIPIENT), [pki.user(SENDER).credential], [], at=AT, encrypt=False)
    with pytest.raises(PolicyViolation, match="unencrypted message"):
        _open(agent, pki, raw)


def test_as14_plain_text_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    with pytest.raises(PolicyViolation, match="unencrypted message"):
        _open(agent, pki, plain_message(SENDER, RECIPIENT))


def test_as14_unsigned_message_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    raw = seal(plain_message(SENDER, RECIPIENT), [], [pki.user(RECIPIENT).certificate], at=AT, sign=False)
    with pytest.raises(PolicyViolation, match="unsigned message"):
        _open(agent, pki, raw)


def test_as14_bad_digest_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    raw = seal(
        plain_message(SENDER, RECIPIENT),
        [pki.user(SENDER).credential],
        [pki.user(RECIPIENT).certificate],
        at=AT,
        tamper_content=True,
    )
    with pytest.raises(SignatureError, match="digest"):
        _open(agent, pki, raw)


def test_as14_bad_signature_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    """AS-14: a signature value that does not verify is refused as "bad signature"."""
    raw = seal(
        plain_message(SENDER, RECIPIENT),
        [pki.user(SENDER).credential],
        [pki.user(RECIPIENT).certificate],
        at=AT,
        tamper_signer=0,
    )
    with pytest.raises(SignatureError, match="bad signature"):
        _open(agent, pki, raw)


def test_as14_untrusted_signer_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    rogue = TestPKI(at=AT, name="Rogue CA")
    raw = seal(
        plain_message(SENDER, RECIPIENT), [rogue.user(SENDER).credential], [pki.user(RECIPIENT).certificate], at=AT
    )
    with pytest.raises(TrustError) as caught:
        _open(agent, pki, raw)
    assert caught.value.reason == "untrusted"


def test_as14_expired_signer_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    expired = pki.user(SENDER, not_before=AT - timedelta(days=400), not_after=AT - timedelta(days=1))
    raw = seal(plain_message(SENDER, RECIPIENT), [expired.credential], [pki.user(RECIPIENT).certificate], at=AT)
    with pytest.raises(TrustError) as caught:
        _open(agent, pki, raw)
    assert caught.value.reason == "expired"


def test_as14_signer_not_bound_to_from_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    other = pki.user("someone.else@direct.clinic.example")
    raw = seal(plain_message(SENDER, RECIPIENT), [other.credential], [pki.user(RECIPIENT).certificate], at=AT)
    with pytest.raises(TrustError) as caught:
        _open(agent, pki, raw)
    assert caught.value.reason == "signer not bound to sender"


def test_as14_not_encrypted_to_us_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    raw = seal(plain_message(SENDER, SECOND), [pki.user(SENDER).credential], [pki.user(SECOND).certificate], at=AT)
    with pytest.raises(DecryptionError, match="no recipient matches our keys"):
        _open(agent, pki, raw, address=RECIPIENT)


def test_as2_domain_bound_signer_accepted(pki: TestPKI, agent: SecurityAgent) -> None:
    """AS-2: a domain-bound certificate (dNSName = the From domain) binds every address of the domain."""
    signer = pki.domain("direct.clinic.example")
    opened = _open(
        agent,
        pki,
        seal(plain_message(SENDER.upper(), RECIPIENT), [signer.credential], [pki.user(RECIPIENT).certificate], at=AT),
    )
    assert opened.binding is CertBinding.DOMAIN


# -- AS-8: digests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "accepted"), [("direct-1.3", False), ("direct-1.2", True)], ids=["direct-1.3", "direct-1.2"]
)
def test_as8_sha1_signature_by_policy(pki: TestPKI, policy: str, accepted: bool) -> None:
    raw = seal(
        plain_message(SENDER, RECIPIENT),
        [pki.user(SENDER).credential],
        [pki.user(RECIPIENT).certificate],
        at=AT,
        digest=DigestAlgorithm.SHA1,
    )
    agent = SecurityAgent(policy=policy_from_name(policy))
    if accepted:
        assert _open(agent, pki, raw).signature.valid_signers[0].digest is DigestAlgorithm.SHA1
    else:
        with pytest.raises(PolicyViolation, match=r"SHA-1 refused by policy direct-1\.3"):
            _open(agent, pki, raw)


# -- AS-11: every certificate of every recipient ----------------------------------------------------


def test_as11_two_certificates_two_recipient_infos(pki: TestPKI, agent: SecurityAgent) -> None:
    first = pki.user(RECIPIENT)
    second = pki.user(RECIPIENT, days=30)  # a second valid certificate for the same address
    sealed = agent.process_outgoing(
        plain_message(SENDER, RECIPIENT),
        sender=[pki.user(SENDER).credential],
        recipients={DirectAddress.parse(RECIPIENT): [first.certificate, second.certificate]},
        at=AT,
    )
    envelope = cms.ContentInfo.load(mime.decode_body(mime.parse_entity(sealed.message)))
    assert len(envelope["content"]["recipient_infos"]) == 2
    for credential in (first.credential, second.credential):
        opened = agent.process_incoming(sealed.message, credentials=[credential], trust=pki.anchors, at=AT)
        assert opened.decrypted.recipient == credential.certificate
        assert opened.decrypted.recipient_count == 2


# -- AS-15: any valid signer, in any order ----------------------------------------------------------


@pytest.mark.parametrize("bad_first", [True, False], ids=["bad-signer-first", "bad-signer-second"])
def test_as15_two_signers_one_bad(pki: TestPKI, agent: SecurityAgent, bad_first: bool) -> None:
    good = pki.user(SENDER).credential
    rogue = TestPKI(at=AT, name="Rogue CA").user(SENDER).credential
    signers = [rogue, good] if bad_first else [good, rogue]
    raw = seal(plain_message(SENDER, RECIPIENT), signers, [pki.user(RECIPIENT).certificate], at=AT)
    opened = _open(agent, pki, raw)
    assert opened.signer == good.certificate
    assert len(opened.rejected_signers) == (1 if bad_first else 0)


@pytest.mark.parametrize("bad_first", [True, False], ids=["tampered-first", "tampered-second"])
def test_as15_two_signers_one_tampered_signature(pki: TestPKI, agent: SecurityAgent, bad_first: bool) -> None:
    good = pki.user(SENDER).credential
    also = pki.domain("direct.clinic.example").credential
    raw = seal(
        plain_message(SENDER, RECIPIENT),
        [good, also],
        [pki.user(RECIPIENT).certificate],
        at=AT,
        tamper_signer=0 if bad_first else 1,
    )
    opened = _open(agent, pki, raw)
    assert len(opened.signature.valid_signers) == 1
    assert len(opened.signature.invalid_signers) == 1


# -- AS-4: single-use certificates --------------------------------------------------------------------


def test_as4_single_use_pair(pki: TestPKI, agent: SecurityAgent) -> None:
    """Sign only with the digitalSignature certificate; decrypt with the keyEncipherment one."""
    sender_signing = pki.user(SENDER, usage="signing")
    sender_encipherment = pki.user(SENDER, usage="encipherment")
    recipient_signing = pki.user(RECIPIENT, usage="signing")
    recipient_encipherment = pki.user(RECIPIENT, usage="encipherment")
    sealed = agent.process_outgoing(
        plain_message(SENDER, RECIPIENT),
        sender=[sender_encipherment.credential, sender_signing.credential],
        recipients={
            DirectAddress.parse(RECIPIENT): [recipient_signing.certificate, recipient_encipherment.certificate]
        },
        at=AT,
    )
    assert sealed.signer == sender_signing.certificate
    assert sealed.encrypted_to == (recipient_encipherment.certificate,)
    opened = agent.process_incoming(
        sealed.message,
        credentials=[recipient_signing.credential, recipient_encipherment.credential],
        trust=pki.anchors,
        at=AT,
    )
    assert opened.decrypted.recipient == recipient_encipherment.certificate


def test_as4_no_signing_credential(pki: TestPKI, agent: SecurityAgent) -> None:
    with pytest.raises(PolicyViolation, match="no credential can sign"):
        agent.process_outgoing(
            plain_message(SENDER, RECIPIENT),
            sender=[pki.user(SENDER, usage="encipherment").credential],
            recipients=_recipients(pki, RECIPIENT),
            at=AT,
        )


# -- AS-22: drop recipients without a valid certificate, send to the others ---------------------------


def test_as22_mixed_recipients(pki: TestPKI, agent: SecurityAgent) -> None:
    expired = pki.user(SECOND, not_before=AT - timedelta(days=400), not_after=AT - timedelta(days=1))
    nobody = DirectAddress.parse("nobody@direct.hospital.example")
    sealed = agent.process_outgoing(
        plain_message(SENDER, [RECIPIENT, SECOND, str(nobody)]),
        sender=[pki.user(SENDER).credential],
        recipients={
            DirectAddress.parse(RECIPIENT): [pki.user(RECIPIENT).certificate],
            DirectAddress.parse(SECOND): [expired.certificate],
            nobody: [],
        },
        at=AT,
        trust=StaticAnchors((pki.ca.certificate,)),
    )
    assert sealed.recipients == (DirectAddress.parse(RECIPIENT),)
    statuses = {str(r.address): r.status for r in sealed.rejected}
    assert statuses == {SECOND: "5.7.11", str(nobody): "5.7.31"}
    assert _open(agent, pki, sealed.message).message


def test_as22_no_valid_recipient_raises(pki: TestPKI, agent: SecurityAgent) -> None:
    rogue = TestPKI(at=AT, name="Rogue CA")
    with pytest.raises(TrustError) as caught:
        agent.process_outgoing(
            plain_message(SENDER, RECIPIENT),
            sender=[pki.user(SENDER).credential],
            recipients={DirectAddress.parse(RECIPIENT): [rogue.user(RECIPIENT).certificate]},
            at=AT,
            trust=pki.anchors,
        )
    assert caught.value.reason == "no valid recipient"
    assert len(caught.value.context["rejected"]) == 1


def test_as2_recipient_certificate_must_be_bound(pki: TestPKI, agent: SecurityAgent) -> None:
    """A certificate for another address is never used to encrypt (AS-2)."""
    with pytest.raises(TrustError, match="not bound"):
        agent.process_outgoing(
            plain_message(SENDER, RECIPIENT),
            sender=[pki.user(SENDER).credential],
            recipients={DirectAddress.parse(RECIPIENT): [pki.user(SECOND).certificate]},
            at=AT,
        )


def test_as5_short_recipient_key_refused(pki: TestPKI, agent: SecurityAgent) -> None:
    weak = pki.user(RECIPIENT, key_size=1024)
    with pytest.raises(TrustError, match="RSA-1024"):
        agent.process_outgoing(
            plain_message(SENDER, RECIPIENT),
            sender=[pki.user(SENDER).credential],
            recipients={DirectAddress.parse(RECIPIENT): [weak.certificate]},
            at=AT,
        )


# -- accepted input variants ------------------------------------------------------------------------


def test_opaque_signed_data_inside_the_envelope_is_accepted(pki: TestPKI, agent: SecurityAgent) -> None:
    """application/pkcs7-mime; smime-type=signed-data (opaque) is verified like multipart/signed."""
    import base64

    from hisp.core import smime

    plain = plain_message(SENDER, RECIPIENT)
    outer_headers, entity = mime.wrap(plain)
    opaque = smime.sign(entity, pki.user(SENDER).credential, digest=DigestAlgorithm.SHA256, at=AT, detached=False)
    layer = (
        b'Content-Type: application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(opaque).replace(b"\n", b"\r\n")
    )
    envelope = smime.encrypt(layer, [pki.user(RECIPIENT).certificate])
    raw = mime.build_enveloped_message(outer_headers, envelope)
    opened = _open(agent, pki, raw)
    assert opened.message == plain
    assert opened.wrapped


@pytest.mark.parametrize("micalg", ["sha-256", "sha256", "SHA256", '"sha-256"', '"SHA256"'])
def test_micalg_spellings_accepted(pki: TestPKI, agent: SecurityAgent, micalg: str) -> None:
    """Peers spell micalg in several ways (RFC 3851 used "sha256"); all are accepted on input."""
    from hisp.core import smime

    plain = plain_message(SENDER, RECIPIENT)
    outer_headers, entity = mime.wrap(plain)
    signature = smime.sign(entity, pki.user(SENDER).credential, digest=DigestAlgorithm.SHA256, at=AT)
    layer = mime.build_multipart_signed(entity, signature, DigestAlgorithm.SHA256)
    layer = layer.replace(b"micalg=sha-256", b"micalg=" + micalg.encode(), 1)
    assert micalg.encode() in layer
    raw = mime.build_enveloped_message(outer_headers, smime.encrypt(layer, [pki.user(RECIPIENT).certificate]))
    assert _open(agent, pki, raw).message == plain


def test_trust_failures_name_the_signer(pki: TestPKI, agent: SecurityAgent) -> None:
    rogue = TestPKI(at=AT, name="Rogue CA")
    raw = seal(
        plain_message(SENDER, RECIPIENT), [rogue.user(SENDER).credential], [pki.user(RECIPIENT).certificate], at=AT
    )
    with pytest.raises(TrustError, match=r"^untrusted signer: no path to a configured trust anchor"):
        _open(agent, pki, raw)


def test_as13_bcc_refused_on_the_way_out(pki: TestPKI, agent: SecurityAgent) -> None:
    """AS-13: Bcc is not allowed; sealing it would show the blind recipient to everyone in the signed copy."""
    plain = plain_message(SENDER, RECIPIENT, extra_headers=[("Bcc", SECOND)])
    with pytest.raises(PolicyViolation, match="Bcc is not allowed"):
        agent.process_outgoing(
            plain, sender=[pki.user(SENDER).credential], recipients=_recipients(pki, RECIPIENT), at=AT
        )
