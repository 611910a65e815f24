"""The audit trail's account of trust decisions: one line per decision, with its certificates' fingerprints.

A trust decision (DESIGN.md section 4: verdicts carry evidence) is explained in full by
:meth:`hisp.core.trust.TrustVerdict.explain` for people at a terminal. An audit event needs the same facts in
one line that survives ``grep``: the certificate, the chain built, the anchor reached (or the nearest one),
the revocation result and its source, the policy rule applied and any warning (an unreachable CRL accepted in
soft mode). This module turns a :class:`~hisp.core.trust.PathVerdict` (accepted) or the
:class:`~hisp.errors.HispError` a refusal raised into that line. Pure: no I/O.

Spec: AS-20 (revocation result and source in the verdict; soft-mode warnings in the audit record), AS-14
(every refusal explained), AS-21 (which store's anchor).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hisp.core.certs import Certificate
from hisp.core.trust import PathVerdict, TrustVerdict
from hisp.errors import HispError

__all__ = ["MAX_LINE", "accepted_line", "fingerprints_of", "refusal_evidence", "verdict_line"]

#: The longest line written (characters); a longer one is cut with an ellipsis. Chains are at most six
#: certificates (five issuers, AS-20), so this only cuts pathological names.
MAX_LINE = 2000


def _cut(text: str) -> str:
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."


def _name(certificate: Certificate) -> str:
    return f"{certificate.subject} (sha256 {certificate.fingerprint_sha256[:16]})"


def verdict_line(verdict: TrustVerdict, role: str = "") -> str:
    """One line for the audit record: outcome, certificate, chain, anchor, revocation, rule, warnings.

    :param verdict: the trust decision, accepted or not.
    :param role: whose certificate it is (``"signer"``, ``"recipient"``), or ``""``.
    :returns: e.g. ``"trusted signer CN=a (sha256 0123...); chain CN=a > CN=CA; anchor CN=CA (from bundle
        x); revocation good (mode soft) from http://crl/ca.crl; rule direct-1.3: ...; warning: ..."``,
        at most :data:`MAX_LINE` characters. Never raises.

    Spec: AS-20, AS-21.
    """
    who = f" {role}" if role else ""
    if verdict.trusted:
        head = f"trusted{who} {_name(verdict.certificate)}"
    else:
        failure = (verdict.failure or "").removeprefix(f"{verdict.reason}: ")
        head = f"not trusted{who} ({verdict.reason or 'untrusted'}: {failure}) {_name(verdict.certificate)}"
    parts = [head]
    if verdict.chain:
        parts.append("chain " + " > ".join(c.subject for c in verdict.chain))
    if verdict.anchor is not None:
        parts.append(f"anchor {verdict.anchor.certificate.subject} (from {verdict.anchor.source})")
    elif verdict.nearest_anchor is not None:
        anchor = verdict.nearest_anchor
        parts.append(f"nearest anchor {anchor.certificate.subject} (from {anchor.source})")
    elif not verdict.trusted:
        parts.append("no configured anchor reachable")
    parts.append(verdict.revocation.describe())
    parts.append(f"rule {verdict.policy_rule}")
    parts.extend(f"warning: {w}" for w in verdict.warnings)
    return _cut("; ".join(parts))


def accepted_line(path: PathVerdict, role: str = "") -> str:
    """The audit line of an accepted certificate: :func:`verdict_line` of its full verdict when known.

    :param path: the path the security agent accepted (from :class:`~hisp.core.trust.StoreTrust` it
        carries the full :class:`~hisp.core.trust.TrustVerdict`; from the bare path validator it does not,
        and the line then gives the chain, anchor and rule only).
    :param role: ``"signer"``, ``"recipient"`` or ``""``.
    :returns: one line, at most :data:`MAX_LINE` characters. Never raises.

    Spec: AS-20.
    """
    if path.verdict is not None:
        return verdict_line(path.verdict, role)
    who = f" {role}" if role else ""
    return _cut(
        f"trusted{who} {_name(path.certificate)}; chain "
        + " > ".join(c.subject for c in path.chain)
        + f"; anchor {path.anchor.subject}; rule {path.policy_rule}"
    )


def fingerprints_of(certificates: Iterable[Certificate]) -> tuple[str, ...]:
    """SHA-256 fingerprints (hex), each once, in order.

    :param certificates: any certificates.
    :returns: the fingerprints.
    """
    return tuple(dict.fromkeys(c.fingerprint_sha256 for c in certificates))


def refusal_evidence(exc: HispError) -> tuple[str, tuple[str, ...]]:
    """What a refusal's error knows about the trust decision behind it, for the audit record.

    A :class:`~hisp.errors.TrustError` or :class:`~hisp.errors.PolicyViolation` raised by trust validation
    carries its :class:`~hisp.core.trust.TrustVerdict` in ``exc.context["verdict"]``; other errors (a
    malformed message, a bad signature) carry none.

    :param exc: the error that refused a message.
    :returns: (the verdict line, or ``""``; the fingerprints of the certificate decided on and its chain, or
        ``()``). Never raises.

    Spec: AS-14 (refusals explained), AS-20.
    """
    verdict = exc.context.get("verdict")
    if not isinstance(verdict, TrustVerdict):
        return "", ()
    chain: Sequence[Certificate] = verdict.chain or (verdict.certificate,)
    return verdict_line(verdict), fingerprints_of((verdict.certificate, *chain))
