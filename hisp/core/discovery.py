"""Certificate discovery for one Direct address: the lookup plan, record decoding and the result.

Sans-I/O (DESIGN.md section 6, rule 1): a :class:`DiscoveryPlan` says which query to make next
(:meth:`DiscoveryPlan.next_step`) and is told what came back (:meth:`DiscoveryPlan.receive`); it never
touches a socket or a clock. The adapters (``hisp.adapters.dns``, ``hisp.adapters.ldap``) make the
queries and ``hisp.adapters.discovery`` drives the plan and runs the trust checks.

The order of tiers (CD-2, CD-3, conformance.md section 1.6):

1. ``LOCAL``: certificates configured for the address or its domain (only when some are given);
2. ``DNS_ADDRESS``: CERT records at ``user.example.org.`` for ``user@example.org``;
3. ``DNS_DOMAIN``: CERT records at ``example.org.``;
4. ``LDAP_ADDRESS``: ``(mail=user@example.org)`` on the servers named by ``_ldap._tcp.example.org.`` SRV;
5. ``LDAP_DOMAIN``: ``(mail=example.org)`` on the same servers.

The first tier that yields certificates ends the search. If none of them is valid (expired, revoked,
untrusted, not bound to the address), the recipient is undeliverable: the plan never falls through to a
later tier (CD-8; DCDT D5 and D7). A tier that cannot be read (SERVFAIL, timeout, every LDAP server down)
ends the search as *unavailable* (transient): going on could pick a lower-precedence certificate. Within
the LDAP tiers every SRV target is tried in order (priority ascending, then weight descending: CD-6, D10,
D15, D16), and a target that yields no certificate does not stop the search (Direct RI issue 199).
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from hisp.addresses import DirectAddress
from hisp.core.certs import CertBinding, Certificate, load_certificates, require_aware
from hisp.core.trust import PathVerdict
from hisp.errors import CertificateError

__all__ = [
    "CertQuery",
    "CertRecord",
    "CertType",
    "CertificateReport",
    "CertificateVerdict",
    "DiscoveryLimits",
    "DiscoveryPlan",
    "DiscoveryResult",
    "DnsAnswer",
    "DnsStatus",
    "FetchAnswer",
    "LdapAnswer",
    "LdapEntry",
    "LdapQuery",
    "LookupFailure",
    "Outcome",
    "RecordReport",
    "SrvQuery",
    "SrvRecord",
    "Step",
    "Tier",
    "TierReport",
    "TierStatus",
    "UrlFetch",
    "ValidateCertificates",
    "Verdicts",
    "decode_cert_rdata",
    "ldap_service_name",
    "order_srv",
]

#: Length of the fixed part of CERT RDATA: type (u16), key tag (u16), algorithm (u8). RFC 4398 section 2.
_CERT_HEADER = struct.Struct("!HHB")
#: Longest URL accepted in an IPKIX/URI record (bytes): RFC 9110 section 4.1 recommends supporting 8000.
MAX_URL_BYTES = 2048
#: LDAP attributes read, in order of preference (CD-7).
LDAP_ATTRIBUTES = ("userCertificate;binary", "userCertificate", "userSMIMECertificate")


class CertType(enum.IntEnum):
    """CERT record certificate types (RFC 4398 section 2.1)."""

    PKIX = 1
    SPKI = 2
    PGP = 3
    IPKIX = 4
    ISPKI = 5
    IPGP = 6
    ACPKIX = 7
    IACPKIX = 8
    URI = 253
    OID = 254


#: Types read as a DER certificate, and types read as a URL to fetch (CD-4).
_DER_TYPES = frozenset({CertType.PKIX})
_URL_TYPES = frozenset({CertType.IPKIX, CertType.URI})


def _type_name(value: int) -> str:
    try:
        return CertType(value).name
    except ValueError:
        return f"type {value}"


@dataclass(frozen=True)
class CertRecord:
    """One decoded CERT record: a certificate, a URL to fetch, an ignored type, or a defect.

    :ivar cert_type: the type field (None when the RDATA is too short to hold one).
    :ivar key_tag: the key tag (read, never used: CD-4).
    :ivar algorithm: the algorithm (read, never used: CD-4).
    :ivar data: the certificate field, as received.
    :ivar certificate: the certificate of a PKIX record, when it parses.
    :ivar url: the URL of an IPKIX or URI record, when it is an http(s) URL.
    :ivar ignored: why the record is not used although well formed (a type Direct does not use), or None.
    :ivar defect: why the record is unusable (malformed RDATA, not X.509, bad URL), or None.

    Spec: RFC 4398 section 2; CD-4.
    """

    cert_type: int | None
    key_tag: int
    algorithm: int
    data: bytes = field(repr=False)
    certificate: Certificate | None = None
    url: str | None = None
    ignored: str | None = None
    defect: str | None = None

    def describe(self) -> str:
        """One line for people: the type and what the record holds.

        :returns: e.g. ``"PKIX (key tag 0, algorithm 0): subject=CN=..."``.

        Spec: RFC 4398 section 2.
        """
        if self.cert_type is None:
            return f"malformed CERT RDATA: {self.defect}"
        head = f"{_type_name(self.cert_type)} (key tag {self.key_tag}, algorithm {self.algorithm})"
        if self.defect is not None:
            return f"{head}: defect: {self.defect}"
        if self.ignored is not None:
            return f"{head}: ignored: {self.ignored}"
        if self.certificate is not None:
            return f"{head}: {self.certificate.describe()}"
        return f"{head}: URL {self.url}"


def decode_cert_rdata(rdata: bytes) -> CertRecord:
    """Decode the RDATA of one CERT resource record; never raises on any input.

    PKIX (1): the certificate field must be one DER X.509 certificate. IPKIX (4) and URI (253): it must be
    an ASCII ``http``/``https`` URL of at most :data:`MAX_URL_BYTES` bytes (fetched later, bounded). Every
    other type is ignored; key tag and algorithm are read and ignored. Anything else is recorded as the
    record's ``defect``.

    :param rdata: the RDATA bytes of one record (wire format).
    :returns: the decoded record.

    Spec: RFC 4398 section 2 (``type u16 | key tag u16 | algorithm u8 | certificate``); CD-4.
    """
    data = bytes(rdata)
    if len(data) < _CERT_HEADER.size:
        return CertRecord(
            None, 0, 0, data,
            defect=f"{len(data)} bytes, at least {_CERT_HEADER.size} expected (RFC 4398 section 2)",
        )
    cert_type, key_tag, algorithm = _CERT_HEADER.unpack_from(data)
    body = data[_CERT_HEADER.size:]
    if cert_type in _DER_TYPES:
        if not body:
            return CertRecord(cert_type, key_tag, algorithm, body, defect="empty certificate field")
        try:
            certificate = Certificate.from_der(body)
        except CertificateError as exc:
            return CertRecord(
                cert_type, key_tag, algorithm, body, defect=f"certificate field is not X.509: {exc.message}"
            )
        return CertRecord(cert_type, key_tag, algorithm, body, certificate=certificate)
    if cert_type in _URL_TYPES:
        problem = _url_problem(body)
        if problem is not None:
            return CertRecord(cert_type, key_tag, algorithm, body, defect=problem)
        return CertRecord(cert_type, key_tag, algorithm, body, url=body.decode("ascii"))
    return CertRecord(
        cert_type, key_tag, algorithm, body, ignored=f"{_type_name(cert_type)} is not a type Direct uses (CD-4)"
    )


def _url_problem(body: bytes) -> str | None:
    if not body:
        return "empty URL"
    if len(body) > MAX_URL_BYTES:
        return f"URL of {len(body)} bytes exceeds the limit of {MAX_URL_BYTES}"
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return "URL is not ASCII"
    if not text.isprintable() or any(c.isspace() for c in text):
        return "URL holds control characters or spaces"
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"not an http(s) URL: {text[:80]!r}"
    return None


# -- SRV ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class SrvRecord:
    """One SRV record: where an LDAP server of the domain listens.

    :ivar priority: lower is tried first.
    :ivar weight: among equal priorities, higher is tried first (deterministic, CD-6).
    :ivar port: the TCP port.
    :ivar target: the host name, absolute, lower case (``"ldap.example.org."``); ``"."`` means "no service".

    Spec: RFC 2782; CD-6.
    """

    priority: int
    weight: int
    port: int
    target: str

    def describe(self) -> str:
        """``"ldap.example.org.:389 (priority 0, weight 100)"``."""
        return f"{self.target}:{self.port} (priority {self.priority}, weight {self.weight})"


def ldap_service_name(address: DirectAddress) -> str:
    """The SRV owner name of the domain's LDAP servers: ``_ldap._tcp.example.org.``.

    :param address: the Direct address.
    :returns: the absolute name.

    Spec: RFC 2782; CD-6.
    """
    return "_ldap._tcp." + address.domain.dns_name()


def order_srv(
    records: Iterable[SrvRecord], *, owner: str = "", limit: int = 8
) -> tuple[tuple[SrvRecord, ...], tuple[str, ...]]:
    """Order SRV records the way Direct discovery tries them, dropping the unusable ones.

    Sort key: priority ascending, weight descending, then target and port (so that equal records come out
    in one order every time: DCDT D16 expects the weight-100 server first, never RFC 2782's weighted random
    pick). Dropped, each with a note: the "no service" target ``.``, port 0, a target equal to the SRV
    owner name (a loop), repeats of the same target and port, and everything after ``limit`` records.

    :param records: the SRV records as received.
    :param owner: the SRV owner name (``_ldap._tcp.example.org.``), to spot loops.
    :param limit: most targets kept.
    :returns: the targets in the order to try, and notes on what was dropped.

    Spec: RFC 2782 (priority, weight, target "."); CD-6; DCDT D10, D15, D16.
    """
    notes: list[str] = []
    kept: list[SrvRecord] = []
    seen: set[tuple[str, int]] = set()
    loop = owner.lower().rstrip(".") + "."
    normalised = (replace(r, target=r.target.lower()) for r in records)
    for record in sorted(normalised, key=lambda r: (r.priority, -r.weight, r.target, r.port)):
        target = record.target
        if target in (".", ""):
            notes.append(f"SRV {record.describe()}: target '.' means the service is not offered (RFC 2782)")
        elif record.port == 0:
            notes.append(f"SRV {record.describe()}: port 0 ignored")
        elif owner and target == loop:
            notes.append(f"SRV {record.describe()}: target is the SRV owner name itself (loop) ignored")
        elif (target, record.port) in seen:
            notes.append(f"SRV {record.describe()}: repeated target ignored")
        elif len(kept) >= limit:
            notes.append(f"SRV {record.describe()}: beyond the limit of {limit} targets, ignored")
        else:
            seen.add((target, record.port))
            kept.append(record)
    return tuple(kept), tuple(notes)


# -- steps and answers ----------------------------------------------------------------------------------


class Tier(enum.Enum):
    """Where certificates are looked for, in the order of precedence (CD-2)."""

    LOCAL = "local"
    DNS_ADDRESS = "dns-address"
    DNS_DOMAIN = "dns-domain"
    LDAP_ADDRESS = "ldap-address"
    LDAP_DOMAIN = "ldap-domain"


@dataclass(frozen=True)
class CertQuery:
    """Ask DNS for the CERT records at ``name`` (absolute).

    Spec: RFC 4398; CD-3.
    """

    tier: Tier
    name: str


@dataclass(frozen=True)
class SrvQuery:
    """Ask DNS for the SRV records at ``name`` (``_ldap._tcp.<domain>.``).

    Spec: RFC 2782; CD-6.
    """

    name: str


@dataclass(frozen=True)
class LdapQuery:
    """Search one LDAP server: anonymous bind, rootDSE namingContexts, subtree ``(mail=<mail>)``.

    Spec: CD-7.
    """

    tier: Tier
    target: SrvRecord
    mail: str


@dataclass(frozen=True)
class UrlFetch:
    """Fetch the certificate an IPKIX/URI record points to (bounded).

    Spec: RFC 4398 section 2.1 (indirect types); CD-4.
    """

    tier: Tier
    url: str


@dataclass(frozen=True)
class ValidateCertificates:
    """Judge these candidate certificates through the trust seam (``RecipientTrust``) at the plan's time.

    :ivar intermediates: CA certificates found in the same tier, offered for path building.

    Spec: CD-8; AS-20.
    """

    tier: Tier
    candidates: tuple[Certificate, ...]
    intermediates: tuple[Certificate, ...] = ()


Step = CertQuery | SrvQuery | LdapQuery | UrlFetch | ValidateCertificates


class DnsStatus(enum.Enum):
    """What a DNS answer says (RFC 1035 section 4.1.1; RFC 2308 for NXDOMAIN/NODATA)."""

    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"


@dataclass(frozen=True)
class DnsAnswer:
    """A DNS answer to a :class:`CertQuery` or :class:`SrvQuery`.

    :ivar status: answer, NXDOMAIN or NODATA.
    :ivar rdata: for CERT: each record's RDATA (wire format), in answer order.
    :ivar srv: for SRV: the records.
    :ivar ttl: the RRset's TTL in seconds (None for negative answers).
    :ivar authenticated: whether the resolver set the AD bit (RFC 4035 section 3.2.3).
    :ivar transport: ``"udp"`` or ``"tcp"`` (TCP after a truncated UDP answer, CD-5).
    :ivar messages: how many DNS messages were sent to get it.

    Spec: RFC 1035 section 4; RFC 2308; CD-5.
    """

    status: DnsStatus
    rdata: tuple[bytes, ...] = ()
    srv: tuple[SrvRecord, ...] = ()
    ttl: int | None = None
    authenticated: bool = False
    transport: str = "udp"
    messages: int = 1


@dataclass(frozen=True)
class LdapEntry:
    """One LDAP entry found: its DN and the certificate attribute values, as (attribute, bytes).

    Spec: CD-7; RFC 4523 (userCertificate), RFC 2798 section 9.1.2 (userSMIMECertificate).
    """

    dn: str
    values: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class LdapAnswer:
    """The entries one LDAP server returned.

    :ivar server: ``host:port`` actually searched.
    :ivar base_dns: the naming contexts searched.
    :ivar entries: the entries (already bounded by the adapter's size limit).
    :ivar operations: how many LDAP operations and DNS address queries it took.
    :ivar defects: what the adapter noticed (size limit reached, base DNs dropped ...).

    Spec: CD-7.
    """

    server: str
    base_dns: tuple[str, ...]
    entries: tuple[LdapEntry, ...]
    operations: int = 1
    defects: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchAnswer:
    """The body an IPKIX/URI URL returned.

    Spec: RFC 4398 section 2.1.
    """

    body: bytes = field(repr=False)


@dataclass(frozen=True)
class CertificateVerdict:
    """The trust seam's verdict on one candidate: a path, or the reason it was refused.

    Spec: CD-8; AS-20.
    """

    certificate: Certificate
    verdict: PathVerdict | None
    reason: str


@dataclass(frozen=True)
class Verdicts:
    """The answer to :class:`ValidateCertificates`, one per candidate.

    Spec: CD-8.
    """

    items: tuple[CertificateVerdict, ...]


@dataclass(frozen=True)
class LookupFailure:
    """A step could not be completed.

    :ivar reason: one line for people.
    :ivar transient: True when it may heal by itself (SERVFAIL, timeout, refused connection); False when
        it will not (a malformed answer, a 4xx on a certificate URL).
    :ivar stage: for LDAP: ``resolve``, ``connect``, ``bind``, ``rootdse`` or ``search``.
    :ivar messages: how many network messages were spent on it.

    Spec: DESIGN.md section 4 (DiscoveryUnavailable is transient).
    """

    reason: str
    transient: bool = True
    stage: str = ""
    messages: int = 1


Answer = DnsAnswer | LdapAnswer | FetchAnswer | Verdicts | LookupFailure


# -- result ---------------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    """How a lookup ended."""

    FOUND = "found"
    NOT_FOUND = "not found"
    UNAVAILABLE = "unavailable"


class TierStatus(enum.Enum):
    """What one tier gave."""

    NOT_QUERIED = "not queried"
    EMPTY = "no certificates"
    CERTIFICATES = "certificates"
    FAILED = "failed"


@dataclass(frozen=True)
class RecordReport:
    """One record or entry a tier returned, and what it held.

    Spec: RFC 4398 section 2; CD-7.
    """

    source: str
    description: str
    defect: str | None = None


@dataclass(frozen=True)
class CertificateReport:
    """One certificate a tier yielded, whether it was chosen, and why (not).

    :ivar source: where it came from, e.g. ``"DNS CERT d1.example.org. #1"``.
    :ivar binding: how it binds to the address (None: not bound, AS-2/AS-3).
    :ivar chosen: whether it is used.
    :ivar reason: ``"trusted: ..."`` for a chosen one, else the refusal (``"expired: ..."``).
    :ivar verdict: the path verdict of a chosen one.

    Spec: CD-8; AS-2; AS-3; AS-20.
    """

    certificate: Certificate
    source: str
    binding: CertBinding | None
    chosen: bool
    reason: str
    verdict: PathVerdict | None = None


@dataclass(frozen=True)
class TierReport:
    """What one tier was asked and what it returned.

    Spec: CD-2.
    """

    tier: Tier
    status: TierStatus = TierStatus.NOT_QUERIED
    queries: tuple[str, ...] = ()
    records: tuple[RecordReport, ...] = ()
    certificates: tuple[CertificateReport, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiscoveryResult:
    """Everything one discovery found out, for the pipeline, the DSN and the operator.

    :ivar address: the recipient.
    :ivar at: the validation time.
    :ivar outcome: found, not found (permanent: CD-9) or unavailable (transient).
    :ivar reason: one line: which tier decided and why.
    :ivar tiers: every tier, in precedence order, queried or not.
    :ivar deciding_tier: the tier that ended the search (None when none yielded certificates).
    :ivar chosen: the certificates to encrypt to (every valid one of the deciding tier, AS-11).
    :ivar dnssec_required: whether DNS answers had to carry the AD bit.
    :ivar authenticated: whether every DNS answer used carried the AD bit (None: no DNS answer).
    :ivar queries: how many network queries were made (DNS messages, LDAP operations, HTTP fetches).
    :ivar ttl: seconds the result may be cached (0: do not cache).
    :ivar from_cache: whether this result was served from a cache.

    Spec: CD-1 .. CD-10.
    """

    address: DirectAddress
    at: datetime
    outcome: Outcome
    reason: str
    tiers: tuple[TierReport, ...]
    deciding_tier: Tier | None
    chosen: tuple[Certificate, ...]
    dnssec_required: bool = False
    authenticated: bool | None = None
    queries: int = 0
    ttl: int = 0
    from_cache: bool = False

    @property
    def usable(self) -> bool:
        """Whether at least one certificate was chosen."""
        return self.outcome is Outcome.FOUND

    def tier(self, tier: Tier) -> TierReport | None:
        """The report of ``tier`` (None when the plan has no such tier, e.g. LOCAL without a store)."""
        return next((t for t in self.tiers if t.tier is tier), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (certificates as subject, SAN, fingerprint; the chosen ones also as PEM).

        :returns: the dictionary.

        Spec: CD-1 .. CD-10.
        """
        def cert_summary(cert: Certificate) -> dict[str, Any]:
            return {
                "subject": cert.subject,
                "issuer": cert.issuer,
                "rfc822_names": list(cert.rfc822_names),
                "dns_names": list(cert.dns_names),
                "not_before": cert.not_before.isoformat(),
                "not_after": cert.not_after.isoformat(),
                "fingerprint_sha256": cert.fingerprint_sha256,
            }

        return {
            "address": str(self.address),
            "at": self.at.isoformat(),
            "outcome": self.outcome.value,
            "usable": self.usable,
            "reason": self.reason,
            "deciding_tier": None if self.deciding_tier is None else self.deciding_tier.value,
            "chosen": [{**cert_summary(c), "pem": c.to_pem().decode("ascii")} for c in self.chosen],
            "dnssec_required": self.dnssec_required,
            "authenticated": self.authenticated,
            "queries": self.queries,
            "ttl": self.ttl,
            "from_cache": self.from_cache,
            "tiers": [
                {
                    "tier": t.tier.value,
                    "status": t.status.value,
                    "queries": list(t.queries),
                    "records": [
                        {"source": r.source, "description": r.description, "defect": r.defect} for r in t.records
                    ],
                    "certificates": [
                        {
                            **cert_summary(c.certificate),
                            "source": c.source,
                            "binding": None if c.binding is None else c.binding.value,
                            "chosen": c.chosen,
                            "reason": c.reason,
                        }
                        for c in t.certificates
                    ],
                    "errors": list(t.errors),
                }
                for t in self.tiers
            ],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    def explain(self) -> str:
        """The result for people: the outcome, then each tier's queries, records and certificates.

        :returns: several lines of text.

        Spec: CD-1 .. CD-10.
        """
        lines = [f"{self.address}: {self.outcome.value}: {self.reason}"]
        if self.dnssec_required or self.authenticated is not None:
            state = {True: "authenticated (AD)", False: "NOT authenticated", None: "no DNS answer"}
            required = " (required)" if self.dnssec_required else ""
            lines.append(f"DNSSEC{required}: {state[self.authenticated]}")
        lines.append(f"queries: {self.queries}{', from cache' if self.from_cache else ''}; cache ttl {self.ttl} s")
        for report in self.tiers:
            lines.append(f"tier {report.tier.value}: {report.status.value}")
            lines.extend(f"  query {q}" for q in report.queries)
            for record in report.records:
                lines.append(f"  record {record.source}: {record.description}")
            for cert in report.certificates:
                mark = "CHOSEN" if cert.chosen else "not chosen"
                lines.append(f"  {mark}: {cert.certificate.describe()} from {cert.source}")
                lines.append(f"    {cert.reason}")
            lines.extend(f"  error: {e}" for e in report.errors)
        return "\n".join(lines)


# -- the plan -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscoveryLimits:
    """Bounds on what one discovery reads, each with where it comes from.

    :ivar max_records: CERT records used per RRset (a 64 KiB TCP answer holds ~40 RSA-2048 certificates;
        Direct publishes one to a few per name).
    :ivar max_srv_targets: SRV targets tried (DCDT uses at most 2; every target can cost a connect timeout).
    :ivar max_url_fetches: IPKIX/URI records fetched per tier.
    :ivar max_candidates: certificates validated per tier.
    :ivar max_ttl: longest cache time in seconds, whatever the DNS TTL says (one day).
    :ivar negative_ttl: cache time in seconds of a "not found" result (CD-10; RFC 2308 suggests 1-3 h max).
    :ivar ldap_ttl: cache time in seconds of LDAP-found certificates (LDAP has no TTL).

    Spec: DESIGN.md section 6 rule 3 (bounded parsers); CD-10.
    """

    max_records: int = 32
    max_srv_targets: int = 8
    max_url_fetches: int = 4
    max_candidates: int = 32
    max_ttl: int = 86400
    negative_ttl: int = 300
    ldap_ttl: int = 3600

    def __post_init__(self) -> None:
        for name in ("max_records", "max_srv_targets", "max_url_fetches", "max_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("max_ttl", "negative_ttl", "ldap_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds")


@dataclass
class _Tier:
    """Mutable working state of one tier while the plan runs."""

    tier: Tier
    status: TierStatus = TierStatus.NOT_QUERIED
    queries: list[str] = field(default_factory=list)
    records: list[RecordReport] = field(default_factory=list)
    found: list[tuple[Certificate, str]] = field(default_factory=list)
    urls: list[tuple[str, str]] = field(default_factory=list)  # (url, source)
    reports: list[CertificateReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    transient_error: bool = False

    def freeze(self) -> TierReport:
        return TierReport(
            self.tier, self.status, tuple(self.queries), tuple(self.records), tuple(self.reports), tuple(self.errors)
        )


class DiscoveryPlan:
    """The lookup plan for one Direct address: the next query to make, given what came back so far.

    Use::

        plan = DiscoveryPlan(address, at=at)
        while (step := plan.next_step()) is not None:
            plan.receive(answer_to(step))       # DnsAnswer, LdapAnswer, FetchAnswer, Verdicts or LookupFailure
        result = plan.result()

    :param address: the recipient.
    :param at: the validation time (aware), passed on in the result.
    :param local: certificates configured locally for this address or domain; when not empty they are the
        first tier and DNS/LDAP are never asked.
    :param require_dnssec: refuse DNS answers without the AD bit (the result says so).
    :param limits: the bounds.
    :raises ValueError: when ``at`` is naive.

    Spec: CD-2, CD-3, CD-4, CD-6, CD-7, CD-8, CD-9; conformance.md section 1.6.
    """

    def __init__(
        self,
        address: DirectAddress,
        *,
        at: datetime,
        local: Sequence[Certificate] = (),
        require_dnssec: bool = False,
        limits: DiscoveryLimits | None = None,
    ) -> None:
        require_aware(at)
        self.address = address
        self.at = at
        self.limits = limits or DiscoveryLimits()
        self.require_dnssec = require_dnssec
        self._local = tuple(local)
        order = [Tier.DNS_ADDRESS, Tier.DNS_DOMAIN, Tier.LDAP_ADDRESS, Tier.LDAP_DOMAIN]
        if self._local:
            order.insert(0, Tier.LOCAL)
        self._tiers = {t: _Tier(t) for t in order}
        self._order = order
        self._index = 0
        self._pending: Step | None = None
        self._queue: list[Step] = []
        self._done = False
        self._outcome = Outcome.NOT_FOUND
        self._reason = ""
        self._deciding: Tier | None = None
        self._chosen: tuple[Certificate, ...] = ()
        self._queries = 0
        self._ttls: list[int] = []
        self._authenticated: list[bool] = []
        self._srv_targets: tuple[SrvRecord, ...] | None = None
        self._srv_notes: tuple[str, ...] = ()
        self._dead: set[SrvRecord] = set()
        self._answered: set[SrvRecord] = set()
        self._ldap_position = 0
        self._url_sources: dict[str, str] = {}
        self._sources: dict[Certificate, str] = {}
        self._start_tier()

    # -- driving ------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the plan has finished (``next_step`` returns None)."""
        return self._done

    def next_step(self) -> Step | None:
        """The next query to make, or None when the plan is finished.

        Repeated calls without :meth:`receive` return the same step.

        :returns: the step.

        Spec: DESIGN.md section 6 rule 1 (sans-I/O).
        """
        if self._done:
            return None
        if self._pending is None:
            self._pending = self._queue.pop(0) if self._queue else None
            if self._pending is None:  # pragma: no cover - every path queues a step or finishes
                self._finish(Outcome.NOT_FOUND, "internal: nothing left to ask", None)
        return self._pending

    def receive(self, answer: Answer) -> None:
        """Take the answer to the step :meth:`next_step` returned.

        :param answer: what came back.
        :raises RuntimeError: when no step is pending (a programming error).

        Spec: DESIGN.md section 6 rule 1 (sans-I/O).
        """
        step = self._pending
        if step is None or self._done:
            raise RuntimeError("no step is pending: call next_step() first")
        self._pending = None
        if isinstance(step, CertQuery):
            self._on_cert(step, answer)
        elif isinstance(step, SrvQuery):
            self._on_srv(step, answer)
        elif isinstance(step, LdapQuery):
            self._on_ldap(step, answer)
        elif isinstance(step, UrlFetch):
            self._on_fetch(step, answer)
        else:
            self._on_verdicts(step, answer)

    def abort(self, reason: str) -> None:
        """End the plan as *unavailable* (transient), e.g. when the caller's time budget runs out.

        :param reason: one line for people.

        Spec: DESIGN.md section 6 rule 3 (bounded in time).
        """
        if not self._done:
            self._unavailable(self._current, reason)

    def result(self) -> DiscoveryResult:
        """The result; only once :attr:`done`.

        :returns: the frozen result.
        :raises RuntimeError: when the plan has not finished.

        Spec: CD-1 .. CD-10.
        """
        if not self._done:
            raise RuntimeError("the plan has not finished")
        authenticated = all(self._authenticated) if self._authenticated else None
        if self._outcome is Outcome.UNAVAILABLE:
            ttl = 0
        elif self._outcome is Outcome.FOUND:
            ttl = min([self.limits.max_ttl, *self._ttls])
        else:
            ttl = min([self.limits.negative_ttl, *self._ttls])
        return DiscoveryResult(
            address=self.address,
            at=self.at,
            outcome=self._outcome,
            reason=self._reason,
            tiers=tuple(self._tiers[t].freeze() for t in self._order),
            deciding_tier=self._deciding,
            chosen=self._chosen,
            dnssec_required=self.require_dnssec,
            authenticated=authenticated,
            queries=self._queries,
            ttl=max(ttl, 0),
        )

    # -- tiers ---------------------------------------------------------------------------------------

    @property
    def _current(self) -> _Tier:
        return self._tiers[self._order[self._index]]

    def _start_tier(self) -> None:
        state = self._current
        tier = state.tier
        if tier is Tier.LOCAL:
            state.queries.append("local store")
            for n, cert in enumerate(self._local, 1):
                state.found.append((cert, f"local store #{n}"))
            self._end_of_reading()
        elif tier is Tier.DNS_ADDRESS:
            self._queue.append(CertQuery(tier, self.address.dns_name()))
        elif tier is Tier.DNS_DOMAIN:
            self._queue.append(CertQuery(tier, self.address.domain.dns_name()))
        elif tier is Tier.LDAP_ADDRESS:
            self._queue.append(SrvQuery(ldap_service_name(self.address)))
        else:
            self._ldap_position = 0
            self._next_ldap_target()

    def _next_tier(self) -> None:
        self._index += 1
        if self._index >= len(self._order):
            self._finish(Outcome.NOT_FOUND, "no certificate is published for the address (CD-9)", None)
            return
        self._start_tier()

    def _finish(self, outcome: Outcome, reason: str, deciding: Tier | None) -> None:
        self._outcome, self._reason, self._deciding = outcome, reason, deciding
        self._queue.clear()
        self._pending = None
        self._done = True

    def _unavailable(self, state: _Tier, reason: str) -> None:
        state.status = TierStatus.FAILED
        state.errors.append(reason)
        self._finish(
            Outcome.UNAVAILABLE,
            f"tier {state.tier.value} could not be read ({reason}); later tiers are not consulted, retry later",
            state.tier,
        )

    def _dns_checks(self, state: _Tier, answer: DnsAnswer, name: str) -> bool:
        """Count, note TTL and AD; False when the plan finished (DNSSEC refused)."""
        self._queries += answer.messages
        self._authenticated.append(answer.authenticated)
        if answer.ttl is not None:
            self._ttls.append(max(answer.ttl, 0))
        if self.require_dnssec and not answer.authenticated:
            reason = f"DNSSEC required: the answer for {name} is not authenticated (AD bit clear)"
            state.status = TierStatus.FAILED
            state.errors.append(reason)
            self._finish(Outcome.NOT_FOUND, reason, state.tier)
            return False
        return True

    def _on_cert(self, step: CertQuery, answer: Answer) -> None:
        state = self._current
        state.queries.append(f"CERT {step.name}")
        if isinstance(answer, LookupFailure):
            self._queries += answer.messages
            if answer.transient:
                self._unavailable(state, _about(f"CERT {step.name}", answer.reason))
            else:
                state.status = TierStatus.FAILED
                state.errors.append(_about(f"CERT {step.name}", answer.reason))
                self._finish(
                    Outcome.NOT_FOUND,
                    f"tier {state.tier.value}: CERT {step.name} cannot be read "
                    f"({_bare(f'CERT {step.name}', answer.reason)}); later tiers are not consulted",
                    state.tier,
                )
            return
        if not isinstance(answer, DnsAnswer):
            raise TypeError(f"a CertQuery needs a DnsAnswer or LookupFailure, not {type(answer).__name__}")
        state.queries[-1] += f" ({answer.status.value}, {answer.transport})"
        if not self._dns_checks(state, answer, step.name):
            return
        records = answer.rdata
        if len(records) > self.limits.max_records:
            state.errors.append(
                f"{len(records)} CERT records at {step.name}; only the first {self.limits.max_records} are read"
            )
            records = records[: self.limits.max_records]
        for n, rdata in enumerate(records, 1):
            source = f"DNS CERT {step.name} #{n}"
            record = decode_cert_rdata(rdata)
            state.records.append(RecordReport(source, record.describe(), record.defect))
            if record.certificate is not None:
                state.found.append((record.certificate, source))
            elif record.url is not None:
                state.urls.append((record.url, source))
        self._after_records(state)

    def _after_records(self, state: _Tier) -> None:
        urls = state.urls[: self.limits.max_url_fetches]
        for url, source in state.urls[self.limits.max_url_fetches:]:
            state.errors.append(f"{source}: URL {url} not fetched: more than {self.limits.max_url_fetches} URLs")
        state.urls = []
        if urls:
            self._queue.extend(UrlFetch(state.tier, url) for url, _ in urls)
            self._url_sources = {url: source for url, source in urls}
            return
        self._end_of_reading()

    def _on_fetch(self, step: UrlFetch, answer: Answer) -> None:
        state = self._current
        source = self._url_sources.get(step.url, step.url)
        state.queries.append(f"GET {step.url}")
        if isinstance(answer, LookupFailure):
            self._queries += answer.messages
            state.errors.append(f"{source}: GET {step.url}: {answer.reason}")
            state.transient_error = state.transient_error or answer.transient
        elif isinstance(answer, FetchAnswer):
            self._queries += 1
            try:
                certs = load_certificates(answer.body)
            except CertificateError as exc:
                state.records.append(RecordReport(step.url, "fetched body", f"not a certificate: {exc.message}"))
            else:
                for cert in certs[: self.limits.max_candidates]:
                    state.found.append((cert, f"{source} via {step.url}"))
        else:
            raise TypeError(f"a UrlFetch needs a FetchAnswer or LookupFailure, not {type(answer).__name__}")
        if not self._queue:
            self._end_of_reading()

    def _end_of_reading(self) -> None:
        """All records of the current tier (or of one LDAP server) are in: choose, go on, or stop."""
        state = self._current
        if state.found:
            state.status = TierStatus.CERTIFICATES
            self._judge(state)
            return
        if state.transient_error:
            self._unavailable(state, "a certificate URL could not be fetched")
            return
        if state.tier in (Tier.LDAP_ADDRESS, Tier.LDAP_DOMAIN):
            self._next_ldap_target()
            return
        state.status = TierStatus.EMPTY
        self._next_tier()

    # -- LDAP ----------------------------------------------------------------------------------------

    def _on_srv(self, step: SrvQuery, answer: Answer) -> None:
        state = self._current
        state.queries.append(f"SRV {step.name}")
        if isinstance(answer, LookupFailure):
            self._queries += answer.messages
            if answer.transient:
                self._unavailable(state, _about(f"SRV {step.name}", answer.reason))
            else:
                state.status = TierStatus.FAILED
                state.errors.append(_about(f"SRV {step.name}", answer.reason))
                self._finish(
                    Outcome.NOT_FOUND, f"SRV {step.name} cannot be read ({_bare(f'SRV {step.name}', answer.reason)})",
                    state.tier,
                )
            return
        if not isinstance(answer, DnsAnswer):
            raise TypeError(f"an SrvQuery needs a DnsAnswer or LookupFailure, not {type(answer).__name__}")
        state.queries[-1] += f" ({answer.status.value}, {answer.transport})"
        if not self._dns_checks(state, answer, step.name):
            return
        targets, notes = order_srv(answer.srv, owner=step.name, limit=self.limits.max_srv_targets)
        self._srv_targets, self._srv_notes = targets, notes
        state.errors.extend(notes)
        for record in targets:
            state.records.append(RecordReport(f"DNS SRV {step.name}", record.describe()))
        if not targets:
            for tier in (Tier.LDAP_ADDRESS, Tier.LDAP_DOMAIN):
                self._tiers[tier].status = TierStatus.EMPTY
            self._tiers[Tier.LDAP_DOMAIN].queries.append("no LDAP server (no usable SRV record)")
            self._finish(
                Outcome.NOT_FOUND,
                "no certificate is published for the address: no CERT records and no LDAP server (CD-9)",
                None,
            )
            return
        if self.limits.ldap_ttl >= 0:
            self._ttls.append(self.limits.ldap_ttl)
        self._ldap_position = 0
        self._next_ldap_target()

    def _next_ldap_target(self) -> None:
        state = self._current
        targets = self._srv_targets or ()
        mail = str(self.address) if state.tier is Tier.LDAP_ADDRESS else self.address.domain.name
        while self._ldap_position < len(targets):
            target = targets[self._ldap_position]
            self._ldap_position += 1
            if target in self._dead:
                state.queries.append(f"LDAP {target.describe()}: skipped, unreachable earlier")
                continue
            self._queue.append(LdapQuery(state.tier, target, mail))
            return
        # every target has been tried for this tier
        if not self._answered:
            self._unavailable(state, "no LDAP server named by SRV could be searched")
            return
        state.status = TierStatus.EMPTY
        self._next_tier()

    def _on_ldap(self, step: LdapQuery, answer: Answer) -> None:
        state = self._current
        label = f"LDAP {step.target.describe()} (mail={step.mail})"
        if isinstance(answer, LookupFailure):
            self._queries += answer.messages
            state.queries.append(f"{label}: {answer.stage or 'failed'}: {answer.reason}")
            state.errors.append(f"{step.target.describe()}: {answer.stage or 'failed'}: {answer.reason}")
            self._dead.add(step.target)
            self._next_ldap_target()
            return
        if not isinstance(answer, LdapAnswer):
            raise TypeError(f"an LdapQuery needs an LdapAnswer or LookupFailure, not {type(answer).__name__}")
        self._queries += answer.operations
        self._answered.add(step.target)
        state.queries.append(f"{label} at {answer.server}: {len(answer.entries)} entries")
        state.errors.extend(answer.defects)
        for entry in answer.entries:
            source = f"LDAP {answer.server} {entry.dn}"
            if not entry.values:
                state.records.append(RecordReport(source, "entry without a certificate attribute"))
            for attribute, value in entry.values:
                certs, defect = _decode_ldap_value(attribute, value)
                where = f"{source} {attribute}"
                if defect is not None:
                    state.records.append(RecordReport(where, f"{len(value)} bytes", defect))
                    continue
                state.records.append(RecordReport(where, "; ".join(c.describe() for c in certs)))
                state.found.extend((c, where) for c in certs)
        self._end_of_reading()

    # -- choosing ------------------------------------------------------------------------------------

    def _judge(self, state: _Tier) -> None:
        unique: dict[Certificate, str] = {}
        for cert, source in state.found:
            unique.setdefault(cert, source)
        intermediates = tuple(c for c in unique if c.is_ca)
        candidates: list[Certificate] = []
        for cert, source in unique.items():
            binding = cert.binding_for(self.address)
            if cert.is_ca:
                state.reports.append(
                    CertificateReport(cert, source, binding, False, "a CA certificate: offered as an intermediate")
                )
            elif binding is None:
                state.reports.append(
                    CertificateReport(
                        cert, source, None, False,
                        f"wrong binding: no subjectAltName rfc822Name {self.address} or dNSName "
                        f"{self.address.domain} (AS-2, AS-3)",
                    )
                )
            elif len(candidates) >= self.limits.max_candidates:
                state.reports.append(
                    CertificateReport(
                        cert, source, binding, False, f"not validated: beyond {self.limits.max_candidates} candidates"
                    )
                )
            else:
                candidates.append(cert)
        self._sources = unique
        if not candidates:
            self._conclude(state, ())
            return
        self._queue.append(ValidateCertificates(state.tier, tuple(candidates), intermediates))

    def _on_verdicts(self, step: ValidateCertificates, answer: Answer) -> None:
        state = self._current
        if isinstance(answer, LookupFailure):
            self._unavailable(state, f"trust validation: {answer.reason}")
            return
        if not isinstance(answer, Verdicts):
            raise TypeError(f"ValidateCertificates needs Verdicts or a LookupFailure, not {type(answer).__name__}")
        by_cert = {v.certificate: v for v in answer.items}
        for cert in step.candidates:
            verdict = by_cert.get(cert)
            binding = cert.binding_for(self.address)
            if verdict is None:
                state.reports.append(CertificateReport(cert, self._sources[cert], binding, False, "no verdict given"))
            elif verdict.verdict is None:
                state.reports.append(CertificateReport(cert, self._sources[cert], binding, False, verdict.reason))
            else:
                state.reports.append(
                    CertificateReport(cert, self._sources[cert], binding, True, verdict.reason, verdict.verdict)
                )
        self._conclude(state, tuple(r.certificate for r in state.reports if r.chosen))

    def _conclude(self, state: _Tier, chosen: tuple[Certificate, ...]) -> None:
        # order the reports: chosen first, then the refused ones, in discovery order
        state.reports.sort(key=lambda r: not r.chosen)
        count = len(state.reports)
        if chosen:
            self._chosen = chosen
            self._finish(
                Outcome.FOUND,
                f"tier {state.tier.value}: {len(chosen)} of {count} certificate(s) valid and trusted",
                state.tier,
            )
            return
        self._finish(
            Outcome.NOT_FOUND,
            f"tier {state.tier.value} yielded {count} certificate(s), none valid; "
            "later tiers are not consulted (CD-8)",
            state.tier,
        )


def _decode_ldap_value(attribute: str, value: bytes) -> tuple[list[Certificate], str | None]:
    """Certificates in one LDAP attribute value, or the defect that makes it unusable.

    userCertificate(;binary) holds one DER certificate (RFC 4523 section 2.1); userSMIMECertificate holds
    a PKCS#7 SignedData (RFC 2798 section 9.1.2). Both are read with the bounded certificate loader.
    """
    if not value:
        return [], "empty value"
    try:
        if attribute.lower().startswith("usersmimecertificate"):
            return load_certificates(value), None
        return [Certificate.from_der(value)], None
    except CertificateError as exc:
        return [], f"not a certificate: {exc.message}"


def _bare(query: str, reason: str) -> str:
    """``reason`` without a leading ``"<query>: "`` (the DNS adapter names the query already)."""
    return reason.removeprefix(f"{query}: ")


def _about(query: str, reason: str) -> str:
    """``"<query>: <reason>"``, the query named once."""
    return f"{query}: {_bare(query, reason)}"
