"""The verdict cache of trust.validate gives exactly what a fresh validation gives, revocation on or off.

CRLs and OCSP answers are served by a real HTTP server on loopback and change between validations (good,
revoked, unreachable); the fetcher's wall clock and monotonic clock are test clocks that move forward, so
cached CRLs, OCSP answers and remembered failures expire exactly when the test says. Freshness contract
tested here (see hisp.core.trust, "verdicts remembered", and BoundedFetcherBackend.is_current): a cached
verdict is reused only while every fetcher cache entry it relied on is still the same entry and fresh (a
CRL until its nextUpdate by the fetcher's clock; OCSP, AIA and remembered failures until their cache
lifetimes; a soft-fail "unknown" verdict at most failure_ttl seconds), and only for an ``at`` in the same
window between the dates validation compares ``at`` with. So a change on the server is seen by the first
validation after the fetcher would fetch again, never later, cached verdicts or not.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from hisp.adapters.revocation import BoundedFetcherBackend
from hisp.core import trust
from hisp.core.certs import Certificate
from hisp.core.devca import Issued, create_ca, issue_certificate
from hisp.core.policy import Direction, RevocationMode
from hisp.errors import HispError
from hisp.testing.http import LoopbackHTTPServer, serve_http
from hisp.testing.revocation import build_crl, build_ocsp_response

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OCSP = {"Content-Type": "application/ocsp-response"}
FAILURE_TTL = 60.0


@dataclass
class Clock:
    """The fetcher's wall clock and monotonic clock, moved by the test."""

    wall: datetime = T0
    mono: float = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


@dataclass
class World:
    server: LoopbackHTTPServer
    root: Issued
    inter: Issued
    leaves: dict[str, Certificate]
    clock: Clock = field(default_factory=Clock)
    #: the dates of the CRLs and OCSP answers served so far (for choosing validation times)
    served: set[datetime] = field(default_factory=set)

    def backend(self) -> BoundedFetcherBackend:
        return BoundedFetcherBackend(
            timeout=2,
            failure_ttl=FAILURE_TTL,
            clock=lambda: self.clock.wall,
            monotonic=lambda: self.clock.mono,
        )

    def serve_crl(self, path: str, state: str, next_update: timedelta) -> None:
        at = self.clock.wall
        if state == "down":
            self.server.set_route(path, status=500, body=b"down")
            return
        revoked = [self.leaves["crl"], self.leaves["both"]] if state == "revoked" else []
        self.server.set_route(path, body=build_crl(self.inter, at=at, revoked=revoked, next_update=next_update))
        self.served.update({at - timedelta(minutes=5), at + next_update, at - timedelta(days=1)})

    def serve_ocsp(self, path: str, leaf: str, state: str, next_update: timedelta) -> None:
        at = self.clock.wall
        if state == "down":
            self.server.set_route(path, status=500, body=b"down")
            return
        body = build_ocsp_response(
            self.leaves[leaf], self.inter, at=at, revoked=state == "revoked", next_update=next_update
        )
        self.server.set_route(path, body=body, headers=OCSP)
        self.served.update({at - timedelta(minutes=5), at + next_update, at - timedelta(days=1)})


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with serve_http() as server:
        root = create_ca("Cache Root", at=T0, not_before=T0 - timedelta(days=30), not_after=T0 + timedelta(days=400))
        inter = create_ca(
            "Cache Intermediate",
            at=T0,
            issuer=root,
            not_before=T0 - timedelta(days=20),
            not_after=T0 + timedelta(days=60),
        )

        def leaf(name: str, days: int, **urls: str) -> Certificate:
            return issue_certificate(
                inter,
                at=T0,
                address=f"{name}@direct.example.org",
                not_before=T0 - timedelta(days=2),
                not_after=T0 + timedelta(days=days),
                **{k: server.url(v) for k, v in urls.items()},
            ).certificate

        leaves = {
            "plain": leaf("plain", 40),
            "crl": leaf("crl", 10, crl_url="/inter.crl"),
            "ocsp": leaf("ocsp", 20, ocsp_url="/ocsp-leaf"),
            "both": leaf("both", 90, crl_url="/inter.crl", ocsp_url="/ocsp-both"),
        }
        yield World(server, root, inter, leaves)


def outcome(world: World, leaf: str, mode: RevocationMode, backend: BoundedFetcherBackend | None, at: datetime) -> Any:
    """Everything a caller can see of one validation: the verdict (explain and JSON) or the error."""
    store = trust.TrustStore(incoming=(trust.TrustAnchor(world.root.certificate, "root.pem"),), revocation=mode)
    try:
        verdict = trust.validate(
            world.leaves[leaf],
            store=store,
            direction=Direction.INCOMING,
            intermediates=[world.inter.certificate],
            at=at,
            revocation=backend,
        )
    except HispError as exc:
        failed = exc.context["verdict"]
        context = {k: v for k, v in exc.context.items() if k != "verdict"}
        return ("error", type(exc).__name__, exc.message, getattr(exc, "reason", None), context, failed.explain(),
                failed.to_json(), failed.at)
    return ("ok", verdict.explain(), verdict.to_json(), verdict.at, verdict)


def fresh(*args: Any) -> Any:
    """:func:`outcome` with the verdict cache bypassed (nothing read from it, nothing stored)."""
    saved = trust._VERDICTS
    trust._VERDICTS = trust._VerdictCache(0, 0)
    try:
        return outcome(*args)
    finally:
        trust._VERDICTS = saved


class Hits:
    """Counts the verdict cache's answers."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.statuses: set[str] = set()
        real = trust._VerdictCache.lookup

        def lookup(cache: trust._VerdictCache, *args: Any) -> Any:
            found = real(cache, *args)
            if found is not None:
                self.count += 1
                self.statuses.add(found.verdict.revocation.status.value)
            return found

        monkeypatch.setattr(trust._VerdictCache, "lookup", lookup)


def _times(world: World) -> list[datetime]:
    moments = {world.clock.wall, *world.served}
    for cert in (world.root.certificate, world.inter.certificate, *world.leaves.values()):
        moments.update({cert.not_before, cert.not_after})
    edges = set()
    for moment in moments:
        for seconds in (0, 1, 300):
            for sign in (-1, 1):
                edges.add(moment + sign * timedelta(seconds=seconds))
                edges.add(moment + sign * timedelta(seconds=seconds, microseconds=1))
    return sorted(edges)


def test_cached_verdicts_equal_fresh_validation_while_revocation_data_changes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    hits = Hits(monkeypatch)
    trust._VERDICTS.clear()
    backend = world.backend()
    rng = random.Random(7)
    eastern = timezone(timedelta(hours=-5))
    next_updates = [timedelta(hours=1), timedelta(hours=6), timedelta(days=2)]
    world.serve_crl("/inter.crl", "good", timedelta(hours=6))
    world.serve_ocsp("/ocsp-leaf", "ocsp", "good", timedelta(hours=6))
    world.serve_ocsp("/ocsp-both", "both", "good", timedelta(hours=6))
    # several validations at one validation time and state between changes, so that cached verdicts are used
    for _ in range(350):
        if rng.random() < 0.08:
            world.serve_crl("/inter.crl", rng.choice(["good", "revoked", "down"]), rng.choice(next_updates))
        if rng.random() < 0.08:
            world.serve_ocsp("/ocsp-leaf", "ocsp", rng.choice(["good", "revoked", "down"]), rng.choice(next_updates))
        if rng.random() < 0.05:
            world.serve_ocsp("/ocsp-both", "both", rng.choice(["good", "revoked", "down"]), rng.choice(next_updates))
        if rng.random() < 0.1:
            world.clock.advance(rng.choice([1, 59, 61, 1800, 3600, 7200, 86400]))
        if rng.random() < 0.01:
            backend.clear()
        leaf = rng.choice(list(world.leaves))
        mode = rng.choice(list(RevocationMode))
        fetcher = None if rng.random() < 0.1 else backend
        at = rng.choice(_times(world)) if rng.random() < 0.7 else world.clock.wall
        if rng.random() < 0.2:
            at = at.astimezone(eastern)
        fresh(world, leaf, mode, fetcher, at)  # settles the fetcher's caches (a first failure, a new CRL)
        for _ in range(3):
            cached = outcome(world, leaf, mode, fetcher, at)
            assert cached == fresh(world, leaf, mode, fetcher, at), (leaf, mode, at, world.clock)
    # the cache really answered, with every kind of revocation result
    assert hits.count > 250
    assert hits.statuses >= {"good", "revoked", "unknown", "not checked"}


def _status(result: Any) -> str:
    return result[4].revocation.status.value if result[0] == "ok" else result[6]["revocation"]["status"]


def _requests(world: World, path: str) -> int:
    return sum(1 for r in world.server.requests if r.path == path)


def test_a_revoked_crl_is_seen_by_the_first_validation_after_the_cached_crl_expires(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    hits = Hits(monkeypatch)
    backend = world.backend()
    world.clock = Clock(wall=T0 + timedelta(days=3))
    start = world.clock.wall
    world.serve_crl("/fresh.crl", "good", timedelta(hours=1))
    leaf = issue_certificate(
        world.inter, at=start, address="fresh@direct.example.org", crl_url=world.server.url("/fresh.crl")
    ).certificate
    world.leaves["fresh"] = leaf

    def check(at: datetime) -> Any:
        result = outcome(world, "fresh", RevocationMode.HARD, backend, at)
        assert result == fresh(world, "fresh", RevocationMode.HARD, backend, at)
        return result

    assert _status(check(start)) == "good"
    before = hits.count
    assert _status(check(start)) == "good" and hits.count == before + 1
    # the CA revokes the certificate: the fetcher keeps its CRL until nextUpdate (start + 1 h), so do we
    world.server.set_route(
        "/fresh.crl", body=build_crl(world.inter, at=start + timedelta(minutes=30), revoked=[leaf])
    )
    asked = _requests(world, "/fresh.crl")
    world.clock.advance(3600 - 1e-6)
    assert _status(check(start + timedelta(minutes=40))) == "good"
    assert _requests(world, "/fresh.crl") == asked  # nothing fetched: the cached CRL is still fresh
    # at nextUpdate by the fetcher's clock the CRL is fetched again, and the very next validation says so
    world.clock.advance(1e-6)
    revoked = check(start + timedelta(minutes=40))
    assert revoked[0] == "error" and revoked[3] == "revoked"
    assert _requests(world, "/fresh.crl") == asked + 1
    # revoked answers are remembered too (until that CRL's nextUpdate)
    before = hits.count
    assert check(start + timedelta(minutes=40)) == revoked and hits.count == before + 1


def test_soft_fail_unknown_is_remembered_only_for_the_failure_retry_period(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    hits = Hits(monkeypatch)
    backend = world.backend()
    world.clock = Clock(wall=T0 + timedelta(days=4))
    start = world.clock.wall
    world.server.set_route("/flaky.crl", status=500, body=b"down")
    leaf = issue_certificate(
        world.inter, at=start, address="flaky@direct.example.org", crl_url=world.server.url("/flaky.crl")
    ).certificate
    world.leaves["flaky"] = leaf

    def check() -> Any:
        result = outcome(world, "flaky", RevocationMode.SOFT, backend, start)
        assert result == fresh(world, "flaky", RevocationMode.SOFT, backend, start)
        return result

    first = outcome(world, "flaky", RevocationMode.SOFT, backend, start)  # the failure happens afresh
    assert _status(first) == "unknown" and "500" in first[1]
    before = hits.count
    assert _status(check()) == "unknown" and hits.count == before  # "remembered" text: stored now
    assert _status(check()) == "unknown" and hits.count == before + 1
    # the CRL server comes back and revokes the certificate: unknown until the failure is retried
    world.server.set_route("/flaky.crl", body=build_crl(world.inter, at=start, revoked=[leaf]))
    world.clock.advance(FAILURE_TTL - 1)
    assert _status(check()) == "unknown"
    world.clock.advance(1)
    result = check()
    assert result[0] == "error" and result[3] == "revoked"
    # clearing the fetcher's caches is seen at once
    world.server.set_route("/flaky.crl", body=build_crl(world.inter, at=start))
    assert check()[3] == "revoked"
    backend.clear()
    assert _status(check()) == "good"
