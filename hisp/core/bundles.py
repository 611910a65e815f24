"""Trust bundles: parse and verify the PKCS#7 sets of anchors trust communities publish (TB-1, TB-2, TB-5).

Two shapes are accepted, each as DER (BER tolerated) or PEM (``-----BEGIN PKCS7-----``):

* **unsigned** (TB-1): a certs-only SignedData (``.p7b``): no SignerInfo; every certificate in its
  ``certificates`` field is a trust anchor. The .NET RI's ``AnchorBundle`` may also encapsulate *bundle
  metadata* (UTF-8 text, e.g. XML) as id-data content of that same unsigned SignedData; it is kept as
  :attr:`TrustBundle.metadata` and is never interpreted.
* **signed** (TB-2): a SignedData with at least one SignerInfo whose encapsulated content is the ``.p7b``
  (DER or PEM). The anchors are the certificates *inside* the signed content; the certificates carried by
  the outer SignedData are the signer's and never become anchors.

Signature decisions (documented here because they are policy):

* With ``signing_certificates`` configured, the signature is verified with :func:`hisp.core.smime.verify`
  and one valid signer must *be* one of them (same DER). Certificates carried in the bundle are never
  trusted by themselves: they are only used to find the SignerInfo's key, and a carried certificate that
  is not byte for byte a configured one does not count. The signer's certificate must therefore be carried
  in the bundle (both reference implementations include it).
* A configured signing certificate implies that a signature is required: an unsigned bundle is refused,
  or stripping the signature would bypass the check (``hisp.config.BundleConfig.signer``).
* An **expired** (or not yet valid) bundle signer at ``at`` is refused (``reason="bundle signer
  expired"``); the policy's clock skew applies. The signingTime attribute is not used to excuse an expired
  signer: it is written by whoever holds the key, so an old, compromised key could back-date it. The
  operator must configure a current signing certificate; tests of the Java RI fixture (signer expired
  2022-12-03) pin ``at`` before that date.
* Without configured signing certificates a signed bundle is accepted *unverified*: ``signed`` is True,
  ``signer`` None and a defect says so (anyone could have re-signed it, so there is nothing to verify
  against).

TB-5: the anchors are trust anchors only. They must never be used as a recipient's encryption
certificate, nor offered to certificate discovery.

Pure (DESIGN.md section 6.1): bytes and a time in, a :class:`TrustBundle` out; every failure on untrusted
bytes is a :class:`~hisp.errors.MessageFormatError` (malformed) or :class:`~hisp.errors.TrustError`
(signature), never a bare exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core

from hisp.core import smime
from hisp.core.certs import Certificate
from hisp.core.policy import SecurityPolicy
from hisp.errors import ConfigError, HispError, MessageFormatError, PolicyViolation, SignatureError, TrustError

__all__ = [
    "DEFAULT_MAX_BUNDLE_BYTES",
    "MAX_ANCHORS",
    "TrustBundle",
    "describe_anchor",
    "parse_bundle",
]

#: Largest bundle accepted by default, in bytes: 4 MiB. The DirectTrust bundles (a few hundred anchors,
#: each 1-2 KiB) are well under 1 MiB; four times that leaves room for growth and PEM armour.
DEFAULT_MAX_BUNDLE_BYTES = 4 * 1024 * 1024

#: Most certificates one bundle may hold. 4 MiB of certificates is at most a few thousand of them; a
#: bundle with more is an attempt to burn CPU on certificate parsing.
MAX_ANCHORS = 5000

_OID_DATA = "1.2.840.113549.1.7.1"
_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"

_PEM_PKCS7 = re.compile(rb"-----BEGIN (PKCS7|PKCS #7 SIGNED DATA|CMS)-----\r?\n(.*?)-----END \1-----", re.DOTALL)

# Everything asn1crypto may raise on hostile input (its parsing is lazy: errors surface on access).
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    OverflowError,
    RecursionError,
    NotImplementedError,
)


@dataclass(frozen=True)
class TrustBundle:
    """A parsed (and, when signing certificates were configured, verified) trust bundle.

    TB-5: :attr:`anchors` are trust anchors only; they must never be used as encryption certificates.

    :ivar anchors: the trust anchors, in bundle order, duplicates dropped.
    :ivar digest: SHA-256 of the bundle bytes as received (PEM armour included), lower-case hex; the
        checksum used to detect a changed bundle (TB-3).
    :ivar signed: True when the bundle is a signed bundle (a SignedData with SignerInfos).
    :ivar signer: the configured bundle signing certificate that signed it; None when unsigned or when no
        signing certificate was configured (signature not verified).
    :ivar source: where it came from: the URL or file name (for messages only).
    :ivar defects: tolerated oddities, as short strings (skipped certificates, metadata, unverified
        signature ...).
    :ivar metadata: bundle metadata carried as encapsulated content of the certs-only SignedData (the .NET
        RI's ``AnchorBundle.Metadata``), decoded as UTF-8; None when there is none.

    Spec: TB-1, TB-2, TB-5; RFC 5652 section 5.
    """

    anchors: tuple[Certificate, ...]
    digest: str
    signed: bool
    signer: Certificate | None
    source: str
    defects: tuple[str, ...] = ()
    metadata: str | None = None


@dataclass(frozen=True)
class _Layer:
    """One parsed SignedData: what a bundle needs of it."""

    der: bytes
    signer_count: int
    content_type: str
    content: bytes | None
    certificates: tuple[bytes, ...]
    other_certificates: int


def _check_at(at: datetime) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ConfigError("the time 'at' must be a timezone-aware datetime")
    return at.astimezone(UTC)


def _unarmor(data: bytes, what: str, defects: list[str]) -> bytes:
    """The DER of a PEM ``PKCS7`` block, or ``data`` itself when it is not PEM."""
    # DER starts with a SEQUENCE tag; a DER signed bundle may well contain PEM text (its content).
    if data[:1] == b"\x30" or b"-----BEGIN " not in data:
        return data
    blocks = list(_PEM_PKCS7.finditer(data))
    if not blocks:
        raise MessageFormatError(f"{what}: PEM without a PKCS7 block (expected -----BEGIN PKCS7-----)")
    if len(blocks) > 1:
        defects.append(f"{what}: {len(blocks)} PEM PKCS7 blocks, only the first was read")
    body = blocks[0].group(2)
    if b"\n\n" in body and b":" in body.split(b"\n\n", 1)[0]:  # RFC 1421 headers before the base64
        body = body.split(b"\n\n", 1)[1]
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MessageFormatError(f"{what}: PEM PKCS7 block is not valid base64") from None
    if not der:
        raise MessageFormatError(f"{what}: PEM PKCS7 block is empty")
    return der


def _parse_layer(der: bytes, what: str) -> _Layer:
    """Parse a ContentInfo(SignedData); MessageFormatError for anything else."""
    try:
        info = asn1_cms.ContentInfo.load(der, strict=True)
        content_type = info["content_type"].dotted
        if content_type != _OID_SIGNED_DATA:
            raise MessageFormatError(
                f"{what}: expected a PKCS#7 SignedData, got content type {smime.algorithm_name(content_type)}",
                content_type=content_type,
            )
        sd = info["content"]
        if sd is None or isinstance(sd, asn1_core.Void):
            raise MessageFormatError(f"{what}: ContentInfo has no content")
        signer_count = len(sd["signer_infos"])
        encap = sd["encap_content_info"]
        econtent_type = encap["content_type"].dotted
        econtent = encap["content"]
        content: bytes | None = None
        if not (econtent is None or isinstance(econtent, asn1_core.Void)):
            native = econtent.native
            if not isinstance(native, bytes):
                raise MessageFormatError(f"{what}: encapsulated content is not an OCTET STRING")
            content = native
        certs = sd["certificates"]
        ders: list[bytes] = []
        others = 0
        if not (certs is None or isinstance(certs, asn1_core.Void)):
            if len(certs) > MAX_ANCHORS:
                raise MessageFormatError(
                    f"{what}: {len(certs)} certificates; at most {MAX_ANCHORS} are accepted", count=len(certs)
                )
            for choice in certs:
                if choice.name == "certificate":
                    ders.append(bytes(choice.chosen.dump()))
                else:
                    others += 1
    except HispError:
        raise
    except _PARSE_ERRORS as exc:
        raise MessageFormatError(
            f"{what}: malformed PKCS#7 structure: {exc.__class__.__name__}: {exc}", structure=what
        ) from None
    return _Layer(der, signer_count, econtent_type, content, tuple(ders), others)


def _anchors(layer: _Layer, what: str, defects: list[str]) -> tuple[Certificate, ...]:
    if layer.other_certificates:
        defects.append(f"{what}: {layer.other_certificates} non-X.509 certificate(s) ignored")
    anchors: list[Certificate] = []
    seen: set[bytes] = set()
    for index, der in enumerate(layer.certificates):
        try:
            cert = Certificate.from_der(der)
        except HispError as exc:
            # One unreadable certificate cannot add trust; dropping it keeps the others usable.
            defects.append(f"{what}: certificate {index} skipped: {exc.message}")
            continue
        except _PARSE_ERRORS as exc:
            defects.append(f"{what}: certificate {index} skipped: {exc.__class__.__name__}")
            continue
        if cert.der in seen:
            defects.append(f"{what}: certificate {index} is a duplicate ({cert.fingerprint_sha256[:16]})")
            continue
        seen.add(cert.der)
        if not cert.is_ca:
            defects.append(f"{what}: anchor {cert.subject or cert.fingerprint_sha256} is not a CA certificate")
        anchors.append(cert)
    if not anchors:
        raise MessageFormatError(f"{what}: the bundle holds no usable certificate")
    return tuple(anchors)


def _metadata(content: bytes | None, what: str, defects: list[str]) -> str | None:
    if content is None or not content:
        return None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        defects.append(f"{what}: {len(content)} bytes of non-UTF-8 bundle metadata ignored")
        return None
    defects.append(f"{what}: carries {len(content)} bytes of bundle metadata (not interpreted)")
    return text


def _verify_signer(
    layer: _Layer,
    signing_certificates: Sequence[Certificate],
    *,
    at: datetime,
    policy: SecurityPolicy,
    max_bytes: int,
    source: str,
) -> Certificate:
    try:
        verdict = smime.verify(layer.der, content=None, policy=policy, max_bytes=max_bytes)
    except (SignatureError, PolicyViolation) as exc:
        raise TrustError(
            f"trust bundle {source}: signature not valid: {exc.message}", reason="bundle signature", source=source
        ) from None
    except _PARSE_ERRORS as exc:  # defence in depth: hostile bytes must never escape as a bare exception
        raise MessageFormatError(
            f"trust bundle {source}: malformed SignedData: {exc.__class__.__name__}: {exc}"
        ) from None
    configured = {cert.der for cert in signing_certificates}
    matching = [s.certificate for s in verdict.valid_signers if s.certificate.der in configured]
    if not matching:
        signers = [s.certificate.subject for s in verdict.valid_signers]
        raise TrustError(
            f"trust bundle {source}: not signed by a configured bundle signing certificate "
            f"(signed by {'; '.join(signers) or 'nobody'})",
            reason="bundle signature",
            source=source,
        )
    for cert in matching:
        if cert.is_valid_at(at, policy.clock_skew):
            return cert
    cert = matching[0]
    raise TrustError(
        f"trust bundle {source}: bundle signing certificate {cert.subject} is not valid at {at.isoformat()} "
        f"(valid {cert.not_before.isoformat()} to {cert.not_after.isoformat()})",
        reason="bundle signer expired",
        source=source,
    )


def parse_bundle(
    data: bytes,
    *,
    source: str,
    signing_certificates: Sequence[Certificate] = (),
    require_signature: bool = False,
    at: datetime,
    policy: SecurityPolicy,
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
) -> TrustBundle:
    """Parse a trust bundle, verify its signature when signing certificates are configured, list its anchors.

    See the module documentation for the shapes accepted and the signature decisions. The size is checked
    before anything is parsed.

    :param data: the bundle bytes as received (DER or PEM), at most ``max_bytes``.
    :param source: the URL or file name, for messages and :attr:`TrustBundle.source`.
    :param signing_certificates: the configured bundle signing certificates; when non-empty the bundle must
        be signed by one of them (compared by DER) and that certificate must be valid at ``at``.
    :param require_signature: refuse an unsigned bundle even when no signing certificate is configured.
    :param at: the validation time (aware) for the signer's validity period.
    :param policy: the security policy for the signature (digests, key sizes); the Java RI fixture is
        signed with SHA-1 and needs ``direct-1.2``.
    :param max_bytes: size limit of ``data`` in bytes (default 4 MiB).
    :returns: the bundle; its ``anchors`` are trust anchors only, never encryption certificates (TB-5).
    :raises MessageFormatError: ``data`` is not bytes, empty, larger than ``max_bytes``, not a PKCS#7
        SignedData (DER or PEM), a signed bundle without encapsulated content or with a signed inner
        bundle, malformed, or holding no usable certificate.
    :raises TrustError: ``reason="bundle unsigned"``: unsigned while a signature is required (or a signing
        certificate configured); ``reason="bundle signature"``: the signature is not valid (bad digest or
        signature, weak algorithm under ``policy``) or no valid signer is a configured signing certificate;
        ``reason="bundle signer expired"``: the matching signer is not valid at ``at``.
    :raises ConfigError: ``at`` is naive or ``max_bytes`` is not positive.

    Spec: TB-1, TB-2, TB-5; RFC 5652 sections 5.1-5.6 (SignedData; certs-only when there is no SignerInfo);
    RFC 7468 section 8 (PEM PKCS7).
    """
    at = _check_at(at)
    if max_bytes <= 0:
        raise ConfigError(f"max_bytes must be positive, not {max_bytes}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageFormatError(f"trust bundle {source}: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise MessageFormatError(
            f"trust bundle {source}: {len(data)} bytes exceeds the limit of {max_bytes} bytes",
            size=len(data),
            max_bytes=max_bytes,
        )
    data = bytes(data)
    if not data:
        raise MessageFormatError(f"trust bundle {source}: empty")
    digest = hashlib.sha256(data).hexdigest()
    defects: list[str] = []
    outer = _parse_layer(_unarmor(data, "bundle", defects), "bundle")
    signature_required = require_signature or bool(signing_certificates)

    if outer.signer_count == 0:
        if signature_required:
            raise TrustError(
                f"trust bundle {source}: unsigned, but a signed bundle is required",
                reason="bundle unsigned",
                source=source,
            )
        anchors = _anchors(outer, "bundle", defects)
        metadata = _metadata(outer.content, "bundle", defects)
        return TrustBundle(anchors, digest, False, None, source, tuple(defects), metadata)

    if outer.content is None:
        raise MessageFormatError(f"trust bundle {source}: signed bundle without encapsulated content (detached)")
    if outer.content_type not in (_OID_DATA, _OID_SIGNED_DATA):
        raise MessageFormatError(
            f"trust bundle {source}: signed content type {smime.algorithm_name(outer.content_type)} "
            "is not a PKCS#7 bundle",
            content_type=outer.content_type,
        )
    # Verify first: a tampered bundle is a signature failure, whatever its tampered content looks like.
    signer: Certificate | None = None
    if signing_certificates:
        signer = _verify_signer(outer, signing_certificates, at=at, policy=policy, max_bytes=max_bytes, source=source)
    else:
        defects.append("bundle: signature not verified: no bundle signing certificate configured")
        if outer.certificates:
            defects.append("bundle: carried signer certificate(s) ignored: they are not anchors")
    inner = _parse_layer(_unarmor(outer.content, "signed content", defects), "signed content")
    if inner.signer_count:
        raise MessageFormatError(f"trust bundle {source}: the signed content is itself a signed bundle")
    anchors = _anchors(inner, "signed content", defects)
    metadata = _metadata(inner.content, "signed content", defects)
    return TrustBundle(anchors, digest, True, signer, source, tuple(defects), metadata)


def describe_anchor(cert: Certificate, at: datetime) -> dict[str, Any]:
    """Describe one anchor for people and for ``--json`` output.

    :param cert: the anchor.
    :param at: the time (aware) against which ``expired`` is judged.
    :returns: ``subject``, ``fingerprint_sha256`` (lower-case hex), ``not_before`` and ``not_after`` (ISO
        8601, UTC), ``expired`` (``at`` is after ``not_after``), ``not_yet_valid`` and ``ca`` (basicConstraints
        cA).
    :raises ConfigError: ``at`` is naive.

    Spec: TB-1 (anchors listed for the operator); RFC 5280 section 4.1.2.5 (validity).
    """
    at = _check_at(at)
    return {
        "subject": cert.subject,
        "fingerprint_sha256": cert.fingerprint_sha256,
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "expired": at > cert.not_after,
        "not_yet_valid": at < cert.not_before,
        "ca": cert.is_ca,
    }
