"""Whole Direct messages across an independent S/MIME implementation: the ``openssl cms`` command.

Our sealed message is opened by ``openssl cms -decrypt`` then ``openssl cms -verify`` with our CA as the
anchor, and a Direct message built by ``openssl cms -sign`` then ``-encrypt`` is opened by our agent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import AT

from hisp.addresses import DirectAddress
from hisp.core import mime
from hisp.core.agent import SecurityAgent
from hisp.core.certs import private_key_to_pem
from hisp.core.policy import ContentCipher, KeyTransport, policy_from_name
from hisp.testing.pki import TestPKI, plain_message

pytestmark = pytest.mark.interop

OPENSSL = shutil.which("openssl")
SENDER = "dr.example@direct.clinic.example"
RECIPIENT = "intake@direct.hospital.example"
BODY = (
    b"Referral attached.\r\n" + b"A line that is long enough to need care " * 40 + b"\r\n"
)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    assert OPENSSL, "openssl is needed for the interop tests (.ci/run installs it)"
    return TestPKI(at=AT)


@pytest.fixture(scope="module")
def files(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("openssl")
    out = {
        "ca": root / "ca.pem",
        "sender.pem": root / "sender.pem",
        "sender.key": root / "sender.key",
        "recipient.pem": root / "recipient.pem",
        "recipient.key": root / "recipient.key",
    }
    out["ca"].write_bytes(pki.ca.certificate.to_pem())
    for role, address in (("sender", SENDER), ("recipient", RECIPIENT)):
        issued = pki.user(address)
        out[f"{role}.pem"].write_bytes(issued.certificate.to_pem())
        out[f"{role}.key"].write_bytes(private_key_to_pem(issued.private_key))
    return out


def openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(
        [str(OPENSSL), *map(str, args)], input=stdin, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


@pytest.mark.parametrize(
    ("cipher", "transport"),
    [("aes128-cbc", "rsa-oaep"), ("aes256-cbc", "rsa-pkcs1"), ("aes128-cbc", "rsa-pkcs1")],
    ids=["aes128-oaep", "aes256-pkcs1", "aes128-pkcs1"],
)
def test_openssl_opens_our_direct_message(
    pki: TestPKI, files: dict[str, Path], tmp_path: Path, cipher: str, transport: str
) -> None:
    plain = plain_message(SENDER, RECIPIENT, body=BODY)
    policy = policy_from_name("direct-1.3").with_options(
        cipher=ContentCipher(cipher), key_transport=KeyTransport(transport)
    )
    sealed = SecurityAgent(policy=policy).process_outgoing(
        plain,
        sender=[pki.user(SENDER).credential],
        recipients={DirectAddress.parse(RECIPIENT): [pki.user(RECIPIENT).certificate]},
        at=AT,
    )
    (tmp_path / "sealed.eml").write_bytes(sealed.message)
    decrypted = openssl(
        "cms", "-decrypt", "-in", tmp_path / "sealed.eml",
        "-recip", files["recipient.pem"], "-inkey", files["recipient.key"],
    )  # fmt: skip
    (tmp_path / "signed.eml").write_bytes(decrypted)
    verified = openssl(
        "cms", "-verify", "-in", tmp_path / "signed.eml", "-CAfile", files["ca"],
        "-attime", str(int(AT.timestamp())),
    )  # fmt: skip
    assert verified == b"Content-Type: message/rfc822\r\n\r\n" + mime.canonicalize(plain)


@pytest.mark.parametrize(
    ("encrypt_args", "expected_transport"),
    [
        (("-aes128",), "rsa-pkcs1"),
        (("-aes256",), "rsa-pkcs1"),
        (("-aes128", "-keyopt", "rsa_padding_mode:oaep"), "rsa-oaep-sha1"),
        (("-aes256", "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"), "rsa-oaep-sha256"),
    ],
    ids=["aes128-pkcs1", "aes256-pkcs1", "aes128-oaep-sha1", "aes256-oaep-sha256"],
)
def test_we_open_a_direct_message_made_by_openssl(
    pki: TestPKI,
    files: dict[str, Path],
    tmp_path: Path,
    encrypt_args: tuple[str, ...],
    expected_transport: str,
) -> None:
    plain = plain_message(SENDER, RECIPIENT, body=BODY)
    entity = b"Content-Type: message/rfc822\r\n\r\n" + plain
    (tmp_path / "entity").write_bytes(entity)
    signed = openssl(
        "cms", "-sign", "-md", "sha256", "-binary", "-in", tmp_path / "entity",
        "-signer", files["sender.pem"], "-inkey", files["sender.key"],
    )  # fmt: skip
    (tmp_path / "signed.eml").write_bytes(signed)
    sealed = openssl(
        "cms", "-encrypt", encrypt_args[0], "-binary", "-in", tmp_path / "signed.eml",
        "-from", SENDER, "-to", RECIPIENT, "-subject", "Referral",
        "-recip", files["recipient.pem"], *encrypt_args[1:],
    )  # fmt: skip
    opened = SecurityAgent().process_incoming(
        sealed, credentials=[pki.user(RECIPIENT).credential], trust=pki.anchors, at=AT
    )
    assert opened.message == plain
    assert opened.sender == DirectAddress.parse(SENDER)
    assert opened.decrypted.key_transport == expected_transport
