"""Complete Direct messages made by other implementations, opened or refused as the spec says.

Each fixture (../shared/fixtures, see its MANIFEST) ends one way under each policy preset: opened, or
refused with the reason the Applicability Statement gives, after decryption where we hold the key.
Times are pinned where the fixtures' certificates have expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from conftest import FIXTURES, fixture_bytes

from hisp.addresses import DirectAddress
from hisp.core import mime
from hisp.core.agent import SecurityAgent, StaticAnchors
from hisp.core.certs import Credential, load_certificate, load_credential, load_pkcs12
from hisp.core.policy import policy_from_name
from hisp.errors import DecryptionError, HispError, PolicyViolation, TrustError
from hisp.testing.pki import TestPKI

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def _credential(cert: str, key: str | None = None, password: bytes | None = None) -> Credential:
    return load_credential(fixture_bytes(cert), fixture_bytes(key) if key else None, password)


def _ryan() -> Credential:
    return _credential("interop/java-ri/ryan.der", "interop/java-ri/ryanKey.der")


@dataclass(frozen=True)
class Case:
    message: str
    credential: str  # which loader below
    anchor: str | None  # fixture path, "self" (the credential's own certificate), or None (our test CA)
    at: datetime
    outcome_13: tuple[type[HispError] | None, str]  # (error type or None when opened, text in the message)
    outcome_12: tuple[type[HispError] | None, str]


def _load(kind: str) -> Credential:
    if kind == "ryan":
        return _ryan()
    if kind == "dcdt":
        return _credential("interop/dcdt/testDecryptMail_cert.der", "interop/dcdt/testDecryptMail_key.der")
    if kind == "ett":
        return load_pkcs12(fixture_bytes("interop/ett/testCert.p12"), b"")
    if kind == "dotnet":
        return load_pkcs12(fixture_bytes("interop/dotnet/nhind_umamalga1_vm1.pfx"), b"passw0rd!")
    raise AssertionError(kind)


CASES = {
    # Java RI: AES-128-CBC, PKCS#1 v1.5 key transport, SHA-256 signature, wrapped; but every certificate
    # of the chain is SHA-1-signed: refused under AS 1.3 (AS-8), opened under 1.2.
    "java-ri-EncryptedMessage2": Case(
        "interop/java-ri/EncryptedMessage2.txt",
        "ryan",
        "interop/java-ri/secureHealthEmailCACert.der",
        NOW,
        (PolicyViolation, "SHA-1-signed certificate refused by policy direct-1.3"),
        (None, "gm2552@securehealthemail.com"),
    ),
    # DCDT 2013 HISP message: SHA-1 signature with a one-line 1,600-character base64 signature part,
    # signed by an RSA-1024 key (AS-5).
    "dcdt-testDecryptMail": Case(
        "interop/dcdt/testDecryptMail.eml",
        "dcdt",
        "self",
        datetime(2013, 6, 1, tzinfo=UTC),
        (PolicyViolation, "SHA-1 refused by policy direct-1.3"),
        (PolicyViolation, "RSA-1024 signer key refused by policy direct-1.2"),
    ),
    # ETT-generated message: SHA-1 signature, self-signed RSA-1024 MD5-signed certificate.
    "ett-TestGeneratedMessage": Case(
        "interop/ett/TestGeneratedMessage.txt",
        "ett",
        "self",
        datetime(2015, 1, 1, tzinfo=UTC),
        (PolicyViolation, "SHA-1 refused by policy direct-1.3"),
        (PolicyViolation, "RSA-1024 signer key refused by policy direct-1.2"),
    ),
    # .NET RI: RSAES-OAEP key transport; SHA-1 signature by a certificate whose domain appears only in
    # the subject DN (no subjectAltName): never bound under AS-3.
    "dotnet-envelopeSignature": Case(
        "interop/dotnet/envelopeSignature.eml",
        "dotnet",
        "self",
        datetime(2024, 1, 1, tzinfo=UTC),
        (PolicyViolation, "SHA-1 refused by policy direct-1.3"),
        (TrustError, "signer not bound to sender"),
    ),
    # Another vendor's signed-only message (quoted-printable message/rfc822): not encrypted (AS-14).
    "nhin-d-Wrapped_Quoted": Case(
        "interop/nhin-d/Wrapped_Quoted.eml",
        "ryan",
        None,
        NOW,
        (PolicyViolation, "unencrypted message"),
        (PolicyViolation, "unencrypted message"),
    ),
    # DCDT parser variants: plain text on the Direct side, and envelopes for keys we do not hold, in
    # x-pkcs7-mime, reordered/unquoted parameters and folded parameters with a stray charset.
    "dcdt-invalidMimeType": Case(
        "dcdt/testDecryptMail_invalidMimeType.eml",
        "ryan",
        None,
        NOW,
        (PolicyViolation, "unencrypted message"),
        (PolicyViolation, "unencrypted message"),
    ),
    **{
        f"dcdt-{name}": Case(
            f"dcdt/testDecryptMail_{name}.eml",
            "ryan",
            None,
            NOW,
            (DecryptionError, "no recipient matches our keys"),
            (DecryptionError, "no recipient matches our keys"),
        )
        for name in (
            "pkcs7-mime_diffMimeTypeParamOrder",
            "pkcs7-mime_encryptedWithWrongKey",
            "pkcs7-mime_valid",
            "x-pkcs7-mime_valid",
        )
    },
    # This one is also RC2-encrypted: the weak algorithm is named (AS-9) before any key is tried.
    "dcdt-x-pkcs7-mime_noMatchingKeys": Case(
        "dcdt/testDecryptMail_x-pkcs7-mime_noMatchingKeys.eml",
        "ryan",
        None,
        NOW,
        (PolicyViolation, "RC2 refused by policy direct-1.3"),
        (PolicyViolation, "RC2 refused by policy direct-1.2"),
    ),
    "nhin-d-envelopeSignatureContentType2": Case(
        "nhin-d/envelopeSignatureContentType2.eml",
        "ryan",
        None,
        NOW,
        (DecryptionError, "no recipient matches our keys"),
        (DecryptionError, "no recipient matches our keys"),
    ),
}


@pytest.mark.parametrize("policy", ["direct-1.3", "direct-1.2"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_fixture_message_ends_as_the_spec_says(case: Case, policy: str) -> None:
    credential = _load(case.credential)
    if case.anchor == "self":
        anchors = (credential.certificate,)
    elif case.anchor is None:
        anchors = (TestPKI(at=NOW).ca.certificate,)
    else:
        anchors = (load_certificate(fixture_bytes(case.anchor)),)
    agent = SecurityAgent(policy=policy_from_name(policy))
    error, text = case.outcome_13 if policy == "direct-1.3" else case.outcome_12
    raw = (FIXTURES / case.message).read_bytes()
    if error is None:
        opened = agent.process_incoming(raw, credentials=[credential], trust=StaticAnchors(anchors), at=case.at)
        assert opened.sender == DirectAddress.parse(text)
        assert opened.wrapped
        inner = mime.parse_entity(opened.message)
        assert inner.header("From") and text in (inner.header("From") or "")
    else:
        with pytest.raises(error, match=text):
            agent.process_incoming(raw, credentials=[credential], trust=StaticAnchors(anchors), at=case.at)


def test_java_ri_message_unlocks_only_with_the_recipients_key() -> None:
    """EncryptedMessage2 is for ryan@; gm2552's key (the signer's) does not open it."""
    gm2552 = _credential("interop/java-ri/gm2552.der", "interop/java-ri/gm2552Key.der")
    with pytest.raises(DecryptionError, match="no recipient matches our keys"):
        SecurityAgent(policy=policy_from_name("direct-1.2")).process_incoming(
            fixture_bytes("interop/java-ri/EncryptedMessage2.txt"),
            credentials=[gm2552],
            trust=StaticAnchors((load_certificate(fixture_bytes("interop/java-ri/secureHealthEmailCACert.der")),)),
            at=NOW,
        )


def test_java_ri_plain_message_with_attachment_round_trips() -> None:
    """MessageWithAttachment.txt as outgoing input: sealed by us, opened by us, payload unchanged (AS-16)."""
    import email

    pki = TestPKI(at=NOW)
    raw = fixture_bytes("direct-ri-java/messages/MessageWithAttachment.txt")
    source = email.message_from_bytes(raw)
    sender = DirectAddress.parse(source["From"])
    recipients = [DirectAddress.parse(a) for a in source.get_all("To", [])]
    agent = SecurityAgent()
    sealed = agent.process_outgoing(
        raw,
        sender=[pki.user(str(sender)).credential],
        recipients={r: [pki.user(str(r)).certificate] for r in recipients},
        at=NOW,
    )
    opened = agent.process_incoming(
        sealed.message, credentials=[pki.user(str(recipients[0])).credential], trust=pki.anchors, at=NOW
    )
    assert opened.message == mime.canonicalize(raw)
    received = email.message_from_bytes(opened.message)
    originals = [p.get_payload(decode=True) for p in source.walk() if not p.is_multipart()]
    roundtrip = [p.get_payload(decode=True) for p in received.walk() if not p.is_multipart()]
    assert [o.replace(b"\r\n", b"\n") for o in originals] == [r.replace(b"\r\n", b"\n") for r in roundtrip]
