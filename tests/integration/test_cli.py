"""The ``hisp`` command as an operator runs it: real processes, real files, exit statuses and stderr."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

from hisp.core.certs import load_certificate

REPO = Path(__file__).resolve().parents[2]
SENDER = "dr.example@direct.clinic.example"
RECIPIENT = "intake@direct.hospital.example"
REFERRAL = REPO / "examples" / "referral.eml"


def hisp(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # the package under test, whatever `hisp` on PATH points at (test_console_script checks that one)
    command = [sys.executable, "-m", "hisp.cli"]
    return subprocess.run([*command, *map(str, args)], input=stdin, capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    assert hisp("ca", "init", "--out", root / "ca").returncode == 0
    assert hisp("ca", "issue", "--ca", root / "ca", "--address", SENDER, "--out", root / "users").returncode == 0
    assert hisp("ca", "issue", "--ca", root / "ca", "--address", RECIPIENT, "--out", root / "users").returncode == 0
    rogue = hisp("ca", "init", "--out", root / "rogue", "--name", "Rogue CA")
    assert rogue.returncode == 0
    assert hisp("ca", "issue", "--ca", root / "rogue", "--address", SENDER, "--out", root / "rogue").returncode == 0
    return root


def _seal(pki: Path, signer_dir: str = "users", *extra: str) -> bytes:
    result = hisp(
        "message", "outgoing",
        "--cert", pki / signer_dir / f"{SENDER}.pem",
        "--key", pki / signer_dir / f"{SENDER}.key",
        "--to-cert", pki / "users" / f"{RECIPIENT}.pem",
        *extra,
        "-i", REFERRAL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def _open(pki: Path, message: bytes, *extra: str | Path) -> subprocess.CompletedProcess[bytes]:
    return hisp(
        "message", "incoming",
        "--cert", pki / "users" / f"{RECIPIENT}.pem",
        "--key", pki / "users" / f"{RECIPIENT}.key",
        "--anchor", pki / "ca" / "ca.pem",
        *extra,
        stdin=message,
    )  # fmt: skip


def test_ca_writes_certificate_and_private_key(pki: Path) -> None:
    cert = load_certificate((pki / "users" / f"{SENDER}.pem").read_bytes())
    assert cert.rfc822_names == (SENDER,)
    assert cert.rsa_key_bits == 2048
    assert cert.can_sign and cert.can_encipher
    mode = stat.S_IMODE((pki / "users" / f"{SENDER}.key").stat().st_mode)
    assert mode == 0o600
    assert b"BEGIN PRIVATE KEY" in (pki / "users" / f"{SENDER}.key").read_bytes()


def test_ca_issue_single_use_and_domain_bound(pki: Path, tmp_path: Path) -> None:
    result = hisp(
        "ca", "issue", "--ca", pki / "ca", "--domain", "Direct.Hospital.Example", "--usage", "encipherment",
        "--out", tmp_path, "--name", "hospital",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cert = load_certificate((tmp_path / "hospital.pem").read_bytes())
    assert cert.dns_names == ("direct.hospital.example",)
    assert cert.can_encipher and not cert.can_sign


def test_ca_issue_with_an_encrypted_key(pki: Path, tmp_path: Path) -> None:
    result = hisp("ca", "issue", "--ca", pki / "ca", "--address", SENDER, "--out", tmp_path, "--passphrase", "s3cret")
    assert result.returncode == 0, result.stderr
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / f"{SENDER}.key").read_bytes()
    message = hisp(
        "message", "outgoing",
        "--cert", tmp_path / f"{SENDER}.pem", "--key", tmp_path / f"{SENDER}.key", "--password", "wrong",
        "--to-cert", pki / "users" / f"{RECIPIENT}.pem", "-i", REFERRAL,
    )  # fmt: skip
    assert message.returncode == 1
    assert message.stdout == b""


@pytest.mark.parametrize(
    "args",
    [
        ("ca", "issue", "--ca", "CA", "--out", "OUT"),
        ("ca", "issue", "--ca", "CA", "--out", "OUT", "--address", SENDER, "--domain", "x.example"),
        ("message", "incoming", "--cert", "README.md", "--anchor", "README.md", "--policy", "direct-9"),
        ("message", "outgoing", "--cert", "README.md", "--to-cert", "README.md", "--cipher", "des3"),
        (
            "message",
            "nonsense",
        ),
    ],
    ids=["no-binding", "both-bindings", "unknown-policy", "unknown-cipher", "unknown-command"],
)
def test_usage_errors_exit_2(pki: Path, args: tuple[str, ...]) -> None:
    args = tuple(str(pki / "ca") if a == "CA" else str(pki / "out") if a == "OUT" else a for a in args)
    args = tuple(str(REPO / a) if a == "README.md" else a for a in args)
    assert hisp(*args).returncode == 2


def test_round_trip_restores_the_referral(pki: Path, tmp_path: Path) -> None:
    sealed = _seal(pki)
    assert b"application/pkcs7-mime" in sealed
    assert b"ClinicalDocument" not in sealed
    out = tmp_path / "opened.eml"
    result = _open(pki, sealed, "-o", out, "--explain")
    assert result.returncode == 0, result.stderr.decode()
    assert out.read_bytes() == REFERRAL.read_bytes()
    assert b"address-bound signer" in result.stderr


@pytest.mark.parametrize(
    ("cipher", "transport", "digest"),
    [("aes256-cbc", "rsa-pkcs1", "sha384"), ("aes128-gcm", "rsa-oaep", "sha512"), ("aes256-gcm", "rsa-oaep", "sha256")],
    ids=["aes256-cbc-pkcs1-sha384", "aes128-gcm-oaep-sha512", "aes256-gcm-oaep-sha256"],
)
def test_algorithm_options(pki: Path, cipher: str, transport: str, digest: str) -> None:
    sealed = _seal(pki, "users", "--cipher", cipher, "--key-transport", transport, "--digest", digest)
    result = _open(pki, sealed, "--explain")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == REFERRAL.read_bytes()
    assert cipher.encode() in result.stderr
    assert digest.replace("sha", "SHA-").encode() in result.stderr


def test_untrusted_sender_exits_1_and_writes_nothing(pki: Path, tmp_path: Path) -> None:
    out = tmp_path / "opened.eml"
    result = _open(pki, _seal(pki, "rogue"), "-o", out)
    assert result.returncode == 1
    assert not out.exists()
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "untrusted" in lines[0]


def test_not_for_us_exits_1(pki: Path) -> None:
    result = hisp(
        "message", "incoming",
        "--cert", pki / "users" / f"{SENDER}.pem", "--key", pki / "users" / f"{SENDER}.key",
        "--anchor", pki / "ca" / "ca.pem",
        stdin=_seal(pki),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"no recipient matches our keys" in result.stderr


@pytest.mark.parametrize(
    ("policy", "status", "reason"),
    [("direct-1.3", 1, b"SHA-1-signed certificate refused by policy direct-1.3"), ("direct-1.2", 0, b"")],
    ids=["direct-1.3", "direct-1.2"],
)
def test_java_ri_message_by_policy(policy: str, status: int, reason: bytes) -> None:
    java = FIXTURES / "interop" / "java-ri"
    result = hisp(
        "message", "incoming", "--cert", java / "ryan.der", "--key", java / "ryanKey.der",
        "--anchor", java / "secureHealthEmailCACert.der", "--policy", policy,
        "-i", java / "EncryptedMessage2.txt",
    )  # fmt: skip
    assert result.returncode == status, result.stderr
    assert reason in result.stderr
    if status == 0:
        assert b"From: Greg Meyer <gm2552@securehealthemail.com>" in result.stdout


def test_pkcs12_credential_with_password() -> None:
    """--cert names a PKCS#12 file, --key omitted, --password given (.NET RI file, legacy PBE)."""
    dotnet = FIXTURES / "interop" / "dotnet"
    result = hisp(
        "message", "incoming", "--cert", dotnet / "nhind_umamalga1_vm1.pfx", "--password", "passw0rd!",
        "--anchor", dotnet / "policyMixedQualifier.der", "--policy", "direct-1.2", "--at", "2024-01-01T00:00:00",
        "-i", dotnet / "envelopeSignature.eml",
    )  # fmt: skip
    # decrypted with the PKCS#12 key (RSA-OAEP), then refused: the signer is bound only by its subject DN
    assert result.returncode == 1
    assert b"signer not bound to sender" in result.stderr


def test_walkthrough_runs(tmp_path: Path) -> None:
    """The README points operators at the walk-through; it must keep working."""
    result = subprocess.run(
        ["sh", str(REPO / "examples" / "walkthrough.sh"), str(tmp_path / "out")],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"Walk-through complete." in result.stdout
    assert (tmp_path / "out" / "referral.opened.eml").read_bytes() == REFERRAL.read_bytes()


def test_console_script_is_installed() -> None:
    """The README's commands use the `hisp` console script."""
    import shutil

    assert shutil.which("hisp"), "the hisp console script is not on PATH: pip install -e '.[test]'"
    result = subprocess.run(["hisp", "--version"], capture_output=True, timeout=60, check=False)
    assert result.returncode == 0
    assert b"hisp, version" in result.stdout


def test_walkthrough_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    result = subprocess.run(
        ["sh", str(REPO / "examples" / "walkthrough.sh"), str(tmp_path)], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_ca_refuses_to_overwrite_keys(pki: Path) -> None:
    before = (pki / "ca" / "ca.key").read_bytes()
    result = hisp("ca", "init", "--out", pki / "ca")
    assert result.returncode == 1
    assert b"already exists: give --force" in result.stderr
    assert (pki / "ca" / "ca.key").read_bytes() == before
    again = hisp("ca", "issue", "--ca", pki / "ca", "--address", SENDER, "--out", pki / "users")
    assert again.returncode == 1
    assert b"already exists" in again.stderr


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("--cert", "USERS/SENDER.pem"), 2, b"--key is required unless --cert names a PKCS#12 file"),
        (("--cert", "EMPTY", "--key", "USERS/SENDER.key"), 1, b"--cert EMPTY: the file is empty"),
        (("--cert", "USERS/SENDER.key", "--key", "USERS/SENDER.pem"), 1, b"--cert USERS/SENDER.key"),
    ],
    ids=["missing-key", "empty-certificate", "swapped-cert-and-key"],
)
def test_credential_mistakes_are_explained(
    pki: Path, tmp_path: Path, args: tuple[str, ...], status: int, message: bytes
) -> None:
    (tmp_path / "empty").write_bytes(b"")

    def expand(text: str) -> str:
        return (
            text.replace("USERS", str(pki / "users"))
            .replace("SENDER", SENDER)
            .replace("EMPTY", str(tmp_path / "empty"))
        )

    result = hisp(
        "message", "outgoing", *map(expand, args), "--to-cert", pki / "users" / f"{RECIPIENT}.pem", "-i", REFERRAL
    )
    assert result.returncode == status, result.stderr
    assert expand(message.decode()).encode() in result.stderr


def test_empty_input_is_named(pki: Path) -> None:
    result = _open(pki, b"")
    assert result.returncode == 1
    assert b"empty input" in result.stderr


def test_output_failure_leaves_no_plaintext(pki: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "opened.eml"
    result = _open(pki, _seal(pki), "-o", target)
    assert result.returncode == 1
    assert str(target).encode() in result.stderr
    assert not (tmp_path / "missing-dir").exists()
    as_directory = _open(pki, _seal(pki), "-o", tmp_path)
    assert as_directory.returncode == 2
    assert list(tmp_path.iterdir()) == []
