"""hisp.core.trust.validate_path: RFC 5280 paths to configured anchors under the security policy (AS-20)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from conftest import AT, fixture_bytes

from hisp.core.certs import Certificate, load_certificate, load_pkcs12
from hisp.core.devca import Issued, KeyUsagePreset, create_ca, issue_certificate
from hisp.core.policy import DigestAlgorithm, SecurityPolicy, policy_from_name
from hisp.core.trust import MAX_ISSUERS, PathVerdict, validate_path
from hisp.errors import ConfigError, PolicyViolation, TrustError

DIRECT_13 = policy_from_name("direct-1.3")
DIRECT_12 = policy_from_name("direct-1.2")
# The .NET RI chain is RSA-1024/SHA-1: only a policy that lowers the key floor can look at its structure.
PERMISSIVE = DIRECT_12.with_options(name="test-permissive", min_rsa_bits=1024)


@dataclass(frozen=True)
class Pki:
    root: Issued
    inter: Issued
    leaf: Issued


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = create_ca("Trust Root", at=AT)
    inter = create_ca("Trust Intermediate", at=AT, issuer=root)
    leaf = issue_certificate(inter, at=AT, address="dr.a@direct.example.org")
    return Pki(root, inter, leaf)


def cert(path: str) -> Certificate:
    return load_certificate(fixture_bytes(path))


def validate(
    leaf: Certificate,
    anchors: list[Certificate],
    intermediates: list[Certificate] | None = None,
    *,
    policy: SecurityPolicy = DIRECT_13,
    at: datetime = AT,
    usage: str = "signing",
) -> PathVerdict:
    return validate_path(
        leaf, anchors=anchors, intermediates=intermediates or [], at=at, policy=policy, usage=usage
    )


# -- development PKI ------------------------------------------------------------------------------


@pytest.mark.parametrize("usage", ["signing", "encipherment"])
def test_valid_chain_through_an_intermediate(pki: Pki, usage: str) -> None:
    verdict = validate(pki.leaf.certificate, [pki.root.certificate], [pki.inter.certificate], usage=usage)
    assert verdict.chain == (pki.leaf.certificate, pki.inter.certificate, pki.root.certificate)
    assert verdict.certificate == pki.leaf.certificate and verdict.anchor == pki.root.certificate
    assert verdict.at == AT
    assert verdict.policy_rule.startswith("direct-1.3:") and usage in verdict.policy_rule
    text = verdict.explain()
    assert "leaf: subject=CN=dr.a@direct.example.org" in text
    assert "intermediate: subject=CN=Trust Intermediate" in text
    assert "anchor: subject=CN=Trust Root" in text


def test_intermediate_as_anchor_ends_the_path(pki: Pki) -> None:
    verdict = validate(pki.leaf.certificate, [pki.inter.certificate])
    assert verdict.chain == (pki.leaf.certificate, pki.inter.certificate)


def test_certificate_that_is_itself_an_anchor(pki: Pki) -> None:
    verdict = validate(pki.leaf.certificate, [pki.leaf.certificate])
    assert verdict.chain == (pki.leaf.certificate,) and verdict.anchor == pki.leaf.certificate


def test_leaf_among_intermediates_and_unrelated_anchors_do_not_matter(pki: Pki) -> None:
    other = create_ca("Unrelated Root", at=AT)
    verdict = validate(
        pki.leaf.certificate,
        [other.certificate, pki.root.certificate],
        [pki.leaf.certificate, pki.inter.certificate, other.certificate],
    )
    assert verdict.anchor == pki.root.certificate


def test_works_inside_a_running_event_loop(pki: Pki) -> None:
    async def inside() -> PathVerdict:
        return validate(pki.leaf.certificate, [pki.root.certificate], [pki.inter.certificate])

    assert asyncio.run(inside()).anchor == pki.root.certificate


def _expect(
    reason: str,
    leaf: Certificate,
    anchors: list[Certificate],
    intermediates: list[Certificate] | None = None,
    **kwargs: object,
) -> TrustError:
    with pytest.raises(TrustError) as caught:
        validate(leaf, anchors, intermediates, **kwargs)
    assert caught.value.reason == reason, caught.value.message
    assert caught.value.message.startswith(f"{reason}:")
    return caught.value


def test_expired_leaf(pki: Pki) -> None:
    leaf = issue_certificate(
        pki.inter,
        at=AT,
        address="old@direct.example.org",
        not_before=AT - timedelta(days=400),
        not_after=AT - timedelta(days=1),
    ).certificate
    error = _expect("expired", leaf, [pki.root.certificate], [pki.inter.certificate])
    assert leaf.describe() in error.message


def test_expired_intermediate(pki: Pki) -> None:
    old = create_ca(
        "Expired Intermediate",
        at=AT,
        issuer=pki.root,
        not_before=AT - timedelta(days=800),
        not_after=AT - timedelta(days=1),
    )
    leaf = issue_certificate(old, at=AT, address="x@direct.example.org", not_before=AT - timedelta(days=30))
    error = _expect("expired", leaf.certificate, [pki.root.certificate], [old.certificate])
    assert "intermediate certificate 1 expired" in error.message


def test_expired_anchor_is_refused(pki: Pki) -> None:
    old_root = create_ca(
        "Expired Root", at=AT, not_before=AT - timedelta(days=800), not_after=AT - timedelta(days=1)
    )
    leaf = issue_certificate(
        old_root, at=AT, address="x@direct.example.org", not_before=AT - timedelta(days=30)
    )
    error = _expect("expired", leaf.certificate, [old_root.certificate])
    assert "trust anchor expired" in error.message and old_root.certificate.describe() in error.message


def test_not_yet_valid_and_clock_skew(pki: Pki) -> None:
    soon = issue_certificate(
        pki.inter, at=AT, address="soon@direct.example.org", not_before=AT + timedelta(seconds=120)
    ).certificate
    # Within the policy's 300 s allowance: accepted.
    assert validate(soon, [pki.root.certificate], [pki.inter.certificate]).certificate == soon
    _expect(
        "not yet valid",
        soon,
        [pki.root.certificate],
        [pki.inter.certificate],
        policy=DIRECT_13.with_options(clock_skew=60),
    )
    later = issue_certificate(
        pki.inter, at=AT, address="later@direct.example.org", not_before=AT + timedelta(days=1)
    ).certificate
    _expect("not yet valid", later, [pki.root.certificate], [pki.inter.certificate])


def test_wrong_anchor_missing_intermediate_and_no_anchor(pki: Pki) -> None:
    other = create_ca("Other Root", at=AT)
    _expect("untrusted", pki.leaf.certificate, [other.certificate], [pki.inter.certificate])
    _expect("untrusted", pki.leaf.certificate, [pki.root.certificate], [])
    _expect("untrusted", pki.leaf.certificate, [], [pki.inter.certificate])
    # Same name, different key: no path.
    twin = create_ca("Trust Root", at=AT)
    _expect("untrusted", pki.leaf.certificate, [twin.certificate], [pki.inter.certificate])


def test_intermediate_without_key_cert_sign_is_an_invalid_path(pki: Pki) -> None:
    no_sign = create_ca("No keyCertSign", at=AT, issuer=pki.root, key_usage_cert_sign=False)
    leaf = issue_certificate(no_sign, at=AT, address="x@direct.example.org").certificate
    _expect("invalid path", leaf, [pki.root.certificate], [no_sign.certificate])


def test_path_length_constraint_is_enforced(pki: Pki) -> None:
    limited = create_ca("Path Length 0", at=AT, issuer=pki.root, path_length=0)
    below = create_ca("Below Limit", at=AT, issuer=limited)
    leaf = issue_certificate(below, at=AT, address="x@direct.example.org").certificate
    error = _expect("invalid path", leaf, [pki.root.certificate], [limited.certificate, below.certificate])
    assert "maximum path length" in error.message


@pytest.mark.parametrize(
    ("anchor_depth", "ok"), [(0, False), (1, False), (2, True)], ids=["7-issuers", "6-issuers", "5-issuers"]
)
def test_at_most_five_issuers(anchor_depth: int, ok: bool) -> None:
    cas = [create_ca("Deep Root", at=AT)]
    for i in range(6):
        cas.append(create_ca(f"Deep {i}", at=AT, issuer=cas[-1]))
    leaf = issue_certificate(cas[-1], at=AT, address="deep@direct.example.org").certificate
    anchors = [cas[anchor_depth].certificate]
    intermediates = [c.certificate for c in cas[anchor_depth + 1 :]]
    if ok:
        assert len(validate(leaf, anchors, intermediates).chain) - 1 == MAX_ISSUERS
    else:
        _expect("invalid path", leaf, anchors, intermediates)


# -- policy (AS-5, AS-8) --------------------------------------------------------------------------


def test_sha1_signed_intermediate_refused_under_13_accepted_under_12(pki: Pki) -> None:
    sha1_inter = create_ca(
        "SHA-1 Intermediate", at=AT, issuer=pki.root, signature_digest=DigestAlgorithm.SHA1
    )
    leaf = issue_certificate(sha1_inter, at=AT, address="x@direct.example.org").certificate
    with pytest.raises(PolicyViolation, match=r"SHA-1-signed certificate refused by policy direct-1\.3"):
        validate(leaf, [pki.root.certificate], [sha1_inter.certificate])
    assert validate(leaf, [pki.root.certificate], [sha1_inter.certificate], policy=DIRECT_12).chain[1] == (
        sha1_inter.certificate
    )


def test_sha1_signed_leaf_refused_under_13(pki: Pki) -> None:
    leaf = issue_certificate(
        pki.inter, at=AT, address="x@direct.example.org", signature_digest=DigestAlgorithm.SHA1
    ).certificate
    with pytest.raises(PolicyViolation, match="SHA-1-signed"):
        validate(leaf, [pki.root.certificate], [pki.inter.certificate])


def test_sha1_self_signature_of_the_anchor_is_not_relied_on() -> None:
    root = create_ca("SHA-1 Root", at=AT, signature_digest=DigestAlgorithm.SHA1)
    leaf = issue_certificate(root, at=AT, address="x@direct.example.org").certificate
    assert validate(leaf, [root.certificate]).anchor == root.certificate


def test_md5_signed_leaf_refused_even_under_12(pki: Pki) -> None:
    leaf = issue_certificate(
        pki.inter, at=AT, address="x@direct.example.org", signature_digest=DigestAlgorithm.MD5
    ).certificate
    with pytest.raises(PolicyViolation, match=r"MD5-signed certificate refused by policy direct-1\.2"):
        validate(leaf, [pki.root.certificate], [pki.inter.certificate], policy=DIRECT_12)


@pytest.mark.parametrize("policy", [DIRECT_13, DIRECT_12], ids=["direct-1.3", "direct-1.2"])
def test_rsa_1024_leaf_refused(pki: Pki, policy: SecurityPolicy) -> None:
    leaf = issue_certificate(pki.inter, at=AT, address="small@direct.example.org", key_size=1024).certificate
    with pytest.raises(PolicyViolation, match="RSA-1024 leaf key refused") as caught:
        validate(leaf, [pki.root.certificate], [pki.inter.certificate], policy=policy)
    assert leaf.describe() in caught.value.message


def test_rsa_1024_ca_refused() -> None:
    small_root = create_ca("Small Root", at=AT, key_size=1024)
    leaf = issue_certificate(small_root, at=AT, address="x@direct.example.org").certificate
    with pytest.raises(PolicyViolation, match="RSA-1024 CA key refused"):
        validate(leaf, [small_root.certificate])


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384"])
def test_ecdsa_leaves_accepted(pki: Pki, key_type: str) -> None:
    leaf = issue_certificate(pki.inter, at=AT, domain="direct.example.org", key_type=key_type).certificate
    assert validate(leaf, [pki.root.certificate], [pki.inter.certificate]).certificate == leaf


def test_ecdsa_curve_outside_the_policy_refused(pki: Pki) -> None:
    leaf = issue_certificate(pki.inter, at=AT, domain="direct.example.org", key_type="ec-p384").certificate
    only_p256 = DIRECT_13.with_options(allowed_curves=frozenset({"secp256r1"}))
    with pytest.raises(PolicyViolation, match="ECDSA curve secp384r1 refused"):
        validate(leaf, [pki.root.certificate], [pki.inter.certificate], policy=only_p256)


# -- key usage (AS-4) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "usage"),
    [(KeyUsagePreset.SIGNING, "encipherment"), (KeyUsagePreset.ENCIPHERMENT, "signing")],
    ids=["signing-only-for-encipherment", "encipherment-only-for-signing"],
)
def test_wrong_key_usage_refused(pki: Pki, preset: KeyUsagePreset, usage: str) -> None:
    leaf = issue_certificate(pki.inter, at=AT, address="ku@direct.example.org", usage=preset).certificate
    with pytest.raises(PolicyViolation, match=f"not usable for {usage}"):
        validate(leaf, [pki.root.certificate], [pki.inter.certificate], usage=usage)
    other = "signing" if usage == "encipherment" else "encipherment"
    assert validate(leaf, [pki.root.certificate], [pki.inter.certificate], usage=other).certificate == leaf


@pytest.mark.parametrize(
    ("path", "usage", "ok"),
    [
        ("direct-ri-java/certs/digSigOnly.p12", "signing", True),
        ("direct-ri-java/certs/digSigOnly.p12", "encipherment", False),
        ("direct-ri-java/certs/keyEncOnly.p12", "signing", False),
        ("direct-ri-java/certs/keyEncOnly.p12", "encipherment", True),
        ("direct-ri-java/certs/dualUse.p12", "signing", True),
        ("direct-ri-java/certs/dualUse.p12", "encipherment", True),
    ],
    ids=[
        "digSigOnly-sign",
        "digSigOnly-encipher",
        "keyEncOnly-sign",
        "keyEncOnly-encipher",
        "dualUse-sign",
        "dualUse-encipher",
    ],
)
def test_key_usage_fixtures(path: str, usage: str, ok: bool) -> None:
    leaf = load_pkcs12(fixture_bytes(path), b"").certificate
    anchor = cert("direct-ri-java/certs/KeyUsageCA.der")  # RSA-1024, SHA-1: only PERMISSIVE passes the policy
    if ok:
        assert validate(leaf, [anchor], policy=PERMISSIVE, usage=usage).anchor == anchor
    else:
        with pytest.raises(PolicyViolation, match=f"not usable for {usage}"):
            validate(leaf, [anchor], policy=PERMISSIVE, usage=usage)


# -- fixture chains from other implementations ----------------------------------------------------


def test_ett_leaf_with_non_self_signed_anchor() -> None:
    leaf = cert("ett/certificates/ett.healthit.gov.der")
    anchor = cert("ett/certificates/intermediate.healthit.gov.der")
    assert anchor.subject != anchor.issuer
    verdict = validate(leaf, [anchor])
    assert verdict.chain == (leaf, anchor)


def test_ett_three_level_chain_with_its_next_ca_as_anchor() -> None:
    leaf = cert("ett/certificates/ett.healthit.gov.der")
    inter = cert("ett/certificates/intermediate.healthit.gov.der")
    top = cert("ett/certificates/healthit.gov.der")  # itself issued by ca.directca.org, not shipped
    assert validate(leaf, [top], [inter]).chain == (leaf, inter, top)
    _expect("untrusted", leaf, [top], [])


def test_ett_leaf_whose_anchor_expired() -> None:
    # intermediate.sitenv.org (the "ETT Trust Anchor") expired 2026-07-24; ttpedge is valid to 2027.
    leaf = cert("ett/certificates/ttpedge.sitenv.org.der")
    anchor = cert("ett/certificates/intermediate.sitenv.org.der")
    _expect("expired", leaf, [anchor])
    assert validate(leaf, [anchor], at=datetime(2026, 1, 1, tzinfo=UTC)).anchor == anchor


@pytest.mark.parametrize(
    ("leaf", "anchor"),
    [
        ("direct-ri-java/certs/user1.der", "direct-ri-java/certs/cacert.der"),
        ("direct-ri-java/certs/externUser1.der", "direct-ri-java/certs/externCaCert.der"),
        ("interop/java-ri/gm2552.der", "interop/java-ri/secureHealthEmailCACert.der"),
        ("interop/java-ri/ryan.der", "interop/java-ri/secureHealthEmailCACert.der"),
    ],
    ids=["user1", "externUser1", "gm2552", "ryan"],
)
def test_java_ri_sha1_chains_pass_12_and_fail_13(leaf: str, anchor: str) -> None:
    verdict = validate(cert(leaf), [cert(anchor)], policy=DIRECT_12)
    assert verdict.chain == (cert(leaf), cert(anchor))
    with pytest.raises(PolicyViolation, match=r"SHA-1-signed certificate refused by policy direct-1\.3"):
        validate(cert(leaf), [cert(anchor)])


def test_java_ri_user_with_the_other_hisps_anchor_is_untrusted() -> None:
    _expect(
        "untrusted",
        cert("direct-ri-java/certs/user1.der"),
        [cert("direct-ri-java/certs/externCaCert.der")],
        policy=DIRECT_12,
    )


def test_expired_der_is_expired_whatever_the_anchor() -> None:
    expired = cert("direct-ri-java/certs/expired.der")
    for anchor in ("direct-ri-java/certs/Test Alt Name CA ROO.der", "direct-ri-java/certs/cacert.der"):
        _expect("expired", expired, [cert(anchor)], policy=PERMISSIVE)


def test_dotnet_chain_intermediates_are_not_cas() -> None:
    # root.xyz -> inter1.xyz -> inter11.xyz -> end.xyz: v3 certificates without basicConstraints, so
    # inter1/inter11 may not act as CAs (RFC 5280 section 6.1.4 (k)).
    end, inter1, inter11, root = (
        cert(f"direct-ri-dotnet/{n}.cer") for n in ("end", "inter1", "inter11", "root")
    )
    assert not any(c.is_ca for c in (end, inter1, inter11, root))
    error = _expect("invalid path", end, [root], [inter1, inter11], policy=PERMISSIVE)
    assert "is not a CA" in error.message
    # With the issuing certificate itself as the anchor nothing relies on its basicConstraints.
    assert validate(end, [inter11], policy=PERMISSIVE).chain == (end, inter11)
    with pytest.raises(PolicyViolation, match=r"RSA-1024 leaf key refused by policy direct-1\.2"):
        validate(end, [inter11], policy=DIRECT_12)


# -- arguments ------------------------------------------------------------------------------------


def test_argument_errors(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="unknown key usage"):
        validate(pki.leaf.certificate, [pki.root.certificate], [pki.inter.certificate], usage="decrypt")
    with pytest.raises(ValueError, match="aware"):
        validate(
            pki.leaf.certificate, [pki.root.certificate], [pki.inter.certificate], at=AT.replace(tzinfo=None)
        )
