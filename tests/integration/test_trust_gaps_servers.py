"""Trust gaps that need a real loopback HTTP server: the bounds of AIA caIssuers chasing (AS-20) and the
verdict cache across a trust bundle refresh (TB-3, TB-4, AS-21).

Every server is :func:`hisp.testing.http.serve_http` on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import AT
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from pyhanko_certvalidator.fetchers.api import FetchLimits

from hisp.adapters import http
from hisp.adapters.revocation import DEFAULT_LIMITS, BoundedFetcherBackend
from hisp.adapters.truststores import TrustStores
from hisp.addresses import HealthDomain
from hisp.config import parse_config
from hisp.core import trust
from hisp.core.certs import Certificate, Credential
from hisp.core.devca import Issued, create_ca, issue_certificate
from hisp.core.policy import Direction, RevocationMode
from hisp.core.trust import TrustAnchor, TrustStore, TrustVerdict, validate
from hisp.errors import HispError, InputError, TrustError
from hisp.testing.bundles import make_p7b
from hisp.testing.http import LoopbackHTTPServer, serve_http

# AIA answers are cached by the real monotonic clock; validation runs at the real time, as in
# tests/integration/test_revocation.py.
NOW = datetime.now(UTC).replace(microsecond=0)
PEM = {"Content-Type": "application/x-pem-file"}
# the client hangs up on an oversized answer: the server must not wait for a next request on that connection
BIG = {**PEM, "Connection": "close"}
DER = {"Content-Type": "application/pkix-cert"}


def aia_ca(name: str, issuer: Issued, aia_url: str) -> Issued:
    """An intermediate CA signed by ``issuer`` whose authorityInfoAccess caIssuers points at ``aia_url``.

    :func:`hisp.core.devca.create_ca` makes CAs without AIA; a chain reachable only by AIA, link after link,
    needs intermediates that name where their own issuer is.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ski = issuer.certificate.subject_key_identifier
    assert ski is not None
    builder = (
        cx509.CertificateBuilder()
        .subject_name(cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.certificate.x509.subject)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(cx509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(cx509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(cx509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(cx509.AuthorityKeyIdentifier(ski, None, None), critical=False)
        .add_extension(
            cx509.AuthorityInformationAccess(
                [
                    cx509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS, cx509.UniformResourceIdentifier(aia_url)
                    )
                ]
            ),
            critical=False,
        )
    )
    cert = Certificate.from_x509(builder.sign(issuer.private_key, hashes.SHA256()))
    return Issued(Credential(cert, key, (issuer.certificate, *issuer.credential.chain)))


@dataclass(frozen=True)
class AiaWorld:
    server: LoopbackHTTPServer
    root: Issued
    inter: Issued

    def store(self) -> TrustStore:
        """The root alone as incoming anchor, no intermediates anywhere, revocation off (AIA still chased)."""
        return TrustStore(incoming=(TrustAnchor(self.root.certificate, "root.pem"),), revocation=RevocationMode.OFF)

    def leaf(self, name: str, aia_path: str, issuer: Issued | None = None) -> Certificate:
        return issue_certificate(
            issuer or self.inter, at=NOW, address=f"{name}@direct.example.org", aia_url=self.server.url(aia_path)
        ).certificate

    def validate(self, leaf: Certificate, backend: BoundedFetcherBackend) -> TrustVerdict:
        return validate(leaf, store=self.store(), direction=Direction.INCOMING, at=NOW, revocation=backend)


@pytest.fixture(scope="module")
def aia() -> Iterator[AiaWorld]:
    with serve_http() as server:
        root = create_ca("AIA Bounds Root", at=NOW)
        yield AiaWorld(server, root, create_ca("AIA Bounds Intermediate", at=NOW, issuer=root))


class Recorder:
    """The backend's request function (``BoundedFetcherBackend(request=...)``): the real
    :func:`hisp.adapters.http.fetch`, with every call's URL, byte limit and error kept."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, HispError | None]] = []

    def __call__(self, url: str, **options: Any) -> http.FetchResult:
        try:
            result = http.fetch(url, **options)
        except HispError as exc:
            self.calls.append((url, options["max_bytes"], exc))
            raise
        self.calls.append((url, options["max_bytes"], None))
        return result


def requests_for(server: LoopbackHTTPServer, *paths: str) -> int:
    return sum(r.path in paths for r in server.requests)


# -- AIA caIssuers: time ------------------------------------------------------------------------------


@pytest.mark.timeout(20)  # a regression that waits on the server is stopped here, not by the suite
def test_hanging_aia_server_ends_untrusted_within_the_time_bound(aia: AiaWorld) -> None:
    """AS-20 (AIA caIssuers bounded in time): an AIA server that accepts and never answers costs one
    request timeout, and the validation ends "untrusted", well under 10 s (the server hangs until the
    test ends)."""
    aia.server.set_route("/hang-inter.cer", hang=True)
    leaf = aia.leaf("aia-hang", "/hang-inter.cer")
    recorder = Recorder()
    backend = BoundedFetcherBackend(timeout=0.5, total_timeout=1.0, request=recorder)
    started = time.monotonic()
    with pytest.raises(TrustError) as caught:
        aia.validate(leaf, backend)
    elapsed = time.monotonic() - started
    assert caught.value.reason == "untrusted"
    assert elapsed < 10
    assert requests_for(aia.server, "/hang-inter.cer") == 1  # it was asked, and waited for
    [(url, _, error)] = recorder.calls
    assert url == aia.server.url("/hang-inter.cer")
    assert error is not None and "no answer within 0.5 s" in error.message


# -- AIA caIssuers: size ------------------------------------------------------------------------------


def _padded_pem(cert: Certificate, size: int) -> bytes:
    """A usable PEM answer (the issuer's certificate, repeated) of more than ``size`` bytes."""
    one = cert.to_pem()
    return one * (size // len(one) + 1)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-content-length"])
def test_oversized_aia_answer_is_refused_and_ends_untrusted(aia: AiaWorld, declared: bool) -> None:
    """AS-20 (AIA caIssuers bounded in size): an AIA answer over the 256 KiB limit is refused, whether
    the server declares its length or not, although it holds the right issuer: the leaf stays untrusted.
    The same answer under a larger limit completes the path (so the size alone decided)."""
    limit = BoundedFetcherBackend().max_certificate_bytes
    assert limit == 256 * 1024
    path = f"/big-{declared}.cer"
    body = _padded_pem(aia.inter.certificate, limit)
    assert len(body) > limit
    aia.server.set_route(path, body=body, headers=BIG, omit_length=not declared)
    leaf = aia.leaf(f"aia-big-{declared}", path)
    recorder = Recorder()
    with pytest.raises(TrustError) as caught:
        aia.validate(leaf, BoundedFetcherBackend(timeout=2, request=recorder))
    assert caught.value.reason == "untrusted"
    [(url, max_bytes, error)] = recorder.calls
    assert url == aia.server.url(path) and max_bytes == limit
    assert isinstance(error, InputError) and f"limit of {limit} bytes" in error.message
    # control: the very same answer is a good AIA answer when the limit allows it
    roomy = BoundedFetcherBackend(timeout=2, max_certificate_bytes=4 * limit)
    assert aia.validate(leaf, roomy).chain == (leaf, aia.inter.certificate, aia.root.certificate)


def test_oversized_aia_answer_is_named_in_the_verdict(aia: AiaWorld) -> None:
    """AS-20 (explainable decisions; AIA bounded in size): the refusal of an oversized AIA answer shows in
    the failed verdict, so that an operator can tell "the AIA server sent too much" from "no issuer"."""
    limit = BoundedFetcherBackend().max_certificate_bytes
    aia.server.set_route("/big-named.cer", body=_padded_pem(aia.inter.certificate, limit), headers=BIG)
    leaf = aia.leaf("aia-big-named", "/big-named.cer")
    with pytest.raises(TrustError) as caught:
        aia.validate(leaf, BoundedFetcherBackend(timeout=2))
    assert caught.value.reason == "untrusted"
    verdict = caught.value.context["verdict"]
    shown = " ".join([caught.value.message, verdict.explain(), str(verdict.to_json())])
    assert "/big-named.cer" in shown and f"{limit} bytes" in shown


# -- AIA caIssuers: depth -----------------------------------------------------------------------------


def _aia_chain(aia: AiaWorld, tag: str, links: int) -> tuple[Certificate, list[Issued], list[str]]:
    """A leaf whose ``links`` intermediates are reachable only by AIA, one after the other.

    The first intermediate is issued by the anchor (root); each further one names the previous one's AIA
    path; the leaf names the last. Returns the leaf, the intermediates (nearest the root first) and their
    AIA paths in the order validation asks for them (the leaf's issuer first).
    """
    cas: list[Issued] = [create_ca(f"AIA {tag} 1", at=NOW, issuer=aia.root)]
    paths = [f"/{tag}-1.cer"]
    for depth in range(2, links + 1):
        cas.append(aia_ca(f"AIA {tag} {depth}", cas[-1], aia.server.url(paths[-1])))
        paths.append(f"/{tag}-{depth}.cer")
    for ca, path in zip(cas, paths, strict=True):
        aia.server.set_route(path, body=ca.certificate.der, headers=DER)
    leaf = aia.leaf(f"aia-{tag}", paths[-1], issuer=cas[-1])
    return leaf, cas, list(reversed(paths))


def test_aia_chain_deeper_than_the_fetch_limit_ends_untrusted(aia: AiaWorld) -> None:
    """AS-20 (AIA caIssuers bounded in depth): a path that needs 3 AIA fetches, under a limit of 2 issuer
    certificate requests (max_cert_requests), stops after 2 requests and ends untrusted; a limit of 3
    completes the same path (4 issuers, within the 5 allowed: the fetch limit alone decided)."""
    leaf, cas, paths = _aia_chain(aia, "deep3", 3)
    tight = FetchLimits(max_requests=24, max_cert_requests=2, max_aia_urls_per_object=2)
    with pytest.raises(TrustError) as caught:
        aia.validate(leaf, BoundedFetcherBackend(timeout=2, limits=tight))
    assert caught.value.reason == "untrusted"
    assert [requests_for(aia.server, p) for p in paths] == [1, 1, 0]  # the third link was never asked for
    enough = FetchLimits(max_requests=24, max_cert_requests=3, max_aia_urls_per_object=2)
    verdict = aia.validate(leaf, BoundedFetcherBackend(timeout=2, limits=enough))
    assert verdict.chain == (leaf, *(c.certificate for c in reversed(cas)), aia.root.certificate)


def test_aia_chase_stops_at_the_default_limit_of_six_certificates(aia: AiaWorld) -> None:
    """AS-20 (AIA bounded in depth), with the gateway's DEFAULT_LIMITS (max_cert_requests=6): a chain of 7
    intermediates reachable only by AIA is chased for 6 of them, never the 7th, and ends untrusted."""
    assert DEFAULT_LIMITS.max_cert_requests == 6
    leaf, _, paths = _aia_chain(aia, "deep7", 7)
    started = time.monotonic()
    with pytest.raises(TrustError) as caught:
        aia.validate(leaf, BoundedFetcherBackend(timeout=2))
    assert caught.value.reason == "untrusted"
    assert [requests_for(aia.server, p) for p in paths] == [1, 1, 1, 1, 1, 1, 0]
    assert time.monotonic() - started < 10


# -- the verdict cache across a bundle refresh ---------------------------------------------------------

DOMAIN = HealthDomain.parse("direct.gaps.example")


@dataclass
class BundleWorld:
    server: LoopbackHTTPServer
    stores: TrustStores
    leaf: Certificate
    issuer: Issued
    other: Issued
    when: datetime

    def serve(self, *cas: Issued) -> None:
        self.server.set_route("/community.p7b", body=make_p7b([c.certificate for c in cas]))

    def refresh(self) -> None:
        """The gateway's path: fetch the due bundle, and rebuild the stores when it changed."""
        self.when += timedelta(hours=2)  # past the 3600 s interval
        outcome = self.stores.refresh(self.when)["community"]
        assert outcome.status.value == "updated", outcome.reason

    def validate(self) -> TrustVerdict:
        """Always at the same time AT: only the store differs between validations."""
        store = self.stores.store_for(DOMAIN)
        return validate(self.leaf, store=store, direction=Direction.INCOMING, at=AT)


@pytest.fixture
def bundles(tmp_path: Path) -> Iterator[BundleWorld]:
    issuer = create_ca("Bundle Gap Anchor", at=AT - timedelta(days=1))
    other = create_ca("Bundle Gap Other", at=AT - timedelta(days=1))
    leaf = issue_certificate(issuer, at=AT, address="dr.b@direct.partner.example").certificate
    with serve_http() as server:
        text = f"""
[trust]
revocation = "off"
cache_dir = "cache"
[[trust.bundle]]
name = "community"
url = "{server.url("/community.p7b")}"
refresh = 3600
domains = ["{DOMAIN}"]
directions = ["incoming"]
"""
        config = parse_config(text, base=tmp_path).trust
        yield BundleWorld(server, TrustStores(config, now=AT), leaf, issuer, other, AT)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the path checks validation really runs (a verdict answered from the cache runs none)."""
    runs: list[int] = []
    real: Callable[..., Any] = trust._check_path

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(trust, "_check_path", counted)
    return runs


def test_cached_trusted_verdict_is_dropped_when_the_bundle_loses_the_anchor(
    bundles: BundleWorld, checks: list[int]
) -> None:
    """TB-3/TB-4 with AS-21 (performance: the verdict cache is invalidated on bundle change): a leaf
    trusted through a bundle anchor, its verdict cached; the bundle is refreshed from the server without
    that anchor: the next validation, at the same time, is "untrusted"."""
    bundles.serve(bundles.issuer, bundles.other)
    bundles.refresh()
    first = bundles.validate()
    assert first.trusted and first.anchor == TrustAnchor(bundles.issuer.certificate, "bundle community")
    assert bundles.validate() == first and len(checks) == 1  # the second answer came from the cache

    bundles.serve(bundles.other)  # the anchor is removed from the bundle
    bundles.refresh()
    with pytest.raises(TrustError) as caught:
        bundles.validate()
    assert caught.value.reason == "untrusted" and len(checks) == 2


def test_cached_untrusted_verdict_is_dropped_when_the_bundle_gains_the_anchor(
    bundles: BundleWorld, checks: list[int]
) -> None:
    """TB-3/TB-4 with AS-21 (verdict cache invalidated on bundle change), the reverse: a leaf refused
    ("untrusted") while the bundle lacks its anchor, the refusal cached; the refreshed bundle adds the
    anchor: the next validation, at the same time, is trusted through it."""
    bundles.serve(bundles.other)
    bundles.refresh()
    for _ in range(2):
        with pytest.raises(TrustError) as caught:
            bundles.validate()
        assert caught.value.reason == "untrusted"
    assert len(checks) == 1  # the second refusal came from the cache

    bundles.serve(bundles.other, bundles.issuer)  # the anchor is added
    bundles.refresh()
    verdict = bundles.validate()
    assert verdict.trusted and verdict.anchor == TrustAnchor(bundles.issuer.certificate, "bundle community")
    assert len(checks) == 2
