"""``hisp cert validate``: exit codes, --json shape, --explain text and reasons (a real subprocess-free click run)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import AT, FIXTURES
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from hisp.cli import main
from hisp.core.certs import load_certificate
from hisp.core.devca import KeyUsagePreset, create_ca, issue_certificate
from hisp.testing.bundles import make_p7b, sign_bundle
from hisp.testing.http import serve_http

ETT = FIXTURES / "ett" / "certificates"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cli-pki")
    root = create_ca("CLI Root", at=AT)
    other = create_ca("CLI Other", at=AT)
    leaf = issue_certificate(root, at=AT, address="dr.a@direct.example.org")
    old = issue_certificate(
        root,
        at=AT,
        address="old@direct.example.org",
        not_before=AT - timedelta(days=30),
        not_after=AT - timedelta(days=1),
    )
    paths = {"root": root.certificate, "other": other.certificate, "leaf": leaf.certificate, "old": old.certificate}
    for name, cert in paths.items():
        (out / f"{name}.pem").write_bytes(cert.to_pem())
    return {name: out / f"{name}.pem" for name in paths}


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["cert", "validate", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_trusted_exits_0_with_a_summary(files: dict[str, Path]) -> None:
    code, out, err = run(files["leaf"], "--anchor", files["root"], "--at", AT.isoformat(), "--revocation", "off")
    assert code == 0, err
    assert out.startswith("trusted: CN=dr.a@direct.example.org -> CN=CLI Root (revocation not checked (mode off)")


@pytest.mark.parametrize(
    ("leaf", "anchor", "extra", "reason"),
    [
        ("leaf", "other", (), "untrusted"),
        ("old", "root", (), "expired"),
        ("leaf", "root", ("--address", "someone@direct.example.org"), "not bound"),
    ],
    ids=["wrong-anchor", "expired", "not-bound"],
)
def test_untrusted_exits_1_with_reason_on_stderr_and_json(
    files: dict[str, Path], leaf: str, anchor: str, extra: tuple[str, ...], reason: str
) -> None:
    code, out, err = run(files[leaf], "--anchor", files[anchor], "--at", AT.isoformat(), "--json", *extra)
    assert code == 1
    assert err.startswith(f"hisp: {reason}:") and len(err.strip().splitlines()) == 1
    data = json.loads(out)
    assert data["trusted"] is False and data["reason"] == reason and data["anchor"] is None
    assert set(data) >= {"certificate", "chain", "nearest_anchor", "revocation", "policy_rule", "warnings", "at"}


def test_json_and_explain_when_trusted(files: dict[str, Path]) -> None:
    code, out, _ = run(
        files["leaf"],
        "--anchor",
        files["root"],
        "--at",
        AT.isoformat(),
        "--json",
        "--address",
        "dr.a@direct.example.org",
    )
    data = json.loads(out)
    assert code == 0 and data["trusted"] is True and data["address"] == "dr.a@direct.example.org"
    assert data["anchor"]["subject"] == "CN=CLI Root" and data["anchor"]["source"] == str(files["root"])
    assert data["revocation"]["status"] == "not checked"  # the dev certificates declare no CRL/OCSP
    code, out, _ = run(
        files["leaf"], "--anchor", files["root"], "--at", AT.isoformat(), "--explain", "--direction", "outgoing"
    )
    assert code == 0 and out.startswith("TRUSTED\n  outgoing at 2026-11-30T12:00:00+00:00")
    assert "anchor reached: CN=CLI Root" in out and "rule: direct-1.3:" in out and "encipherment usage" in out


def test_ett_certificate_pinned_in_time() -> None:
    args = (ETT / "ett.healthit.gov.der", "--anchor", ETT / "intermediate.healthit.gov.der", "--revocation", "off")
    assert run(*args, "--at", "2026-01-01")[0] == 0
    code, _, err = run(*args, "--at", "2031-01-01")
    assert code == 1 and err.startswith("hisp: expired:")


def test_bundle_file_anchors(files: dict[str, Path], tmp_path: Path) -> None:
    root = x509.load_pem_x509_certificate(files["root"].read_bytes())
    bundle = tmp_path / "bundle.p7b"
    bundle.write_bytes(pkcs7.serialize_certificates([root], serialization.Encoding.DER))
    code, out, _ = run(files["leaf"], "--bundle", bundle, "--at", AT.isoformat(), "--json", "--revocation", "off")
    assert code == 0 and json.loads(out)["anchor"]["source"] == f"bundle {bundle}"
    not_a_bundle = tmp_path / "anchors.pem"  # a PEM certificate is not a PKCS#7 bundle: refused cleanly
    not_a_bundle.write_bytes(files["root"].read_bytes())
    code, _, err = run(files["leaf"], "--bundle", not_a_bundle, "--at", AT.isoformat())
    assert code == 1 and err.startswith("hisp: ")


@pytest.mark.parametrize(
    "args",
    [("--at", "yesterday"), ("--direction", "sideways"), ("--revocation", "maybe"), ("--address", "not an address")],
    ids=["bad-time", "bad-direction", "bad-revocation", "bad-address"],
)
def test_usage_errors_exit_2(files: dict[str, Path], args: tuple[str, ...]) -> None:
    assert run(files["leaf"], "--anchor", files["root"], *args)[0] == 2


def test_no_anchor_is_a_usage_error(files: dict[str, Path]) -> None:
    code, _, err = run(files["leaf"])
    assert code == 2 and "--anchor or --bundle" in err


@pytest.fixture(scope="module")
def signed_bundles(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cli-bundles")
    root = load_certificate(files["root"].read_bytes())
    publisher = create_ca("CLI Bundle Publisher", at=AT - timedelta(days=1))
    signer = issue_certificate(publisher, at=AT, domain="signer.example", usage=KeyUsagePreset.SIGNING)
    rogue = issue_certificate(publisher, at=AT, domain="rogue.example", usage=KeyUsagePreset.SIGNING)
    unsigned = make_p7b([root])
    signed = sign_bundle(unsigned, signer.credential, at=AT)
    contents = {
        "signer.pem": signer.certificate.to_pem(),
        "rogue.pem": rogue.certificate.to_pem(),
        "unsigned.p7b": unsigned,
        "signed.p7m": signed,
        "tampered.p7m": signed.replace(b"CLI Root", b"CLI Roo7"),
    }
    for name, data in contents.items():
        (out / name).write_bytes(data)
    return {name.split(".")[0]: out / name for name in contents}


def test_bundle_signer_accepts_a_bundle_signed_by_it(files: dict[str, Path], signed_bundles: dict[str, Path]) -> None:
    common = (files["leaf"], "--at", AT.isoformat(), "--revocation", "off", "--json")
    code, out, err = run(*common, "--bundle", signed_bundles["signed"], "--bundle-signer", signed_bundles["signer"])
    assert code == 0, err
    assert json.loads(out)["anchor"]["source"] == f"bundle {signed_bundles['signed']}"
    # a second, other signer may be configured too: one of them is enough
    code, _, err = run(
        *common,
        "--bundle",
        signed_bundles["signed"],
        "--bundle-signer",
        signed_bundles["rogue"],
        "--bundle-signer",
        signed_bundles["signer"],
    )
    assert code == 0, err
    # without --bundle-signer a signed bundle is still used (unverified), as before
    assert run(*common, "--bundle", signed_bundles["signed"])[0] == 0


def test_bundle_signer_refuses_other_signers_unsigned_and_tampered_bundles(
    files: dict[str, Path], signed_bundles: dict[str, Path]
) -> None:
    common = (files["leaf"], "--at", AT.isoformat(), "--revocation", "off")
    code, out, err = run(*common, "--bundle", signed_bundles["signed"], "--bundle-signer", signed_bundles["rogue"])
    assert code == 1 and not out
    assert err.startswith("hisp: ") and "not signed by a configured bundle signing certificate" in err
    code, _, err = run(*common, "--bundle", signed_bundles["unsigned"], "--bundle-signer", signed_bundles["signer"])
    assert code == 1 and "unsigned" in err
    code, _, err = run(*common, "--bundle", signed_bundles["tampered"], "--bundle-signer", signed_bundles["signer"])
    assert code == 1 and err.startswith("hisp: ")
    # every bundle must be signed: one good bundle does not carry an unsigned one
    code, _, err = run(
        *common,
        "--bundle",
        signed_bundles["signed"],
        "--bundle",
        signed_bundles["unsigned"],
        "--bundle-signer",
        signed_bundles["signer"],
    )
    assert code == 1 and "unsigned" in err


def test_bundle_signer_applies_to_bundles_fetched_by_url(
    files: dict[str, Path], signed_bundles: dict[str, Path]
) -> None:
    common = (files["leaf"], "--at", AT.isoformat(), "--revocation", "off")
    with serve_http() as server:
        server.set_route("/signed.p7m", body=signed_bundles["signed"].read_bytes())
        server.set_route("/unsigned.p7b", body=signed_bundles["unsigned"].read_bytes())
        code, _, err = run(*common, "--bundle", server.url("/signed.p7m"), "--bundle-signer", signed_bundles["signer"])
        assert code == 0, err
        code, _, err = run(
            *common, "--bundle", server.url("/unsigned.p7b"), "--bundle-signer", signed_bundles["signer"]
        )
        assert code == 1 and "unsigned" in err


def test_bundle_signer_without_bundle_is_a_usage_error(files: dict[str, Path], signed_bundles: dict[str, Path]) -> None:
    code, _, err = run(files["leaf"], "--anchor", files["root"], "--bundle-signer", signed_bundles["signer"])
    assert code == 2 and "--bundle-signer needs a --bundle" in err
