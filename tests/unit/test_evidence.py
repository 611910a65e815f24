"""hisp.core.evidence: the audit record's one-line account of a trust decision (AS-20, AS-14)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from conftest import AT

from hisp.addresses import DirectAddress, HealthDomain
from hisp.core.devca import Issued, create_ca, issue_certificate
from hisp.core.evidence import MAX_LINE, accepted_line, fingerprints_of, refusal_evidence, verdict_line
from hisp.core.policy import Direction, RevocationMode, policy_from_name
from hisp.core.trust import (
    RevocationResult,
    RevocationStatus,
    TrustAnchor,
    TrustStore,
    TrustVerdict,
    validate,
    validate_path,
)
from hisp.errors import HispError, MessageFormatError, TrustError

ADDRESS = DirectAddress.parse("dr.e@direct.evidence.example")


@pytest.fixture(scope="module")
def chain() -> tuple[Issued, Issued, Issued]:
    root = create_ca("Evidence Root", at=AT)
    inter = create_ca("Evidence Intermediate", at=AT, issuer=root)
    return root, inter, issue_certificate(inter, at=AT, address=str(ADDRESS))


def _store(root: Issued) -> TrustStore:
    anchor = (TrustAnchor(root.certificate, "bundle partners"),)
    return TrustStore(
        domain=HealthDomain.parse("direct.local.example"), incoming=anchor, outgoing=anchor,
        revocation=RevocationMode.OFF,
    )


def _trusted(chain: tuple[Issued, Issued, Issued]) -> TrustVerdict:
    root, inter, leaf = chain
    return validate(
        leaf.certificate, store=_store(root), direction=Direction.INCOMING,
        intermediates=[inter.certificate], at=AT, address=ADDRESS,
    )


def test_accepted_line_names_certificate_chain_anchor_source_revocation_and_rule(chain) -> None:
    """AS-20: the audit line of an accepted signer carries what `hisp cert validate --explain` shows."""
    leaf = chain[2]
    verdict = _trusted(chain)
    line = accepted_line(verdict.to_path_verdict(), "signer")
    assert "\n" not in line
    fingerprint = leaf.certificate.fingerprint_sha256[:16]
    assert line.startswith(f"trusted signer CN=dr.e@direct.evidence.example (sha256 {fingerprint})")
    assert "chain CN=dr.e@direct.evidence.example > CN=Evidence Intermediate > CN=Evidence Root" in line
    assert "anchor CN=Evidence Root (from bundle partners)" in line
    assert "revocation not checked (mode off)" in line
    assert f"rule {verdict.policy_rule}" in line
    assert "warning" not in line


def test_soft_mode_warning_reaches_the_line(chain) -> None:
    """AS-20: an unreachable revocation source accepted in soft mode is a warning in the audit record."""
    verdict = dataclasses.replace(
        _trusted(chain),
        revocation=RevocationResult(
            RevocationStatus.UNKNOWN, RevocationMode.SOFT, ("http://127.0.0.1:9/ca.crl",), "connection refused"
        ),
        warnings=("revocation status unknown, accepted in soft mode: connection refused",),
    )
    line = verdict_line(verdict, "recipient")
    assert line.startswith("trusted recipient ")
    assert "revocation unknown (mode soft) from http://127.0.0.1:9/ca.crl: connection refused" in line
    assert line.endswith("warning: revocation status unknown, accepted in soft mode: connection refused")


def test_refusal_evidence_of_an_expired_signer(chain) -> None:
    """AS-14: a refused signer's audit record names the certificate, why, and its fingerprints."""
    root, inter, _ = chain
    old = issue_certificate(
        inter, at=AT, address="old@direct.evidence.example",
        not_before=AT - timedelta(days=400), not_after=AT - timedelta(days=1),
    ).certificate
    with pytest.raises(TrustError) as caught:
        validate(old, store=_store(root), direction=Direction.INCOMING, intermediates=[inter.certificate], at=AT)
    line, fingerprints = refusal_evidence(caught.value)
    assert line.startswith("not trusted (expired: ")
    assert "CN=old@direct.evidence.example (sha256 " in line
    assert old.fingerprint_sha256 in fingerprints
    assert len(fingerprints) == len(set(fingerprints))


def test_refusal_without_a_verdict_gives_nothing() -> None:
    """A malformed message or a bad signature has no trust verdict to record."""
    assert refusal_evidence(MessageFormatError("not a MIME message")) == ("", ())
    assert refusal_evidence(HispError("x", verdict="not a verdict")) == ("", ())


def test_path_without_full_verdict_still_names_chain_anchor_and_rule(chain) -> None:
    """The agent's bare path validator (no trust store) gives chain, anchor and rule."""
    root, inter, leaf = chain
    path = validate_path(
        leaf.certificate, anchors=[root.certificate], intermediates=[inter.certificate], at=AT,
        policy=policy_from_name("direct-1.3"),
    )
    line = accepted_line(path)
    assert line.startswith("trusted CN=dr.e@direct.evidence.example")
    assert "anchor CN=Evidence Root" in line and f"rule {path.policy_rule}" in line


def test_long_lines_are_cut(chain) -> None:
    verdict = dataclasses.replace(_trusted(chain), warnings=("w" * (3 * MAX_LINE),))
    line = verdict_line(verdict)
    assert len(line) == MAX_LINE and line.endswith("...")


def test_fingerprints_each_once(chain) -> None:
    root, _, leaf = chain
    assert fingerprints_of([leaf.certificate, root.certificate, leaf.certificate]) == (
        leaf.certificate.fingerprint_sha256,
        root.certificate.fingerprint_sha256,
    )
