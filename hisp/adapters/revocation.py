"""Bounded fetching of CRLs, OCSP responses and AIA issuer certificates for path validation (AS-20, CP-2).

:class:`BoundedFetcherBackend` is a pyhanko-certvalidator ``FetcherBackend`` (and the core's
:class:`~hisp.core.trust.RevocationFetcher`): :func:`hisp.core.trust.validate` opens one session per
validation and hands its fetchers to certvalidator. Why not certvalidator's own backends: the requests
backend reads response bodies without a size limit and needs ``asyncio.to_thread``; neither bounds the
total time of one validation. Here every request is bounded:

* **per request**: :func:`hisp.adapters.http.fetch`: ``timeout`` seconds for connect, request and reads
  together (a server that accepts and never answers, or trickles, is cut off), and at most
  ``max_crl_bytes`` / ``max_ocsp_bytes`` / ``max_certificate_bytes`` bytes;
* **per validation**: ``total_timeout`` seconds for all requests of one session (later requests get what
  is left, then fail at once), and :class:`~pyhanko_certvalidator.fetchers.api.FetchLimits` for the number
  of requests, of AIA certificate requests (the depth of chasing issuers) and of URLs per certificate;
* **between validations**: caches, each bounded to ``cache_size`` entries (least recently used dropped):
  CRLs until their nextUpdate, OCSP responses until their nextUpdate (responses without one for
  ``default_ttl`` seconds), AIA certificates for ``certificate_ttl`` seconds, and failures for
  ``failure_ttl`` seconds, so that a dead or hung revocation server costs one timeout per
  ``failure_ttl``, not one per message.

The requests are synchronous inside the fetchers' coroutines: certvalidator runs them one after the other
on the validation's private loop (:func:`hisp.core.trust._run_with_io`), so nothing outlives the
validation. OCSP requests are POSTed (RFC 6960 appendix A.1) without a nonce, so that cached answers stay
usable. ``clock`` (default: the system clock, aware UTC) decides cache freshness.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from asn1crypto import crl as asn1_crl
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from pyhanko_certvalidator.authority import Authority
from pyhanko_certvalidator.errors import CertificateFetchError, CRLFetchError, OCSPFetchError
from pyhanko_certvalidator.fetchers import CertificateFetcher, CRLFetcher, FetcherBackend, Fetchers, OCSPFetcher
from pyhanko_certvalidator.fetchers.api import FetchLimits
from pyhanko_certvalidator.fetchers.common_utils import (
    enumerate_delivery_point_urls,
    format_ocsp_request,
    gather_aia_issuer_urls,
    process_ocsp_response_data,
    unpack_cert_content,
)
from pyhanko_certvalidator.revinfo.archival import FRESHNESS_FALLBACK_VALIDITY_DEFAULT
from pyhanko_certvalidator.util import get_ocsp_urls, get_relevant_crl_dps, issuer_serial

from hisp.adapters import http
from hisp.core.trust import FetchRecord, RevocationEvidence
from hisp.errors import ConfigError, HispError

__all__ = [
    "DEFAULT_LIMITS",
    "BoundedFetcherBackend",
    "RevocationSession",
]

#: Request counts per validation: a Direct path has at most 5 issuers (hisp.core.trust.MAX_ISSUERS), each
#: with a CRL and an OCSP responder, and an AIA chase of at most as many certificates.
DEFAULT_LIMITS = FetchLimits(max_requests=24, max_cert_requests=6, max_aia_urls_per_object=2)

_K = TypeVar("_K")
_V = TypeVar("_V")

_FETCH_ERRORS = (HispError, ValueError, TypeError, LookupError, OverflowError)


class _Remembered(HispError):
    """A failure answered from the failure cache (no request made)."""


def _datetimes(value: Any) -> Iterable[datetime]:
    """Every datetime in asn1crypto native values (nested dicts, lists, tuples)."""
    if isinstance(value, datetime):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _datetimes(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _datetimes(item)


@dataclass(frozen=True)
class _CRLEntry:
    """A cached CRL, its nextUpdate, and the dates validation may compare its time with.

    :ivar times: thisUpdate, nextUpdate (or thisUpdate plus certvalidator's fallback when absent) and
        any other date of the CRL outside its entries.
    :ivar revocations: per revoked serial number, the dates of its entries (revocationDate, invalidityDate).
    """

    crl: asn1_crl.CertificateList
    until: datetime | None
    times: tuple[datetime, ...]
    revocations: dict[int, tuple[datetime, ...]] = field(repr=False)

    @classmethod
    def of(cls, crl: asn1_crl.CertificateList) -> _CRLEntry:
        tbs = crl["tbs_cert_list"]
        revoked = tbs["revoked_certificates"].native or []
        by_serial: dict[int, list[datetime]] = {}
        for item in revoked:
            by_serial.setdefault(item["user_certificate"], []).extend(_datetimes(item))
        native = {k: tbs[k].native for k in ("this_update", "next_update", "crl_extensions")}
        times = list(_datetimes(native))
        this_update, next_update = native["this_update"], native["next_update"]
        if isinstance(this_update, datetime) and next_update is None:
            times.append(this_update + FRESHNESS_FALLBACK_VALIDITY_DEFAULT)
        until = next_update if isinstance(next_update, datetime) else None
        return cls(crl, until, tuple(times), {k: tuple(v) for k, v in by_serial.items()})

    def times_for(self, serial: int) -> tuple[datetime, ...]:
        """The CRL's dates and those of the entries for ``serial``."""
        return self.times + self.revocations.get(serial, ())


def _ocsp_times(response: asn1_ocsp.OCSPResponse) -> tuple[datetime, ...]:
    """Every date of an OCSP response validation may compare its time with (RFC 6960 section 4.2.1):
    producedAt, thisUpdate, nextUpdate (or certvalidator's fallback), revocationTime, and the validity of
    the certificates it carries (a delegated responder's)."""
    basic = response["response_bytes"]["response"].parsed
    times = list(_datetimes(basic["tbs_response_data"].native))
    for single in basic["tbs_response_data"]["responses"]:
        if not single["next_update"]:
            times.append(single["this_update"].native + FRESHNESS_FALLBACK_VALIDITY_DEFAULT)
    for cert in basic["certs"] or ():
        times.extend(_datetimes(cert["tbs_certificate"]["validity"].native))
    return tuple(times)


class _Cache(Generic[_K, _V]):
    """A small, thread-safe LRU map whose entries expire (by the caller's notion of now).

    Every entry put gets a new version number (never reused by this cache), so that a verdict that relied
    on an entry can later ask whether that very entry is still there (:meth:`version`).
    """

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[_K, tuple[_V, float, int]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()
        self._versions = itertools.count(1)

    def get(self, key: _K, now: float) -> _V | None:
        found = self.get_versioned(key, now)
        return None if found is None else found[0]

    def get_versioned(self, key: _K, now: float) -> tuple[_V, int] | None:
        """The live value of ``key`` and its version, or None (an expired entry is dropped)."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if now >= item[1]:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[0], item[2]

    def peek(self, key: _K, now: float) -> tuple[_V, int] | None:
        """The live value of ``key`` and its version, or None; without LRU or expiry side effects."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None or now >= item[1] else (item[0], item[2])

    def put(self, key: _K, value: _V, until: float) -> int:
        """Store ``value`` until the caller's ``until``; returns the entry's new version."""
        with self._lock:
            version = next(self._versions)
            self._items[key] = (value, until, version)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
            return version

    def drop(self, key: _K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class _Budget:
    """Request counters and the deadline of one validation."""

    limits: FetchLimits
    deadline: float
    requests: int = 0
    certificate_requests: int = 0

    def charge(self, kind: str) -> float:
        """Count one request; the seconds it may take. :raises HispError: a limit or the deadline is reached."""
        limits = self.limits
        if limits.max_requests is not None and self.requests >= limits.max_requests:
            raise HispError(f"fetch limit of {limits.max_requests} requests per validation reached")
        if kind == "certificate":
            if limits.max_cert_requests is not None and self.certificate_requests >= limits.max_cert_requests:
                raise HispError(f"fetch limit of {limits.max_cert_requests} issuer certificate requests reached")
            self.certificate_requests += 1
        self.requests += 1
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise HispError("time budget of the validation used up")
        return left

    def cap(self, urls: Iterable[str]) -> list[str]:
        found = list(dict.fromkeys(urls))
        limit = self.limits.max_aia_urls_per_object
        return found if limit is None else found[:limit]


class RevocationSession:
    """The fetchers of one validation, their budget, and the record of what they did.

    Made by :meth:`BoundedFetcherBackend.open_session`; implements :class:`hisp.core.trust.FetchSession`.

    Spec: AS-20 (revocation source in the verdict).
    """

    def __init__(self, backend: BoundedFetcherBackend) -> None:
        self._backend = backend
        self._budget = _Budget(backend.limits, time.monotonic() + backend.total_timeout)
        self._records: list[FetchRecord] = []
        self._lock = threading.Lock()
        # what a verdict reached with this session relied on (see evidence())
        self._dependencies: list[tuple[str, Any, int]] = []
        self._times: list[datetime] = []
        self._reusable = True
        self._fetchers = Fetchers(
            ocsp_fetcher=_OCSPFetcher(self), crl_fetcher=_CRLFetcher(self), cert_fetcher=_CertificateFetcher(self)
        )

    @property
    def fetchers(self) -> Fetchers:
        """certvalidator's fetchers for this validation."""
        return self._fetchers

    def records(self) -> tuple[FetchRecord, ...]:
        """Every request made or answered from cache, in order.

        :returns: the records.
        """
        with self._lock:
            return tuple(self._records)

    def evidence(self) -> RevocationEvidence | None:
        """What the validation relied on, for the verdict cache of :func:`hisp.core.trust.validate`.

        The dependencies are the backend's cache entries read or written (CRLs, OCSP responses, AIA
        certificates, remembered failures), each with its version; the times are every date in those
        answers that validation may compare with its time (thisUpdate, nextUpdate, revocation dates of the
        certificates asked about, validity of fetched certificates).

        :returns: the evidence, or None when the verdict must not be reused: an answer was used that the
            backend did not keep (a CRL already past its nextUpdate, ``failure_ttl`` 0), or a failure
            happened afresh (its text differs from the remembered failure a later validation would see).

        Spec: AS-20 (revocation caching until nextUpdate).
        """
        with self._lock:
            if not self._reusable:
                return None
            return RevocationEvidence(
                self._backend.cache_id,
                tuple(self._dependencies),
                tuple(self._times),
                self._backend._monotonic(),
            )

    def _depend(self, cache: str, key: Any, version: int | None, times: Iterable[datetime] = ()) -> None:
        """Note that an answer of the backend's ``cache`` entry ``key`` (None: not kept) was used."""
        with self._lock:
            if version is None:
                self._reusable = False
            else:
                self._dependencies.append((cache, key, version))
            self._times.extend(times)

    def _record(self, kind: str, url: str, ok: bool, detail: str, *, reusable: bool = True) -> None:
        with self._lock:
            self._records.append(FetchRecord(kind, url, ok, detail))
            self._reusable = self._reusable and reusable

    def _get(self, kind: str, url: str, max_bytes: int, accept: str, data: bytes | None = None) -> http.FetchResult:
        """One bounded request; failures (and their cached memory) raise HispError."""
        backend = self._backend
        failure = backend._failures.get_versioned((kind, url), backend._monotonic())
        if failure is not None:
            self._depend("failure", (kind, url), failure[1])
            raise _Remembered(f"{failure[0]} (remembered for {backend.failure_ttl:g} s)")
        left = self._budget.charge(kind)
        try:
            result = backend._request(
                url,
                timeout=min(backend.timeout, left),
                max_bytes=max_bytes,
                accept=accept,
                data=data,
                content_type=None if data is None else "application/ocsp-request",
            )
            if result.body is None:
                raise HispError(f"{url}: empty answer ({result.status})")
        except HispError as exc:
            if backend.failure_ttl > 0:
                backend._failures.put((kind, url), exc.message, backend._monotonic() + backend.failure_ttl)
            raise
        return result


class _CRLFetcher(CRLFetcher):
    def __init__(self, session: RevocationSession) -> None:
        self._session = session
        self._by_cert: dict[Any, list[asn1_crl.CertificateList]] = {}

    def _one(self, url: str, serial: int) -> asn1_crl.CertificateList:
        session, backend = self._session, self._session._backend
        cached = backend._crls.get_versioned(url, backend._monotonic())
        if cached is not None and (cached[0].until is None or backend.clock() < cached[0].until):
            session._depend("crl", url, cached[1], cached[0].times_for(serial))
            session._record("crl", url, True, "cached")
            return cached[0].crl
        try:
            result = session._get("crl", url, backend.max_crl_bytes, "application/pkix-crl")
            assert result.body is not None
            data = result.body
            if asn1_pem.detect(data):
                _, _, data = asn1_pem.unarmor(data)
            crl = asn1_crl.CertificateList.load(data)
            next_update = crl["tbs_cert_list"]["next_update"].native
            entry = _CRLEntry.of(crl)  # parses the entries fully now: fail here, not later
        except _FETCH_ERRORS as exc:
            detail = exc.message if isinstance(exc, HispError) else f"not a CRL: {exc}"
            session._record("crl", url, False, detail, reusable=isinstance(exc, _Remembered))
            raise CRLFetchError(f"CRL {url}: {detail}") from None
        until = next_update if isinstance(next_update, datetime) else None
        ttl = backend.default_ttl if until is None else max(0.0, (until - backend.clock()).total_seconds())
        version = backend._crls.put(url, entry, backend._monotonic() + ttl) if ttl > 0 else None
        session._depend("crl", url, version, entry.times_for(serial))
        session._record("crl", url, True, "fetched")
        return crl

    async def fetch(self, cert: Any, *, use_deltas: Any = None) -> Iterable[asn1_crl.CertificateList]:
        key = issuer_serial(cert)
        if key in self._by_cert:
            return self._by_cert[key]
        urls = [
            url
            for point in get_relevant_crl_dps(cert, use_deltas=bool(use_deltas))
            for url in enumerate_delivery_point_urls(point)
        ]
        found: list[asn1_crl.CertificateList] = []
        last: CRLFetchError | None = None
        serial = cert.serial_number
        for url in self._session._budget.cap(urls):
            try:
                found.append(self._one(url, serial))
            except CRLFetchError as exc:
                last = exc
        if not found and last is not None:
            raise last
        self._by_cert[key] = found
        return found

    def fetched_crls(self) -> Iterable[asn1_crl.CertificateList]:
        return [c for crls in self._by_cert.values() for c in crls]

    def fetched_crls_for_cert(self, cert: Any) -> Iterable[asn1_crl.CertificateList]:
        return self._by_cert[issuer_serial(cert)]


class _OCSPFetcher(OCSPFetcher):
    def __init__(self, session: RevocationSession) -> None:
        self._session = session
        self._responses: dict[Any, asn1_ocsp.OCSPResponse] = {}

    async def fetch(self, cert: Any, authority: Authority) -> asn1_ocsp.OCSPResponse:
        key = (issuer_serial(cert), authority.hashable)
        if key in self._responses:
            return self._responses[key]
        session, backend = self._session, self._session._backend
        urls = session._budget.cap(get_ocsp_urls(cert))
        if not urls:
            raise OCSPFetchError("no OCSP responder URL")
        cached = backend._ocsp.get_versioned(key, backend._monotonic())
        if cached is not None:
            (response, answered_by, times), version = cached
            session._depend("ocsp", key, version, times)
            session._record("ocsp", answered_by, True, "cached")
            self._responses[key] = response
            return response
        request = format_ocsp_request(cert, authority, certid_hash_algo="sha1", request_nonces=False)
        last = "no answer"
        for url in urls:
            try:
                result = session._get("ocsp", url, backend.max_ocsp_bytes, "application/ocsp-response", request.dump())
                assert result.body is not None
                response = process_ocsp_response_data(result.body, ocsp_request=request, ocsp_url=url)
                next_update = _ocsp_next_update(response)
                times = _ocsp_times(response)
            except (*_FETCH_ERRORS, OCSPFetchError) as exc:
                last = exc.message if isinstance(exc, HispError) else f"unusable OCSP answer: {exc}"
                session._record("ocsp", url, False, last, reusable=isinstance(exc, _Remembered))
                continue
            except Exception as exc:  # certvalidator's OCSPValidationError: an error status from the responder
                last = f"OCSP responder error: {exc}"
                session._record("ocsp", url, False, last, reusable=False)
                continue
            ttl = backend.default_ttl if next_update is None else (next_update - backend.clock()).total_seconds()
            kept = backend._ocsp.put(key, (response, url, times), backend._monotonic() + ttl) if ttl > 0 else None
            session._depend("ocsp", key, kept, times)
            session._record("ocsp", url, True, "fetched")
            self._responses[key] = response
            return response
        raise OCSPFetchError(f"OCSP: {last}")

    def fetched_responses(self) -> Iterable[asn1_ocsp.OCSPResponse]:
        return list(self._responses.values())

    def fetched_responses_for_cert(self, cert: Any) -> Iterable[asn1_ocsp.OCSPResponse]:
        target = issuer_serial(cert)
        return [resp for (serial, _), resp in self._responses.items() if serial == target]


def _ocsp_next_update(response: asn1_ocsp.OCSPResponse) -> datetime | None:
    basic = response["response_bytes"]["response"].parsed
    updates = [
        single["next_update"].native for single in basic["tbs_response_data"]["responses"] if single["next_update"]
    ]
    dates = [u for u in updates if isinstance(u, datetime)]
    return min(dates) if dates else None


class _CertificateFetcher(CertificateFetcher):
    def __init__(self, session: RevocationSession) -> None:
        self._session = session
        self._fetched: dict[bytes, asn1_x509.Certificate] = {}

    def _certs(self, url: str) -> list[asn1_x509.Certificate]:
        session, backend = self._session, self._session._backend
        cached = backend._certificates.get_versioned(url, backend._monotonic())
        if cached is not None:
            (certs, times), version = cached
            session._depend("certificate", url, version, times)
            session._record("certificate", url, True, "cached")
            return certs
        try:
            result = session._get("certificate", url, backend.max_certificate_bytes, "application/pkix-cert")
            assert result.body is not None
            certs = list(unpack_cert_content(result.body, result.content_type, url, True))
            for cert in certs:
                _ = cert.dump(), cert.subject.sha256, cert.public_key.dump()  # parse now, fail here
            times = tuple(_datetimes([cert["tbs_certificate"]["validity"].native for cert in certs]))
        except _FETCH_ERRORS as exc:
            detail = exc.message if isinstance(exc, HispError) else f"not a certificate: {exc}"
            session._record("certificate", url, False, detail, reusable=isinstance(exc, _Remembered))
            raise CertificateFetchError(f"AIA {url}: {detail}") from None
        version = backend._certificates.put(url, (certs, times), backend._monotonic() + backend.certificate_ttl)
        session._depend("certificate", url, version, times)
        session._record("certificate", url, True, "fetched")
        return certs

    async def _issuers(self, urls: Iterable[str]) -> AsyncGenerator[asn1_x509.Certificate, None]:
        for url in self._session._budget.cap(urls):
            try:
                certs = self._certs(url)
            except CertificateFetchError:
                continue  # as certvalidator's own fetchers: try the next URL, then give up on the path
            for cert in certs:
                self._fetched[cert.dump()] = cert
                yield cert

    def fetch_cert_issuers(self, cert: Any) -> AsyncGenerator[asn1_x509.Certificate, None]:
        return self._issuers(gather_aia_issuer_urls(cert))

    def fetch_crl_issuers(self, certificate_list: Any) -> AsyncGenerator[asn1_x509.Certificate, None]:
        return self._issuers(certificate_list.issuer_cert_urls)

    def fetched_certs(self) -> Iterable[asn1_x509.Certificate]:
        return list(self._fetched.values())


def _system_clock() -> datetime:
    return datetime.now(UTC)


class BoundedFetcherBackend(FetcherBackend):
    """CRL, OCSP and AIA fetching with bounded time and size, and caches shared by all validations.

    :param timeout: seconds for one request (connect, send, every read), e.g. 5.
    :param total_timeout: seconds for all requests of one validation together.
    :param limits: request counts per validation (default :data:`DEFAULT_LIMITS`).
    :param max_crl_bytes: largest CRL accepted, in bytes (default 10 MiB).
    :param max_ocsp_bytes: largest OCSP response accepted, in bytes (default 64 KiB).
    :param max_certificate_bytes: largest AIA answer accepted, in bytes (default 256 KiB).
    :param cache_size: entries kept in each cache (CRLs, OCSP responses, certificates, failures).
    :param default_ttl: seconds to keep a CRL or OCSP response that has no nextUpdate.
    :param certificate_ttl: seconds to keep AIA certificates.
    :param failure_ttl: seconds to remember that a URL failed (0 to retry every time).
    :param clock: the current time, aware UTC (decides whether a cached CRL or OCSP answer is past its
        nextUpdate).
    :param request: the request function (default :func:`hisp.adapters.http.fetch`, same signature).
    :param monotonic: seconds of a monotonic clock for cache lifetimes (default :func:`time.monotonic`;
        the per-validation time budget always uses the real one).
    :raises ConfigError: a time, size or count is not positive (``failure_ttl`` may be 0).

    Spec: AS-20 (CRL and OCSP with connect and read timeouts, caching until nextUpdate; AIA bounded in
    size, time and depth, cached), CP-2; RFC 5280 section 4.2.2.1, RFC 6960 appendix A.1.
    """

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        total_timeout: float = 15.0,
        limits: FetchLimits = DEFAULT_LIMITS,
        max_crl_bytes: int = 10 * 1024 * 1024,
        max_ocsp_bytes: int = 64 * 1024,
        max_certificate_bytes: int = 256 * 1024,
        cache_size: int = 512,
        default_ttl: float = 300.0,
        certificate_ttl: float = 3600.0,
        failure_ttl: float = 60.0,
        clock: Callable[[], datetime] = _system_clock,
        request: Callable[..., http.FetchResult] = http.fetch,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        positive = (timeout, total_timeout, max_crl_bytes, max_ocsp_bytes, max_certificate_bytes, cache_size)
        if min(positive) <= 0 or default_ttl <= 0 or certificate_ttl <= 0 or failure_ttl < 0:
            raise ConfigError("revocation fetch timeouts, sizes, cache size and lifetimes must be positive")
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.limits = limits
        self.max_crl_bytes = max_crl_bytes
        self.max_ocsp_bytes = max_ocsp_bytes
        self.max_certificate_bytes = max_certificate_bytes
        self.default_ttl = default_ttl
        self.certificate_ttl = certificate_ttl
        self.failure_ttl = failure_ttl
        self.clock = clock
        self._request = request
        self._monotonic = monotonic
        #: identifies this backend's caches in verdict cache keys (random: never an object's identity)
        self.cache_id = os.urandom(16)
        self._crls: _Cache[str, _CRLEntry] = _Cache(cache_size)
        self._ocsp: _Cache[Any, tuple[asn1_ocsp.OCSPResponse, str, tuple[datetime, ...]]] = _Cache(cache_size)
        self._certificates: _Cache[str, tuple[list[asn1_x509.Certificate], tuple[datetime, ...]]] = _Cache(
            cache_size
        )
        self._failures: _Cache[tuple[str, str], str] = _Cache(cache_size)

    def open_session(self) -> RevocationSession:
        """Fetchers for one validation, with a fresh request budget and a ``total_timeout`` deadline.

        :returns: the session (its ``records()`` say what was fetched).

        Spec: AS-20.
        """
        return RevocationSession(self)

    def get_fetchers(self) -> Fetchers:
        """certvalidator's ``FetcherBackend`` API: the fetchers of a new session.

        :returns: the fetchers.
        """
        return self.open_session().fetchers

    async def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""

    def clear(self) -> None:
        """Forget every cached CRL, OCSP response, certificate and failure (e.g. after a CA incident)."""
        for cache in (self._crls, self._ocsp, self._certificates, self._failures):
            cache.clear()

    def is_current(self, evidence: RevocationEvidence, *, short_lived: bool = False) -> bool:
        """Whether a verdict reached with ``evidence`` may be reused now (the freshness contract).

        True when ``evidence`` came from this backend and every cache entry it relied on is still in the
        cache, unexpired, and the very same entry (same version): a validation now would be answered with
        exactly the data the verdict was reached with. A CRL counts as expired from its nextUpdate by
        ``clock`` on (as the CRL fetcher decides); OCSP answers, AIA certificates and failures by their
        cache lifetimes. ``short_lived`` (a soft-fail "unknown" verdict) also requires that at most
        ``failure_ttl`` seconds have passed since the evidence was taken.

        :param evidence: from :meth:`RevocationSession.evidence`.
        :param short_lived: bound the reuse to ``failure_ttl`` seconds.
        :returns: True when the verdict may be reused.

        Spec: AS-20 (caching until nextUpdate; soft mode).
        """
        if evidence.fetcher != self.cache_id:
            return False
        now = self._monotonic()
        if short_lived and now >= evidence.taken + self.failure_ttl:
            return False
        for cache, key, version in evidence.dependencies:
            if cache == "crl":
                crl = self._crls.peek(key, now)
                if crl is None or crl[1] != version or (crl[0].until is not None and self.clock() >= crl[0].until):
                    return False
                continue
            found = (
                self._ocsp.peek(key, now)
                if cache == "ocsp"
                else self._certificates.peek(key, now)
                if cache == "certificate"
                else self._failures.peek(key, now)
            )
            if found is None or found[1] != version:
                return False
        return True

    def cached_counts(self) -> dict[str, int]:
        """How many entries each cache holds (for tests and metrics).

        :returns: counts for ``crl``, ``ocsp``, ``certificate`` and ``failure``.
        """
        return {
            "crl": len(self._crls),
            "ocsp": len(self._ocsp),
            "certificate": len(self._certificates),
            "failure": len(self._failures),
        }
