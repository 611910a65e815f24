"""The security agent: seal outgoing plain messages as Direct messages, open and check incoming ones.

Outgoing (AS-7, AS-11, AS-12, AS-16, AS-22): canonicalise, wrap in ``message/rfc822``, sign with the
sender's digitalSignature credential (detached ``multipart/signed``), encrypt to every valid certificate
of every recipient (one envelope, one KeyTransRecipientInfo per certificate). Recipients without a valid
certificate are returned as rejected with a reason and an RFC 3463 status for the DSN; the others still
go out.

Incoming (AS-8, AS-14, AS-15): refuse unencrypted, unsigned, bad digest or signature, signer not bound to
From, untrusted or expired signer, and weak algorithms; return the unwrapped message and a verdict that
names the signer, the chain and the anchor.

Pure: bytes and values in, bytes and values out, time passed as ``at``. Trust decisions go through the
:class:`SignerTrust` / :class:`RecipientTrust` seam; :class:`StaticAnchors` implements both with a fixed
anchor set (the trust issue adds per-domain stores, bundles and revocation behind the same seam).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from hisp.addresses import DirectAddress
from hisp.core import mime, smime
from hisp.core.certs import CertBinding, Certificate, Credential
from hisp.core.policy import DEFAULT_POLICY, DigestAlgorithm, SecurityPolicy
from hisp.core.trust import PathVerdict, validate_path
from hisp.errors import (
    AddressError,
    ConfigError,
    HispError,
    MessageFormatError,
    PolicyViolation,
    SecurityError,
    SignatureError,
    TrustError,
)

__all__ = [
    "SEALING_DEPTH",
    "SEALING_PARTS",
    "IncomingResult",
    "OutgoingResult",
    "RecipientTrust",
    "RejectedRecipient",
    "SecurityAgent",
    "SignerTrust",
    "StaticAnchors",
]

# RFC 3463 enhanced status codes for rejected recipients; the Java RI's DSN codes (requirements 8.4).
STATUS_NO_CERTIFICATE = "5.7.31"
STATUS_UNTRUSTED = "5.7.11"


class SignerTrust(Protocol):
    """Decides whether an incoming message's signer certificate is trusted (AS-14, AS-20, AS-21 incoming)."""

    def validate_signer(
        self,
        certificate: Certificate,
        *,
        sender: DirectAddress,
        intermediates: Sequence[Certificate],
        at: datetime,
        policy: SecurityPolicy,
    ) -> PathVerdict:
        """Validate the signer's path to an incoming anchor of the recipient's domain.

        :raises TrustError: untrusted, expired, revoked.
        :raises PolicyViolation: weak algorithm or key in the path.
        """
        ...


class RecipientTrust(Protocol):
    """Decides whether a recipient certificate may be encrypted to (AS-20, AS-21 outgoing, CD-8)."""

    def validate_recipient(
        self,
        certificate: Certificate,
        *,
        recipient: DirectAddress,
        intermediates: Sequence[Certificate],
        at: datetime,
        policy: SecurityPolicy,
    ) -> PathVerdict:
        """Validate the recipient certificate's path to an outgoing anchor of the sender's domain.

        :raises TrustError: untrusted, expired, revoked.
        :raises PolicyViolation: weak algorithm or key in the path.
        """
        ...


@dataclass(frozen=True)
class StaticAnchors:
    """A fixed set of trust anchors used for both directions (the seam's simplest implementation).

    :ivar anchors: the trusted CA certificates (self-signed or not: an intermediate ends the path).
    :ivar intermediates: extra issuers available for path building (besides those in the message).

    Spec: AS-20 (path to a configured anchor); AS-21's separate incoming/outgoing sets come with the trust
    issue's per-domain stores.
    """

    anchors: tuple[Certificate, ...]
    intermediates: tuple[Certificate, ...] = ()

    def __post_init__(self) -> None:
        if not self.anchors:
            raise ConfigError("at least one trust anchor is needed")

    def validate_signer(
        self,
        certificate: Certificate,
        *,
        sender: DirectAddress,
        intermediates: Sequence[Certificate],
        at: datetime,
        policy: SecurityPolicy,
    ) -> PathVerdict:
        """See :meth:`SignerTrust.validate_signer`."""
        return self._validate(certificate, intermediates, at, policy, "signing")

    def validate_recipient(
        self,
        certificate: Certificate,
        *,
        recipient: DirectAddress,
        intermediates: Sequence[Certificate],
        at: datetime,
        policy: SecurityPolicy,
    ) -> PathVerdict:
        """See :meth:`RecipientTrust.validate_recipient`."""
        return self._validate(certificate, intermediates, at, policy, "encipherment")

    def _validate(
        self,
        certificate: Certificate,
        intermediates: Sequence[Certificate],
        at: datetime,
        policy: SecurityPolicy,
        usage: str,
    ) -> PathVerdict:
        return validate_path(
            certificate,
            anchors=self.anchors,
            intermediates=(*intermediates, *self.intermediates),
            at=at,
            policy=policy,
            usage=usage,
        )


@dataclass(frozen=True)
class RejectedRecipient:
    """A recipient the outgoing message does not go to, and why (AS-22, for the DSN).

    :ivar address: the recipient.
    :ivar reason: one line for people, e.g. ``"no certificate"`` or ``"untrusted: ..."``.
    :ivar status: RFC 3463 status for the DSN (``5.7.31`` no certificate, ``5.7.11`` untrusted).
    :ivar certificates: what each of its certificates failed on, as (description, reason).
    """

    address: DirectAddress
    reason: str
    status: str
    certificates: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OutgoingResult:
    """A sealed Direct message and what went into it.

    :ivar message: the complete RFC 5322 Direct message (CRLF line endings), ready to relay.
    :ivar recipients: the recipients it is encrypted to.
    :ivar rejected: the recipients it is not for, with reasons (AS-22).
    :ivar encrypted_to: every certificate with a RecipientInfo in the envelope (AS-11).
    :ivar signer: the certificate that signed it.
    :ivar recipient_paths: the trust verdicts of the certificates encrypted to (empty without a trust seam).
    """

    message: bytes
    recipients: tuple[DirectAddress, ...]
    rejected: tuple[RejectedRecipient, ...]
    encrypted_to: tuple[Certificate, ...]
    signer: Certificate
    recipient_paths: tuple[PathVerdict, ...] = ()


@dataclass(frozen=True)
class IncomingResult:
    """An opened and verified Direct message.

    :ivar message: the plain RFC 5322 message to deliver (the inner message when wrapped).
    :ivar sender: the From address the signer is bound to.
    :ivar signer: the signer certificate accepted (AS-15: the first valid, trusted and bound one).
    :ivar binding: how the signer is bound to the sender (address or domain).
    :ivar path: the signer's trust verdict: chain and anchor.
    :ivar wrapped: whether the message was wrapped (AS-12) or not.
    :ivar decrypted: the envelope's algorithms and the certificate that opened it (its ``content`` is
        released, empty: the delivered bytes are ``message``).
    :ivar signature: the signature verdict, every signer valid or not (its ``content`` released likewise).
    :ivar rejected_signers: signers that were valid signatures but not accepted, with reasons.
    :ivar defects: tolerated oddities of the received message.
    """

    message: bytes
    sender: DirectAddress
    signer: Certificate
    binding: CertBinding
    path: PathVerdict
    wrapped: bool
    decrypted: smime.DecryptedContent
    signature: smime.SignatureVerdict
    rejected_signers: tuple[tuple[str, str], ...] = ()
    defects: tuple[str, ...] = ()

    def explain(self) -> str:
        """A few lines for people: sender, signer, chain, anchor, algorithms."""
        lines = [
            f"sender: {self.sender} ({self.binding.value}-bound signer)",
            f"signer: {self.signer.describe()}",
            f"signature digest: {self.signature.valid_signers[0].digest.display_name}",
            f"encryption: {self.decrypted.cipher.value}, key transport {self.decrypted.key_transport}",
            f"wrapped: {'yes' if self.wrapped else 'no'}",
            self.path.explain(),
        ]
        lines.extend(f"signer not accepted: {d}: {r}" for d, r in self.rejected_signers)
        lines.extend(f"defect: {d}" for d in self.defects)
        return "\n".join(lines)


#: Entities sealing adds around the plain message: the multipart/signed layer, the message/rfc822 wrapper (AS-12)
#: and the signature part.
SEALING_PARTS = 3
#: Levels of nesting sealing adds above the plain message's top entity (multipart/signed, message/rfc822).
SEALING_DEPTH = 2


@dataclass(frozen=True)
class SecurityAgent:
    """Signs, encrypts, decrypts and verifies Direct messages under one security policy.

    :ivar policy: the algorithms used and accepted (default the ``direct-1.3`` preset).
    :ivar limits: bounds on the MIME structure of any message handled.
    :ivar max_cms_bytes: bound on CMS structures decoded (bytes).

    Spec: Direct Applicability Statement 1.3, sections on S/MIME (AS-7 .. AS-16, AS-22).
    """

    policy: SecurityPolicy = DEFAULT_POLICY
    limits: mime.MimeLimits = field(default_factory=mime.MimeLimits)
    max_cms_bytes: int = 64 * 1024 * 1024

    # -- outgoing ---------------------------------------------------------------------------------

    @functools.cached_property
    def sealing_limits(self) -> mime.MimeLimits:
        """:attr:`limits` less what sealing adds to the tree a receiver checks: the multipart/signed layer, the
        message/rfc822 wrapper and the signature part (:data:`SEALING_PARTS` entities, :data:`SEALING_DEPTH`
        levels), so that what we seal opens at a HISP with the same limits (issue 2, bounded parsing)."""
        return dataclasses.replace(
            self.limits,
            max_parts=max(1, self.limits.max_parts - SEALING_PARTS),
            max_depth=max(1, self.limits.max_depth - SEALING_DEPTH),
        )

    def process_outgoing(
        self,
        message: bytes,
        *,
        sender: Sequence[Credential],
        recipients: Mapping[DirectAddress, Sequence[Certificate]],
        at: datetime,
        trust: RecipientTrust | None = None,
    ) -> OutgoingResult:
        """Seal a plain message for its recipients.

        :param message: the plain RFC 5322 message from the edge (bytes, any line endings).
        :param sender: our credentials for the From address; the signing one is chosen (AS-4).
        :param recipients: for each recipient address, its discovered or configured certificates.
        :param at: the time of sealing (signingTime; certificate validity).
        :param trust: validates recipient certificates against outgoing anchors; ``None`` checks only
            binding, key usage, validity and key size (for operators' debugging commands).
        :returns: the sealed message, the recipients it is for and those rejected with reasons.
        :raises MessageFormatError: the message is malformed or exceeds the limits, counting what sealing adds
            (:attr:`sealing_limits`; the sealed message's size against ``max_message_bytes``), so that what is
            sealed opens at a HISP with the same limits.
        :raises AddressError: From is missing or not one valid address.
        :raises PolicyViolation: no credential can sign for From; the message has a Bcc header (AS-13).
        :raises TrustError: no recipient has a usable certificate (reason ``"no valid recipient"``;
            ``context["rejected"]`` holds every :class:`RejectedRecipient`).
        :raises ConfigError: no recipients given.

        Spec: AS-2, AS-3, AS-4, AS-7, AS-11, AS-12, AS-13, AS-16, AS-22.
        """
        if not recipients:
            raise ConfigError("no recipients given")
        if len(message) > self.limits.max_message_bytes:
            raise MessageFormatError(
                f"message of {len(message)} bytes exceeds the limit of {self.limits.max_message_bytes}"
            )
        # The line endings found and the entities parsed here spare wrap() counting and parsing them again.
        memo: dict[tuple[int, int], mime._Parsed] = {}
        try:
            _, line_endings = mime._check_structure(message, self.sealing_limits, need_cr=True, memo=memo)
        except MessageFormatError as exc:
            if self.sealing_limits == self.limits:
                raise
            try:  # within the limits, but not once sealed: say so
                mime.check_structure(message, self.limits)
            except MessageFormatError:
                raise exc from None
            raise MessageFormatError(
                f"{exc.message}, counting what sealing adds ({SEALING_PARTS} entities, {SEALING_DEPTH} levels of "
                "nesting): a HISP with the same limits could not open it"
            ) from None
        # Only the header fields are needed: check_structure has parsed the top entity within the limits.
        top = memo.get((0, len(message)))
        headers = top.headers if top is not None else mime._parse_header_fields(message, self.limits)
        from_address = _single_address(headers, "From")
        if _header_values(headers, "Bcc"):
            # AS-13: Bcc is not allowed; the signed copy would show every blind recipient to the others.
            raise PolicyViolation(
                "Bcc is not allowed in Direct messages (AS-13): send each blind recipient a message of its own"
            )
        signer = self._signing_credential(sender, from_address, at)

        encrypt_to: list[Certificate] = []
        paths: list[PathVerdict] = []
        accepted: list[DirectAddress] = []
        rejected: list[RejectedRecipient] = []
        for address, certificates in recipients.items():
            usable, failures, verdicts = self._usable_recipient_certificates(address, certificates, at, trust)
            if usable:
                accepted.append(address)
                for cert in usable:
                    if cert not in encrypt_to:
                        encrypt_to.append(cert)
                paths.extend(verdicts)
            elif not certificates:
                rejected.append(RejectedRecipient(address, "no certificate", STATUS_NO_CERTIFICATE))
            else:
                summary = "; ".join(reason for _, reason in failures)
                rejected.append(
                    RejectedRecipient(
                        address, f"no usable certificate: {summary}", STATUS_UNTRUSTED, tuple(failures)
                    )
                )
        if not encrypt_to:
            raise TrustError(
                "no recipient has a valid certificate: "
                + "; ".join(f"{r.address}: {r.reason}" for r in rejected),
                reason="no valid recipient",
                rejected=tuple(rejected),
            )

        outer_headers, signed_entity = mime._wrap(
            message,
            copy_subject=self.policy.copy_subject,
            line_endings=line_endings,
            memo=memo if mime._memo_serves(self.limits) else None,
        )
        signature = smime.sign(signed_entity, signer, digest=self.policy.digest, at=at)
        # The multipart/signed entity is encrypted piece by piece (the signed entity is not copied into it).
        multipart_signed = mime._multipart_signed_pieces(signed_entity, signature, self.policy.digest)
        del signed_entity, signature
        envelope = smime._encrypt(
            multipart_signed,
            encrypt_to,
            cipher=self.policy.cipher,
            key_transport=self.policy.key_transport,
        )
        del multipart_signed
        sealed = mime.build_enveloped_message(
            outer_headers, envelope, authenticated=self.policy.cipher.authenticated
        )
        if len(sealed) > self.limits.max_message_bytes:
            raise MessageFormatError(
                f"the sealed message would be {len(sealed)} bytes, over the limit of {self.limits.max_message_bytes}: "
                "a HISP with the same limits could not open it"
            )
        return OutgoingResult(
            message=sealed,
            recipients=tuple(accepted),
            rejected=tuple(rejected),
            encrypted_to=tuple(encrypt_to),
            signer=signer.certificate,
            recipient_paths=tuple(paths),
        )

    def _signing_credential(
        self, credentials: Sequence[Credential], sender: DirectAddress, at: datetime
    ) -> Credential:
        """The credential to sign with: can sign (AS-4), bound to the sender (address-bound first), valid."""
        best: Credential | None = None
        problems: list[str] = []
        for credential in credentials:
            cert = credential.certificate
            binding = cert.binding_for(sender)
            if binding is None:
                problems.append(f"{cert.describe()}: not bound to {sender}")
            elif not cert.can_sign:
                problems.append(f"{cert.describe()}: keyUsage lacks digitalSignature")
            elif not cert.is_valid_at(at):
                problems.append(f"{cert.describe()}: not valid at {at.isoformat()}")
            elif binding is CertBinding.ADDRESS:
                return credential
            elif best is None:
                best = credential
        if best is None:
            detail = "; ".join(problems) if problems else "no credential given"
            raise PolicyViolation(f"no credential can sign for {sender}: {detail}", sender=str(sender))
        return best

    def _usable_recipient_certificates(
        self,
        address: DirectAddress,
        certificates: Sequence[Certificate],
        at: datetime,
        trust: RecipientTrust | None,
    ) -> tuple[list[Certificate], list[tuple[str, str]], list[PathVerdict]]:
        usable: list[Certificate] = []
        failures: list[tuple[str, str]] = []
        verdicts: list[PathVerdict] = []
        for cert in certificates:
            try:
                if cert.binding_for(address) is None:
                    raise TrustError(f"not bound to {address}", reason="not bound")
                if not cert.can_encipher:
                    raise PolicyViolation("keyUsage lacks keyEncipherment")
                if cert.rsa_key_bits is None:
                    raise PolicyViolation(f"{cert.key_description} key cannot be encrypted to")
                self.policy.check_rsa_key_size(cert.rsa_key_bits, purpose="recipient key")
                if trust is not None:
                    verdicts.append(
                        trust.validate_recipient(
                            cert, recipient=address, intermediates=(), at=at, policy=self.policy
                        )
                    )
                elif not cert.is_valid_at(at, self.policy.clock_skew):
                    raise TrustError(f"not valid at {at.isoformat()}", reason="expired")
            except SecurityError as exc:
                failures.append((cert.describe(), exc.message))
                continue
            usable.append(cert)
        return usable, failures, verdicts

    # -- incoming ---------------------------------------------------------------------------------

    def process_incoming(
        self,
        message: bytes,
        *,
        credentials: Sequence[Credential],
        trust: SignerTrust,
        at: datetime,
    ) -> IncomingResult:
        """Open a Direct message: decrypt, verify, check the signer's trust and binding, unwrap.

        :param message: the Direct message exactly as received (bytes).
        :param credentials: every credential we hold for the recipient (AS-4: all are tried).
        :param trust: validates the signer against the incoming anchors.
        :param at: the time of receipt (certificate validity).
        :returns: the plain message and the verdict.
        :raises PolicyViolation: unencrypted (``"unencrypted message"``), unsigned (``"unsigned message"``),
            weak algorithm (``"SHA-1 refused by policy direct-1.3"``, ``"3DES refused by ..."``).
        :raises DecryptionError: ``"no recipient matches our keys"`` or a damaged envelope.
        :raises SignatureError: bad digest or signature.
        :raises TrustError: no valid signer is bound to From (reason ``"signer not bound to sender"``) or
            trusted (reason ``"untrusted"``, ``"expired"``, ...).
        :raises MessageFormatError: malformed MIME or CMS, or limits exceeded.
        :raises AddressError: From is missing or not one valid address.

        Spec: AS-7, AS-8, AS-9, AS-10, AS-12, AS-14, AS-15.
        """
        if len(message) > self.limits.max_message_bytes:
            raise MessageFormatError(
                f"message of {len(message)} bytes exceeds the limit of {self.limits.max_message_bytes}"
            )
        outer = mime.parse_entity(message, self.limits)
        defects = list(outer.defects)
        kind = mime.smime_type(outer.content_type)
        if kind not in ("enveloped-data", "authEnveloped-data"):
            raise PolicyViolation(
                f"unencrypted message ({outer.content_type.mime_type})",
                content_type=outer.content_type.mime_type,
            )
        envelope = mime.decode_body(outer)
        decrypted = smime.decrypt(envelope, credentials, policy=self.policy, max_bytes=self.max_cms_bytes)
        del envelope

        # check_structure, parse_entity and (multipart/signed) split_multipart_signed, each entity parsed once
        memo: dict[tuple[int, int], mime._Parsed] = {}
        inner, parts = mime._open_signed_layer(decrypted.content, self.limits, memo)
        # The signed message's header fields as the structure check parsed them, with the bytes they were parsed
        # from, kept for a small message only (a large one's plaintext is dropped below, DESIGN 3).
        known_headers = None
        if len(decrypted.content) <= _KNOWN_HEADERS_MAX_BYTES:
            found = mime._signed_message_headers(decrypted.content, memo)
            if found is not None:
                known_headers = (decrypted.content, *found)
        del memo
        defects.extend(inner.defects)
        inner_kind = mime.smime_type(inner.content_type)
        signed_entity: mime.Entity | None = None
        if parts is not None:
            verdict = self._verify_detached(parts, defects)
            if verdict.content == parts.content:
                signed_entity = parts.content_entity  # parse_entity(verdict.content, self.limits) already
            del parts
        elif inner_kind == "signed-data":
            verdict = smime.verify(
                mime.decode_body(inner), content=None, policy=self.policy, max_bytes=self.max_cms_bytes
            )
        else:
            raise PolicyViolation(
                f"unsigned message ({inner.content_type.mime_type} inside the envelope)",
                content_type=inner.content_type.mime_type,
            )

        # The envelope's plaintext is no longer needed: keep only what the signature covers (DESIGN 3: drop
        # intermediates early; a 25 MB referral must not be held three times).
        decrypted = smime.DecryptedContent(
            content=b"",
            cipher=decrypted.cipher,
            key_transport=decrypted.key_transport,
            recipient=decrypted.recipient,
            recipient_count=decrypted.recipient_count,
        )
        del inner
        if not verdict.content or verdict.content.isspace():
            # A valid signature over nothing protects nothing: an unwrapped message would be all outer header.
            raise MessageFormatError("the signed content is empty")
        content_entity = signed_entity or mime.parse_entity(verdict.content, self.limits)
        del signed_entity
        defects.extend(content_entity.defects)
        unwrapped = mime.unwrap(content_entity)
        wrapped = unwrapped is not None
        plain = unwrapped if unwrapped is not None else _reattach_outer_headers(outer, verdict.content)
        # From is checked on the message delivered: unwrapped, the signed entity's own header fields (a second
        # From) join the outer ones, and the delivered message must have exactly one From, bound to the signer.
        if (
            known_headers is not None
            and wrapped
            and len(plain) == known_headers[2] - known_headers[1]
            and known_headers[0].startswith(plain, known_headers[1])
        ):
            # the delivered message is the very range the structure check parsed: its header fields as parsed there
            headers = known_headers[3]
        else:
            headers = mime._parse_header_fields(plain, self.limits)
        del known_headers
        sender = _single_address(headers, "From")
        del content_entity, unwrapped
        verdict = smime.SignatureVerdict(
            valid_signers=verdict.valid_signers,
            invalid_signers=verdict.invalid_signers,
            certificates=verdict.certificates,
            content=b"",
        )

        accepted, binding, path, rejected = self._accept_signer(verdict, sender, at, trust)
        return IncomingResult(
            message=plain,
            sender=sender,
            signer=accepted,
            binding=binding,
            path=path,
            wrapped=wrapped,
            decrypted=decrypted,
            signature=verdict,
            rejected_signers=tuple(rejected),
            defects=tuple(defects),
        )

    def _verify_detached(self, parts: mime.SignedParts, defects: list[str]) -> smime.SignatureVerdict:
        """Verify over the exact bytes received; tolerate a sender that signed CRLF but sent bare LF."""
        if parts.micalg is not None:
            try:
                self.policy.check_signature_digest(DigestAlgorithm.from_name(parts.micalg))
            except PolicyViolation as exc:
                # micalg is advisory (RFC 8551 3.5.3.2); the SignerInfo's digest decides. Record it.
                defects.append(f"micalg {parts.micalg!r}: {exc.message}")
        try:
            return smime.verify(
                parts.signature, content=parts.content, policy=self.policy, max_bytes=self.max_cms_bytes
            )
        except SignatureError:
            if parts.content_crlf == parts.content:
                raise
            verdict = smime.verify(
                parts.signature, content=parts.content_crlf, policy=self.policy, max_bytes=self.max_cms_bytes
            )
            defects.append("signed content arrived with bare LF line endings; verified in CRLF form")
            return verdict

    def _accept_signer(
        self,
        verdict: smime.SignatureVerdict,
        sender: DirectAddress,
        at: datetime,
        trust: SignerTrust,
    ) -> tuple[Certificate, CertBinding, PathVerdict, list[tuple[str, str]]]:
        """AS-15: the first signer that is valid, trusted and bound to the sender wins; order is irrelevant."""
        rejected: list[tuple[str, str]] = []
        first_error: HispError | None = None
        for signer in verdict.valid_signers:
            cert = signer.certificate
            binding = cert.binding_for(sender)
            if binding is None:
                rejected.append((cert.describe(), f"signer not bound to sender {sender}"))
                continue
            try:
                path = trust.validate_signer(
                    cert, sender=sender, intermediates=verdict.certificates, at=at, policy=self.policy
                )
            except SecurityError as exc:
                named = _name_role(exc, "signer")
                rejected.append((cert.describe(), named.message))
                first_error = first_error or named
                continue
            return cert, binding, path, rejected
        if first_error is not None:
            raise first_error
        raise TrustError(
            f"signer not bound to sender {sender}: "
            + "; ".join(description for description, _ in rejected),
            reason="signer not bound to sender",
            sender=str(sender),
        )


_CONTENT_FIELD = re.compile(rb"^content-", re.IGNORECASE)


def _name_role(exc: SecurityError, role: str) -> SecurityError:
    """The same trust failure, saying whose certificate failed: ``"untrusted signer: ..."``."""
    if isinstance(exc, TrustError):
        detail = exc.message.removeprefix(f"{exc.reason}: ")
        return TrustError(f"{exc.reason} {role}: {detail}", reason=exc.reason, **exc.context)
    return exc


#: Largest decrypted content whose signed message's header fields are kept from the structure check (bytes): the
#: plaintext is held until the From check, which costs nothing for a small message.
_KNOWN_HEADERS_MAX_BYTES = 1 << 20


def _header_values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    """Values of every field called ``name`` (case-insensitive), in order (as :meth:`mime.Entity.header_all`)."""
    wanted = name.lower()
    return [value for field_name, value in headers if field_name.lower() == wanted]


def _single_address(headers: Sequence[tuple[str, str]], name: str) -> DirectAddress:
    values = _header_values(headers, name)
    if len(values) != 1:
        raise AddressError(f"the message needs exactly one {name} header, found {len(values)}")
    return DirectAddress.parse(values[0])


def _reattach_outer_headers(outer: mime.Entity, content: bytes) -> bytes:
    """An unwrapped Direct message: the outer headers, less the envelope's Content-*, over the signed entity.

    Spec: AS-12 (unwrapped messages are still accepted); RFC 8551 section 3.1.
    """
    kept: list[bytes] = []
    keep = False
    for line in outer.header_block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if keep:
                kept.append(line)
            continue
        keep = not _CONTENT_FIELD.match(line)
        if keep:
            kept.append(line)
    head = b"".join(kept)
    if head and not head.endswith(b"\n"):
        head += b"\r\n"
    return head + content
