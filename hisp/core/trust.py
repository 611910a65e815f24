"""Path validation to a configured trust anchor: the seam every trust decision goes through (AS-20).

:func:`validate_path` builds and checks an RFC 5280 path from a certificate to one of the given anchors
with pyhanko-certvalidator (time injected, fetching off), then applies the security policy to the path
it found: certificate signature digests, RSA key sizes and EC curves (AS-5, AS-8), and the leaf's key
usage (AS-4). It raises on failure and returns a :class:`PathVerdict` with the evidence on success.

Anchors need not be self-signed: the ETT anchor is an intermediate CA, and path building stops at
whichever configured anchor it reaches (RFC 5280 section 6.1.1 (d): an anchor is trusted because it is
configured, so its own signature is not checked, and neither is its signature digest).

:func:`validate_path` does not check revocation. :func:`validate` is the full, explainable decision: a
:class:`TrustStore` per local domain (or address) holds separate incoming and outgoing
:class:`TrustAnchor` sets (AS-21) and a revocation mode; the result is a :class:`TrustVerdict` naming the
certificate, the chain, the anchor reached (or the nearest one and why it failed), the revocation result
and its source, and the rule applied. :class:`StoreTrust` puts a store behind the security agent's seam.

Pure: no I/O and no clock. Revocation and AIA data come through a :class:`RevocationFetcher` passed in
(``hisp.adapters.revocation`` implements it with bounded HTTP); without one nothing is fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from asn1crypto import x509 as asn1_x509
from cryptography import x509 as cx509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, SignatureAlgorithmOID
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import (
    ExpiredError,
    InsufficientRevinfoError,
    InvalidCertificateError,
    NotYetValidError,
    PathBuildingError,
    PathValidationError,
    RevokedError,
    ValidationError,
)
from pyhanko_certvalidator.fetchers import Fetchers
from pyhanko_certvalidator.policy_decl import (
    NO_REVOCATION,
    CertRevTrustPolicy,
    DisallowWeakAlgorithmsPolicy,
    RevocationCheckingPolicy,
)

from hisp.addresses import DirectAddress, HealthDomain
from hisp.core.certs import Certificate, require_aware
from hisp.core.policy import DEFAULT_POLICY, Direction, RevocationMode, SecurityPolicy
from hisp.errors import ConfigError, PolicyViolation, TrustError

__all__ = [
    "MAX_ISSUERS",
    "USAGES",
    "FetchRecord",
    "FetchSession",
    "PathVerdict",
    "RevocationEvidence",
    "RevocationFetcher",
    "RevocationResult",
    "RevocationStatus",
    "StoreTrust",
    "TrustAnchor",
    "TrustStore",
    "TrustVerdict",
    "validate",
    "validate_path",
]

#: Most issuers (intermediates plus the anchor) a path may have above the leaf. The .NET RI's
#: MaxIssuerChainLength test uses 3 levels; real Direct paths have 1-3.
MAX_ISSUERS = 5

#: Key usages a leaf can be validated for (AS-4).
USAGES = ("signing", "encipherment")

# Signature algorithms with no separate digest: their strength is the key's.
_NO_DIGEST = {SignatureAlgorithmOID.ED25519, SignatureAlgorithmOID.ED448}

_T = TypeVar("_T")


@dataclass(frozen=True)
class PathVerdict:
    """Evidence that a certificate chains to a configured trust anchor.

    :ivar certificate: the validated certificate (the leaf).
    :ivar chain: the path, leaf first, anchor last (a certificate that is itself an anchor: just it).
    :ivar anchor: the trust anchor the path ends at.
    :ivar policy_rule: what was checked, naming the policy, e.g.
        ``"direct-1.3: RFC 5280 path, signing usage, revocation not checked"``.
    :ivar at: the validation time, aware UTC.
    :ivar verdict: the full :class:`TrustVerdict` (anchor source, revocation, warnings) when the path
        came from :func:`validate` (e.g. through :class:`StoreTrust`); None from :func:`validate_path`.

    Spec: AS-20, RFC 5280 section 6.1.6 (outputs); DESIGN.md section 4 (verdicts carry evidence).
    """

    certificate: Certificate
    chain: tuple[Certificate, ...]
    anchor: Certificate
    policy_rule: str
    at: datetime
    verdict: TrustVerdict | None = field(default=None, compare=False, repr=False)

    def explain(self) -> str:
        """The verdict for people: leaf, path and anchor, time and rule (the full verdict's when known).

        :returns: several lines of text.

        Spec: AS-20.
        """
        if self.verdict is not None:
            return self.verdict.explain()
        lines = [f"trusted at {self.at.isoformat()} ({self.policy_rule})"]
        for depth, cert in enumerate(self.chain):
            role = "leaf" if depth == 0 else "anchor" if cert == self.anchor else "intermediate"
            lines.append(f"  {depth} {role}: {cert.describe()}, valid until {cert.not_after.isoformat()}")
        return "\n".join(lines)


def _drive(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run certvalidator's coroutine to completion without an event loop.

    With fetching off, nothing in it awaits real I/O, so it finishes on the first step; this works
    whether or not the calling thread runs an event loop (``asyncio.run`` would fail inside one).
    """
    coro = make()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    raise TrustError("path validation unexpectedly needed I/O", reason="invalid path")


# -- the paths certvalidator found, remembered -------------------------------------------------------
# Building a ValidationContext and a path costs about a millisecond, mostly asn1crypto name preparation,
# and the same sender or recipient is validated message after message. certvalidator's answer depends on
# the certificates (leaf, anchors, intermediates, in order), the time tolerance and, through the time,
# only on the outcome of its validity comparisons ``at + tolerance < not_before`` and
# ``at - tolerance > not_after`` for the certificates it knows (fetching and revocation data are off).
# A found path is therefore remembered under the certificates, the tolerance and the *cell* of ``at``:
# where ``at + tolerance`` falls among every known certificate's notBefore and ``at - tolerance`` among
# their notAfter. Any ``at`` in the same cell makes certvalidator decide every comparison the same way,
# so it would find the same path; an ``at`` in another cell is validated afresh. Failures are not
# remembered. Our own checks (key usage, validity, policy) run on every call.

#: Certificate sets remembered (least recently used dropped first), and time cells per set.
_PATH_CACHE_SETS = 256
_PATH_CACHE_CELLS = 8
#: Certificates whose validity periods (as certvalidator reads them) are remembered.
_VALIDITY_CACHE_SIZE = 1024

_Cell = tuple[int, int]


@functools.lru_cache(maxsize=_VALIDITY_CACHE_SIZE)
def _validity(der: bytes) -> tuple[datetime, datetime]:
    """notBefore and notAfter exactly as certvalidator compares them (asn1crypto's native values)."""
    validity = asn1_x509.Certificate.load(der)["tbs_certificate"]["validity"]
    return validity["not_before"].native, validity["not_after"].native


@dataclass
class _PathSet:
    """One set of certificates: their sorted validity bounds and the path found per time cell."""

    not_befores: list[datetime]
    not_afters: list[datetime]
    paths: dict[_Cell, tuple[bytes, ...]] = field(default_factory=dict)

    def cell(self, at: datetime, tolerance: timedelta) -> _Cell:
        # which notBefore values lie after at + tolerance, which notAfter values before at - tolerance
        return bisect_right(self.not_befores, at + tolerance), bisect_left(self.not_afters, at - tolerance)


class _PathCache:
    """Bounded, thread-safe memory of certvalidator's paths (see the comment above)."""

    def __init__(self, sets: int, cells: int) -> None:
        self._sets: OrderedDict[tuple[Any, ...], _PathSet] = OrderedDict()
        self._max_sets = sets
        self._max_cells = cells
        self._lock = threading.Lock()

    def _entry(self, key: tuple[Any, ...], ders: Sequence[bytes]) -> _PathSet | None:
        with self._lock:
            entry = self._sets.get(key)
            if entry is not None:
                self._sets.move_to_end(key)
                return entry
        try:
            bounds = [_validity(der) for der in ders]
            entry = _PathSet(sorted(b[0] for b in bounds), sorted(b[1] for b in bounds))
        except (ValueError, TypeError, LookupError, AttributeError, OverflowError):
            return None  # unusual time values: always validate afresh
        with self._lock:
            entry = self._sets.setdefault(key, entry)
            self._sets.move_to_end(key)
            while len(self._sets) > self._max_sets:
                self._sets.popitem(last=False)
        return entry

    def lookup(
        self, key: tuple[Any, ...], ders: Sequence[bytes], at: datetime, tolerance: timedelta
    ) -> tuple[_PathSet | None, _Cell | None, tuple[bytes, ...] | None]:
        """The remembered path for ``key`` at ``at`` (or None), with the entry and cell to store one under."""
        entry = self._entry(key, ders)
        if entry is None:
            return None, None, None
        try:
            cell = entry.cell(at, tolerance)
        except (TypeError, OverflowError):
            return None, None, None
        with self._lock:
            return entry, cell, entry.paths.get(cell)

    def store(self, entry: _PathSet, cell: _Cell, path: tuple[bytes, ...]) -> None:
        """Remember ``path`` for ``entry`` in ``cell``."""
        with self._lock:
            if cell not in entry.paths and len(entry.paths) >= self._max_cells:
                entry.paths.clear()
            entry.paths[cell] = path

    def clear(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._sets.clear()
        _validity.cache_clear()


_PATHS = _PathCache(_PATH_CACHE_SETS, _PATH_CACHE_CELLS)


def _find_path(
    certificate: Certificate,
    anchors: Sequence[Certificate],
    intermediates: Sequence[Certificate],
    at: datetime,
    skew: int,
) -> tuple[bytes, ...]:
    """certvalidator's path for ``certificate``, leaf first, as DER (remembered; see :class:`_PathCache`)."""
    tolerance = abs(timedelta(seconds=skew))  # as ValidationContext normalises it
    anchor_ders = tuple(a.der for a in anchors)
    intermediate_ders = tuple(c.der for c in intermediates)
    key = (certificate.der, anchor_ders, intermediate_ders, tolerance)
    entry, cell, cached = _PATHS.lookup(key, (certificate.der, *anchor_ders, *intermediate_ders), at, tolerance)
    if cached is not None:
        return cached
    context = ValidationContext(
        trust_roots=[asn1_x509.Certificate.load(der) for der in anchor_ders],
        other_certs=[asn1_x509.Certificate.load(der) for der in intermediate_ders],
        moment=at,
        allow_fetching=False,
        revocation_mode="soft-fail",
        time_tolerance=tolerance,
        # The policy decides on digests and key sizes below, with clearer errors.
        algorithm_usage_policy=DisallowWeakAlgorithmsPolicy(
            weak_hash_algos=frozenset(), rsa_key_size_threshold=0, dsa_key_size_threshold=0
        ),
    )
    validator = CertificateValidator(asn1_x509.Certificate.load(certificate.der), validation_context=context)
    try:
        path = _drive(validator.async_validate_path)
    except (ValidationError, PathBuildingError) as exc:
        raise _trust_error(exc, certificate) from None
    except PathValidationError as exc:  # pragma: no cover - subclass of ValidationError, kept explicit
        raise _trust_error(exc, certificate) from None

    # certvalidator gives the path anchor first; ours is leaf first.
    ders: list[bytes] = []
    for cert in path.iter_certs(include_root=True):
        if not ders or ders[-1] != cert.dump():  # a leaf that is itself an anchor appears once
            ders.append(cert.dump())
    found = tuple(reversed(ders))
    if entry is not None and cell is not None:
        _PATHS.store(entry, cell, found)
    return found


def _usage_error(cert: Certificate, usage: str) -> PolicyViolation:
    need = "digitalSignature" if usage == "signing" else "keyEncipherment"
    return PolicyViolation(
        f"certificate not usable for {usage}: keyUsage lacks {need} (AS-4): {cert.describe()}",
        certificate=cert.fingerprint_sha256,
        usage=usage,
    )


def _check_key(cert: Certificate, policy: SecurityPolicy, purpose: str) -> None:
    bits = cert.rsa_key_bits
    curve = cert.ec_curve
    try:
        if bits is not None:
            policy.check_rsa_key_size(bits, purpose=purpose)
        elif curve is not None:
            policy.check_curve(curve)
        else:
            raise PolicyViolation(
                f"{cert.key_description} {purpose} refused by policy {policy.name} (RSA or ECDSA expected)"
            )
    except PolicyViolation as exc:
        raise PolicyViolation(f"{exc.message}: {cert.describe()}", **exc.context) from None


def _check_signature(cert: Certificate, policy: SecurityPolicy) -> None:
    digest = cert.signature_digest
    if digest is None:
        if cert.x509.signature_algorithm_oid in _NO_DIGEST:
            return
        raise PolicyViolation(
            f"certificate signature algorithm {cert.x509.signature_algorithm_oid.dotted_string} "
            f"refused by policy {policy.name}: {cert.describe()}"
        )
    try:
        policy.check_certificate_digest(digest)
    except PolicyViolation as exc:
        raise PolicyViolation(f"{exc.message}: {cert.describe()}", **exc.context) from None


def _apply_policy(chain: Sequence[Certificate], policy: SecurityPolicy) -> None:
    """AS-5 and AS-8 on every certificate of the path; the anchor's own signature is not relied on."""
    for depth, cert in enumerate(chain):
        is_anchor = depth == len(chain) - 1 and depth > 0
        _check_key(cert, policy, "leaf key" if depth == 0 else "CA key")
        if not is_anchor:
            _check_signature(cert, policy)


def _check_validity(cert: Certificate, leaf: Certificate, at: datetime, skew: int, role: str) -> None:
    allowance = timedelta(seconds=skew)
    if at < cert.not_before - allowance:
        reason, when = "not yet valid", f"is not valid until {cert.not_before.isoformat()}"
    elif at > cert.not_after + allowance:
        reason, when = "expired", f"expired {cert.not_after.isoformat()}"
    else:
        return
    about = "" if cert == leaf else f" (validating {leaf.describe()})"
    raise TrustError(
        f"{reason}: {role} {when}: {cert.describe()}{about}",
        reason=reason,
        certificate=cert.fingerprint_sha256,
    )


def _trust_error(exc: ValidationError | PathBuildingError, cert: Certificate) -> TrustError:
    detail = str(exc)
    if isinstance(exc, ExpiredError):
        reason = "expired"
    elif isinstance(exc, NotYetValidError):
        reason = "not yet valid"
    elif isinstance(exc, RevokedError):
        reason = "revoked"
    elif isinstance(exc, InsufficientRevinfoError):
        reason = "revocation unknown"
    elif isinstance(exc, PathBuildingError | InvalidCertificateError):
        reason = "untrusted"
        detail = f"no path to a configured trust anchor ({exc})"
    else:
        reason = "invalid path"
    return TrustError(
        f"{reason}: {detail}: {cert.describe()}", reason=reason, certificate=cert.fingerprint_sha256
    )


def validate_path(
    certificate: Certificate,
    *,
    anchors: Sequence[Certificate],
    intermediates: Sequence[Certificate] = (),
    at: datetime,
    policy: SecurityPolicy,
    usage: str = "signing",
) -> PathVerdict:
    """Validate ``certificate`` to one of ``anchors`` at time ``at`` under ``policy``.

    Order of checks: the leaf's key usage (AS-4: ``signing`` needs digitalSignature, ``encipherment``
    needs keyEncipherment, an absent keyUsage allows both; extended key usage is not required), the
    leaf's validity period, then the RFC 5280 path (validity of every certificate, the anchor's
    included, widened by ``policy.clock_skew`` seconds; signatures, basicConstraints, path length, name
    constraints) to an anchor, at most :data:`MAX_ISSUERS` issuers long, then the policy on every
    certificate of the path found: RSA key size and EC curve (AS-5), certificate signature digest
    (AS-8; not the anchor's own, which nothing relies on).

    :param certificate: the certificate to validate (a signer's or a recipient's).
    :param anchors: the configured trust anchors for this domain and direction (AS-21); need not be
        self-signed.
    :param intermediates: other certificates that may complete the path (from the SignedData, a
        bundle or discovery).
    :param at: the validation time, an aware datetime.
    :param policy: the security policy in force.
    :param usage: ``"signing"`` or ``"encipherment"``.
    :returns: the verdict with the path found.
    :raises TrustError: ``reason`` is ``"expired"`` or ``"not yet valid"`` (a certificate of the path is
        outside its validity), ``"untrusted"`` (no path to an anchor, or no anchors), ``"revoked"``,
        or ``"invalid path"`` (bad signature, not a CA, path too long ...). The message names the
        certificate.
    :raises PolicyViolation: wrong key usage for ``usage``, a short RSA key, a refused curve or a refused
        certificate signature digest.
    :raises ConfigError: for an unknown ``usage``.
    :raises ValueError: when ``at`` is naive.

    Spec: AS-20, AS-4, AS-5, AS-8; RFC 5280 section 6.1.
    """
    chain, _revocation = _check_path(
        certificate, anchors, intermediates, at, policy, usage, RevocationMode.OFF, None, _Progress()
    )
    return PathVerdict(
        certificate=certificate,
        chain=chain,
        anchor=chain[-1],
        policy_rule=(
            f"{policy.name}: RFC 5280 path to a configured anchor, {usage} usage, revocation not checked"
        ),
        at=at,
    )


# -- trust stores, revocation and explainable verdicts (AS-20, AS-21, TB-4, TB-5) --------------------


@dataclass(frozen=True)
class TrustAnchor:
    """A configured trust anchor and where it came from.

    :ivar certificate: the CA certificate (self-signed or not: an intermediate ends the path there).
    :ivar source: where it was configured: an anchor file's path, or ``"bundle NAME"``.

    Spec: AS-20, AS-21, TB-4, TB-5 (bundle certificates are anchors only).
    """

    certificate: Certificate
    source: str

    @property
    def from_bundle(self) -> bool:
        """True when the anchor came from a trust bundle (its source is ``"bundle NAME"``)."""
        return self.source.startswith("bundle ")

    def to_json(self) -> dict[str, Any]:
        """Subject, SHA-256 fingerprint, validity and source, as JSON-ready values.

        :returns: a dict of strings.

        Spec: AS-20 (explainable decisions).
        """
        return {**_cert_json(self.certificate), "source": self.source}


@dataclass(frozen=True)
class TrustStore:
    """The anchors and revocation mode of one local health domain (or one local address).

    Incoming anchors decide which senders' messages are accepted; outgoing anchors decide which
    recipients we encrypt to. The two sets are kept apart: an anchor only in the outgoing set never lets
    an incoming message through, and the reverse (AS-21).

    :ivar domain: the local health domain (None for an ad-hoc store, e.g. ``hisp cert validate``).
    :ivar incoming: anchors for senders (signers of incoming messages).
    :ivar outgoing: anchors for recipients (certificates we encrypt to).
    :ivar revocation: hard, soft or off (AS-20).
    :ivar policy: the security policy in force (key sizes, digests, clock skew in seconds).
    :ivar address: the single local address this store is for, or None for the whole domain.
    :ivar intermediates: extra issuers available for path building (never anchors).

    Spec: AS-20, AS-21, TB-4.
    """

    domain: HealthDomain | None = None
    incoming: tuple[TrustAnchor, ...] = ()
    outgoing: tuple[TrustAnchor, ...] = ()
    revocation: RevocationMode = RevocationMode.SOFT
    policy: SecurityPolicy = DEFAULT_POLICY
    address: DirectAddress | None = None
    intermediates: tuple[Certificate, ...] = ()
    _certificates: dict[Direction, tuple[Certificate, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _verdict_keys: dict[Direction, tuple[Any, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        for name in ("incoming", "outgoing"):
            anchors = tuple(getattr(self, name))
            if not all(isinstance(a, TrustAnchor) for a in anchors):
                raise ConfigError(f"trust store {name} anchors must be TrustAnchor values")
            object.__setattr__(self, name, anchors)
        object.__setattr__(self, "intermediates", tuple(self.intermediates))
        if not isinstance(self.revocation, RevocationMode):
            raise ConfigError(f"revocation mode must be a RevocationMode, not {self.revocation!r}")
        # the anchor certificates per direction, computed once: validation reads them on every message
        self._certificates[Direction.INCOMING] = _unique(a.certificate for a in self.incoming)
        self._certificates[Direction.OUTGOING] = _unique(a.certificate for a in self.outgoing)

    def anchors_for(self, direction: Direction) -> tuple[TrustAnchor, ...]:
        """The anchors of one direction only (AS-21).

        :param direction: incoming (senders) or outgoing (recipients).
        :returns: the anchors, in configuration order.
        :raises ConfigError: ``direction`` is not a :class:`~hisp.core.policy.Direction`.

        Spec: AS-21, TB-4.
        """
        if direction is Direction.INCOMING:
            return self.incoming
        if direction is Direction.OUTGOING:
            return self.outgoing
        raise ConfigError(f"unknown direction {direction!r}")

    def certificates_for(self, direction: Direction) -> tuple[Certificate, ...]:
        """The anchor certificates of one direction, without duplicates.

        :param direction: incoming or outgoing.
        :returns: the certificates.
        :raises ConfigError: ``direction`` is not a :class:`~hisp.core.policy.Direction`.

        Spec: AS-21.
        """
        self.anchors_for(direction)
        return self._certificates[direction]

    def describe(self) -> str:
        """One line for logs: scope, anchor counts and revocation mode."""
        scope = str(self.address or self.domain or "ad-hoc store")
        return (
            f"{scope}: {len(self.incoming)} incoming and {len(self.outgoing)} outgoing anchors, "
            f"revocation {self.revocation.value}, policy {self.policy.name}"
        )


def _unique(certs: Iterable[Certificate]) -> tuple[Certificate, ...]:
    return tuple(dict.fromkeys(certs))


class RevocationStatus(enum.Enum):
    """The revocation result of a verdict (AS-20).

    ``good``: a CRL or OCSP answer said the certificates are not revoked; ``revoked``: one said a
    certificate is revoked (always rejects); ``unknown``: no answer could be had (soft mode accepts with a
    warning, hard mode rejects); ``not checked``: revocation is off, or the path declares no source.
    """

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    NOT_CHECKED = "not checked"


@dataclass(frozen=True)
class RevocationResult:
    """What revocation checking found, and where.

    :ivar status: good, revoked, unknown or not checked.
    :ivar mode: the mode in force (hard, soft, off).
    :ivar sources: the CRL or OCSP URLs that answered (good, revoked), or that failed (unknown).
    :ivar detail: one line for people, e.g. why the status is unknown.

    Spec: AS-20; RFC 5280 section 6.3 (CRL), RFC 6960 (OCSP).
    """

    status: RevocationStatus
    mode: RevocationMode
    sources: tuple[str, ...] = ()
    detail: str = ""

    def describe(self) -> str:
        """One line: status, mode, sources and detail."""
        text = f"revocation {self.status.value} (mode {self.mode.value})"
        if self.sources:
            text += " from " + ", ".join(self.sources)
        return text + (f": {self.detail}" if self.detail else "")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values: status, mode, sources, detail."""
        return {
            "status": self.status.value,
            "mode": self.mode.value,
            "sources": list(self.sources),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class FetchRecord:
    """One request a revocation fetcher made (or answered from its cache) during one validation.

    :ivar kind: ``"crl"``, ``"ocsp"`` or ``"certificate"`` (AIA caIssuers).
    :ivar url: the URL.
    :ivar ok: whether usable data was obtained.
    :ivar detail: ``"fetched"``, ``"cached"`` or the error, one line.

    Spec: AS-20 (revocation source in the verdict).
    """

    kind: str
    url: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class RevocationEvidence:
    """What one validation's fetch session relied on, so that its verdict can be reused while that holds.

    Made by the fetcher's session (``FetchSession.evidence()``) and checked by the fetcher
    (``RevocationFetcher.is_current()``); the core only stores it and collects ``times``.

    :ivar fetcher: the fetcher's cache identity (random bytes, ``cache_id``).
    :ivar dependencies: ``(cache, key, version)`` of every cache entry of the fetcher whose answer was
        used (CRL, OCSP response, AIA certificates, a remembered failure).
    :ivar times: every date in those answers that validation may compare its time with (thisUpdate,
        nextUpdate, revocation dates, validity of fetched certificates), aware.
    :ivar taken: when the evidence was taken, in seconds of the fetcher's monotonic clock.

    Spec: AS-20 (revocation caching until nextUpdate).
    """

    fetcher: bytes
    dependencies: tuple[tuple[str, Any, int], ...]
    times: tuple[datetime, ...]
    taken: float


class FetchSession(Protocol):
    """The fetchers for one validation, and what they did (implemented by hisp.adapters.revocation).

    A session may also offer ``evidence() -> RevocationEvidence | None`` (what the validation relied on;
    None: do not reuse its verdict); without it, verdicts reached with fetching are never cached.
    """

    @property
    def fetchers(self) -> Fetchers:
        """certvalidator's fetchers (CRL, OCSP, certificates), bounded by the adapter."""
        ...

    def records(self) -> tuple[FetchRecord, ...]:
        """What was fetched, from cache or the network, in order."""
        ...


class RevocationFetcher(Protocol):
    """Where validation gets CRLs, OCSP responses and AIA issuers: an adapter passed in (the core does no I/O).

    A fetcher that also has ``cache_id: bytes`` and ``is_current(evidence, *, short_lived) -> bool`` lets
    :func:`validate` reuse verdicts (see :class:`_VerdictCache`); others are consulted on every validation.

    Spec: AS-20 (CRL, OCSP, AIA with bounded time and size), CP-2.
    """

    def open_session(self) -> FetchSession:
        """Fresh fetchers (with a fresh request budget and deadline) for one validation."""
        ...


@dataclass
class _Progress:
    """What a validation established before it failed (for the failed verdict)."""

    chain: tuple[Certificate, ...] = ()
    records: tuple[FetchRecord, ...] = ()
    revocation: RevocationResult | None = None
    warnings: list[str] = field(default_factory=list)
    #: what the fetch sessions relied on; ``reusable`` False when one of them could not say
    evidence: list[RevocationEvidence] = field(default_factory=list)
    reusable: bool = True


def _declared_sources(cert: Certificate) -> tuple[str, ...]:
    """The HTTP CRL distribution points and OCSP responders a certificate names (CP-2)."""
    urls: list[str] = []
    points = cert._extension(ExtensionOID.CRL_DISTRIBUTION_POINTS)
    for point in points or ():
        urls.extend(n.value for n in point.full_name or () if isinstance(n, cx509.UniformResourceIdentifier))
    access = cert._extension(ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    for entry in access or ():
        if entry.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            entry.access_location, cx509.UniformResourceIdentifier
        ):
            urls.append(entry.access_location.value)
    return tuple(u for u in urls if u.lower().startswith(("http://", "https://")))


def _run_with_io(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run certvalidator's coroutine on an event loop: with fetching on it awaits asyncio primitives.

    In a thread without a running loop (a worker thread, the CLI) a private loop is used. Inside a
    running loop (an async caller that did not move validation to a thread) the coroutine runs on a
    private loop in a helper thread and the caller waits for it: the fetchers' own time budget bounds
    the wait, but the caller's loop is blocked meanwhile, so async callers should use a thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(make())
        except BaseException as exc:  # handed back to the caller's thread
            outcome["error"] = exc

    helper = threading.Thread(target=target, name="hisp-trust-validation", daemon=True)
    helper.start()
    helper.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


_REVINFO_POLICIES = {
    RevocationMode.OFF: CertRevTrustPolicy(NO_REVOCATION),
    RevocationMode.SOFT: CertRevTrustPolicy(RevocationCheckingPolicy.from_legacy("soft-fail")),
    RevocationMode.HARD: CertRevTrustPolicy(RevocationCheckingPolicy.from_legacy("hard-fail")),
}


def _path_ders(path: Any) -> tuple[bytes, ...]:
    """certvalidator's path (anchor first) as DER, leaf first, a leaf that is its own anchor once."""
    ders: list[bytes] = []
    for cert in path.iter_certs(include_root=True):
        if not ders or ders[-1] != cert.dump():
            ders.append(cert.dump())
    return tuple(reversed(ders))


def _find_path_online(
    certificate: Certificate,
    anchors: Sequence[Certificate],
    intermediates: Sequence[Certificate],
    at: datetime,
    skew: int,
    mode: RevocationMode,
    fetcher: RevocationFetcher | None,
    progress: _Progress,
) -> tuple[bytes, ...]:
    """certvalidator's path with revocation checked in ``mode`` and AIA/CRL/OCSP through ``fetcher``.

    Soft mode is not certvalidator's "soft-fail" (which also passes, silently, a fetched CRL that does not
    cover the certificate): the path is checked in hard mode, and only when that fails for want of
    revocation information is it checked again without revocation, the verdict then saying "unknown"
    (``progress.revocation``). Never cached: the answer depends on revocation data and the network.

    :returns: the path, leaf first, as DER.
    """
    strict = RevocationMode.HARD if mode is RevocationMode.SOFT else mode
    try:
        return _validate_online(certificate, anchors, intermediates, at, skew, strict, fetcher, progress)
    except TrustError as exc:
        if mode is not RevocationMode.SOFT or exc.reason != "revocation unknown":
            raise
        unknown = exc.message.removeprefix("revocation unknown: ").removesuffix(f": {certificate.describe()}")
    progress.chain = ()
    ders = _validate_online(certificate, anchors, intermediates, at, skew, RevocationMode.OFF, fetcher, progress)
    failed = tuple(dict.fromkeys(r.url for r in progress.records if not r.ok and r.kind in ("crl", "ocsp")))
    problems = [r.detail for r in progress.records if not r.ok and r.kind in ("crl", "ocsp")]
    progress.revocation = RevocationResult(
        RevocationStatus.UNKNOWN, mode, failed, "; ".join(dict.fromkeys([*problems, unknown]))
    )
    return ders


def _validate_online(
    certificate: Certificate,
    anchors: Sequence[Certificate],
    intermediates: Sequence[Certificate],
    at: datetime,
    skew: int,
    mode: RevocationMode,
    fetcher: RevocationFetcher | None,
    progress: _Progress,
) -> tuple[bytes, ...]:
    """One certvalidator run with fetching through ``fetcher`` (its records added to ``progress``)."""
    session = fetcher.open_session() if fetcher is not None else None
    context = ValidationContext(
        trust_roots=[asn1_x509.Certificate.load(a.der) for a in anchors],
        other_certs=[asn1_x509.Certificate.load(c.der) for c in intermediates],
        moment=at,
        allow_fetching=session is not None,
        fetchers=session.fetchers if session is not None else None,
        crls=[],  # no pre-fetched data; also keeps hard mode without a fetcher legal (it then rejects)
        revinfo_policy=_REVINFO_POLICIES[mode],
        time_tolerance=abs(timedelta(seconds=skew)),
        algorithm_usage_policy=DisallowWeakAlgorithmsPolicy(
            weak_hash_algos=frozenset(), rsa_key_size_threshold=0, dsa_key_size_threshold=0
        ),
    )
    validator = CertificateValidator(asn1_x509.Certificate.load(certificate.der), validation_context=context)
    try:
        path = _run_with_io(validator.async_validate_path)
    except PathValidationError as exc:
        # the path was built and failed a check on it (revoked, expired ...): the verdict shows it
        known = {c.der: c for c in (*anchors, *intermediates, certificate)}
        with contextlib.suppress(Exception):
            progress.chain = tuple(known.get(d) or Certificate.from_der(d) for d in _path_ders(exc.original_path))
        raise _trust_error(exc, certificate) from None
    except (ValidationError, PathBuildingError) as exc:
        raise _trust_error(exc, certificate) from None
    finally:
        if session is not None:
            progress.records = (*progress.records, *session.records())
            taken = getattr(session, "evidence", None)
            evidence = taken() if callable(taken) else None
            if isinstance(evidence, RevocationEvidence):
                progress.evidence.append(evidence)
            else:
                progress.reusable = False
    return _path_ders(path)


def _revocation_result(
    chain: Sequence[Certificate],
    mode: RevocationMode,
    fetcher: RevocationFetcher | None,
    records: Sequence[FetchRecord],
) -> RevocationResult:
    """The revocation result of a path certvalidator accepted in ``mode`` (soft mode's "unknown" is set
    by :func:`_find_path_online`)."""
    if mode is RevocationMode.OFF:
        return RevocationResult(RevocationStatus.NOT_CHECKED, mode, (), "revocation checking is off")
    checked = chain[:-1] if len(chain) > 1 else chain  # the anchor is trusted as configured
    if not any(_declared_sources(c) for c in checked):
        return RevocationResult(
            RevocationStatus.NOT_CHECKED, mode, (), "no CRL distribution point or OCSP responder in the path (CP-2)"
        )
    answered = tuple(dict.fromkeys(r.url for r in records if r.ok and r.kind in ("crl", "ocsp")))
    if fetcher is None or not answered:  # pragma: no cover - hard mode rejects these; soft mode set "unknown"
        return RevocationResult(RevocationStatus.UNKNOWN, mode, (), "no revocation answer")
    return RevocationResult(RevocationStatus.GOOD, mode, answered)


def _check_path(
    certificate: Certificate,
    anchors: Sequence[Certificate],
    intermediates: Sequence[Certificate],
    at: datetime,
    policy: SecurityPolicy,
    usage: str,
    mode: RevocationMode,
    fetcher: RevocationFetcher | None,
    progress: _Progress,
) -> tuple[tuple[Certificate, ...], RevocationResult]:
    """The checks of :func:`validate_path`, with revocation in ``mode`` (see :func:`validate`)."""
    require_aware(at)
    if usage not in USAGES:
        raise ConfigError(f"unknown key usage {usage!r}; known: {', '.join(USAGES)}")
    if usage == "signing" and not certificate.can_sign:
        raise _usage_error(certificate, usage)
    if usage == "encipherment" and not certificate.can_encipher:
        raise _usage_error(certificate, usage)
    # The leaf's own validity first: "expired" is the most useful answer even when no path exists.
    _check_validity(certificate, certificate, at, policy.clock_skew, "certificate")
    if not anchors:
        raise TrustError(
            f"untrusted: no trust anchors configured: {certificate.describe()}",
            reason="untrusted",
            certificate=certificate.fingerprint_sha256,
        )

    skew = policy.clock_skew
    if mode is RevocationMode.OFF:
        # Offline and remembered first; only when no path exists offline may AIA fetching find one.
        try:
            ders = _find_path(certificate, anchors, intermediates, at, skew)
        except TrustError as exc:
            if fetcher is None or exc.reason != "untrusted":
                raise
            ders = _find_path_online(certificate, anchors, intermediates, at, skew, mode, fetcher, progress)
    else:
        ders = _find_path_online(certificate, anchors, intermediates, at, skew, mode, fetcher, progress)
    known = {c.der: c for c in (*anchors, *intermediates, certificate)}
    chain = tuple(known.get(d) or Certificate.from_der(d) for d in ders)
    progress.chain = chain
    if len(chain) - 1 > MAX_ISSUERS:
        raise TrustError(
            f"invalid path: {len(chain) - 1} issuers exceed the limit of {MAX_ISSUERS}: "
            f"{certificate.describe()}",
            reason="invalid path",
            certificate=certificate.fingerprint_sha256,
        )
    # certvalidator does not check the anchor's own validity period (RFC 5280 leaves it to local
    # policy); an expired anchor is refused here, as the Direct RIs do (ETT's intermediate.sitenv.org).
    if len(chain) > 1:
        _check_validity(chain[-1], certificate, at, policy.clock_skew, "trust anchor")
    _apply_policy(chain, policy)
    revocation = progress.revocation or _revocation_result(chain, mode, fetcher, progress.records)
    progress.revocation = revocation
    if revocation.status is RevocationStatus.UNKNOWN:
        if mode is RevocationMode.HARD:
            raise TrustError(
                f"revocation unknown: {revocation.detail}: {certificate.describe()}",
                reason="revocation unknown",
                certificate=certificate.fingerprint_sha256,
            )
        progress.warnings.append(f"revocation status unknown, accepted in soft mode: {revocation.detail}")
    elif revocation.status is RevocationStatus.NOT_CHECKED and mode is not RevocationMode.OFF:
        progress.warnings.append(revocation.detail)
    return chain, revocation


def _cert_json(cert: Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject,
        "issuer": cert.issuer,
        "san": {"rfc822": list(cert.rfc822_names), "dns": list(cert.dns_names)},
        "fingerprint_sha256": cert.fingerprint_sha256,
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
    }


@dataclass(frozen=True)
class TrustVerdict:
    """One trust decision, accepted or not, with everything needed to explain it.

    :ivar certificate: the certificate decided on (the leaf).
    :ivar direction: incoming (a signer) or outgoing (a recipient).
    :ivar trusted: whether it was accepted.
    :ivar chain: the path built, leaf first, anchor last (as far as it was built when it failed; may be
        empty).
    :ivar anchor: the anchor reached (None when not trusted).
    :ivar nearest_anchor: on failure, the configured anchor nearest to the certificate (the one its issuer
        names lead to), or None when no configured anchor is related.
    :ivar reason: on failure, the short machine reason (``"expired"``, ``"untrusted"``, ``"revoked"``,
        ``"policy"``...); None when trusted.
    :ivar failure: on failure, why, one line for people; None when trusted.
    :ivar revocation: the revocation result and its source.
    :ivar policy_rule: the rule applied: policy, direction, scope, usage, revocation mode.
    :ivar warnings: accepted oddities, e.g. an unreachable CRL in soft mode.
    :ivar at: the validation time (aware).
    :ivar address: the address whose binding was checked (AS-2), or None.

    Spec: AS-20, AS-21, AS-2, AS-3; DESIGN.md section 4 (verdicts carry evidence).
    """

    certificate: Certificate
    direction: Direction
    trusted: bool
    chain: tuple[Certificate, ...]
    anchor: TrustAnchor | None
    nearest_anchor: TrustAnchor | None
    reason: str | None
    failure: str | None
    revocation: RevocationResult
    policy_rule: str
    warnings: tuple[str, ...]
    at: datetime
    address: DirectAddress | None = None

    def explain(self) -> str:
        """The decision for people: outcome, certificate, chain, anchor, revocation, rule, warnings.

        :returns: several lines of text.

        Spec: AS-20 (explainable decisions).
        """
        failure = (self.failure or "").removeprefix(f"{self.reason}: ")
        outcome = "TRUSTED" if self.trusted else f"NOT TRUSTED ({self.reason}): {failure}"
        lines = [
            f"{outcome}",
            f"  {self.direction.value} at {self.at.isoformat()}"
            + (f", bound to {self.address}" if self.address is not None else ""),
            f"  certificate: {self.certificate.describe()}",
        ]
        anchor_der = self.anchor.certificate.der if self.anchor is not None else None
        for depth, cert in enumerate(self.chain):
            role = "leaf" if depth == 0 else "anchor" if cert.der == anchor_der else "issuer"
            lines.append(f"  {depth} {role}: {cert.describe()}, valid until {cert.not_after.isoformat()}")
        if self.anchor is not None:
            lines.append(f"  anchor reached: {self.anchor.certificate.subject} (from {self.anchor.source})")
        elif self.nearest_anchor is not None:
            lines.append(
                f"  nearest anchor: {self.nearest_anchor.certificate.subject} (from {self.nearest_anchor.source})"
                + self._nearest_note()
            )
        elif not self.trusted:
            lines.append(
                "  nearest anchor: none of the configured anchors is reachable from its issuer "
                f"{self.certificate.issuer} with the intermediates at hand"
            )
        lines.append(f"  {self.revocation.describe()}")
        lines.append(f"  rule: {self.policy_rule}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def _nearest_note(self) -> str:
        """Why the nearest anchor was not reached, when its name alone says too little: it has the issuer's name
        but did not sign (another CA of the same name: a different key), or it did sign and the path failed on
        something else (named by the failure above)."""
        if self.nearest_anchor is None:
            return ""
        anchor = self.nearest_anchor.certificate
        child = next((c for c in (*self.chain, self.certificate) if c.x509.issuer == anchor.x509.subject), None)
        if child is None or child.der == anchor.der:
            return ""
        try:
            child.x509.verify_directly_issued_by(anchor.x509)
        except (ValueError, TypeError, InvalidSignature):
            return (
                f": it has the name of {child.subject}'s issuer but its key did not sign it (another CA with the "
                f"same name; anchor fingerprint sha256 {anchor.fingerprint_sha256[:16]}...)"
            )
        return ": it signed the path; the path failed on what is said above"

    def to_json(self) -> dict[str, Any]:
        """The verdict as JSON-ready values (the shape ``hisp cert validate --json`` prints).

        :returns: keys ``trusted``, ``direction``, ``at``, ``address``, ``certificate``, ``chain``,
            ``anchor``, ``nearest_anchor``, ``reason``, ``failure``, ``revocation``, ``policy_rule``,
            ``warnings``.

        Spec: AS-20.
        """
        return {
            "trusted": self.trusted,
            "direction": self.direction.value,
            "at": self.at.isoformat(),
            "address": None if self.address is None else str(self.address),
            "certificate": _cert_json(self.certificate),
            "chain": [_cert_json(c) for c in self.chain],
            "anchor": None if self.anchor is None else self.anchor.to_json(),
            "nearest_anchor": None if self.nearest_anchor is None else self.nearest_anchor.to_json(),
            "reason": self.reason,
            "failure": self.failure,
            "revocation": self.revocation.to_json(),
            "policy_rule": self.policy_rule,
            "warnings": list(self.warnings),
        }

    def to_path_verdict(self) -> PathVerdict:
        """The :class:`PathVerdict` the security agent expects, carrying this verdict.

        :returns: the path verdict (its ``explain()`` is this verdict's).
        :raises TrustError: when the verdict is not trusted (there is no path to hand on).

        Spec: AS-20.
        """
        if not self.trusted or self.anchor is None:
            raise TrustError(f"{self.reason}: {self.failure}", reason=self.reason or "untrusted", verdict=self)
        return PathVerdict(
            certificate=self.certificate,
            chain=self.chain,
            anchor=self.anchor.certificate,
            policy_rule=self.policy_rule,
            at=self.at,
            verdict=self,
        )


def _nearest_anchor(
    certificate: Certificate, anchors: Sequence[TrustAnchor], intermediates: Sequence[Certificate]
) -> TrustAnchor | None:
    """The anchor the certificate's issuer names lead to, through the intermediates at hand."""
    by_subject = {a.certificate.x509.subject: a for a in anchors}
    issuers: dict[Any, list[Certificate]] = {}
    for cert in intermediates:
        issuers.setdefault(cert.x509.subject, []).append(cert)
    current, seen = certificate, {certificate.der}
    for _ in range(MAX_ISSUERS + 1):
        if current.x509.issuer in by_subject:
            return by_subject[current.x509.issuer]
        following = [c for c in issuers.get(current.x509.issuer, ()) if c.der not in seen]
        if not following:
            return None
        current = following[0]
        seen.add(current.der)
    return None


def _anchor_for(cert: Certificate, anchors: Sequence[TrustAnchor]) -> TrustAnchor:
    for anchor in anchors:
        if anchor.certificate == cert:
            return anchor
    return TrustAnchor(cert, "unknown")  # pragma: no cover - the path always ends at a given anchor


def _check_leaf_rules(
    certificate: Certificate, store: TrustStore, direction: Direction, address: DirectAddress | None
) -> None:
    """Direct rules on the certificate itself: binding (AS-2), no wildcard (AS-3), anchors only (TB-5)."""
    wildcards = [name for name in certificate.dns_names if "*" in name]
    if wildcards:
        raise PolicyViolation(
            f"wildcard dNSName {wildcards[0]} refused (AS-3): {certificate.describe()}",
            certificate=certificate.fingerprint_sha256,
        )
    if address is not None and certificate.binding_for(address) is None:
        raise TrustError(
            f"not bound: no subjectAltName names {address} or its domain (AS-2, AS-3): {certificate.describe()}",
            reason="not bound",
            certificate=certificate.fingerprint_sha256,
        )
    if direction is Direction.OUTGOING:
        # TB-5: a bundle's certificates are trust anchors, never a recipient's encryption certificate.
        for anchor in (*store.incoming, *store.outgoing):
            if anchor.from_bundle and anchor.certificate == certificate:
                raise TrustError(
                    f"anchor only: a trust bundle certificate ({anchor.source}) is never an encryption "
                    f"certificate (TB-5): {certificate.describe()}",
                    reason="anchor only",
                    certificate=certificate.fingerprint_sha256,
                )


# -- verdicts remembered (with or without revocation) ------------------------------------------------
# A verdict of validate() depends on (1) its inputs: the certificate, the store's anchors of the direction
# (with their sources) and intermediates, the other direction's bundle anchors (TB-5), the scope and mode of
# the store, the effective policy, usage, direction, address and the intermediates given; (2) the time
# ``at``, only through comparisons with dates: the validity of every certificate validation can see, and
# every date of the revocation answers used (thisUpdate, nextUpdate, revocation dates), each also shifted by
# the clock-skew allowance; (3) the revocation answers the fetcher gives, which are its cache entries.
# So a verdict is remembered under a key of (1) made of bytes and values (never object identity: the
# fetcher's part is its random cache_id), for the *time window* around ``at`` that contains none of the
# dates of (2) (an ``at`` on such a date is not remembered), together with the fetcher's evidence for (3):
# the versions of the cache entries used. It is reused for another ``at`` in the window only while the
# fetcher says every such entry is still the same and fresh (RevocationFetcher.is_current), i.e. exactly
# while a fresh validation would be answered with the same data; a soft-fail "unknown" verdict at most
# failure_ttl seconds. A fresh failure to fetch is never remembered: the next validation sees the
# remembered failure (other text), and its verdict is remembered then.

#: Keys remembered (least recently used dropped first), and time windows per key.
_VERDICT_CACHE_KEYS = 1024
_VERDICT_CACHE_WINDOWS = 4


@dataclass(frozen=True)
class _Outcome:
    """A remembered verdict, and for a failure the error to raise again."""

    verdict: TrustVerdict
    error: type[TrustError] | type[PolicyViolation] | None = None
    message: str = ""
    context: tuple[tuple[str, Any], ...] = ()

    def replay(self, at: datetime) -> TrustVerdict:
        """The verdict at ``at`` (the caller's own datetime, time zone included); raises as it did."""
        verdict = dataclasses.replace(self.verdict, at=at)
        if self.error is TrustError:
            raise TrustError(self.message, reason=verdict.reason or "untrusted", verdict=verdict, **dict(self.context))
        if self.error is PolicyViolation:
            raise PolicyViolation(self.message, verdict=verdict, **dict(self.context))
        return verdict


@dataclass(frozen=True)
class _Window:
    """One remembered outcome: valid for ``after < at < before`` (None: unbounded), or when ``exact`` only for
    ``at == after`` (an ``at`` that is itself one of the dates), while its evidence holds."""

    after: datetime | None
    before: datetime | None
    outcome: _Outcome
    evidence: tuple[RevocationEvidence, ...]
    short_lived: bool
    exact: bool = False

    def covers(self, at: datetime) -> bool:
        if self.exact:
            return at == self.after
        return (self.after is None or self.after < at) and (self.before is None or at < self.before)


class _VerdictCache:
    """Bounded, thread-safe memory of :func:`validate`'s outcomes (see the comment above)."""

    def __init__(self, keys: int, windows: int) -> None:
        self._items: OrderedDict[tuple[Any, ...], list[_Window]] = OrderedDict()
        self._max_keys = keys
        self._max_windows = windows
        self._lock = threading.Lock()

    def lookup(self, key: tuple[Any, ...], at: datetime, fetcher: RevocationFetcher | None) -> _Outcome | None:
        """The outcome remembered for ``key`` at ``at`` if its evidence still holds, else None."""
        with self._lock:
            windows = self._items.get(key)
            if windows is None:
                return None
            self._items.move_to_end(key)
            window = next((w for w in windows if w.covers(at)), None)
        if window is None:
            return None
        if window.evidence:
            is_current = getattr(fetcher, "is_current", None)
            if not callable(is_current) or not all(
                is_current(e, short_lived=window.short_lived) for e in window.evidence
            ):
                return None
        return window.outcome

    def store(self, key: tuple[Any, ...], at: datetime, window: _Window) -> None:
        """Remember ``window`` for ``key``, replacing any window that covers ``at``."""
        if self._max_keys <= 0:
            return
        with self._lock:
            windows = [w for w in self._items.get(key, ()) if not w.covers(at)][-(self._max_windows - 1) :]
            windows.append(window)
            self._items[key] = windows
            self._items.move_to_end(key)
            while len(self._items) > self._max_keys:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (tests, benchmarks)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


_VERDICTS = _VerdictCache(_VERDICT_CACHE_KEYS, _VERDICT_CACHE_WINDOWS)


def _store_key(store: TrustStore, direction: Direction) -> tuple[Any, ...]:
    """The parts of ``store`` a verdict for ``direction`` depends on, as bytes and values (computed once)."""
    found = store._verdict_keys.get(direction)
    if found is None:
        bundle_anchors = tuple(a.certificate.der for a in (*store.incoming, *store.outgoing) if a.from_bundle)
        found = (
            None if store.domain is None else str(store.domain),
            None if store.address is None else str(store.address),
            store.revocation.value,
            tuple((a.certificate.der, a.source) for a in store.anchors_for(direction)),
            tuple(c.der for c in store.intermediates),
            bundle_anchors if direction is Direction.OUTGOING else (),
        )
        store._verdict_keys[direction] = found
    return found


def _window(
    at: datetime, certificates: Iterable[Certificate], evidence: Sequence[RevocationEvidence], skew: int
) -> tuple[datetime | None, datetime | None, bool] | None:
    """The open window around ``at`` holding none of the dates validation compares ``at`` with (each also
    shifted by the clock-skew allowance both ways), and False; ``(at, at, True)`` when ``at`` is one of
    them; None when a date is unusual."""
    try:
        raw: list[datetime] = []
        for cert in certificates:
            raw.extend(_validity(cert.der))
            raw.extend((cert.not_before, cert.not_after))
        for item in evidence:
            raw.extend(item.times)
        shifts = {timedelta(0), abs(timedelta(seconds=skew)), -abs(timedelta(seconds=skew))}
        after: datetime | None = None
        before: datetime | None = None
        for moment in raw:
            for shift in shifts:
                edge = moment + shift
                if edge == at:
                    return at, at, True
                if edge < at:
                    after = edge if after is None or edge > after else after
                elif before is None or edge < before:
                    before = edge
    except (ValueError, TypeError, LookupError, AttributeError, OverflowError):
        return None
    return after, before, False


def _remember(
    key: tuple[Any, ...] | None,
    at: datetime,
    outcome: _Outcome,
    certificates: Iterable[Certificate],
    progress: _Progress,
    skew: int,
) -> None:
    """Remember ``outcome`` when it may be reused (see the comment above)."""
    if key is None or not progress.reusable:
        return
    # a text that names the validation time itself (certvalidator's "not recent enough (AT > nextUpdate)")
    # would differ for another time in the window: such verdicts are not remembered
    verdict = outcome.verdict
    texts = (outcome.message, verdict.failure or "", verdict.revocation.detail, *verdict.warnings)
    renderings = {str(at), str(at.astimezone(UTC)), at.isoformat(), at.astimezone(UTC).isoformat()}
    if any(r in text for r in renderings for text in texts):
        return
    window = _window(at, certificates, progress.evidence, skew)
    if window is None:
        return
    short = outcome.verdict.revocation.status is RevocationStatus.UNKNOWN
    _VERDICTS.store(key, at, _Window(window[0], window[1], outcome, tuple(progress.evidence), short, window[2]))


def validate(
    certificate: Certificate,
    *,
    store: TrustStore,
    direction: Direction,
    intermediates: Sequence[Certificate] = (),
    at: datetime,
    address: DirectAddress | None = None,
    revocation: RevocationFetcher | None = None,
    policy: SecurityPolicy | None = None,
    usage: str | None = None,
) -> TrustVerdict:
    """Decide whether ``certificate`` is trusted for ``direction`` by ``store`` at ``at``, and say why.

    Checks, in order: no wildcard dNSName in the certificate (AS-3); when ``address`` is given, the
    certificate is bound to it through subjectAltName (AS-2, AS-3); for outgoing, the certificate is not
    a trust bundle's anchor (TB-5); then everything :func:`validate_path` checks (key usage, validity with
    the policy's clock skew, RFC 5280 path to an anchor of *this direction only* (AS-21), at most
    :data:`MAX_ISSUERS` issuers, RSA >= ``policy.min_rsa_bits``, ECDSA P-256/P-384, no SHA-1/MD5
    certificate signatures under direct-1.3); then revocation in ``store.revocation`` mode: CRLs and OCSP
    for every certificate of the path but the anchor, and AIA caIssuers for missing intermediates, all
    through ``revocation``. A revoked answer always rejects; an unreachable source rejects in hard mode
    and is accepted with a warning in soft mode; off checks nothing (AIA is still used when a path
    cannot be built offline).

    Verdicts are remembered, revocation on or off (see "verdicts remembered" in this module): a verdict
    is reused for the same certificate, store anchors and intermediates, policy, usage, direction, address,
    revocation mode and fetcher, for an ``at`` between the same certificate and revocation dates, and only
    while every CRL, OCSP answer, AIA certificate and remembered failure it relied on is still the same,
    fresh entry of the fetcher's caches (``RevocationFetcher.is_current``): a change on a CRL server is
    seen by the first validation after the fetcher would fetch again (the CRL's nextUpdate, a failure's
    ``failure_ttl``), exactly as without the cache. A soft-fail "unknown" verdict is reused for at most
    ``failure_ttl`` seconds. Without revocation the path itself is also remembered (:func:`validate_path`).
    With fetching this runs an asyncio loop of its own (see :func:`_run_with_io`): call it from a worker
    thread, never on an event loop's thread.

    :param certificate: the signer's or recipient's certificate.
    :param store: the trust store of the local domain (or address).
    :param direction: incoming (a signer: ``signing`` usage) or outgoing (a recipient: ``encipherment``).
    :param intermediates: issuers that may complete the path (from the SignedData, discovery ...).
    :param at: the validation time, aware.
    :param address: the peer's Direct address the certificate must be bound to, or None.
    :param revocation: where CRLs, OCSP answers and AIA issuers come from; None = no fetching (then
        soft mode reports "unknown" and hard mode rejects any certificate that declares a source).
    :param policy: overrides ``store.policy`` (e.g. the security agent's policy).
    :param usage: ``"signing"`` or ``"encipherment"``; default from ``direction``.
    :returns: the verdict, ``trusted`` True, with chain, anchor, revocation result and warnings.
    :raises TrustError: not trusted; ``reason`` as in :func:`validate_path` plus ``"not bound"``,
        ``"anchor only"``, ``"revocation unknown"`` (hard mode) and ``"revoked"``;
        ``exc.context["verdict"]`` is the failed :class:`TrustVerdict`.
    :raises PolicyViolation: a wildcard dNSName, wrong key usage, short key, refused curve or digest;
        ``exc.context["verdict"]`` is the failed verdict.
    :raises ConfigError: unknown ``direction`` or ``usage``.
    :raises ValueError: ``at`` is naive.

    Spec: AS-2, AS-3, AS-4, AS-5, AS-8, AS-20, AS-21, TB-5, CP-2; RFC 5280 sections 6.1 and 6.3; RFC 6960.
    """
    require_aware(at)
    policy = policy or store.policy
    anchors = store.anchors_for(direction)
    if usage is None:
        usage = "signing" if direction is Direction.INCOMING else "encipherment"
    mode = store.revocation
    all_intermediates = (*intermediates, *store.intermediates)
    rule = (
        f"{policy.name}: RFC 5280 path to an {direction.value} anchor of "
        f"{store.address or store.domain or 'the given anchors'}, {usage} usage, revocation {mode.value}"
    )
    progress = _Progress()
    fetcher_id = None if revocation is None else getattr(revocation, "cache_id", None)
    key: tuple[Any, ...] | None = None
    if revocation is None or isinstance(fetcher_id, bytes):
        key = (
            certificate.der,
            direction.value,
            usage,
            None if address is None else str(address),
            _store_key(store, direction),
            policy,
            tuple(c.der for c in intermediates),
            fetcher_id,
        )
        remembered = _VERDICTS.lookup(key, at, revocation)
        if remembered is not None:
            return remembered.replay(at)
    seen = (certificate, *store.certificates_for(direction), *all_intermediates)
    try:
        _check_leaf_rules(certificate, store, direction, address)
        chain, result = _check_path(
            certificate,
            store.certificates_for(direction),
            all_intermediates,
            at,
            policy,
            usage,
            mode,
            revocation,
            progress,
        )
    except (TrustError, PolicyViolation) as exc:
        reason = exc.reason if isinstance(exc, TrustError) else "policy"
        message = exc.message
        aia_failures = [f"{r.url}: {r.detail}" for r in progress.records if not r.ok and r.kind == "certificate"]
        if aia_failures:  # "no issuer found" because the AIA server failed, not because there is none (AS-20)
            message += "; AIA caIssuers fetch failed: " + "; ".join(dict.fromkeys(aia_failures))
        if progress.chain:
            nearest: TrustAnchor | None = _anchor_for(progress.chain[-1], anchors)
        else:
            nearest = _nearest_anchor(certificate, anchors, all_intermediates)
        result = progress.revocation or _failed_revocation(reason, mode, progress.records)
        verdict = TrustVerdict(
            certificate=certificate,
            direction=direction,
            trusted=False,
            chain=progress.chain,
            anchor=None,
            nearest_anchor=nearest,
            reason=reason,
            failure=message,
            revocation=result,
            policy_rule=rule,
            warnings=tuple(progress.warnings),
            at=at,
            address=address,
        )
        context = {k: v for k, v in exc.context.items() if k != "verdict"}
        error = TrustError if isinstance(exc, TrustError) else PolicyViolation
        failed = _Outcome(verdict, error, message, tuple(context.items()))
        _remember(key, at, failed, seen, progress, policy.clock_skew)
        if isinstance(exc, TrustError):
            raise TrustError(message, reason=exc.reason, verdict=verdict, **context) from None
        raise PolicyViolation(message, verdict=verdict, **context) from None
    trusted = TrustVerdict(
        certificate=certificate,
        direction=direction,
        trusted=True,
        chain=chain,
        anchor=_anchor_for(chain[-1], anchors),
        nearest_anchor=None,
        reason=None,
        failure=None,
        revocation=result,
        policy_rule=rule,
        warnings=tuple(progress.warnings),
        at=at,
        address=address,
    )
    _remember(key, at, _Outcome(trusted), seen, progress, policy.clock_skew)
    return trusted


def _failed_revocation(reason: str, mode: RevocationMode, records: Sequence[FetchRecord]) -> RevocationResult:
    """The revocation part of a verdict that failed before revocation was judged, or on revocation."""
    answered = tuple(dict.fromkeys(r.url for r in records if r.ok and r.kind in ("crl", "ocsp")))
    failed = tuple(dict.fromkeys(r.url for r in records if not r.ok and r.kind in ("crl", "ocsp")))
    if reason == "revoked":
        return RevocationResult(RevocationStatus.REVOKED, mode, answered)
    if reason == "revocation unknown":
        detail = "; ".join(r.detail for r in records if not r.ok and r.kind in ("crl", "ocsp"))
        return RevocationResult(RevocationStatus.UNKNOWN, mode, failed, detail or "no revocation answer")
    return RevocationResult(RevocationStatus.NOT_CHECKED, mode, (), "not reached: the path failed first")


@dataclass(frozen=True)
class StoreTrust:
    """The security agent's trust seam backed by a :class:`TrustStore`: signers are validated against its
    incoming anchors, recipients against its outgoing anchors (AS-21), with its revocation mode.

    Implements :class:`hisp.core.agent.SignerTrust` and :class:`hisp.core.agent.RecipientTrust`; the
    :class:`PathVerdict` returned carries the full :class:`TrustVerdict` (``path.verdict``), and failures
    carry the failed verdict in ``exc.context["verdict"]``.

    TB-5 is enforced here, for the agent: :meth:`validate_recipient` goes through :func:`validate`, which
    refuses a trust bundle's anchor as a recipient's (encryption) certificate; and anchors are never
    offered to discovery (stores hold them apart from any certificate source).

    :ivar store: the local domain's (or address's) trust store.
    :ivar revocation: the fetcher for CRL, OCSP and AIA (an adapter), or None for no fetching.

    Spec: AS-20, AS-21, TB-5.
    """

    store: TrustStore
    revocation: RevocationFetcher | None = None

    def validate_signer(
        self,
        certificate: Certificate,
        *,
        sender: DirectAddress,
        intermediates: Sequence[Certificate],
        at: datetime,
        policy: SecurityPolicy,
    ) -> PathVerdict:
        """Validate an incoming message's signer against the incoming anchors, bound to ``sender``.

        :param certificate: the signer's certificate.
        :param sender: the From address it must be bound to (AS-2).
        :param intermediates: certificates carried in the SignedData.
        :param at: the validation time, aware.
        :param policy: the agent's policy in force.
        :returns: the path verdict, with the trust verdict in ``verdict``.
        :raises TrustError: untrusted, expired, revoked, not bound, revocation unknown (hard mode).
        :raises PolicyViolation: weak algorithm or key in the path, wrong key usage, wildcard dNSName.
        :raises ValueError: ``at`` is naive.

        Spec: AS-14, AS-20, AS-21 (incoming).
        """
        return validate(
            certificate,
            store=self.store,
            direction=Direction.INCOMING,
            intermediates=intermediates,
            at=at,
            address=sender,
            revocation=self.revocation,
            policy=policy,
        ).to_path_verdict()

    def validate_recipient(
        self,
        certificate: Certificate,
        *,
        recipient: DirectAddress,
        intermediates: Sequence[Certificate],
        at: datetime,
        policy: SecurityPolicy,
    ) -> PathVerdict:
        """Validate a recipient's certificate against the outgoing anchors, bound to ``recipient``.

        :param certificate: the recipient's (encryption) certificate.
        :param recipient: the address it must be bound to (AS-2).
        :param intermediates: issuers found with it (discovery).
        :param at: the validation time, aware.
        :param policy: the agent's policy in force.
        :returns: the path verdict, with the trust verdict in ``verdict``.
        :raises TrustError: untrusted, expired, revoked, not bound, a bundle anchor (TB-5), revocation
            unknown (hard mode).
        :raises PolicyViolation: weak algorithm or key in the path, wrong key usage, wildcard dNSName.
        :raises ValueError: ``at`` is naive.

        Spec: AS-20, AS-21 (outgoing), TB-5, CD-8.
        """
        return validate(
            certificate,
            store=self.store,
            direction=Direction.OUTGOING,
            intermediates=intermediates,
            at=at,
            address=recipient,
            revocation=self.revocation,
            policy=policy,
        ).to_path_verdict()
