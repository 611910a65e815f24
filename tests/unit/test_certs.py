"""hisp.core.certs: loading every fixture format, binding (AS-2, AS-3), key usage (AS-4), credentials."""

from __future__ import annotations

import hashlib
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import pkcs12 as asn1_pkcs12
from conftest import AT, fixture_bytes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from hisp.addresses import DirectAddress
from hisp.core import certs
from hisp.core.certs import (
    MAX_INPUT_BYTES,
    CertBinding,
    Certificate,
    Credential,
    load_certificate,
    load_certificates,
    load_credential,
    load_pkcs12,
    load_private_key,
    private_key_to_pem,
)
from hisp.core.devca import create_ca, issue_certificate
from hisp.core.policy import DigestAlgorithm
from hisp.errors import CertificateError, ConfigError

# (fixture, expected text in the subject, key, signature digest, is CA)
DER_CERTS = [
    ("direct-ri-java/certs/user1.der", "CN=user1", "RSA-2048", DigestAlgorithm.SHA1, False),
    (
        "direct-ri-java/certs/cacert.der",
        "CN=Cerner NHIND Dev Root CA",
        "RSA-2048",
        DigestAlgorithm.SHA1,
        True,
    ),
    (
        "direct-ri-java/certs/expired.der",
        "CN=expired@testexpired.email.com",
        "RSA-1024",
        DigestAlgorithm.SHA1,
        False,
    ),
    ("direct-ri-java/certs/KeyUsageCA.der", "CN=KeyUsageCA", "RSA-1024", DigestAlgorithm.SHA1, True),
    ("direct-ri-dotnet/root.cer", "CN=root.xyz", "RSA-1024", DigestAlgorithm.SHA1, False),
    ("direct-ri-dotnet/end.cer", "CN=end.xyz", "RSA-1024", DigestAlgorithm.SHA1, False),
    (
        "ett/certificates/ett.healthit.gov.der",
        "CN=ett.healthit.gov",
        "RSA-2048",
        DigestAlgorithm.SHA256,
        False,
    ),
    (
        "ett/certificates/intermediate.sitenv.org.der",
        "CN=intermediate.sitenv.org",
        "RSA-2048",
        DigestAlgorithm.SHA256,
        True,
    ),
    (
        "interop/dcdt/testDecryptMail_cert.der",
        "CN=dts500_valid_cert_record",
        "RSA-1024",
        DigestAlgorithm.SHA1,
        False,
    ),
    (
        "nhin-d/demo31.direct-test.com_ca_root.cer",
        "CN=demo31.direct-test.com_ca_root",
        "RSA-2048",
        DigestAlgorithm.SHA256,
        True,
    ),
]


@pytest.mark.parametrize(
    ("path", "subject", "key", "digest", "is_ca"), DER_CERTS, ids=[c[0] for c in DER_CERTS]
)
def test_der_certificate_fixtures_load_with_their_properties(
    path: str, subject: str, key: str, digest: DigestAlgorithm, is_ca: bool
) -> None:
    data = fixture_bytes(path)
    cert = load_certificate(data)
    assert cert.der == data
    assert cert.fingerprint_sha256 == hashlib.sha256(data).hexdigest()
    assert subject in cert.subject
    assert cert.key_description == key
    assert cert.rsa_key_bits == int(key.split("-")[1])
    assert cert.signature_digest is digest
    assert cert.is_ca is is_ca
    assert cert.not_before.tzinfo is not None and cert.not_after.utcoffset() == timedelta(0)
    assert cert == Certificate.from_der(data) and hash(cert) == hash(Certificate.from_der(data))
    assert load_certificate(cert.to_pem()) == cert


def test_negative_serial_numbers_load_silently() -> None:
    # The .NET RI chain certificates have negative serials (RFC 5280 forbids them; old tools made them).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cert = load_certificate(fixture_bytes("direct-ri-dotnet/root.cer"))
        assert cert.serial_number < 0


def test_pem_with_leading_text() -> None:
    data = fixture_bytes("ett/certificates/sampleca.nist.gov.pem")
    assert not data.startswith(b"-----BEGIN")
    cert = load_certificate(data)
    assert "CN=nist.gov" in cert.subject
    assert cert.dns_names == ("nist.gov",)
    assert cert.rfc822_names == ()


def test_many_pem_certificates_with_text_between_keep_their_order() -> None:
    first = load_certificate(fixture_bytes("direct-ri-java/certs/user1.der"))
    second = load_certificate(fixture_bytes("direct-ri-java/certs/cacert.der"))
    data = b"leaf:\n" + first.to_pem() + b"\nissuer follows\r\n" + second.to_pem() + b"trailer"
    assert load_certificates(data) == [first, second]
    with pytest.raises(CertificateError, match="exactly one certificate, found 2"):
        load_certificate(data)


@pytest.mark.parametrize(
    ("path", "count", "first_subject"),
    [
        ("direct-ri-java/bundles/testBundle.p7b", 1, "CN=sm1.direct.com Root CA"),
        ("interop/java-ri/providerTestBundle.p7b", 6, "CN=BIDMC Direct Test CA"),
    ],
    ids=["pem-pkcs7", "der-pkcs7"],
)
def test_pkcs7_certs_only_bundles(path: str, count: int, first_subject: str) -> None:
    bundle = load_certificates(fixture_bytes(path))
    assert len(bundle) == count
    assert first_subject in bundle[0].subject


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "expected a PEM or DER certificate"),
        (b"\x30\x03\x02\x01\x00", "expected a PEM or DER certificate"),
        (b"hello world", "expected a PEM or DER certificate"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "no PEM CERTIFICATE"),
        (b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "not valid base64"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a DER X.509 certificate"),
        (b"\x00" * (MAX_INPUT_BYTES + 1), "exceeds the limit"),
    ],
    ids=["empty", "small-der", "text", "key-only-pem", "bad-base64", "bad-der-in-pem", "oversize"],
)
def test_bad_certificate_data_is_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        load_certificates(data)


# -- private keys ---------------------------------------------------------------------------------

KEY_PAIRS = [
    ("direct-ri-java/certs/externUser1.der", "direct-ri-java/certs/externUser1key.der"),
    ("interop/java-ri/gm2552.der", "interop/java-ri/gm2552Key.der"),
    ("interop/java-ri/ryan.der", "interop/java-ri/ryanKey.der"),
    ("interop/dcdt/testDecryptMail_cert.der", "interop/dcdt/testDecryptMail_key.der"),
]


@pytest.mark.parametrize(("cert_path", "key_path"), KEY_PAIRS, ids=[k for _, k in KEY_PAIRS])
def test_pkcs8_der_keys_match_their_certificates(cert_path: str, key_path: str) -> None:
    credential = load_credential(fixture_bytes(cert_path), fixture_bytes(key_path), None)
    assert credential.certificate == load_certificate(fixture_bytes(cert_path))
    assert isinstance(credential.private_key, rsa.RSAPrivateKey)
    assert credential.chain == ()


def test_key_of_another_certificate_is_refused() -> None:
    with pytest.raises(CertificateError, match="no certificate matches the private key"):
        load_credential(
            fixture_bytes("interop/java-ri/ryan.der"), fixture_bytes("interop/java-ri/gm2552Key.der"), None
        )
    ryan = load_certificate(fixture_bytes("interop/java-ri/ryan.der"))
    gm_key = load_private_key(fixture_bytes("interop/java-ri/gm2552Key.der"))
    with pytest.raises(CertificateError, match="does not match certificate"):
        Credential(ryan, gm_key)


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _encodings(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, bytes]:
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    none = serialization.NoEncryption()
    legacy = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1 for RSA, SEC1 for EC
    return {
        "pkcs8-pem": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, none),
        "pkcs8-der": key.private_bytes(der, serialization.PrivateFormat.PKCS8, none),
        "traditional-pem": key.private_bytes(pem, legacy, none),
        "traditional-der": key.private_bytes(der, legacy, none),
        "pem-with-text": b"Bag Attributes\n  friendlyName: x\n" + key.private_bytes(pem, legacy, none),
    }


@pytest.mark.parametrize("kind", ["rsa", "ec"])
@pytest.mark.parametrize(
    "encoding", ["pkcs8-pem", "pkcs8-der", "traditional-pem", "traditional-der", "pem-with-text"]
)
def test_unencrypted_key_encodings(kind: str, encoding: str) -> None:
    key = _rsa() if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    loaded = load_private_key(_encodings(key)[encoding])
    assert loaded.private_numbers() == key.private_numbers()
    # A password given for an unencrypted key is ignored.
    assert load_private_key(_encodings(key)[encoding], b"unused").private_numbers() == key.private_numbers()


def test_encrypted_pkcs8_round_trip_and_password_errors() -> None:
    key = _rsa()
    pem = private_key_to_pem(key, b"s3cret")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert load_private_key(pem, b"s3cret").private_numbers() == key.private_numbers()
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    assert load_private_key(der, b"pw").private_numbers() == key.private_numbers()
    with pytest.raises(CertificateError, match="wrong password"):
        load_private_key(pem, b"wrong")
    with pytest.raises(CertificateError, match="wrong password"):
        load_private_key(der, b"wrong")
    with pytest.raises(CertificateError, match="a password is needed"):
        load_private_key(pem)
    assert private_key_to_pem(key).startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(ConfigError):
        private_key_to_pem(key, b"")


def test_unsupported_key_type_and_garbage_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CertificateError, match="unsupported key type Ed25519"):
        load_private_key(ed)
    with pytest.raises(CertificateError, match="not a PEM or DER private key"):
        load_private_key(b"\x30\x03\x02\x01\x00")
    with pytest.raises(CertificateError, match="no PEM PRIVATE KEY"):
        load_private_key(load_certificate(fixture_bytes("interop/java-ri/ryan.der")).to_pem())
    with pytest.raises(CertificateError, match="exceeds the limit"):
        load_private_key(b"0" * (MAX_INPUT_BYTES + 1))


# -- PKCS#12 --------------------------------------------------------------------------------------

# (file, password, text in the leaf subject, chain length)
P12 = [
    ("direct-ri-java/certs/user1.p12", b"", "CN=user1", 0),
    ("direct-ri-java/certs/test.email.com.p12", b"", "CN=test.email.com", 0),
    ("direct-ri-java/certs/digSigOnly.p12", b"", "CN=keyusage.com", 0),
    ("direct-ri-java/certs/keyEncOnly.p12", b"", "CN=keyusage.com", 0),
    ("direct-ri-java/certs/dualUse.p12", b"", "CN=keyusage.com", 0),
    # The .NET file holds two users (biff and nancy): nancy's end-entity certificate is no issuer of ours.
    ("interop/dotnet/nhind_umamalga1_vm1.pfx", b"passw0rd!", "emailAddress=biff@nhind.hsgincubator.com", 0),
    # ETT: RC2-40 certificates, 3DES key, md5WithRSA self-signed RSA-1024 certificate.
    ("interop/ett/testCert.p12", b"", "CN=Nist", 0),
    ("interop/java-ri/gm2552encrypted.p12", b"1kingpuff", "emailAddress=gm2552@securehealthemail.com", 0),
]


@pytest.mark.parametrize(("path", "password", "subject", "chain"), P12, ids=[p[0] for p in P12])
def test_pkcs12_fixtures_load(path: str, password: bytes, subject: str, chain: int) -> None:
    credential = load_pkcs12(fixture_bytes(path), password)
    assert subject in credential.certificate.subject
    assert len(credential.chain) == chain
    # The same through load_credential (key_data None means PKCS#12).
    assert load_credential(fixture_bytes(path), None, password).certificate == credential.certificate


@pytest.mark.parametrize(("path", "password", "subject", "chain"), P12, ids=[p[0] for p in P12])
def test_pkcs12_legacy_pbe_fallback_decrypts_the_same_credential(
    path: str, password: bytes, subject: str, chain: int
) -> None:
    # The fallback runs when the cryptography backend lacks OpenSSL's legacy provider (RC2-40).
    data = fixture_bytes(path)
    keys, cert_ders = certs._load_pkcs12_fallback(data, password)
    expected = load_pkcs12(data, password)
    assert expected.certificate.der in cert_ders
    assert any(k.private_numbers() == expected.private_key.private_numbers() for k in keys)
    algorithms = {
        info["content"]["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native
        for info in asn1_pkcs12.Pfx.load(data).authenticated_safe
        if info["content_type"].native == "encrypted_data"
    }
    assert algorithms == {"pkcs12_sha1_rc2_40"}


@pytest.mark.parametrize("path", [p[0] for p in P12], ids=[p[0] for p in P12])
def test_pkcs12_wrong_password_says_so(path: str) -> None:
    with pytest.raises(CertificateError, match="wrong password"):
        load_pkcs12(fixture_bytes(path), b"not the password")
    with pytest.raises(CertificateError, match="wrong password"):
        certs._load_pkcs12_fallback(fixture_bytes(path), b"not the password")


@pytest.mark.parametrize(
    "encryption",
    ["pbes1-3des", "pbes2-aes"],
)
def test_pkcs12_fallback_reads_what_cryptography_writes(encryption: str) -> None:
    ca = create_ca("P12 CA", at=AT)
    issued = issue_certificate(ca, at=AT, address="p12@direct.example.org")
    if encryption == "pbes1-3des":
        algorithm = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(2048)
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .build(b"pw")
        )
    else:
        algorithm = serialization.BestAvailableEncryption(b"pw")
    data = pkcs12.serialize_key_and_certificates(
        b"p12", issued.private_key, issued.certificate.x509, [ca.certificate.x509], algorithm
    )
    keys, cert_ders = certs._load_pkcs12_fallback(data, b"pw")
    assert sorted(cert_ders) == sorted([issued.certificate.der, ca.certificate.der])
    assert keys[0].private_numbers() == issued.private_key.private_numbers()
    credential = load_pkcs12(data, b"pw")
    assert credential.certificate == issued.certificate
    assert credential.chain == (ca.certificate,)


def test_pkcs12_errors() -> None:
    with pytest.raises(CertificateError, match="not a PKCS#12 file"):
        load_pkcs12(b"\x30\x03\x02\x01\x00", b"")
    with pytest.raises(CertificateError, match="needs a password"):
        load_pkcs12(fixture_bytes("direct-ri-java/certs/user1.p12"), None)
    with pytest.raises(CertificateError, match="exceeds the limit"):
        load_pkcs12(b"0" * (MAX_INPUT_BYTES + 1), b"")


# RFC 2268 section 5 test vectors: (key, effective bits, plaintext, ciphertext)
RC2_VECTORS = [
    ("0000000000000000", 63, "0000000000000000", "ebb773f993278eff"),
    ("ffffffffffffffff", 64, "ffffffffffffffff", "278b27e42e2f0d49"),
    ("3000000000000000", 64, "1000000000000001", "30649edf9be7d2c2"),
    ("88", 64, "0000000000000000", "61a8a244adacccf0"),
    ("88bca90e90875a", 64, "0000000000000000", "6ccf4308974c267f"),
    ("88bca90e90875a7f0f79c384627bafb2", 64, "0000000000000000", "1a807d272bbe5db1"),
    ("88bca90e90875a7f0f79c384627bafb2", 128, "0000000000000000", "2269552ab0f85ca6"),
    (
        "88bca90e90875a7f0f79c384627bafb216f80a6f85920584c42fceb0be255daf1e",
        129,
        "0000000000000000",
        "5b78d3a43dfff1f1",
    ),
]


@pytest.mark.parametrize(
    ("key", "bits", "plain", "cipher"), RC2_VECTORS, ids=[f"{v[0][:8]}-{v[1]}" for v in RC2_VECTORS]
)
def test_rc2_decrypts_rfc2268_vectors(key: str, bits: int, plain: str, cipher: str) -> None:
    expanded = certs._rc2_expand(bytes.fromhex(key), bits)
    assert certs._rc2_decrypt_block(expanded, bytes.fromhex(cipher)).hex() == plain


# -- combined files and chains --------------------------------------------------------------------


def test_load_credential_finds_the_leaf_and_orders_the_chain() -> None:
    root = create_ca("Chain Root", at=AT)
    inter = create_ca("Chain Inter", at=AT, issuer=root)
    leaf = issue_certificate(inter, at=AT, address="chain@direct.example.org")
    key_pem = private_key_to_pem(leaf.private_key, b"pw")
    bundle = root.certificate.to_pem() + leaf.certificate.to_pem() + inter.certificate.to_pem()
    credential = load_credential(bundle, key_pem, b"pw")
    assert credential.certificate == leaf.certificate
    assert credential.chain == (inter.certificate, root.certificate)
    # One PEM file with the certificates and the (unencrypted) key.
    combined = bundle + private_key_to_pem(leaf.private_key)
    assert load_credential(combined, None, None).certificate == leaf.certificate


# -- binding (AS-2, AS-3) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "address", "binding"),
    [
        ("direct-ri-java/certs/user1.der", "user1@cerner.com", CertBinding.ADDRESS),
        ("direct-ri-java/certs/user1.der", "User1@Cerner.COM", CertBinding.ADDRESS),
        ("direct-ri-java/certs/user1.der", "user2@cerner.com", None),
        ("direct-ri-java/certs/user1.der", "user1@other.cerner.com", None),
        ("ett/certificates/ett.healthit.gov.der", "anyone@ett.healthit.gov", CertBinding.DOMAIN),
        ("ett/certificates/ett.healthit.gov.der", "Someone@ETT.HealthIT.gov", CertBinding.DOMAIN),
        ("ett/certificates/ett.healthit.gov.der", "anyone@sub.ett.healthit.gov", None),
        ("ett/certificates/ett.healthit.gov.der", "anyone@healthit.gov", None),
        # The subject DN carries emailAddress=ett.healthit.gov: it must not bind anything (AS-3).
        ("ett/certificates/healthit.gov.der", "anyone@healthit.gov", None),
    ],
    ids=[
        "exact",
        "mixed-case",
        "other-user",
        "other-domain",
        "domain",
        "domain-mixed-case",
        "subdomain",
        "parent-domain",
        "subject-email-only",
    ],
)
def test_binding_of_fixture_certificates(path: str, address: str, binding: CertBinding | None) -> None:
    cert = load_certificate(fixture_bytes(path))
    assert cert.binding_for(DirectAddress.parse(address)) is binding


def test_binding_of_mixed_case_san_subject_email_and_wildcard() -> None:
    ca = create_ca("Binding CA", at=AT)
    mixed = issue_certificate(ca, at=AT, address="Dr.Alice@Direct.Example.ORG").certificate
    assert mixed.rfc822_names == ("Dr.Alice@Direct.Example.ORG",)
    assert mixed.binding_for(DirectAddress.parse("dr.alice@direct.example.org")) is CertBinding.ADDRESS
    # An address-bound certificate does not bind other addresses of its domain.
    assert mixed.binding_for(DirectAddress.parse("bob@direct.example.org")) is None

    email_only = issue_certificate(
        ca, at=AT, address="carol@direct.example.org", subject_email_only=True
    ).certificate
    assert "emailAddress=carol@direct.example.org" in email_only.subject
    assert email_only.binding_for(DirectAddress.parse("carol@direct.example.org")) is None

    wildcard = issue_certificate(
        ca, at=AT, domain="direct.example.org", extra_dns_names=("*.example.org",)
    ).certificate
    assert wildcard.dns_names == ("direct.example.org", "*.example.org")
    assert wildcard.binding_for(DirectAddress.parse("x@direct.example.org")) is CertBinding.DOMAIN
    assert wildcard.binding_for(DirectAddress.parse("x@other.example.org")) is None


# -- key usage (AS-4) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "can_sign", "can_encipher"),
    [
        ("direct-ri-java/certs/digSigOnly.p12", True, False),
        ("direct-ri-java/certs/keyEncOnly.p12", False, True),
        ("direct-ri-java/certs/dualUse.p12", True, True),
    ],
    ids=["digSigOnly", "keyEncOnly", "dualUse"],
)
def test_key_usage_fixtures(path: str, can_sign: bool, can_encipher: bool) -> None:
    cert = load_pkcs12(fixture_bytes(path), b"").certificate
    assert (cert.can_sign, cert.can_encipher) == (can_sign, can_encipher)


def test_absent_key_usage_allows_both() -> None:
    cert = load_certificate(fixture_bytes("interop/dcdt/testDecryptMail_cert.der"))
    assert cert.can_sign and cert.can_encipher


# -- other properties -----------------------------------------------------------------------------


def test_identifiers_and_description() -> None:
    cert = load_certificate(fixture_bytes("direct-ri-java/certs/user1.der"))
    assert cert.rfc822_names == ("user1@cerner.com",)
    assert cert.dns_names == ()
    assert "CN=Cerner NHIND Dev Root CA" in cert.issuer
    assert cert.describe() == (
        f"subject={cert.subject}, SAN=[email:user1@cerner.com], sha256={cert.fingerprint_sha256}"
    )
    ca = create_ca("SKI CA", at=AT)
    ec_leaf = issue_certificate(ca, at=AT, domain="direct.example.org", key_type="ec-p384").certificate
    assert ec_leaf.key_description == "ECDSA-secp384r1"
    assert ec_leaf.rsa_key_bits is None and ec_leaf.ec_curve == "secp384r1"
    assert ec_leaf.subject_key_identifier is not None and len(ec_leaf.subject_key_identifier) == 20
    assert load_certificate(fixture_bytes("direct-ri-dotnet/root.cer")).subject_key_identifier is None


def test_md5_signed_ett_certificate_reports_md5() -> None:
    cert = load_pkcs12(fixture_bytes("interop/ett/testCert.p12"), b"").certificate
    assert cert.signature_digest is DigestAlgorithm.MD5
    assert cert.key_description == "RSA-1024"


def test_is_valid_at_with_skew() -> None:
    # The RI's expired.der is never valid: its notBefore (2010-12-13) is after its notAfter (2010-12-03).
    never = load_certificate(fixture_bytes("direct-ri-java/certs/expired.der"))
    assert never.not_before > never.not_after
    assert not never.is_valid_at(AT)
    assert not never.is_valid_at(never.not_after, skew=300)
    ca = create_ca("Skew CA", at=AT)
    cert = issue_certificate(ca, at=AT, address="skew@direct.example.org", days=1).certificate
    end = cert.not_after
    assert cert.is_valid_at(AT)
    assert not cert.is_valid_at(end + timedelta(seconds=301), skew=300)
    assert cert.is_valid_at(end + timedelta(seconds=299), skew=300)
    assert not cert.is_valid_at(cert.not_before - timedelta(seconds=1))
    assert cert.is_valid_at(cert.not_before - timedelta(seconds=1), skew=1)
    with pytest.raises(ValueError, match="aware"):
        cert.is_valid_at(datetime(2026, 11, 30))
    with pytest.raises(ValueError, match="skew"):
        cert.is_valid_at(datetime(2026, 11, 30, tzinfo=UTC), skew=-1)
