"""Certificate discovery throughput: cold lookups against a real BIND on loopback, warm lookups from the cache.

Usage: ``python3 bench/discovery.py [--addresses 200] [--warm 20000] [--quick]``. Starts ``named``
(:mod:`hisp.testing.bind`) authoritative for a zone with one address-bound CERT record per address
(RSA-2048, so every answer exceeds 512 bytes: UDP truncated, then TCP, as in DCDT D1/D14) and one
domain-bound record, then measures :meth:`hisp.adapters.discovery.CertificateDiscovery.lookup` with a
:class:`hisp.core.trust.StoreTrust` (the CA as outgoing anchor, revocation off):

* **cold**, per kind of lookup (address-bound found in DNS; domain-bound found; nothing published): each
  lookup of an address never looked up before, no cache, real queries. Beside it: the bare round trips
  the same lookup needs (the same DNS messages sent with dnspython's synchronous ``dns.query``, no
  parsing of certificates, no validation), and the queries per lookup counted in the
  :class:`~hisp.core.discovery.DiscoveryResult` against the minimum the plan needs.
* **cold breakdown**: where the time of those cold lookups went, measured inside each lookup: in the
  :class:`~hisp.adapters.dns.DnsClient` calls (round trips plus dnspython's async resolver and message
  parsing), in decoding CERT RDATA into certificates (:func:`hisp.core.discovery.decode_cert_rdata`), in trust
  validation (``RecipientTrust.validate_recipient``), in the hop to the worker thread that validation runs in
  and back (``asyncio.to_thread``), and the rest (the plan, the event loop, building the result); beside it the
  bare round trips again.
* **warm**: the same addresses again through a :class:`~hisp.adapters.discovery.DiscoveryCache`: lookups per
  second, and the p50/p99 latency of one ``lookup`` (and of the cache's ``get`` alone).

Targets (printed as PASS/MISS, not asserted): warm ``lookup`` p99 under 0.2 ms; cold queries per lookup
equal to the minimum (no needless queries); and "cold = the round trips", measured: PASS when a cold lookup
takes at most 1.5 times the bare round trips, else MISS with the part that costs the most. Exit status 0
whenever the measurements ran.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dns.flags
import dns.message
import dns.query
import dns.rdatatype

import hisp.core.discovery as discovery_core
from hisp.adapters.discovery import CertificateDiscovery, DiscoveryCache
from hisp.adapters.dns import AddressAnswer, DnsClient
from hisp.adapters.ldap import LdapSession
from hisp.addresses import DirectAddress
from hisp.core.certs import Certificate
from hisp.core.devca import create_ca, issue_certificate
from hisp.core.discovery import Answer, CertRecord, DiscoveryResult, DnsAnswer, Outcome, Step, ValidateCertificates
from hisp.core.policy import RevocationMode, SecurityPolicy
from hisp.core.trust import PathVerdict, StoreTrust, TrustAnchor, TrustStore
from hisp.testing.bind import BindServer, run_named

AT = datetime.now(UTC).replace(microsecond=0)
ZONE = "bench.example"
WARM_P99_TARGET_MS = 0.2
#: A cold lookup "costs the round trips" when it takes at most this many times the bare round trips.
COLD_ROUND_TRIP_FACTOR = 1.5


@dataclass
class Spent:
    """Seconds spent in each part of the cold lookups of one kind.

    :ivar dns: in the DNS client's calls.
    :ivar parse: decoding CERT RDATA (parsing the certificates).
    :ivar validate: in ``validate_recipient``.
    :ivar validate_step: the whole validation step as the lookup awaits it (``validate`` plus the thread hop).
    """

    dns: float = 0.0
    parse: float = 0.0
    validate: float = 0.0
    validate_step: float = 0.0


class TimedDiscovery(CertificateDiscovery):
    """Discovery that also times the validation step as a whole (the worker thread hop included)."""

    spent = Spent()

    async def _answer(self, step: Step, address: DirectAddress, at: datetime, session: LdapSession) -> Answer:
        if not isinstance(step, ValidateCertificates):
            return await super()._answer(step, address, at, session)
        started = time.perf_counter()
        try:
            return await super()._answer(step, address, at, session)
        finally:
            self.spent.validate_step += time.perf_counter() - started


class TimedDns(DnsClient):
    """The real DNS client, with the time of each call added to :attr:`spent`."""

    spent = Spent()

    async def cert(self, name: str) -> DnsAnswer:
        started = time.perf_counter()
        try:
            return await super().cert(name)
        finally:
            self.spent.dns += time.perf_counter() - started

    async def srv(self, name: str) -> DnsAnswer:
        started = time.perf_counter()
        try:
            return await super().srv(name)
        finally:
            self.spent.dns += time.perf_counter() - started

    async def addresses(self, host: str) -> AddressAnswer:
        started = time.perf_counter()
        try:
            return await super().addresses(host)
        finally:
            self.spent.dns += time.perf_counter() - started


class TimedTrust:
    """A ``RecipientTrust`` that times the one it wraps."""

    def __init__(self, trust: StoreTrust, spent: Spent) -> None:
        self.trust = trust
        self.spent = spent

    def validate_recipient(
        self, certificate: Certificate, *, recipient: DirectAddress, intermediates: Sequence[Certificate] = (),
        at: datetime, policy: SecurityPolicy,
    ) -> PathVerdict:
        started = time.perf_counter()
        try:
            return self.trust.validate_recipient(
                certificate, recipient=recipient, intermediates=intermediates, at=at, policy=policy
            )
        finally:
            self.spent.validate += time.perf_counter() - started


def time_parsing(spent: Spent) -> None:
    """Time every CERT RDATA decoding (the certificate parse) done by the plan from now on."""
    decode = discovery_core.decode_cert_rdata

    def timed(rdata: bytes) -> CertRecord:
        started = time.perf_counter()
        try:
            return decode(rdata)
        finally:
            spent.parse += time.perf_counter() - started

    discovery_core.decode_cert_rdata = timed  # the plan looks it up at call time


@dataclass(frozen=True)
class Kind:
    """One kind of lookup: its addresses, the outcome expected, and the DNS messages it needs at least.

    :ivar messages: the (name, type) questions asked in order; ``tcp`` when the answer exceeds 512 bytes.
    """

    label: str
    addresses: tuple[str, ...]
    outcome: Outcome
    minimum: int
    questions: Callable[[str], Sequence[tuple[str, str, bool]]]


def _b64(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def bare_round_trips(server: BindServer, questions: Sequence[tuple[str, str, bool]]) -> None:
    """The DNS messages of one lookup, sent as they go on the wire (UDP; TCP after a truncated answer)."""
    for name, rdtype, truncates in questions:
        query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), use_edns=False)
        answer = dns.query.udp(query, server.host, port=server.port, timeout=2.0, ignore_trailing=True)
        if truncates:
            assert answer.flags & dns.flags.TC
            dns.query.tcp(query, server.host, port=server.port, timeout=2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=200, help="addresses per kind for the cold figures")
    parser.add_argument("--warm", type=int, default=20000, help="warm lookups timed")
    parser.add_argument("--quick", action="store_true", help="20 addresses per kind, 2000 warm lookups")
    args = parser.parse_args()
    count = 20 if args.quick else args.addresses
    warm_count = 2000 if args.quick else args.warm

    root = create_ca("Bench Discovery Root", at=AT - timedelta(days=1))
    domains = {"ab": f"ab.{ZONE}", "db": f"db.{ZONE}", "none": f"none.{ZONE}"}
    ab = [f"u{i}@{domains['ab']}" for i in range(count)]
    db = [f"u{i}@{domains['db']}" for i in range(count)]
    none = [f"u{i}@{domains['none']}" for i in range(count)]
    print(f"issuing {len(ab) + 1} RSA-2048 certificates ...", flush=True)
    records = [f"{domains['none']} IN MX 10 mail.{ZONE}.\n", "mail IN A 127.0.0.1\n"]
    for address in ab:
        cert = issue_certificate(root, at=AT, address=address).certificate
        records.append(f"{DirectAddress.parse(address).dns_name()} IN CERT PKIX 0 0 {_b64(cert.der)}\n")
    domain_cert = issue_certificate(root, at=AT, domain=domains["db"]).certificate
    records.append(f"{domains['db']}. IN CERT PKIX 0 0 {_b64(domain_cert.der)}\n")

    kinds = [
        Kind(
            "address-bound in DNS", tuple(ab), Outcome.FOUND, 2,
            lambda a: [(DirectAddress.parse(a).dns_name(), "CERT", True)],
        ),
        Kind(
            "domain-bound in DNS", tuple(db), Outcome.FOUND, 3,
            lambda a: [(DirectAddress.parse(a).dns_name(), "CERT", False), (domains["db"] + ".", "CERT", True)],
        ),
        Kind(
            "nothing published", tuple(none), Outcome.NOT_FOUND, 3,
            lambda a: [
                (DirectAddress.parse(a).dns_name(), "CERT", False),
                (domains["none"] + ".", "CERT", False),
                ("_ldap._tcp." + domains["none"] + ".", "SRV", False),
            ],
        ),
    ]

    store = TrustStore(outgoing=(TrustAnchor(root.certificate, "bench-root.pem"),), revocation=RevocationMode.OFF)
    trust = StoreTrust(store)
    spent = Spent()
    time_parsing(spent)
    with run_named({ZONE: "".join(records)}) as server:
        dns = DnsClient(server.address, timeout=2.0, lifetime=5.0)
        timed_dns = TimedDns(server.address, timeout=2.0, lifetime=5.0)
        timed_dns.spent = spent
        cold_discovery = TimedDiscovery(dns=timed_dns, trust=TimedTrust(trust, spent))
        cold_discovery.spent = spent
        cache = DiscoveryCache(max_entries=100_000)
        warm_discovery = CertificateDiscovery(dns=dns, trust=trust, cache=cache)

        async def cold(addresses: Sequence[str]) -> tuple[float, list[DiscoveryResult]]:
            results = []
            started = time.perf_counter()
            for address in addresses:
                results.append(await cold_discovery.lookup(address, at=AT))
            return time.perf_counter() - started, results

        print(f"\ncold: {count} distinct addresses per kind, no cache, named on {server.host}:{server.port}")
        print(f"{'lookup':<24} {'per s':>8} {'ms each':>8} {'bare RTT ms':>12} {'queries':>8} {'minimum':>8}  check")
        needless = False
        breakdown: list[tuple[str, float, float, Spent]] = []  # label, total s, bare s, spent (per lookup)
        for kind in kinds:
            bare_round_trips(server, kind.questions(kind.addresses[0]))  # warm up the sockets' code paths
            spent.dns = spent.parse = spent.validate = spent.validate_step = 0.0
            elapsed, results = asyncio.run(cold(kind.addresses))
            n = len(kind.addresses)
            per_lookup = Spent(spent.dns / n, spent.parse / n, spent.validate / n, spent.validate_step / n)
            breakdown.append((kind.label, elapsed / n, 0.0, per_lookup))
            outcomes = {r.outcome for r in results}
            assert outcomes == {kind.outcome}, (kind.label, outcomes, results[0].explain())
            started = time.perf_counter()
            for address in kind.addresses:
                bare_round_trips(server, kind.questions(address))
            bare = (time.perf_counter() - started) / len(kind.addresses)
            label, total, _, per = breakdown[-1]
            breakdown[-1] = (label, total, bare, per)
            queries = statistics.fmean(r.queries for r in results)
            ok = all(r.queries == kind.minimum for r in results)
            needless = needless or not ok
            print(
                f"{kind.label:<24} {len(results) / elapsed:>8.0f} {1000 * elapsed / len(results):>8.2f} "
                f"{1000 * bare:>12.2f} {queries:>8.2f} {kind.minimum:>8}  {'ok' if ok else 'NEEDLESS QUERIES'}"
            )

        print("\ncold breakdown: ms per lookup, measured inside the lookups above")
        print(
            f"{'lookup':<24} {'total':>7} {'dns':>7} {'parse':>7} {'validate':>8} {'hop':>7} {'other':>7} "
            f"{'bare RTT':>9} {'total/RTT':>9}"
        )
        for label, total, bare, per in breakdown:
            hop = per.validate_step - per.validate
            other = total - per.dns - per.parse - per.validate_step
            print(
                f"{label:<24} {1000 * total:>7.3f} {1000 * per.dns:>7.3f} {1000 * per.parse:>7.3f} "
                f"{1000 * per.validate:>8.3f} {1000 * hop:>7.3f} {1000 * other:>7.3f} {1000 * bare:>9.3f} "
                f"{total / bare:>9.2f}"
            )

        # warm: every address looked up once (filling the cache), then timed one lookup at a time
        everything = [DirectAddress.parse(a) for kind in kinds for a in kind.addresses]

        async def fill_and_time() -> tuple[list[float], list[float]]:
            for address in everything:
                await warm_discovery.lookup(address, at=AT)
            lookup_ns: list[float] = []
            for n in range(warm_count):
                address = everything[n % len(everything)]
                started = time.perf_counter_ns()
                result = await warm_discovery.lookup(address, at=AT)
                lookup_ns.append(time.perf_counter_ns() - started)
                assert result.from_cache
            get_ns: list[float] = []
            for n in range(warm_count):
                address = everything[n % len(everything)]
                started = time.perf_counter_ns()
                cache.get(address, AT)
                get_ns.append(time.perf_counter_ns() - started)
            return lookup_ns, get_ns

        lookup_ns, get_ns = asyncio.run(fill_and_time())

    print(f"\nwarm: {warm_count} lookups over {len(everything)} cached addresses")
    print(f"{'measurement':<28} {'per s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for label, samples in (("lookup (cache hit)", lookup_ns), ("DiscoveryCache.get", get_ns)):
        mean = statistics.fmean(samples)
        print(
            f"{label:<28} {1e9 / mean:>10.0f} {_percentile(samples, 0.5) / 1e6:>8.4f} "
            f"{_percentile(samples, 0.99) / 1e6:>8.4f}"
        )

    p99 = _percentile(lookup_ns, 0.99) / 1e6
    print("\ntargets (information, not asserted)")
    verdict = "PASS" if p99 < WARM_P99_TARGET_MS else "MISS"
    print(f"  warm lookup p99 under {WARM_P99_TARGET_MS} ms: {p99:.4f} ms  {verdict}")
    print(f"  cold: queries per lookup = the minimum (no needless queries): {'PASS' if not needless else 'MISS'}")
    for label, total, bare, per in breakdown:
        parts = {
            "the DNS client over the bare round trips (async resolver, message parsing)": per.dns - bare,
            "certificate parsing": per.parse,
            "trust validation": per.validate,
            "the hop to the validation thread and back": per.validate_step - per.validate,
            "the rest (plan, event loop, result)": total - per.dns - per.parse - per.validate_step,
        }
        largest = max(parts, key=lambda part: parts[part])
        verdict = "PASS" if total <= COLD_ROUND_TRIP_FACTOR * bare else "MISS"
        print(
            f"  cold = the round trips (at most {COLD_ROUND_TRIP_FACTOR:g}x), {label}: {1000 * total:.2f} ms vs "
            f"{1000 * bare:.2f} ms bare, {total / bare:.1f}x  {verdict}; most of the rest: {largest} "
            f"{1000 * parts[largest]:.2f} ms"
        )


if __name__ == "__main__":
    main()
