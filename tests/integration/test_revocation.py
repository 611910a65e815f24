"""Revocation and AIA through hisp.adapters.revocation against a real HTTP server on loopback (AS-20, CP-2)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from conftest import fixture_bytes

from hisp.adapters.revocation import BoundedFetcherBackend
from hisp.core.certs import Certificate
from hisp.core.devca import Issued, create_ca, issue_certificate
from hisp.core.policy import Direction, RevocationMode
from hisp.core.trust import RevocationStatus, TrustAnchor, TrustStore, TrustVerdict, validate
from hisp.errors import TrustError
from hisp.testing.http import LoopbackHTTPServer, serve_http
from hisp.testing.revocation import build_crl, build_ocsp_response

# The CRLs and OCSP answers are issued at the real time (the adapter's cache compares nextUpdate with
# the clock), and validation runs at that same time.
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class World:
    server: LoopbackHTTPServer
    root: Issued
    inter: Issued

    def store(self, mode: RevocationMode) -> TrustStore:
        return TrustStore(incoming=(TrustAnchor(self.root.certificate, "root.pem"),), revocation=mode)

    def leaf(self, name: str, **urls: str) -> Certificate:
        full = {k: self.server.url(v) for k, v in urls.items()}
        return issue_certificate(self.inter, at=NOW, address=f"{name}@direct.example.org", **full).certificate


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with serve_http() as server:
        root = create_ca("Revocation Root", at=NOW)
        yield World(server, root, create_ca("Revocation Intermediate", at=NOW, issuer=root))


def run(world: World, leaf: Certificate, mode: RevocationMode, backend: BoundedFetcherBackend) -> TrustVerdict:
    return validate(
        leaf,
        store=world.store(mode),
        direction=Direction.INCOMING,
        intermediates=[world.inter.certificate],
        at=NOW,
        revocation=backend,
    )


@pytest.mark.parametrize("mode", [RevocationMode.HARD, RevocationMode.SOFT], ids=["hard", "soft"])
def test_crl_good_and_revoked(world: World, mode: RevocationMode) -> None:
    good, bad = world.leaf("good", crl_url="/inter.crl"), world.leaf("bad", crl_url="/inter.crl")
    world.server.set_route("/inter.crl", body=build_crl(world.inter, at=NOW, revoked=[bad]))
    backend = BoundedFetcherBackend(timeout=2)
    verdict = run(world, good, mode, backend)
    assert verdict.revocation.status is RevocationStatus.GOOD
    assert verdict.revocation.sources == (world.server.url("/inter.crl"),) and not verdict.warnings
    with pytest.raises(TrustError) as caught:  # a revoked answer rejects in every mode
        run(world, bad, mode, backend)
    assert caught.value.reason == "revoked" and "CRL indicates" in caught.value.message
    failed = caught.value.context["verdict"]
    assert (
        failed.revocation.status is RevocationStatus.REVOKED and failed.revocation.sources == verdict.revocation.sources
    )
    assert failed.chain[-1] == world.root.certificate  # the path was built; revocation failed it
    # the CRL is cached until its nextUpdate: one request for both validations
    assert backend.cached_counts()["crl"] == 1


def test_ocsp_revoked_and_good(world: World) -> None:
    revoked = world.leaf("ocsp-revoked", ocsp_url="/ocsp-revoked")
    good = world.leaf("ocsp-good", ocsp_url="/ocsp-good")
    kind = {"Content-Type": "application/ocsp-response"}
    world.server.set_route(
        "/ocsp-revoked", body=build_ocsp_response(revoked, world.inter, at=NOW, revoked=True), headers=kind
    )
    world.server.set_route("/ocsp-good", body=build_ocsp_response(good, world.inter, at=NOW), headers=kind)
    backend = BoundedFetcherBackend(timeout=2)
    with pytest.raises(TrustError) as caught:
        run(world, revoked, RevocationMode.SOFT, backend)
    assert caught.value.reason == "revoked" and "OCSP" in caught.value.message
    assert caught.value.context["verdict"].revocation.sources == (world.server.url("/ocsp-revoked"),)
    verdict = run(world, good, RevocationMode.HARD, backend)
    assert verdict.revocation.status is RevocationStatus.GOOD
    assert verdict.revocation.sources == (world.server.url("/ocsp-good"),)
    posts = [r for r in world.server.requests if r.path == "/ocsp-good"]
    assert posts and posts[-1].method == "POST" and posts[-1].headers["Content-Type"] == "application/ocsp-request"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("mode", [RevocationMode.HARD, RevocationMode.SOFT], ids=["hard-rejects", "soft-warns"])
def test_crl_server_that_never_answers_is_bounded(world: World, mode: RevocationMode) -> None:
    leaf = world.leaf(f"hung-{mode.value}", crl_url=f"/hang-{mode.value}.crl")
    world.server.set_route(f"/hang-{mode.value}.crl", hang=True)
    backend = BoundedFetcherBackend(timeout=0.3, total_timeout=1.0)
    started = time.monotonic()
    if mode is RevocationMode.HARD:
        with pytest.raises(TrustError) as caught:
            run(world, leaf, mode, backend)
        assert caught.value.reason == "revocation unknown"
        verdict = caught.value.context["verdict"]
    else:
        verdict = run(world, leaf, mode, backend)
        assert verdict.trusted and any("accepted in soft mode" in w for w in verdict.warnings)
    assert time.monotonic() - started < 5  # bounded by the timeouts, not by the server
    assert verdict.revocation.status is RevocationStatus.UNKNOWN
    assert "no answer within 0.3 s" in verdict.revocation.detail
    # the failure is remembered: the next message does not ask the hung server again (counted, not timed)
    if mode is RevocationMode.SOFT:
        asked = sum(r.path == f"/hang-{mode.value}.crl" for r in world.server.requests)
        assert asked >= 1
        assert run(world, leaf, mode, backend).revocation.status is RevocationStatus.UNKNOWN
        assert sum(r.path == f"/hang-{mode.value}.crl" for r in world.server.requests) == asked


def test_intermediate_reachable_only_by_aia(world: World) -> None:
    world.server.set_route(
        "/inter.cer", body=world.inter.certificate.der, headers={"Content-Type": "application/pkix-cert"}
    )
    leaf = world.leaf("aia", aia_url="/inter.cer")
    no_fetch = TrustStore(incoming=(TrustAnchor(world.root.certificate, "root.pem"),), revocation=RevocationMode.OFF)
    with pytest.raises(TrustError) as caught:  # without fetching, no path
        validate(leaf, store=no_fetch, direction=Direction.INCOMING, at=NOW)
    assert caught.value.reason == "untrusted"
    backend = BoundedFetcherBackend(timeout=2)
    verdict = validate(leaf, store=no_fetch, direction=Direction.INCOMING, at=NOW, revocation=backend)
    assert verdict.chain == (leaf, world.inter.certificate, world.root.certificate)
    assert backend.cached_counts()["certificate"] == 1


def test_java_ri_crl_fixture_is_parsed_and_served() -> None:
    # certs.crl of the Java RI: not for our PKI, so the path check must say "unknown", never "good".
    with serve_http() as server:
        server.set_route("/certs.crl", body=fixture_bytes("interop/java-ri/certs.crl"))
        root = create_ca("Other Root", at=NOW)
        leaf = issue_certificate(root, at=NOW, address="x@direct.example.org", crl_url=server.url("/certs.crl"))
        store = TrustStore(incoming=(TrustAnchor(root.certificate, "root.pem"),), revocation=RevocationMode.SOFT)
        verdict = validate(
            leaf.certificate,
            store=store,
            direction=Direction.INCOMING,
            at=NOW,
            revocation=BoundedFetcherBackend(timeout=2),
        )
    assert verdict.trusted and verdict.revocation.status is RevocationStatus.UNKNOWN and verdict.warnings
