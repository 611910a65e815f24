"""``hisp message incoming`` as an operator runs it: on a security failure it exits 1, writes
nothing, and prints one stderr line naming the reason, pinned here word for word (issue 2, "The `hisp message`
commands"); and ``--cert`` naming a Java RI PKCS#12 file with the empty password, no ``--password``.

Messages come from an independent implementation (``openssl cms -sign -md sha1``) and from the shared
fixtures (../shared/fixtures, see its MANIFEST), read in place.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import AT, FIXTURES, fixture_bytes

from hisp.addresses import DirectAddress
from hisp.cli import main
from hisp.core import mime
from hisp.core.agent import SecurityAgent
from hisp.core.certs import load_certificate, load_credential, private_key_to_pem
from hisp.testing.pki import TestPKI, plain_message, seal

pytestmark = pytest.mark.interop

OPENSSL = shutil.which("openssl")
SENDER = "dr.example@direct.clinic.example"
RECIPIENT = "intake@direct.hospital.example"
AT_OPTION = AT.strftime("%Y-%m-%dT%H:%M:%S")
JAVA = FIXTURES / "direct-ri-java" / "certs"


def hisp(*args: str | Path, stdin: bytes | None = None) -> Result:
    """The ``hisp`` command, in process (click's runner keeps stdout and stderr apart); no password may come
    from the environment (its absence is under test)."""
    env: dict[str, str | None] = {"HISP_CA_PASSPHRASE": None, "HISP_KEY_PASSPHRASE": None}
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin, env=env)


def openssl(*args: str | Path) -> bytes:
    result = subprocess.run([str(OPENSSL), *map(str, args)], capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(at=AT)


@pytest.fixture(scope="module")
def files(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-reasons")
    out = {"ca": root / "ca.pem"}
    out["ca"].write_bytes(pki.ca.certificate.to_pem())
    for role, address in (("sender", SENDER), ("recipient", RECIPIENT)):
        issued = pki.user(address)
        out[f"{role}.pem"] = root / f"{role}.pem"
        out[f"{role}.key"] = root / f"{role}.key"
        out[f"{role}.pem"].write_bytes(issued.certificate.to_pem())
        out[f"{role}.key"].write_bytes(private_key_to_pem(issued.private_key))
    return out


def _incoming(files: dict[str, Path], message: bytes, *extra: str | Path) -> Result:
    return hisp(
        "message", "incoming", "--cert", files["recipient.pem"], "--key", files["recipient.key"],
        "--anchor", files["ca"], "--at", AT_OPTION, *extra, stdin=message,
    )  # fmt: skip


def test_untrusted_signer_reason(pki: TestPKI, files: dict[str, Path]) -> None:
    """Issue 2, ``hisp message incoming``: a security failure exits 1, writes nothing to OUT and prints one line
    naming the reason, e.g. "untrusted signer" (AS-14: signer not chaining to our anchors)."""
    rogue = TestPKI(at=AT, name="Rogue CA")
    message = seal(
        plain_message(SENDER, RECIPIENT), [rogue.user(SENDER).credential], [pki.user(RECIPIENT).certificate], at=AT
    )
    result = _incoming(files, message)
    assert result.exit_code == 1
    assert result.stdout_bytes == b""
    assert re.fullmatch(rb"hisp: untrusted signer: [^\n]+\n", result.stderr_bytes), result.stderr


def test_sha1_signature_reason_dcdt_fixture() -> None:
    """Issue 2, ``hisp message incoming`` reason "SHA-1 refused by policy direct-1.3" (AS-8), exactly that line:
    the DCDT 2013 HISP message (interop/dcdt/testDecryptMail.eml, SHA-1 signature) decrypted with its key at a
    time its certificate was valid, then refused on the signature digest under the default policy."""
    dcdt = FIXTURES / "interop" / "dcdt"
    result = hisp(
        "message", "incoming", "--cert", dcdt / "testDecryptMail_cert.der", "--key", dcdt / "testDecryptMail_key.der",
        "--anchor", dcdt / "testDecryptMail_cert.der", "--at", "2013-06-01T00:00:00",
        "-i", dcdt / "testDecryptMail.eml",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stdout_bytes == b""
    assert result.stderr_bytes == b"hisp: SHA-1 refused by policy direct-1.3\n"


@pytest.fixture(scope="module")
def openssl_sha1_message(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """(plain message, Direct message) signed by ``openssl cms -sign -md sha1`` then ``-encrypt``ed by openssl, with
    a SHA-256-signed, RSA-2048 chain: the SHA-1 signature is its only weak point."""
    assert OPENSSL, "openssl is needed for the interop tests (.ci/run installs it)"
    root = tmp_path_factory.mktemp("openssl-sha1")
    plain = plain_message(SENDER, RECIPIENT, body=b"Referral signed with SHA-1.\r\n")
    (root / "entity").write_bytes(b"Content-Type: message/rfc822\r\n\r\n" + plain)
    signed = openssl(
        "cms", "-sign", "-md", "sha1", "-binary", "-in", root / "entity",
        "-signer", files["sender.pem"], "-inkey", files["sender.key"],
    )  # fmt: skip
    assert b"micalg" in signed and b"sha1" in signed.lower()
    (root / "signed.eml").write_bytes(signed)
    sealed = openssl(
        "cms", "-encrypt", "-aes128", "-binary", "-in", root / "signed.eml",
        "-from", SENDER, "-to", RECIPIENT, "-subject", "Referral", "-recip", files["recipient.pem"],
    )  # fmt: skip
    return plain, sealed


@pytest.mark.parametrize("policy", ["direct-1.3", "direct-1.2"])
def test_sha1_signature_reason_openssl_message(
    files: dict[str, Path], openssl_sha1_message: tuple[bytes, bytes], policy: str
) -> None:
    """Issue 2, ``hisp message incoming`` reason "SHA-1 refused by policy direct-1.3" (AS-8), exactly that line,
    for a message made by openssl; the same message opens under ``--policy direct-1.2`` ("also accepts SHA-1
    signatures"), so the refusal is the digest's alone."""
    plain, sealed = openssl_sha1_message
    result = _incoming(files, sealed, "--policy", policy)
    if policy == "direct-1.3":
        assert result.exit_code == 1
        assert result.stdout_bytes == b""
        assert result.stderr_bytes == b"hisp: SHA-1 refused by policy direct-1.3\n"
    else:
        assert result.exit_code == 0, result.stderr
        assert result.stdout_bytes == plain


def test_java_ri_pkcs12_with_the_empty_password(tmp_path: Path) -> None:
    """Issue 2, "`--cert` may name a PKCS#12 file, with `--key` omitted" and "the Java RI files use the empty
    password": ``--cert user1.p12`` with no ``--password`` opens a message for user1@cerner.com. The message is
    the Java RI's MessageWithAttachment.txt (its From and To moved to the Java RI's externUser1 and user1),
    signed with the Java RI externUser1 key and encrypted to user1.der; the chain is the Java RI's SHA-1-signed
    one, so the policy is direct-1.2."""
    original = fixture_bytes("direct-ri-java/messages/MessageWithAttachment.txt")
    plain = original.replace(
        b"From: Greg Meyer <gm2552@securehealthemail.com>", b"From: externUser1 <externUser1@starugh-stateline.com>"
    ).replace(b"To: ryan@securehealthemail.com", b"To: user1@cerner.com")
    assert plain.count(b"externUser1@starugh-stateline.com") == 1 and plain.count(b"To: user1@cerner.com") == 1
    sender = load_credential(fixture_bytes("direct-ri-java/certs/externUser1.der"),
                             fixture_bytes("direct-ri-java/certs/externUser1key.der"), None)  # fmt: skip
    user1 = load_certificate(fixture_bytes("direct-ri-java/certs/user1.der"))
    sealed = SecurityAgent().process_outgoing(
        plain, sender=[sender], recipients={DirectAddress.parse("user1@cerner.com"): [user1]}, at=AT
    )
    out = tmp_path / "opened.eml"
    result = hisp(
        "message", "incoming", "--cert", JAVA / "user1.p12", "--anchor", JAVA / "externCaCert.der",
        "--policy", "direct-1.2", "--at", AT_OPTION, "--explain", "-o", out,
        stdin=sealed.message,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes() == mime.canonicalize(plain)
    assert b"externUser1@starugh-stateline.com" in result.stderr_bytes  # --explain names the signer


def test_java_ri_pkcs12_with_the_empty_password_reaches_decryption() -> None:
    """Issue 2, PKCS#12 ``--cert`` with the empty password and no ``--password``: the Java RI's
    EncryptedMessage2.txt is for ryan@, not user1@, so user1.p12 loads (no password complaint) and the
    envelope is refused with the reason "no recipient matches our keys"."""
    java_ri = FIXTURES / "interop" / "java-ri"
    result = hisp(
        "message", "incoming", "--cert", JAVA / "user1.p12", "--anchor", java_ri / "secureHealthEmailCACert.der",
        "--policy", "direct-1.2", "--at", AT_OPTION, "-i", java_ri / "EncryptedMessage2.txt",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stdout_bytes == b""
    assert re.fullmatch(rb"hisp: no recipient matches our keys[^\n]*\n", result.stderr_bytes), result.stderr
