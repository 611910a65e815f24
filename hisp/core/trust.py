"""Path validation to a configured trust anchor: the seam every trust decision goes through (AS-20).

:func:`validate_path` builds and checks an RFC 5280 path from a certificate to one of the given anchors
with pyhanko-certvalidator (time injected, fetching off), then applies the security policy to the path
it found: certificate signature digests, RSA key sizes and EC curves (AS-5, AS-8), and the leaf's key
usage (AS-4). It raises on failure and returns a :class:`PathVerdict` with the evidence on success.

Anchors need not be self-signed: the ETT anchor is an intermediate CA, and path building stops at
whichever configured anchor it reaches (RFC 5280 section 6.1.1 (d): an anchor is trusted because it is
configured, so its own signature is not checked, and neither is its signature digest).

Revocation: not checked yet (no CRLs or OCSP responses are supplied and fetching is off); a later issue
adds trust stores, bundles and CRL/OCSP. Pure: no I/O, no clock.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from asn1crypto import x509 as asn1_x509
from cryptography.x509.oid import SignatureAlgorithmOID
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import (
    ExpiredError,
    InvalidCertificateError,
    NotYetValidError,
    PathBuildingError,
    PathValidationError,
    RevokedError,
    ValidationError,
)
from pyhanko_certvalidator.policy_decl import DisallowWeakAlgorithmsPolicy

from hisp.core.certs import Certificate, require_aware
from hisp.core.policy import SecurityPolicy
from hisp.errors import ConfigError, PolicyViolation, TrustError

__all__ = ["MAX_ISSUERS", "USAGES", "PathVerdict", "validate_path"]

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

    Spec: AS-20, RFC 5280 section 6.1.6 (outputs); DESIGN.md section 4 (verdicts carry evidence).
    """

    certificate: Certificate
    chain: tuple[Certificate, ...]
    anchor: Certificate
    policy_rule: str
    at: datetime

    def explain(self) -> str:
        """The verdict for people: leaf, path and anchor, time and rule.

        :returns: several lines of text.

        Spec: AS-20.
        """
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

    known = {c.der: c for c in (*anchors, *intermediates, certificate)}
    ders = _find_path(certificate, anchors, intermediates, at, policy.clock_skew)
    chain = tuple(known.get(d) or Certificate.from_der(d) for d in ders)
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
    return PathVerdict(
        certificate=certificate,
        chain=chain,
        anchor=chain[-1],
        policy_rule=(
            f"{policy.name}: RFC 5280 path to a configured anchor, {usage} usage, revocation not checked"
        ),
        at=at,
    )
