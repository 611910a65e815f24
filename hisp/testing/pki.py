"""A development PKI and hand-built Direct messages for tests (ours and those of later issues).

:class:`TestPKI` makes a CA and users on demand; :func:`plain_message` writes a small RFC 5322 message;
:func:`seal` assembles the S/MIME layers one by one so that tests can build every malformed or hostile
variant (unsigned, unencrypted, tampered digest or signature, wrong signer, weak digest, two signers) that
the security agent must refuse. Never use any of this for production keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from asn1crypto import cms

from hisp.core import devca, mime, smime
from hisp.core.agent import StaticAnchors
from hisp.core.certs import Certificate, Credential
from hisp.core.policy import ContentCipher, DigestAlgorithm, KeyTransport

__all__ = ["TestPKI", "merge_signed_data", "plain_message", "seal", "tamper_signature"]


@dataclass
class TestPKI:
    """A development CA with users made on demand, all valid around ``at``.

    :ivar at: the reference time (aware UTC); certificates are valid from one hour before it.
    :ivar name: the CA's common name.
    """

    __test__ = False  # not a pytest test class

    at: datetime
    name: str = "hisp Test CA"
    ca: devca.Issued = field(init=False)
    _issued: dict[tuple[str, str], devca.Issued] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ca = devca.create_ca(self.name, at=self.at - timedelta(days=1), days=3650)

    @property
    def anchors(self) -> StaticAnchors:
        """This CA as the only trust anchor."""
        return StaticAnchors((self.ca.certificate,))

    def user(self, address: str, usage: str = "dual", **options: Any) -> devca.Issued:
        """An address-bound certificate for ``address`` (cached per address and usage unless options given).

        :param options: passed to :func:`hisp.core.devca.issue_certificate` (``not_after=``, ``key_size=``...).
        """
        key = ("address:" + address, usage)
        if options or key not in self._issued:
            issued = devca.issue_certificate(
                self.ca, at=self.at, address=address, usage=devca.KeyUsagePreset(usage), **options
            )
            if options:
                return issued
            self._issued[key] = issued
        return self._issued[key]

    def domain(self, domain: str, usage: str = "dual", **options: Any) -> devca.Issued:
        """A domain-bound certificate for ``domain`` (cached like :meth:`user`)."""
        key = ("domain:" + domain, usage)
        if options or key not in self._issued:
            issued = devca.issue_certificate(
                self.ca, at=self.at, domain=domain, usage=devca.KeyUsagePreset(usage), **options
            )
            if options:
                return issued
            self._issued[key] = issued
        return self._issued[key]


def plain_message(
    sender: str,
    to: Sequence[str] | str,
    *,
    subject: str = "Referral",
    body: bytes = b"Please see the referral.\r\n",
    cc: Sequence[str] = (),
    message_id: str = "<test-0001@direct.clinic.example>",
    extra_headers: Sequence[tuple[str, str]] = (),
    content_type: str = "text/plain; charset=us-ascii",
) -> bytes:
    """A small plain RFC 5322 message (CRLF), as an edge client would submit it.

    :returns: the message bytes.
    """
    recipients = [to] if isinstance(to, str) else list(to)
    lines = [
        f"From: {sender}",
        f"To: {', '.join(recipients)}",
        *([f"Cc: {', '.join(cc)}"] if cc else []),
        f"Subject: {subject}",
        "Date: Mon, 30 Nov 2026 09:00:00 +0000",
        f"Message-ID: {message_id}",
        *(f"{name}: {value}" for name, value in extra_headers),
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
    ]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def tamper_signature(signed_data: bytes, index: int = 0) -> bytes:
    """The same SignedData with one bit of SignerInfo ``index``'s signature value flipped."""
    info = cms.ContentInfo.load(signed_data)
    signer_info = info["content"]["signer_infos"][index]
    value = bytearray(signer_info["signature"].native)
    value[-1] ^= 0x01
    signer_info["signature"] = bytes(value)
    return bytes(info.dump(force=True))


def merge_signed_data(*signed: bytes) -> bytes:
    """One SignedData carrying the SignerInfos and certificates of several (same content), in order.

    Builds the AS-15 cases: two signers, one of them bad, in either order.
    """
    infos = [cms.ContentInfo.load(s) for s in signed]
    first = infos[0]["content"]
    certificates: list[Any] = []
    seen: set[bytes] = set()
    signer_infos: list[Any] = []
    digest_algorithms: list[Any] = []
    for info in infos:
        content = info["content"]
        for cert in content["certificates"]:
            der = cert.dump()
            if der not in seen:
                seen.add(der)
                certificates.append(cert)
        for signer_info in content["signer_infos"]:
            signer_infos.append(signer_info)
        for algorithm in content["digest_algorithms"]:
            if all(algorithm.dump() != a.dump() for a in digest_algorithms):
                digest_algorithms.append(algorithm)
    # DER would sort a SET OF; keep the SignerInfos in the order given (the order is what AS-15 tests vary).
    body = b"".join(si.dump() for si in signer_infos)
    ordered = cms.SignerInfos.load(b"\x31" + _der_length(len(body)) + body)
    merged = cms.SignedData(
        {
            "version": first["version"],
            "digest_algorithms": digest_algorithms,
            "encap_content_info": first["encap_content_info"],
            "certificates": certificates,
            "signer_infos": ordered,
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": merged}).dump())


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def seal(
    message: bytes,
    signers: Sequence[Credential],
    recipients: Sequence[Certificate],
    *,
    at: datetime,
    digest: DigestAlgorithm = DigestAlgorithm.SHA256,
    wrap: bool = True,
    sign: bool = True,
    encrypt: bool = True,
    tamper_content: bool = False,
    tamper_signer: int | None = None,
    cipher: ContentCipher = ContentCipher.AES128_CBC,
    key_transport: KeyTransport = KeyTransport.RSA_OAEP,
) -> bytes:
    """Build a Direct message layer by layer, with optional faults, bypassing the agent's checks.

    :param message: the plain message.
    :param signers: every credential to sign with (several: one SignerInfo each, in this order).
    :param recipients: certificates to encrypt to.
    :param digest: signature digest (SHA-1 allowed here, to build refused messages).
    :param wrap: wrap in message/rfc822 (AS-12) or sign the body entity with outer headers (unwrapped).
    :param sign: False leaves the message unsigned (the envelope holds the plain entity).
    :param encrypt: False leaves it unencrypted (a multipart/signed message on the wire).
    :param tamper_content: change the signed content after signing (bad digest).
    :param tamper_signer: flip a bit in that SignerInfo's signature value (bad signature).
    :returns: the message bytes.
    """
    if wrap:
        outer_headers, entity = mime.wrap(message)
    else:
        canonical = mime.canonicalize(message)
        parsed = mime.parse_entity(canonical)
        outer_headers = [(n, v) for n, v in parsed.headers if not n.lower().startswith("content-")]
        content_headers = [(n, v) for n, v in parsed.headers if n.lower().startswith("content-")]
        entity = (
            b"".join(f"{n}: {v}\r\n".encode() for n, v in content_headers) + b"\r\n" + parsed.body
        )
    if sign:
        # smime._sign: sign without the AS-8 refusal, so that tests can build SHA-1 signed messages.
        signatures = [smime._sign(entity, s, digest=digest, at=at) for s in signers]
        signature = signatures[0] if len(signatures) == 1 else merge_signed_data(*signatures)
        if tamper_signer is not None:
            signature = tamper_signature(signature, tamper_signer)
        signed_content = entity
        if tamper_content:
            # change a byte of the signed entity's body, keeping it well-formed
            signed_content = entity[:-3] + (b"Y" if entity[-3:-2] != b"Y" else b"Z") + entity[-2:]
        layer = mime.build_multipart_signed(signed_content, signature, digest)
    else:
        layer = entity
    if not encrypt:
        head = b"".join(f"{n}: {v}\r\n".encode() for n, v in outer_headers)
        return head + layer
    envelope = smime.encrypt(layer, recipients, cipher=cipher, key_transport=key_transport)
    return mime.build_enveloped_message(outer_headers, envelope, authenticated=cipher.authenticated)
