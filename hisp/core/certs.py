"""Certificates and credentials: load, inspect, bind to Direct addresses (AS-2, AS-3, AS-4, AS-5).

A :class:`Certificate` wraps a parsed X.509 certificate together with its DER bytes; equality and hashing
go by those bytes. A :class:`Credential` is our certificate with its private key (glossary, DESIGN.md
section 5). Loaders accept the encodings the Direct reference implementations and test tools publish:
PEM (with text around the blocks), DER, PKCS#7 certs-only, PKCS#8 / PKCS#1 / SEC1 keys and PKCS#12 files,
including the legacy RC2 / 3DES password-based encryption the Java and .NET RIs still ship.

Every loader is bounded (:data:`MAX_INPUT_BYTES`) and maps every failure to
:class:`~hisp.errors.CertificateError`. Pure: no files, sockets or clock; time is passed in.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from asn1crypto import cms as asn1_cms
from asn1crypto import keys as asn1_keys
from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509 as cx509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtensionOID, NameOID

from hisp.addresses import DirectAddress
from hisp.core.policy import DigestAlgorithm
from hisp.errors import CertificateError, ConfigError

__all__ = [
    "MAX_INPUT_BYTES",
    "CertBinding",
    "Certificate",
    "Credential",
    "PrivateKey",
    "load_certificate",
    "load_certificates",
    "load_credential",
    "load_pkcs12",
    "load_private_key",
    "private_key_to_pem",
    "require_aware",
]

#: Largest input any loader accepts, in bytes. A certificate is a few KiB; the largest public trust
#: bundle seen (DirectTrust, ~300 anchors) is well under 1 MiB.
MAX_INPUT_BYTES = 1 << 20

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
"""The private key types a credential may hold (AS-5: RSA, ECDSA P-256/P-384)."""


class CertBinding(enum.Enum):
    """How a certificate is bound to a Direct address (AS-2, glossary "address-bound / domain-bound")."""

    ADDRESS = "address"
    DOMAIN = "domain"


_HASH_TO_DIGEST: dict[str, DigestAlgorithm] = {
    "sha1": DigestAlgorithm.SHA1,
    "sha256": DigestAlgorithm.SHA256,
    "sha384": DigestAlgorithm.SHA384,
    "sha512": DigestAlgorithm.SHA512,
    "md5": DigestAlgorithm.MD5,
}

# Negative serial numbers are common in old RI/.NET test certificates; cryptography warns on them.
_SERIAL_WARNING = "Parsed a serial number which wasn't positive"


def _check_size(data: bytes, what: str) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CertificateError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_INPUT_BYTES:
        raise CertificateError(
            f"{what}: {len(data)} bytes exceeds the limit of {MAX_INPUT_BYTES} bytes", size=len(data)
        )


@dataclass(frozen=True, eq=False)
class Certificate:
    """An X.509 certificate with its DER encoding; equal and hashed by the DER bytes.

    :ivar x509: the parsed certificate (cryptography).
    :ivar der: its DER encoding, as received.

    Spec: RFC 5280 section 4.1.
    """

    x509: cx509.Certificate
    der: bytes

    @classmethod
    def from_der(cls, der: bytes) -> Certificate:
        """Parse one DER-encoded certificate.

        :param der: the DER bytes (at most :data:`MAX_INPUT_BYTES`).
        :returns: the certificate.
        :raises CertificateError: when the bytes are not a DER X.509 certificate.

        Spec: RFC 5280 section 4.1.
        """
        _check_size(der, "certificate")
        der = bytes(der)
        if cls is Certificate:
            return _certificate_from_der(der)  # the same certificates arrive in message after message
        return cls._parse_der(der)

    @classmethod
    def _parse_der(cls, der: bytes) -> Certificate:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_SERIAL_WARNING)
                cert = cx509.load_der_x509_certificate(der)
        except (ValueError, cx509.InvalidVersion) as exc:
            raise CertificateError(f"not a DER X.509 certificate: {exc}") from None
        return cls._checked(cert, der)

    @classmethod
    def from_x509(cls, cert: cx509.Certificate) -> Certificate:
        """Wrap a certificate parsed by cryptography.

        :param cert: the certificate.
        :returns: the certificate with its DER encoding.
        :raises CertificateError: when its extensions cannot be parsed.

        Spec: RFC 5280 section 4.1.
        """
        return cls._checked(cert, cert.public_bytes(serialization.Encoding.DER))

    @classmethod
    def _checked(cls, cert: cx509.Certificate, der: bytes) -> Certificate:
        # Parse the extensions now so that a malformed one fails at load, not deep in validation.
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_SERIAL_WARNING)
                _ = cert.extensions
                _ = cert.serial_number
                _ = cert.not_valid_after_utc
                checked = cls(cert, der)
                # names and key are read by every verdict and error message: they must not fail later
                _ = checked.describe(), checked.key_description, checked.issuer
        except (
            ValueError,
            KeyError,
            TypeError,
            cx509.InvalidVersion,
            cx509.DuplicateExtension,
            cx509.UnsupportedGeneralNameType,
        ) as exc:
            raise CertificateError(f"certificate has a malformed field or extension: {exc}") from None
        return checked

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Certificate):
            return NotImplemented
        return self.der == other.der

    def __hash__(self) -> int:
        return hash(self.der)

    def __repr__(self) -> str:
        return f"Certificate({self.describe()})"

    # -- names and identity ------------------------------------------------------------------------

    @property
    def subject(self) -> str:
        """The subject distinguished name as an RFC 4514 string (``emailAddress`` named as such)."""
        return self.x509.subject.rfc4514_string({NameOID.EMAIL_ADDRESS: "emailAddress"})

    @property
    def issuer(self) -> str:
        """The issuer distinguished name as an RFC 4514 string."""
        return self.x509.issuer.rfc4514_string({NameOID.EMAIL_ADDRESS: "emailAddress"})

    @property
    def serial_number(self) -> int:
        """The serial number (may be negative in old test certificates)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SERIAL_WARNING)
            return self.x509.serial_number

    # The derived values below are pure functions of the DER and are read for every message (binding, key
    # usage, key size, validity): each is computed once per certificate object (functools.cached_property;
    # certificates parsed by from_der are themselves remembered by DER, so one object serves every message).

    @functools.cached_property
    def fingerprint_sha256(self) -> str:
        """SHA-256 of the DER encoding, lower-case hex without separators."""
        return hashlib.sha256(self.der).hexdigest()

    @functools.cached_property
    def not_before(self) -> datetime:
        """Start of the validity period, aware UTC."""
        return self.x509.not_valid_before_utc

    @functools.cached_property
    def not_after(self) -> datetime:
        """End of the validity period, aware UTC."""
        return self.x509.not_valid_after_utc

    @functools.cached_property
    def _extension_values(self) -> dict[cx509.ObjectIdentifier, Any]:
        # cryptography refuses duplicate extensions (DuplicateExtension), so one value per OID
        return {extension.oid: extension.value for extension in self.x509.extensions}

    def _extension(self, oid: cx509.ObjectIdentifier) -> Any:
        return self._extension_values.get(oid)

    def _san(self, kind: type[cx509.GeneralName]) -> tuple[str, ...]:
        san = self._extension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        if san is None:
            return ()
        return tuple(str(name) for name in san.get_values_for_type(kind))

    @functools.cached_property
    def rfc822_names(self) -> tuple[str, ...]:
        """The subjectAltName rfc822Name values, as written (AS-2). The subject DN is not consulted."""
        return self._san(cx509.RFC822Name)

    @functools.cached_property
    def dns_names(self) -> tuple[str, ...]:
        """The subjectAltName dNSName values, as written (AS-2)."""
        return self._san(cx509.DNSName)

    @functools.cached_property
    def subject_key_identifier(self) -> bytes | None:
        """The subjectKeyIdentifier extension value (RFC 5280 section 4.2.1.2), or None."""
        ski = self._extension(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
        return None if ski is None else bytes(ski.digest)

    # -- capabilities ------------------------------------------------------------------------------

    @functools.cached_property
    def is_ca(self) -> bool:
        """True when basicConstraints is present with cA set (RFC 5280 section 4.2.1.9)."""
        bc = self._extension(ExtensionOID.BASIC_CONSTRAINTS)
        return bool(bc is not None and bc.ca)

    @functools.cached_property
    def can_sign(self) -> bool:
        """True when keyUsage is absent or has digitalSignature (AS-4, RFC 5280 section 4.2.1.3)."""
        ku = self._extension(ExtensionOID.KEY_USAGE)
        return ku is None or bool(ku.digital_signature)

    @functools.cached_property
    def can_encipher(self) -> bool:
        """True when keyUsage is absent or has keyEncipherment (AS-4, RFC 5280 section 4.2.1.3)."""
        ku = self._extension(ExtensionOID.KEY_USAGE)
        return ku is None or bool(ku.key_encipherment)

    def _public_key(self) -> Any:
        """The subject public key (cryptography's object), or None when it cannot be loaded (unsupported)."""
        return self._loaded_public_key

    @functools.cached_property
    def _loaded_public_key(self) -> Any:
        try:
            return self.x509.public_key()
        except (ValueError, UnsupportedAlgorithm):
            return None

    @functools.cached_property
    def key_description(self) -> str:
        """The subject key for people: ``"RSA-2048"``, ``"ECDSA-secp256r1"``, ``"Ed25519"``, ``"unknown"``."""
        key = self._public_key()
        if isinstance(key, rsa.RSAPublicKey):
            return f"RSA-{key.key_size}"
        if isinstance(key, ec.EllipticCurvePublicKey):
            return f"ECDSA-{key.curve.name}"
        if isinstance(key, ed25519.Ed25519PublicKey):
            return "Ed25519"
        if isinstance(key, ed448.Ed448PublicKey):
            return "Ed448"
        if isinstance(key, dsa.DSAPublicKey):
            return f"DSA-{key.key_size}"
        return "unknown"

    @functools.cached_property
    def rsa_key_bits(self) -> int | None:
        """The RSA modulus size in bits, or None for a non-RSA key (AS-5)."""
        key = self._public_key()
        return key.key_size if isinstance(key, rsa.RSAPublicKey) else None

    @functools.cached_property
    def ec_curve(self) -> str | None:
        """The ECDSA curve name (cryptography's, e.g. ``"secp256r1"``), or None for a non-EC key (AS-5)."""
        key = self._public_key()
        return key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else None

    @functools.cached_property
    def signature_digest(self) -> DigestAlgorithm | None:
        """The hash of the certificate's own signature, or None when there is none or it is unknown.

        None for Ed25519/Ed448 (no separate hash) and for hashes the policy has no name for (SHA-224).
        """
        try:
            algorithm = self.x509.signature_hash_algorithm
        except UnsupportedAlgorithm:
            return None
        return None if algorithm is None else _HASH_TO_DIGEST.get(algorithm.name)

    # -- binding and time --------------------------------------------------------------------------

    def binding_for(self, address: DirectAddress) -> CertBinding | None:
        """How this certificate binds to ``address``, if at all.

        ``ADDRESS`` when a subjectAltName rfc822Name equals the whole address (case-insensitive, local
        part included); else ``DOMAIN`` when a subjectAltName dNSName equals the address's domain. The
        subject DN's emailAddress never binds (AS-3) and neither does a wildcard dNSName (AS-3).

        :param address: the Direct address.
        :returns: the binding, or None when the certificate is not bound to the address.

        Spec: AS-2, AS-3 (Applicability Statement 1.3 section 1.4).
        """
        addresses, domains = self._binding_names
        if str(address).casefold() in addresses:
            return CertBinding.ADDRESS
        if address.domain.name.casefold() in domains:
            return CertBinding.DOMAIN
        return None

    @functools.cached_property
    def _binding_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """The names :meth:`binding_for` compares with: rfc822Names, and dNSNames less any wildcard one."""
        addresses = frozenset(name.strip().casefold() for name in self.rfc822_names)
        candidates = (name.strip().rstrip(".").casefold() for name in self.dns_names)
        return addresses, frozenset(candidate for candidate in candidates if "*" not in candidate)

    def is_valid_at(self, at: datetime, skew: int = 0) -> bool:
        """Whether ``at`` lies in the validity period, widened by ``skew`` on both sides.

        :param at: the time, an aware datetime.
        :param skew: allowance in seconds (``SecurityPolicy.clock_skew``).
        :returns: True when ``not_before - skew <= at <= not_after + skew``.
        :raises ValueError: when ``at`` is naive or ``skew`` negative.

        Spec: RFC 5280 section 4.1.2.5, AS-20.
        """
        require_aware(at)
        if skew < 0:
            raise ValueError("skew must be >= 0 seconds")
        allowance = timedelta(seconds=skew)
        return self.not_before - allowance <= at <= self.not_after + allowance

    def describe(self) -> str:
        """One line naming the certificate for verdicts and errors.

        :returns: e.g. ``"subject=CN=a@b.org, SAN=[email:a@b.org], sha256=ab12..."``.

        Spec: DESIGN.md section 4 (errors carry context).
        """
        return self._description

    @functools.cached_property
    def _description(self) -> str:
        # computed once per certificate (every verdict and error names it); a pure function of the DER
        sans = [f"email:{n}" for n in self.rfc822_names] + [f"DNS:{n}" for n in self.dns_names]
        return f"subject={self.subject}, SAN=[{', '.join(sans)}], sha256={self.fingerprint_sha256}"

    def to_pem(self) -> bytes:
        """The PEM encoding (``-----BEGIN CERTIFICATE-----``).

        :returns: ASCII bytes ending in a newline.

        Spec: RFC 7468 section 5.
        """
        return self.x509.public_bytes(serialization.Encoding.PEM)


#: Certificates parsed by :meth:`Certificate.from_der` that are remembered, keyed by their DER.
_CERTIFICATE_CACHE_SIZE = 512


@functools.lru_cache(maxsize=_CERTIFICATE_CACHE_SIZE)
def _certificate_from_der(der: bytes) -> Certificate:
    # Certificates are immutable values equal by DER, so one parse can serve every caller; failures raise
    # and are not remembered.
    return Certificate._parse_der(der)


def require_aware(at: datetime) -> None:
    """Refuse a naive datetime: every time in the core is an aware instant.

    :param at: the time.
    :raises ValueError: when ``at`` has no UTC offset.

    Spec: DESIGN.md section 2 (cores take time as an aware ``at``); RFC 5280 section 4.1.2.5 (UTC times).
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"time must be an aware datetime (UTC), got naive {at!r}")


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _key_matches(certificate: Certificate, private_key: PrivateKey) -> bool:
    public = certificate._public_key()
    return public is not None and _spki(public) == _spki(private_key.public_key())


@dataclass(frozen=True)
class Credential:
    """Our certificate with its private key (glossary).

    :ivar certificate: the end-entity certificate.
    :ivar private_key: its private key (RSA or EC).
    :ivar chain: issuers to include in SignedData, leaf excluded, nearest issuer first when known.
    :raises CertificateError: (when built) if the key does not match the certificate's public key.

    Spec: AS-4 (signing and decryption credentials), RFC 5652 section 5.1 (certificates field).
    """

    certificate: Certificate
    private_key: PrivateKey = field(repr=False)
    chain: tuple[Certificate, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise CertificateError(
                f"unsupported private key type {type(self.private_key).__name__}: RSA or ECDSA expected"
            )
        if not _key_matches(self.certificate, self.private_key):
            raise CertificateError(
                f"private key does not match certificate {self.certificate.describe()}",
                certificate=self.certificate.fingerprint_sha256,
            )
        object.__setattr__(self, "chain", tuple(self.chain))


# -- PEM / DER / PKCS#7 ----------------------------------------------------------------------------

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_CERT_LABELS = {b"CERTIFICATE", b"X509 CERTIFICATE"}
_PKCS7_LABELS = {b"PKCS7", b"PKCS #7 SIGNED DATA", b"CMS"}
_KEY_LABELS = {b"PRIVATE KEY", b"ENCRYPTED PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}


def _pem_blocks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (label, DER) for each PEM block; text before, between and after blocks is ignored."""
    import base64
    import binascii

    for match in _PEM_BLOCK.finditer(data):
        label, body = match.group(1), match.group(2)
        if b":" in body.split(b"\n\n", 1)[0] and b"\n\n" in body:  # RFC 1421 headers (Proc-Type ...)
            body = body.split(b"\n\n", 1)[1]
        try:
            yield label, base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise CertificateError(f"PEM block {label.decode()} is not valid base64") from None


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


def _pkcs7_certificates(der: bytes) -> list[Certificate]:
    try:
        info = asn1_cms.ContentInfo.load(der)
        if info["content_type"].native != "signed_data":
            raise CertificateError(
                f"PKCS#7 content is {info['content_type'].native}, expected signed_data (certs-only)"
            )
        choices = info["content"]["certificates"]
        ders = [choice.chosen.dump() for choice in choices if choice.name == "certificate"]
    except CertificateError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise CertificateError(f"not a PKCS#7 certs-only structure: {exc}") from None
    return [Certificate.from_der(d) for d in ders]


def load_certificates(data: bytes) -> list[Certificate]:
    """Load every certificate in ``data``.

    Accepted: one or many PEM ``CERTIFICATE`` blocks (any text before, between and after them, and
    ``PRIVATE KEY`` blocks, are skipped), PEM ``PKCS7`` blocks, a DER certificate, or a DER PKCS#7
    certs-only SignedData (``.p7b``, a trust bundle, TB-1).

    :param data: the bytes (at most :data:`MAX_INPUT_BYTES`).
    :returns: the certificates, in order, at least one.
    :raises CertificateError: when ``data`` is too large, malformed, or holds no certificate.

    Spec: RFC 7468 sections 5 and 8, RFC 5280 section 4.1, RFC 5652 section 5 (degenerate SignedData).
    """
    _check_size(data, "certificate data")
    data = bytes(data)
    if _is_pem(data):
        certs: list[Certificate] = []
        for label, der in _pem_blocks(data):
            if label in _CERT_LABELS:
                certs.append(Certificate.from_der(der))
            elif label in _PKCS7_LABELS:
                certs.extend(_pkcs7_certificates(der))
        if not certs:
            raise CertificateError("no PEM CERTIFICATE or PKCS7 block found: expected a certificate")
        return certs
    try:
        return [Certificate.from_der(data)]
    except CertificateError as as_cert:
        try:
            certs = _pkcs7_certificates(data)
        except CertificateError:
            raise CertificateError(
                "expected a PEM or DER certificate or a PKCS#7 certs-only bundle; "
                f"parsing as a certificate failed: {as_cert.message}"
            ) from None
    if not certs:
        raise CertificateError("PKCS#7 bundle holds no certificate")
    return certs


def load_certificate(data: bytes) -> Certificate:
    """Load exactly one certificate (any format :func:`load_certificates` accepts).

    :param data: the bytes.
    :returns: the certificate.
    :raises CertificateError: when there is not exactly one certificate or the data cannot be parsed.

    Spec: RFC 5280 section 4.1.
    """
    certs = load_certificates(data)
    if len(certs) != 1:
        raise CertificateError(f"expected exactly one certificate, found {len(certs)}", count=len(certs))
    return certs[0]


# -- private keys ----------------------------------------------------------------------------------


def _as_private_key(key: Any, what: str) -> PrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{what}: unsupported key type {type(key).__name__}, RSA or ECDSA expected")
    return key


def _is_encrypted_pkcs8(der: bytes) -> bool:
    try:
        info = asn1_keys.EncryptedPrivateKeyInfo.load(der)
        _ = info["encryption_algorithm"]["algorithm"].native
        return isinstance(info["encrypted_data"].native, bytes)
    except (ValueError, TypeError, KeyError):
        return False


def load_private_key(data: bytes, password: bytes | None = None) -> PrivateKey:
    """Load a private key: PEM or DER; PKCS#8 (encrypted or not), PKCS#1 RSA or SEC1 EC.

    A password given for an unencrypted key is ignored. Encrypted PKCS#8 with the legacy PKCS#12 PBE
    algorithms (3DES, RC2) is decrypted here when the cryptography backend refuses it.

    :param data: the key bytes (at most :data:`MAX_INPUT_BYTES`); a PEM file may carry other blocks.
    :param password: the password of an encrypted key, or None.
    :returns: the RSA or EC private key.
    :raises CertificateError: when the data is not a key, the password is missing or wrong, or the key
        type is neither RSA nor EC.

    Spec: RFC 5208 / RFC 5958 (PKCS#8), RFC 8017 appendix A.1.2 (PKCS#1), RFC 5915 (SEC1), RFC 7468.
    """
    _check_size(data, "private key")
    data = bytes(data)
    encrypted: bool
    if _is_pem(data):
        blocks = [m for m in _PEM_BLOCK.finditer(data) if m.group(1) in _KEY_LABELS]
        if not blocks:
            raise CertificateError("no PEM PRIVATE KEY block found: expected a private key")
        pem = blocks[0].group(0)
        encrypted = blocks[0].group(1) == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in pem
        der_for_fallback = None
        if blocks[0].group(1) == b"ENCRYPTED PRIVATE KEY":
            der_for_fallback = next(der for _, der in _pem_blocks(pem))

        def load(pw: bytes | None) -> Any:
            return serialization.load_pem_private_key(pem, pw)

    else:
        encrypted = _is_encrypted_pkcs8(data)
        der_for_fallback = data if encrypted else None

        def load(pw: bytes | None) -> Any:
            return serialization.load_der_private_key(data, pw)

    if encrypted and password is None:
        raise CertificateError("private key is encrypted: a password is needed")
    try:
        key = load(password if encrypted else None)
    except (ValueError, UnsupportedAlgorithm) as exc:
        if encrypted and der_for_fallback is not None:
            assert password is not None
            try:
                plain = _decrypt_epki(asn1_keys.EncryptedPrivateKeyInfo.load(der_for_fallback), password)
            except (_PbeError, ValueError, TypeError, KeyError):
                raise CertificateError("cannot decrypt the private key: wrong password?") from None
            return _as_private_key(_load_plain_pkcs8(plain), "private key")
        if encrypted:
            raise CertificateError("cannot decrypt the private key: wrong password?") from None
        raise CertificateError(f"not a PEM or DER private key (PKCS#8, PKCS#1 or SEC1): {exc}") from None
    except TypeError as exc:
        raise CertificateError(f"cannot load the private key: {exc}") from None
    return _as_private_key(key, "private key")


def _load_plain_pkcs8(der: bytes) -> Any:
    try:
        return serialization.load_der_private_key(der, None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"decrypted private key is not valid PKCS#8: {exc}") from None


def private_key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """Serialise a private key as PKCS#8 PEM, encrypted when a passphrase is given.

    :param key: the key.
    :param passphrase: encrypt with the best available algorithm (PBES2, AES-256) under this; None for
        an unencrypted key.
    :returns: PEM bytes (``ENCRYPTED PRIVATE KEY`` or ``PRIVATE KEY``).
    :raises ConfigError: when the passphrase is empty.

    Spec: RFC 5958 section 2, RFC 8018 (PBES2), RFC 7468 sections 10 and 11.
    """
    encryption: serialization.KeySerializationEncryption
    if passphrase is None:
        encryption = serialization.NoEncryption()
    elif not passphrase:
        raise ConfigError("an empty passphrase cannot protect a private key; pass None for no encryption")
    else:
        encryption = serialization.BestAvailableEncryption(passphrase)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


# -- PKCS#12 ---------------------------------------------------------------------------------------


def load_pkcs12(data: bytes, password: bytes) -> Credential:
    """Load a credential from a PKCS#12 (``.p12`` / ``.pfx``) file.

    The leaf is the certificate matching the private key; every other certificate goes to the chain.
    Legacy files (``pbeWithSHA1And40BitRC2-CBC``, ``pbeWithSHA1And3-KeyTripleDES-CBC``) load even when
    the cryptography backend lacks the legacy provider: they are then decrypted here, on asn1crypto
    structures (RFC 7292 appendix B key derivation, RFC 2268 RC2, 3DES), with the MAC checked first
    so that a wrong password is reported as such.

    :param data: the file's bytes (at most :data:`MAX_INPUT_BYTES`).
    :param password: the password; ``b""`` for the Java RI files, ``b"passw0rd!"`` for the .NET ones.
    :returns: the credential.
    :raises CertificateError: on a wrong password, a malformed file, no private key, no certificate
        matching the key, or an unsupported key type.

    Spec: RFC 7292 (PKCS#12 v1.1) sections 4 and 5, appendix B; RFC 8018 section 6.1 (PBES1).
    """
    _check_size(data, "PKCS#12")
    data = bytes(data)
    if password is None:
        raise CertificateError("PKCS#12 needs a password (b'' for an empty one)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SERIAL_WARNING)
            warnings.filterwarnings("ignore", message="PKCS#12 bundle could not be parsed as DER")
            loaded = pkcs12.load_pkcs12(data, password)
    except (ValueError, UnsupportedAlgorithm, TypeError):
        keys, cert_ders = _load_pkcs12_fallback(data, password)
        certs = [Certificate.from_der(d) for d in cert_ders]
        if not keys:
            raise CertificateError("PKCS#12 holds no private key") from None
        return _assemble(_as_private_key(keys[0], "PKCS#12"), None, certs)
    if loaded.key is None:
        raise CertificateError("PKCS#12 holds no private key")
    key = _as_private_key(loaded.key, "PKCS#12")
    main = Certificate.from_x509(loaded.cert.certificate) if loaded.cert is not None else None
    others = [Certificate.from_x509(c.certificate) for c in loaded.additional_certs]
    return _assemble(key, main, others)


def _assemble(key: PrivateKey, main: Certificate | None, others: list[Certificate]) -> Credential:
    candidates = ([main] if main is not None else []) + others
    leaf = next((c for c in candidates if _key_matches(c, key)), None)
    if leaf is None:
        raise CertificateError(
            f"no certificate matches the private key (among {len(candidates)} certificates)",
            count=len(candidates),
        )
    chain: list[Certificate] = []
    for cert in candidates:
        if cert != leaf and cert not in chain:
            chain.append(cert)
    return Credential(leaf, key, tuple(_order_chain(leaf, chain)))


def _order_chain(leaf: Certificate, chain: list[Certificate]) -> list[Certificate]:
    """Order issuers nearest first by following issuer names; other CA certificates go last.

    End-entity certificates that are not issuers (a .NET PFX may hold a second user's certificate)
    are dropped: they do not belong in our SignedData.
    """
    ordered: list[Certificate] = []
    rest = list(chain)
    current = leaf
    while rest:
        parent = next((c for c in rest if c.x509.subject == current.x509.issuer), None)
        if parent is None or parent == current:
            break
        ordered.append(parent)
        rest.remove(parent)
        current = parent
    return ordered + [c for c in rest if c.is_ca]


def load_credential(cert_data: bytes, key_data: bytes | None, password: bytes | None) -> Credential:
    """Load a credential from a certificate file and a key file, or from one PKCS#12 file.

    With ``key_data`` None, ``cert_data`` is PKCS#12 (``password`` None meaning ``b""``), or a PEM file
    carrying both the certificates and a private key. Otherwise ``cert_data`` holds PEM/DER
    certificate(s): the first one matching the key is the leaf, the others go to the chain.

    :param cert_data: certificate bytes, or a PKCS#12 file.
    :param key_data: private key bytes, or None.
    :param password: the password of the key or of the PKCS#12 file.
    :returns: the credential.
    :raises CertificateError: when anything cannot be loaded or no certificate matches the key.

    Spec: RFC 7292, RFC 5958, RFC 5280; AS-4.
    """
    _check_size(cert_data, "certificate data")
    if key_data is None:
        if _is_pem(cert_data) and any(m.group(1) in _KEY_LABELS for m in _PEM_BLOCK.finditer(cert_data)):
            key_data = cert_data
        else:
            return load_pkcs12(cert_data, b"" if password is None else password)
    key = load_private_key(key_data, password)
    certs = load_certificates(cert_data)
    return _assemble(key, None, certs)


# -- legacy PKCS#12 password-based encryption, on asn1crypto structures ---------------------------


class _PbeError(Exception):
    """Decryption under a password failed (wrong password or damaged data)."""


def _bmp_password(password: bytes) -> bytes:
    """RFC 7292 appendix B.1: the password as a BMPString, big-endian, with a two-byte terminator."""
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        raise CertificateError("PKCS#12 password must be UTF-8") from None
    return text.encode("utf-16-be") + b"\x00\x00"


def _pkcs12_kdf(
    hash_name: str, password: bytes, salt: bytes, purpose: int, iterations: int, size: int
) -> bytes:
    """RFC 7292 appendix B.2 key derivation; ``purpose`` 1 = key, 2 = IV, 3 = MAC key."""
    u = hashlib.new(hash_name).digest_size
    v = hashlib.new(hash_name).block_size
    diversifier = bytes([purpose]) * v

    def stretch(value: bytes) -> bytes:
        if not value:
            return b""
        length = v * math.ceil(len(value) / v)
        return (value * math.ceil(length / len(value)))[:length]

    block = bytearray(stretch(salt) + stretch(password))
    out = b""
    for _ in range(math.ceil(size / u)):
        digest = hashlib.new(hash_name, diversifier + bytes(block)).digest()
        for _ in range(iterations - 1):
            digest = hashlib.new(hash_name, digest).digest()
        out += digest
        b = int.from_bytes((digest * math.ceil(v / u))[:v], "big")
        for j in range(0, len(block), v):
            chunk = (int.from_bytes(block[j : j + v], "big") + b + 1) % (1 << (8 * v))
            block[j : j + v] = chunk.to_bytes(v, "big")
    return out[:size]


_MAX_ITERATIONS = 10_000_000  # bound the work a hostile file can demand


def _password_candidates(password: bytes) -> list[bytes]:
    # An empty password is encoded as the bare terminator by OpenSSL and Java, as nothing by some tools.
    return [_bmp_password(password)] + ([b""] if password == b"" else [])


def _check_mac(pfx: Any, password: bytes) -> bytes:
    """Verify the PFX MAC; return the BMP-encoded password that verifies (RFC 7292 section 5.1)."""
    candidates = _password_candidates(password)
    mac_data = pfx["mac_data"]
    if mac_data.native is None:
        return candidates[0]
    hash_name = mac_data["mac"]["digest_algorithm"]["algorithm"].native
    if hash_name not in ("sha1", "sha224", "sha256", "sha384", "sha512"):
        raise CertificateError(f"PKCS#12 MAC uses unsupported digest {hash_name}")
    salt = mac_data["mac_salt"].native
    iterations = mac_data["iterations"].native
    if not 0 < iterations <= _MAX_ITERATIONS:
        raise CertificateError(f"PKCS#12 MAC iteration count {iterations} out of range")
    content = pfx["auth_safe"]["content"].native
    expected = mac_data["mac"]["digest"].native
    for candidate in candidates:
        key = _pkcs12_kdf(hash_name, candidate, salt, 3, iterations, hashlib.new(hash_name).digest_size)
        if hmac.compare_digest(hmac.new(key, content, hash_name).digest(), expected):
            return candidate
    raise CertificateError("PKCS#12 MAC check failed: wrong password (or the file is damaged)")


def _unpad(data: bytes, block: int) -> bytes:
    pad = data[-1] if data else 0
    if len(data) % block or not 1 <= pad <= block or data[-pad:] != bytes([pad]) * pad:
        raise _PbeError("bad padding")
    return data[:-pad]


_PBKDF2_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha224": hashes.SHA224(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


def _pbe_decrypt(algorithm: Any, ciphertext: bytes, bmp_password: bytes, raw_password: bytes) -> bytes:
    """Decrypt with a PKCS#12 PBE (RFC 7292 appendix C) or PBES2 (RFC 8018 section 6.2) algorithm."""
    name = algorithm["algorithm"].native
    if name == "pbes2":
        if algorithm.kdf != "pbkdf2":
            raise CertificateError(f"unsupported PBES2 key derivation {algorithm.kdf}")
        cipher_name = algorithm.encryption_cipher
        if cipher_name not in ("aes", "tripledes"):
            raise CertificateError(f"unsupported PBES2 cipher {cipher_name}")
        iterations = algorithm.kdf_iterations
        if not 0 < iterations <= _MAX_ITERATIONS:
            raise CertificateError(f"PBKDF2 iteration count {iterations} out of range")
        prf = _PBKDF2_HASHES.get(algorithm.kdf_hmac)
        if prf is None:
            raise CertificateError(f"unsupported PBKDF2 hash {algorithm.kdf_hmac}")
        kdf = PBKDF2HMAC(prf, algorithm.key_length, algorithm.kdf_salt, iterations)
        key = kdf.derive(raw_password)
        iv = algorithm.encryption_iv
        block_cipher: Any = algorithms.AES(key) if cipher_name == "aes" else TripleDES(key)
    elif name.startswith("pkcs12_sha1_"):
        iterations = algorithm.kdf_iterations
        if not 0 < iterations <= _MAX_ITERATIONS:
            raise CertificateError(f"PKCS#12 PBE iteration count {iterations} out of range")
        salt = algorithm.kdf_salt
        key = _pkcs12_kdf("sha1", bmp_password, salt, 1, iterations, algorithm.key_length)
        cipher_name = algorithm.encryption_cipher
        if cipher_name == "rc2":
            iv = _pkcs12_kdf("sha1", bmp_password, salt, 2, iterations, 8)
            return _unpad(_rc2_cbc_decrypt(key, len(key) * 8, iv, ciphertext), 8)
        if cipher_name != "tripledes":
            raise CertificateError(f"unsupported PKCS#12 PBE algorithm {name} (RC4 is refused)")
        iv = _pkcs12_kdf("sha1", bmp_password, salt, 2, iterations, 8)
        block_cipher = TripleDES(key)
    else:
        raise CertificateError(f"unsupported PKCS#12 encryption algorithm {name}")
    block = block_cipher.block_size // 8
    if len(ciphertext) % block:
        raise _PbeError("ciphertext is not a whole number of blocks")
    decryptor = Cipher(block_cipher, modes.CBC(iv)).decryptor()
    return _unpad(decryptor.update(ciphertext) + decryptor.finalize(), block)


def _decrypt_epki(info: Any, password: bytes) -> bytes:
    algorithm = info["encryption_algorithm"]
    ciphertext = info["encrypted_data"].native
    last: Exception | None = None
    for candidate in _password_candidates(password):
        try:
            plain = _pbe_decrypt(algorithm, ciphertext, candidate, password)
            asn1_keys.PrivateKeyInfo.load(plain).native  # noqa: B018 - parse fully to prove the password
            return plain
        except (_PbeError, ValueError, TypeError, KeyError) as exc:
            last = exc
    raise _PbeError(str(last))


def _load_pkcs12_fallback(data: bytes, password: bytes) -> tuple[list[Any], list[bytes]]:
    """Parse a PFX with asn1crypto and decrypt it here; return (private keys, certificate DERs)."""
    try:
        pfx = asn1_pkcs12.Pfx.load(data)
        if pfx["auth_safe"]["content_type"].native != "data":
            raise CertificateError("PKCS#12 with public-key integrity mode is not supported")
        bmp = _check_mac(pfx, password)
        safes = asn1_pkcs12.AuthenticatedSafe.load(pfx["auth_safe"]["content"].native)
        keys: list[Any] = []
        cert_ders: list[bytes] = []
        for info in safes:
            kind = info["content_type"].native
            if kind == "data":
                contents = info["content"].native
            elif kind == "encrypted_data":
                eci = info["content"]["encrypted_content_info"]
                contents = _pbe_decrypt(
                    eci["content_encryption_algorithm"], eci["encrypted_content"].native, bmp, password
                )
            else:
                raise CertificateError(f"unsupported PKCS#12 safe content type {kind}")
            for bag in asn1_pkcs12.SafeContents.load(contents):
                bag_id = bag["bag_id"].native
                if bag_id == "key_bag":
                    keys.append(_load_plain_pkcs8(bag["bag_value"].dump()))
                elif bag_id == "pkcs8_shrouded_key_bag":
                    keys.append(_load_plain_pkcs8(_decrypt_epki(bag["bag_value"], password)))
                elif bag_id == "cert_bag":
                    cert_bag = bag["bag_value"]
                    if cert_bag["cert_id"].native == "x509":
                        cert_ders.append(bytes(cert_bag["cert_value"].contents))
    except CertificateError:
        raise
    except _PbeError:
        raise CertificateError("PKCS#12 decryption failed: wrong password (or the file is damaged)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise CertificateError(f"not a PKCS#12 file: {exc}") from None
    return keys, cert_ders


# RC2 (RFC 2268), decryption only: cryptography offers RC2 with 128-bit keys only, and only with the
# OpenSSL legacy provider, while the PKCS#12 files of the Direct RIs use 40-bit RC2.
_PITABLE = bytes.fromhex(
    "d9 78 f9 c4 19 dd b5 ed 28 e9 fd 79 4a a0 d8 9d  c6 7e 37 83 2b 76 53 8e 62 4c 64 88 44 8b fb a2"
    "17 9a 59 f5 87 b3 4f 13 61 45 6d 8d 09 81 7d 32  bd 8f 40 eb 86 b7 7b 0b f0 95 21 22 5c 6b 4e 82"
    "54 d6 65 93 ce 60 b2 1c 73 56 c0 14 a7 8c f1 dc  12 75 ca 1f 3b be e4 d1 42 3d d4 30 a3 3c b6 26"
    "6f bf 0e da 46 69 07 57 27 f2 1d 9b bc 94 43 03  f8 11 c7 f6 90 ef 3e e7 06 c3 d5 2f c8 66 1e d7"
    "08 e8 ea de 80 52 ee f7 84 aa 72 ac 35 4d 6a 2a  96 1a d2 71 5a 15 49 74 4b 9f d0 5e 04 18 a4 ec"
    "c2 e0 41 6e 0f 51 cb cc 24 91 af 50 a1 f4 70 39  99 7c 3a 85 23 b8 b4 7a fc 02 36 5b 25 55 97 31"
    "2d 5d fa 98 e3 8a 92 ae 05 df 29 10 67 6c ba c9  d3 00 e6 cf e1 9e a8 2c 63 16 01 3f 58 e2 89 a9"
    "0d 38 34 1b ab 33 ff b0 bb 48 0c 5f b9 b1 cd 2e  c5 f3 db 47 e5 a5 9c 77 0a a6 20 68 fe 7f c1 ad"
)


def _rc2_expand(key: bytes, effective_bits: int) -> list[int]:
    t = len(key)
    if not 1 <= t <= 128 or not 1 <= effective_bits <= 1024:
        raise _PbeError("RC2 key size out of range")
    t8 = (effective_bits + 7) // 8
    tm = 0xFF % (1 << (8 + effective_bits - 8 * t8))
    buf = bytearray(key) + bytearray(128 - t)
    for i in range(t, 128):
        buf[i] = _PITABLE[(buf[i - 1] + buf[i - t]) & 0xFF]
    buf[128 - t8] = _PITABLE[buf[128 - t8] & tm]
    for i in range(127 - t8, -1, -1):
        buf[i] = _PITABLE[buf[i + 1] ^ buf[i + t8]]
    return [buf[2 * i] | (buf[2 * i + 1] << 8) for i in range(64)]


def _rc2_decrypt_block(k: list[int], block: bytes) -> bytes:
    r = [block[2 * i] | (block[2 * i + 1] << 8) for i in range(4)]
    shifts = (1, 2, 3, 5)
    j = 63

    def r_mix_round() -> None:
        nonlocal j
        for i in (3, 2, 1, 0):
            s = shifts[i]
            r[i] = ((r[i] >> s) | (r[i] << (16 - s))) & 0xFFFF
            r[i] = (r[i] - k[j] - (r[i - 1] & r[i - 2]) - ((~r[i - 1]) & r[i - 3])) & 0xFFFF
            j -= 1

    def r_mash_round() -> None:
        for i in (3, 2, 1, 0):
            r[i] = (r[i] - k[r[i - 1] & 63]) & 0xFFFF

    for _ in range(5):
        r_mix_round()
    r_mash_round()
    for _ in range(6):
        r_mix_round()
    r_mash_round()
    for _ in range(5):
        r_mix_round()
    return b"".join(w.to_bytes(2, "little") for w in r)


def _rc2_cbc_decrypt(key: bytes, effective_bits: int, iv: bytes, ciphertext: bytes) -> bytes:
    """RC2-CBC decryption (RFC 2268, RFC 2898 section 6.1); returns the still padded plaintext."""
    if len(ciphertext) % 8 or len(iv) != 8:
        raise _PbeError("RC2 ciphertext is not a whole number of blocks")
    expanded = _rc2_expand(key, effective_bits)
    out = bytearray()
    previous = iv
    for i in range(0, len(ciphertext), 8):
        block = ciphertext[i : i + 8]
        out += bytes(a ^ b for a, b in zip(_rc2_decrypt_block(expanded, block), previous, strict=True))
        previous = block
    return bytes(out)
