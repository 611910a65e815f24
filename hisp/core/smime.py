"""CMS for Direct: SignedData, EnvelopedData and AuthEnvelopedData on DER bytes.

Pure functions (DESIGN.md section 6.1): DER ContentInfo bytes in, bytes or typed verdicts out; no I/O, no
clock (the signing time is passed in as ``at``). MIME framing (``application/pkcs7-mime``, multipart/signed)
is the mime module's job.

Built on asn1crypto structures and cryptography primitives (DESIGN.md section 3):

* :func:`sign` / :func:`verify`: SignedData (RFC 5652 section 5, RFC 8551 section 2.5), RSA PKCS#1 v1.5,
  RSASSA-PSS (verify only, RFC 4056) and ECDSA P-256/P-384 (RFC 5753); every SignerInfo checked (AS-15).
* :func:`encrypt` / :func:`decrypt`: EnvelopedData with AES-CBC (RFC 5652 section 6, RFC 3565) and
  AuthEnvelopedData with AES-GCM (RFC 5083, RFC 5084); RSA key transport PKCS#1 v1.5 or RSAES-OAEP
  (RFC 8017, RFC 3560), one KeyTransRecipientInfo per recipient certificate (AS-11).

Untrusted input is bounded: ``max_bytes`` caps the CMS size, and every parse failure becomes a
:class:`~hisp.errors.MessageFormatError`. Large contents are processed with one hash or cipher context per
operation over the caller's buffer; the only full-size copies are the cipher output and the final DER.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from asn1crypto import algos as asn1_algos
from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509 import InvalidVersion

from hisp.core.certs import Certificate, Credential
from hisp.core.policy import (
    ContentCipher,
    DigestAlgorithm,
    KeyTransport,
    SecurityPolicy,
    refuse_weak_algorithm,
)
from hisp.errors import (
    ConfigError,
    DecryptionError,
    HispError,
    MessageFormatError,
    PolicyViolation,
    SignatureError,
)

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_MAX_BYTES",
    "MAX_CERTIFICATES",
    "MAX_SIGNER_INFOS",
    "DecryptedContent",
    "SignatureVerdict",
    "SignerResult",
    "SmimeCapabilities",
    "algorithm_name",
    "decrypt",
    "encrypt",
    "sign",
    "verify",
]

#: Largest CMS structure accepted by :func:`verify` and :func:`decrypt` unless told otherwise: 64 MiB,
#: room for a 25 MB referral with imaging (DESIGN.md section 3) after base64 and MIME overhead.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# --- object identifiers (RFC 5652 section 14, RFC 5754, RFC 3565, RFC 5084, RFC 8017 appendix C) ---------
_OID_DATA = "1.2.840.113549.1.7.1"
_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
_OID_AUTH_ENVELOPED_DATA = "1.2.840.113549.1.9.16.1.23"
_OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
_OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
_OID_MGF1 = "1.2.840.113549.1.1.8"
_OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"

_NAMES: dict[str, str] = {
    # digests
    "1.2.840.113549.2.5": "MD5",
    "1.2.840.113549.2.2": "MD2",
    "1.3.14.3.2.26": "SHA-1",
    "2.16.840.1.101.3.4.2.4": "SHA-224",
    "2.16.840.1.101.3.4.2.1": "SHA-256",
    "2.16.840.1.101.3.4.2.2": "SHA-384",
    "2.16.840.1.101.3.4.2.3": "SHA-512",
    # content encryption
    "1.2.840.113549.3.7": "3DES",
    "1.3.14.3.2.7": "DES",
    "1.2.840.113549.3.2": "RC2",
    "1.2.840.113549.3.4": "RC4",
    "2.16.840.1.101.3.4.1.2": "AES-128-CBC",
    "2.16.840.1.101.3.4.1.22": "AES-192-CBC",
    "2.16.840.1.101.3.4.1.42": "AES-256-CBC",
    "2.16.840.1.101.3.4.1.6": "AES-128-GCM",
    "2.16.840.1.101.3.4.1.26": "AES-192-GCM",
    "2.16.840.1.101.3.4.1.46": "AES-256-GCM",
    # key transport and signatures
    _OID_RSA_ENCRYPTION: "RSA",
    _OID_RSAES_OAEP: "RSAES-OAEP",
    _OID_RSASSA_PSS: "RSASSA-PSS",
    _OID_MGF1: "MGF1",
    "1.2.840.113549.1.1.4": "MD5withRSA",
    "1.2.840.113549.1.1.5": "SHA1withRSA",
    "1.2.840.113549.1.1.14": "SHA224withRSA",
    "1.2.840.113549.1.1.11": "SHA256withRSA",
    "1.2.840.113549.1.1.12": "SHA384withRSA",
    "1.2.840.113549.1.1.13": "SHA512withRSA",
    _OID_EC_PUBLIC_KEY: "ECDSA",
    "1.2.840.10045.4.1": "SHA1withECDSA",
    "1.2.840.10045.4.3.1": "SHA224withECDSA",
    "1.2.840.10045.4.3.2": "SHA256withECDSA",
    "1.2.840.10045.4.3.3": "SHA384withECDSA",
    "1.2.840.10045.4.3.4": "SHA512withECDSA",
    # content types
    _OID_DATA: "Data",
    _OID_SIGNED_DATA: "SignedData",
    _OID_ENVELOPED_DATA: "EnvelopedData",
    _OID_AUTH_ENVELOPED_DATA: "AuthEnvelopedData",
}

# digest OID -> (our enum or None, hash name for hashlib / cryptography)
_DIGESTS: dict[str, tuple[DigestAlgorithm | None, str]] = {
    "1.2.840.113549.2.5": (DigestAlgorithm.MD5, "md5"),
    "1.3.14.3.2.26": (DigestAlgorithm.SHA1, "sha1"),
    "2.16.840.1.101.3.4.2.4": (None, "sha224"),
    "2.16.840.1.101.3.4.2.1": (DigestAlgorithm.SHA256, "sha256"),
    "2.16.840.1.101.3.4.2.2": (DigestAlgorithm.SHA384, "sha384"),
    "2.16.840.1.101.3.4.2.3": (DigestAlgorithm.SHA512, "sha512"),
}
# cryptography's ``algorithms`` and ``modes`` modules are wrapped for deprecation warnings: each attribute read
# is a Python __getattr__ call. The classes used per message are read once.
_AES = algorithms.AES
_CBC = modes.CBC
_GCM = modes.GCM

# hashlib's named constructors (hashlib.new looks the name up in Python on every call)
_HASH_NEW: dict[str, Callable[..., Any]] = {
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "sha224": hashlib.sha224,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
_DIGEST_OID: dict[DigestAlgorithm, str] = {d: oid for oid, (d, _n) in _DIGESTS.items() if d is not None}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# signature OID -> (scheme, hash OID implied or None = take the SignerInfo digestAlgorithm)
_SIGNATURE_ALGORITHMS: dict[str, tuple[str, str | None]] = {
    _OID_RSA_ENCRYPTION: ("rsa-pkcs1", None),
    "1.2.840.113549.1.1.4": ("rsa-pkcs1", "1.2.840.113549.2.5"),
    "1.2.840.113549.1.1.5": ("rsa-pkcs1", "1.3.14.3.2.26"),
    "1.3.14.3.2.29": ("rsa-pkcs1", "1.3.14.3.2.26"),
    "1.2.840.113549.1.1.14": ("rsa-pkcs1", "2.16.840.1.101.3.4.2.4"),
    "1.2.840.113549.1.1.11": ("rsa-pkcs1", "2.16.840.1.101.3.4.2.1"),
    "1.2.840.113549.1.1.12": ("rsa-pkcs1", "2.16.840.1.101.3.4.2.2"),
    "1.2.840.113549.1.1.13": ("rsa-pkcs1", "2.16.840.1.101.3.4.2.3"),
    _OID_RSASSA_PSS: ("rsassa-pss", None),
    _OID_EC_PUBLIC_KEY: ("ecdsa", None),
    "1.2.840.10045.4": ("ecdsa", None),
    "1.2.840.10045.4.1": ("ecdsa", "1.3.14.3.2.26"),
    "1.2.840.10045.4.3.1": ("ecdsa", "2.16.840.1.101.3.4.2.4"),
    "1.2.840.10045.4.3.2": ("ecdsa", "2.16.840.1.101.3.4.2.1"),
    "1.2.840.10045.4.3.3": ("ecdsa", "2.16.840.1.101.3.4.2.2"),
    "1.2.840.10045.4.3.4": ("ecdsa", "2.16.840.1.101.3.4.2.3"),
}
_ECDSA_SIGNATURE_OID: dict[DigestAlgorithm, str] = {
    DigestAlgorithm.SHA256: "1.2.840.10045.4.3.2",
    DigestAlgorithm.SHA384: "1.2.840.10045.4.3.3",
    DigestAlgorithm.SHA512: "1.2.840.10045.4.3.4",
    DigestAlgorithm.SHA1: "1.2.840.10045.4.1",
}


@dataclass(frozen=True)
class _CipherSpec:
    name: str
    cipher: ContentCipher | None  # None: recognised, no ContentCipher member (AES-192)
    key_size: int  # bytes
    gcm: bool


_CIPHERS: dict[str, _CipherSpec] = {
    "2.16.840.1.101.3.4.1.2": _CipherSpec("AES-128-CBC", ContentCipher.AES128_CBC, 16, False),
    "2.16.840.1.101.3.4.1.22": _CipherSpec("AES-192-CBC", None, 24, False),
    "2.16.840.1.101.3.4.1.42": _CipherSpec("AES-256-CBC", ContentCipher.AES256_CBC, 32, False),
    "2.16.840.1.101.3.4.1.6": _CipherSpec("AES-128-GCM", ContentCipher.AES128_GCM, 16, True),
    "2.16.840.1.101.3.4.1.26": _CipherSpec("AES-192-GCM", None, 24, True),
    "2.16.840.1.101.3.4.1.46": _CipherSpec("AES-256-GCM", ContentCipher.AES256_GCM, 32, True),
}
_CIPHER_OID: dict[ContentCipher, str] = {s.cipher: oid for oid, s in _CIPHERS.items() if s.cipher is not None}
_WEAK_CIPHERS = {
    "1.2.840.113549.3.7": "3DES",
    "1.3.14.3.2.7": "DES",
    "1.2.840.113549.3.2": "RC2",
    "1.2.840.113549.3.4": "RC4",
}

_GCM_NONCE_BYTES = 12  # RFC 5084 section 3.2: "a nonce of 12 octets is RECOMMENDED"
_GCM_TAG_BYTES = 16  # RFC 5084 section 3.2: ICV of 12 to 16 octets; we send the full 16
_AES_BLOCK = 16


class _GcmParameters(asn1_core.Sequence):
    """GCMParameters, RFC 5084 section 3.2."""

    _fields = [  # noqa: RUF012 - asn1crypto's declaration style
        ("aes_nonce", asn1_core.OctetString),
        ("aes_icv_len", asn1_core.Integer, {"default": 12}),
    ]


def algorithm_name(oid: str) -> str:
    """The name of an algorithm for people and error messages: ``"3DES"``, ``"AES-128-CBC"``, ``"SHA-1"``.

    :param oid: a dotted object identifier, e.g. ``"1.2.840.113549.3.7"``.
    :returns: the name, or the OID itself when it is not one we know.
    Spec: RFC 5652 section 14, RFC 5754, RFC 3565, RFC 5084, RFC 8017 appendix C.
    """
    return _NAMES.get(oid, oid)


# --------------------------------------------------------------------------------------------------------
# Public values
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmimeCapabilities:
    """What we announce we can decrypt, in preference order (the smimeCapabilities signed attribute).

    :ivar ciphers: content-encryption algorithms, strongest preferred first.
    :ivar key_transports: RSA key transports; RSAES-OAEP is announced with SHA-256 parameters.
    Spec: RFC 8551 section 2.5.2; RFC 3565 section 5 (AES-CBC, parameters absent); RFC 5084 section 5
    (AES-GCM); RFC 3560 section 4 (RSAES-OAEP).
    """

    ciphers: tuple[ContentCipher, ...] = (
        ContentCipher.AES256_GCM,
        ContentCipher.AES128_GCM,
        ContentCipher.AES256_CBC,
        ContentCipher.AES128_CBC,
    )
    key_transports: tuple[KeyTransport, ...] = (KeyTransport.RSA_OAEP, KeyTransport.RSA_PKCS1)

    def to_asn1(self) -> Any:
        """The SMIMECapabilities value (asn1crypto ``SMIMECapabilites``, a SEQUENCE OF SMIMECapability).

        :returns: the asn1crypto structure; ``.dump()`` gives its DER.
        Spec: RFC 8551 section 2.5.2.
        """
        items: list[dict[str, Any]] = [{"capability_id": _CIPHER_OID[c]} for c in self.ciphers]
        for transport in self.key_transports:
            if transport is KeyTransport.RSA_OAEP:
                items.append(
                    {"capability_id": _OID_RSAES_OAEP, "parameters": asn1_core.Any.load(_oaep_params_der())}
                )
            else:
                items.append({"capability_id": _OID_RSA_ENCRYPTION, "parameters": asn1_core.Null()})
        return asn1_cms.SMIMECapabilites(items)


#: The capabilities :func:`sign` announces by default: AES-256/128-GCM, AES-256/128-CBC, RSAES-OAEP, RSA.
DEFAULT_CAPABILITIES = SmimeCapabilities()


@dataclass(frozen=True)
class SignerResult:
    """One cryptographically valid SignerInfo.

    :ivar certificate: the signer's certificate, found in the SignedData (not yet path-validated).
    :ivar digest: the SignerInfo's digest algorithm (the micalg must match it, AS-7).
    :ivar signature_algorithm: ``"rsa-pkcs1"``, ``"rsassa-pss"`` or ``"ecdsa"``.
    :ivar signing_time: the signingTime signed attribute (aware, UTC), or None when absent.
    """

    certificate: Certificate
    digest: DigestAlgorithm
    signature_algorithm: str
    signing_time: datetime | None


@dataclass(frozen=True)
class SignatureVerdict:
    """The evidence of a verified SignedData: at least one signer is cryptographically valid.

    :ivar valid_signers: the valid SignerInfos (one or more).
    :ivar invalid_signers: ``(signer description, reason)`` for each SignerInfo that failed (AS-15).
    :ivar certificates: every certificate the SignedData carries, in order.
    :ivar content: the signed content: the bytes given for a detached signature, else the encapsulated ones.
    """

    valid_signers: tuple[SignerResult, ...]
    invalid_signers: tuple[tuple[str, str], ...]
    certificates: tuple[Certificate, ...]
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class DecryptedContent:
    """The result of :func:`decrypt`.

    :ivar content: the decrypted content bytes (for Direct: a MIME entity).
    :ivar cipher: the content-encryption algorithm used by the sender.
    :ivar key_transport: ``"rsa-pkcs1"``, ``"rsa-oaep-sha1"``, ``"rsa-oaep-sha256"``, ...; when the MGF1 hash
        differs from the OAEP hash it is appended, e.g. ``"rsa-oaep-sha256-mgf1-sha1"``.
    :ivar recipient: the certificate of the credential that opened the envelope.
    :ivar recipient_count: how many RecipientInfos the envelope carries (AS-11).
    """

    content: bytes = field(repr=False)
    cipher: ContentCipher
    key_transport: str
    recipient: Certificate
    recipient_count: int


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _oaep_params_der(hash_name: str = "sha256") -> bytes:
    """RSAES-OAEP-params with ``hash_name`` for the hash and MGF1 (RFC 4055 section 4.1), as DER (cached)."""
    return bytes(
        asn1_algos.RSAESOAEPParams(
            {
                "hash_algorithm": {"algorithm": hash_name},
                "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": hash_name}},
            }
        ).dump()
    )


def _parse_error(what: str, exc: BaseException) -> MessageFormatError:
    return MessageFormatError(f"malformed {what}: {exc.__class__.__name__}: {exc}", structure=what)


_PARSE_ERRORS = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    OverflowError,
    RecursionError,
    NotImplementedError,
)


def _check_input(data: bytes, max_bytes: int, what: str) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageFormatError(f"{what} must be bytes, not {type(data).__name__}")
    if len(data) > max_bytes:
        raise MessageFormatError(
            f"{what} of {len(data)} bytes exceeds the limit of {max_bytes} bytes",
            size=len(data),
            max_bytes=max_bytes,
        )
    if len(data) == 0:
        raise MessageFormatError(f"{what} is empty")


def _load_content_info(data: bytes, expected: tuple[str, ...], what: str) -> tuple[str, Any]:
    """Parse a ContentInfo and return ``(content type OID, parsed content)``; MessageFormatError otherwise."""
    try:
        info = asn1_cms.ContentInfo.load(bytes(data) if not isinstance(data, bytes) else data, strict=True)
        content_type = info["content_type"].dotted
        if content_type not in expected:
            raise MessageFormatError(
                f"expected {' or '.join(algorithm_name(e) for e in expected)}, "
                f"got ContentInfo of type {algorithm_name(content_type)}",
                content_type=content_type,
            )
        content = info["content"]
        if content is None or isinstance(content, asn1_core.Void):
            raise MessageFormatError(f"{what}: ContentInfo has no content")
        return content_type, content
    except HispError:
        raise
    except _PARSE_ERRORS as exc:
        raise _parse_error(what, exc) from None


def _octets(value: Any) -> bytes:
    """The bytes of a (possibly BER constructed) OCTET STRING."""
    native = value.native
    if not isinstance(native, bytes):
        raise TypeError("expected an OCTET STRING")
    return native


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def _der_header(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes((tag, length))
    if length < 0x100:
        return bytes((tag, 0x81, length))
    if length < 0x10000:
        return bytes((tag, 0x82, length >> 8, length & 0xFF))
    return bytes([tag]) + _der_length(length)


# --------------------------------------------------------------------------------------------------------
# Large OCTET STRINGs without copies
# --------------------------------------------------------------------------------------------------------
# asn1crypto copies the contents of every nesting level it parses, so a 25 MB encapsulated or encrypted
# content would be held four or five times. For plain DER input the big OCTET STRING is located with a
# minimal TLV walker and cut out: asn1crypto parses the small remainder, the cipher or hash reads the
# content through a memoryview of the caller's buffer. BER input (indefinite lengths, constructed
# strings: ``openssl cms -stream``) and anything unexpected take the ordinary asn1crypto path.


class _NotPlainDer(Exception):
    """The walker met something it leaves to asn1crypto (indefinite length, high tag number, bad length)."""


_Tlv = tuple[int, int, int, int]  # tag, header start, content start, content end


def _read_tlv(buf: memoryview, pos: int, limit: int) -> _Tlv:
    """:func:`_der_tlv` with the header start kept: (tag, header start, content start, content end)."""
    tag, start, end = _der_tlv(buf, pos, limit)
    return tag, pos, start, end


def _children(buf: memoryview, parent: _Tlv) -> list[_Tlv]:
    result: list[_Tlv] = []
    pos, end = parent[2], parent[3]
    while pos < end:
        tlv = _read_tlv(buf, pos, end)
        result.append(tlv)
        pos = tlv[3]
    return result


def _first(children: list[_Tlv], tag: int) -> _Tlv:
    for child in children:
        if child[0] == tag:
            return child
    raise _NotPlainDer


_ENCODED_TYPES = {
    oid: bytes(asn1_cms.ContentType(oid).dump())
    for oid in (_OID_SIGNED_DATA, _OID_ENVELOPED_DATA, _OID_AUTH_ENVELOPED_DATA)
}


def _lift_content(data: bytes, expected: tuple[str, ...]) -> tuple[bytes, memoryview] | None:
    """Cut the big OCTET STRING out of a plain-DER ContentInfo.

    For SignedData the encapsulated content (encapContentInfo's ``[0] EXPLICIT OCTET STRING``) is removed;
    for (Auth)EnvelopedData the ``[0] IMPLICIT`` encryptedContent. Returns the DER without it (lengths
    fixed up, so it is still a valid ContentInfo) and a view of the content bytes; None when the input is
    not plain DER of an expected type or carries no such content.
    """
    try:
        buf = memoryview(data)
        root = _read_tlv(buf, 0, len(buf))
        if root[0] != 0x30 or root[3] != len(buf):
            return None
        info = _children(buf, root)
        if len(info) != 2 or info[1][0] != 0xA0:
            return None
        encoded_type = bytes(buf[info[0][1] : info[0][3]])
        if encoded_type not in {_ENCODED_TYPES[oid] for oid in expected}:
            return None
        (body,) = _children(buf, info[1])
        holder = _first(_children(buf, body), 0x30)  # encapContentInfo or (auth)encryptedContentInfo
        inner = _children(buf, holder)
        if encoded_type == _ENCODED_TYPES[_OID_SIGNED_DATA]:
            target = _first(inner, 0xA0)
            (octets,) = _children(buf, target)
            if octets[0] != 0x04:
                return None  # constructed (BER) OCTET STRING
            content = buf[octets[2] : octets[3]]
        else:
            target = _first(inner, 0x80)
            content = buf[target[2] : target[3]]
    except (_NotPlainDer, ValueError, IndexError):
        return None
    # New headers bottom-up: each ancestor loses the cut element and what its descendants' headers shrank.
    removed = target[3] - target[1]
    headers: list[bytes] = []
    for tag, start, content_start, end in (holder, body, info[1], root):
        header = _der_header(tag, end - content_start - removed)
        removed += (content_start - start) - len(header)
        headers.insert(0, header)
    pieces: list[bytes | memoryview] = []
    pos = 0
    for header, (_, start, content_start, _) in zip(headers, (root, info[1], body, holder), strict=True):
        pieces.append(buf[pos:start])
        pieces.append(header)
        pos = content_start
    pieces.append(buf[pos : target[1]])
    pieces.append(buf[target[3] :])
    return b"".join(pieces), content


# --------------------------------------------------------------------------------------------------------
# Strict-DER fast paths for the fields verify and decrypt read
# --------------------------------------------------------------------------------------------------------
# asn1crypto builds an object for every element it is asked for, which costs more than the RSA operation of a
# small message. What verify and decrypt read of a well-formed DER SignedData / EnvelopedData is a fixed set of
# fields, so a walker reads exactly those for the one shape every sender writes: definite minimal lengths,
# low tag numbers, the expected tag at every position, no optional element we do not read. Anything else
# (BER, indefinite lengths, a tag out of place, originatorInfo, other RecipientInfo kinds, RSASSA-PSS, a value
# asn1crypto would refuse) makes the walker give up and asn1crypto parse the input as before: the walker
# accepts a subset of what asn1crypto accepts and returns the same values (tests/property/test_smime_der.py
# compares the two on valid, random and mutated inputs). The shape is fixed, so nesting cannot go deep; every
# length is checked against its parent's end; OIDs, names and times are decoded by asn1crypto itself
# (remembered by their bytes, or cheap), so their meaning cannot differ.

#: Most elements a walked SET or SEQUENCE may hold before the walker leaves the input to asn1crypto.
_FAST_MAX_CHILDREN = 64


def _der_tlv(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the strict-DER element at ``buf[pos:end]``.

    :raises _NotPlainDer: high tag number, indefinite or non-minimal length, or a length past ``end``.
    """
    if pos + 2 > end:
        raise _NotPlainDer
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise _NotPlainDer
    first = buf[pos + 1]
    if first < 0x80:
        start = pos + 2
        length = first
    else:
        count = first - 0x80
        start = pos + 2 + count
        if count == 0 or count > 4 or start > end or buf[pos + 2] == 0:
            raise _NotPlainDer  # indefinite, absurdly long, or not minimal (a leading zero octet)
        length = int.from_bytes(buf[pos + 2 : start], "big")
        if length < 0x80:
            raise _NotPlainDer  # DER: short form for lengths below 128
    if start + length > end:
        raise _NotPlainDer
    return tag, start, start + length


def _der_children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The elements of ``buf[start:end]`` as (tag, header start, content start, content end), filling it exactly."""
    children: list[tuple[int, int, int, int]] = []
    pos = start
    while pos < end:
        if len(children) >= _FAST_MAX_CHILDREN:
            raise _NotPlainDer
        # _der_tlv inlined for the short form (the common case in this hot loop); the long form goes through it
        if pos + 2 <= end and buf[pos + 1] < 0x80 and buf[pos] & 0x1F != 0x1F:
            tag = buf[pos]
            content_start = pos + 2
            content_end = content_start + buf[pos + 1]
            if content_end > end:
                raise _NotPlainDer
        else:
            tag, content_start, content_end = _der_tlv(buf, pos, end)
        children.append((tag, pos, content_start, content_end))
        pos = content_end
    return children


def _der_expect(children: list[tuple[int, int, int, int]], index: int, tag: int) -> tuple[int, int, int, int]:
    if index >= len(children) or children[index][0] != tag:
        raise _NotPlainDer
    return children[index]


@functools.lru_cache(maxsize=256)
def _oid_dotted(tlv: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER element, as asn1crypto decodes it (remembered: a few OIDs recur)."""
    return str(asn1_core.ObjectIdentifier.load(tlv, strict=True).dotted)


def _der_oid(buf: bytes, element: tuple[int, int, int, int]) -> str:
    if element[0] != 0x06 or element[2] == element[3]:
        raise _NotPlainDer
    try:
        return _oid_dotted(buf[element[1] : element[3]])
    except _PARSE_ERRORS:
        raise _NotPlainDer from None


def _der_algorithm(buf: bytes, element: tuple[int, int, int, int], kind: str) -> tuple[str, bytes]:
    """An AlgorithmIdentifier of the asn1crypto class named ``kind`` (:data:`_ALGORITHM_KINDS`).

    Returns the OID and the parameters' DER (``b""`` when absent).

    Whether asn1crypto accepts the parameters depends on the OID (their type for it, or NULL): it is asked,
    once per distinct encoding (a sender's algorithm identifiers are the same in every message).
    """
    if element[0] != 0x30:
        raise _NotPlainDer
    children = _der_children(buf, element[2], element[3])
    if not 1 <= len(children) <= 2 or children[0][0] != 0x06:
        raise _NotPlainDer
    try:
        oid = _checked_algorithm(kind, buf[element[1] : element[3]])
    except _PARSE_ERRORS:
        raise _NotPlainDer from None
    params = buf[children[1][1] : children[1][3]] if len(children) == 2 else b""
    return oid, params


_ALGORITHM_KINDS: dict[str, Any] = {
    "digest": asn1_algos.DigestAlgorithm,
    "signature": asn1_algos.SignedDigestAlgorithm,
    "key encryption": asn1_cms.KeyEncryptionAlgorithm,
}


@functools.lru_cache(maxsize=256)
def _checked_algorithm(kind: str, tlv: bytes) -> str:
    """The OID of the AlgorithmIdentifier ``tlv``, read by asn1crypto as the slow paths read it (failures raise)."""
    parsed = _ALGORITHM_KINDS[kind].load(tlv, strict=True)
    oid = str(parsed["algorithm"].dotted)
    _ = parsed["parameters"]  # built with the type asn1crypto expects for the OID: refused as the slow path would
    return oid


def _der_identifier(buf: bytes, element: tuple[int, int, int, int]) -> _Identifier:
    """A SignerIdentifier / RecipientIdentifier: issuerAndSerialNumber or ``[0] IMPLICIT`` subjectKeyIdentifier."""
    tag, _, start, end = element
    if tag == 0x80:
        ski = buf[start:end]
        return _Identifier(None, None, ski, f"subjectKeyIdentifier {ski.hex()}")
    if tag != 0x30:
        raise _NotPlainDer
    children = _der_children(buf, start, end)
    if len(children) != 2 or children[0][0] != 0x30 or children[1][0] != 0x02 or children[1][2] == children[1][3]:
        raise _NotPlainDer
    issuer = buf[children[0][1] : children[0][3]]
    serial = int.from_bytes(buf[children[1][2] : children[1][3]], "big", signed=True)
    try:
        description = _name_description(issuer)
    except _PARSE_ERRORS:
        raise _NotPlainDer from None  # asn1crypto decides (and refuses)
    return _Identifier(_name_key_of(issuer), serial, None, f"issuer {description}, serial {serial:#x}")


def _der_octets(buf: bytes, element: tuple[int, int, int, int]) -> bytes:
    """A primitive OCTET STRING's bytes (a constructed one is BER: asn1crypto's)."""
    if element[0] != 0x04:
        raise _NotPlainDer
    return buf[element[2] : element[3]]


def _der_content_info(buf: bytes, expected: tuple[str, ...]) -> tuple[str, tuple[int, int, int, int]]:
    """The content type and the content element of a ContentInfo filling ``buf``, of an expected type."""
    tag, start, end = _der_tlv(buf, 0, len(buf))
    if tag != 0x30 or end != len(buf):
        raise _NotPlainDer
    info = _der_children(buf, start, end)
    if len(info) != 2 or info[1][0] != 0xA0:
        raise _NotPlainDer
    content_type = _der_oid(buf, info[0])
    if content_type not in expected:
        raise _NotPlainDer  # asn1crypto's path names the type in its error
    inner = _der_children(buf, info[1][2], info[1][3])
    if len(inner) != 1 or inner[0][0] != 0x30:
        raise _NotPlainDer
    return content_type, inner[0]


_UTC_TIME_DIGITS = frozenset(b"0123456789")


def _der_signing_time(buf: bytes, element: tuple[int, int, int, int]) -> datetime | None:
    """A signingTime value as asn1crypto's ``Time.native`` then ``astimezone(UTC)`` (None when not a datetime)."""
    tag, header, start, end = element
    text = buf[start:end]
    if tag == 0x17 and len(text) == 13 and text[12] == 0x5A and _UTC_TIME_DIGITS.issuperset(text[:12]):
        # DER UTCTime YYMMDDHHMMSSZ (X.690 section 11.8); RFC 5280 section 4.1.2.5.1: YY < 50 is 20YY
        year = int(text[0:2])
        try:
            return datetime(
                year + (2000 if year < 50 else 1900), int(text[2:4]), int(text[4:6]),
                int(text[6:8]), int(text[8:10]), int(text[10:12]), tzinfo=UTC,
            )  # fmt: skip
        except ValueError:
            raise _NotPlainDer from None
    if tag not in (0x17, 0x18):
        raise _NotPlainDer
    try:
        value = asn1_cms.Time.load(buf[header:end], strict=True).native
    except _PARSE_ERRORS:
        raise _NotPlainDer from None
    return value.astimezone(UTC) if isinstance(value, datetime) else None


@dataclass(frozen=True)
class _CertIndex:
    """Certificates indexed for SignerIdentifier / RecipientIdentifier look-ups."""

    by_issuer_serial: dict[tuple[bytes, int], Certificate]
    by_ski: dict[bytes, Certificate]

    @classmethod
    def build(cls, certificates: Sequence[Certificate]) -> _CertIndex:
        by_issuer_serial: dict[tuple[bytes, int], Certificate] = {}
        by_ski: dict[bytes, Certificate] = {}
        for cert in certificates:
            key = _issuer_serial_key(cert)
            if key is not None:
                by_issuer_serial.setdefault(key, cert)
            ski = cert.subject_key_identifier
            if ski:
                by_ski.setdefault(bytes(ski), cert)
        return cls(by_issuer_serial, by_ski)

    def find(self, rid: _Identifier) -> Certificate | None:
        if rid.ski is not None:
            return self.by_ski.get(rid.ski)
        assert rid.issuer_key is not None and rid.serial is not None
        return self.by_issuer_serial.get((rid.issuer_key, rid.serial))


# The same few names and certificates come back message after message; asn1crypto's normalisation
# (LDAP string preparation) is slow, so its results are remembered by DER, in bounded caches.
_NAME_CACHE_SIZE = 1024


def _name_key(name: Any) -> bytes:
    """A comparison key for an X.501 Name: asn1crypto's normalised form (RFC 5280 section 7.1 matching)."""
    return _name_key_of(bytes(name.dump()))


@functools.lru_cache(maxsize=_NAME_CACHE_SIZE)
def _name_key_of(der: bytes) -> bytes:
    """:func:`_name_key` of the Name encoded as ``der``; the DER itself when it cannot be normalised."""
    try:
        return bytes(asn1_x509.Name.load(der).hashable.encode("utf-8"))
    except _PARSE_ERRORS:
        return der


@functools.lru_cache(maxsize=_NAME_CACHE_SIZE)
def _name_description(der: bytes) -> str:
    """asn1crypto's ``human_friendly`` form of the Name encoded as ``der``."""
    return str(asn1_x509.Name.load(der).human_friendly)


def _issuer_serial_key(cert: Certificate) -> tuple[bytes, int] | None:
    return _issuer_serial_key_of(cert.der)


@functools.lru_cache(maxsize=_NAME_CACHE_SIZE)
def _issuer_serial_key_of(der: bytes) -> tuple[bytes, int] | None:
    try:
        parsed = asn1_x509.Certificate.load(der)
        return _name_key(parsed.issuer), int(parsed.serial_number)
    except _PARSE_ERRORS:
        return None


@dataclass(frozen=True)
class _Identifier:
    """A SignerIdentifier or RecipientIdentifier: issuerAndSerialNumber or subjectKeyIdentifier."""

    issuer_key: bytes | None
    serial: int | None
    ski: bytes | None
    description: str

    @classmethod
    def parse(cls, choice: Any) -> _Identifier:
        if choice.name == "subject_key_identifier":
            ski = _octets(choice.chosen)
            return cls(None, None, ski, f"subjectKeyIdentifier {ski.hex()}")
        if choice.name != "issuer_and_serial_number":
            raise ValueError(f"unknown identifier {choice.name}")
        ias = choice.chosen
        issuer = bytes(ias["issuer"].dump())
        serial = int(ias["serial_number"].native)
        return cls(_name_key_of(issuer), serial, None, f"issuer {_name_description(issuer)}, serial {serial:#x}")

    def matches(self, cert: Certificate) -> bool:
        if self.ski is not None:
            ski = cert.subject_key_identifier
            return ski is not None and hmac.compare_digest(bytes(ski), self.ski)
        return _issuer_serial_key(cert) == (self.issuer_key, self.serial)


def _describe(cert: Certificate) -> str:
    """``cert.describe()``, or its fingerprint when a field of this untrusted certificate cannot be parsed."""
    try:
        return cert.describe()
    except _PARSE_ERRORS:
        return f"certificate sha256={cert.fingerprint_sha256}"


def _check_at(at: datetime) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ConfigError("the time 'at' must be a timezone-aware datetime")
    return at.astimezone(UTC).replace(microsecond=0)


def _digest_name(oid: str, policy_name: str) -> tuple[DigestAlgorithm, str]:
    """Our DigestAlgorithm and hash name for a digest OID; refuse MD5 and unknown digests."""
    entry = _DIGESTS.get(oid)
    if entry is None or entry[0] is None:
        raise PolicyViolation(
            f"digest algorithm {algorithm_name(oid)} not supported by policy {policy_name}", algorithm=oid
        )
    digest, hash_name = entry[0], entry[1]
    assert digest is not None
    if digest is DigestAlgorithm.MD5:
        raise refuse_weak_algorithm("MD5", policy_name)
    return digest, hash_name


def _splice_encapsulated(der: bytes, content: bytes) -> bytes:
    """Insert ``content`` as the eContent of a plain-DER ContentInfo(SignedData) that has none.

    The inverse of :func:`_lift_content`: asn1crypto encodes the small SignedData, the content is copied
    once, into the result.
    """
    buf = memoryview(der)
    root = _read_tlv(buf, 0, len(buf))
    info = _children(buf, root)
    (body,) = _children(buf, info[1])
    holder = _first(_children(buf, body), 0x30)  # encapContentInfo
    octets_header = _der_header(0x04, len(content))
    explicit_header = _der_header(0xA0, len(octets_header) + len(content))
    added = len(explicit_header) + len(octets_header) + len(content)
    headers: list[bytes] = []
    for tag, start, content_start, end in (holder, body, info[1], root):
        header = _der_header(tag, end - content_start + added)
        added += len(header) - (content_start - start)
        headers.insert(0, header)
    pieces: list[bytes | memoryview] = []
    pos = 0
    for header, (_, start, content_start, _) in zip(headers, (root, info[1], body, holder), strict=True):
        pieces.append(buf[pos:start])
        pieces.append(header)
        pos = content_start
    pieces += [buf[pos : holder[3]], explicit_header, octets_header, content, buf[holder[3] :]]
    return b"".join(pieces)


# --------------------------------------------------------------------------------------------------------
# sign
# --------------------------------------------------------------------------------------------------------


def _signing_time_der(at: datetime) -> bytes:
    """The signingTime value's DER for ``at`` (aware, UTC, whole seconds, as :func:`_check_at` gives it).

    UTCTime ``YYMMDDHHMMSSZ`` (X.690 section 11.8) written directly: what asn1crypto's UTCTime writes.
    """
    if 1950 <= at.year <= 2049:
        return b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (
            at.year % 100, at.month, at.day, at.hour, at.minute, at.second
        )
    return bytes(_signing_time(at).dump())


def _signing_time(at: datetime) -> Any:
    # RFC 5652 section 11.3: UTCTime for 1950-2049, GeneralizedTime otherwise.
    if 1950 <= at.year <= 2049:
        return asn1_cms.Time({"utc_time": at})
    return asn1_cms.Time({"generalized_time": at})


# The SignedData is assembled as DER from pieces: the constant ones (algorithm identifiers, attribute
# types, the capabilities) and the per-certificate ones (issuerAndSerialNumber, the certificate SET) are
# encoded once with asn1crypto and remembered, keyed by value or DER bytes.


def _tlv(tag: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return _der_header(tag, len(body)) + body


_ATTRIBUTE_OID_DER = {
    name: bytes(asn1_cms.CMSAttributeType(name).dump())
    for name in ("content_type", "signing_time", "message_digest", "smime_capabilities")
}
_CONTENT_TYPE_DATA_ATTRIBUTE = bytes(asn1_cms.CMSAttribute({"type": "content_type", "values": ["data"]}).dump())
_SIGNED_DATA_TYPE_DER = bytes(asn1_cms.ContentType("signed_data").dump())
_ENCAP_DATA_DER = bytes(asn1_cms.EncapsulatedContentInfo({"content_type": "data"}).dump())
_VERSION_1_DER = bytes(asn1_core.Integer(1).dump())


def _attribute_der(name: str, value_der: bytes) -> bytes:
    """One CMS Attribute (RFC 5652 section 5.3) with a single value: SEQUENCE { type, SET { value } }."""
    return _attribute_head(name, len(value_der)) + value_der


@functools.lru_cache(maxsize=64)
def _attribute_head(name: str, value_length: int) -> bytes:
    """The bytes of :func:`_attribute_der` before the value: they depend only on the type and the value's length
    (the signed attributes of every message are the same types with values of the same lengths)."""
    value_set_header = _der_header(0x31, value_length)
    oid = _ATTRIBUTE_OID_DER[name]
    return _der_header(0x30, len(oid) + len(value_set_header) + value_length) + oid + value_set_header


@functools.lru_cache(maxsize=32)
def _capabilities_der(capabilities: SmimeCapabilities) -> bytes:
    return bytes(capabilities.to_asn1().dump())


@functools.cache
def _default_capabilities_der() -> bytes:
    return _capabilities_der(DEFAULT_CAPABILITIES)


@functools.lru_cache(maxsize=32)
def _digest_algorithm_der(digest_oid: str) -> bytes:
    return bytes(asn1_algos.DigestAlgorithm({"algorithm": digest_oid}).dump())


@functools.lru_cache(maxsize=32)
def _signature_algorithm_der(algorithm: str) -> bytes:
    return bytes(asn1_cms.SignedDigestAlgorithm({"algorithm": algorithm}).dump())


@functools.lru_cache(maxsize=1024)
def _issuer_and_serial_der(certificate_der: bytes) -> bytes:
    """The IssuerAndSerialNumber of a certificate (RFC 5652 section 10.2.4), as DER."""
    parsed = asn1_x509.Certificate.load(certificate_der)
    return bytes(
        asn1_cms.IssuerAndSerialNumber(
            {"issuer": parsed.issuer, "serial_number": parsed.serial_number}
        ).dump()
    )


@functools.lru_cache(maxsize=256)
def _certificate_set_der(ders: tuple[bytes, ...]) -> bytes:
    """``[0] IMPLICIT CertificateSet`` of distinct certificates: a DER SET OF, elements in sorted order."""
    return _tlv(0xA0, *sorted(bytes(asn1_x509.Certificate.load(der).dump()) for der in ders))


def sign(
    content: bytes,
    credential: Credential,
    *,
    digest: DigestAlgorithm,
    at: datetime,
    detached: bool = True,
    extra_certificates: Sequence[Certificate] = (),
    capabilities: SmimeCapabilities = DEFAULT_CAPABILITIES,
) -> bytes:
    """Sign ``content`` and return a DER ContentInfo carrying a SignedData.

    One SignerInfo, identified by issuerAndSerialNumber, with RSA PKCS#1 v1.5 (rsaEncryption) or, for an
    EC key, ECDSA. Signed attributes: contentType, messageDigest, signingTime (= ``at``) and
    smimeCapabilities. The certificates carried are the signer's, ``credential.chain`` and
    ``extra_certificates``, duplicates dropped (a DER SET OF: encoded in canonical order, not this one).

    :param content: the exact bytes to sign (for Direct: the canonical MIME entity, CRLF line ends).
    :param credential: our signing certificate and key; its keyUsage must allow digitalSignature (AS-4).
    :param digest: the digest algorithm (SHA-256, -384 or -512; SHA-1 and MD5 are refused, AS-8).
    :param at: the signing time, a timezone-aware datetime (sub-second precision is dropped).
    :param detached: True (default) for a detached signature (multipart/signed, AS-7); False to
        encapsulate the content (application/pkcs7-mime; smime-type=signed-data).
    :param extra_certificates: more certificates to carry, e.g. intermediates not in the chain.
    :param capabilities: the smimeCapabilities to announce.
    :returns: DER ContentInfo(SignedData).
    :raises PolicyViolation: the certificate cannot sign (keyUsage), its key is neither RSA nor EC, or the
        digest is SHA-1 or MD5.
    :raises ConfigError: ``at`` is naive.
    Spec: RFC 5652 section 5; RFC 8551 sections 2.5 and 2.5.2; RFC 5753 (ECDSA); AS-4, AS-7, AS-8.
    """
    if digest in (DigestAlgorithm.SHA1, DigestAlgorithm.MD5):
        raise PolicyViolation(f"{digest.display_name} may not be used to sign (AS-8)", algorithm=digest.value)
    return _sign(
        content,
        credential,
        digest=digest,
        at=at,
        detached=detached,
        extra_certificates=extra_certificates,
        capabilities=capabilities,
    )


def _sign(
    content: bytes,
    credential: Credential,
    *,
    digest: DigestAlgorithm,
    at: datetime,
    detached: bool = True,
    extra_certificates: Sequence[Certificate] = (),
    capabilities: SmimeCapabilities | None = DEFAULT_CAPABILITIES,
) -> bytes:
    """:func:`sign` without the SHA-1 refusal: tests use it to make SHA-1 signatures for the verifier."""
    at = _check_at(at)
    certificate = credential.certificate
    if not certificate.can_sign:
        raise PolicyViolation(
            f"certificate {certificate.describe()} cannot sign: keyUsage lacks digitalSignature (AS-4)",
            certificate=certificate.describe(),
        )
    key = credential.private_key
    if digest is DigestAlgorithm.MD5:
        raise PolicyViolation("MD5 may not be used to sign (AS-8)", algorithm=digest.value)
    digest_oid = _DIGEST_OID[digest]
    hash_name = _DIGESTS[digest_oid][1]
    message_digest = _HASH_NEW[hash_name](content).digest()

    attributes = [
        _CONTENT_TYPE_DATA_ATTRIBUTE,
        _attribute_der("signing_time", _signing_time_der(at)),
        _attribute_der("message_digest", _tlv(0x04, message_digest)),
    ]
    if capabilities is not None:
        # the default capabilities' DER is remembered by identity (hashing the dataclass costs more than the DER)
        capabilities_der = (
            _default_capabilities_der() if capabilities is DEFAULT_CAPABILITIES else _capabilities_der(capabilities)
        )
        attributes.append(_attribute_der("smime_capabilities", capabilities_der))
    # DER SET OF: elements sorted by their encodings (X.690 section 11.6). OpenSSL re-encodes signedAttrs
    # canonically before verifying, so an unsorted SET would fail there.
    attributes.sort()
    to_sign = _tlv(0x31, *attributes)
    hash_algorithm = _HASHES[hash_name]()

    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(to_sign, padding.PKCS1v15(), hash_algorithm)
        signature_algorithm = _signature_algorithm_der("rsassa_pkcs1v15")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(to_sign, ec.ECDSA(hash_algorithm))
        signature_algorithm = _signature_algorithm_der(_ECDSA_SIGNATURE_OID[digest])
    else:
        raise PolicyViolation(
            f"signing key of type {type(key).__name__} not supported (RSA or ECDSA only)",
            certificate=certificate.describe(),
        )

    digest_algorithm = _digest_algorithm_der(digest_oid)
    signer_info = _tlv(
        0x30,
        _VERSION_1_DER,
        _issuer_and_serial_der(certificate.der),  # sid
        digest_algorithm,
        b"\xa0" + to_sign[1:],  # signedAttrs: [0] IMPLICIT, the SET OF signed above
        signature_algorithm,
        _tlv(0x04, signature),
    )
    ders = tuple(dict.fromkeys(c.der for c in (certificate, *credential.chain, *extra_certificates)))
    signed_data = _tlv(
        0x30,
        _VERSION_1_DER,
        _tlv(0x31, digest_algorithm),  # digestAlgorithms
        _ENCAP_DATA_DER,  # encapContentInfo: id-data, content absent (spliced in below when encapsulated)
        _certificate_set_der(ders),
        _tlv(0x31, signer_info),  # signerInfos
    )
    der = _tlv(0x30, _SIGNED_DATA_TYPE_DER, _tlv(0xA0, signed_data))
    return der if detached else _splice_encapsulated(der, content)


# --------------------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SignerInfoData:
    sid: _Identifier
    digest_oid: str
    signed_attrs_der: bytes | None  # the ORIGINAL encoding re-tagged as SET OF
    content_type_attr: str | None
    message_digest_attr: bytes | None
    signing_time: datetime | None
    signature_oid: str
    signature_params: Any
    signature: bytes


def _single_value(attribute: Any, name: str) -> Any:
    values = attribute["values"]
    if len(values) != 1:
        raise ValueError(f"signed attribute {name} must have exactly one value")
    return values[0]


def _parse_signer_info(si: Any) -> _SignerInfoData:
    sid = _Identifier.parse(si["sid"])
    digest_oid = si["digest_algorithm"]["algorithm"].dotted
    signature_oid = si["signature_algorithm"]["algorithm"].dotted
    signature_params = si["signature_algorithm"]["parameters"]
    signature = _octets(si["signature"])
    signed_attrs = si["signed_attrs"]
    if isinstance(signed_attrs, asn1_core.Void) or signed_attrs is None:
        return _SignerInfoData(
            sid, digest_oid, None, None, None, None, signature_oid, signature_params, signature
        )
    # RFC 5652 section 5.4: the signature covers the DER of SignedAttributes with the SET OF tag; use the
    # bytes received (untag() keeps the original contents, only the tag changes), never a re-serialisation.
    signed_attrs_der = bytes(signed_attrs.untag().dump())
    content_type = message_digest = signing_time = None
    seen: set[str] = set()
    for attribute in signed_attrs:
        oid = attribute["type"].dotted
        if oid in seen and oid in ("1.2.840.113549.1.9.3", "1.2.840.113549.1.9.4", "1.2.840.113549.1.9.5"):
            raise ValueError(f"signed attribute {attribute['type'].native} appears twice")
        seen.add(oid)
        if oid == "1.2.840.113549.1.9.3":
            content_type = _single_value(attribute, "contentType").dotted
        elif oid == "1.2.840.113549.1.9.4":
            message_digest = _octets(_single_value(attribute, "messageDigest"))
        elif oid == "1.2.840.113549.1.9.5":
            value = _single_value(attribute, "signingTime").native
            if isinstance(value, datetime):
                signing_time = value.astimezone(UTC)
    return _SignerInfoData(
        sid,
        digest_oid,
        signed_attrs_der,
        content_type,
        message_digest,
        signing_time,
        signature_oid,
        signature_params,
        signature,
    )


#: Bounds on what one SignedData may make us check: real Direct messages carry one or two signers and a
#: chain of at most a handful of certificates; thousands are an attempt to burn CPU.
MAX_SIGNER_INFOS = 16
MAX_CERTIFICATES = 64


def _load_certificates(signed_data: Any) -> tuple[Certificate, ...]:
    certs = signed_data["certificates"]
    result: list[Certificate] = []
    if isinstance(certs, asn1_core.Void) or certs is None:
        return ()
    if len(certs) > MAX_CERTIFICATES:
        raise MessageFormatError(
            f"SignedData carries {len(certs)} certificates; at most {MAX_CERTIFICATES} are accepted"
        )
    for choice in certs:
        if choice.name != "certificate":
            continue  # attribute certificates and others are not signer certificates
        try:
            result.append(Certificate.from_der(bytes(choice.chosen.dump())))
        except (HispError, InvalidVersion, *_PARSE_ERRORS):
            continue  # a certificate we cannot load cannot be a signer we can check; others may still be
    return tuple(result)


def _pss_parameters(params: Any, hash_oid: str, policy: SecurityPolicy) -> tuple[padding.PSS, str]:
    """RSASSA-PSS padding from RSASSA-PSS-params (RFC 4056 section 3); returns it and the hash OID."""
    if isinstance(params, asn1_core.Void) or params is None:
        raise PolicyViolation("RSASSA-PSS signature without parameters (SHA-1 defaults) refused")
    parsed = asn1_algos.RSASSAPSSParams.load(bytes(params.dump()))
    pss_hash_oid = parsed["hash_algorithm"]["algorithm"].dotted
    mgf = parsed["mask_gen_algorithm"]
    if mgf["algorithm"].dotted != _OID_MGF1:
        name = algorithm_name(mgf["algorithm"].dotted)
        raise PolicyViolation(f"RSASSA-PSS mask generation {name} unsupported")
    mgf_hash_oid = mgf["parameters"]["algorithm"].dotted
    if pss_hash_oid != hash_oid:
        raise SignatureError("RSASSA-PSS hash differs from the SignerInfo digest algorithm")
    _, mgf_hash_name = _digest_name(mgf_hash_oid, policy.name)
    salt = int(parsed["salt_length"].native)
    if parsed["trailer_field"].native not in ("trailer_field_bc", 1):
        raise SignatureError("RSASSA-PSS trailer field unsupported")
    return padding.PSS(mgf=padding.MGF1(_HASHES[mgf_hash_name]()), salt_length=salt), pss_hash_oid


def _verify_signer(
    info: _SignerInfoData,
    index: _CertIndex,
    econtent_type: str,
    content: bytes,
    digests: dict[str, bytes],
    policy: SecurityPolicy,
) -> SignerResult:
    """Check one SignerInfo; raise PolicyViolation or SignatureError with the reason it fails."""
    cert = index.find(info.sid)
    if cert is None:
        raise SignatureError("signer certificate not found")
    digest, hash_name = _digest_name(info.digest_oid, policy.name)
    policy.check_signature_digest(digest)

    scheme_entry = _SIGNATURE_ALGORITHMS.get(info.signature_oid)
    if scheme_entry is None:
        raise PolicyViolation(
            f"signature algorithm {algorithm_name(info.signature_oid)} not supported",
            algorithm=info.signature_oid,
        )
    scheme, implied_hash_oid = scheme_entry
    if implied_hash_oid is not None and implied_hash_oid != info.digest_oid:
        implied, _ = _digest_name(implied_hash_oid, policy.name)
        policy.check_signature_digest(implied)
        raise SignatureError(
            f"signature algorithm {algorithm_name(info.signature_oid)} "
            f"does not match digest {digest.display_name}"
        )

    public_key = cert._public_key()  # loaded once per certificate; None when cryptography cannot load it
    if public_key is None:
        raise PolicyViolation(f"signer key of {cert.describe()} is not supported")
    hash_algorithm = _HASHES[hash_name]()
    if scheme in ("rsa-pkcs1", "rsassa-pss"):
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise SignatureError(f"{scheme} signature but the signer key is not RSA")
        policy.check_rsa_key_size(public_key.key_size, purpose="signer key")
        pad: padding.AsymmetricPadding
        if scheme == "rsassa-pss":
            pad, _ = _pss_parameters(info.signature_params, info.digest_oid, policy)
        else:
            pad = padding.PKCS1v15()
    else:
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise SignatureError("ECDSA signature but the signer key is not EC")
        policy.check_curve(public_key.curve.name)

    if info.digest_oid not in digests:
        digests[info.digest_oid] = _HASH_NEW[hash_name](content).digest()
    content_digest = digests[info.digest_oid]

    if info.signed_attrs_der is not None:
        if info.content_type_attr is None or info.message_digest_attr is None:
            raise SignatureError("signed attributes lack contentType or messageDigest")
        if info.content_type_attr != econtent_type:
            raise SignatureError("contentType attribute does not match the encapsulated content type")
        if not hmac.compare_digest(info.message_digest_attr, content_digest):
            raise SignatureError("message digest mismatch")
        data: bytes = info.signed_attrs_der
        algorithm: hashes.HashAlgorithm | utils.Prehashed = hash_algorithm
    else:
        if econtent_type != _OID_DATA:
            raise SignatureError("signed attributes are required when the content type is not id-data")
        data = content_digest
        algorithm = utils.Prehashed(hash_algorithm)

    try:
        if scheme == "ecdsa":
            assert isinstance(public_key, ec.EllipticCurvePublicKey)
            public_key.verify(info.signature, data, ec.ECDSA(algorithm))
        else:
            assert isinstance(public_key, rsa.RSAPublicKey)
            public_key.verify(info.signature, data, pad, algorithm)
    except InvalidSignature:
        raise SignatureError("bad signature") from None
    return SignerResult(
        certificate=cert,
        digest=digest,
        signature_algorithm=scheme,
        signing_time=info.signing_time,
    )


@dataclass(frozen=True)
class _SignedDataParse:
    """What :func:`verify` reads of a SignedData (the encapsulated content only when asn1crypto found it)."""

    econtent_type: str
    encapsulated: bytes | None
    certificates: tuple[Certificate, ...]
    infos: tuple[_SignerInfoData, ...]


def _parse_signed_data(data: bytes) -> _SignedDataParse:
    """Parse a ContentInfo(SignedData) with asn1crypto (any BER); MessageFormatError when malformed."""
    _, sd = _load_content_info(data, (_OID_SIGNED_DATA,), "SignedData")
    try:
        encap = sd["encap_content_info"]
        econtent_type = encap["content_type"].dotted
        econtent = encap["content"]
        encapsulated = None
        if not (isinstance(econtent, asn1_core.Void) or econtent is None):
            encapsulated = _octets(econtent)
        if len(sd["signer_infos"]) > MAX_SIGNER_INFOS:
            raise MessageFormatError(
                f"SignedData has {len(sd['signer_infos'])} SignerInfos; at most {MAX_SIGNER_INFOS} are accepted"
            )
        certificates = _load_certificates(sd)
        infos = tuple(_parse_signer_info(si) for si in sd["signer_infos"])
    except HispError:
        raise
    except _PARSE_ERRORS as exc:
        raise _parse_error("SignedData", exc) from None
    return _SignedDataParse(econtent_type, encapsulated, certificates, infos)


_ATTR_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_ATTR_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_ATTR_SIGNING_TIME = "1.2.840.113549.1.9.5"


def _fast_signed_data(data: bytes) -> _SignedDataParse | None:
    """:func:`_parse_signed_data` of a strict-DER SignedData of the usual shape; None: leave it to asn1crypto.

    The shape: version, digestAlgorithms, encapContentInfo without content (detached) or with id-data in a
    primitive OCTET STRING (copied out once), certificates (X.509 only, at most :data:`MAX_CERTIFICATES`), no
    CRLs, at most :data:`MAX_SIGNER_INFOS` SignerInfos, none RSASSA-PSS.
    """
    try:
        _, body = _der_content_info(data, (_OID_SIGNED_DATA,))
        fields = _der_children(data, body[2], body[3])
        _der_expect(fields, 0, 0x02)  # version
        _der_expect(fields, 1, 0x31)  # digestAlgorithms (not read: each SignerInfo names its own)
        encap = _der_children(data, fields[2][2], fields[2][3]) if len(fields) > 2 and fields[2][0] == 0x30 else []
        if not 1 <= len(encap) <= 2:
            raise _NotPlainDer
        econtent_type = _der_oid(data, encap[0])
        encapsulated = None
        if len(encap) == 2:
            # eContent: [0] EXPLICIT OCTET STRING, primitive; other content types are read by asn1crypto's path
            octets = _der_children(data, encap[1][2], encap[1][3]) if encap[1][0] == 0xA0 else []
            if len(octets) != 1 or econtent_type != _OID_DATA:
                raise _NotPlainDer
            encapsulated = _der_octets(data, octets[0])
        index = 3
        certificates: list[Certificate] = []
        if index < len(fields) and fields[index][0] == 0xA0:
            elements = _der_children(data, fields[index][2], fields[index][3])
            if len(elements) > MAX_CERTIFICATES:
                raise _NotPlainDer
            for element in elements:
                if element[0] != 0x30:
                    raise _NotPlainDer  # attribute or other certificate choices
                try:
                    certificates.append(Certificate.from_der(data[element[1] : element[3]]))
                except (HispError, InvalidVersion, *_PARSE_ERRORS):
                    continue  # as _load_certificates: one we cannot load cannot be a signer we can check
            index += 1
        signer_infos = _der_expect(fields, index, 0x31)
        if index + 1 != len(fields):
            raise _NotPlainDer  # CRLs, or something after signerInfos
        elements = _der_children(data, signer_infos[2], signer_infos[3])
        if len(elements) > MAX_SIGNER_INFOS:
            raise _NotPlainDer
        infos = tuple(_fast_signer_info(data, element) for element in elements)
    except (_NotPlainDer, IndexError):  # IndexError: a shape check missed (asn1crypto then decides)
        return None
    return _SignedDataParse(econtent_type, encapsulated, tuple(certificates), infos)


def _fast_signer_info(data: bytes, element: tuple[int, int, int, int]) -> _SignerInfoData:
    """:func:`_parse_signer_info` of a strict-DER SignerInfo (not RSASSA-PSS); raises _NotPlainDer otherwise."""
    if element[0] != 0x30:
        raise _NotPlainDer
    fields = _der_children(data, element[2], element[3])
    _der_expect(fields, 0, 0x02)  # version
    sid = _der_identifier(data, fields[1]) if len(fields) > 1 else None
    if sid is None:
        raise _NotPlainDer
    digest_oid, _ = _der_algorithm(data, _der_expect(fields, 2, 0x30), "digest")
    index = 3
    signed_attrs = None
    if index < len(fields) and fields[index][0] == 0xA0:
        signed_attrs = fields[index]
        index += 1
    signature_oid, _ = _der_algorithm(data, _der_expect(fields, index, 0x30), "signature")
    if signature_oid == _OID_RSASSA_PSS:
        raise _NotPlainDer  # its parameters are read by asn1crypto
    signature = _der_octets(data, _der_expect(fields, index + 1, 0x04))
    if index + 2 < len(fields) and (fields[index + 2][0] != 0xA1 or index + 3 != len(fields)):
        raise _NotPlainDer  # only unsignedAttrs may follow
    if signed_attrs is None:
        return _SignerInfoData(sid, digest_oid, None, None, None, None, signature_oid, None, signature)
    # RFC 5652 section 5.4: the signature covers the SET OF encoding of the bytes received.
    signed_attrs_der = b"\x31" + data[signed_attrs[1] + 1 : signed_attrs[3]]
    content_type = message_digest = signing_time = None
    seen: set[str] = set()
    for attribute in _der_children(data, signed_attrs[2], signed_attrs[3]):
        if attribute[0] != 0x30:
            raise _NotPlainDer
        parts = _der_children(data, attribute[2], attribute[3])
        if len(parts) != 2 or parts[1][0] != 0x31:
            raise _NotPlainDer
        oid = _der_oid(data, parts[0])
        if oid not in (_ATTR_CONTENT_TYPE, _ATTR_MESSAGE_DIGEST, _ATTR_SIGNING_TIME):
            continue
        if oid in seen:
            raise _NotPlainDer  # asn1crypto's path refuses it, naming the attribute
        seen.add(oid)
        values = _der_children(data, parts[1][2], parts[1][3])
        if len(values) != 1:
            raise _NotPlainDer
        if oid == _ATTR_CONTENT_TYPE:
            content_type = _der_oid(data, values[0])
        elif oid == _ATTR_MESSAGE_DIGEST:
            message_digest = _der_octets(data, values[0])
        else:
            signing_time = _der_signing_time(data, values[0])
    return _SignerInfoData(
        sid, digest_oid, signed_attrs_der, content_type, message_digest, signing_time, signature_oid, None, signature
    )


def verify(
    signed_data: bytes,
    *,
    content: bytes | None = None,
    policy: SecurityPolicy,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SignatureVerdict:
    """Verify every SignerInfo of a SignedData; succeed when at least one is valid.

    For each SignerInfo (order-independent): find its certificate among those carried (issuerAndSerialNumber
    or subjectKeyIdentifier), check the digest against the policy (MD5 always refused), check the key
    (RSA size, EC curve), recompute the messageDigest over the exact content bytes, check the contentType
    attribute, and verify the signature over the original DER of the signed attributes (or over the content
    when there are none). Signatures: RSA PKCS#1 v1.5 (rsaEncryption or shaNWithRSAEncryption OIDs),
    RSASSA-PSS, ECDSA. Trust and path validation are not done here: the security agent does them.

    :param signed_data: DER (or BER) ContentInfo(SignedData), at most ``max_bytes`` bytes.
    :param content: the signed bytes for a detached signature exactly as received (between the
        multipart/signed boundaries); None when the content is encapsulated.
    :param policy: the security policy (accepted digests, RSA key size, curves).
    :param max_bytes: size limit of ``signed_data`` in bytes (default 64 MiB).
    :returns: the verdict: valid signers, invalid signers with reasons, certificates and content.
    :raises MessageFormatError: not a ContentInfo(SignedData), malformed, larger than ``max_bytes``, detached
        without ``content``, or content both encapsulated and given.
    :raises PolicyViolation: no signer is valid and at least one failed on policy (weak digest, short key,
        curve, unsupported algorithm), e.g. ``"SHA-1 refused by policy direct-1.3"``.
    :raises SignatureError: no signer is valid: ``"message digest mismatch"``, ``"bad signature"``,
        ``"signer certificate not found"``, or the SignedData has no SignerInfo.
    Spec: RFC 5652 sections 5.4 and 5.6; RFC 8551 section 2.5; RFC 4056; RFC 5753; AS-8, AS-14, AS-15.
    """
    _check_input(signed_data, max_bytes, "SignedData")
    data = signed_data if isinstance(signed_data, bytes) else bytes(signed_data)
    parsed = _fast_signed_data(data)
    encapsulated: bytes | None = None
    if parsed is None:
        lifted = _lift_content(data, (_OID_SIGNED_DATA,))
        if lifted is not None:
            data, view = lifted
            encapsulated = bytes(view)
        parsed = _parse_signed_data(data)
    econtent_type, certificates, infos = parsed.econtent_type, parsed.certificates, parsed.infos
    if parsed.encapsulated is not None:
        encapsulated = parsed.encapsulated

    if content is None:
        if encapsulated is None:
            raise MessageFormatError("detached SignedData: the signed content must be given")
        signed_content = encapsulated
    else:
        if encapsulated is not None:
            raise MessageFormatError("SignedData encapsulates its content but detached content was given")
        signed_content = content if isinstance(content, bytes) else bytes(content)
    if not infos:
        raise SignatureError("no signature: the SignedData has no SignerInfo")

    index = _CertIndex.build(certificates)
    digests: dict[str, bytes] = {}
    valid: list[SignerResult] = []
    failures: list[tuple[str, HispError]] = []
    for info in infos:
        description = info.sid.description
        found = index.find(info.sid)
        if found is not None:
            description = _describe(found)
        try:
            valid.append(_verify_signer(info, index, econtent_type, signed_content, digests, policy))
        except (PolicyViolation, SignatureError) as exc:
            failures.append((description, exc))
        except _PARSE_ERRORS as exc:  # malformed algorithm parameters of this SignerInfo
            failures.append((description, _parse_error("SignerInfo", exc)))
    invalid = tuple((d, e.message) for d, e in failures)
    if not valid:
        for _, failure in failures:
            if isinstance(failure, PolicyViolation):
                raise PolicyViolation(failure.message, signers=invalid)
        first = failures[0][1]
        if isinstance(first, MessageFormatError):
            raise MessageFormatError(first.message, signers=invalid)
        raise SignatureError(first.message, signers=invalid)
    return SignatureVerdict(
        valid_signers=tuple(valid),
        invalid_signers=invalid,
        certificates=certificates,
        content=signed_content,
    )


# --------------------------------------------------------------------------------------------------------
# encrypt
# --------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _oid_der(oid: str) -> bytes:
    """The DER of an OBJECT IDENTIFIER (asn1crypto's encoding, remembered)."""
    return bytes(asn1_core.ObjectIdentifier(oid).dump())


def _encrypt_content(
    pieces: Sequence[bytes], cipher: ContentCipher
) -> tuple[bytes, bytes, int, Callable[[memoryview], bytes]]:
    """Set up encryption of the concatenated ``pieces`` with a fresh key.

    Returns (key, the ContentEncryptionAlgorithmIdentifier's DER, ciphertext length, ``write``): ``write(out)``
    encrypts the pieces straight into ``out`` (at least the ciphertext length + 15 bytes) and returns the GCM
    tag, or b''.
    """
    key = os.urandom(cipher.key_size)
    length = sum(len(piece) for piece in pieces)
    if cipher.authenticated:
        nonce = os.urandom(_GCM_NONCE_BYTES)
        # GCMParameters (RFC 5084 section 3.2): the nonce, and the ICV length (16, not the default 12)
        params = _tlv(0x30, _tlv(0x04, nonce), _tlv(0x02, bytes([_GCM_TAG_BYTES])))
        algorithm = _tlv(0x30, _oid_der(_CIPHER_OID[cipher]), params)
        gcm_encryptor = Cipher(_AES(key), _GCM(nonce)).encryptor()

        def write_gcm(out: memoryview) -> bytes:
            written = 0
            for piece in pieces:
                written += gcm_encryptor.update_into(piece, out[written:])
            gcm_encryptor.finalize()
            return gcm_encryptor.tag

        return key, algorithm, length, write_gcm
    iv = os.urandom(_AES_BLOCK)
    algorithm = _tlv(0x30, _oid_der(_CIPHER_OID[cipher]), _tlv(0x04, iv))  # RFC 3565 section 4.1: the IV
    # PKCS#7 padding (RFC 5652 section 6.3) fed as one more piece: no copy of the content.
    pad = _AES_BLOCK - length % _AES_BLOCK
    encryptor = Cipher(_AES(key), _CBC(iv)).encryptor()

    def write_cbc(out: memoryview) -> bytes:
        written = 0
        for piece in (*pieces, bytes([pad]) * pad):
            written += encryptor.update_into(piece, out[written:])
        encryptor.finalize()
        return b""

    return key, algorithm, length + pad, write_cbc


def _check_recipient(cert: Certificate, recipient_identifier: str) -> rsa.RSAPublicKey:
    """The recipient's RSA key; refuse a certificate we may not or cannot encrypt to."""
    public_key = cert._public_key()  # loaded once per certificate; None when cryptography cannot load it
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise PolicyViolation(
            f"recipient certificate {cert.describe()} has a {cert.key_description} key, not RSA",
            certificate=cert.describe(),
        )
    if not cert.can_encipher:
        raise PolicyViolation(
            f"recipient certificate {cert.describe()} cannot encipher: keyUsage lacks keyEncipherment (AS-4)",
            certificate=cert.describe(),
        )
    if recipient_identifier == "ski":
        ski = cert.subject_key_identifier
        if not ski:
            raise ConfigError(f"recipient certificate {cert.describe()} has no subjectKeyIdentifier")
    return public_key


@functools.lru_cache(maxsize=8)
def _key_encryption_algorithm_der(key_transport: KeyTransport) -> bytes:
    if key_transport is KeyTransport.RSA_OAEP:
        algorithm = asn1_cms.KeyEncryptionAlgorithm(
            {"algorithm": "rsaes_oaep", "parameters": asn1_algos.RSAESOAEPParams.load(_oaep_params_der())}
        )
    else:
        algorithm = asn1_cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"})
    return bytes(algorithm.dump())


_KTRI_VERSION_DER = {"ski": bytes(asn1_core.Integer(2).dump()), "issuer_serial": bytes(asn1_core.Integer(0).dump())}


#: RSAES-OAEP with SHA-256 and MGF1-SHA-256 (AS-10), the padding every outgoing key is wrapped with (immutable).
_OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _recipient_info(
    cert: Certificate,
    key: bytes,
    key_transport: KeyTransport,
    recipient_identifier: str,
    public_key: rsa.RSAPublicKey,
) -> bytes:
    """The KeyTransRecipientInfo of ``cert`` for ``key``, DER (``public_key``: as :func:`_check_recipient` gave it)."""
    if recipient_identifier == "ski":
        rid = _tlv(0x80, bytes(cert.subject_key_identifier or b""))  # [0] IMPLICIT SubjectKeyIdentifier
        version = _KTRI_VERSION_DER["ski"]  # v2
    else:
        rid = _issuer_and_serial_der(cert.der)
        version = _KTRI_VERSION_DER["issuer_serial"]  # v0
    if key_transport is KeyTransport.RSA_OAEP:
        encrypted_key = public_key.encrypt(key, _OAEP_SHA256)
    else:
        encrypted_key = public_key.encrypt(key, padding.PKCS1v15())
    # KeyTransRecipientInfo (RFC 5652 section 6.2.1), the untagged "ktri" choice of RecipientInfo
    return _tlv(0x30, version, rid, _key_encryption_algorithm_der(key_transport), _tlv(0x04, encrypted_key))


def encrypt(
    content: bytes,
    recipients: Sequence[Certificate],
    *,
    cipher: ContentCipher = ContentCipher.AES128_CBC,
    key_transport: KeyTransport = KeyTransport.RSA_OAEP,
    recipient_identifier: Literal["issuer_serial", "ski"] = "issuer_serial",
) -> bytes:
    """Encrypt ``content`` to every recipient certificate and return a DER ContentInfo.

    AES-CBC gives an EnvelopedData; AES-GCM an AuthEnvelopedData with GCMParameters (12-byte nonce, 16-byte
    ICV). One KeyTransRecipientInfo per certificate, in order (AS-11); RSAES-OAEP uses SHA-256 and
    MGF1-SHA-256 with explicit RSAES-OAEP-params, PKCS#1 v1.5 uses rsaEncryption.

    :param content: the bytes to encrypt (for Direct: the signed MIME entity). Not copied before encryption.
    :param recipients: the recipients' encryption certificates (RSA, keyUsage keyEncipherment).
    :param cipher: content-encryption algorithm (default AES-128-CBC, AS-9).
    :param key_transport: RSA key transport (default RSAES-OAEP, AS-10).
    :param recipient_identifier: ``"issuer_serial"`` (issuerAndSerialNumber, KTRI version 0) or ``"ski"``
        (subjectKeyIdentifier, KTRI version 2).
    :returns: DER ContentInfo(EnvelopedData) or ContentInfo(AuthEnvelopedData).
    :raises ConfigError: no recipients, an unknown ``recipient_identifier``, or ``"ski"`` with a certificate
        lacking the subjectKeyIdentifier extension.
    :raises PolicyViolation: a recipient certificate that cannot encipher (AS-4) or whose key is not RSA.
    Spec: RFC 5652 sections 6.1-6.3; RFC 5083; RFC 5084 section 3.2; RFC 3565; RFC 3560; RFC 8017
    sections 7.1-7.2; AS-9, AS-10, AS-11.
    """
    return _encrypt(
        (content,), recipients, cipher=cipher, key_transport=key_transport, recipient_identifier=recipient_identifier
    )


def _encrypt(
    pieces: Sequence[bytes],
    recipients: Sequence[Certificate],
    *,
    cipher: ContentCipher = ContentCipher.AES128_CBC,
    key_transport: KeyTransport = KeyTransport.RSA_OAEP,
    recipient_identifier: str = "issuer_serial",
) -> bytes:
    """:func:`encrypt` of the concatenation of ``pieces``, which is never built: each piece is encrypted in turn."""
    if not recipients:
        raise ConfigError("encrypt: no recipient certificates given")
    if recipient_identifier not in ("issuer_serial", "ski"):
        raise ConfigError(
            f"unknown recipient_identifier {recipient_identifier!r}: use 'issuer_serial' or 'ski'"
        )
    if type(cipher) is not ContentCipher:  # a member is itself (Enum's __call__ is a Python call)
        cipher = ContentCipher(cipher)
    if type(key_transport) is not KeyTransport:
        key_transport = KeyTransport(key_transport)
    authenticated = cipher.authenticated
    # every recipient checked before the (possibly large) content is encrypted
    public_keys = [_check_recipient(cert, recipient_identifier) for cert in recipients]
    key, algorithm, ciphertext_length, write_ciphertext = _encrypt_content(pieces, cipher)
    infos = [
        _recipient_info(cert, key, key_transport, recipient_identifier, public_key)
        for cert, public_key in zip(recipients, public_keys, strict=True)
    ]
    recipient_infos = _tlv(0x31, *sorted(infos))  # a DER SET OF: elements in the order of their encodings

    # The DER is assembled by hand around the ciphertext, which is encrypted straight into the result.
    eci_head = _oid_der(_OID_DATA) + algorithm
    ct_header = _der_header(0x80, ciphertext_length)  # [0] IMPLICIT OCTET STRING, primitive
    eci_length = len(eci_head) + len(ct_header) + ciphertext_length
    eci_header = _der_header(0x30, eci_length)
    if authenticated:
        version = _KTRI_VERSION_DER["issuer_serial"]  # INTEGER 0: RFC 5083 section 2.1, always 0
        trailer_length = len(_der_header(0x04, _GCM_TAG_BYTES)) + _GCM_TAG_BYTES  # mac
        outer_oid = _oid_der(_OID_AUTH_ENVELOPED_DATA)
    else:
        # RFC 5652 section 6.1: version 2 when any RecipientInfo is not version 0 (KTRI by SKI), else 0.
        version = _KTRI_VERSION_DER[recipient_identifier]  # INTEGER 2 or 0
        trailer_length = 0
        outer_oid = _oid_der(_OID_ENVELOPED_DATA)
    body_length = len(version) + len(recipient_infos) + len(eci_header) + eci_length + trailer_length
    body_header = _der_header(0x30, body_length)
    explicit_length = len(body_header) + body_length
    explicit_header = _der_header(0xA0, explicit_length)
    info_header = _der_header(0x30, len(outer_oid) + len(explicit_header) + explicit_length)
    head = b"".join(
        [
            info_header,
            outer_oid,
            explicit_header,
            body_header,
            version,
            recipient_infos,
            eci_header,
            eci_head,
            ct_header,
        ]
    )
    total = len(head) + ciphertext_length + trailer_length
    # One buffer of the final size (plus the slack update_into asks for) that BytesIO.getvalue hands over
    # without a copy: the ciphertext exists once, in the result.
    out = io.BytesIO()
    out.write(head)
    out.seek(total + _AES_BLOCK - 1)
    out.write(b"\0")
    buffer = out.getbuffer()
    try:
        with buffer[len(head) :] as target:
            tag = write_ciphertext(target)
        if authenticated:
            trailer = _tlv(0x04, tag)
            if len(trailer) != trailer_length:  # pragma: no cover - the tag is always 16 bytes
                raise AssertionError("unexpected GCM tag length")
            buffer[len(head) + ciphertext_length : total] = trailer
    finally:
        buffer.release()
    out.truncate(total)
    return out.getvalue()


# --------------------------------------------------------------------------------------------------------
# decrypt
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyTrans:
    rid: _Identifier
    algorithm_oid: str
    parameters: Any
    encrypted_key: bytes


@dataclass(frozen=True)
class _Envelope:
    recipients: tuple[_KeyTrans, ...]
    recipient_count: int
    cipher_oid: str
    cipher_params: Any
    ciphertext: memoryview
    mac: bytes | None
    auth_attrs_der: bytes | None


def _load_envelope(data: bytes, ciphertext: memoryview | None) -> tuple[str, _Envelope]:
    """Parse a ContentInfo((Auth)EnvelopedData) with asn1crypto (any BER); MessageFormatError when malformed."""
    content_type, body = _load_content_info(data, (_OID_ENVELOPED_DATA, _OID_AUTH_ENVELOPED_DATA), "EnvelopedData")
    try:
        return content_type, _parse_envelope(content_type, body, ciphertext)
    except HispError:
        raise
    except _PARSE_ERRORS as exc:
        raise _parse_error("EnvelopedData", exc) from None


def _parse_envelope(content_type: str, body: Any, ciphertext: memoryview | None) -> _Envelope:
    authenticated = content_type == _OID_AUTH_ENVELOPED_DATA
    infos = body["recipient_infos"]
    recipients: list[_KeyTrans] = []
    count = 0
    for info in infos:
        count += 1
        if info.name != "ktri":
            continue  # KARI, KEKRI, PWRI, ORI: not for RSA credentials
        ktri = info.chosen
        alg = ktri["key_encryption_algorithm"]
        recipients.append(
            _KeyTrans(
                rid=_Identifier.parse(ktri["rid"]),
                algorithm_oid=alg["algorithm"].dotted,
                parameters=alg["parameters"],
                encrypted_key=_octets(ktri["encrypted_key"]),
            )
        )
    eci = body["auth_encrypted_content_info" if authenticated else "encrypted_content_info"]
    algorithm = eci["content_encryption_algorithm"]
    encrypted = eci["encrypted_content"]
    if ciphertext is None:
        if isinstance(encrypted, asn1_core.Void) or encrypted is None:
            raise MessageFormatError(
                "the encrypted content is absent (detached EnvelopedData is unsupported)"
            )
        ciphertext = memoryview(_octets(encrypted))
    mac = auth_attrs_der = None
    if authenticated:
        mac = _octets(body["mac"])
        auth_attrs = body["auth_attrs"]
        if not (isinstance(auth_attrs, asn1_core.Void) or auth_attrs is None):
            auth_attrs_der = bytes(auth_attrs.untag().dump())  # RFC 5083 section 2.2: AAD is the SET OF DER
    return _Envelope(
        recipients=tuple(recipients),
        recipient_count=count,
        cipher_oid=algorithm["algorithm"].dotted,
        cipher_params=algorithm["parameters"],
        ciphertext=ciphertext,
        mac=mac,
        auth_attrs_der=auth_attrs_der,
    )


_CBC_OIDS = frozenset(oid for oid, spec in _CIPHERS.items() if not spec.gcm)
_GCM_OIDS = frozenset(oid for oid, spec in _CIPHERS.items() if spec.gcm)


@dataclass(frozen=True)
class _FastCipherParams:
    """Content-encryption parameters read by :func:`_fast_envelope`: a CBC IV, or the GCMParameters' DER."""

    iv: bytes | None
    gcm_der: bytes | None


def _fast_envelope(data: bytes, ciphertext: memoryview | None) -> tuple[str, _Envelope] | None:
    """``_load_content_info`` + :func:`_parse_envelope` of a strict-DER (Auth)EnvelopedData of the usual shape.

    The shape: version, no originatorInfo, KeyTransRecipientInfos only, AES content encryption (CBC with a
    16-byte IV), the ciphertext (a view of ``data``, or ``ciphertext`` when lifted out by :func:`_lift_content`),
    no authAttrs and no unprotected attributes. None: leave it to asn1crypto (which also names a refused
    algorithm such as 3DES).
    """
    try:
        content_type, body = _der_content_info(data, (_OID_ENVELOPED_DATA, _OID_AUTH_ENVELOPED_DATA))
        authenticated = content_type == _OID_AUTH_ENVELOPED_DATA
        fields = _der_children(data, body[2], body[3])
        _der_expect(fields, 0, 0x02)  # version
        infos = _der_expect(fields, 1, 0x31)  # recipientInfos (an originatorInfo would be [0] here)
        recipients = []
        for info in _der_children(data, infos[2], infos[3]):
            if info[0] != 0x30:
                raise _NotPlainDer  # KARI, KEKRI, PWRI, ORI: asn1crypto's path skips them
            ktri = _der_children(data, info[2], info[3])
            if len(ktri) != 4:
                raise _NotPlainDer
            _der_expect(ktri, 0, 0x02)
            algorithm_oid, parameters = _der_algorithm(data, ktri[2], "key encryption")
            recipients.append(
                _KeyTrans(
                    rid=_der_identifier(data, ktri[1]),
                    algorithm_oid=algorithm_oid,
                    parameters=parameters,
                    encrypted_key=_der_octets(data, ktri[3]),
                )
            )
        eci = _der_children(data, fields[2][2], fields[2][3]) if len(fields) > 2 and fields[2][0] == 0x30 else []
        if len(eci) not in (2, 3) or eci[0][0] != 0x06 or eci[1][0] != 0x30:
            raise _NotPlainDer
        _der_oid(data, eci[0])  # contentType (not read)
        algorithm = _der_children(data, eci[1][2], eci[1][3])
        if len(algorithm) != 2:
            raise _NotPlainDer
        cipher_oid = _der_oid(data, algorithm[0])
        params_tag, params_header, params_start, params_end = algorithm[1]
        if cipher_oid in _CBC_OIDS and not authenticated:
            if params_tag != 0x04 or params_end - params_start != _AES_BLOCK:
                raise _NotPlainDer
            cipher_params = _FastCipherParams(data[params_start:params_end], None)
        elif cipher_oid in _GCM_OIDS and authenticated:
            cipher_params = _FastCipherParams(None, data[params_header:params_end])
        else:
            raise _NotPlainDer  # weak, unknown or misplaced algorithms: asn1crypto's path refuses them by name
        if len(eci) == 3:
            if eci[2][0] != 0x80 or ciphertext is not None:
                raise _NotPlainDer
            ciphertext = memoryview(data)[eci[2][2] : eci[2][3]]  # read in place, never copied
        elif ciphertext is None:
            raise _NotPlainDer  # detached: asn1crypto's path says so
        mac = None
        if authenticated:
            mac = _der_octets(data, _der_expect(fields, 3, 0x04))  # no authAttrs ([1]) before it
            if len(fields) != 4:
                raise _NotPlainDer
        elif len(fields) != 3:
            raise _NotPlainDer  # unprotectedAttrs
    except (_NotPlainDer, IndexError):  # IndexError: a shape check missed (asn1crypto then decides)
        return None
    envelope = _Envelope(
        recipients=tuple(recipients),
        recipient_count=len(recipients),
        cipher_oid=cipher_oid,
        cipher_params=cipher_params,
        ciphertext=ciphertext,
        mac=mac,
        auth_attrs_der=None,
    )
    return content_type, envelope


def _oaep_padding(parameters: Any, policy_name: str) -> tuple[padding.OAEP, str]:
    """OAEP padding from RSAES-OAEP-params (absent or empty: SHA-1 defaults, RFC 8017 appendix A.2.1).

    ``parameters``: asn1crypto's value, or their DER (``b""``: absent) as :func:`_fast_envelope` reads them.
    """
    if isinstance(parameters, bytes):
        return _oaep_padding_of(parameters, policy_name)
    if isinstance(parameters, asn1_core.Void) or parameters is None:
        return _oaep_padding_of(b"", policy_name)
    # Every message of a peer carries the same parameters: remembered by their DER (no element encodes to b"").
    if isinstance(parameters, asn1_algos.RSAESOAEPParams):
        # The received contents under a definite length: the same children, and the parsed value is left as it is
        # (dump() would re-encode an indefinite-length one, parsing its every child).
        contents = bytes(parameters.contents)
        return _oaep_padding_of(_der_header(0x30, len(contents)) + contents, policy_name)
    return _oaep_padding_of(bytes(parameters.dump()), policy_name)


@functools.lru_cache(maxsize=64)
def _oaep_padding_of(der: bytes, policy_name: str) -> tuple[padding.OAEP, str]:
    """:func:`_oaep_padding` of the parameters encoded as ``der`` (``b""``: absent). Failures are not cached."""
    parsed = asn1_algos.RSAESOAEPParams.load(der) if der else asn1_algos.RSAESOAEPParams({})
    hash_oid = parsed["hash_algorithm"]["algorithm"].dotted
    mgf = parsed["mask_gen_algorithm"]
    if mgf["algorithm"].dotted != _OID_MGF1:
        raise ValueError("OAEP mask generation function is not MGF1")
    mgf_hash_oid = mgf["parameters"]["algorithm"].dotted
    _, hash_name = _digest_name(hash_oid, policy_name)
    _, mgf_hash_name = _digest_name(mgf_hash_oid, policy_name)
    label = parsed["p_source_algorithm"]["parameters"].native or None
    name = f"rsa-oaep-{hash_name}" + ("" if mgf_hash_name == hash_name else f"-mgf1-{mgf_hash_name}")
    return (
        padding.OAEP(mgf=padding.MGF1(_HASHES[mgf_hash_name]()), algorithm=_HASHES[hash_name](), label=label),
        name,
    )


def _unwrap_key(
    recipient: _KeyTrans, private_key: rsa.RSAPrivateKey, key_size: int, policy_name: str
) -> tuple[bytes | None, str]:
    """The content-encryption key, or None when it certainly cannot be unwrapped (OAEP failure)."""
    if recipient.algorithm_oid == _OID_RSA_ENCRYPTION:
        # Bleichenbacher countermeasure (RFC 3218 section 2.3.2): on any failure carry on with a random key
        # so that the failure shows up as a content decryption error, indistinguishable from a bad padding.
        substitute = os.urandom(key_size)
        try:
            key = private_key.decrypt(recipient.encrypted_key, padding.PKCS1v15())
        except ValueError:
            key = substitute
        if len(key) != key_size:
            key = substitute
        return key, "rsa-pkcs1"
    try:
        oaep, name = _oaep_padding(recipient.parameters, policy_name)
    except _PARSE_ERRORS:
        return None, "rsa-oaep"
    # a PolicyViolation (MD5 or an unknown digest in the OAEP parameters) goes to the caller, who names it if no
    # other RecipientInfo opens the envelope: the parameters are public, so naming them reveals nothing
    try:
        key = private_key.decrypt(recipient.encrypted_key, oaep)
    except ValueError:
        return None, name
    return (key if len(key) == key_size else None), name


def _decrypt_content(
    envelope: _Envelope, spec: _CipherSpec, key: bytes, params: bytes | tuple[bytes, int]
) -> bytes | None:
    """Decrypt the content; None on a bad padding or tag (caller raises one message for every failure)."""
    ciphertext = envelope.ciphertext
    if isinstance(params, tuple):
        nonce, icv_len = params
        tag = envelope.mac or b""
        if len(tag) != icv_len:
            return None
        gcm = Cipher(_AES(key), _GCM(nonce, tag, min_tag_length=len(tag))).decryptor()
        if envelope.auth_attrs_der is not None:
            gcm.authenticate_additional_data(envelope.auth_attrs_der)
        plaintext = gcm.update(ciphertext)
        try:
            gcm.finalize()
        except InvalidTag:
            return None
        return plaintext
    if len(ciphertext) == 0 or len(ciphertext) % _AES_BLOCK:
        return None
    decryptor = Cipher(_AES(key), _CBC(params)).decryptor()
    # Decrypted straight into one buffer (with the slack update_into asks for), cut to the unpadded length
    # and handed over by BytesIO.getvalue without a copy: the plaintext exists once.
    size = len(ciphertext)
    out = io.BytesIO()
    out.seek(size + _AES_BLOCK - 1)
    out.write(b"\0")
    with out.getbuffer() as buffer:
        decryptor.update_into(ciphertext, buffer)
        decryptor.finalize()
        pad = buffer[size - 1]
        valid = 1 <= pad <= _AES_BLOCK and hmac.compare_digest(bytes(buffer[size - pad : size]), bytes([pad]) * pad)
    if not valid:
        return None
    out.truncate(size - pad)
    return out.getvalue()


def _cipher_parameters(
    envelope: _Envelope, spec: _CipherSpec, authenticated: bool
) -> bytes | tuple[bytes, int]:
    params = envelope.cipher_params
    if spec.gcm != authenticated:
        raise MessageFormatError(
            f"{spec.name} in {'AuthEnvelopedData' if authenticated else 'EnvelopedData'} is not allowed "
            "(RFC 5083: AES-GCM only in AuthEnvelopedData, AES-CBC only in EnvelopedData)"
        )
    if isinstance(params, _FastCipherParams):
        if params.iv is not None:
            return params.iv
        assert params.gcm_der is not None
        params = asn1_core.Any.load(params.gcm_der)  # as asn1crypto's path holds them
    if spec.gcm:
        gcm = _GcmParameters.load(bytes(params.dump()))
        nonce = _octets(gcm["aes_nonce"])
        icv_len = int(gcm["aes_icv_len"].native)
        if not 8 <= len(nonce) <= 128 or not 12 <= icv_len <= 16:
            raise ValueError("GCMParameters out of range (nonce 8-128 bytes, ICV 12-16 bytes)")
        return nonce, icv_len
    iv = params.native if isinstance(params, asn1_core.OctetString) else None
    if not isinstance(iv, bytes) or len(iv) != _AES_BLOCK:
        raise ValueError("AES-CBC parameters must be a 16-byte IV")
    return iv


def decrypt(
    enveloped: bytes,
    credentials: Sequence[Credential],
    *,
    policy: SecurityPolicy,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecryptedContent:
    """Decrypt an EnvelopedData or AuthEnvelopedData with whichever of our credentials it is addressed to.

    KeyTransRecipientInfos are matched by issuerAndSerialNumber or subjectKeyIdentifier against every
    credential (AS-4: single-use and dual-use alike); other RecipientInfo kinds are skipped. When a match
    cannot be unwrapped the next one is tried. Key transport: RSA PKCS#1 v1.5 and RSAES-OAEP with whatever
    hash and MGF1 hash the parameters name (SHA-1 defaults when absent). For PKCS#1 v1.5 an unwrap failure
    continues with a random key (Bleichenbacher countermeasure), so every failure shows as the same content
    decryption error.

    :param enveloped: DER (or BER) ContentInfo(EnvelopedData | AuthEnvelopedData), at most ``max_bytes``.
    :param credentials: our credentials (certificate and RSA private key); EC credentials are ignored.
    :param policy: the security policy (accepted content-encryption algorithms, AS-9).
    :param max_bytes: size limit of ``enveloped`` in bytes (default 64 MiB).
    :returns: the content, the algorithms used, the credential's certificate and the RecipientInfo count.
    :raises MessageFormatError: not a ContentInfo of those types, malformed, larger than ``max_bytes``, or
        the algorithm does not fit the content type (GCM in EnvelopedData, CBC in AuthEnvelopedData).
    :raises PolicyViolation: 3DES, DES, RC2 or RC4 (refused by name, AS-9), an algorithm the policy does not
        accept, or one not supported (AES-192 has no :class:`ContentCipher`); MD5 (or an unknown digest) in the
        RSAES-OAEP parameters of the only RecipientInfos for our keys, named.
    :raises DecryptionError: ``"no recipient matches our keys"``, or ``"content decryption failed"``
        (wrong key, bad padding, GCM tag mismatch, malformed ciphertext).
    Spec: RFC 5652 sections 6.2 and 6.4; RFC 5083; RFC 5084; RFC 3565; RFC 3560; RFC 8017 sections 7.1-7.2;
    RFC 3218 section 2.3.2; AS-4, AS-9, AS-10, AS-14.
    """
    _check_input(enveloped, max_bytes, "EnvelopedData")
    expected = (_OID_ENVELOPED_DATA, _OID_AUTH_ENVELOPED_DATA)
    data = enveloped if isinstance(enveloped, bytes) else bytes(enveloped)
    fast = _fast_envelope(data, None)
    if fast is None:
        lifted = _lift_content(data, expected)
        ciphertext: memoryview | None = None
        if lifted is not None:
            data, ciphertext = lifted
        fast = _load_envelope(data, ciphertext)
    content_type, envelope = fast
    authenticated = content_type == _OID_AUTH_ENVELOPED_DATA

    weak = _WEAK_CIPHERS.get(envelope.cipher_oid)
    if weak is not None:
        raise refuse_weak_algorithm(weak, policy.name)
    spec = _CIPHERS.get(envelope.cipher_oid)
    if spec is None or spec.cipher is None:
        raise PolicyViolation(
            f"content encryption {algorithm_name(envelope.cipher_oid)} not supported by policy {policy.name}",
            algorithm=algorithm_name(envelope.cipher_oid),
        )
    policy.check_cipher(spec.cipher)
    try:
        params = _cipher_parameters(envelope, spec, authenticated)
    except HispError:
        raise
    except _PARSE_ERRORS as exc:
        raise _parse_error("content-encryption parameters", exc) from None

    candidates: list[tuple[_KeyTrans, Credential]] = []
    for recipient in envelope.recipients:
        if recipient.algorithm_oid not in (_OID_RSA_ENCRYPTION, _OID_RSAES_OAEP):
            continue
        for credential in credentials:
            if isinstance(credential.private_key, rsa.RSAPrivateKey) and recipient.rid.matches(
                credential.certificate
            ):
                candidates.append((recipient, credential))
    if not candidates:
        raise DecryptionError(
            "no recipient matches our keys",
            recipients=tuple(r.rid.description for r in envelope.recipients),
        )

    refused: PolicyViolation | None = None
    for recipient, credential in candidates:
        assert isinstance(credential.private_key, rsa.RSAPrivateKey)
        try:
            key, transport = _unwrap_key(recipient, credential.private_key, spec.key_size, policy.name)
        except PolicyViolation as exc:  # e.g. MD5 in RSAES-OAEP-params: try the others, then say so
            refused = refused or exc
            continue
        if key is None:
            continue
        plaintext = _decrypt_content(envelope, spec, key, params)
        if plaintext is None:
            continue
        return DecryptedContent(
            content=plaintext,
            cipher=spec.cipher,
            key_transport=transport,
            recipient=credential.certificate,
            recipient_count=envelope.recipient_count,
        )
    if refused is not None:
        raise refused
    raise DecryptionError("content decryption failed", cipher=spec.name)
