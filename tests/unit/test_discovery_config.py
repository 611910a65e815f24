"""``[discovery]`` and ``[[discovery.local]]``: what the configuration accepts, and what the gateway's discovery
(:class:`hisp.adapters.discovery.SenderDiscovery`, built from it) does with it.

The network is a fake :class:`~hisp.adapters.dns.DnsClient` / :class:`~hisp.adapters.ldap.LdapClient` that
answers from a table and records every question, so each test can say exactly which queries a lookup made;
the cache runs on an injected clock (CD-10: "TTL expiry test"). Certificates come from a development CA.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import AT

from hisp.adapters.discovery import (
    CertificateDiscovery,
    DiscoveryCache,
    LocalCertificates,
    SenderDiscovery,
    discovery_from_config,
    dns_from_config,
)
from hisp.adapters.dns import DnsClient
from hisp.adapters.ldap import LdapClient, LdapSession
from hisp.addresses import DirectAddress, HealthDomain
from hisp.config import DiscoveryConfig, parse_config
from hisp.core.agent import RecipientTrust
from hisp.core.discovery import (
    DiscoveryResult,
    DnsAnswer,
    DnsStatus,
    LdapAnswer,
    LdapEntry,
    Outcome,
    SrvRecord,
    Tier,
)
from hisp.errors import CertificateNotFound, ConfigError, DiscoveryUnavailable
from hisp.testing.pki import TestPKI

PARTNER = "partner.example"
DR_B = DirectAddress.parse(f"dr.b@{PARTNER}")
NURSE = DirectAddress.parse(f"nurse@{PARTNER}")
SENDER = HealthDomain.parse("clinic.example")
OTHER_SENDER = HealthDomain.parse("hospital.example")
LDAP = SrvRecord(0, 0, 10389, f"ldap.{PARTNER}.")


# -- fakes ---------------------------------------------------------------------------------------------


class FakeDns(DnsClient):
    """Answers CERT and SRV questions from ``answers`` (name -> answer or exception); unknown names: NXDOMAIN."""

    def __init__(self, answers: Mapping[str, DnsAnswer | Exception] | None = None) -> None:
        super().__init__(("127.0.0.1", 9))
        self.answers: dict[str, DnsAnswer | Exception] = dict(answers or {})
        self.asked: list[str] = []

    async def _answer(self, kind: str, name: str) -> DnsAnswer:
        self.asked.append(f"{kind} {name}")
        found = self.answers.get(name, DnsAnswer(DnsStatus.NXDOMAIN))
        if isinstance(found, Exception):
            raise found
        return found

    async def cert(self, name: str) -> DnsAnswer:
        return await self._answer("CERT", name)

    async def srv(self, name: str) -> DnsAnswer:
        return await self._answer("SRV", name)


@dataclass
class FakeDirectory:
    """LDAP entries by ``mail`` value; every search recorded."""

    entries: dict[str, tuple[LdapEntry, ...]] = field(default_factory=dict)
    searches: list[str] = field(default_factory=list)


class FakeSession(LdapSession):
    def __init__(self, client: LdapClient, directory: FakeDirectory) -> None:
        super().__init__(client)
        self.directory = directory

    async def search(self, target: SrvRecord, mail: str) -> LdapAnswer:
        self.directory.searches.append(mail)
        return LdapAnswer(f"{target.target}:{target.port}", ("ou=x",), self.directory.entries.get(mail, ()))


class FakeLdap(LdapClient):
    def __init__(self, dns: DnsClient, directory: FakeDirectory) -> None:
        super().__init__(dns)
        self.directory = directory

    def session(self) -> LdapSession:
        return FakeSession(self, self.directory)


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cert_answer(*ders: bytes, ttl: int) -> DnsAnswer:
    return DnsAnswer(DnsStatus.ANSWER, rdata=tuple(b"\x00\x01\x00\x00\x00" + d for d in ders), ttl=ttl)


def srv_answer(ttl: int) -> DnsAnswer:
    return DnsAnswer(DnsStatus.ANSWER, srv=(LDAP,), ttl=ttl)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(at=AT, name="Discovery Config Test CA")


@pytest.fixture(scope="module")
def stranger() -> TestPKI:
    return TestPKI(at=AT, name="Nobody Trusts This CA")


def _write(directory: Path, name: str, data: bytes) -> str:
    (directory / name).write_bytes(data)
    return name


def _config(directory: Path, text: str) -> DiscoveryConfig:
    return parse_config(text, source="hisp.toml", base=directory).discovery


def _run(coroutine: object) -> DiscoveryResult:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


# -- [discovery] ---------------------------------------------------------------------------------------


def test_defaults_when_the_section_is_absent(tmp_path: Path) -> None:
    config = _config(tmp_path, "")
    assert config == DiscoveryConfig(require_dnssec=False, ldap_ttl=3600, negative_ttl=300, cache_size=10_000)
    assert config.local == ()


def test_values_are_read(tmp_path: Path) -> None:
    config = _config(
        tmp_path, "[discovery]\nrequire_dnssec = true\nldap_ttl = 120\nnegative_ttl = 45\ncache_size = 7\n"
    )
    assert (config.require_dnssec, config.ldap_ttl, config.negative_ttl, config.cache_size) == (True, 120, 45, 7)
    assert dns_from_config(config, ("127.0.0.1", 53)).require_dnssec is True
    assert dns_from_config(_config(tmp_path, ""), ("127.0.0.1", 53)).require_dnssec is False


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("require_dnssec = 'yes'", "discovery.require_dnssec"),
        ("ldap_ttl = -1", "discovery.ldap_ttl"),
        ("ldap_ttl = 86401", "discovery.ldap_ttl"),
        ("negative_ttl = 1.5", "discovery.negative_ttl"),
        ("cache_size = 0", "discovery.cache_size"),
        ("cache_size = true", "discovery.cache_size"),
        ("ttl = 5", "discovery.ttl"),
    ],
    ids=["dnssec-not-bool", "ldap-ttl-negative", "ldap-ttl-over-a-day", "negative-ttl-float", "cache-size-0",
         "cache-size-bool", "unknown-key"],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, f"[discovery]\n{text}\n")
    assert caught.value.context["key"] == key
    assert key in caught.value.message


# -- [[discovery.local]] at load -------------------------------------------------------------------------


def test_local_entries_are_read_pem_and_der_with_chains(tmp_path: Path, pki: TestPKI) -> None:
    dr_b = pki.user(str(DR_B)).certificate
    domain = pki.domain(PARTNER).certificate
    _write(tmp_path, "dr.b.der", dr_b.der)
    _write(tmp_path, "partner.pem", domain.to_pem() + pki.ca.certificate.to_pem())
    config = _config(tmp_path, f"""
[[discovery.local]]
address = "{DR_B}"
file = "dr.b.der"

[[discovery.local]]
domain = "{PARTNER.upper()}"
file = "{tmp_path / 'partner.pem'}"
""")
    first, second = config.local
    assert (first.address, first.domain, first.certificates, first.config_key) == (
        DR_B, None, (dr_b,), "discovery.local[0]"
    )
    assert (second.address, second.domain, second.certificates) == (
        None, HealthDomain.parse(PARTNER), (domain, pki.ca.certificate)
    )


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        ('address = "{addr}"\nfile = "missing.pem"', "discovery.local[0].file", "cannot read"),
        ('address = "{addr}"\nfile = "garbage.pem"', "discovery.local[0].file", "not a certificate"),
        ('address = "{addr}"\nfile = "empty.pem"', "discovery.local[0].file", "not a certificate"),
        ('address = "{addr}"\nfile = "ca.pem"', "discovery.local[0].file", "only CA certificates"),
        ('address = "{addr}"\nfile = "other.pem"', "discovery.local[0].file", "not bound to"),
        ('domain = "elsewhere.example"\nfile = "dr.b.pem"', "discovery.local[0].file", "not bound to"),
        ('address = "{addr}"\ndomain = "{dom}"\nfile = "dr.b.pem"', "discovery.local[0].address", "one of them"),
        ('file = "dr.b.pem"', "discovery.local[0].address", "one of them"),
        ('address = "{addr}"', "discovery.local[0].file", "is required"),
        ('address = "not an address"\nfile = "dr.b.pem"', "discovery.local[0].address", ""),
        ('address = "{addr}"\nfile = "dr.b.pem"\n\n[[discovery.local]]\naddress = "{addr}"\nfile = "dr.b.pem"',
         "discovery.local[1].address", "already configured in discovery.local[0]"),
        ('address = "{addr}"\nfile = "dr.b.pem"\npublish = ["dns"]', "discovery.local[0].publish", "unknown key"),
    ],
    ids=["missing-file", "garbage", "empty", "ca-only", "other-address", "other-domain", "address-and-domain",
         "neither", "no-file", "bad-address", "duplicate", "unknown-key"],
)
def test_bad_local_entries_are_refused_at_load_naming_the_key(
    tmp_path: Path, pki: TestPKI, entry: str, key: str, words: str
) -> None:
    _write(tmp_path, "dr.b.pem", pki.user(str(DR_B)).certificate.to_pem())
    _write(tmp_path, "other.pem", pki.user(f"someone@{PARTNER}").certificate.to_pem())
    _write(tmp_path, "ca.pem", pki.ca.certificate.to_pem())
    _write(tmp_path, "garbage.pem", b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    _write(tmp_path, "empty.pem", b"")
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, "[[discovery.local]]\n" + entry.format(addr=DR_B, dom=PARTNER) + "\n")
    assert caught.value.context["key"] == key, caught.value.message
    assert words in caught.value.message


# -- the local store through discovery -------------------------------------------------------------------


def _local_config(tmp_path: Path, pki: TestPKI, *, address_cert: bytes, domain_cert: bytes) -> DiscoveryConfig:
    _write(tmp_path, "dr.b.pem", address_cert)
    _write(tmp_path, "partner.pem", domain_cert)
    return _config(tmp_path, f"""
[[discovery.local]]
domain = "{PARTNER}"
file = "partner.pem"

[[discovery.local]]
address = "{DR_B}"
file = "dr.b.pem"
""")


def test_local_address_entry_wins_over_the_domain_entry_and_dns_is_never_asked(
    tmp_path: Path, pki: TestPKI
) -> None:
    dr_b = pki.user(str(DR_B)).certificate
    domain = pki.domain(PARTNER).certificate
    config = _local_config(tmp_path, pki, address_cert=dr_b.to_pem(), domain_cert=domain.to_pem())
    store = LocalCertificates.from_config(config.local)
    assert store.for_address(DR_B) == (dr_b,)
    assert store.for_address(NURSE) == (domain,)
    assert store.for_address(DirectAddress.parse("x@elsewhere.example")) == ()
    dns = FakeDns({f"dr.b.{PARTNER}.": cert_answer(pki.user(str(DR_B), key_size=2048).certificate.der, ttl=60)})
    discovery = discovery_from_config(config, dns=dns, trust=pki.anchors)
    result = _run(discovery.lookup(DR_B, at=AT))
    assert result.chosen == (dr_b,)
    assert result.deciding_tier is Tier.LOCAL
    assert [c.certificate for c in result.tier(Tier.LOCAL).certificates] == [dr_b]  # type: ignore[union-attr]
    nurse = _run(discovery.lookup(NURSE, at=AT))
    assert nurse.chosen == (domain,) and nurse.deciding_tier is Tier.LOCAL
    assert dns.asked == []
    # an address without an entry is discovered as usual
    elsewhere = _run(discovery.lookup("x@elsewhere.example", at=AT))
    assert elsewhere.tier(Tier.LOCAL) is None and dns.asked[0] == "CERT x.elsewhere.example."


@pytest.mark.parametrize("problem", ["untrusted", "expired"])
def test_local_certificates_are_still_judged_by_trust_and_never_fall_through(
    tmp_path: Path, pki: TestPKI, stranger: TestPKI, problem: str
) -> None:
    if problem == "untrusted":
        bad = stranger.user(str(DR_B)).certificate
    else:
        bad = pki.user(str(DR_B), not_before=AT - timedelta(days=400), not_after=AT - timedelta(days=30)).certificate
    domain = pki.domain(PARTNER).certificate
    config = _local_config(tmp_path, pki, address_cert=bad.to_pem(), domain_cert=domain.to_pem())
    dns = FakeDns({f"dr.b.{PARTNER}.": cert_answer(pki.user(str(DR_B)).certificate.der, ttl=60)})
    discovery = discovery_from_config(config, dns=dns, trust=pki.anchors)
    with pytest.raises(CertificateNotFound) as caught:
        _run(discovery.discover(DR_B, at=AT))
    result: DiscoveryResult = caught.value.context["result"]
    assert result.deciding_tier is Tier.LOCAL and result.chosen == ()
    (report,) = result.tier(Tier.LOCAL).certificates  # type: ignore[union-attr]
    assert report.certificate == bad and not report.chosen
    assert problem in report.reason.lower() or (problem == "untrusted" and "anchor" in report.reason.lower())
    assert dns.asked == []  # CD-8: the tier that yielded certificates decides


# -- cache times from the configuration, on an injected clock (CD-10) -------------------------------------


def _sender_discovery(
    pki: TestPKI, config: DiscoveryConfig, dns: FakeDns, directory: FakeDirectory | None = None,
    trust: RecipientTrust | None = None,
) -> tuple[SenderDiscovery, Clock]:
    clock = Clock()
    discovery = SenderDiscovery(
        config, dns=dns, trust_for=lambda sender: trust or pki.anchors, clock=clock,
        ldap=FakeLdap(dns, directory or FakeDirectory()),
    )
    return discovery, clock


def _lookup(discovery: SenderDiscovery, address: DirectAddress, sender: HealthDomain = SENDER) -> DiscoveryResult:
    return _run(discovery.discovery(sender).lookup(address, at=AT))


def test_dns_result_expires_at_its_ttl(pki: TestPKI) -> None:
    dns = FakeDns({f"dr.b.{PARTNER}.": cert_answer(pki.user(str(DR_B)).certificate.der, ttl=600)})
    discovery, clock = _sender_discovery(pki, DiscoveryConfig(), dns)
    first = _lookup(discovery, DR_B)
    assert first.outcome is Outcome.FOUND and first.ttl == 600 and len(dns.asked) == 1
    clock.now += 599.9
    assert _lookup(discovery, DR_B).from_cache and len(dns.asked) == 1
    clock.now += 0.1  # 600 s after the answer: expired
    again = _lookup(discovery, DR_B)
    assert not again.from_cache and len(dns.asked) == 2


def test_ldap_result_is_cached_for_the_configured_ldap_ttl(pki: TestPKI) -> None:
    dr_b = pki.user(str(DR_B)).certificate
    dns = FakeDns({f"_ldap._tcp.{PARTNER}.": srv_answer(ttl=900)})
    directory = FakeDirectory({str(DR_B): (LdapEntry("cn=dr.b", (("userCertificate;binary", dr_b.der),)),)})
    discovery, clock = _sender_discovery(pki, DiscoveryConfig(ldap_ttl=120), dns, directory)
    first = _lookup(discovery, DR_B)
    assert first.chosen == (dr_b,) and first.deciding_tier is Tier.LDAP_ADDRESS
    assert first.ttl == 120  # not the default 3600, not the SRV's 900
    clock.now += 119
    assert _lookup(discovery, DR_B).from_cache and directory.searches == [str(DR_B)]
    clock.now += 1
    assert not _lookup(discovery, DR_B).from_cache and directory.searches == [str(DR_B)] * 2


def test_not_found_is_cached_and_served_for_the_negative_ttl(pki: TestPKI) -> None:
    dns = FakeDns()  # NXDOMAIN everywhere: CERT, CERT, SRV
    discovery, clock = _sender_discovery(pki, DiscoveryConfig(negative_ttl=45), dns)
    first = _lookup(discovery, DR_B)
    assert first.outcome is Outcome.NOT_FOUND and first.ttl == 45 and len(dns.asked) == 3
    clock.now += 44
    with pytest.raises(CertificateNotFound) as caught:
        _run(discovery.discover(SENDER, DR_B, at=AT))
    assert caught.value.context["result"].from_cache and len(dns.asked) == 3
    clock.now += 1
    assert not _lookup(discovery, DR_B).from_cache and len(dns.asked) == 6


def test_negative_ttl_zero_caches_nothing(pki: TestPKI) -> None:
    dns = FakeDns()
    discovery, _clock = _sender_discovery(pki, DiscoveryConfig(negative_ttl=0), dns)
    assert _lookup(discovery, DR_B).ttl == 0
    assert not _lookup(discovery, DR_B).from_cache and len(dns.asked) == 6


def test_unavailable_is_never_cached(pki: TestPKI) -> None:
    dns = FakeDns({f"dr.b.{PARTNER}.": DiscoveryUnavailable("SERVFAIL", transient=True)})
    discovery, _clock = _sender_discovery(pki, DiscoveryConfig(), dns)
    for expected in (1, 2, 3):
        with pytest.raises(DiscoveryUnavailable) as caught:
            _run(discovery.discover(SENDER, DR_B, at=AT))
        assert not caught.value.context["result"].from_cache
        assert len(dns.asked) == expected
    assert len(discovery.cache) == 0
    # the plan gives "unavailable" a TTL of 0; the cache refuses it even with a TTL (transient, never served)
    result = caught.value.context["result"]
    discovery.cache.put(dataclasses.replace(result, ttl=600), scope=SENDER)
    assert len(discovery.cache) == 0


def test_the_size_bound_evicts_the_least_recently_used_across_senders(pki: TestPKI) -> None:
    dns = FakeDns()
    discovery, _clock = _sender_discovery(pki, DiscoveryConfig(cache_size=2), dns)
    _lookup(discovery, DR_B)                           # [dr.b]
    _lookup(discovery, NURSE, OTHER_SENDER)            # [dr.b, nurse@other]
    assert _lookup(discovery, DR_B).from_cache         # [nurse@other, dr.b]
    _lookup(discovery, NURSE)                          # [dr.b, nurse]: nurse@other evicted
    assert len(discovery.cache) == 2
    asked = len(dns.asked)
    assert _lookup(discovery, DR_B).from_cache and _lookup(discovery, NURSE).from_cache
    assert len(dns.asked) == asked
    assert not _lookup(discovery, NURSE, OTHER_SENDER).from_cache and len(dns.asked) == asked + 3


def test_results_are_scoped_by_sender_domain() -> None:
    cache = DiscoveryCache(4)
    pki = TestPKI(at=AT)
    dns = FakeDns({f"dr.b.{PARTNER}.": cert_answer(pki.user(str(DR_B)).certificate.der, ttl=600)})
    first = CertificateDiscovery(dns=dns, trust=pki.anchors, cache=cache, cache_scope=SENDER)
    second = CertificateDiscovery(dns=dns, trust=pki.anchors, cache=cache, cache_scope=OTHER_SENDER)
    assert not _run(first.lookup(DR_B, at=AT)).from_cache
    assert not _run(second.lookup(DR_B, at=AT)).from_cache  # judged against the other domain's anchors
    assert _run(first.lookup(DR_B, at=AT)).from_cache and len(cache) == 2


# -- trust reload (SIGHUP) -------------------------------------------------------------------------------


class SwitchableTrust:
    """The trust seam of a node whose anchors are replaced by a reload."""

    def __init__(self, trust: RecipientTrust) -> None:
        self.current = trust

    def __call__(self, sender: HealthDomain) -> RecipientTrust:
        return self.current


def test_clear_after_a_trust_reload_forgets_verdicts_made_with_the_old_anchors(
    pki: TestPKI, stranger: TestPKI
) -> None:
    dns = FakeDns({f"dr.b.{PARTNER}.": cert_answer(pki.user(str(DR_B)).certificate.der, ttl=600)})
    trust = SwitchableTrust(pki.anchors)
    discovery = SenderDiscovery(DiscoveryConfig(), dns=dns, trust_for=trust, clock=Clock())
    assert _run(discovery.discover(SENDER, DR_B, at=AT)).usable
    trust.current = stranger.anchors  # the reload removed the partner's CA
    assert _run(discovery.discover(SENDER, DR_B, at=AT)).from_cache  # why clearing is needed
    discovery.clear()
    with pytest.raises(CertificateNotFound):
        _run(discovery.discover(SENDER, DR_B, at=AT))
    assert len(dns.asked) == 2


def test_reload_applies_a_new_discovery_section_and_clears(tmp_path: Path, pki: TestPKI) -> None:
    dr_b = pki.user(str(DR_B)).certificate
    dns = FakeDns()
    discovery = SenderDiscovery(DiscoveryConfig(), dns=dns, trust_for=lambda s: pki.anchors, clock=Clock())
    assert _lookup(discovery, DR_B).outcome is Outcome.NOT_FOUND and len(discovery.cache) == 1
    domain = pki.domain(PARTNER).certificate
    config = _local_config(tmp_path, pki, address_cert=dr_b.to_pem(), domain_cert=domain.to_pem())
    discovery.reload(DiscoveryConfig(require_dnssec=True, negative_ttl=10, cache_size=3, local=config.local))
    assert len(discovery.cache) == 0 and discovery.cache.max_entries == 3
    assert discovery.dns.require_dnssec and discovery.dns.server == dns.server
    result = _run(discovery.discover(SENDER, DR_B, at=AT))
    assert result.chosen == (dr_b,) and result.deciding_tier is Tier.LOCAL and not result.from_cache


# -- the gateway's wiring (hisp.app): ConfigHosting's outgoing anchors, a trust reload, the discovery reload ----


def _gateway_config(directory: Path, anchor: Path, partner: Path) -> Path:
    from hisp.testing.hosting import write_hosted_domain

    hosted = write_hosted_domain(directory, TestPKI(at=AT, name="Our CA"), "clinic.example", extra=f"""
[[trust.anchor]]
file = "{anchor}"
domains = ["clinic.example"]
directions = ["outgoing"]

[discovery]
negative_ttl = 60

[[discovery.local]]
domain = "{PARTNER}"
file = "{partner}"
""")
    return hosted.config_path


def test_gateway_wiring_judges_with_the_senders_anchors_and_a_trust_reload_clears_the_cache(
    tmp_path: Path, pki: TestPKI, stranger: TestPKI
) -> None:
    """As ``hisp.app.Node`` builds it: ``SenderDiscovery(config.discovery, dns=dns_from_config(...),
    trust_for=hosting.trust)``; on SIGHUP the node swaps ``hosting.stores`` and calls ``reload``."""
    from hisp.adapters.truststores import TrustStores
    from hisp.app import ConfigHosting
    from hisp.config import load_config
    from hisp.testing.hosting import PASSPHRASE_ENV

    anchor = tmp_path / "partner-ca.pem"
    anchor.write_bytes(pki.ca.certificate.to_pem())
    partner = tmp_path / "partner.pem"
    partner.write_bytes(pki.domain(PARTNER).certificate.to_pem())
    config = load_config(_gateway_config(tmp_path, anchor, partner))
    environ = {PASSPHRASE_ENV: "p12 passphrase"}
    hosting = ConfigHosting(config, environ, TrustStores(config.trust, now=AT), None)
    dns = FakeDns()
    discovery = SenderDiscovery(
        config.discovery, dns=dns, trust_for=hosting.trust, policy=config.trust.policy, clock=Clock(),
    )
    sender = HealthDomain.parse("clinic.example")
    found = _run(discovery.discover(sender, NURSE, at=AT))
    assert found.chosen == (pki.domain(PARTNER).certificate,) and found.deciding_tier is Tier.LOCAL
    assert dns.asked == []  # the local store answered
    # SIGHUP: the partner's CA is no longer an outgoing anchor
    anchor.write_bytes(stranger.ca.certificate.to_pem())
    reloaded = load_config(config.path)
    hosting.stores = TrustStores(reloaded.trust, now=AT)
    assert _run(discovery.discover(sender, NURSE, at=AT)).from_cache  # still the old verdict: hence reload()
    discovery.reload(reloaded.discovery)
    with pytest.raises(CertificateNotFound) as caught:
        _run(discovery.discover(sender, NURSE, at=AT))
    assert caught.value.context["result"].deciding_tier is Tier.LOCAL and not caught.value.context["result"].from_cache
