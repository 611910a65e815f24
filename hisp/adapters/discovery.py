"""Certificate discovery, the I/O side: drive the pure plan against DNS, LDAP and HTTP, judge, cache.

:class:`CertificateDiscovery` runs one :class:`~hisp.core.discovery.DiscoveryPlan` per lookup: it answers
each step with the :class:`~hisp.adapters.dns.DnsClient`, the :class:`~hisp.adapters.ldap.LdapClient`, the
bounded HTTP fetch (IPKIX/URI records) and the agent's ``RecipientTrust`` seam, and returns the
:class:`~hisp.core.discovery.DiscoveryResult`. :meth:`CertificateDiscovery.discover` raises
:class:`~hisp.errors.CertificateNotFound` (permanent) or :class:`~hisp.errors.DiscoveryUnavailable`
(transient) when there is nothing to encrypt to, with the result in the error's ``context["result"]``.

Configured certificates (:class:`LocalCertificates`, ``[[discovery.local]]``) are consulted first for their
address or domain. Results are cached (:class:`DiscoveryCache`) for the TTL the plan computed: the DNS TTL,
the configured LDAP TTL (``[discovery] ldap_ttl``), a shorter one for "not found" (``negative_ttl``), never
for "unavailable" (CD-10). A cached result is not used once a chosen certificate has expired.

The gateway uses :class:`SenderDiscovery`, built from ``[discovery]`` by :func:`discovery_from_config` and
:func:`dns_from_config`. Its cache is **in memory, per process, bounded**: at most ``[discovery] cache_size``
results (default 10 000; least recently used dropped first) for all sender domains of the process together.
A result that found one RSA-2048 certificate takes about 13 KiB (measured with tracemalloc), so the default
bound is about 130 MB per process at most. ``hisp serve --workers N`` runs N processes, so a node holds up to
N caches of that size, and a recipient may be looked up once per process before every process has it cached;
nothing is shared between processes or nodes, and nothing is written to the database. Verdicts depend on the
trust anchors: :meth:`SenderDiscovery.clear` (or :meth:`SenderDiscovery.reload`) must be called when the trust
configuration is reloaded (SIGHUP), or verdicts made with the old anchors would be served for up to their TTL
(a day at most).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from hisp.adapters import http
from hisp.adapters.dns import DnsClient
from hisp.adapters.ldap import LdapClient, LdapSession
from hisp.addresses import DirectAddress, HealthDomain
from hisp.core.agent import RecipientTrust
from hisp.core.certs import Certificate
from hisp.core.discovery import (
    Answer,
    CertificateVerdict,
    CertQuery,
    DiscoveryLimits,
    DiscoveryPlan,
    DiscoveryResult,
    FetchAnswer,
    LdapQuery,
    LookupFailure,
    Outcome,
    SrvQuery,
    Step,
    UrlFetch,
    ValidateCertificates,
    Verdicts,
)
from hisp.core.policy import DEFAULT_POLICY, SecurityPolicy
from hisp.errors import (
    CertificateNotFound,
    ConfigError,
    DiscoveryUnavailable,
    HispError,
    PolicyViolation,
    TrustError,
)

if TYPE_CHECKING:  # hisp.config pulls in the SMTP adapters: not needed at run time here
    from hisp.config import DiscoveryConfig, LocalCertificateConfig

__all__ = [
    "CertificateDiscovery",
    "DiscoveryCache",
    "LocalCertificates",
    "SenderDiscovery",
    "discovery_from_config",
    "discovery_limits",
    "dns_from_config",
]

#: Largest certificate fetched for an IPKIX/URI record (bytes): a certificate is a few KiB.
MAX_FETCH_BYTES = 64 * 1024


@dataclass(frozen=True)
class LocalCertificates:
    """Certificates configured for partners reached without discovery, by address or by domain.

    An address's own entry wins over its domain's.

    :ivar by_address: address -> certificates.
    :ivar by_domain: domain -> certificates.

    Spec: CD-10 ("bootstrap store"); issue 4 (local store consulted first).
    """

    by_address: Mapping[DirectAddress, tuple[Certificate, ...]] = dataclasses.field(default_factory=dict)
    by_domain: Mapping[HealthDomain, tuple[Certificate, ...]] = dataclasses.field(default_factory=dict)

    def for_address(self, address: DirectAddress) -> tuple[Certificate, ...]:
        """The configured certificates for ``address`` (its own, else its domain's, else none)."""
        return tuple(self.by_address.get(address) or self.by_domain.get(address.domain) or ())

    @classmethod
    def from_config(cls, entries: Iterable[LocalCertificateConfig]) -> LocalCertificates:
        """The store of the ``[[discovery.local]]`` entries (already read and checked by the configuration).

        :param entries: the entries, each for one address or one domain.
        :returns: the store.

        Spec: issue 4 (local store consulted first; an address's entry wins over its domain's).
        """
        by_address: dict[DirectAddress, tuple[Certificate, ...]] = {}
        by_domain: dict[HealthDomain, tuple[Certificate, ...]] = {}
        for entry in entries:
            if entry.address is not None:
                by_address[entry.address] = by_address.get(entry.address, ()) + entry.certificates
            elif entry.domain is not None:
                by_domain[entry.domain] = by_domain.get(entry.domain, ()) + entry.certificates
        return cls(by_address, by_domain)


class DiscoveryCache:
    """Discovery results by (scope, address), each until its TTL runs out; bounded, thread- and task-safe.

    The scope separates results judged against different anchors (the gateway uses the sender's domain: two
    hosted domains may trust different anchors, AS-21) while one bound covers them all.

    :param max_entries: most results kept, all scopes together; the least recently used goes first.
    :param clock: monotonic seconds (injected in tests).
    :raises ConfigError: ``max_entries`` is below 1.

    Spec: CD-10.
    """

    def __init__(self, max_entries: int = 10_000, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ConfigError("the discovery cache needs room for at least one entry")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[Hashable, DirectAddress], tuple[float, DiscoveryResult]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, address: DirectAddress, at: datetime, *, scope: Hashable = None) -> DiscoveryResult | None:
        """The cached result for ``address``, unless expired or a chosen certificate expired by ``at``.

        :param address: the recipient.
        :param at: the time of the new lookup (aware).
        :param scope: whose result (e.g. the sender's domain); None for the one scope of a plain cache.
        :returns: the result marked ``from_cache``, or None.

        Spec: CD-10.
        """
        now = self._clock()
        key = (scope, address)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, result = entry
            if now >= expires or any(c.not_after < at for c in result.chosen):
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
        return dataclasses.replace(result, from_cache=True)

    @property
    def generation(self) -> int:
        """A number :meth:`clear` changes: a lookup notes it when it starts and hands it to :meth:`put`."""
        with self._lock:
            return self._generation

    def put(self, result: DiscoveryResult, *, scope: Hashable = None, generation: int | None = None) -> None:
        """Keep ``result`` for ``result.ttl`` seconds (not at all when 0 or unavailable).

        :param result: the result of a lookup.
        :param scope: whose result (see :meth:`get`).
        :param generation: :attr:`generation` when the lookup started; a result begun before a :meth:`clear`
            (a trust reload while it ran: its verdicts used the old anchors) is dropped.

        Spec: CD-10 (cache for the TTL); AS-20 (no verdict of removed anchors served); DESIGN.md section 4
        (unavailable is transient: never cached).
        """
        if result.ttl <= 0 or result.outcome is Outcome.UNAVAILABLE:
            return
        expires = self._clock() + result.ttl
        key = (scope, result.address)
        with self._lock:
            if generation is not None and generation != self._generation:
                return
            self._entries[key] = (expires, result)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (call after the trust configuration changed), lookups still running included: what
        they bring back is not kept (:attr:`generation`)."""
        with self._lock:
            self._entries.clear()
            self._generation += 1


Fetcher = Callable[[str], bytes]


class CertificateDiscovery:
    """Finds and judges the certificates of Direct recipients.

    :param dns: the DNS client (its ``require_dnssec`` applies to the plan too).
    :param trust: the trust seam that judges each discovered certificate (outgoing anchors).
    :param ldap: the LDAP client; default one built on ``dns``.
    :param policy: the security policy for path validation.
    :param local: configured certificates, consulted first.
    :param cache: the result cache; None disables caching.
    :param cache_scope: the scope of this discovery's results in ``cache`` (see :class:`DiscoveryCache`).
    :param limits: the plan's bounds.
    :param budget: seconds one lookup may take in all; past it the lookup ends as unavailable.
    :param fetch_timeout: seconds for one IPKIX/URI fetch.
    :param fetcher: ``url -> bytes`` for IPKIX/URI records (default: the bounded HTTP fetch).

    Spec: CD-1 .. CD-10; AS-20 (every discovered certificate validated).
    """

    def __init__(
        self,
        *,
        dns: DnsClient,
        trust: RecipientTrust,
        ldap: LdapClient | None = None,
        policy: SecurityPolicy = DEFAULT_POLICY,
        local: LocalCertificates | None = None,
        cache: DiscoveryCache | None = None,
        cache_scope: Hashable = None,
        limits: DiscoveryLimits | None = None,
        budget: float = 30.0,
        fetch_timeout: float = 5.0,
        fetcher: Fetcher | None = None,
    ) -> None:
        if budget <= 0 or fetch_timeout <= 0:
            raise ConfigError("discovery budget and fetch timeout must be positive")
        self.dns = dns
        self.ldap = ldap or LdapClient(dns)
        self.trust = trust
        self.policy = policy
        self.local = local or LocalCertificates()
        self.cache = cache
        self.cache_scope = cache_scope
        self.limits = limits or DiscoveryLimits()
        self.budget = budget
        self.fetch_timeout = fetch_timeout
        self._fetcher = fetcher or self._http_fetch

    async def discover(self, address: DirectAddress | str, *, at: datetime) -> DiscoveryResult:
        """Find usable certificates for ``address`` or raise.

        :param address: the recipient.
        :param at: the validation time (aware).
        :returns: the result, with at least one chosen certificate.
        :raises CertificateNotFound: nothing valid is published (permanent; ``context["result"]``).
        :raises DiscoveryUnavailable: a server did not answer (transient; ``context["result"]``).
        :raises AddressError: ``address`` is not a valid Direct address.
        :raises ValueError: ``at`` is naive.

        Spec: CD-8, CD-9; DESIGN.md section 4.
        """
        result = await self.lookup(address, at=at)
        if result.outcome is Outcome.UNAVAILABLE:
            raise DiscoveryUnavailable(result.reason, address=str(result.address), result=result)
        if result.outcome is Outcome.NOT_FOUND:
            raise CertificateNotFound(result.reason, address=str(result.address), result=result)
        return result

    async def lookup(self, address: DirectAddress | str, *, at: datetime) -> DiscoveryResult:
        """Run discovery for ``address`` and return the result whatever the outcome.

        :param address: the recipient.
        :param at: the validation time (aware).
        :returns: the result (from the cache when a fresh one is there).
        :raises AddressError: ``address`` is not a valid Direct address.
        :raises ValueError: ``at`` is naive.

        Spec: CD-1 .. CD-10.
        """
        recipient = address if isinstance(address, DirectAddress) else DirectAddress.parse(address)
        generation = None
        if self.cache is not None:
            generation = self.cache.generation
            cached = self.cache.get(recipient, at, scope=self.cache_scope)
            if cached is not None:
                return cached
        plan = DiscoveryPlan(
            recipient, at=at, local=self.local.for_address(recipient),
            require_dnssec=self.dns.require_dnssec, limits=self.limits,
        )
        deadline = time.monotonic() + self.budget
        async with self.ldap.session() as session:
            while (step := plan.next_step()) is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    plan.abort(f"discovery took longer than its budget of {self.budget:g} s")
                    break
                try:
                    answer = await asyncio.wait_for(self._answer(step, recipient, at, session), left)
                except TimeoutError:
                    plan.abort(f"discovery took longer than its budget of {self.budget:g} s")
                    break
                plan.receive(answer)
        result = plan.result()
        if self.cache is not None:
            self.cache.put(result, scope=self.cache_scope, generation=generation)
        return result

    async def _answer(self, step: Step, address: DirectAddress, at: datetime, session: LdapSession) -> Answer:
        try:
            if isinstance(step, CertQuery):
                return await self.dns.cert(step.name)
            if isinstance(step, SrvQuery):
                return await self.dns.srv(step.name)
            if isinstance(step, LdapQuery):
                return await session.search(step.target, step.mail)
            if isinstance(step, UrlFetch):
                return FetchAnswer(await asyncio.to_thread(self._fetcher, step.url))
            return await asyncio.to_thread(self._validate, step, address, at)
        except DiscoveryUnavailable as exc:
            return LookupFailure(
                exc.message, transient=bool(exc.context.get("transient", True)),
                stage=str(exc.context.get("stage", "")), messages=int(exc.context.get("messages", 1)),
            )
        except HispError as exc:  # InputError and the like: the peer's data is wrong, it will not heal
            return LookupFailure(
                exc.message, transient=False, stage=str(exc.context.get("stage", "")),
                messages=int(exc.context.get("messages", 1)),
            )

    def _http_fetch(self, url: str) -> bytes:
        result = http.fetch(url, timeout=self.fetch_timeout, max_bytes=MAX_FETCH_BYTES)
        return result.body or b""

    def _validate(self, step: ValidateCertificates, address: DirectAddress, at: datetime) -> Verdicts:
        items: list[CertificateVerdict] = []
        for cert in step.candidates:
            try:
                verdict = self.trust.validate_recipient(
                    cert, recipient=address, intermediates=step.intermediates, at=at, policy=self.policy
                )
            except (TrustError, PolicyViolation) as exc:
                items.append(CertificateVerdict(cert, None, exc.message))
                continue
            items.append(
                CertificateVerdict(
                    cert, verdict, f"trusted: path to anchor {verdict.anchor.subject} ({verdict.policy_rule})"
                )
            )
        return Verdicts(tuple(items))



# -- from the configuration ([discovery]) ----------------------------------------------------------------


def discovery_limits(config: DiscoveryConfig, base: DiscoveryLimits | None = None) -> DiscoveryLimits:
    """The plan's bounds with the configured cache times (``ldap_ttl``, ``negative_ttl``).

    :param config: the ``[discovery]`` section.
    :param base: the other bounds (default :class:`~hisp.core.discovery.DiscoveryLimits`).
    :returns: the limits.

    Spec: CD-10.
    """
    return dataclasses.replace(base or DiscoveryLimits(), ldap_ttl=config.ldap_ttl, negative_ttl=config.negative_ttl)


def dns_from_config(
    config: DiscoveryConfig, server: tuple[str, int] | None, *, timeout: float = 2.0, lifetime: float = 5.0
) -> DnsClient:
    """The DNS client of discovery: ``server`` (``[relay] dns_server``, None: the system resolver) and DNSSEC.

    :param config: the ``[discovery]`` section (``require_dnssec``).
    :param server: ``(ip, port)`` or None.
    :param timeout: seconds per DNS message.
    :param lifetime: seconds per query, retries and TCP included.
    :returns: the client.
    :raises ConfigError: as :class:`~hisp.adapters.dns.DnsClient`.

    Spec: RFC 4035 section 3.2.3 (AD); issue 4 (optional DNSSEC).
    """
    return DnsClient(server, timeout=timeout, lifetime=lifetime, require_dnssec=config.require_dnssec)


def discovery_from_config(
    config: DiscoveryConfig,
    *,
    dns: DnsClient,
    trust: RecipientTrust,
    policy: SecurityPolicy = DEFAULT_POLICY,
    cache: DiscoveryCache | None = None,
    cache_scope: Hashable = None,
    ldap: LdapClient | None = None,
    fetcher: Fetcher | None = None,
) -> CertificateDiscovery:
    """A :class:`CertificateDiscovery` with the configured local store and cache times.

    :param config: the ``[discovery]`` section.
    :param dns: the DNS client (see :func:`dns_from_config`; its ``require_dnssec`` applies).
    :param trust: the trust seam judging every certificate, the local ones included.
    :param policy: the security policy for path validation.
    :param cache: the result cache (None: no caching).
    :param cache_scope: the scope of the results in ``cache``.
    :param ldap: the LDAP client (default: one on ``dns``).
    :param fetcher: ``url -> bytes`` for IPKIX/URI records (default: bounded HTTP).
    :returns: the discovery.

    Spec: CD-1 .. CD-10; issue 4 (local store, TTLs).
    """
    return CertificateDiscovery(
        dns=dns, trust=trust, ldap=ldap, policy=policy, local=LocalCertificates.from_config(config.local),
        cache=cache, cache_scope=cache_scope, limits=discovery_limits(config), fetcher=fetcher,
    )


class SenderDiscovery:
    """:class:`hisp.ports.CertificateSource` for the gateway: discovery judged against the sender's anchors.

    One bounded in-memory :class:`DiscoveryCache` of ``[discovery] cache_size`` results for the whole process,
    scoped by sender domain (two hosted domains may trust different anchors, AS-21). See the module notes for
    what ``hisp serve --workers N`` means for it.

    :param config: the ``[discovery]`` section.
    :param dns: the DNS client (see :func:`dns_from_config`).
    :param trust_for: the trust seam of a sender domain (outgoing anchors), asked at every lookup.
    :param policy: the security policy for path validation.
    :param ldap: the LDAP client (default: one on ``dns``).
    :param clock: monotonic seconds for the cache (injected in tests).

    Spec: CD-1 .. CD-10; AS-21 (outgoing anchors per domain).
    """

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        dns: DnsClient,
        trust_for: Callable[[HealthDomain], RecipientTrust],
        policy: SecurityPolicy = DEFAULT_POLICY,
        ldap: LdapClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.dns = dns
        self.ldap = ldap or LdapClient(dns)
        self.trust_for = trust_for
        self.policy = policy
        self.cache = DiscoveryCache(config.cache_size, clock=clock)
        self._clock = clock
        self._local = LocalCertificates.from_config(config.local)
        self._limits = discovery_limits(config)

    def discovery(self, sender: HealthDomain) -> CertificateDiscovery:
        """The discovery for messages from ``sender``'s domain (its anchors, the shared cache in its scope).

        :param sender: the sender's health domain.
        :returns: the discovery.
        """
        return CertificateDiscovery(
            dns=self.dns, ldap=self.ldap, trust=self.trust_for(sender), policy=self.policy, local=self._local,
            cache=self.cache, cache_scope=sender, limits=self._limits,
        )

    async def discover(self, sender: HealthDomain, address: DirectAddress, *, at: datetime) -> DiscoveryResult:
        """See :meth:`hisp.ports.CertificateSource.discover`.

        :raises CertificateNotFound: nothing valid is published (permanent, CD-9).
        :raises DiscoveryUnavailable: a server did not answer (transient).
        """
        return await self.discovery(sender).discover(address, at=at)

    def clear(self) -> None:
        """Forget every cached result: call it when the trust configuration is reloaded (SIGHUP).

        Spec: AS-20 (every certificate judged against the anchors in force).
        """
        self.cache.clear()

    def reload(self, config: DiscoveryConfig) -> None:
        """Use a new ``[discovery]`` section (local certificates, cache times, DNSSEC) and clear the cache.

        The cache keeps its size unless ``cache_size`` changed (then a new, empty one is made).

        :param config: the new section, already loaded (validated).
        :raises ConfigError: as :class:`~hisp.adapters.dns.DnsClient` when DNSSEC changed.

        Spec: CD-10; issue 4.
        """
        if config.require_dnssec != self.dns.require_dnssec:
            self.dns = DnsClient(
                self.dns.server, timeout=self.dns.timeout, lifetime=self.dns.lifetime,
                require_dnssec=config.require_dnssec,
            )
            self.ldap = LdapClient(self.dns, self.ldap.settings)
        self._local = LocalCertificates.from_config(config.local)
        self._limits = discovery_limits(config)
        if config.cache_size != self.cache.max_entries:
            self.cache = DiscoveryCache(config.cache_size, clock=self._clock)
        self.config = config
        self.clear()
