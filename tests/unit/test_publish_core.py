"""The publishing core: zones, answers to queries, zone file and LDIF text (CD-3, CD-11; RFC 1035, 2308, 4398, 2849)."""

from __future__ import annotations

import base64

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
from conftest import AT

from hisp.addresses import DirectAddress, HealthDomain
from hisp.core.publish import (
    DomainPublication,
    Outcome,
    PublishedCertificate,
    PublishedRecord,
    Zones,
    ZoneSettings,
    build_zones,
    cert_rdata,
    ldif,
    zone_file,
)
from hisp.errors import ConfigError
from hisp.testing.pki import TestPKI

DOMAIN = HealthDomain.parse("hosted.example")
SETTINGS = ZoneSettings(("ns1.hosted.example.",), ttl=300, negative_ttl=60, serial=9)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(AT)


@pytest.fixture(scope="module")
def publication(pki: TestPKI) -> DomainPublication:
    first_last = DirectAddress.parse("first.last@hosted.example")
    plus = DirectAddress.parse("a+b@hosted.example")
    return DomainPublication(
        DOMAIN,
        (
            PublishedCertificate(pki.user("first.last@hosted.example").certificate, DOMAIN, first_last, True, True),
            PublishedCertificate(pki.user("a+b@hosted.example").certificate, DOMAIN, plus, False, True),
            PublishedCertificate(pki.domain("hosted.example").certificate, DOMAIN, None, True, True),
        ),
        (PublishedRecord("_ldap._tcp.hosted.example.", "SRV", "0 100 389 ldap.hosted.example.", 600),),
    )


@pytest.fixture(scope="module")
def zones(publication: DomainPublication) -> Zones:
    return build_zones([publication], SETTINGS)


def _ask(zones: Zones, name: str, rdtype: str = "CERT", *, tcp: bool = False, **options: object) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **options)  # type: ignore[arg-type]
    reply = zones.answer(query.to_wire(), tcp=tcp)
    assert reply.wire is not None
    return dns.message.from_wire(reply.wire)


def test_cert_rdata_is_pkix_with_zero_tag_and_algorithm(pki: TestPKI) -> None:
    certificate = pki.user("x@hosted.example").certificate
    rdata = cert_rdata(certificate)
    assert (rdata.certificate_type, rdata.key_tag, rdata.algorithm) == (1, 0, 0)
    assert rdata.to_wire()[:5] == b"\x00\x01\x00\x00\x00" and rdata.to_wire()[5:] == certificate.der


def test_answers(zones: Zones, publication: DomainPublication) -> None:
    # CD-3: first.last@ -> first.last.hosted.example. (dots not escaped)
    response = _ask(zones, "first.last.hosted.example", tcp=True)
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert bytes(response.answer[0][0].certificate) == publication.certificates[0].certificate.der
    assert response.answer[0].ttl == 300
    # the empty non-terminal last.hosted.example exists: NODATA, not NXDOMAIN (RFC 8020)
    nodata = _ask(zones, "last.hosted.example")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA and nodata.authority[0].ttl == 60  # RFC 2308 section 3
    missing = _ask(zones, "nobody.hosted.example")
    assert missing.rcode() == dns.rcode.NXDOMAIN and missing.flags & dns.flags.AA and missing.authority
    assert _ask(zones, "a+b.hosted.example").rcode() == dns.rcode.NXDOMAIN  # published in LDAP only
    assert _ask(zones, "_ldap._tcp.hosted.example", "SRV").answer[0].ttl == 600
    every = _ask(zones, "hosted.example", "ANY", tcp=True)
    assert {r.rdtype for r in every.answer} == {dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.CERT}
    assert _ask(zones, "other.example", "A").rcode() == dns.rcode.REFUSED
    assert not _ask(zones, "other.example", "A").flags & dns.flags.AA


def test_truncation_follows_512_bytes_and_edns(zones: Zones) -> None:
    plain = _ask(zones, "hosted.example")  # one certificate, about 850 bytes: over 512
    assert plain.flags & dns.flags.TC and not plain.answer
    edns = _ask(zones, "hosted.example", use_edns=0, payload=1232)
    assert not edns.flags & dns.flags.TC and edns.answer and edns.payload == 1232
    small = _ask(zones, "hosted.example", use_edns=0, payload=100)  # below 512 counts as 512 (RFC 6891 6.2.5)
    assert small.flags & dns.flags.TC
    assert not _ask(zones, "hosted.example", tcp=True).flags & dns.flags.TC


@pytest.mark.parametrize(
    ("change", "rcode", "outcome"),
    [
        (lambda q: q.set_opcode(dns.opcode.UPDATE), dns.rcode.NOTIMP, Outcome.NOTIMP),
        (lambda q: q.set_opcode(dns.opcode.NOTIFY), dns.rcode.NOTIMP, Outcome.NOTIMP),
        (lambda q: q.question.append(q.question[0]), dns.rcode.FORMERR, Outcome.FORMERR),
        (lambda q: q.question.clear(), dns.rcode.FORMERR, Outcome.FORMERR),
        (lambda q: q.use_edns(1), dns.rcode.BADVERS, Outcome.BADVERS),
    ],
    ids=["update", "notify", "two-questions", "no-question", "edns-version-1"],
)
def test_refusals(zones: Zones, change: object, rcode: dns.rcode.Rcode, outcome: Outcome) -> None:
    query = dns.message.make_query("hosted.example", "SOA")
    change(query)  # type: ignore[operator]
    reply = zones.answer(query.to_wire())
    assert reply.outcome is outcome and reply.wire is not None
    assert dns.message.from_wire(reply.wire).rcode() == rcode


@pytest.mark.parametrize(("rdtype", "rdclass"), [("AXFR", "IN"), ("IXFR", "IN"), ("TXT", "CH")], ids=str)
def test_transfers_and_other_classes_are_refused(zones: Zones, rdtype: str, rdclass: str) -> None:
    query = dns.message.make_query("hosted.example", rdtype, rdclass)
    reply = zones.answer(query.to_wire(), tcp=True)
    assert reply.outcome is Outcome.REFUSED


@pytest.mark.parametrize(
    "wire",
    [b"", b"\x00" * 11, b"\xff" * 12, b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\x3fabc", b"x" * 5000],
    ids=["empty", "short", "garbage", "truncated-name", "oversized"],
)
def test_malformed_queries_are_dropped(zones: Zones, wire: bytes) -> None:
    assert zones.answer(wire).outcome is Outcome.DROPPED and zones.answer(wire).wire is None


def test_responses_and_trailing_bytes_are_dropped(zones: Zones) -> None:
    query = dns.message.make_query("hosted.example", "SOA")
    assert zones.answer(dns.message.make_response(query).to_wire()).outcome is Outcome.DROPPED
    assert zones.answer(query.to_wire() + b"\x00").outcome is Outcome.DROPPED


def test_zone_file_parses_back_to_the_same_records(zones: Zones) -> None:
    text = zone_file(zones)
    parsed = dns.zone.from_text(text, origin="hosted.example.", relativize=False)
    (zone,) = list(zones)
    for rrset in zone.rrsets():
        again = parsed.get_rdataset(rrset.name, rrset.rdtype)
        assert again is not None and set(again) == set(rrset) and again.ttl == rrset.ttl
    assert "IN CERT PKIX 0 0 (" in text


def test_ldif_entries(publication: DomainPublication) -> None:
    text = ldif([publication], "ou=dcdt")
    assert text.startswith("version: 1\n")
    assert all(len(line) <= 76 for line in text.splitlines())  # RFC 2849 folding
    assert "dn: cn=a\\+b@hosted.example,ou=dcdt\n" in text  # RFC 4514 escaping
    assert "mail: hosted.example\n" in text and "mail: first.last@hosted.example\n" in text
    unfolded = text.replace("\n ", "")
    der = publication.certificates[2].certificate.der
    assert f"userCertificate;binary:: {base64.b64encode(der).decode()}\n" in unfolded
    with pytest.raises(ConfigError, match=r"ldap\.base"):
        ldif([publication], " ")


def test_build_errors(publication: DomainPublication) -> None:
    with pytest.raises(ConfigError, match=r"dns\.nameservers"):
        build_zones([publication], ZoneSettings(()))
    with pytest.raises(ConfigError, match="published twice"):
        build_zones([publication, publication], SETTINGS)
    outside = DomainPublication(DOMAIN, (), (PublishedRecord("x.other.example.", "A", "192.0.2.1", 60),))
    with pytest.raises(ConfigError, match="outside the zone"):
        build_zones([outside], SETTINGS)
    bad = DomainPublication(DOMAIN, (), (PublishedRecord("x.hosted.example.", "A", "not-an-ip", 60),))
    with pytest.raises(ConfigError, match="not-an-ip"):
        build_zones([bad], SETTINGS)


def test_nested_domains_answer_from_the_longest_origin(pki: TestPKI) -> None:
    child = HealthDomain.parse("direct.hosted.example")
    zones = build_zones(
        [
            DomainPublication(DOMAIN),
            DomainPublication(child, (PublishedCertificate(pki.domain(str(child)).certificate, child),)),
        ],
        SETTINGS,
    )
    response = _ask(zones, "direct.hosted.example", tcp=True)
    assert response.answer and response.answer[0].rdtype == dns.rdatatype.CERT
    assert _ask(zones, "www.hosted.example").rcode() == dns.rcode.NXDOMAIN
    assert response.answer[0].rdclass == dns.rdataclass.IN
