"""The development PKI commands' options (issue 2, "Development PKI (certs/)"), run in process with click's runner:
``hisp ca init --days --passphrase`` and ``hisp ca issue --days --not-before --not-after --crl-url --aia-url
--ca-passphrase``, each result read back with cryptography."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from hisp.cli import main

PASSPHRASE = "correct horse battery"
ADDRESS = "dr.example@direct.clinic.example"


def hisp(*args: str | Path) -> Result:
    """The ``hisp`` command, in process; no passphrase may come from the environment (the options are tested)."""
    return CliRunner().invoke(
        main, [str(a) for a in args], env={"HISP_CA_PASSPHRASE": None, "HISP_KEY_PASSPHRASE": None}
    )


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _validity(cert: x509.Certificate) -> timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA made with ``--days 30 --passphrase``; the issue tests use it through ``--ca-passphrase``."""
    out = tmp_path_factory.mktemp("ca-options") / "ca"
    result = hisp("ca", "init", "--out", out, "--name", "Options Test CA", "--days", "30", "--passphrase", PASSPHRASE)
    assert result.exit_code == 0, result.output
    return out


def _issue(ca_dir: Path, out: Path, *extra: str) -> x509.Certificate:
    result = hisp(
        "ca", "issue", "--ca", ca_dir, "--ca-passphrase", PASSPHRASE, "--address", ADDRESS, "--out", out, *extra
    )
    assert result.exit_code == 0, result.output
    return _certificate(out / f"{ADDRESS}.pem")


def test_ca_init_days_sets_the_validity(ca_dir: Path) -> None:
    """Issue 2, ``hisp ca init --out DIR [--name NAME] [--days N]``: the CA is valid for N days (from one hour
    before now, devca's back-dating), with the name given, and is a CA."""
    cert = _certificate(ca_dir / "ca.pem")
    assert _validity(cert) == timedelta(days=30, hours=1)
    assert abs(cert.not_valid_after_utc - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)
    assert cert.subject.rfc4514_string() == "CN=Options Test CA"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ca_init_passphrase_encrypts_the_key(ca_dir: Path) -> None:
    """Issue 2, "Keys are PKCS#8 PEM; ``--passphrase`` encrypts them" (ca init): ca.key is an encrypted PKCS#8
    PEM that does not load without the passphrase, and loads with it to the certificate's key."""
    data = (ca_dir / "ca.key").read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):  # "Password was not given but private key is encrypted"
        serialization.load_pem_private_key(data, password=None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(data, password=b"wrong")
    key = serialization.load_pem_private_key(data, password=PASSPHRASE.encode())
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, public) == _certificate(
        ca_dir / "ca.pem"
    ).public_key().public_bytes(serialization.Encoding.DER, public)


def test_ca_issue_needs_the_ca_passphrase(ca_dir: Path, tmp_path: Path) -> None:
    """Issue 2, ``hisp ca issue --ca DIR`` with a passphrase-protected CA key (``--ca-passphrase``): without it
    the command fails, naming the option, and writes nothing; with it the certificate is issued by that CA."""
    refused = hisp("ca", "issue", "--ca", ca_dir, "--address", ADDRESS, "--out", tmp_path / "none")
    assert refused.exit_code == 1
    assert "--ca-passphrase" in refused.stderr
    assert not (tmp_path / "none").exists()
    cert = _issue(ca_dir, tmp_path)
    cert.verify_directly_issued_by(_certificate(ca_dir / "ca.pem"))


def test_ca_issue_days_sets_the_validity(ca_dir: Path, tmp_path: Path) -> None:
    """Issue 2, ``hisp ca issue ... [--days N]``: the certificate is valid for N days (from one hour before now)."""
    cert = _issue(ca_dir, tmp_path, "--days", "10")
    assert _validity(cert) == timedelta(days=10, hours=1)
    assert abs(cert.not_valid_after_utc - (datetime.now(UTC) + timedelta(days=10))) < timedelta(minutes=5)


def test_ca_issue_not_before_and_not_after(ca_dir: Path, tmp_path: Path) -> None:
    """Issue 2, ``hisp ca issue ... [--not-before ISO8601] [--not-after ISO8601]``: exactly those bounds, a
    time without a zone read as UTC and an offset converted to UTC (they win over --days)."""
    cert = _issue(
        ca_dir,
        tmp_path,
        "--days",
        "5",
        "--not-before",
        "2026-01-02T03:04:05",
        "--not-after",
        "2026-02-03T04:05:06-05:00",
    )
    assert cert.not_valid_before_utc == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert cert.not_valid_after_utc == datetime(2026, 2, 3, 9, 5, 6, tzinfo=UTC)


def test_ca_issue_crl_and_aia_urls(ca_dir: Path, tmp_path: Path) -> None:
    """Issue 2, ``hisp ca issue ... [--crl-url URL] [--aia-url URL]``: a CRL distribution point and an AIA
    caIssuers access description with exactly those URLs (and neither extension when the options are absent)."""
    crl_url = "http://127.0.0.1:8080/crl/clinic-ca.crl"
    aia_url = "http://127.0.0.1:8080/certs/clinic-ca.cer"
    cert = _issue(ca_dir, tmp_path / "with", "--crl-url", crl_url, "--aia-url", aia_url)
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [p.full_name for p in points] == [[x509.UniformResourceIdentifier(crl_url)]]
    access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location) for d in access] == [
        (AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(aia_url))
    ]
    plain = _issue(ca_dir, tmp_path / "without")
    present = {e.oid for e in plain.extensions}
    assert ExtensionOID.CRL_DISTRIBUTION_POINTS not in present
    assert ExtensionOID.AUTHORITY_INFORMATION_ACCESS not in present
