"""Security policy: which algorithms, key sizes and options the security agent uses and accepts.

A policy is immutable data with named presets (DESIGN.md section 6.4):

* ``direct-1.3`` (default): AS 1.3. Signs with SHA-256; accepts SHA-256/384/512 signatures only (AS-8),
  RSA keys of at least 2048 bits and ECDSA P-256/P-384 (AS-5), AES-CBC and AES-GCM content encryption
  (AS-9), RSA PKCS#1 v1.5 and RSAES-OAEP key transport on receipt (AS-10); sends RSAES-OAEP (SHA-256).
* ``direct-1.2``: AS 1.2 compatible. As above, but also accepts SHA-1 signatures and SHA-1-signed
  certificates on receipt (still sends SHA-256) and sends RSA PKCS#1 v1.5 key transport, which every
  legacy peer can decrypt.

Refused everywhere, by name: MD5, 3DES, DES, RC2 (AS-8, AS-9).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from hisp.errors import ConfigError, PolicyViolation

__all__ = [
    "DEFAULT_POLICY",
    "PRESETS",
    "ContentCipher",
    "DigestAlgorithm",
    "Direction",
    "KeyTransport",
    "RevocationMode",
    "SecurityPolicy",
    "policy_from_name",
    "refuse_weak_algorithm",
]


class Direction(enum.Enum):
    """Direction relative to this HISP (glossary): incoming = senders we accept, outgoing = recipients
    we encrypt to. Trust anchors are configured separately for each (AS-21)."""

    INCOMING = "incoming"
    OUTGOING = "outgoing"


class RevocationMode(enum.Enum):
    """What an unreachable revocation source means for a trust store (AS-20).

    ``hard``: reject; ``soft``: accept with a warning in the verdict (a revoked answer always rejects);
    ``off``: revocation is not checked.
    """

    HARD = "hard"
    SOFT = "soft"
    OFF = "off"


class DigestAlgorithm(enum.Enum):
    """Message digest algorithms, valued by their RFC 5751 ``micalg`` name."""

    SHA256 = "sha-256"
    SHA384 = "sha-384"
    SHA512 = "sha-512"
    SHA1 = "sha-1"
    MD5 = "md5"

    @property
    def display_name(self) -> str:
        """Name for people: ``SHA-256``, ``SHA-1``, ``MD5``."""
        return self.value.upper()

    @classmethod
    def from_name(cls, name: str) -> DigestAlgorithm:
        """Parse a digest name in any spelling peers use: ``sha-256``, ``sha256``, ``SHA256``, ``"sha1"``.

        :param name: a micalg value (RFC 5751 section 3.4.3.2) or an algorithm name, quoted or not.
        :returns: the algorithm.
        :raises PolicyViolation: for a name that is not a digest we know.
        """
        key = name.strip().strip('"').strip().lower().replace("-", "").replace("_", "")
        for member in cls:
            if member.value.replace("-", "") == key:
                return member
        raise PolicyViolation(f"unknown digest algorithm {name!r}", algorithm=name)


class ContentCipher(enum.Enum):
    """Content-encryption algorithms (RFC 3565 AES-CBC, RFC 5084 AES-GCM), valued by CLI name."""

    AES128_CBC = "aes128-cbc"
    AES256_CBC = "aes256-cbc"
    AES128_GCM = "aes128-gcm"
    AES256_GCM = "aes256-gcm"

    @property
    def key_size(self) -> int:
        """Key size in bytes."""
        return 16 if self.name.startswith("AES128") else 32

    @property
    def authenticated(self) -> bool:
        """True for AES-GCM (carried in AuthEnvelopedData, RFC 5083)."""
        return self.name.endswith("GCM")


class KeyTransport(enum.Enum):
    """RSA key transport for KeyTransRecipientInfo, valued by CLI name."""

    RSA_PKCS1 = "rsa-pkcs1"  # rsaEncryption, RFC 8017 section 7.2 (RSAES-PKCS1-v1_5)
    RSA_OAEP = "rsa-oaep"  # id-RSAES-OAEP with SHA-256 and MGF1-SHA-256, RFC 8017 section 7.1, RFC 3560


@dataclass(frozen=True)
class SecurityPolicy:
    """What the security agent sends and what it accepts.

    :ivar name: the preset name, e.g. ``"direct-1.3"``.
    :ivar digest: digest used to sign outgoing messages (AS-8: SHA-256).
    :ivar cipher: content encryption for outgoing messages (AS-9: AES-128-CBC minimum).
    :ivar key_transport: RSA key transport for outgoing messages (AS-10).
    :ivar accepted_digests: digests accepted in incoming signatures (AS-8).
    :ivar accepted_certificate_digests: digests accepted in certificate signatures on receipt.
    :ivar accepted_ciphers: content-encryption algorithms accepted on receipt (AS-9).
    :ivar min_rsa_bits: smallest RSA modulus accepted for signing, encryption and decryption (AS-5).
    :ivar allowed_curves: ECDSA curves accepted in signatures (AS 1.3: P-256 and P-384).
    :ivar copy_subject: copy Subject to the outer headers when wrapping (AS-12); turn off to keep PHI out.
    :ivar clock_skew: allowance in seconds when checking certificate validity periods.
    """

    name: str
    digest: DigestAlgorithm = DigestAlgorithm.SHA256
    cipher: ContentCipher = ContentCipher.AES128_CBC
    key_transport: KeyTransport = KeyTransport.RSA_OAEP
    accepted_digests: frozenset[DigestAlgorithm] = field(
        default=frozenset({DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512})
    )
    accepted_certificate_digests: frozenset[DigestAlgorithm] = field(
        default=frozenset({DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512})
    )
    accepted_ciphers: frozenset[ContentCipher] = frozenset(ContentCipher)
    min_rsa_bits: int = 2048
    allowed_curves: frozenset[str] = frozenset({"secp256r1", "secp384r1"})
    copy_subject: bool = True
    clock_skew: int = 300

    def __post_init__(self) -> None:
        if self.digest not in self.accepted_digests:
            raise ConfigError(f"policy {self.name}: sending digest {self.digest.display_name} is not accepted")
        if self.digest in (DigestAlgorithm.SHA1, DigestAlgorithm.MD5):
            raise ConfigError(f"policy {self.name}: {self.digest.display_name} may not be used to sign (AS-8)")
        if DigestAlgorithm.MD5 in self.accepted_digests | self.accepted_certificate_digests:
            raise ConfigError(f"policy {self.name}: MD5 may never be accepted (AS-8)")
        if self.min_rsa_bits < 1024:
            raise ConfigError(f"policy {self.name}: min_rsa_bits {self.min_rsa_bits} is below 1024")
        if self.clock_skew < 0:
            raise ConfigError(f"policy {self.name}: clock_skew must be >= 0 seconds")

    def with_options(self, **changes: object) -> SecurityPolicy:
        """A copy with some fields changed (validated again).

        :raises ConfigError: when the result is inconsistent.
        """
        return replace(self, **changes)  # type: ignore[arg-type]

    def check_signature_digest(self, digest: DigestAlgorithm) -> None:
        """Refuse a digest in an incoming message signature.

        :raises PolicyViolation: e.g. ``"SHA-1 refused by policy direct-1.3"`` (AS-8).
        """
        if digest not in self.accepted_digests:
            raise PolicyViolation(
                f"{digest.display_name} refused by policy {self.name}", algorithm=digest.display_name
            )

    def check_certificate_digest(self, digest: DigestAlgorithm) -> None:
        """Refuse a digest used in a certificate's signature.

        :raises PolicyViolation: e.g. ``"SHA-1-signed certificate refused by policy direct-1.3"``.
        """
        if digest not in self.accepted_certificate_digests:
            raise PolicyViolation(
                f"{digest.display_name}-signed certificate refused by policy {self.name}",
                algorithm=digest.display_name,
            )

    def check_cipher(self, cipher: ContentCipher) -> None:
        """Refuse a content-encryption algorithm on receipt.

        :raises PolicyViolation: when the policy does not accept it.
        """
        if cipher not in self.accepted_ciphers:
            raise PolicyViolation(f"{cipher.value} refused by policy {self.name}", algorithm=cipher.value)

    def check_rsa_key_size(self, bits: int, *, purpose: str = "key") -> None:
        """Refuse a short RSA key (AS-5).

        :param bits: the modulus size in bits.
        :param purpose: what the key is for, used in the message (``"signer key"``, ``"recipient key"``).
        :raises PolicyViolation: when ``bits < min_rsa_bits``.
        """
        if bits < self.min_rsa_bits:
            raise PolicyViolation(
                f"RSA-{bits} {purpose} refused by policy {self.name} (minimum {self.min_rsa_bits})",
                key_bits=bits,
            )

    def check_curve(self, curve: str) -> None:
        """Refuse an ECDSA curve not allowed (AS-5, AS 1.3: P-256 and P-384).

        :param curve: the cryptography curve name, e.g. ``"secp256r1"``.
        :raises PolicyViolation: when not allowed.
        """
        if curve not in self.allowed_curves:
            raise PolicyViolation(f"ECDSA curve {curve} refused by policy {self.name}", curve=curve)


def refuse_weak_algorithm(name: str, policy_name: str) -> PolicyViolation:
    """The error for an algorithm that is recognised and always refused (3DES, DES, RC2, MD5).

    :param name: the algorithm's name for people, e.g. ``"3DES"``.
    :param policy_name: the policy in force.
    :returns: (does not raise) a PolicyViolation naming the algorithm.
    """
    return PolicyViolation(f"{name} refused by policy {policy_name}", algorithm=name)


_DIRECT_13 = SecurityPolicy(name="direct-1.3")
_DIRECT_12 = SecurityPolicy(
    name="direct-1.2",
    key_transport=KeyTransport.RSA_PKCS1,
    accepted_digests=frozenset(
        {DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512, DigestAlgorithm.SHA1}
    ),
    accepted_certificate_digests=frozenset(
        {DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512, DigestAlgorithm.SHA1}
    ),
)

PRESETS: dict[str, SecurityPolicy] = {p.name: p for p in (_DIRECT_13, _DIRECT_12)}
DEFAULT_POLICY = _DIRECT_13


def policy_from_name(name: str) -> SecurityPolicy:
    """The named preset.

    :param name: ``"direct-1.3"`` or ``"direct-1.2"``.
    :returns: the policy.
    :raises ConfigError: for an unknown name.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown policy {name!r}; known: {', '.join(sorted(PRESETS))}", policy=name
        ) from None
