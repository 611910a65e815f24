"""The path cache of trust.validate_path gives exactly what a fresh validation gives, at any time.

Two intermediates share a subject and key but have different lifetimes, so the path certvalidator chooses
changes with the validation time; every validity edge (plus and minus a microsecond, a second and the
clock-skew allowance) is tried, with and without a cached path, under both policies and usages.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography import x509 as cx
from cryptography.hazmat.primitives import hashes

from hisp.core import devca, trust
from hisp.core.certs import Certificate
from hisp.core.policy import DEFAULT_POLICY
from hisp.errors import HispError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def world() -> dict[str, Certificate]:
    root = devca.create_ca("Root", at=T0, days=3650)
    first = devca.create_ca("Inter", at=T0, issuer=root, not_before=T0, not_after=T0 + timedelta(days=10))
    builder = (
        cx.CertificateBuilder()
        .subject_name(first.certificate.x509.subject)
        .issuer_name(root.certificate.x509.subject)
        .public_key(first.private_key.public_key())
        .serial_number(cx.random_serial_number())
        .not_valid_before(T0 + timedelta(days=2))
        .not_valid_after(T0 + timedelta(days=100))
    )
    for ext in first.certificate.x509.extensions:
        if ext.oid != cx.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER:
            builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(
        cx.AuthorityKeyIdentifier.from_issuer_public_key(root.private_key.public_key()), False
    )
    second = Certificate.from_x509(builder.sign(root.private_key, hashes.SHA256()))
    leaf = devca.issue_certificate(
        first, at=T0, address="a@x.example", not_before=T0 + timedelta(days=1), not_after=T0 + timedelta(days=50)
    )
    other = devca.issue_certificate(
        root, at=T0, address="b@x.example", not_before=T0, not_after=T0 + timedelta(days=5)
    )
    return {
        "root": root.certificate,
        "first": first.certificate,
        "second": second,
        "leaf": leaf.certificate,
        "other": other.certificate,
    }


def _run(cert: Certificate, anchors: tuple, intermediates: tuple, at: datetime, policy, usage: str) -> tuple:
    try:
        verdict = trust.validate_path(
            cert, anchors=anchors, intermediates=intermediates, at=at, policy=policy, usage=usage
        )
    except HispError as exc:
        return ("error", type(exc).__name__, exc.message)
    return ("ok", tuple(c.der for c in verdict.chain), verdict.anchor.der, verdict.policy_rule, verdict.explain())


def _edges(world: dict[str, Certificate]) -> list[datetime]:
    edges: set[datetime] = set()
    for cert in world.values():
        for moment in (cert.not_before, cert.not_after):
            for seconds in (0, 1, 300):
                for sign in (-1, 1):
                    edges.add(moment + sign * timedelta(seconds=seconds))
                    edges.add(moment + sign * timedelta(seconds=seconds, microseconds=1))
    return sorted(edges) + [T0 + timedelta(days=d) for d in range(-2, 120, 3)]


def test_cached_paths_equal_fresh_validation(world: dict[str, Certificate]) -> None:
    root, first, second, leaf, other = (world[k] for k in ("root", "first", "second", "leaf", "other"))
    cases = [
        (leaf, (root,), (first, second)),
        (leaf, (root,), (second, first)),
        (leaf, (root,), (first,)),
        (leaf, (first,), ()),
        (other, (root,), ()),
        (leaf, (second, root), (first,)),
    ]
    edges = _edges(world)
    no_skew = dataclasses.replace(DEFAULT_POLICY, clock_skew=0)
    eastern = timezone(timedelta(hours=-5))
    rng = random.Random(5)
    chosen: set[bytes] = set()
    for _ in range(600):
        cert, anchors, intermediates = rng.choice(cases)
        at = rng.choice(edges)
        if rng.random() < 0.2:
            at = at.astimezone(eastern)
        policy = rng.choice([DEFAULT_POLICY, no_skew])
        usage = rng.choice(["signing", "encipherment"])
        cached = _run(cert, anchors, intermediates, at, policy, usage)
        saved = trust._PATHS._sets.copy()
        trust._PATHS._sets.clear()
        try:
            fresh = _run(cert, anchors, intermediates, at, policy, usage)
        finally:
            trust._PATHS._sets.update(saved)
        assert cached == fresh, (at, cached[:3], fresh[:3])
        if cached[0] == "ok" and len(cached[1]) == 3:
            chosen.add(cached[1][1])
    # both intermediates were chosen at some time: the cache really had different paths to tell apart
    assert chosen == {first.der, second.der}
