"""hisp.core.discovery: the pure lookup plan, CERT RDATA decoding, SRV order, and the result (CD-2 .. CD-9).

The plan is driven against an in-memory "world" (DNS answers by name, LDAP entries by server and filter)
with real certificates from a development CA and the agent's ``StaticAnchors`` trust seam. Each precedence
rule of conformance.md section 1.6 has its own test, named after the DCDT case it mirrors.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from conftest import AT

from hisp.addresses import DirectAddress
from hisp.core.agent import StaticAnchors
from hisp.core.certs import CertBinding, Certificate
from hisp.core.discovery import (
    Answer,
    CertificateVerdict,
    CertQuery,
    CertType,
    DiscoveryLimits,
    DiscoveryPlan,
    DiscoveryResult,
    DnsAnswer,
    DnsStatus,
    FetchAnswer,
    LdapAnswer,
    LdapEntry,
    LdapQuery,
    LookupFailure,
    Outcome,
    SrvQuery,
    SrvRecord,
    Tier,
    TierStatus,
    UrlFetch,
    ValidateCertificates,
    Verdicts,
    decode_cert_rdata,
    ldap_service_name,
    order_srv,
)
from hisp.core.policy import DEFAULT_POLICY
from hisp.errors import TrustError
from hisp.testing.bundles import make_p7b
from hisp.testing.pki import TestPKI

DOMAIN = "domain1.example"
ADDRESS = DirectAddress.parse(f"d1@{DOMAIN}")
AB_NAME = f"d1.{DOMAIN}."
DB_NAME = f"{DOMAIN}."
SRV_NAME = f"_ldap._tcp.{DOMAIN}."
LDAP1 = SrvRecord(0, 0, 10389, "ldap1.example.")
LDAP2 = SrvRecord(1, 0, 11389, "ldap2.example.")
LDAP3 = SrvRecord(0, 100, 12389, "ldap3.example.")


@dataclass
class Certs:
    pki: TestPKI
    ab_valid: Certificate
    ab_valid2: Certificate
    ab_expired: Certificate
    db_valid: Certificate
    db_expired: Certificate
    other_ab: Certificate
    foreign: Certificate  # address-bound, valid, issued by a CA nobody trusts
    signing_only: Certificate


@pytest.fixture(scope="module")
def certs() -> Certs:
    pki = TestPKI(at=AT, name="Discovery Test CA")
    stranger = TestPKI(at=AT, name="Untrusted CA")
    expired = {"not_before": AT - timedelta(days=400), "not_after": AT - timedelta(days=35)}
    return Certs(
        pki=pki,
        ab_valid=pki.user(str(ADDRESS)).certificate,
        ab_valid2=pki.user(str(ADDRESS), key_size=2048).certificate,
        ab_expired=pki.user(str(ADDRESS), **expired).certificate,
        db_valid=pki.domain(DOMAIN).certificate,
        db_expired=pki.domain(DOMAIN, **expired).certificate,
        other_ab=pki.user(f"someone.else@{DOMAIN}").certificate,
        foreign=stranger.user(str(ADDRESS)).certificate,
        signing_only=pki.user(str(ADDRESS), usage="signing").certificate,
    )


def pkix(cert: Certificate, key_tag: int = 0, algorithm: int = 0) -> bytes:
    return struct.pack("!HHB", CertType.PKIX, key_tag, algorithm) + cert.der


def cert_answer(*rdata: bytes, ttl: int = 600, transport: str = "udp", authenticated: bool = False) -> DnsAnswer:
    return DnsAnswer(DnsStatus.ANSWER, rdata=rdata, ttl=ttl, transport=transport, authenticated=authenticated)


def srv_answer(*records: SrvRecord, ttl: int = 900) -> DnsAnswer:
    return DnsAnswer(DnsStatus.ANSWER, srv=records, ttl=ttl)


def entry(dn: str, *values: tuple[str, bytes]) -> LdapEntry:
    return LdapEntry(dn, tuple(values))


NX = DnsAnswer(DnsStatus.NXDOMAIN)
NODATA = DnsAnswer(DnsStatus.NODATA)


@dataclass
class World:
    """What the fake network answers; unknown names are NXDOMAIN, unknown servers hold no entries."""

    dns: Mapping[str, DnsAnswer | LookupFailure] = field(default_factory=dict)
    ldap: Mapping[SrvRecord, Mapping[str, Sequence[LdapEntry]] | LookupFailure] = field(default_factory=dict)
    urls: Mapping[str, bytes | LookupFailure] = field(default_factory=dict)
    steps: list[object] = field(default_factory=list)


Judge = Callable[[ValidateCertificates], Verdicts]


def static_judge(anchors: StaticAnchors, address: DirectAddress = ADDRESS, at: datetime = AT) -> Judge:
    def judge(step: ValidateCertificates) -> Verdicts:
        items = []
        for cert in step.candidates:
            try:
                verdict = anchors.validate_recipient(
                    cert, recipient=address, intermediates=step.intermediates, at=at, policy=DEFAULT_POLICY
                )
            except TrustError as exc:
                items.append(CertificateVerdict(cert, None, exc.message))
            except Exception as exc:  # PolicyViolation
                items.append(CertificateVerdict(cert, None, str(exc)))
            else:
                items.append(CertificateVerdict(cert, verdict, "trusted"))
        return Verdicts(tuple(items))

    return judge


def run(
    world: World,
    certs: Certs,
    *,
    address: DirectAddress = ADDRESS,
    judge: Judge | None = None,
    **options: object,
) -> DiscoveryResult:
    plan = DiscoveryPlan(address, at=AT, **options)  # type: ignore[arg-type]
    judge = judge or static_judge(certs.pki.anchors, address)
    for _ in range(200):
        step = plan.next_step()
        if step is None:
            return plan.result()
        world.steps.append(step)
        answer: Answer
        if isinstance(step, CertQuery | SrvQuery):
            answer = world.dns.get(step.name, NX)
        elif isinstance(step, LdapQuery):
            server = world.ldap.get(step.target, {})
            if isinstance(server, LookupFailure):
                answer = server
            else:
                answer = LdapAnswer(f"{step.target.target}:{step.target.port}", ("ou=dcdt",),
                                    tuple(server.get(step.mail, ())))
        elif isinstance(step, UrlFetch):
            body = world.urls.get(step.url, LookupFailure("404", transient=False))
            answer = body if isinstance(body, LookupFailure) else FetchAnswer(body)
        else:
            assert isinstance(step, ValidateCertificates)
            answer = judge(step)
        plan.receive(answer)
    raise AssertionError("the plan did not finish in 200 steps")


def tiers_queried(world: World) -> list[str]:
    out = []
    for step in world.steps:
        if isinstance(step, CertQuery):
            out.append(f"CERT {step.name}")
        elif isinstance(step, SrvQuery):
            out.append(f"SRV {step.name}")
        elif isinstance(step, LdapQuery):
            out.append(f"LDAP {step.target.target} {step.mail}")
    return out


# -- precedence (conformance.md 1.6) -----------------------------------------------------------------


def test_d1_dns_address_bound_first_domain_tier_never_asked(certs: Certs) -> None:
    """1.6 rule 1: address-bound DNS before domain-bound DNS (D1)."""
    world = World(dns={AB_NAME: cert_answer(pkix(certs.ab_valid)), DB_NAME: cert_answer(pkix(certs.db_valid))})
    result = run(world, certs)
    assert result.outcome is Outcome.FOUND
    assert result.chosen == (certs.ab_valid,)
    assert result.deciding_tier is Tier.DNS_ADDRESS
    assert tiers_queried(world) == [f"CERT {AB_NAME}"]
    assert result.tier(Tier.DNS_DOMAIN).status is TierStatus.NOT_QUERIED  # type: ignore[union-attr]


def test_d2_dns_domain_bound_when_no_address_record_choose_the_valid_one(certs: Certs) -> None:
    """1.6 rules 1 and 3: no AB record -> DB record set; pick the valid of two (D2)."""
    world = World(dns={DB_NAME: cert_answer(pkix(certs.db_expired), pkix(certs.db_valid))})
    result = run(world, certs)
    assert result.chosen == (certs.db_valid,)
    assert result.deciding_tier is Tier.DNS_DOMAIN
    reports = result.tier(Tier.DNS_DOMAIN).certificates  # type: ignore[union-attr]
    refused = [r for r in reports if not r.chosen]
    assert [r.certificate for r in refused] == [certs.db_expired]
    assert refused[0].reason.startswith("expired")


def test_dns_before_ldap_even_when_ldap_has_an_address_bound_certificate(certs: Certs) -> None:
    """1.6 rule 1: a valid DNS domain-bound certificate wins over a valid LDAP address-bound one (DTS 500)."""
    world = World(
        dns={DB_NAME: cert_answer(pkix(certs.db_valid)), SRV_NAME: srv_answer(LDAP1)},
        ldap={LDAP1: {str(ADDRESS): [entry("cn=d1", ("userCertificate;binary", certs.ab_valid.der))]}},
    )
    result = run(world, certs)
    assert result.chosen == (certs.db_valid,)
    assert not any(isinstance(s, SrvQuery | LdapQuery) for s in world.steps)


def test_d3_ldap_address_bound_when_dns_has_nothing(certs: Certs) -> None:
    """D3: no CERT at all -> SRV -> LDAP (mail=address)."""
    world = World(
        dns={SRV_NAME: srv_answer(LDAP1)},
        ldap={LDAP1: {str(ADDRESS): [entry("cn=d1,ou=dcdt", ("userCertificate", certs.ab_valid.der))],
                      DOMAIN: [entry("cn=dom,ou=dcdt", ("userCertificate", certs.db_valid.der))]}},
    )
    result = run(world, certs)
    assert result.chosen == (certs.ab_valid,)
    assert result.deciding_tier is Tier.LDAP_ADDRESS
    assert tiers_queried(world) == [f"CERT {AB_NAME}", f"CERT {DB_NAME}", f"SRV {SRV_NAME}",
                                    f"LDAP ldap1.example. {ADDRESS}"]


def test_d4_ldap_domain_bound_when_no_address_entry(certs: Certs) -> None:
    world = World(
        dns={SRV_NAME: srv_answer(LDAP1)},
        ldap={LDAP1: {DOMAIN: [entry("cn=dom", ("userCertificate;binary", certs.db_valid.der))]}},
    )
    result = run(world, certs)
    assert result.chosen == (certs.db_valid,)
    assert result.deciding_tier is Tier.LDAP_DOMAIN


def test_d5_invalid_dns_address_bound_never_falls_back_to_valid_domain_bound(certs: Certs) -> None:
    """1.6 rule 2 (CD-8, D5): the most common DCDT failure."""
    world = World(dns={AB_NAME: cert_answer(pkix(certs.ab_expired)), DB_NAME: cert_answer(pkix(certs.db_valid))})
    result = run(world, certs)
    assert result.outcome is Outcome.NOT_FOUND
    assert result.chosen == ()
    assert result.deciding_tier is Tier.DNS_ADDRESS
    assert "CD-8" in result.reason
    assert tiers_queried(world) == [f"CERT {AB_NAME}"]


def test_d6_invalid_dns_domain_bound_is_undeliverable(certs: Certs) -> None:
    world = World(
        dns={DB_NAME: cert_answer(pkix(certs.db_expired)), SRV_NAME: srv_answer(LDAP1)},
        ldap={LDAP1: {str(ADDRESS): [entry("cn=d1", ("userCertificate", certs.ab_valid.der))]}},
    )
    result = run(world, certs)
    assert result.outcome is Outcome.NOT_FOUND
    assert not any(isinstance(s, SrvQuery) for s in world.steps)


def test_d7_invalid_ldap_address_bound_never_falls_back_to_ldap_domain_bound(certs: Certs) -> None:
    """1.6 rule 2 in LDAP (D7): LDAP1 holds a valid domain-bound certificate that must not be used."""
    world = World(
        dns={SRV_NAME: srv_answer(LDAP1)},
        ldap={LDAP1: {str(ADDRESS): [entry("cn=d7", ("userCertificate", certs.ab_expired.der))],
                      DOMAIN: [entry("cn=dom", ("userCertificate", certs.db_valid.der))]}},
    )
    result = run(world, certs)
    assert result.outcome is Outcome.NOT_FOUND
    assert result.deciding_tier is Tier.LDAP_ADDRESS
    assert [s.mail for s in world.steps if isinstance(s, LdapQuery)] == [str(ADDRESS)]


def test_d8_invalid_ldap_domain_bound_is_undeliverable(certs: Certs) -> None:
    world = World(
        dns={SRV_NAME: srv_answer(LDAP3)},
        ldap={LDAP3: {DOMAIN: [entry("cn=d8", ("userCertificate", certs.db_expired.der))]}},
    )
    result = run(world, certs)
    assert result.outcome is Outcome.NOT_FOUND
    assert result.deciding_tier is Tier.LDAP_DOMAIN


def test_d9_select_the_valid_address_bound_certificate_of_two(certs: Certs) -> None:
    """1.6 rule 3 (D9): valid and expired in one RRset, in both orders."""
    for order in ((certs.ab_expired, certs.ab_valid), (certs.ab_valid, certs.ab_expired)):
        world = World(dns={AB_NAME: cert_answer(*(pkix(c) for c in order))})
        assert run(world, certs).chosen == (certs.ab_valid,)


def test_every_valid_certificate_of_the_deciding_tier_is_chosen(certs: Certs) -> None:
    """AS-11: encrypt to every valid certificate of the recipient."""
    world = World(dns={AB_NAME: cert_answer(pkix(certs.ab_valid), pkix(certs.ab_valid2), pkix(certs.ab_expired))})
    result = run(world, certs)
    assert set(result.chosen) == {certs.ab_valid, certs.ab_valid2}


def test_d10_unavailable_ldap_server_moves_on_to_the_next_target(certs: Certs) -> None:
    """1.6 rule 4 (D10): priority-0 target refuses connections -> priority-1 target is used."""
    world = World(
        dns={SRV_NAME: srv_answer(LDAP2, LDAP1)},
        ldap={LDAP1: LookupFailure("connection refused", stage="connect"),
              LDAP2: {str(ADDRESS): [entry("cn=d10", ("userCertificate", certs.ab_valid.der))]}},
    )
    result = run(world, certs)
    assert result.chosen == (certs.ab_valid,)
    assert [s.target for s in world.steps if isinstance(s, LdapQuery)] == [LDAP1, LDAP2]
    assert any("connection refused" in e for e in result.tier(Tier.LDAP_ADDRESS).errors)  # type: ignore[union-attr]


def test_every_srv_target_is_tried_before_giving_up_ri_issue_199(certs: Certs) -> None:
    """1.6 rule 4: the first server's entry has no certificate; the second server's has one."""
    world = World(
        dns={SRV_NAME: srv_answer(LDAP1, LDAP2)},
        ldap={LDAP1: {str(ADDRESS): [entry("cn=d1,ou=a")]},
              LDAP2: {str(ADDRESS): [entry("cn=d1,ou=b", ("userCertificate", certs.ab_valid.der))]}},
    )
    result = run(world, certs)
    assert result.chosen == (certs.ab_valid,)
    records = result.tier(Tier.LDAP_ADDRESS).records  # type: ignore[union-attr]
    assert any("without a certificate" in r.description for r in records)


def test_d12_only_srv_target_unavailable_is_transient_and_sends_nothing(certs: Certs) -> None:
    world = World(dns={SRV_NAME: srv_answer(LDAP1)}, ldap={LDAP1: LookupFailure("timed out", stage="connect")})
    result = run(world, certs)
    assert result.outcome is Outcome.UNAVAILABLE
    assert result.chosen == ()
    assert result.ttl == 0


def test_dead_target_is_not_retried_for_the_domain_tier(certs: Certs) -> None:
    world = World(
        dns={SRV_NAME: srv_answer(LDAP1, LDAP2)},
        ldap={LDAP1: LookupFailure("timed out", stage="connect"),
              LDAP2: {DOMAIN: [entry("cn=dom", ("userCertificate", certs.db_valid.der))]}},
    )
    result = run(world, certs)
    assert result.chosen == (certs.db_valid,)
    targets = [(s.target, s.mail) for s in world.steps if isinstance(s, LdapQuery)]
    assert targets == [(LDAP1, str(ADDRESS)), (LDAP2, str(ADDRESS)), (LDAP2, DOMAIN)]


def test_d13_reachable_ldap_without_entries_is_not_found(certs: Certs) -> None:
    world = World(dns={SRV_NAME: srv_answer(LDAP1)}, ldap={LDAP1: {}})
    result = run(world, certs)
    assert result.outcome is Outcome.NOT_FOUND
    assert "CD-9" in result.reason


def test_d11_no_cert_and_no_srv_is_not_found(certs: Certs) -> None:
    world = World()
    result = run(world, certs)
    assert result.outcome is Outcome.NOT_FOUND
    assert result.deciding_tier is None
    assert "CD-9" in result.reason
    assert tiers_queried(world) == [f"CERT {AB_NAME}", f"CERT {DB_NAME}", f"SRV {SRV_NAME}"]
    assert result.ttl == DiscoveryLimits().negative_ttl


def test_d15_srv_priority_first_server_wins(certs: Certs) -> None:
    """1.6 rule 4 (D15): priority 0 first; the priority-1 server's expired decoy is never read."""
    world = World(
        dns={SRV_NAME: srv_answer(LDAP2, LDAP1)},
        ldap={LDAP1: {str(ADDRESS): [entry("cn=d15", ("userCertificate", certs.ab_valid.der))]},
              LDAP2: {str(ADDRESS): [entry("cn=d15", ("userCertificate", certs.ab_expired.der))]}},
    )
    result = run(world, certs)
    assert result.chosen == (certs.ab_valid,)
    assert [s.target for s in world.steps if isinstance(s, LdapQuery)] == [LDAP1]


def test_d16_srv_weight_higher_first_even_when_both_are_valid(certs: Certs) -> None:
    """1.6 rule 4 (D16): weight 100 before weight 0 at equal priority; the other valid one is not used."""
    world = World(
        dns={SRV_NAME: srv_answer(LDAP1, LDAP3)},
        ldap={LDAP1: {str(ADDRESS): [entry("cn=valE", ("userCertificate", certs.ab_valid2.der))]},
              LDAP3: {str(ADDRESS): [entry("cn=valC", ("userCertificate", certs.ab_valid.der))]}},
    )
    for _ in range(5):  # deterministic, never weighted random
        assert run(World(dns=world.dns, ldap=world.ldap), certs).chosen == (certs.ab_valid,)


def test_d17_revoked_certificates_are_skipped(certs: Certs) -> None:
    """1.6 rules 3 and 6 (D17): the trust seam says revoked; the non-revoked one is chosen."""
    base = static_judge(certs.pki.anchors)

    def judge(step: ValidateCertificates) -> Verdicts:
        items = [
            CertificateVerdict(v.certificate, None, "revoked: keyCompromise") if v.certificate == certs.ab_valid2
            else v for v in base(step).items
        ]
        return Verdicts(tuple(items))

    world = World(dns={AB_NAME: cert_answer(pkix(certs.ab_valid2), pkix(certs.ab_valid))})
    result = run(world, certs, judge=judge)
    assert result.chosen == (certs.ab_valid,)
    assert "revoked" in result.explain()


def test_d18_ca_certificates_of_the_tier_are_offered_as_intermediates(certs: Certs) -> None:
    """1.6 rule 6 (D18): a CA certificate next to the leaf is passed for path building, never chosen."""
    world = World(dns={AB_NAME: cert_answer(pkix(certs.pki.ca.certificate), pkix(certs.ab_valid))})
    result = run(world, certs)
    validate = next(s for s in world.steps if isinstance(s, ValidateCertificates))
    assert validate.intermediates == (certs.pki.ca.certificate,)
    assert validate.candidates == (certs.ab_valid,)
    assert result.chosen == (certs.ab_valid,)


def test_untrusted_certificate_is_undeliverable_without_fallback(certs: Certs) -> None:
    world = World(dns={AB_NAME: cert_answer(pkix(certs.foreign)), DB_NAME: cert_answer(pkix(certs.db_valid))})
    result = run(world, certs)
    assert result.outcome is Outcome.NOT_FOUND
    assert "untrusted" in result.tier(Tier.DNS_ADDRESS).certificates[0].reason  # type: ignore[union-attr]


def test_wrong_binding_is_refused_before_trust(certs: Certs) -> None:
    """AS-2/AS-3: a certificate for another address at our owner name is not bound to us."""
    world = World(dns={AB_NAME: cert_answer(pkix(certs.other_ab)), DB_NAME: cert_answer(pkix(certs.db_valid))})
    result = run(world, certs)
    assert result.outcome is Outcome.NOT_FOUND
    report = result.tier(Tier.DNS_ADDRESS).certificates[0]  # type: ignore[union-attr]
    assert report.binding is None and report.reason.startswith("wrong binding")
    assert not any(isinstance(s, ValidateCertificates) for s in world.steps)


def test_signing_only_certificate_is_refused_for_encryption(certs: Certs) -> None:
    world = World(dns={AB_NAME: cert_answer(pkix(certs.signing_only), pkix(certs.ab_valid))})
    result = run(world, certs)
    assert result.chosen == (certs.ab_valid,)


def test_binding_is_reported(certs: Certs) -> None:
    world = World(dns={DB_NAME: cert_answer(pkix(certs.db_valid))})
    report = run(world, certs).tier(Tier.DNS_DOMAIN).certificates[0]  # type: ignore[union-attr]
    assert report.binding is CertBinding.DOMAIN and report.chosen


# -- failures, DNSSEC, local store, URLs -------------------------------------------------------------


def test_servfail_at_the_first_tier_is_transient_and_stops(certs: Certs) -> None:
    world = World(dns={AB_NAME: LookupFailure("SERVFAIL"), DB_NAME: cert_answer(pkix(certs.db_valid))})
    result = run(world, certs)
    assert result.outcome is Outcome.UNAVAILABLE
    assert tiers_queried(world) == [f"CERT {AB_NAME}"]
    assert "retry later" in result.reason


def test_malformed_answer_is_permanent_and_stops(certs: Certs) -> None:
    world = World(dns={AB_NAME: LookupFailure("malformed answer", transient=False),
                       DB_NAME: cert_answer(pkix(certs.db_valid))})
    result = run(world, certs)
    assert result.outcome is Outcome.NOT_FOUND
    assert tiers_queried(world) == [f"CERT {AB_NAME}"]


def test_srv_servfail_is_transient(certs: Certs) -> None:
    result = run(World(dns={SRV_NAME: LookupFailure("SERVFAIL")}), certs)
    assert result.outcome is Outcome.UNAVAILABLE


def test_dnssec_required_refuses_unauthenticated_answers(certs: Certs) -> None:
    world = World(dns={AB_NAME: cert_answer(pkix(certs.ab_valid), authenticated=False)})
    result = run(world, certs, require_dnssec=True)
    assert result.outcome is Outcome.NOT_FOUND
    assert result.authenticated is False and result.dnssec_required
    assert "AD bit" in result.reason


def test_dnssec_required_accepts_authenticated_answers(certs: Certs) -> None:
    world = World(dns={AB_NAME: cert_answer(pkix(certs.ab_valid), authenticated=True)})
    result = run(world, certs, require_dnssec=True)
    assert result.usable and result.authenticated is True
    assert "DNSSEC (required): authenticated" in result.explain()


def test_local_store_is_consulted_first_and_dns_never_asked(certs: Certs) -> None:
    world = World(dns={AB_NAME: cert_answer(pkix(certs.ab_valid2))})
    result = run(world, certs, local=(certs.ab_valid,))
    assert result.chosen == (certs.ab_valid,)
    assert result.deciding_tier is Tier.LOCAL
    assert tiers_queried(world) == []


def test_url_records_are_fetched(certs: Certs) -> None:
    url = "http://pki.example/d1.der"
    ipkix = struct.pack("!HHB", CertType.IPKIX, 0, 0) + url.encode()
    world = World(dns={AB_NAME: cert_answer(ipkix)}, urls={url: certs.ab_valid.der})
    result = run(world, certs)
    assert result.chosen == (certs.ab_valid,)
    assert [s.url for s in world.steps if isinstance(s, UrlFetch)] == [url]


def test_url_fetch_transient_failure_makes_the_tier_unavailable(certs: Certs) -> None:
    url = "http://pki.example/d1.der"
    uri = struct.pack("!HHB", CertType.URI, 0, 0) + url.encode()
    world = World(dns={AB_NAME: cert_answer(uri), DB_NAME: cert_answer(pkix(certs.db_valid))},
                  urls={url: LookupFailure("connection refused")})
    assert run(world, certs).outcome is Outcome.UNAVAILABLE


def test_url_fetch_permanent_failure_is_a_defect_and_the_search_goes_on(certs: Certs) -> None:
    url = "http://pki.example/gone.der"
    uri = struct.pack("!HHB", CertType.URI, 0, 0) + url.encode()
    world = World(dns={AB_NAME: cert_answer(uri), DB_NAME: cert_answer(pkix(certs.db_valid))},
                  urls={url: b"not a certificate"})
    result = run(world, certs)
    assert result.chosen == (certs.db_valid,)
    assert any(r.defect for r in result.tier(Tier.DNS_ADDRESS).records)  # type: ignore[union-attr]


def test_record_defects_do_not_stop_the_valid_record(certs: Certs) -> None:
    world = World(dns={AB_NAME: cert_answer(b"\x00\x01", pkix(certs.ab_valid), struct.pack("!HHB", 1, 0, 0) + b"junk",
                                            struct.pack("!HHB", CertType.PGP, 0, 0) + b"pgp")})
    result = run(world, certs)
    assert result.chosen == (certs.ab_valid,)
    records = result.tier(Tier.DNS_ADDRESS).records  # type: ignore[union-attr]
    assert [r.defect is not None for r in records] == [True, False, True, False]
    assert "ignored" in records[3].description


def test_garbage_only_records_fall_through_like_no_records(certs: Certs) -> None:
    world = World(dns={AB_NAME: cert_answer(b"\xff" * 3, struct.pack("!HHB", 1, 0, 0) + b"\x30\x03abc"),
                       DB_NAME: cert_answer(pkix(certs.db_valid))})
    result = run(world, certs)
    assert result.chosen == (certs.db_valid,)
    assert result.tier(Tier.DNS_ADDRESS).status is TierStatus.EMPTY  # type: ignore[union-attr]


def test_ldap_garbage_values_are_defects(certs: Certs) -> None:
    world = World(
        dns={SRV_NAME: srv_answer(LDAP1)},
        ldap={LDAP1: {str(ADDRESS): [entry("cn=d1", ("userCertificate;binary", b"garbage"),
                                           ("userSMIMECertificate", b"\x30\x80junk"),
                                           ("userCertificate", certs.ab_valid.der))]}},
    )
    result = run(world, certs)
    assert result.chosen == (certs.ab_valid,)
    defects = [r.defect for r in result.tier(Tier.LDAP_ADDRESS).records if r.defect]  # type: ignore[union-attr]
    assert len(defects) == 2


def test_user_smime_certificate_pkcs7_is_read(certs: Certs) -> None:
    p7 = make_p7b([certs.ab_valid])
    world = World(dns={SRV_NAME: srv_answer(LDAP1)},
                  ldap={LDAP1: {str(ADDRESS): [entry("cn=d1", ("userSMIMECertificate", p7))]}})
    assert run(world, certs).chosen == (certs.ab_valid,)


def test_too_many_records_are_capped(certs: Certs) -> None:
    limits = DiscoveryLimits(max_records=2)
    world = World(dns={AB_NAME: cert_answer(*([b"\x00"] * 5), pkix(certs.ab_valid))})
    result = run(world, certs, limits=limits)
    assert result.outcome is Outcome.NOT_FOUND or result.chosen == ()
    assert any("only the first 2" in e for e in result.tier(Tier.DNS_ADDRESS).errors)  # type: ignore[union-attr]


def test_query_count_and_ttl(certs: Certs) -> None:
    world = World(dns={AB_NAME: NX, DB_NAME: cert_answer(pkix(certs.db_valid), ttl=120, transport="tcp")})
    result = run(world, certs)
    assert result.queries == 2
    assert result.ttl == 120
    assert "(answer, tcp)" in result.tier(Tier.DNS_DOMAIN).queries[0]  # type: ignore[union-attr]


def test_plan_protocol_errors(certs: Certs) -> None:
    plan = DiscoveryPlan(ADDRESS, at=AT)
    with pytest.raises(RuntimeError):
        plan.result()
    step = plan.next_step()
    assert plan.next_step() is step  # idempotent until answered
    with pytest.raises(TypeError):
        plan.receive(FetchAnswer(b""))
    plan2 = DiscoveryPlan(ADDRESS, at=AT)
    plan2.next_step()
    plan2.receive(NX)
    plan2.abort("budget exceeded")
    assert plan2.next_step() is None
    assert plan2.result().outcome is Outcome.UNAVAILABLE
    with pytest.raises(RuntimeError):
        plan2.receive(NX)
    with pytest.raises(ValueError):
        DiscoveryPlan(ADDRESS, at=datetime(2026, 1, 1))


# -- CERT RDATA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rdata", "expect"),
    [
        (b"", "defect"),
        (b"\x00\x01\x00\x00", "defect"),
        (struct.pack("!HHB", 1, 0, 0), "defect"),
        (struct.pack("!HHB", 1, 7, 8) + b"\x30\x82\x01\x00", "defect"),
        (struct.pack("!HHB", 3, 0, 0) + b"pgp key", "ignored"),
        (struct.pack("!HHB", 2, 0, 0) + b"spki", "ignored"),
        (struct.pack("!HHB", 254, 0, 0) + b"oid", "ignored"),
        (struct.pack("!HHB", 4, 0, 0) + b"http://pki.example/a.der", "url"),
        (struct.pack("!HHB", 253, 0, 0) + b"https://pki.example/a.cer", "url"),
        (struct.pack("!HHB", 253, 0, 0) + b"ldap://pki.example/a", "defect"),
        (struct.pack("!HHB", 4, 0, 0) + b"http://a b/", "defect"),
        (struct.pack("!HHB", 4, 0, 0) + b"http://\xff/", "defect"),
        (struct.pack("!HHB", 4, 0, 0) + b"", "defect"),
        (struct.pack("!HHB", 4, 0, 0) + b"http://x/" + b"a" * 3000, "defect"),
    ],
    ids=["empty", "short", "pkix-empty", "pkix-garbage", "pgp", "spki", "oid", "ipkix", "uri", "uri-ldap",
         "url-space", "url-non-ascii", "url-empty", "url-too-long"],
)
def test_decode_cert_rdata(rdata: bytes, expect: str) -> None:
    record = decode_cert_rdata(rdata)
    assert (record.defect is not None) == (expect == "defect")
    assert (record.ignored is not None) == (expect == "ignored")
    assert (record.url is not None) == (expect == "url")
    assert record.certificate is None
    assert record.describe()


def test_decode_cert_rdata_pkix_ignores_key_tag_and_algorithm(certs: Certs) -> None:
    for tag, alg in ((0, 0), (0xBEEF, 5), (65535, 8)):
        record = decode_cert_rdata(pkix(certs.ab_valid, tag, alg))
        assert record.certificate == certs.ab_valid
        assert (record.key_tag, record.algorithm, record.cert_type) == (tag, alg, 1)


def test_decode_cert_rdata_certificate_with_trailing_bytes_is_a_defect(certs: Certs) -> None:
    assert decode_cert_rdata(pkix(certs.ab_valid) + b"\x00").defect is not None


# -- SRV ---------------------------------------------------------------------------------------------


def test_order_srv_priority_then_weight_descending() -> None:
    records = [SrvRecord(1, 0, 389, "c."), SrvRecord(0, 0, 389, "b."), SrvRecord(0, 100, 389, "a."),
               SrvRecord(0, 100, 389, "0.")]
    ordered, notes = order_srv(records)
    assert [r.target for r in ordered] == ["0.", "a.", "b.", "c."]
    assert notes == ()


def test_order_srv_drops_absurd_records() -> None:
    owner = ldap_service_name(ADDRESS)
    records = [SrvRecord(0, 0, 389, "."), SrvRecord(0, 0, 0, "a."), SrvRecord(0, 0, 389, owner),
               SrvRecord(0, 0, 389, "b."), SrvRecord(0, 0, 389, "B.")]
    records += [SrvRecord(5, 0, 389 + n, f"h{n}.") for n in range(500)]
    ordered, notes = order_srv(records, owner=owner, limit=3)
    assert [r.target for r in ordered] == ["b.", "h0.", "h1."]
    assert len(notes) == 4 + 498
    assert any("loop" in n for n in notes) and any("not offered" in n for n in notes)


def test_srv_with_only_the_dot_target_means_no_ldap(certs: Certs) -> None:
    world = World(dns={SRV_NAME: srv_answer(SrvRecord(0, 0, 389, "."))})
    result = run(world, certs)
    assert result.outcome is Outcome.NOT_FOUND
    assert not any(isinstance(s, LdapQuery) for s in world.steps)


def test_srv_loop_and_absurd_set_end_clearly(certs: Certs) -> None:
    owner = ldap_service_name(ADDRESS)
    many = [SrvRecord(0, n, 389, f"h{n}.example.") for n in range(300)]
    world = World(dns={SRV_NAME: srv_answer(SrvRecord(0, 0, 389, owner), *many)},
                  ldap={r: LookupFailure("refused", stage="connect") for r in many})
    result = run(world, certs)
    assert result.outcome is Outcome.UNAVAILABLE
    assert len([s for s in world.steps if isinstance(s, LdapQuery)]) == DiscoveryLimits().max_srv_targets


# -- the result --------------------------------------------------------------------------------------


def test_result_explain_and_json_name_every_tier_and_refusal(certs: Certs) -> None:
    world = World(dns={AB_NAME: NX, DB_NAME: cert_answer(pkix(certs.db_expired), pkix(certs.db_valid))})
    result = run(world, certs)
    text = result.explain()
    assert "CHOSEN" in text and "not chosen" in text and "expired" in text
    for tier in ("dns-address", "dns-domain", "ldap-address", "ldap-domain"):
        assert f"tier {tier}" in text
    data = json.loads(result.to_json())
    assert data["outcome"] == "found" and data["usable"] is True
    assert data["deciding_tier"] == "dns-domain"
    assert [t["status"] for t in data["tiers"]] == ["no certificates", "certificates", "not queried", "not queried"]
    assert data["chosen"][0]["fingerprint_sha256"] == certs.db_valid.fingerprint_sha256
    assert data["chosen"][0]["pem"].startswith("-----BEGIN CERTIFICATE-----")
    refused = [c for c in data["tiers"][1]["certificates"] if not c["chosen"]]
    assert refused[0]["reason"].startswith("expired")


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        DiscoveryLimits(max_records=0)
    with pytest.raises(ValueError):
        DiscoveryLimits(negative_ttl=-1)

