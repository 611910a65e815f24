"""hisp.core.trust.validate: per-direction trust stores, policy rules and explainable verdicts (no network)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from conftest import AT, fixture_bytes

from hisp.addresses import DirectAddress, HealthDomain
from hisp.core.agent import SecurityAgent
from hisp.core.certs import Certificate, load_certificate
from hisp.core.devca import Issued, KeyUsagePreset, create_ca, issue_certificate
from hisp.core.policy import DigestAlgorithm, Direction, RevocationMode, policy_from_name
from hisp.core.trust import (
    RevocationStatus,
    StoreTrust,
    TrustAnchor,
    TrustStore,
    TrustVerdict,
    validate,
)
from hisp.errors import HispError, PolicyViolation, TrustError
from hisp.testing.pki import plain_message

DIRECT_13 = policy_from_name("direct-1.3")
DIRECT_12 = policy_from_name("direct-1.2")
ADDRESS = DirectAddress.parse("dr.a@direct.example.org")


@dataclass(frozen=True)
class Pki:
    root: Issued
    inter: Issued
    leaf: Issued


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = create_ca("Store Root", at=AT)
    inter = create_ca("Store Intermediate", at=AT, issuer=root)
    return Pki(root, inter, issue_certificate(inter, at=AT, address=str(ADDRESS)))


def store(*anchors: Certificate, direction: Direction = Direction.INCOMING, **options: object) -> TrustStore:
    entries = tuple(TrustAnchor(a, "anchors.pem") for a in anchors)
    both = direction is None
    return TrustStore(
        domain=HealthDomain.parse("direct.local.example"),
        incoming=entries if both or direction is Direction.INCOMING else (),
        outgoing=entries if both or direction is Direction.OUTGOING else (),
        revocation=RevocationMode.OFF,
        **options,  # type: ignore[arg-type]
    )


def failed(exc: HispError) -> TrustVerdict:
    verdict = exc.context["verdict"]
    assert isinstance(verdict, TrustVerdict) and not verdict.trusted
    return verdict


def test_valid_chain_verdict_explains_itself(pki: Pki) -> None:
    verdict = validate(
        pki.leaf.certificate,
        store=store(pki.root.certificate),
        direction=Direction.INCOMING,
        intermediates=[pki.inter.certificate],
        at=AT,
        address=ADDRESS,
    )
    assert verdict.trusted and verdict.anchor is not None
    assert verdict.chain == (pki.leaf.certificate, pki.inter.certificate, pki.root.certificate)
    assert verdict.anchor == TrustAnchor(pki.root.certificate, "anchors.pem")
    assert verdict.revocation.status is RevocationStatus.NOT_CHECKED
    text = verdict.explain()
    assert text.startswith("TRUSTED") and "anchor reached: CN=Store Root (from anchors.pem)" in text
    assert "revocation not checked (mode off)" in text and "bound to dr.a@direct.example.org" in text
    data = verdict.to_json()
    assert data["trusted"] is True and data["direction"] == "incoming"
    assert data["certificate"]["san"]["rfc822"] == ["dr.a@direct.example.org"]
    assert data["certificate"]["fingerprint_sha256"] == pki.leaf.certificate.fingerprint_sha256
    assert [c["subject"] for c in data["chain"]] == [
        "CN=dr.a@direct.example.org",
        "CN=Store Intermediate",
        "CN=Store Root",
    ]
    assert data["anchor"]["source"] == "anchors.pem" and data["revocation"]["status"] == "not checked"


@pytest.mark.parametrize(
    ("anchor_direction", "used_direction"),
    [(Direction.OUTGOING, Direction.INCOMING), (Direction.INCOMING, Direction.OUTGOING)],
    ids=["outgoing-anchor-does-not-trust-incoming", "incoming-anchor-does-not-trust-outgoing"],
)
def test_anchor_of_one_direction_never_trusts_the_other(
    pki: Pki, anchor_direction: Direction, used_direction: Direction
) -> None:
    one_way = store(pki.root.certificate, direction=anchor_direction)
    with pytest.raises(TrustError) as caught:
        validate(
            pki.leaf.certificate, store=one_way, direction=used_direction, intermediates=[pki.inter.certificate], at=AT
        )
    assert caught.value.reason == "untrusted"
    assert failed(caught.value).direction is used_direction
    # and the same store trusts it the way the anchor is configured for
    assert validate(
        pki.leaf.certificate, store=one_way, direction=anchor_direction, intermediates=[pki.inter.certificate], at=AT
    ).trusted


def _expired_leaf(pki: Pki) -> Certificate:
    return issue_certificate(
        pki.inter,
        at=AT,
        address="old@direct.example.org",
        not_before=AT - timedelta(days=400),
        not_after=AT - timedelta(days=1),
    ).certificate


def _expired_inter(pki: Pki) -> tuple[Certificate, list[Certificate]]:
    old = create_ca(
        "Expired Inter", at=AT, issuer=pki.root, not_before=AT - timedelta(days=800), not_after=AT - timedelta(days=1)
    )
    leaf = issue_certificate(old, at=AT, address="x@direct.example.org", not_before=AT - timedelta(days=30))
    return leaf.certificate, [old.certificate]


CASES = {
    "expired-leaf": ("expired", lambda p: (_expired_leaf(p), [p.inter.certificate])),
    "expired-intermediate": ("expired", _expired_inter),
    "not-yet-valid": (
        "not yet valid",
        lambda p: (
            issue_certificate(
                p.inter, at=AT, address="soon@direct.example.org", not_before=AT + timedelta(days=1)
            ).certificate,
            [p.inter.certificate],
        ),
    ),
    "wrong-key-usage": (
        "policy",
        lambda p: (
            issue_certificate(
                p.inter, at=AT, address="enc@direct.example.org", usage=KeyUsagePreset.ENCIPHERMENT
            ).certificate,
            [p.inter.certificate],
        ),
    ),
    "rsa-1024": (
        "policy",
        lambda p: (
            issue_certificate(p.inter, at=AT, address="small@direct.example.org", key_size=1024).certificate,
            [p.inter.certificate],
        ),
    ),
    "wildcard-dnsname": (
        "policy",
        lambda p: (
            issue_certificate(
                p.inter, at=AT, domain="direct.example.org", extra_dns_names=("*.example.org",)
            ).certificate,
            [p.inter.certificate],
        ),
    ),
    "missing-intermediate": ("untrusted", lambda p: (p.leaf.certificate, [])),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_refusals_carry_a_failed_verdict(pki: Pki, case: str) -> None:
    reason, make = CASES[case]
    leaf, intermediates = make(pki)
    with pytest.raises((TrustError, PolicyViolation)) as caught:
        validate(
            leaf, store=store(pki.root.certificate), direction=Direction.INCOMING, intermediates=intermediates, at=AT
        )
    verdict = failed(caught.value)
    assert verdict.reason == reason and verdict.failure == caught.value.message
    assert verdict.anchor is None
    text = verdict.explain()
    assert text.startswith(f"NOT TRUSTED ({reason})")
    if case == "missing-intermediate":  # the issuer names lead nowhere without the intermediate
        assert verdict.nearest_anchor is None and "reachable from its issuer CN=Store Intermediate" in text
    else:  # the nearest anchor is named: the configured root its issuer names lead to
        assert verdict.nearest_anchor is not None and verdict.nearest_anchor.certificate == pki.root.certificate
        assert "nearest anchor: CN=Store Root" in text
    assert verdict.to_json()["reason"] == reason
    if case == "wildcard-dnsname":
        assert "wildcard dNSName *.example.org refused (AS-3)" in caught.value.message


def test_unrelated_anchor_has_no_nearest(pki: Pki) -> None:
    other = create_ca("Unrelated", at=AT)
    with pytest.raises(TrustError) as caught:
        validate(pki.leaf.certificate, store=store(other.certificate), direction=Direction.INCOMING, at=AT)
    verdict = failed(caught.value)
    assert verdict.nearest_anchor is None and "none of the configured anchors is reachable" in verdict.explain()


def test_address_binding_is_checked(pki: Pki) -> None:
    with pytest.raises(TrustError) as caught:
        validate(
            pki.leaf.certificate,
            store=store(pki.root.certificate),
            direction=Direction.INCOMING,
            intermediates=[pki.inter.certificate],
            at=AT,
            address=DirectAddress.parse("someone.else@direct.example.org"),
        )
    assert caught.value.reason == "not bound"


def test_sha1_intermediate_refused_13_accepted_12(pki: Pki) -> None:
    sha1 = create_ca("SHA-1 Inter", at=AT, issuer=pki.root, signature_digest=DigestAlgorithm.SHA1)
    leaf = issue_certificate(sha1, at=AT, address=str(ADDRESS)).certificate
    with pytest.raises(PolicyViolation, match=r"SHA-1-signed certificate refused by policy direct-1\.3"):
        validate(
            leaf,
            store=store(pki.root.certificate),
            direction=Direction.INCOMING,
            intermediates=[sha1.certificate],
            at=AT,
        )
    lenient = store(pki.root.certificate, policy=DIRECT_12)
    verdict = validate(leaf, store=lenient, direction=Direction.INCOMING, intermediates=[sha1.certificate], at=AT)
    assert verdict.trusted and verdict.policy_rule.startswith("direct-1.2:")


@pytest.mark.parametrize(("depth", "ok"), [(5, True), (6, False)], ids=["5-issuers", "6-issuers"])
def test_path_length_at_most_five_issuers(depth: int, ok: bool) -> None:
    cas = [create_ca("Deep Root", at=AT)]
    for i in range(depth - 1):
        cas.append(create_ca(f"Deep {i}", at=AT, issuer=cas[-1]))
    leaf = issue_certificate(cas[-1], at=AT, address=str(ADDRESS)).certificate
    def run() -> TrustVerdict:
        return validate(
            leaf,
            store=store(cas[0].certificate),
            direction=Direction.INCOMING,
            intermediates=[c.certificate for c in cas[1:]],
            at=AT,
        )

    if ok:
        assert len(run().chain) == depth + 1
    else:
        with pytest.raises(TrustError, match="invalid path"):
            run()


def test_intermediate_as_anchor(pki: Pki) -> None:
    verdict = validate(pki.leaf.certificate, store=store(pki.inter.certificate), direction=Direction.INCOMING, at=AT)
    assert verdict.chain == (pki.leaf.certificate, pki.inter.certificate)


def test_bundle_anchor_is_never_an_encryption_certificate() -> None:
    # TB-5: a bundle's (self-signed, dual-use) certificate is accepted as an anchor, never as a recipient.
    root = create_ca("Bundle CA", at=AT)
    leaf = issue_certificate(root, at=AT, address=str(ADDRESS)).certificate
    bundle_store = TrustStore(
        outgoing=(TrustAnchor(root.certificate, "bundle community"), TrustAnchor(leaf, "bundle community")),
        revocation=RevocationMode.OFF,
    )
    with pytest.raises(TrustError) as caught:
        validate(leaf, store=bundle_store, direction=Direction.OUTGOING, at=AT)
    assert caught.value.reason == "anchor only"
    file_store = TrustStore(outgoing=(TrustAnchor(root.certificate, "ca.pem"), TrustAnchor(leaf, "leaf.pem")))
    assert validate(leaf, store=file_store, direction=Direction.OUTGOING, at=AT).trusted


def test_soft_mode_without_fetcher_warns_hard_mode_rejects(pki: Pki) -> None:
    leaf = issue_certificate(pki.inter, at=AT, address=str(ADDRESS), crl_url="http://crl.invalid/i.crl").certificate
    soft = store(pki.root.certificate).__class__(
        incoming=(TrustAnchor(pki.root.certificate, "a.pem"),), revocation=RevocationMode.SOFT
    )
    verdict = validate(leaf, store=soft, direction=Direction.INCOMING, intermediates=[pki.inter.certificate], at=AT)
    assert verdict.revocation.status is RevocationStatus.UNKNOWN and verdict.warnings
    hard = TrustStore(incoming=(TrustAnchor(pki.root.certificate, "a.pem"),), revocation=RevocationMode.HARD)
    with pytest.raises(TrustError) as caught:
        validate(leaf, store=hard, direction=Direction.INCOMING, intermediates=[pki.inter.certificate], at=AT)
    assert caught.value.reason == "revocation unknown"
    assert failed(caught.value).revocation.status is RevocationStatus.UNKNOWN


# -- fixtures from other implementations ------------------------------------------------------------


def cert(path: str) -> Certificate:
    return load_certificate(fixture_bytes(path))


def test_ett_certificate_with_its_intermediate_anchor() -> None:
    leaf, anchor = cert("ett/certificates/ett.healthit.gov.der"), cert("ett/certificates/intermediate.healthit.gov.der")
    ett = TrustStore(incoming=(TrustAnchor(anchor, "intermediate.healthit.gov.der"),), revocation=RevocationMode.OFF)
    verdict = validate(leaf, store=ett, direction=Direction.INCOMING, at=datetime(2026, 1, 1, tzinfo=UTC))
    assert verdict.chain == (leaf, anchor) and verdict.to_json()["certificate"]["san"]["dns"] == ["ett.healthit.gov"]
    with pytest.raises(TrustError) as caught:  # the leaf expires in 2027: pinned after it, refused
        validate(leaf, store=ett, direction=Direction.INCOMING, at=datetime(2030, 1, 1, tzinfo=UTC))
    assert caught.value.reason == "expired"


def test_dotnet_chain_explains_the_non_ca_intermediates() -> None:
    end, inter1, inter11, root = (cert(f"direct-ri-dotnet/{n}.cer") for n in ("end", "inter1", "inter11", "root"))
    permissive = DIRECT_12.with_options(name="test-permissive", min_rsa_bits=1024)
    dotnet = TrustStore(incoming=(TrustAnchor(root, "root.cer"),), policy=permissive, revocation=RevocationMode.OFF)
    with pytest.raises(TrustError) as caught:
        validate(
            end, store=dotnet, direction=Direction.INCOMING, intermediates=[inter1, inter11], at=AT, usage="signing"
        )
    verdict = failed(caught.value)
    assert caught.value.reason == "invalid path" and "is not a CA" in caught.value.message
    assert verdict.nearest_anchor == TrustAnchor(root, "root.cer")


# -- the agent's seam --------------------------------------------------------------------------------


def test_store_trust_behind_the_security_agent(pki: Pki) -> None:
    sender = issue_certificate(pki.inter, at=AT, address="dr.s@direct.sender.example")
    recipient = issue_certificate(pki.inter, at=AT, address="dr.r@direct.recipient.example")
    both = TrustStore(
        incoming=(TrustAnchor(pki.root.certificate, "in.pem"),),
        outgoing=(TrustAnchor(pki.root.certificate, "out.pem"),),
        revocation=RevocationMode.OFF,
        intermediates=(pki.inter.certificate,),
    )
    agent = SecurityAgent()
    plain = plain_message("dr.s@direct.sender.example", ["dr.r@direct.recipient.example"])
    rcpt = DirectAddress.parse("dr.r@direct.recipient.example")
    sealed = agent.process_outgoing(
        plain, sender=[sender.credential], recipients={rcpt: [recipient.certificate]}, at=AT, trust=StoreTrust(both)
    )
    assert sealed.recipient_paths[0].verdict is not None
    assert sealed.recipient_paths[0].verdict.anchor == TrustAnchor(pki.root.certificate, "out.pem")
    opened = agent.process_incoming(sealed.message, credentials=[recipient.credential], trust=StoreTrust(both), at=AT)
    assert "anchor reached: CN=Store Root (from in.pem)" in opened.explain()
    outgoing_only = TrustStore(outgoing=both.outgoing, intermediates=both.intermediates, revocation=RevocationMode.OFF)
    with pytest.raises(TrustError) as caught:
        agent.process_incoming(
            sealed.message, credentials=[recipient.credential], trust=StoreTrust(outgoing_only), at=AT
        )
    assert isinstance(caught.value.context.get("verdict"), TrustVerdict)
