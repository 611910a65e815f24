"""Differential tests of hisp.core.smime and the security agent against GnuPG's ``gpgsm``, a second CMS peer.

Each direction is its own test: gpgsm decrypts our EnvelopedData and verifies our detached SignedData (with
our test CA as its trust anchor); we decrypt what ``gpgsm --encrypt`` makes and verify what
``gpgsm --detach-sign`` and ``gpgsm --sign`` make; and a whole Direct message crosses in each direction.

The PKI is a :class:`~hisp.testing.pki.TestPKI` made at the wall-clock time (gpgsm checks validity against
the system clock). The module gets its own GNUPGHOME (short, under /tmp: gpg-agent socket paths are
length-limited) with the CA in trustlist.txt (``S relax``), CRL, policy and dirmngr look-ups off, and its
gpg-agent is stopped at teardown.

What gpgsm 2.2 could not do (checked with gpgsm 2.2.40, libksba 1.6.3, libgcrypt 1.10.1):

* RSAES-OAEP key transport: it cannot decrypt an EnvelopedData whose KeyTransRecipientInfo uses
  id-RSAES-OAEP, ours (SHA-256) or openssl's (SHA-1 defaults) alike: "recp 0 - error getting encrypted
  session key", "message decryption failed: No secret key <GpgSM>". Nothing is asserted about it here; our
  envelopes for gpgsm use RSA PKCS#1 v1.5, and gpgsm itself only sends PKCS#1 v1.5.
* A KeyTransRecipientInfo identified by subjectKeyIdentifier (``recipient_identifier="ski"``; openssl's
  ``-keyid`` alike): "recp 0 - error getting info: General error", then "No secret key". Our envelopes
  for gpgsm use issuerAndSerialNumber (our default); gpgsm sends only that.
* It has no ``--passphrase`` option; its option parser takes ``--passphrase`` as an abbreviation of
  ``--passphrase-fd``, so ``--passphrase PW`` is accepted silently and the import then fails. The key's
  passphrase goes in through ``--passphrase-fd 0``, for the PKCS#12 import and for every use of the key.
* Its PKCS#12 reader rejects PBES2 with the HMAC-SHA256 PRF that cryptography writes by default
  ("encryptedData error at "pkcs5PBES2-params""): the file is written with the legacy PBES1 SHA-1/3DES.
"""

from __future__ import annotations

import base64
import email
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from hisp.addresses import DirectAddress
from hisp.core import mime, smime
from hisp.core.agent import SecurityAgent
from hisp.core.certs import Certificate, load_private_key, private_key_to_pem
from hisp.core.devca import Issued
from hisp.core.policy import ContentCipher, DigestAlgorithm, KeyTransport, policy_from_name
from hisp.testing.pki import TestPKI, plain_message

pytestmark = pytest.mark.interop

GPGSM = shutil.which("gpgsm")
GPGCONF = shutil.which("gpgconf")
MISSING = "gpgsm is needed for the interop tests (not found on PATH): apt-get install gpgsm (.ci/run installs it)"
TIMEOUT = 30  # seconds, for every gpgsm and gpgconf call
PASSPHRASE = b"interop-passphrase"
THEIRS = "alice@direct.a.example"  # gpgsm holds this key: it decrypts and signs with it
OURS = "bob@direct.b.example"  # we hold this key; gpgsm is given only its certificate
CONTENT = (
    b"Content-Type: text/plain; charset=us-ascii\r\n\r\nReferral for patient 1234.\r\nTrailing spaces stay:   \r\n\r\n"
)
BODY = b"Referral attached.\r\n" + b"A line that is long enough to need care " * 40 + b"\r\n"
DIRECT_13 = policy_from_name("direct-1.3")
#: gpgsm's VALIDSIG hash algorithm numbers (libgcrypt's GCRY_MD_*)
GCRY_MD = {DigestAlgorithm.SHA256: "8", DigestAlgorithm.SHA384: "9", DigestAlgorithm.SHA512: "10"}


def _fingerprint(certificate: Certificate) -> str:
    """The SHA-1 fingerprint by which gpgsm names a certificate (trustlist.txt, ``-r``, ``-u``, status)."""
    return certificate.x509.fingerprint(hashes.SHA1()).hex().upper()


def _status(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    """The ``[GNUPG:]`` status lines gpgsm wrote (``--status-fd 2``: among its stderr), prefix removed."""
    return [
        line.removeprefix("[GNUPG:] ")
        for line in result.stderr.decode(errors="replace").splitlines()
        if line.startswith("[GNUPG:] ")
    ]


@dataclass
class Gpgsm:
    """A gpgsm keyring of its own: our test CA trusted, THEIRS's key and OURS's certificate imported."""

    home: Path
    pki: TestPKI

    @property
    def theirs(self) -> Issued:
        return self.pki.user(THEIRS)

    @property
    def ours(self) -> Issued:
        return self.pki.user(OURS)

    def run(
        self, *args: str | Path, passphrase: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run gpgsm on this keyring; ``passphrase``: feed the key's passphrase (import, decrypt, sign)."""
        command = [
            str(GPGSM),
            "--homedir", str(self.home),
            "--batch", "--no-tty",
            "--pinentry-mode", "loopback",
            "--disable-crl-checks", "--disable-policy-checks", "--disable-dirmngr",
            "--status-fd", "2",
            *(["--passphrase-fd", "0"] if passphrase else []),
            *map(str, args),
        ]  # fmt: skip
        result = subprocess.run(
            command,
            input=PASSPHRASE + b"\n" if passphrase else None,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
            env={**os.environ, "GNUPGHOME": str(self.home), "LC_ALL": "C"},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"gpgsm {' '.join(map(str, args))} failed with exit status {result.returncode}:\n"
                f"{result.stderr.decode(errors='replace')}"
            )
        return result


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(at=datetime.now(UTC).replace(microsecond=0))


def _kill_agent(home: Path) -> None:
    subprocess.run(
        [str(GPGCONF), "--homedir", str(home), "--kill", "all"],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "GNUPGHOME": str(home)},
    )


@pytest.fixture(scope="module")
def gpgsm(pki: TestPKI) -> Iterator[Gpgsm]:
    assert GPGSM, MISSING
    assert GPGCONF, "gpgconf is needed to stop gpgsm's gpg-agent: apt-get install gpgconf"
    home = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    try:
        (home / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
        ca = pki.ca.certificate
        (home / "trustlist.txt").write_text(f"# {ca.subject}\n{_fingerprint(ca)} S relax\n")
        peer = Gpgsm(home, pki)
        (home / "certs.pem").write_bytes(ca.to_pem() + peer.ours.certificate.to_pem())
        peer.run("--import", home / "certs.pem")
        # THEIRS's key as PKCS#12; the key goes through its PEM form, as a deployment would hold it.
        key = load_private_key(private_key_to_pem(peer.theirs.private_key))
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(2048)
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())
            .build(PASSPHRASE)
        )
        (home / "theirs.p12").write_bytes(
            pkcs12.serialize_key_and_certificates(b"theirs", key, peer.theirs.certificate.x509, [ca.x509], encryption)
        )
        peer.run("--import", home / "theirs.p12", passphrase=True)
        listing = peer.run("--with-colons", "--list-secret-keys").stdout.decode()
        assert _fingerprint(peer.theirs.certificate) in listing, f"PKCS#12 import left no secret key:\n{listing}"
        yield peer
    finally:
        if GPGCONF:
            _kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)


def test_gpgsm_is_installed() -> None:
    assert GPGSM, MISSING
    version = subprocess.run([GPGSM, "--version"], capture_output=True, timeout=TIMEOUT, check=True).stdout
    assert re.search(rb"^Cipher:.*\bAES256\b", version, re.MULTILINE), version.decode(errors="replace")


# --- we encrypt, gpgsm decrypts -------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", [ContentCipher.AES128_CBC, ContentCipher.AES256_CBC], ids=["aes128", "aes256"])
def test_gpgsm_decrypts_our_envelope(gpgsm: Gpgsm, tmp_path: Path, cipher: ContentCipher) -> None:
    der = smime.encrypt(CONTENT, [gpgsm.theirs.certificate], cipher=cipher, key_transport=KeyTransport.RSA_PKCS1)
    (tmp_path / "env.p7m").write_bytes(der)
    result = gpgsm.run(
        "--assume-binary", "--output", tmp_path / "out", "--decrypt", tmp_path / "env.p7m", passphrase=True
    )
    assert (tmp_path / "out").read_bytes() == CONTENT
    assert "DECRYPTION_OKAY" in _status(result)


# --- we sign, gpgsm verifies ------------------------------------------------------------------------------


@pytest.mark.parametrize("digest", list(GCRY_MD), ids=lambda d: d.value)
def test_gpgsm_verifies_our_detached_signature(
    gpgsm: Gpgsm, pki: TestPKI, tmp_path: Path, digest: DigestAlgorithm
) -> None:
    der = smime.sign(CONTENT, gpgsm.ours.credential, digest=digest, at=pki.at)
    (tmp_path / "sig.p7s").write_bytes(der)
    (tmp_path / "content").write_bytes(CONTENT)
    result = gpgsm.run("--assume-binary", "--verify", tmp_path / "sig.p7s", tmp_path / "content")
    status = _status(result)
    fingerprint = _fingerprint(gpgsm.ours.certificate)
    assert any(s.startswith(f"GOODSIG {fingerprint} ") for s in status), status
    (valid,) = (s.split() for s in status if s.startswith("VALIDSIG "))
    assert valid[1] == fingerprint
    assert valid[3] == pki.at.strftime("%Y%m%dT%H%M%S")  # our signingTime
    assert valid[7:9] == ["1", GCRY_MD[digest]]  # RSA, our digest
    assert any(s.startswith("TRUST_FULLY") for s in status), status  # chains to our CA in trustlist.txt


def test_gpgsm_rejects_our_signature_over_other_content(gpgsm: Gpgsm, pki: TestPKI, tmp_path: Path) -> None:
    der = smime.sign(CONTENT, gpgsm.ours.credential, digest=DigestAlgorithm.SHA256, at=pki.at)
    (tmp_path / "sig.p7s").write_bytes(der)
    (tmp_path / "content").write_bytes(CONTENT.replace(b"1234", b"4321"))
    result = gpgsm.run("--assume-binary", "--verify", tmp_path / "sig.p7s", tmp_path / "content", check=False)
    assert result.returncode != 0
    status = _status(result)
    assert any(s.startswith("BADSIG") for s in status), status
    assert not any(s.startswith("GOODSIG") for s in status), status
    assert b"message digest attribute does not match" in result.stderr


# --- gpgsm encrypts, we decrypt ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cipher_algo", "expected"),
    [(None, ContentCipher.AES128_CBC), ("AES", ContentCipher.AES128_CBC), ("AES256", ContentCipher.AES256_CBC)],
    ids=["default", "aes128", "aes256"],
)
def test_we_decrypt_gpgsm_envelope(
    gpgsm: Gpgsm, tmp_path: Path, cipher_algo: str | None, expected: ContentCipher
) -> None:
    (tmp_path / "content").write_bytes(CONTENT)
    options = [] if cipher_algo is None else ["--cipher-algo", cipher_algo]
    gpgsm.run(
        *options, "--recipient", _fingerprint(gpgsm.ours.certificate),
        "--output", tmp_path / "env.p7m", "--encrypt", tmp_path / "content",
    )  # fmt: skip
    result = smime.decrypt((tmp_path / "env.p7m").read_bytes(), [gpgsm.ours.credential], policy=DIRECT_13)
    assert result.content == CONTENT
    assert result.cipher is expected  # gpgsm's default: AES-128-CBC, as its manual says
    assert result.key_transport == "rsa-pkcs1"
    assert result.recipient == gpgsm.ours.certificate
    assert result.recipient_count == 1


# --- gpgsm signs, we verify -------------------------------------------------------------------------------


def _gpgsm_sign(gpgsm: Gpgsm, tmp_path: Path, content: bytes, *options: str) -> bytes:
    (tmp_path / "content").write_bytes(content)
    gpgsm.run(
        "--local-user", _fingerprint(gpgsm.theirs.certificate), "--output", tmp_path / "sig",
        *options, tmp_path / "content", passphrase=True,
    )  # fmt: skip
    return (tmp_path / "sig").read_bytes()


@pytest.mark.parametrize(
    ("digest_algo", "expected"),
    [(None, DigestAlgorithm.SHA256), ("SHA384", DigestAlgorithm.SHA384), ("SHA512", DigestAlgorithm.SHA512)],
    ids=["default", "sha384", "sha512"],
)
def test_we_verify_gpgsm_detached_signature(
    gpgsm: Gpgsm, pki: TestPKI, tmp_path: Path, digest_algo: str | None, expected: DigestAlgorithm
) -> None:
    options = [] if digest_algo is None else ["--digest-algo", digest_algo]
    der = _gpgsm_sign(gpgsm, tmp_path, CONTENT, *options, "--detach-sign")
    verdict = smime.verify(der, content=CONTENT, policy=DIRECT_13)
    assert verdict.invalid_signers == ()
    (signer,) = verdict.valid_signers
    assert signer.certificate == gpgsm.theirs.certificate
    assert signer.digest is expected
    assert signer.signature_algorithm == "rsa-pkcs1"
    assert signer.signing_time is not None
    assert abs((signer.signing_time - datetime.now(UTC)).total_seconds()) < 600
    assert verdict.content == CONTENT


def test_we_refuse_gpgsm_signature_over_other_content(gpgsm: Gpgsm, tmp_path: Path) -> None:
    der = _gpgsm_sign(gpgsm, tmp_path, CONTENT, "--detach-sign")
    with pytest.raises(smime.SignatureError, match="message digest mismatch"):
        smime.verify(der, content=CONTENT.replace(b"1234", b"4321"), policy=DIRECT_13)


def test_we_verify_gpgsm_opaque_signature(gpgsm: Gpgsm, tmp_path: Path) -> None:
    der = _gpgsm_sign(gpgsm, tmp_path, CONTENT, "--sign")
    assert der[:2] == b"\x30\x80"  # gpgsm streams: BER, indefinite lengths
    verdict = smime.verify(der, policy=DIRECT_13)
    assert verdict.content == CONTENT
    (signer,) = verdict.valid_signers
    assert signer.certificate == gpgsm.theirs.certificate
    assert signer.digest is DigestAlgorithm.SHA256


# --- whole Direct messages --------------------------------------------------------------------------------


def _split_multipart_signed(entity: bytes) -> tuple[bytes, bytes]:
    """The raw first part and the decoded signature of a multipart/signed entity (RFC 1847), as received."""
    head, _, body = entity.partition(b"\r\n\r\n")
    found = re.search(rb'boundary="?([^";\r\n]+)"?', head)
    assert found is not None, head
    delimiter = b"\r\n--" + found.group(1)
    parts = (b"\r\n" + body).split(delimiter)
    signed = parts[1].split(b"\r\n", 1)[1]
    _, _, signature_b64 = parts[2].split(b"\r\n", 1)[1].partition(b"\r\n\r\n")
    return signed, base64.b64decode(b"".join(signature_b64.split()))


@pytest.mark.parametrize("cipher", [ContentCipher.AES128_CBC, ContentCipher.AES256_CBC], ids=["aes128", "aes256"])
def test_gpgsm_opens_our_direct_message(gpgsm: Gpgsm, pki: TestPKI, tmp_path: Path, cipher: ContentCipher) -> None:
    plain = plain_message(OURS, THEIRS, body=BODY)
    policy = DIRECT_13.with_options(cipher=cipher, key_transport=KeyTransport.RSA_PKCS1)
    sealed = SecurityAgent(policy=policy).process_outgoing(
        plain,
        sender=[gpgsm.ours.credential],
        recipients={DirectAddress.parse(THEIRS): [gpgsm.theirs.certificate]},
        at=pki.at,
    )
    envelope = email.message_from_bytes(sealed.message).get_payload(decode=True)
    assert isinstance(envelope, bytes)
    (tmp_path / "env.p7m").write_bytes(envelope)
    gpgsm.run("--assume-binary", "--output", tmp_path / "signed", "--decrypt", tmp_path / "env.p7m", passphrase=True)
    signed, signature = _split_multipart_signed((tmp_path / "signed").read_bytes())
    assert signed == b"Content-Type: message/rfc822\r\n\r\n" + mime.canonicalize(plain)
    (tmp_path / "entity").write_bytes(signed)
    (tmp_path / "sig.p7s").write_bytes(signature)
    result = gpgsm.run("--assume-binary", "--verify", tmp_path / "sig.p7s", tmp_path / "entity")
    assert any(s.startswith(f"GOODSIG {_fingerprint(gpgsm.ours.certificate)} ") for s in _status(result))
    assert any(s.startswith("TRUST_FULLY") for s in _status(result))


def test_we_open_a_direct_message_made_by_gpgsm(gpgsm: Gpgsm, pki: TestPKI, tmp_path: Path) -> None:
    plain = plain_message(THEIRS, OURS, body=BODY)
    outer_headers, entity = mime.wrap(plain)
    signature = _gpgsm_sign(gpgsm, tmp_path, entity, "--detach-sign")
    (tmp_path / "signed").write_bytes(mime.build_multipart_signed(entity, signature, DigestAlgorithm.SHA256))
    gpgsm.run(
        "--cipher-algo", "AES256", "--recipient", _fingerprint(gpgsm.ours.certificate),
        "--output", tmp_path / "env.p7m", "--encrypt", tmp_path / "signed",
    )  # fmt: skip
    message = mime.build_enveloped_message(outer_headers, (tmp_path / "env.p7m").read_bytes())
    opened = SecurityAgent().process_incoming(
        message, credentials=[gpgsm.ours.credential], trust=pki.anchors, at=datetime.now(UTC)
    )
    assert opened.message == mime.canonicalize(plain)  # the long line went into base64 before signing
    assert opened.sender == DirectAddress.parse(THEIRS)
    assert opened.signer == gpgsm.theirs.certificate
    assert opened.wrapped
    assert opened.decrypted.cipher is ContentCipher.AES256_CBC
    assert opened.decrypted.key_transport == "rsa-pkcs1"
