"""hisp.core.devca: the development PKI makes the certificates the Direct profile describes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import AT
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from hisp.core.certs import Certificate
from hisp.core.devca import Issued, KeyUsagePreset, create_ca, issue_certificate
from hisp.core.policy import DigestAlgorithm
from hisp.errors import AddressError, ConfigError


@pytest.fixture(scope="module")
def root() -> Issued:
    return create_ca("hisp Dev Root", at=AT)


@pytest.fixture(scope="module")
def inter(root: Issued) -> Issued:
    return create_ca("hisp Dev Intermediate", at=AT, issuer=root, path_length=0)


def ext(cert: Certificate, oid: x509.ObjectIdentifier) -> x509.Extension[x509.ExtensionType]:
    return cert.x509.extensions.get_extension_for_oid(oid)


def verify_signed_by(cert: Certificate, issuer: Certificate) -> None:
    public = issuer.x509.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    algorithm = cert.x509.signature_hash_algorithm
    assert algorithm is not None
    public.verify(cert.x509.signature, cert.x509.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)


def test_root_ca(root: Issued) -> None:
    cert = root.certificate
    assert cert.subject == "CN=hisp Dev Root" and cert.issuer == cert.subject
    bc = ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    ku = ext(cert, ExtensionOID.KEY_USAGE)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert cert.subject_key_identifier is not None
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    assert cert.not_before == AT - timedelta(hours=1)
    assert cert.not_after == AT + timedelta(days=3650)
    assert cert.signature_digest is DigestAlgorithm.SHA256 and cert.key_description == "RSA-2048"
    assert root.credential.chain == ()
    verify_signed_by(cert, cert)


def test_intermediate_ca(root: Issued, inter: Issued) -> None:
    cert = inter.certificate
    assert cert.issuer == root.certificate.subject
    assert ext(cert, ExtensionOID.BASIC_CONSTRAINTS).value.path_length == 0
    aki = ext(cert, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    assert aki.key_identifier == root.certificate.subject_key_identifier
    assert inter.credential.chain == (root.certificate,)
    verify_signed_by(cert, root.certificate)


def test_ca_without_cert_sign() -> None:
    ca = create_ca("No Sign CA", at=AT, key_usage_cert_sign=False)
    ku = ext(ca.certificate, ExtensionOID.KEY_USAGE).value
    assert not ku.key_cert_sign and ku.crl_sign


@pytest.mark.parametrize(
    ("kwargs", "san_type", "value"),
    [
        ({"address": "dr.a@direct.example.org"}, x509.RFC822Name, "dr.a@direct.example.org"),
        ({"address": "Dr.A@Direct.Example.ORG"}, x509.RFC822Name, "Dr.A@Direct.Example.ORG"),
        ({"domain": "direct.example.org"}, x509.DNSName, "direct.example.org"),
    ],
    ids=["address", "address-mixed-case", "domain"],
)
def test_end_entity_has_exactly_one_san(
    inter: Issued, kwargs: dict[str, str], san_type: type, value: str
) -> None:
    issued = issue_certificate(inter, at=AT, **kwargs)
    cert = issued.certificate
    san = ext(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert not san.critical
    assert list(san.value) == [san_type(value)]
    assert cert.x509.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == value
    assert cert.x509.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS) == []
    bc = ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and not bc.value.ca
    assert ext(cert, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value.key_identifier == (
        inter.certificate.subject_key_identifier
    )
    assert cert.subject_key_identifier is not None
    assert cert.not_before == AT - timedelta(hours=1) and cert.not_after == AT + timedelta(days=365)
    assert issued.credential.chain == (inter.certificate, *inter.credential.chain)
    verify_signed_by(cert, inter.certificate)


@pytest.mark.parametrize(
    ("usage", "digital_signature", "key_encipherment"),
    [
        (KeyUsagePreset.DUAL, True, True),
        (KeyUsagePreset.SIGNING, True, False),
        (KeyUsagePreset.ENCIPHERMENT, False, True),
    ],
    ids=[u.value for u in KeyUsagePreset],
)
def test_key_usage_presets_are_critical(
    inter: Issued, usage: KeyUsagePreset, digital_signature: bool, key_encipherment: bool
) -> None:
    cert = issue_certificate(inter, at=AT, address="ku@direct.example.org", usage=usage).certificate
    ku = ext(cert, ExtensionOID.KEY_USAGE)
    assert ku.critical
    assert (ku.value.digital_signature, ku.value.key_encipherment) == (digital_signature, key_encipherment)
    assert not ku.value.key_cert_sign
    assert (cert.can_sign, cert.can_encipher) == (digital_signature, key_encipherment)


def test_crl_distribution_point_and_aia(inter: Issued) -> None:
    cert = issue_certificate(
        inter,
        at=AT,
        domain="direct.example.org",
        crl_url="http://ca.example.org/dev.crl",
        aia_url="http://ca.example.org/dev-ca.der",
    ).certificate
    (point,) = ext(cert, ExtensionOID.CRL_DISTRIBUTION_POINTS).value
    assert point.full_name == [x509.UniformResourceIdentifier("http://ca.example.org/dev.crl")]
    (access,) = ext(cert, ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
    assert access.access_method == AuthorityInformationAccessOID.CA_ISSUERS
    assert access.access_location == x509.UniformResourceIdentifier("http://ca.example.org/dev-ca.der")
    plain = issue_certificate(inter, at=AT, domain="direct.example.org").certificate
    present = {e.oid for e in plain.x509.extensions}
    assert ExtensionOID.CRL_DISTRIBUTION_POINTS not in present
    assert ExtensionOID.AUTHORITY_INFORMATION_ACCESS not in present


@pytest.mark.parametrize("digest", [DigestAlgorithm.SHA1, DigestAlgorithm.MD5, DigestAlgorithm.SHA384])
def test_weak_and_strong_signature_digests(root: Issued, digest: DigestAlgorithm) -> None:
    leaf = issue_certificate(root, at=AT, address="weak@direct.example.org", signature_digest=digest)
    assert leaf.certificate.signature_digest is digest
    verify_signed_by(leaf.certificate, root.certificate)
    # The DER is a well-formed certificate that round-trips through a strict parser.
    assert Certificate.from_der(leaf.certificate.der) == leaf.certificate
    ca = create_ca("Weak CA", at=AT, issuer=root, signature_digest=digest)
    assert ca.certificate.signature_digest is digest
    verify_signed_by(ca.certificate, root.certificate)


def test_sha1_signature_is_sha1_with_rsa_in_both_places(root: Issued) -> None:
    cert = issue_certificate(
        root, at=AT, address="sha1@direct.example.org", signature_digest=DigestAlgorithm.SHA1
    )
    assert cert.certificate.x509.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.5"
    assert isinstance(cert.certificate.x509.signature_hash_algorithm, hashes.SHA1)


@pytest.mark.parametrize(
    ("key_type", "key_size", "description"),
    [
        ("rsa", 1024, "RSA-1024"),
        ("rsa", 3072, "RSA-3072"),
        ("ec-p256", 0, "ECDSA-secp256r1"),
        ("ec-p384", 0, "ECDSA-secp384r1"),
    ],
    ids=["rsa-1024", "rsa-3072", "ec-p256", "ec-p384"],
)
def test_key_types(inter: Issued, key_type: str, key_size: int, description: str) -> None:
    issued = issue_certificate(
        inter, at=AT, address="k@direct.example.org", key_type=key_type, key_size=key_size or 2048
    )
    assert issued.certificate.key_description == description
    assert (
        issued.private_key.public_key().public_numbers()
        == issued.certificate.x509.public_key().public_numbers()
    )


def test_rsa_1024_ca() -> None:
    assert create_ca("Small CA", at=AT, key_size=1024).certificate.rsa_key_bits == 1024


def test_subject_email_only_and_wildcard(inter: Issued) -> None:
    email_only = issue_certificate(
        inter, at=AT, address="e@direct.example.org", subject_email_only=True
    ).certificate
    assert (
        email_only.x509.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)[0].value
        == "e@direct.example.org"
    )
    assert ExtensionOID.SUBJECT_ALTERNATIVE_NAME not in {e.oid for e in email_only.x509.extensions}
    assert email_only.rfc822_names == () and email_only.dns_names == ()
    wildcard = issue_certificate(
        inter, at=AT, domain="direct.example.org", extra_dns_names=("*.example.org",)
    )
    assert wildcard.certificate.dns_names == ("direct.example.org", "*.example.org")


def test_explicit_validity(inter: Issued) -> None:
    start, end = AT - timedelta(days=400), AT - timedelta(days=35)
    cert = issue_certificate(inter, at=AT, address="old@direct.example.org", not_before=start, not_after=end)
    assert (cert.certificate.not_before, cert.certificate.not_after) == (start, end)
    ca = create_ca("Short CA", at=AT, days=10)
    assert ca.certificate.not_after == AT + timedelta(days=10)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ConfigError, "exactly one of address or domain"),
        ({"address": "a@direct.example.org", "domain": "direct.example.org"}, ConfigError, "exactly one"),
        ({"domain": "direct.example.org", "subject_email_only": True}, ConfigError, "needs an address"),
        ({"address": "not an address"}, AddressError, "not"),
        ({"address": "A <a@direct.example.org>"}, AddressError, "bare"),
        ({"domain": "*.example.org"}, AddressError, "not a valid health domain"),
        ({"address": "a@direct.example.org", "key_type": "dsa"}, ConfigError, "unknown key type"),
        ({"address": "a@direct.example.org", "key_size": 512}, ConfigError, "below 1024"),
        (
            {"address": "a@direct.example.org", "not_after": AT - timedelta(days=1)},
            ConfigError,
            "before it starts",
        ),
    ],
    ids=[
        "none",
        "both",
        "email-only-domain",
        "bad-address",
        "display-name",
        "wildcard-domain",
        "key-type",
        "key-size",
        "inverted-validity",
    ],
)
def test_issue_errors(inter: Issued, kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        issue_certificate(inter, at=AT, **kwargs)


def test_naive_time_and_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        create_ca("Naive", at=AT.replace(tzinfo=None))
    with pytest.raises(ConfigError, match="needs a name"):
        create_ca("  ", at=AT)
