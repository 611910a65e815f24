"""Development PKI: certificate authorities and Direct certificates for tests and demos.

Never use these keys in production: they are generated in memory for test fixtures, the demo and the
DCDT-style discovery cases (fixtures/MANIFEST.md: RSA-2048, SHA-256, keyUsage digitalSignature +
keyEncipherment, CRL distribution point and AIA caIssuers).

Pure: randomness (keys, serial numbers) is used, the clock is not. ``at`` is the issue time; by default a
certificate is valid from one hour before ``at`` until ``at + days``.

Weak variants exist on purpose, for negative tests: SHA-1 (and MD5) signatures, which the cryptography
builder refuses, are made by re-signing the builder's TBSCertificate with asn1crypto; RSA-1024 keys are
generated directly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from hisp.addresses import DirectAddress, HealthDomain
from hisp.core.certs import Certificate, Credential, PrivateKey, require_aware
from hisp.core.policy import DigestAlgorithm
from hisp.errors import AddressError, ConfigError

__all__ = ["Issued", "KeyUsagePreset", "create_ca", "issue_certificate"]

# Smallest RSA key we generate: small enough for the AS-5 negative tests, large enough for a signature.
_MIN_RSA_BITS = 1024
_KEY_TYPES = ("rsa", "ec-p256", "ec-p384")


class KeyUsagePreset(enum.Enum):
    """Key usage of an end-entity certificate (AS-4: dual-use or single-use pairs)."""

    DUAL = "dual"  # digitalSignature + keyEncipherment
    SIGNING = "signing"  # digitalSignature only
    ENCIPHERMENT = "encipherment"  # keyEncipherment only


@dataclass(frozen=True)
class Issued:
    """A certificate made by the development CA, with its private key.

    :ivar credential: the certificate, its key, and its issuers up to the root, nearest first (empty for
        a self-signed root).

    Spec: glossary "credential" (DESIGN.md section 5).
    """

    credential: Credential

    @property
    def certificate(self) -> Certificate:
        """The certificate."""
        return self.credential.certificate

    @property
    def private_key(self) -> PrivateKey:
        """Its private key."""
        return self.credential.private_key


_BUILDER_HASHES: dict[DigestAlgorithm, hashes.SHA256 | hashes.SHA384 | hashes.SHA512] = {
    DigestAlgorithm.SHA256: hashes.SHA256(),
    DigestAlgorithm.SHA384: hashes.SHA384(),
    DigestAlgorithm.SHA512: hashes.SHA512(),
}
_LEGACY_HASHES: dict[DigestAlgorithm, hashes.HashAlgorithm] = {
    DigestAlgorithm.SHA1: hashes.SHA1(),
    DigestAlgorithm.MD5: hashes.MD5(),
}
# Digests cryptography's builder refuses to sign with; we re-sign the TBSCertificate ourselves.
_RESIGN = {DigestAlgorithm.SHA1: ("sha1_rsa", "sha1_ecdsa"), DigestAlgorithm.MD5: ("md5_rsa", None)}


def _validity(
    at: datetime, days: int, not_before: datetime | None, not_after: datetime | None
) -> tuple[datetime, datetime]:
    require_aware(at)
    if not_before is not None:
        require_aware(not_before)
    if not_after is not None:
        require_aware(not_after)
    start = not_before if not_before is not None else at - timedelta(hours=1)
    end = not_after if not_after is not None else at + timedelta(days=days)
    if end <= start:
        raise ConfigError(
            f"certificate validity ends ({end.isoformat()}) before it starts ({start.isoformat()})"
        )
    return start, end


def _rsa_key(bits: int) -> rsa.RSAPrivateKey:
    if bits < _MIN_RSA_BITS:
        raise ConfigError(f"RSA key size {bits} is below {_MIN_RSA_BITS} bits")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _new_key(key_type: str, key_size: int) -> PrivateKey:
    if key_type == "rsa":
        return _rsa_key(key_size)
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise ConfigError(f"unknown key type {key_type!r}; known: {', '.join(_KEY_TYPES)}")


def _sign(builder: cx509.CertificateBuilder, key: PrivateKey, digest: DigestAlgorithm) -> Certificate:
    if digest in _BUILDER_HASHES:
        return Certificate.from_x509(builder.sign(key, _BUILDER_HASHES[digest]))
    # cryptography refuses SHA-1/MD5 here: build with SHA-256, then replace the signature algorithm in
    # the TBSCertificate and sign those bytes again (RFC 5280 section 4.1.1.2 requires both to match).
    rsa_name, ec_name = _RESIGN[digest]
    name = rsa_name if isinstance(key, rsa.RSAPrivateKey) else ec_name
    if name is None:
        raise ConfigError(f"{digest.display_name} signatures are only made with RSA keys")
    draft = builder.sign(key, hashes.SHA256())
    tbs = asn1_x509.TbsCertificate.load(draft.tbs_certificate_bytes)
    algorithm = asn1_x509.SignedDigestAlgorithm(
        {"algorithm": name, "parameters": asn1_core.Null()}
        if isinstance(key, rsa.RSAPrivateKey)
        else {"algorithm": name}
    )
    tbs["signature"] = algorithm
    tbs_der = tbs.dump(force=True)
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs_der, padding.PKCS1v15(), _LEGACY_HASHES[digest])
    else:
        signature = key.sign(tbs_der, ec.ECDSA(_LEGACY_HASHES[digest]))
    cert = asn1_x509.Certificate(
        {"tbs_certificate": tbs, "signature_algorithm": algorithm, "signature_value": signature}
    )
    return Certificate.from_der(cert.dump(force=True))


def _name(common_name: str, email: str | None = None) -> cx509.Name:
    attributes = [cx509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if email is not None:
        attributes.append(cx509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return cx509.Name(attributes)


def _check_digest(digest: DigestAlgorithm) -> None:
    if digest not in _BUILDER_HASHES and digest not in _LEGACY_HASHES:
        raise ConfigError(f"cannot sign certificates with {digest.display_name}")


def create_ca(
    name: str,
    *,
    at: datetime,
    days: int = 3650,
    issuer: Issued | None = None,
    key_size: int = 2048,
    signature_digest: DigestAlgorithm = DigestAlgorithm.SHA256,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    path_length: int | None = None,
    key_usage_cert_sign: bool = True,
) -> Issued:
    """Create a development CA: a self-signed root, or an intermediate signed by ``issuer``.

    The certificate has subject ``CN=<name>``, an RSA key, basicConstraints cA=TRUE (critical, with
    ``path_length`` when given), keyUsage keyCertSign + cRLSign (critical), a subjectKeyIdentifier, and
    an authorityKeyIdentifier when issued by another CA.

    :param name: the CA's common name.
    :param at: the issue time, an aware datetime.
    :param days: validity after ``at``, in days (ignored when ``not_after`` is given).
    :param issuer: the parent CA, or None for a self-signed root.
    :param key_size: RSA modulus size in bits (1024 allowed, for negative tests).
    :param signature_digest: digest of the certificate's signature (SHA-1 allowed, for negative tests).
    :param not_before: start of validity; default ``at`` minus one hour.
    :param not_after: end of validity; default ``at + days``.
    :param path_length: basicConstraints pathLenConstraint, or None for no limit.
    :param key_usage_cert_sign: False leaves keyCertSign out (a CA that may not issue, for negative tests).
    :returns: the CA certificate with its key; ``credential.chain`` lists its issuers, nearest first.
    :raises ConfigError: on an empty name, inconsistent validity, a key size below 1024 or an unusable
        digest.
    :raises ValueError: when a time is naive.

    Spec: RFC 5280 sections 4.2.1.1-4.2.1.3 and 4.2.1.9.
    """
    if not name.strip():
        raise ConfigError("a CA needs a name")
    _check_digest(signature_digest)
    start, end = _validity(at, days, not_before, not_after)
    key = _rsa_key(key_size)
    subject = _name(name)
    signer_key: PrivateKey = key if issuer is None else issuer.private_key
    issuer_name = subject if issuer is None else issuer.certificate.x509.subject
    builder = (
        cx509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(cx509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            cx509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_usage_cert_sign,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(cx509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(_aki(issuer), critical=False)
    cert = _sign(builder, signer_key, signature_digest)
    chain = () if issuer is None else (issuer.certificate, *issuer.credential.chain)
    return Issued(Credential(cert, key, chain))


def _aki(issuer: Issued) -> cx509.AuthorityKeyIdentifier:
    ski = issuer.certificate.subject_key_identifier
    if ski is not None:
        return cx509.AuthorityKeyIdentifier(ski, None, None)
    return cx509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private_key.public_key())


def _key_usage(usage: KeyUsagePreset) -> cx509.KeyUsage:
    return cx509.KeyUsage(
        digital_signature=usage in (KeyUsagePreset.DUAL, KeyUsagePreset.SIGNING),
        content_commitment=False,
        key_encipherment=usage in (KeyUsagePreset.DUAL, KeyUsagePreset.ENCIPHERMENT),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def issue_certificate(
    ca: Issued,
    *,
    at: datetime,
    address: str | None = None,
    domain: str | None = None,
    usage: KeyUsagePreset = KeyUsagePreset.DUAL,
    days: int = 365,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    crl_url: str | None = None,
    aia_url: str | None = None,
    ocsp_url: str | None = None,
    key_size: int = 2048,
    key_type: str = "rsa",
    signature_digest: DigestAlgorithm = DigestAlgorithm.SHA256,
    subject_email_only: bool = False,
    extra_dns_names: tuple[str, ...] = (),
) -> Issued:
    """Issue an address-bound or domain-bound Direct end-entity certificate.

    Exactly one of ``address`` / ``domain``. The certificate has subject ``CN=<address or domain>``,
    exactly one subjectAltName entry (rfc822Name for an address, dNSName for a domain; the text is kept
    as given, so mixed case survives for AS-2 tests), basicConstraints cA=FALSE, critical keyUsage per
    ``usage``, SKI and AKI, and a CRL distribution point and AIA caIssuers when URLs are given.

    :param ca: the issuing CA.
    :param at: the issue time, an aware datetime.
    :param address: the Direct address for an address-bound certificate.
    :param domain: the health domain for a domain-bound certificate.
    :param usage: dual-use, signing-only or encipherment-only (AS-4).
    :param days: validity after ``at``, in days (ignored when ``not_after`` is given).
    :param not_before: start of validity; default ``at`` minus one hour.
    :param not_after: end of validity; default ``at + days``.
    :param crl_url: HTTP URL of the CA's CRL (cRLDistributionPoints), or None.
    :param aia_url: HTTP URL of the CA certificate (authorityInfoAccess caIssuers), or None.
    :param ocsp_url: HTTP URL of an OCSP responder (authorityInfoAccess id-ad-ocsp), or None.
    :param key_size: RSA modulus size in bits (1024 allowed, for AS-5 negative tests).
    :param key_type: ``"rsa"``, ``"ec-p256"`` or ``"ec-p384"``.
    :param signature_digest: digest of the CA's signature (SHA-1 allowed, for negative tests).
    :param subject_email_only: put the address only in the subject's emailAddress attribute and add no
        subjectAltName (an AS-3 negative case: such a certificate binds to nothing).
    :param extra_dns_names: further dNSName entries, e.g. ``"*.example.org"`` for the wildcard case.
    :returns: the certificate and its key; ``credential.chain`` is the CA and its issuers.
    :raises ConfigError: when not exactly one of address/domain is given, ``subject_email_only`` is used
        without an address, the key type is unknown, validity is inconsistent or the digest unusable.
    :raises AddressError: when the address or domain is not valid.
    :raises ValueError: when a time is naive.

    Spec: AS-2, AS-3, AS-4, AS-5; RFC 5280 sections 4.2.1.2-4.2.1.3, 4.2.1.6, 4.2.1.9, 4.2.1.13, 4.2.2.1.
    """
    if (address is None) == (domain is None):
        raise ConfigError("issue_certificate needs exactly one of address or domain")
    if subject_email_only and address is None:
        raise ConfigError("subject_email_only needs an address")
    _check_digest(signature_digest)
    start, end = _validity(at, days, not_before, not_after)
    key = _new_key(key_type, key_size)
    if address is not None:
        text = address.strip()
        if str(DirectAddress.parse(text)).casefold() != text.casefold():
            raise AddressError(f"not a bare Direct address: {address!r}", address=address)
        subject = _name(text, email=text) if subject_email_only else _name(text)
        names: list[cx509.GeneralName] = [] if subject_email_only else [cx509.RFC822Name(text)]
    else:
        assert domain is not None
        text = domain.strip().rstrip(".")
        HealthDomain.parse(text)
        subject = _name(text)
        names = [cx509.DNSName(text)]
    names.extend(cx509.DNSName(extra) for extra in extra_dns_names)
    builder = (
        cx509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.x509.subject)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(cx509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(usage), critical=True)
        .add_extension(cx509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(ca), critical=False)
    )
    if names:
        builder = builder.add_extension(cx509.SubjectAlternativeName(names), critical=False)
    if crl_url is not None:
        point = cx509.DistributionPoint([cx509.UniformResourceIdentifier(crl_url)], None, None, None)
        builder = builder.add_extension(cx509.CRLDistributionPoints([point]), critical=False)
    accesses = []
    if ocsp_url is not None:
        accesses.append(
            cx509.AccessDescription(AuthorityInformationAccessOID.OCSP, cx509.UniformResourceIdentifier(ocsp_url))
        )
    if aia_url is not None:
        accesses.append(
            cx509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, cx509.UniformResourceIdentifier(aia_url))
        )
    if accesses:
        builder = builder.add_extension(cx509.AuthorityInformationAccess(accesses), critical=False)
    cert = _sign(builder, ca.private_key, signature_digest)
    return Issued(Credential(cert, key, (ca.certificate, *ca.credential.chain)))
