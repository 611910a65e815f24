"""CRLs and OCSP responses for tests, signed by a development CA (never for production).

:func:`build_crl` makes an X.509 v2 CRL (RFC 5280 section 5) listing revoked serial numbers;
:func:`build_ocsp_response` makes a BasicOCSPResponse (RFC 6960 section 4.2.1) for one certificate, signed
by its issuing CA (the CA is its own responder, RFC 6960 section 4.2.2.2). Both are served by
:mod:`hisp.testing.http` in tests of :mod:`hisp.adapters.revocation`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from hisp.core.certs import Certificate, require_aware
from hisp.core.devca import Issued

__all__ = ["build_crl", "build_ocsp_response"]


def build_crl(
    ca: Issued,
    *,
    at: datetime,
    revoked: Iterable[Certificate] = (),
    next_update: timedelta = timedelta(days=7),
    number: int = 1,
) -> bytes:
    """A DER CRL issued by ``ca`` at ``at``, listing ``revoked`` (revoked one day before ``at``).

    :param ca: the issuing CA (signs with SHA-256).
    :param at: thisUpdate, aware.
    :param revoked: the certificates to list.
    :param next_update: nextUpdate after ``at``.
    :param number: the cRLNumber.
    :returns: the DER bytes.
    :raises ValueError: ``at`` is naive.

    Spec: RFC 5280 sections 5.1 and 5.2.3 (cRLNumber), 5.2.1 (authorityKeyIdentifier).
    """
    require_aware(at)
    builder = (
        cx509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.x509.subject)
        .last_update(at - timedelta(minutes=5))
        .next_update(at + next_update)
        .add_extension(cx509.CRLNumber(number), critical=False)
        .add_extension(
            cx509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            cx509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(at - timedelta(days=1))
            .build()
        )
    crl = builder.sign(ca.private_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


def build_ocsp_response(
    certificate: Certificate,
    issuer: Issued,
    *,
    at: datetime,
    revoked: bool = False,
    next_update: timedelta = timedelta(days=1),
) -> bytes:
    """A successful DER OCSP response for ``certificate``: good, or revoked one day before ``at``.

    :param certificate: the certificate the response is about.
    :param issuer: its issuing CA, which also signs the response (SHA-256).
    :param at: thisUpdate and producedAt, aware.
    :param revoked: say revoked instead of good.
    :param next_update: nextUpdate after ``at``.
    :returns: the DER OCSPResponse.
    :raises ValueError: ``at`` is naive.

    Spec: RFC 6960 sections 4.2.1 and 4.2.2.2 (the CA signs its own responses).
    """
    require_aware(at)
    status = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=certificate.x509,
            issuer=issuer.certificate.x509,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=at - timedelta(minutes=5),
            next_update=at + next_update,
            revocation_time=at - timedelta(days=1) if revoked else None,
            revocation_reason=cx509.ReasonFlags.key_compromise if revoked else None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.certificate.x509)
    )
    response = builder.sign(issuer.private_key, hashes.SHA256())
    return response.public_bytes(serialization.Encoding.DER)
