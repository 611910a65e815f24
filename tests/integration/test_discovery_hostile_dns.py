"""Certificate discovery through the real :class:`~hisp.adapters.dns.DnsClient` against a hostile DNS server.

BIND will not send what these tests need, so the server is :mod:`hisp.testing.hostile_dns` (UDP and TCP on one
loopback port, answers scripted per question): SERVFAIL (transient, DESIGN.md section 4), CERT RDATA too short
for its own header (malformed: permanent, and known at once, not after the resolver's lifetime), a 64 KB TXT
flood in the answer to a CERT question over UDP and over TCP (T11), and the AD bit on some answers and not on
others (DNSSEC required: the A/AAAA answer of an SRV target must be authenticated too). Each test asserts the
outcome, the queries the server saw, and a time bound well below the client's lifetime.
"""

from __future__ import annotations

import asyncio
import struct
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from conftest import AT

from hisp.adapters.discovery import CertificateDiscovery
from hisp.adapters.dns import DnsClient
from hisp.adapters.ldap import LdapClient, LdapSettings
from hisp.core.certs import Certificate
from hisp.core.discovery import DiscoveryResult, DnsStatus, Outcome, Tier, TierStatus
from hisp.errors import CertificateNotFound, DiscoveryUnavailable, InputError
from hisp.testing.fixtures import slapd_factory  # noqa: F401 - the fixture, by name
from hisp.testing.hostile_dns import (
    HostileDns,
    answer,
    malformed_cert,
    run_hostile_dns,
    servfail,
    truncated,
    txt_flood,
)
from hisp.testing.pki import TestPKI
from hisp.testing.process import refused_port
from hisp.testing.slapd import SlapdFactory

pytestmark = pytest.mark.timeout(60)

DOMAIN = "hostile.example"
ADDRESS = f"d1@{DOMAIN}"
AB = f"d1.{DOMAIN}."
DB = f"{DOMAIN}."
SRV = f"_ldap._tcp.{DOMAIN}."
LDAP_HOST = f"ldap.{DOMAIN}."
#: The client's lifetime per query (seconds): every bounded outcome below must come well before it.
LIFETIME = 5.0
#: Seconds a bounded outcome may take: half the lifetime (a client that waits the lifetime out fails; a loaded
#: CI machine still passes).
BOUND = LIFETIME / 2

Reply = Callable[[dns.message.Message, str], bytes | None]


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(at=AT, name="Hostile DNS Test CA")


def cert_rrset(name: str, *certs: Certificate, ttl: int = 300) -> dns.rrset.RRset:
    import base64

    return dns.rrset.from_text(
        name, ttl, "IN", "CERT", *(f"PKIX 0 0 {base64.b64encode(c.der).decode()}" for c in certs)
    )


def nxdomain(query: dns.message.Message, *, authenticated: bool = False) -> bytes:
    return answer(query, rcode=dns.rcode.NXDOMAIN, authenticated=authenticated)


def scripted(rules: Mapping[tuple[str, str], Reply], *, authenticated: bool = False) -> Reply:
    """Answer (name, type) by its rule; anything else NXDOMAIN (with AD when ``authenticated``)."""

    def handler(query: dns.message.Message, transport: str) -> bytes | None:
        question = query.question[0]
        rule = rules.get((question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)))
        if rule is None:
            return nxdomain(query, authenticated=authenticated)
        return rule(query, transport)

    return handler


def client(server: HostileDns, **options: object) -> DnsClient:
    return DnsClient(server.address, timeout=1.0, lifetime=LIFETIME, **options)  # type: ignore[arg-type]


def discovery(server: HostileDns, pki: TestPKI, **options: object) -> CertificateDiscovery:
    dns = client(server, **options)
    ldap = LdapClient(dns, LdapSettings(connect_timeout=1.0, receive_timeout=1.0))
    return CertificateDiscovery(dns=dns, ldap=ldap, trust=pki.anchors)


def timed(coroutine: object) -> tuple[float, object]:
    started = time.monotonic()
    try:
        value: object = asyncio.run(coroutine)  # type: ignore[arg-type]
    except Exception as exc:  # the caller asserts on it
        value = exc
    return time.monotonic() - started, value


# -- SERVFAIL: transient ---------------------------------------------------------------------------------


def test_servfail_through_the_real_client_is_transient(pki: TestPKI) -> None:
    with run_hostile_dns(servfail) as server:
        elapsed, error = timed(client(server).cert(AB))
        assert isinstance(error, DiscoveryUnavailable) and "SERVFAIL" in error.message
        elapsed, raised = timed(discovery(server, pki).discover(ADDRESS, at=AT))
    assert elapsed < BOUND
    assert isinstance(raised, DiscoveryUnavailable)
    result: DiscoveryResult = raised.context["result"]
    assert result.outcome is Outcome.UNAVAILABLE and result.ttl == 0 and result.deciding_tier is Tier.DNS_ADDRESS
    assert "retry later" in result.reason
    assert result.tier(Tier.DNS_DOMAIN).status is TierStatus.NOT_QUERIED  # type: ignore[union-attr]
    assert [(q.transport, q.name, q.rdtype) for q in server.queries] == [("udp", AB, "CERT")] * 2


def test_servfail_on_the_srv_query_is_transient(pki: TestPKI) -> None:
    with run_hostile_dns(scripted({(SRV, "SRV"): servfail})) as server:
        elapsed, raised = timed(discovery(server, pki).discover(ADDRESS, at=AT))
    assert elapsed < BOUND and isinstance(raised, DiscoveryUnavailable)
    assert raised.context["result"].deciding_tier is Tier.LDAP_ADDRESS
    assert [q.rdtype for q in server.queries] == ["CERT", "CERT", "SRV"]


# -- malformed CERT RDATA: permanent, and known at once ---------------------------------------------------


def test_malformed_cert_rdata_is_permanent_within_milliseconds(pki: TestPKI) -> None:
    """3 bytes of CERT RDATA (the header alone is 5): no DNS library parses the message.

    The adapter documents a malformed answer as permanent (InputError); it must also end that way, after one
    TCP retry (a UDP datagram that does not parse could be anyone's), not as "unavailable" after the lifetime.
    """
    with run_hostile_dns(malformed_cert) as server:
        elapsed, error = timed(client(server).cert(AB))
        assert elapsed < BOUND, f"took {elapsed:.2f} s: waited for the resolver's lifetime"
        assert isinstance(error, InputError) and "malformed answer" in error.message
        assert error.context["messages"] == 2
        assert [q.transport for q in server.queries] == ["udp", "tcp"]
        elapsed, raised = timed(discovery(server, pki).discover(ADDRESS, at=AT))
    assert elapsed < BOUND
    assert isinstance(raised, CertificateNotFound)
    result: DiscoveryResult = raised.context["result"]
    assert result.outcome is Outcome.NOT_FOUND and result.deciding_tier is Tier.DNS_ADDRESS
    assert "malformed answer" in result.reason and "later tiers are not consulted" in result.reason
    assert result.tier(Tier.DNS_DOMAIN).status is TierStatus.NOT_QUERIED  # type: ignore[union-attr]
    assert result.queries == 2 and result.ttl > 0  # permanent: cached for the negative TTL


def test_a_malformed_udp_datagram_does_not_override_the_tcp_answer(pki: TestPKI) -> None:
    """Garbage on UDP (as an off-path sender could inject), a good answer on TCP: the TCP answer is used."""
    good = pki.user(ADDRESS).certificate

    def reply(query: dns.message.Message, transport: str) -> bytes:
        if transport == "udp":
            return malformed_cert(query)
        return answer(query, answers=[cert_rrset(AB, good)])

    with run_hostile_dns(scripted({(AB, "CERT"): reply})) as server:
        elapsed, result = timed(discovery(server, pki).lookup(ADDRESS, at=AT))
    assert elapsed < BOUND
    assert isinstance(result, DiscoveryResult)
    assert result.chosen == (good,) and result.deciding_tier is Tier.DNS_ADDRESS
    assert result.tier(Tier.DNS_ADDRESS).queries == (f"CERT {AB} (answer, tcp)",)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("rdata", "defect"),
    [
        (struct.pack("!HHB", 1, 0, 0), "empty certificate field"),
        (struct.pack("!HHB", 1, 7, 8) + b"\x30\x82\x01\x00garbage", "not X.509"),
        (struct.pack("!HHB", 4, 0, 0) + b"ftp://x.example/c.der", "not an http(s) URL"),
    ],
    ids=["pkix-empty", "pkix-garbage", "ipkix-not-http"],
)
def test_cert_rdata_that_parses_but_holds_no_certificate_is_a_defect(pki: TestPKI, rdata: bytes, defect: str) -> None:
    domain_cert = pki.domain(DOMAIN).certificate

    def bad(query: dns.message.Message, transport: str) -> bytes:
        return malformed_cert(query, rdata=rdata)

    def domain_bound(query: dns.message.Message, transport: str) -> bytes:
        return answer(query, answers=[cert_rrset(DB, domain_cert)])

    with run_hostile_dns(scripted({(AB, "CERT"): bad, (DB, "CERT"): domain_bound})) as server:
        elapsed, result = timed(discovery(server, pki).lookup(ADDRESS, at=AT))
    assert elapsed < BOUND and isinstance(result, DiscoveryResult)
    (record,) = result.tier(Tier.DNS_ADDRESS).records  # type: ignore[union-attr]
    assert record.defect is not None and defect in record.defect
    assert result.chosen == (domain_cert,) and result.deciding_tier is Tier.DNS_DOMAIN


# -- a 64 KB TXT flood reaching the client (T11) ---------------------------------------------------------


@dataclass(frozen=True)
class Flood:
    reply: Callable[[dns.message.Message, str, Certificate], bytes]
    transports: tuple[str, ...]
    found: bool


def _flood_udp(query: dns.message.Message, transport: str, cert: Certificate) -> bytes:
    # the flood in the ANSWER section of the CERT question, sent over UDP whatever the client's payload size
    return answer(query, answers=[txt_flood(AB)])


def _flood_tcp(query: dns.message.Message, transport: str, cert: Certificate) -> bytes:
    return truncated(query) if transport == "udp" else answer(query, answers=[txt_flood(AB)])


def _flood_beside_a_cert(query: dns.message.Message, transport: str, cert: Certificate) -> bytes:
    flood = txt_flood(AB, 60 * 1024)
    return answer(query, answers=[cert_rrset(AB, cert), flood], additional=[txt_flood(f"junk.{DOMAIN}.", 2048)])


FLOODS = {
    "udp-answer": Flood(_flood_udp, ("udp",), False),
    "tc-then-tcp-answer": Flood(_flood_tcp, ("udp", "tcp"), False),
    "beside-a-cert-record": Flood(_flood_beside_a_cert, ("udp",), True),
}


@pytest.mark.parametrize("flood", list(FLOODS.values()), ids=list(FLOODS))
def test_64k_txt_flood_ends_in_a_clear_bounded_result(pki: TestPKI, flood: Flood) -> None:
    cert = pki.user(ADDRESS).certificate
    with run_hostile_dns(scripted({(AB, "CERT"): lambda q, t: flood.reply(q, t, cert)})) as server:
        elapsed, result = timed(discovery(server, pki).lookup(ADDRESS, at=AT))
        sent = list(server.sent)
    assert elapsed < BOUND, f"took {elapsed:.2f} s"
    assert isinstance(result, DiscoveryResult), result
    assert sent[len(flood.transports) - 1] > 60_000  # the flood did reach the client, in one message
    tier = result.tier(Tier.DNS_ADDRESS)
    assert tier is not None
    assert [q.transport for q in server.queries[: len(flood.transports)]] == list(flood.transports)
    if flood.found:
        # only the CERT RRset of the question is read; the TXT records are never decoded or reported
        assert result.chosen == (cert,) and len(tier.records) == 1
    else:
        # a CERT question answered with TXT only is NODATA for CERT: the next tier is asked, nothing else
        assert tier.status is TierStatus.EMPTY and tier.records == ()
        assert tier.queries[0].startswith(f"CERT {AB} ({DnsStatus.NODATA.value}")
        assert result.outcome is Outcome.NOT_FOUND and result.chosen == ()
        assert [q.rdtype for q in server.queries[len(flood.transports):]] == ["CERT", "SRV"]
    assert len(result.to_json()) < 20_000  # the result stays small


# -- DNSSEC required: every answer used must carry AD, SRV targets' addresses included ---------------------


def _ldif(dn: str, mail: str, cert: Certificate) -> str:
    import base64

    value = textwrap.fill(base64.b64encode(cert.der).decode(), 76, subsequent_indent=" ")
    return (
        f"dn: {dn}\nobjectClass: inetOrgPerson\ncn: x\nsn: x\nmail: {mail}\n"
        f"userCertificate;binary:: {value}\n\n"
    )


def _ldap_world(port: int, *, a_authenticated: bool) -> Reply:
    def srv(query: dns.message.Message, transport: str) -> bytes:
        record = dns.rrset.from_text(SRV, 300, "IN", "SRV", f"0 0 {port} {LDAP_HOST}")
        return answer(query, answers=[record], authenticated=True)

    def address(query: dns.message.Message, transport: str) -> bytes:
        record = dns.rrset.from_text(LDAP_HOST, 300, "IN", "A", "127.0.0.1")
        return answer(query, answers=[record], authenticated=a_authenticated)

    return scripted({(SRV, "SRV"): srv, (LDAP_HOST, "A"): address}, authenticated=True)


def test_dnssec_required_refuses_an_unauthenticated_address_for_the_srv_target(pki: TestPKI) -> None:
    """CERT NXDOMAIN and SRV with AD, the target's A record without: the LDAP server is never contacted."""
    with run_hostile_dns(_ldap_world(refused_port(), a_authenticated=False)) as server:
        elapsed, error = timed(client(server, require_dnssec=True).addresses(LDAP_HOST))
        assert isinstance(error, InputError) and "DNSSEC required" in error.message
        assert error.context["dnssec"] is True
        elapsed, result = timed(discovery(server, pki, require_dnssec=True).lookup(ADDRESS, at=AT))
    assert elapsed < BOUND and isinstance(result, DiscoveryResult)
    assert result.outcome is Outcome.UNAVAILABLE and result.chosen == ()
    errors = " ".join(result.tier(Tier.LDAP_ADDRESS).errors)  # type: ignore[union-attr]
    assert f"{LDAP_HOST}: DNSSEC required: the A answer is not authenticated" in errors
    assert "resolve" in " ".join(result.tier(Tier.LDAP_ADDRESS).queries)  # type: ignore[union-attr]


def test_dnssec_required_accepts_authenticated_answers_down_to_the_ldap_server(
    pki: TestPKI, slapd_factory: SlapdFactory  # noqa: F811 - the fixture
) -> None:
    cert = pki.user(ADDRESS).certificate
    directory = slapd_factory("ou=dcdt", ldif=_ldif("cn=d1,ou=dcdt", ADDRESS, cert))
    with run_hostile_dns(_ldap_world(directory.port, a_authenticated=True)) as server:
        _, result = timed(discovery(server, pki, require_dnssec=True).lookup(ADDRESS, at=AT))
    assert isinstance(result, DiscoveryResult), result
    assert result.chosen == (cert,) and result.deciding_tier is Tier.LDAP_ADDRESS
    assert result.dnssec_required and result.authenticated is True
    # without the requirement the same unauthenticated A answer is used (the check is DNSSEC's, nothing else)
    with run_hostile_dns(_ldap_world(directory.port, a_authenticated=False)) as server:
        _, plain = timed(discovery(server, pki).lookup(ADDRESS, at=AT))
    assert isinstance(plain, DiscoveryResult) and plain.chosen == (cert,)
