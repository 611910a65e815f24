"""Trust bundle refresh against a real HTTP server on loopback (TB-2, TB-3; RFC 7232 conditional requests)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import AT

from hisp.adapters.bundles import BundleRefresher, RefreshStatus, write_atomically
from hisp.adapters.http import fetch
from hisp.core import devca
from hisp.core.certs import Certificate, Credential
from hisp.core.policy import policy_from_name
from hisp.errors import DiscoveryUnavailable, InputError
from hisp.testing.bundles import make_p7b, sign_bundle
from hisp.testing.http import LoopbackHTTPServer, Route, serve_http

POLICY = policy_from_name("direct-1.3")


@pytest.fixture(scope="module")
def material() -> dict[str, object]:
    anchors = [devca.create_ca(f"Refresh Anchor {n}", at=AT - timedelta(days=1)).certificate for n in "ABC"]
    publisher = devca.create_ca("Refresh Publisher CA", at=AT - timedelta(days=1))
    signer = devca.issue_certificate(publisher, at=AT, domain="b.example", usage=devca.KeyUsagePreset.SIGNING)
    return {"anchors": anchors, "signer": signer.credential}


@pytest.fixture
def server() -> LoopbackHTTPServer:
    with serve_http() as running:
        yield running  # type: ignore[misc]


def _signed(material: dict[str, object], anchors: list[Certificate]) -> bytes:
    signer = material["signer"]
    assert isinstance(signer, Credential)
    return sign_bundle(make_p7b(anchors), signer, at=AT)


def _refresher(
    server: LoopbackHTTPServer, cache: Path, material: dict[str, object], **options: object
) -> BundleRefresher:
    signer = material["signer"]
    assert isinstance(signer, Credential)
    options.setdefault("timeout", 2.0)
    return BundleRefresher(
        server.url("/bundle.p7m"),
        cache_dir=cache,
        refresh_interval=3600,
        policy=POLICY,
        signing_certificates=[signer.certificate],
        name="community",
        **options,  # type: ignore[arg-type]
    )


def test_refresh_sequence_keeps_last_good_and_detects_changes(
    server: LoopbackHTTPServer, tmp_path: Path, material: dict[str, object]
) -> None:
    anchors = material["anchors"]
    assert isinstance(anchors, list)
    v1, v2 = _signed(material, anchors[:2]), _signed(material, anchors)
    refresher = _refresher(server, tmp_path, material)

    # 1. first fetch: v1 arrives and is cached with its metadata
    server.set_route("/bundle.p7m", status=200, body=v1, etag='"v1"')
    first = refresher.refresh(AT)
    assert first.status is RefreshStatus.UPDATED, first.reason
    assert set(refresher.current().anchors) == set(anchors[:2])  # type: ignore[union-attr]
    assert refresher.bundle_path.read_bytes() == v1
    meta = json.loads(refresher.metadata_path.read_text())
    assert meta["etag"] == '"v1"' and meta["digest"] == first.bundle.digest  # type: ignore[union-attr]

    # 2. not due within the interval: no request at all
    requests = len(server.requests)
    assert refresher.refresh(AT + timedelta(minutes=5)).status is RefreshStatus.NOT_DUE
    assert len(server.requests) == requests

    # 3. the server fails with 500: the last good bundle stays in force
    server.set_route("/bundle.p7m", status=500, body=b"oops")
    failed = refresher.refresh(AT + timedelta(hours=1))
    assert failed.status is RefreshStatus.KEPT_LAST_GOOD
    assert "500" in (failed.reason or "") and isinstance(failed.error, DiscoveryUnavailable)
    assert refresher.current() is first.bundle and refresher.bundle_path.read_bytes() == v1

    # 4. a changed bundle: updated, cache replaced
    server.set_route("/bundle.p7m", status=200, body=v2, etag='"v2"')
    updated = refresher.refresh(AT + timedelta(hours=2))
    assert updated.status is RefreshStatus.UPDATED
    assert set(refresher.current().anchors) == set(anchors)  # type: ignore[union-attr]
    assert refresher.bundle_path.read_bytes() == v2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind

    # 5. the same bundle again: the conditional request gets 304, nothing is reloaded
    unchanged = refresher.refresh(AT + timedelta(hours=3))
    assert unchanged.status is RefreshStatus.UNCHANGED and unchanged.http_status == 304
    assert server.requests[-1].headers.get("If-None-Match") == '"v2"'
    assert refresher.current() is updated.bundle

    # 6. same bytes without validator support (200): unchanged by checksum, still no reload
    server.set_route("/bundle.p7m", status=200, body=v2)
    same = refresher.refresh(AT + timedelta(hours=4))
    assert same.status is RefreshStatus.UNCHANGED and same.http_status == 200
    assert refresher.current() is updated.bundle


def test_tampered_bundle_keeps_last_good(
    server: LoopbackHTTPServer, tmp_path: Path, material: dict[str, object]
) -> None:
    anchors = material["anchors"]
    assert isinstance(anchors, list)
    good = _signed(material, anchors[:1])
    refresher = _refresher(server, tmp_path, material)
    server.set_route("/bundle.p7m", status=200, body=good)
    assert refresher.refresh(AT).status is RefreshStatus.UPDATED
    tampered = _signed(material, anchors).replace(b"Refresh Anchor C", b"Refresh Anchor Z")
    server.set_route("/bundle.p7m", status=200, body=tampered)
    outcome = refresher.refresh(AT, force=True)
    assert outcome.status is RefreshStatus.KEPT_LAST_GOOD and "signature" in (outcome.reason or "")
    assert refresher.current().anchors == (anchors[0],)  # type: ignore[union-attr]
    assert refresher.bundle_path.read_bytes() == good


def test_hanging_server_returns_within_timeout(
    server: LoopbackHTTPServer, tmp_path: Path, material: dict[str, object]
) -> None:
    anchors = material["anchors"]
    assert isinstance(anchors, list)
    refresher = _refresher(server, tmp_path, material, timeout=0.5)
    server.set_route("/bundle.p7m", status=200, body=_signed(material, anchors))
    first = refresher.refresh(AT)
    server.set_route("/bundle.p7m", hang=True)
    started = time.monotonic()
    outcome = refresher.refresh(AT, force=True)
    elapsed = time.monotonic() - started
    assert outcome.status is RefreshStatus.KEPT_LAST_GOOD and isinstance(outcome.error, DiscoveryUnavailable)
    assert elapsed < 2.0
    assert refresher.current() is first.bundle


def test_oversized_bundle_is_refused(server: LoopbackHTTPServer, tmp_path: Path, material: dict[str, object]) -> None:
    anchors = material["anchors"]
    assert isinstance(anchors, list)
    refresher = _refresher(server, tmp_path, material, max_bytes=4096)
    body = _signed(material, anchors)
    assert len(body) > 4096
    server.set_route("/bundle.p7m", status=200, body=body)
    outcome = refresher.refresh(AT)
    assert outcome.status is RefreshStatus.KEPT_LAST_GOOD and isinstance(outcome.error, InputError)
    assert "exceeds the limit" in (outcome.reason or "")
    assert refresher.current() is None and not refresher.bundle_path.exists()


def test_load_cached_on_start_up(server: LoopbackHTTPServer, tmp_path: Path, material: dict[str, object]) -> None:
    anchors = material["anchors"]
    assert isinstance(anchors, list)
    first = _refresher(server, tmp_path, material)
    server.set_route("/bundle.p7m", status=200, body=_signed(material, anchors), etag='"v1"')
    assert first.refresh(AT).status is RefreshStatus.UPDATED

    restarted = _refresher(server, tmp_path, material)
    loaded = restarted.load_cached(AT + timedelta(days=1))
    assert loaded is not None and loaded.digest == first.current().digest  # type: ignore[union-attr]
    assert restarted.due(AT + timedelta(days=1))
    outcome = restarted.refresh(AT + timedelta(days=1))
    assert outcome.status is RefreshStatus.UNCHANGED and outcome.http_status == 304  # validators restored

    # a corrupted cache is not used: the next fetch is unconditional
    restarted.bundle_path.write_bytes(b"garbage")
    again = _refresher(server, tmp_path, material)
    assert again.load_cached(AT) is None and again.current() is None
    assert again.refresh(AT).status is RefreshStatus.UPDATED
    assert "If-None-Match" not in server.requests[-1].headers


def test_cache_replaced_behind_our_back_drops_validators(
    server: LoopbackHTTPServer, tmp_path: Path, material: dict[str, object]
) -> None:
    """The metadata's ETag belongs to the bytes it was fetched with: other cached bytes make it void."""
    anchors = material["anchors"]
    assert isinstance(anchors, list)
    first = _refresher(server, tmp_path, material)
    server.set_route("/bundle.p7m", status=200, body=_signed(material, anchors), etag='"v1"')
    assert first.refresh(AT).status is RefreshStatus.UPDATED
    first.bundle_path.write_bytes(_signed(material, anchors[:1]))  # another valid bundle, old metadata

    restarted = _refresher(server, tmp_path, material)
    assert restarted.load_cached(AT).anchors == (anchors[0],)  # type: ignore[union-attr]
    assert restarted.refresh(AT).status is RefreshStatus.UPDATED
    assert "If-None-Match" not in server.requests[-1].headers


def test_write_atomically_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "bundle.p7b"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomically(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["bundle.p7b"]
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["bundle.p7b"]


# -- the fetch adapter itself ------------------------------------------------------------------


def test_fetch_redirects_and_progress(server: LoopbackHTTPServer) -> None:
    server.set_route("/a", status=302, headers={"Location": "/b"})
    server.set_route("/b", status=301, headers={"Location": server.url("/c")})
    server.set_route("/c", status=200, body=b"x" * 200_000, headers={"Last-Modified": "Mon, 30 Nov 2026 12:00:00 GMT"})
    seen: list[tuple[int, int | None]] = []
    result = fetch(server.url("/a"), timeout=5, max_bytes=1 << 20, progress=lambda n, t: seen.append((n, t)))
    assert result.status == 200 and result.body == b"x" * 200_000 and result.url == server.url("/c")
    assert result.last_modified == "Mon, 30 Nov 2026 12:00:00 GMT"
    assert seen[0] == (0, 200_000) and seen[-1] == (200_000, 200_000)


def test_fetch_refuses_too_many_redirects_and_bad_schemes(server: LoopbackHTTPServer) -> None:
    for n in range(5):
        server.set_route(f"/r{n}", status=307, headers={"Location": f"/r{n + 1}"})
    with pytest.raises(InputError, match="redirects"):
        fetch(server.url("/r0"), timeout=5, max_bytes=1024)
    server.set_route("/file", status=302, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(InputError, match="only http and https"):
        fetch(server.url("/file"), timeout=5, max_bytes=1024)
    with pytest.raises(InputError, match="only http and https"):
        fetch("ftp://127.0.0.1/x", timeout=5, max_bytes=1024)


@pytest.mark.parametrize(
    ("route", "error"),
    [
        (Route(status=404, body=b"gone"), InputError),
        (Route(status=503), DiscoveryUnavailable),
        (Route(status=429), DiscoveryUnavailable),
        (Route(status=200, body=b"y" * 5000), InputError),  # Content-Length above the cap
        (Route(status=200, body=b"y" * 5000, omit_length=True), InputError),  # cap enforced while reading
    ],
    ids=["404", "503", "429", "oversize-declared", "oversize-streamed"],
)
def test_fetch_errors(server: LoopbackHTTPServer, route: Route, error: type[Exception]) -> None:
    server.set_route("/x", route)
    with pytest.raises(error):
        fetch(server.url("/x"), timeout=5, max_bytes=4096)


def test_fetch_refuses_declared_oversize_before_reading(server: LoopbackHTTPServer) -> None:
    """A Content-Length above the cap is refused at once, without waiting for a (slow) body."""
    server.set_route("/big", status=200, body=b"b" * 5000, trickle=0.05)
    started = time.monotonic()
    with pytest.raises(InputError, match="5000 bytes exceeds"):
        fetch(server.url("/big"), timeout=3, max_bytes=4096)
    assert time.monotonic() - started < 1.0


def test_fetch_connection_refused_is_transient() -> None:
    with serve_http() as running:
        url = running.url("/gone")
    with pytest.raises(DiscoveryUnavailable):
        fetch(url, timeout=2, max_bytes=1024)


def test_fetch_total_time_is_bounded_by_a_slow_server(server: LoopbackHTTPServer) -> None:
    server.set_route("/slow", status=200, body=b"late", delay=3.0)
    started = time.monotonic()
    with pytest.raises(DiscoveryUnavailable):
        fetch(server.url("/slow"), timeout=0.4, max_bytes=1024)
    assert time.monotonic() - started < 1.5


def test_fetch_total_time_is_bounded_by_a_trickling_server(server: LoopbackHTTPServer) -> None:
    """Each byte comes well within the budget, but the whole body would take 3 s: the budget is total."""
    server.set_route("/drip", status=200, body=b"z" * 30, trickle=0.1)
    started = time.monotonic()
    with pytest.raises(DiscoveryUnavailable, match="within"):
        fetch(server.url("/drip"), timeout=0.5, max_bytes=1024)
    assert time.monotonic() - started < 1.2


def test_fetch_conditional_304(server: LoopbackHTTPServer) -> None:
    server.set_route("/e", status=200, body=b"body", etag='"abc"')
    assert fetch(server.url("/e"), timeout=5, max_bytes=1024).etag == '"abc"'
    result = fetch(server.url("/e"), timeout=5, max_bytes=1024, etag='"abc"', last_modified="x")
    assert result.status == 304 and result.body is None
    assert server.requests[-1].headers["If-Modified-Since"] == "x"
