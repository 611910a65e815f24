"""DCDT discovery cases D1-D18 against a rebuilt DCDT world of real servers on loopback.

The world of conformance.md section 1.2 is built once for the module: a root CA ``CN=dcdt_ca_root`` and
``CN=dcdt_ca_intermediate1`` (D18), every credential of the canonical case definitions
(../shared/fixtures/dcdt/spring-core-testcases-discovery.xml, parsed here: name, target or background,
address- or domain-bound, expired, revoked, issuer, location), each made to the profile of section 1.4;
one BIND ``named`` serving the zone ``dcdt.example`` (sub-domains domain1..domain10, CERT PKIX records and
``_ldap._tcp`` SRV records per the table of 1.2, a dead SRV target for D10 and D12); three ``slapd``
instances LDAP1, LDAP2, LDAP3 on their own ports; a loopback HTTP server for the CRLs (D17: two entries,
reason keyCompromise) and the CA certificates (AIA caIssuers, D18).

Each case then runs a real :meth:`CertificateDiscovery.lookup` (DNS at the BIND server, LDAP through SRV,
trust = :class:`StoreTrust` with the DCDT root as the only outgoing anchor, revocation hard, CRL and AIA
through :class:`BoundedFetcherBackend`) and asserts the exact certificate chosen (by fingerprint, against
the case's target credential) or, for the negative cases, that none was and why (not found or
unavailable); never a background credential. A second test per case seals a message with the security
agent to what discovery chose and judges it as DCDT does (section 1.1): the envelope names exactly the
target (issuer and serial), the target's key opens it and no other credential of the case does; for the
negative cases the agent refuses to send.
"""

from __future__ import annotations

import asyncio
import base64
import re
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import dns.flags
import pytest
from asn1crypto import cms
from conftest import AT, FIXTURES
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from hisp.adapters.discovery import CertificateDiscovery
from hisp.adapters.dns import DnsClient
from hisp.adapters.ldap import LdapClient, LdapSettings
from hisp.adapters.revocation import BoundedFetcherBackend
from hisp.addresses import DirectAddress
from hisp.core import devca, mime
from hisp.core.agent import SecurityAgent, StaticAnchors
from hisp.core.certs import Certificate, Credential
from hisp.core.discovery import DiscoveryResult, Outcome, Tier, TierStatus
from hisp.core.policy import RevocationMode
from hisp.core.trust import StoreTrust, TrustAnchor, TrustStore
from hisp.errors import DecryptionError, TrustError
from hisp.testing.bind import BindServer, start_named
from hisp.testing.http import LoopbackHTTPServer, serve_http
from hisp.testing.pki import plain_message
from hisp.testing.process import refused_port
from hisp.testing.slapd import SlapdServer, start_slapd

pytestmark = pytest.mark.timeout(120)

CASES_XML = FIXTURES / "dcdt" / "spring-core-testcases-discovery.xml"
ZONE = "dcdt.example"
SUFFIX = "ou=dcdt"
ROOT = "dcdt_ca_root"
INTERMEDIATE = "dcdt_ca_intermediate1"
SENDER = "sut@direct.hisp.example"


def domain(n: int) -> str:
    return f"domain{n}.{ZONE}"


# -- what the case XML does not hold: conformance.md sections 1.2 and 1.3 --------------------------------------


@dataclass(frozen=True)
class Expected:
    """The recipient of a case (its mail mapping lives in DCDT's instance files), how discovery must end,
    which tier decides (section 1.3), and the queries it needs (``DiscoveryResult.queries``: no needless one).

    Query arithmetic: a CERT answer holding a certificate exceeds 512 bytes, so 2 messages (UDP truncated,
    TCP); NXDOMAIN, NODATA and SRV answers 1; an LDAP server not yet contacted in the lookup costs an A query
    for its host name (once per name: LDAP1-3 share ``ldap.<dcdt>``) plus bind and rootDSE, then 1 per search;
    a refused connection 1.
    """

    local: str
    domain: int
    outcome: Outcome
    tier: Tier | None
    queries: int


EXPECTED = {
    "D1": Expected("d1", 1, Outcome.FOUND, Tier.DNS_ADDRESS, 2),
    "D2": Expected("d2", 1, Outcome.FOUND, Tier.DNS_DOMAIN, 1 + 2),
    "D3": Expected("d3", 2, Outcome.FOUND, Tier.LDAP_ADDRESS, 1 + 1 + 1 + 4),
    # LDAP1 and LDAP2 (address), then LDAP1 again (domain): its connection is reused
    "D4": Expected("d4", 2, Outcome.FOUND, Tier.LDAP_DOMAIN, 1 + 1 + 1 + 4 + 3 + 1),
    "D5": Expected("d5", 1, Outcome.NOT_FOUND, Tier.DNS_ADDRESS, 2),  # never the valid D2_valB of domain1
    "D6": Expected("d6", 4, Outcome.NOT_FOUND, Tier.DNS_DOMAIN, 1 + 2),
    "D7": Expected("d7", 2, Outcome.NOT_FOUND, Tier.LDAP_ADDRESS, 1 + 1 + 1 + 4),  # never LDAP1's valid D4_valD
    "D8": Expected("d8", 5, Outcome.NOT_FOUND, Tier.LDAP_DOMAIN, 1 + 1 + 1 + 4 + 3 + 1),
    "D9": Expected("d9", 1, Outcome.FOUND, Tier.DNS_ADDRESS, 2),
    # ldap-unavailable (its A query, the refused connect), then LDAP2 on the host name ldap
    "D10": Expected("d10", 3, Outcome.FOUND, Tier.LDAP_ADDRESS, 1 + 1 + 1 + (1 + 1) + 4),
    "D11": Expected("d11", 6, Outcome.NOT_FOUND, None, 1 + 1 + 1),
    # the only LDAP server is down: transient (retry later), never "found" and never a send
    "D12": Expected("d12", 7, Outcome.UNAVAILABLE, Tier.LDAP_ADDRESS, 1 + 1 + 1 + (1 + 1)),
    "D13": Expected("d13", 8, Outcome.NOT_FOUND, None, 1 + 1 + 1 + 4 + 1),
    "D14": Expected("d14", 1, Outcome.FOUND, Tier.DNS_ADDRESS, 2),
    "D15": Expected("d15", 2, Outcome.FOUND, Tier.LDAP_ADDRESS, 1 + 1 + 1 + 4),
    "D16": Expected("d16", 5, Outcome.FOUND, Tier.LDAP_ADDRESS, 1 + 1 + 1 + 4),
    "D17": Expected("d17", 9, Outcome.FOUND, Tier.DNS_ADDRESS, 2),
    "D18": Expected("d18", 10, Outcome.FOUND, Tier.DNS_ADDRESS, 2),
}

#: ``_ldap._tcp.domainN`` SRV records: (priority, weight, server); DEAD is ``ldap-unavailable`` (section 1.2).
SRV = {
    1: [(0, 0, "LDAP1")],
    2: [(0, 0, "LDAP1"), (1, 0, "LDAP2")],
    3: [(0, 0, "DEAD"), (1, 0, "LDAP2")],
    4: [(0, 0, "LDAP1")],
    5: [(0, 0, "LDAP1"), (0, 100, "LDAP3")],
    7: [(0, 0, "DEAD")],
    8: [(0, 0, "LDAP1")],
}
LDAP_SERVERS = ("LDAP1", "LDAP2", "LDAP3")


# -- the canonical case definitions ----------------------------------------------------------------------------

_BEANS = "{http://www.springframework.org/schema/beans}"
_P = "{http://www.springframework.org/schema/p}"
_LOCATION = re.compile(r"^discoveryTestcaseCredLoc(\d+)(Dns|Ldap[123])$")


@dataclass(frozen=True)
class DcdtCredential:
    """One credential of a case, as DCDT defines it.

    :ivar role: ``target``, ``target-invalid``, ``background`` or ``background-invalid``.
    :ivar store: ``DNS``, ``LDAP1``, ``LDAP2`` or ``LDAP3``.
    """

    case: str
    name: str
    binding: str  # ADDRESS or DOMAIN
    role: str
    expired: bool
    revoked: bool
    intermediate: bool
    domain: int
    store: str


@dataclass(frozen=True)
class DcdtCase:
    id: str
    name: str
    negative: bool
    address: str
    expected: Expected
    credentials: tuple[DcdtCredential, ...]

    @property
    def target(self) -> DcdtCredential | None:
        """The certificate the system under test must encrypt to (None for a negative case)."""
        targets = [c for c in self.credentials if c.role == "target"]
        assert len(targets) <= 1, targets
        return targets[0] if targets else None


_ROLES = {
    "discoveryTestcaseCredLeafTarget": "target",
    "discoveryTestcaseCredLeafTargetInvalid": "target-invalid",
    "discoveryTestcaseCredLeafBackground": "background",
    "discoveryTestcaseCredLeafBackgroundInvalid": "background-invalid",
}


def _child(bean: ET.Element, prop: str) -> ET.Element | None:
    return bean.find(f"{_BEANS}property[@name='{prop}']/{_BEANS}bean")


def load_cases() -> dict[str, DcdtCase]:
    """D1-D18 from DCDT's ``spring-core-testcases-discovery.xml`` (trusted fixture file)."""
    root = ET.parse(CASES_XML).getroot()
    cases: dict[str, DcdtCase] = {}
    for bean in root.findall(f"{_BEANS}bean"):
        name = bean.get(f"{_P}name") or ""
        match = re.match(r"^(D\d+)_", name)
        if not match:
            continue
        case_id = match.group(1)
        expected = EXPECTED[case_id]
        credentials: list[DcdtCredential] = []
        for cred in bean.findall(f"{_BEANS}property[@name='credentials']/{_BEANS}list/{_BEANS}bean"):
            descriptor = cred.find(f".//{_BEANS}property[@name='certificateDescriptor']/{_BEANS}bean")
            location = _child(cred, "location")
            assert descriptor is not None and location is not None, name
            where = _LOCATION.match(location.get("parent", ""))
            assert where is not None, location.get("parent")
            credentials.append(
                DcdtCredential(
                    case=case_id,
                    name=cred.get(f"{_P}name", ""),
                    binding=cred.get(f"{_P}bindingType", ""),
                    role=_ROLES[cred.get("parent", "")],
                    expired=descriptor.get("parent", "").endswith("Expired"),
                    revoked=_child(cred, "crlEntryConfig") is not None,
                    intermediate=cred.get(f"{_P}issuerCredential-ref") == "discoveryTestcaseCredCaIntermediate1",
                    domain=int(where.group(1)),
                    store=where.group(2).upper(),
                )
            )
        address = f"{expected.local}@{domain(expected.domain)}"
        cases[case_id] = DcdtCase(
            case_id, name, bean.get("parent") == "discoveryTestcaseNeg", address, expected, tuple(credentials)
        )
    return cases


CASES = load_cases()
CASE_IDS = [f"D{n}" for n in range(1, 19)]


def test_case_definitions_match_the_tables_of_section_1_3() -> None:
    """The parsed XML and the tables of conformance.md agree (guards the parser and the tables above)."""
    assert sorted(CASES, key=lambda c: int(c[1:])) == CASE_IDS
    for case in CASES.values():
        assert case.negative == (case.expected.outcome is not Outcome.FOUND), case.id
        assert (case.target is None) == case.negative, case.id
        for cred in case.credentials:
            assert cred.domain == case.expected.domain, cred  # every credential sits in the case's domain
            assert cred.binding in ("ADDRESS", "DOMAIN"), cred
    targets = {c.id: c.target.name for c in CASES.values() if c.target is not None}
    assert targets == {
        "D1": "D1_valA", "D2": "D2_valB", "D3": "D3_valC", "D4": "D4_valD", "D9": "D9_valA", "D10": "D10_valE",
        "D14": "D14_valA", "D15": "D15_valC", "D16": "D16_valC", "D17": "D17_valA", "D18": "D18_valA",
    }
    revoked = sorted(c.name for case in CASES.values() for c in case.credentials if c.revoked)
    assert revoked == ["D17_invB", "D17_invC"]
    assert [c.name for case in CASES.values() for c in case.credentials if c.intermediate] == ["D18_valA"]


# -- certificates (section 1.4) ---------------------------------------------------------------------------------


def _b64(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


@dataclass
class _Issuer:
    """A DCDT CA: its credential, its URLs on the loopback PKI server, its next serial and revoked entries."""

    issued: devca.Issued
    crl_url: str
    aia_url: str
    next_serial: int = 1
    revoked: list[Certificate] = field(default_factory=list)


#: D14: subject padding so that the CERT answer is far beyond 512 bytes (and beyond EDNS's usual 1232).
_D14_PADDING = tuple(
    f"DCDT D14 large certificate, TCP fallback required, padding {n:02d}".ljust(64, ".") for n in range(10)
)


def issue_leaf(issuer: _Issuer, cred: DcdtCredential, subject_of: str) -> devca.Issued:
    """A leaf to the DCDT profile (section 1.4).

    RSA-2048, SHA256withRSA, serials 1, 2, 3 ... per issuer, subject ``CN=<credential name>``, keyUsage
    digitalSignature + keyEncipherment (critical), basicConstraints CA:false (non-critical), SKI + AKI, SAN
    rfc822Name (address-bound) or dNSName (domain-bound), CRL DP and AIA caIssuers at the PKI server. Valid
    for 10 years from "now" (``AT``); "expired" ended a year ago. :func:`hisp.core.devca.issue_certificate`
    names the subject after the address and picks random serials, so DCDT's credential names (which make
    every wrong choice readable) and numbering need this builder.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attributes = [cx509.NameAttribute(NameOID.COMMON_NAME, cred.name)]
    if cred.case == "D14":
        attributes += [cx509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, text) for text in _D14_PADDING]
    if cred.expired:
        start, end = AT - timedelta(days=366), AT - timedelta(days=365)
    else:
        start, end = AT - timedelta(days=1), AT + timedelta(days=3650)
    san: cx509.GeneralName = (
        cx509.RFC822Name(subject_of) if cred.binding == "ADDRESS" else cx509.DNSName(subject_of)
    )
    ca = issuer.issued
    ski = ca.certificate.subject_key_identifier
    assert ski is not None
    builder = (
        cx509.CertificateBuilder()
        .subject_name(cx509.Name(attributes))
        .issuer_name(ca.certificate.x509.subject)
        .public_key(key.public_key())
        .serial_number(issuer.next_serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            cx509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(cx509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(cx509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(cx509.AuthorityKeyIdentifier(ski, None, None), critical=False)
        .add_extension(cx509.SubjectAlternativeName([san]), critical=False)
        .add_extension(
            cx509.CRLDistributionPoints(
                [cx509.DistributionPoint([cx509.UniformResourceIdentifier(issuer.crl_url)], None, None, None)]
            ),
            critical=False,
        )
        .add_extension(
            cx509.AuthorityInformationAccess(
                [cx509.AccessDescription(
                    AuthorityInformationAccessOID.CA_ISSUERS, cx509.UniformResourceIdentifier(issuer.aia_url)
                )]
            ),
            critical=False,
        )
    )
    issuer.next_serial += 1
    cert = Certificate.from_x509(builder.sign(ca.private_key, hashes.SHA256()))
    return devca.Issued(Credential(cert, key, (ca.certificate, *ca.credential.chain)))


def build_crl(issuer: _Issuer) -> bytes:
    """The issuer's CRL (section 1.4): SHA256withRSA, each entry reason keyCompromise, dated a year ago."""
    ca = issuer.issued
    builder = (
        cx509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.x509.subject)
        .last_update(AT - timedelta(hours=1))
        .next_update(AT + timedelta(days=7))
        .add_extension(cx509.CRLNumber(1), critical=False)
        .add_extension(
            cx509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()), critical=False
        )
    )
    for cert in issuer.revoked:
        builder = builder.add_revoked_certificate(
            cx509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(AT - timedelta(days=365))
            .add_extension(cx509.CRLReason(cx509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    crl = builder.sign(ca.private_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


# -- the world (section 1.2) ------------------------------------------------------------------------------------


@dataclass
class World:
    root: devca.Issued
    intermediate: devca.Issued
    issued: dict[str, devca.Issued]
    named: BindServer
    ldap: dict[str, SlapdServer]
    dead_port: int
    http: LoopbackHTTPServer
    trust: StoreTrust
    discovery: CertificateDiscovery
    sender: devca.Issued
    sender_ca: devca.Issued
    results: dict[str, DiscoveryResult] = field(default_factory=dict)

    def cert(self, name: str) -> Certificate:
        return self.issued[name].certificate

    def lookup(self, case: DcdtCase) -> DiscoveryResult:
        """The discovery result of ``case``: a real lookup, made once per module and shared by its tests."""
        if case.id not in self.results:
            self.results[case.id] = asyncio.run(self.discovery.lookup(case.address, at=AT))
        return self.results[case.id]


def _person(cn: str, mail: str, der: bytes) -> str:
    value = textwrap.fill(_b64(der), 76, subsequent_indent=" ")
    return (
        f"dn: cn={cn},{SUFFIX}\nobjectClass: inetOrgPerson\ncn: {cn}\nsn: {cn}\nmail: {mail}\n"
        f"userCertificate;binary:: {value}\n\n"
    )


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    started: list[SlapdServer] = []
    named: BindServer | None = None
    with serve_http() as pki_server:
        try:
            root = devca.create_ca(ROOT, at=AT - timedelta(days=2), days=3660)
            intermediate = devca.create_ca(INTERMEDIATE, at=AT - timedelta(days=2), days=3660, issuer=root)
            issuers = {
                ca: _Issuer(issued, pki_server.url(f"/{ca}.crl"), pki_server.url(f"/{ca}.der"))
                for ca, issued in ((ROOT, root), (INTERMEDIATE, intermediate))
            }
            issued: dict[str, devca.Issued] = {}
            cert_records: list[str] = []
            entries: dict[str, list[str]] = {server: [] for server in LDAP_SERVERS}
            for case in CASES.values():
                for cred in case.credentials:
                    subject_of = case.address if cred.binding == "ADDRESS" else domain(cred.domain)
                    issuer = issuers[INTERMEDIATE if cred.intermediate else ROOT]
                    leaf = issue_leaf(issuer, cred, subject_of)
                    issued[cred.name] = leaf
                    if cred.revoked:
                        issuer.revoked.append(leaf.certificate)
                    if cred.store == "DNS":
                        owner = DirectAddress.parse(subject_of).dns_name() if cred.binding == "ADDRESS" else (
                            domain(cred.domain) + "."
                        )
                        cert_records.append(f"{owner} IN CERT PKIX 0 0 {_b64(leaf.certificate.der)}\n")
                    else:
                        entries[cred.store].append(_person(cred.name, subject_of, leaf.certificate.der))
            for ca, issuer in issuers.items():
                pki_server.set_route(
                    f"/{ca}.crl", body=build_crl(issuer), headers={"Content-Type": "application/pkix-crl"}
                )
                pki_server.set_route(
                    f"/{ca}.der", body=issuer.issued.certificate.der, headers={"Content-Type": "application/pkix-cert"}
                )

            for label in LDAP_SERVERS:
                started.append(start_slapd(SUFFIX, ldif="".join(entries[label])))
            ldap = dict(zip(LDAP_SERVERS, started, strict=True))
            dead = refused_port()
            ports = {**{name: server.port for name, server in ldap.items()}, "DEAD": dead}
            hosts = {**dict.fromkeys(LDAP_SERVERS, f"ldap.{ZONE}."), "DEAD": f"ldap-unavailable.{ZONE}."}
            records = [
                "ldap IN A 127.0.0.1\n",
                "ldap-unavailable IN A 127.0.0.1\n",
                "pki IN A 127.0.0.1\n",
                "mail IN A 127.0.0.1\n",
                *(f"domain{n} IN MX 10 mail.{ZONE}.\n" for n in range(1, 11)),
                *(
                    f"_ldap._tcp.domain{n} IN SRV {priority} {weight} {ports[server]} {hosts[server]}\n"
                    for n, targets in SRV.items()
                    for priority, weight, server in targets
                ),
                *cert_records,
            ]
            named = start_named({ZONE: "".join(records)})

            fetcher = BoundedFetcherBackend(timeout=2.0, total_timeout=5.0, clock=lambda: AT)
            store = TrustStore(
                outgoing=(TrustAnchor(root.certificate, f"{ROOT}.der"),), revocation=RevocationMode.HARD
            )
            trust = StoreTrust(store, revocation=fetcher)
            dns = DnsClient(named.address, timeout=1.0, lifetime=3.0)
            discovery = CertificateDiscovery(
                dns=dns, trust=trust, ldap=LdapClient(dns, LdapSettings(connect_timeout=1.0, receive_timeout=2.0))
            )
            sender_ca = devca.create_ca("hisp SUT CA", at=AT - timedelta(days=1))
            sender = devca.issue_certificate(sender_ca, at=AT, address=SENDER)
            yield World(
                root, intermediate, issued, named, ldap, dead, pki_server, trust, discovery, sender, sender_ca
            )
        finally:
            if named is not None:
                named.stop()
            for server in started:
                server.stop()


# -- the cases --------------------------------------------------------------------------------------------------


def _names(world: World, certs: tuple[Certificate, ...]) -> list[str]:
    by_fingerprint = {i.certificate.fingerprint_sha256: name for name, i in world.issued.items()}
    return [by_fingerprint.get(c.fingerprint_sha256, c.subject) for c in certs]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_discovery_chooses_the_target(world: World, case_id: str) -> None:
    case = CASES[case_id]
    result = world.lookup(case)
    explain = result.explain()
    chosen = [c.fingerprint_sha256 for c in result.chosen]
    backgrounds = {world.cert(c.name).fingerprint_sha256: c.name for c in case.credentials if c.role != "target"}

    # never a background (or invalid target) credential: decrypting with one fails the DCDT case
    wrong = [backgrounds[f] for f in chosen if f in backgrounds]
    assert not wrong, f"{case.id}: chose background credential(s) {wrong}\n{explain}"
    if case.target is None:  # negative: any message sent fails the case
        assert result.chosen == (), f"{case.id} is negative but chose {_names(world, result.chosen)}\n{explain}"
    assert result.outcome is case.expected.outcome, explain
    if case.target is not None:
        target = world.cert(case.target.name)
        assert chosen == [target.fingerprint_sha256], (
            f"{case.id}: chose {_names(world, result.chosen)}, expected {case.target.name}\n{explain}"
        )
    assert result.deciding_tier is case.expected.tier, explain
    assert result.queries == case.expected.queries, f"{case.id}: {result.queries} queries\n{explain}"

    # precedence (section 1.6): no tier after the deciding one was consulted
    if case.expected.tier is not None:
        order = [t.tier for t in result.tiers]
        for later in result.tiers[order.index(case.expected.tier) + 1:]:
            assert later.status is TierStatus.NOT_QUERIED, f"{later.tier.value} consulted\n{explain}"
    # every credential of the case that discovery saw and refused was refused for the right reason
    names = {world.cert(c.name): c for c in case.credentials}
    for refused in (r for tier in result.tiers for r in tier.certificates if not r.chosen):
        cred = names.get(refused.certificate)
        if cred is not None and cred.expired:
            assert refused.reason.startswith("expired"), refused.reason
        elif cred is not None and cred.revoked:
            assert refused.reason.startswith("revoked"), refused.reason
    _case_specific(world, case, result)


def _case_specific(world: World, case: DcdtCase, result: DiscoveryResult) -> None:
    explain = result.explain()
    if case.id == "D2":
        # the domain-bound RRset holds two certificates, the expired D1_invB and the valid D2_valB
        report = result.tier(Tier.DNS_DOMAIN)
        assert report is not None
        assert sorted(_names(world, tuple(r.certificate for r in report.certificates))) == ["D1_invB", "D2_valB"]
    elif case.id in ("D5", "D7"):
        # an address-bound set without a valid certificate ends the search (CD-8)
        assert "later tiers are not consulted" in result.reason, explain
    elif case.id == "D10":
        ldap = result.tier(Tier.LDAP_ADDRESS)
        assert ldap is not None
        assert any(f"ldap-unavailable.{ZONE}.:{world.dead_port}" in e and "connect" in e for e in ldap.errors), explain
        assert any(f":{world.ldap['LDAP2'].port}" in q and "1 entries" in q for q in ldap.queries), explain
    elif case.id == "D12":
        ldap = result.tier(Tier.LDAP_ADDRESS)
        assert ldap is not None and ldap.status is TierStatus.FAILED, explain
        assert any(f"ldap-unavailable.{ZONE}.:{world.dead_port}" in e for e in ldap.errors), explain
    elif case.id == "D14":
        der = world.cert("D14_valA").der
        assert len(der) > 1232  # beyond 512 bytes and beyond the usual EDNS buffer
        owner = DirectAddress.parse(case.address).dns_name()
        for payload in (None, 1232):  # plain DNS (512 bytes) and EDNS0's usual buffer: both truncated
            udp = world.named.query(owner, "CERT", payload=payload)
            assert udp.flags & dns.flags.TC, f"BIND's UDP answer (payload {payload}) must be truncated"
        report = result.tier(Tier.DNS_ADDRESS)
        assert report is not None and report.queries[0].endswith("(answer, tcp)"), explain
    elif case.id == "D15":
        report = result.tier(Tier.LDAP_ADDRESS)
        assert report is not None
        assert all(f":{world.ldap['LDAP2'].port}" not in q for q in report.queries), explain  # LDAP1 answered
    elif case.id == "D16":
        report = result.tier(Tier.LDAP_ADDRESS)
        assert report is not None
        assert f":{world.ldap['LDAP3'].port}" in report.queries[1], explain  # the weight-100 server first
    elif case.id == "D17":
        report = result.tier(Tier.DNS_ADDRESS)
        assert report is not None
        refused = {_names(world, (r.certificate,))[0]: r.reason for r in report.certificates if not r.chosen}
        assert sorted(refused) == ["D17_invB", "D17_invC"], explain
        assert all(reason.startswith("revoked") for reason in refused.values()), refused
        assert any(r.path == f"/{ROOT}.crl" for r in world.http.requests)
    elif case.id == "D18":
        verdict = result.tier(Tier.DNS_ADDRESS).certificates[0].verdict  # type: ignore[union-attr]
        assert verdict is not None
        assert verdict.chain == (world.cert("D18_valA"), world.intermediate.certificate, world.root.certificate)
        assert any(r.path == f"/{INTERMEDIATE}.der" for r in world.http.requests)  # fetched through AIA


# -- what the agent does with it (section 1.1: DCDT decrypts with every credential of the case) ------------------


def _recipient_ids(sealed: bytes) -> list[tuple[bytes, int]]:
    envelope = cms.ContentInfo.load(mime.decode_body(mime.parse_entity(sealed)))
    ids = []
    for info in envelope["content"]["recipient_infos"]:
        rid = info.chosen["rid"].chosen
        ids.append((rid["issuer"].dump(), rid["serial_number"].native))
    return ids


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_agent_encrypts_only_to_the_target(world: World, case_id: str) -> None:
    case = CASES[case_id]
    result = world.lookup(case)
    agent = SecurityAgent()
    recipient = DirectAddress.parse(case.address)
    plain = plain_message(SENDER, case.address)
    if case.target is None:
        with pytest.raises(TrustError) as refused:
            agent.process_outgoing(
                plain, sender=[world.sender.credential], recipients={recipient: list(result.chosen)}, at=AT,
                trust=world.trust,
            )
        assert refused.value.reason == "no valid recipient"
        return
    sealed = agent.process_outgoing(
        plain, sender=[world.sender.credential], recipients={recipient: list(result.chosen)}, at=AT, trust=world.trust
    )
    target = world.issued[case.target.name]
    assert sealed.encrypted_to == (target.certificate,)
    issuer = cx509.Name.public_bytes(target.certificate.x509.issuer)
    assert _recipient_ids(sealed.message) == [(issuer, target.certificate.serial_number)]
    # DCDT's judgement: the target's key opens the message, no other credential of the case does
    signer_trust = StaticAnchors((world.sender_ca.certificate,))
    opened = agent.process_incoming(sealed.message, credentials=[target.credential], trust=signer_trust, at=AT)
    assert opened.message == plain
    for other in (c for c in case.credentials if c.role != "target"):
        with pytest.raises(DecryptionError):
            agent.process_incoming(
                sealed.message, credentials=[world.issued[other.name].credential], trust=signer_trust, at=AT
            )
