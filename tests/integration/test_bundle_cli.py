"""``hisp trust bundle show|fetch``: exit statuses, output, progress line, nothing written on failure."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import AT, FIXTURES

from hisp.cli import main
from hisp.core import devca
from hisp.testing.bundles import make_p7b, sign_bundle
from hisp.testing.http import LoopbackHTTPServer, serve_http

TEST_BUNDLE = FIXTURES / "direct-ri-java/bundles/testBundle.p7b"
DOTNET_BUNDLE = FIXTURES / "interop/dotnet/bundleWithMetadata.p7b"
AT_TEXT = AT.isoformat()


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | bytes]:
    root = tmp_path_factory.mktemp("bundles")
    anchors = [devca.create_ca(f"CLI Anchor {n}", at=AT - timedelta(days=1)).certificate for n in "AB"]
    publisher = devca.create_ca("CLI Publisher CA", at=AT - timedelta(days=1))
    signer = devca.issue_certificate(publisher, at=AT, domain="signer.example", usage=devca.KeyUsagePreset.SIGNING)
    rogue = devca.issue_certificate(publisher, at=AT, domain="rogue.example", usage=devca.KeyUsagePreset.SIGNING)
    signed = sign_bundle(make_p7b(anchors), signer.credential, at=AT)
    (root / "signer.pem").write_bytes(signer.certificate.to_pem())
    (root / "rogue.pem").write_bytes(rogue.certificate.to_pem())
    (root / "signed.p7m").write_bytes(signed)
    return {
        "signer": root / "signer.pem",
        "rogue": root / "rogue.pem",
        "signed_path": root / "signed.p7m",
        "signed": signed,
        "tampered": signed.replace(b"CLI Anchor A", b"CLI Anchor Q"),
    }


@pytest.fixture
def server() -> LoopbackHTTPServer:
    with serve_http() as running:
        yield running  # type: ignore[misc]


def test_show_fixture_text() -> None:
    result = run("trust", "bundle", "show", TEST_BUNDLE, "--at", AT_TEXT)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "1 anchor, unsigned" in out
    assert "anchor ST=MO,C=US,CN=sm1.direct.com Root CA" in out
    assert "sha256 39c7fd2f8d93f425532732573871b32d9d95a1146c342faf3bad799bf00df719" in out
    assert "EXPIRED" in out  # it expired 2022-12-03
    assert "valid at" in run("trust", "bundle", "show", TEST_BUNDLE, "--at", "2020-01-01").stdout


def test_show_json_dotnet_bundle() -> None:
    result = run("trust", "bundle", "show", DOTNET_BUNDLE, "--at", AT_TEXT, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["signed"] is False and report["signer"] is None
    assert [a["expired"] for a in report["anchors"]] == [False, True]  # TNHISPCA expired 2013
    assert report["metadata"].startswith("<xml>")


def test_show_signed_bundle_with_signer(files: dict) -> None:
    result = run("trust", "bundle", "show", files["signed_path"], "--signer", files["signer"], "--at", AT_TEXT)
    assert result.exit_code == 0, result.stderr
    assert "2 anchors, signed by CN=signer.example (verified)" in result.stdout
    unverified = run("trust", "bundle", "show", files["signed_path"], "--at", AT_TEXT)
    assert "NOT verified" in unverified.stdout


def test_show_wrong_signer_exits_1_with_one_line(files: dict) -> None:
    result = run("trust", "bundle", "show", files["signed_path"], "--signer", files["rogue"], "--at", AT_TEXT)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "not signed by a configured bundle signing certificate" in result.stderr


def test_show_url(server: LoopbackHTTPServer) -> None:
    server.set_route("/b.p7b", status=200, body=TEST_BUNDLE.read_bytes())
    result = run("trust", "bundle", "show", server.url("/b.p7b"), "--json", "--at", AT_TEXT)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["source"] == server.url("/b.p7b")


@pytest.mark.parametrize(
    "args",
    [
        ("show", str(TEST_BUNDLE), "--at", "yesterday"),
        ("show", "ftp://example.org/bundle.p7b"),
        ("show",),
        ("fetch", "http://127.0.0.1/x"),  # --out missing
        ("fetch", "file:///etc/passwd", "--out", "x.p7b"),
        ("fetch", "bundle.p7b", "--out", "x.p7b"),
    ],
    ids=["bad-at", "show-ftp", "show-no-source", "fetch-no-out", "fetch-file-url", "fetch-not-url"],
)
def test_usage_errors_exit_2(args: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("trust", "bundle", *args)
    assert result.exit_code == 2
    assert not (tmp_path / "x.p7b").exists()


def test_fetch_writes_verified_bundle_and_reports_progress(
    server: LoopbackHTTPServer, files: dict, tmp_path: Path
) -> None:
    body = files["signed"]
    server.set_route("/signed.p7m", status=200, body=body)
    out = tmp_path / "community.p7m"
    result = run("trust", "bundle", "fetch", server.url("/signed.p7m"), "--out", out, "--signer", files["signer"],
                 "--at", AT_TEXT)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes() == body
    assert f"{len(body)} / {len(body)} bytes" in result.stderr
    assert "2 anchors, signed by CN=signer.example" in result.stdout


@pytest.mark.parametrize("failure", ["500", "tampered", "hang", "not-a-bundle"])
def test_fetch_failure_exits_1_and_writes_nothing(
    server: LoopbackHTTPServer, files: dict, tmp_path: Path, failure: str
) -> None:
    routes = {
        "500": {"status": 500, "body": b"down"},
        "tampered": {"status": 200, "body": files["tampered"]},
        "hang": {"hang": True},
        "not-a-bundle": {"status": 200, "body": b"<html>maintenance</html>"},
    }
    server.set_route("/b", **routes[failure])
    out = tmp_path / "community.p7m"
    out.write_bytes(b"previous good bundle")
    result = run("trust", "bundle", "fetch", server.url("/b"), "--out", out, "--signer", files["signer"],
                 "--at", AT_TEXT, "--timeout", "0.5")  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("hisp: ")
    assert out.read_bytes() == b"previous good bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["community.p7m"]  # no temporary file either
