"""Publishing our own certificates (CD-11, DCDT H1-H4): DNS zones, a BIND zone file, LDIF, and DNS answers.

Sans-I/O (DESIGN.md section 6, rule 1): the caller reads the configuration and the certificate files and
passes values; this module builds, for each hosted domain, an authoritative zone (SOA, NS, CERT records
for its address-bound and domain-bound certificates, and the A/AAAA/MX/SRV/TXT records of the
configuration), renders it as a BIND master file (:func:`zone_file`) or as LDIF entries (:func:`ldif`), and
answers one DNS query given as bytes (:meth:`Zones.answer`). The socket server is
:mod:`hisp.adapters.dns_server`.

CERT records (RFC 4398 section 2): type **PKIX (1)**, the certificate's DER in the certificate field, **key
tag 0 and algorithm 0**. RFC 4398 section 2.1 says algorithm 0 means the key's algorithm is unknown to
DNSSEC, which is the case for an X.509 certificate's key that is no DNSSEC key; the Direct RI publishes
algorithm 5 or 8 with a tag taken from the RSA modulus, but the RI, DCDT and our discovery all ignore both
fields on read (requirements 8.5), so the neutral values are published. Owner names (CD-3):
``user@example.org`` -> ``user.example.org.`` (dots in the local part are not escaped, as the RI and DCDT
do), a domain-bound certificate at ``example.org.``.

Answers (RFC 1035 sections 4.1 and 4.2, RFC 2308, RFC 6891):

- a query for a name in one of our zones (the longest matching origin wins) is answered authoritatively
  (AA): the RRset; NODATA (NOERROR, empty answer, SOA in authority) when the name exists, or is an empty
  non-terminal, without that type; NXDOMAIN with the SOA otherwise. The SOA's TTL in the authority section
  is min(SOA TTL, SOA minimum) (RFC 2308 section 3). ANY returns every RRset of the name. No additional
  section (minimal responses).
- over UDP an answer larger than 512 bytes, or than the client's EDNS0 payload size (capped at
  :data:`MAX_UDP_PAYLOAD`), is sent empty with the TC bit, so the client retries over TCP (RFC 1035 section
  4.2.1; RFC 2181 section 9); over TCP the whole answer (up to 65535 bytes).
- REFUSED for names outside our zones, for classes other than IN and for zone transfers (AXFR, IXFR: use
  ``hisp dns zone``); NOTIMP for opcodes other than QUERY (RFC 1035 section 4.1.1); FORMERR for a query with
  other than one question; BADVERS for EDNS versions above 0 (RFC 6891 section 6.1.3).
- malformed input (not a DNS message, a response, larger than :data:`MAX_QUERY_BYTES`, trailing bytes) is
  dropped: no answer, so a spoofed source gets nothing (outcome ``DROPPED``).
"""

from __future__ import annotations

import base64
import enum
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CERT
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.SOA
import dns.rrset

from hisp.addresses import DirectAddress, HealthDomain
from hisp.core.certs import CertBinding, Certificate
from hisp.errors import ConfigError

__all__ = [
    "CERT_PKIX",
    "MAX_QUERY_BYTES",
    "MAX_UDP_PAYLOAD",
    "DomainPublication",
    "Outcome",
    "PublishedCertificate",
    "PublishedRecord",
    "Reply",
    "Zone",
    "ZoneSettings",
    "Zones",
    "build_zones",
    "cert_rdata",
    "ldif",
    "zone_file",
]

#: CERT certificate type PKIX: an X.509 certificate, DER (RFC 4398 section 2.1).
CERT_PKIX = 1
#: Largest query accepted (bytes). Real queries are under 300 bytes (a name is at most 255, plus EDNS options);
#: anything larger is not a query we answer.
MAX_QUERY_BYTES = 4096
#: Largest UDP answer we send (bytes), whatever the client offers: 1232 avoids IP fragmentation
#: (DNS flag day 2020); larger answers go over TCP.
MAX_UDP_PAYLOAD = 1232
#: Largest TCP answer (bytes): the two-byte length prefix (RFC 1035 section 4.2.2).
MAX_TCP_PAYLOAD = 65535
#: SOA timers (seconds): refresh, retry, expire (RFC 1912 section 2.2 suggestions).
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 3600, 600, 1209600


@dataclass(frozen=True)
class PublishedCertificate:
    """One of our certificates to publish.

    :ivar certificate: the certificate.
    :ivar domain: its hosted domain.
    :ivar address: the address it is bound to, or None for domain-bound.
    :ivar in_dns: publish a CERT record.
    :ivar in_ldap: publish an LDAP entry.

    Spec: CD-3 (owner names), CD-11.
    """

    certificate: Certificate
    domain: HealthDomain
    address: DirectAddress | None = None
    in_dns: bool = True
    in_ldap: bool = False

    @property
    def binding(self) -> CertBinding:
        """Address-bound or domain-bound."""
        return CertBinding.ADDRESS if self.address is not None else CertBinding.DOMAIN

    @property
    def owner(self) -> str:
        """The address or the domain as text: the LDAP ``mail`` value."""
        return str(self.address) if self.address is not None else str(self.domain)

    def dns_name(self) -> dns.name.Name:
        """The absolute owner name of the CERT record (CD-3)."""
        return dns.name.from_text(self.address.dns_name() if self.address else self.domain.dns_name())


@dataclass(frozen=True)
class PublishedRecord:
    """A configured DNS record: absolute owner name, type, master-file RDATA with absolute names, TTL (s).

    Spec: RFC 1035 section 5.1 (RDATA text); RFC 2782 (SRV).
    """

    name: str
    type: str
    value: str
    ttl: int


@dataclass(frozen=True)
class DomainPublication:
    """What one hosted domain publishes: its certificates and more records.

    Spec: CD-11.
    """

    domain: HealthDomain
    certificates: tuple[PublishedCertificate, ...] = ()
    records: tuple[PublishedRecord, ...] = ()


@dataclass(frozen=True)
class ZoneSettings:
    """The SOA and NS data and the TTLs of every zone.

    :ivar nameservers: absolute NS names; the first is the SOA MNAME. Must not be empty.
    :ivar ttl: TTL of generated records (seconds).
    :ivar negative_ttl: SOA minimum (seconds).
    :ivar serial: SOA serial.
    :ivar hostmaster: SOA RNAME (absolute), or None for ``hostmaster.<zone>.``.

    Spec: RFC 1035 section 3.3.13 (SOA); RFC 2308 section 4 (minimum = negative TTL).
    """

    nameservers: tuple[str, ...]
    ttl: int = 3600
    negative_ttl: int = 300
    serial: int = 1
    hostmaster: str | None = None


def cert_rdata(certificate: Certificate) -> dns.rdtypes.ANY.CERT.CERT:
    """The CERT RDATA for ``certificate``: type PKIX (1), key tag 0, algorithm 0, the DER.

    :param certificate: the certificate.
    :returns: the rdata.

    Spec: RFC 4398 section 2 (wire format) and 2.1 (type PKIX; algorithm 0); requirements 8.5.
    """
    return dns.rdtypes.ANY.CERT.CERT(dns.rdataclass.IN, dns.rdatatype.CERT, CERT_PKIX, 0, 0, certificate.der)


@dataclass
class Zone:
    """One authoritative zone: its origin, SOA and RRsets (built by :func:`build_zones`; not changed later).

    :ivar origin: the zone apex.
    :ivar nodes: owner name -> type -> RRset.
    :ivar nonterminals: names that own nothing but have names below them (answer NODATA, not NXDOMAIN).

    Spec: RFC 1034 section 4.3.2 (authoritative lookup); RFC 8020 (empty non-terminals exist).
    """

    origin: dns.name.Name
    nodes: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = field(default_factory=dict)
    nonterminals: set[dns.name.Name] = field(default_factory=set)

    @property
    def soa(self) -> dns.rrset.RRset:
        """The apex SOA RRset."""
        return self.nodes[self.origin][dns.rdatatype.SOA]

    def add(self, name: dns.name.Name, ttl: int, rdata: dns.rdata.Rdata) -> None:
        """Add one record (RRsets take the lowest TTL given: RFC 2181 section 5.2).

        :raises ConfigError: the name is outside the zone.
        """
        if not name.is_subdomain(self.origin):
            raise ConfigError(f"{name} is outside the zone {self.origin}")
        node = self.nodes.setdefault(name, {})
        rrset = node.get(rdata.rdtype)
        if rrset is None:
            rrset = node[rdata.rdtype] = dns.rrset.RRset(name, dns.rdataclass.IN, rdata.rdtype)
        rrset.add(rdata, ttl)
        parent = name
        while parent != self.origin:
            parent = parent.parent()
            self.nonterminals.add(parent)

    def rrsets(self) -> list[dns.rrset.RRset]:
        """Every RRset: SOA and NS first, then by owner name (canonical order) and type."""
        apex_first = [dns.rdatatype.SOA, dns.rdatatype.NS]
        ordered = [self.nodes[self.origin][t] for t in apex_first if t in self.nodes[self.origin]]
        for name in sorted(self.nodes):
            for rdtype in sorted(self.nodes[name]):
                if not (name == self.origin and rdtype in apex_first):
                    ordered.append(self.nodes[name][rdtype])
        return ordered


class Outcome(enum.Enum):
    """What became of one query (for counters and logs)."""

    ANSWERED = "answered"
    NODATA = "nodata"
    NXDOMAIN = "nxdomain"
    TRUNCATED = "truncated"
    REFUSED = "refused"
    NOTIMP = "notimp"
    FORMERR = "formerr"
    BADVERS = "badvers"
    DROPPED = "dropped"


@dataclass(frozen=True)
class Reply:
    """The reply to one query: the bytes to send (None: send nothing) and what happened.

    Spec: RFC 1035 section 4.1.
    """

    wire: bytes | None
    outcome: Outcome


class Zones:
    """The zones we are authoritative for, and the answer to one query.

    :param zones: the zones (distinct origins).

    Spec: RFC 1034 section 4.3.2; RFC 1035 sections 4.1-4.2; RFC 2308; RFC 6891.
    """

    def __init__(self, zones: Iterable[Zone]) -> None:
        self._zones = {zone.origin: zone for zone in zones}

    def __iter__(self) -> Iterator[Zone]:
        return iter(sorted(self._zones.values(), key=lambda z: z.origin))

    def __len__(self) -> int:
        return len(self._zones)

    def find(self, name: dns.name.Name) -> Zone | None:
        """The zone ``name`` belongs to (the longest matching origin), or None."""
        candidate = name
        while True:
            zone = self._zones.get(candidate)
            if zone is not None:
                return zone
            if candidate == dns.name.root or len(candidate) <= 1:
                return None
            candidate = candidate.parent()

    def answer(self, wire: bytes, *, tcp: bool = False) -> Reply:
        """Answer one query received as ``wire`` (UDP datagram, or TCP message without its length prefix).

        :param wire: the query bytes (untrusted).
        :param tcp: the query came over TCP: no 512-byte/EDNS0 limit, no truncation.
        :returns: the reply; ``wire`` is None when the query is dropped.

        Spec: RFC 1035 sections 4.1.1 (header, rcodes), 4.2.1 (UDP 512 bytes, TC), 4.2.2 (TCP); RFC 2308
        sections 2.1-2.2 and 3 (NXDOMAIN, NODATA, SOA TTL); RFC 6891 sections 6.1.3 and 6.2.5 (EDNS0
        version and payload size); RFC 2181 section 9 (TC).
        """
        if len(wire) < 12 or len(wire) > MAX_QUERY_BYTES or wire[2] & 0x80:  # short, huge, or QR set
            return Reply(None, Outcome.DROPPED)
        try:
            query = dns.message.from_wire(wire, ignore_trailing=False)
        except Exception:  # untrusted bytes: whatever dnspython raises, the query is dropped, never a crash
            return Reply(None, Outcome.DROPPED)
        if query.opcode() != dns.opcode.QUERY:
            return self._error(query, dns.rcode.NOTIMP, Outcome.NOTIMP, tcp)
        if len(query.question) != 1:
            return self._error(query, dns.rcode.FORMERR, Outcome.FORMERR, tcp)
        if query.edns > 0:
            return self._error(query, dns.rcode.BADVERS, Outcome.BADVERS, tcp)
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN or question.rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            return self._error(query, dns.rcode.REFUSED, Outcome.REFUSED, tcp)
        zone = self.find(question.name)
        if zone is None:
            return self._error(query, dns.rcode.REFUSED, Outcome.REFUSED, tcp)
        response = dns.message.make_response(query, our_payload=MAX_UDP_PAYLOAD)
        response.flags |= dns.flags.AA
        node = zone.nodes.get(question.name)
        if node and question.rdtype == dns.rdatatype.ANY:
            response.answer = [node[t].copy() for t in sorted(node)]
        elif node and question.rdtype in node:
            response.answer = [node[question.rdtype].copy()]
        if response.answer:
            outcome = Outcome.ANSWERED
        else:
            exists = node is not None or question.name in zone.nonterminals
            if not exists:
                response.set_rcode(dns.rcode.NXDOMAIN)
            soa = zone.soa.copy()
            soa.ttl = min(soa.ttl, soa[0].minimum)
            response.authority = [soa]
            outcome = Outcome.NODATA if exists else Outcome.NXDOMAIN
        return self._render(query, response, outcome, tcp)

    def _error(self, query: dns.message.Message, rcode: dns.rcode.Rcode, outcome: Outcome, tcp: bool) -> Reply:
        response = dns.message.make_response(query, our_payload=MAX_UDP_PAYLOAD)
        response.question = response.question[:1] if rcode != dns.rcode.FORMERR else []
        response.set_rcode(rcode)
        return self._render(query, response, outcome, tcp)

    @staticmethod
    def _render(query: dns.message.Message, response: dns.message.Message, outcome: Outcome, tcp: bool) -> Reply:
        if tcp:
            limit = MAX_TCP_PAYLOAD
        elif query.edns >= 0:
            limit = max(512, min(query.payload, MAX_UDP_PAYLOAD))
        else:
            limit = 512
        try:
            return Reply(response.to_wire(max_size=limit), outcome)
        except dns.exception.TooBig:
            pass
        # RFC 2181 section 9: the RRset does not fit, so send none of it and set TC; the client asks over TCP
        response.answer, response.authority, response.additional = [], [], []
        response.flags |= dns.flags.TC
        return Reply(response.to_wire(max_size=limit), Outcome.TRUNCATED)


def _absolute(text: str, what: str) -> dns.name.Name:
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ConfigError(f"{what}: not a valid DNS name: {text!r} ({exc})") from None


def build_zones(domains: Sequence[DomainPublication], settings: ZoneSettings) -> Zones:
    """Build one authoritative zone per hosted domain.

    Each zone has an SOA (MNAME the first name server, RNAME the hostmaster, the serial and TTLs of
    ``settings``), the NS records, one CERT record per certificate published in DNS (at its owner name), and
    the configured records.

    :param domains: the hosted domains with what they publish.
    :param settings: SOA/NS data and TTLs.
    :returns: the zones.
    :raises ConfigError: no name server is given, a domain is given twice, or a record is invalid or outside
        its zone.

    Spec: RFC 1035 sections 3.3.11 (NS), 3.3.13 (SOA), 5 (zones); RFC 4398 section 2 (CERT); RFC 2782 (SRV);
    CD-3, CD-11.
    """
    if not settings.nameservers:
        raise ConfigError("dns.nameservers: give at least one name server (the zones' NS records)")
    nameservers = [_absolute(n, "dns.nameservers") for n in settings.nameservers]
    zones: dict[dns.name.Name, Zone] = {}
    for publication in domains:
        origin = dns.name.from_text(publication.domain.dns_name())
        if origin in zones:
            raise ConfigError(f"domain {publication.domain} is published twice")
        zone = zones[origin] = Zone(origin)
        rname = _absolute(settings.hostmaster, "dns.hostmaster") if settings.hostmaster else (
            dns.name.from_text("hostmaster", origin=origin)
        )
        soa = dns.rdtypes.ANY.SOA.SOA(
            dns.rdataclass.IN, dns.rdatatype.SOA, nameservers[0], rname,
            settings.serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, settings.negative_ttl,
        )
        zone.add(origin, settings.ttl, soa)
        for ns in nameservers:
            zone.add(origin, settings.ttl, dns.rdtypes.ANY.NS.NS(dns.rdataclass.IN, dns.rdatatype.NS, ns))
        for published in publication.certificates:
            if published.in_dns:
                zone.add(published.dns_name(), settings.ttl, cert_rdata(published.certificate))
        for record in publication.records:
            name = _absolute(record.name, f"record {record.name}")
            try:
                rdata = dns.rdata.from_text(
                    dns.rdataclass.IN, record.type, record.value, origin=origin, relativize=False
                )
            except (dns.exception.DNSException, ValueError) as exc:
                raise ConfigError(f"record {record.name} {record.type} {record.value!r}: {exc}") from None
            zone.add(name, record.ttl, rdata)
    return Zones(zones.values())


def _cert_text(rdata: dns.rdtypes.ANY.CERT.CERT, indent: str) -> str:
    encoded = base64.b64encode(rdata.certificate).decode("ascii")
    lines = textwrap.wrap(encoded, 64)
    body = "".join(f"\n{indent}{line}" for line in lines)
    return f"PKIX {rdata.key_tag} {rdata.algorithm} ({body} )"


def zone_file(zones: Zones) -> str:
    """The zones as BIND master-file text, one ``$ORIGIN`` block per zone, absolute owner names.

    CERT records are written with the mnemonic ``PKIX`` and their base64 in parentheses over several lines.
    Every line loads into BIND (``named-checkzone``) and answers the same as :meth:`Zones.answer`.

    :param zones: the zones.
    :returns: the text.

    Spec: RFC 1035 section 5 (master files); RFC 4398 section 2.2 (CERT presentation format).
    """
    out: list[str] = []
    for zone in zones:
        out.append(f"; zone {zone.origin} (generated by hisp dns zone)\n$ORIGIN {zone.origin}\n")
        for rrset in zone.rrsets():
            for rdata in rrset:
                prefix = f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} "
                if rrset.rdtype == dns.rdatatype.CERT:
                    out.append(prefix + _cert_text(rdata, "    ") + "\n")
                else:
                    out.append(prefix + rdata.to_text(origin=None, relativize=False) + "\n")
        out.append("\n")
    return "".join(out)


_DN_SPECIAL = set(',+"\\<>;=')


def _escape_dn_value(value: str) -> str:
    escaped = "".join("\\" + c if c in _DN_SPECIAL else c for c in value)
    if escaped.startswith((" ", "#")):
        escaped = "\\" + escaped
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def _ldif_line(attribute: str, value: str | bytes) -> str:
    if isinstance(value, str) and value.isascii() and value.isprintable() and not value.startswith((" ", ":", "<")):
        line = f"{attribute}: {value}"  # RFC 2849 SAFE-STRING
    else:
        raw = value.encode("utf-8") if isinstance(value, str) else value
        line = f"{attribute}:: {base64.b64encode(raw).decode('ascii')}"
    # RFC 2849: fold lines longer than 76 characters; a continuation line starts with one space
    first, rest = line[:76], line[76:]
    return first + "".join(f"\n {rest[i : i + 75]}" for i in range(0, len(rest), 75)) + "\n"


def ldif(domains: Sequence[DomainPublication], base: str) -> str:
    """LDIF entries for the certificates published in LDAP, one entry per address or domain.

    Entry ``cn=<address or domain>,<base>``, object class ``inetOrgPerson`` (``cn`` and ``sn`` = the address or
    domain), ``mail`` = the address (address-bound) or the domain (domain-bound), and one
    ``userCertificate;binary`` value per certificate (DER). The base entry itself is not included.

    :param domains: the hosted domains with what they publish.
    :param base: the base DN, e.g. ``"ou=direct,dc=clinic,dc=example"``.
    :returns: the LDIF text (``version: 1`` first).
    :raises ConfigError: ``base`` is empty.

    Spec: RFC 2849 (LDIF); RFC 2798 (inetOrgPerson); RFC 4523 section 2.1 (userCertificate;binary);
    RFC 4514 section 2.4 (DN escaping); CD-7, CD-11.
    """
    if not base.strip():
        raise ConfigError("ldap.base: give the base DN the entries go under (or --base)")
    owners: dict[str, list[Certificate]] = {}
    for publication in domains:
        for published in publication.certificates:
            if published.in_ldap:
                certificates = owners.setdefault(published.owner, [])
                if published.certificate not in certificates:
                    certificates.append(published.certificate)
    out = ["version: 1\n"]
    for owner, certificates in owners.items():
        out.append("\n")
        out.append(_ldif_line("dn", f"cn={_escape_dn_value(owner)},{base.strip()}"))
        for line in ("objectClass: top", "objectClass: person", "objectClass: organizationalPerson",
                     "objectClass: inetOrgPerson"):
            out.append(line + "\n")
        out.append(_ldif_line("cn", owner))
        out.append(_ldif_line("sn", owner))
        out.append(_ldif_line("mail", owner))
        for certificate in certificates:
            out.append(_ldif_line("userCertificate;binary", certificate.der))
    return "".join(out)

