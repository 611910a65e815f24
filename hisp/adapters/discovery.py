"""Certificate discovery, the I/O side: drive the pure plan against DNS, LDAP and HTTP, judge, cache.

:class:`CertificateDiscovery` runs one :class:`~hisp.core.discovery.DiscoveryPlan` per lookup: it answers
each step with the :class:`~hisp.adapters.dns.DnsClient`, the :class:`~hisp.adapters.ldap.LdapClient`, the
bounded HTTP fetch (IPKIX/URI records) and the agent's ``RecipientTrust`` seam, and returns the
:class:`~hisp.core.discovery.DiscoveryResult`. :meth:`CertificateDiscovery.discover` raises
:class:`~hisp.errors.CertificateNotFound` (permanent) or :class:`~hisp.errors.DiscoveryUnavailable`
(transient) when there is nothing to encrypt to, with the result in the error's ``context["result"]``.

Configured certificates (:class:`LocalCertificates`) are consulted first for their address or domain.
Results are cached (:class:`DiscoveryCache`) for the TTL the plan computed: the DNS TTL, the configured LDAP
TTL, a shorter one for "not found", never for "unavailable" (CD-10). A cached result is not used once a
chosen certificate has expired. The cache is per process; clear it when the trust configuration changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

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

__all__ = ["CertificateDiscovery", "DiscoveryCache", "LocalCertificates"]

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


class DiscoveryCache:
    """Discovery results by address, each until its TTL runs out; bounded, thread- and task-safe.

    :param max_entries: most results kept; the least recently used goes first.
    :param clock: monotonic seconds (injected in tests).

    Spec: CD-10.
    """

    def __init__(self, max_entries: int = 10_000, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ConfigError("the discovery cache needs room for at least one entry")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[DirectAddress, tuple[float, DiscoveryResult]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, address: DirectAddress, at: datetime) -> DiscoveryResult | None:
        """The cached result for ``address``, unless expired or a chosen certificate expired by ``at``.

        :param address: the recipient.
        :param at: the time of the new lookup (aware).
        :returns: the result marked ``from_cache``, or None.
        """
        now = self._clock()
        with self._lock:
            entry = self._entries.get(address)
            if entry is None:
                return None
            expires, result = entry
            if now >= expires or any(c.not_after < at for c in result.chosen):
                del self._entries[address]
                return None
            self._entries.move_to_end(address)
        return dataclasses.replace(result, from_cache=True)

    def put(self, result: DiscoveryResult) -> None:
        """Keep ``result`` for ``result.ttl`` seconds (not at all when 0 or unavailable)."""
        if result.ttl <= 0 or result.outcome is Outcome.UNAVAILABLE:
            return
        expires = self._clock() + result.ttl
        with self._lock:
            self._entries[result.address] = (expires, result)
            self._entries.move_to_end(result.address)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (call after the trust configuration changed)."""
        with self._lock:
            self._entries.clear()


Fetcher = Callable[[str], bytes]


class CertificateDiscovery:
    """Finds and judges the certificates of Direct recipients.

    :param dns: the DNS client (its ``require_dnssec`` applies to the plan too).
    :param trust: the trust seam that judges each discovered certificate (outgoing anchors).
    :param ldap: the LDAP client; default one built on ``dns``.
    :param policy: the security policy for path validation.
    :param local: configured certificates, consulted first.
    :param cache: the result cache; None disables caching.
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
        if self.cache is not None:
            cached = self.cache.get(recipient, at)
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
            self.cache.put(result)
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

