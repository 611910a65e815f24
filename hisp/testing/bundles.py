"""Build trust bundles for tests: certs-only ``.p7b`` (DER or PEM) and signed bundles (TB-1, TB-2).

Never use these for a production bundle: the signing credential comes from the development CA.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from hisp.core import smime
from hisp.core.certs import Certificate, Credential
from hisp.core.policy import DigestAlgorithm

__all__ = ["make_p7b", "pem_armor", "sign_bundle"]


def make_p7b(anchors: Sequence[Certificate], *, pem: bool = False) -> bytes:
    """A certs-only SignedData holding ``anchors``, made by cryptography's pkcs7 (an independent encoder).

    :param anchors: the certificates, at least one.
    :param pem: PEM (``-----BEGIN PKCS7-----``) instead of DER.
    :returns: the ``.p7b`` bytes.

    Spec: TB-1; RFC 5652 section 5 (degenerate SignedData), RFC 7468 section 8.
    """
    return pkcs7.serialize_certificates([a.x509 for a in anchors], Encoding.PEM if pem else Encoding.DER)


def pem_armor(der: bytes) -> bytes:
    """``der`` in a ``PKCS7`` PEM block (64-character lines).

    :param der: DER bytes.
    :returns: the PEM text as bytes.

    Spec: RFC 7468 section 8.
    """
    import base64

    text = base64.b64encode(der)
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return b"-----BEGIN PKCS7-----\n" + b"\n".join(lines) + b"\n-----END PKCS7-----\n"


def sign_bundle(
    p7b: bytes,
    signer: Credential,
    *,
    at: datetime,
    pem: bool = False,
    digest: DigestAlgorithm = DigestAlgorithm.SHA256,
) -> bytes:
    """A signed bundle: SignedData encapsulating ``p7b``, signed by ``signer`` (its certificate carried).

    :param p7b: the bundle to sign (DER or PEM, as the publisher chooses).
    :param signer: the bundle signing credential.
    :param at: the signing time (aware).
    :param pem: PEM-armour the result.
    :param digest: the digest algorithm.
    :returns: the signed bundle bytes.

    Spec: TB-2; RFC 5652 section 5.
    """
    signed = smime.sign(p7b, signer, digest=digest, at=at, detached=False)
    return pem_armor(signed) if pem else signed
