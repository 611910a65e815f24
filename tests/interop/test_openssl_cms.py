"""Differential tests of hisp.core.smime against independent CMS peers.

Peers: the ``openssl cms`` command (OpenSSL 3), cryptography's own PKCS#7 functions, and real messages
from the Direct RI .NET (RSAES-OAEP SHA-1) and a 2013 HISP message from the DCDT repository. Each
direction is its own test. Certificates come from the development CA; ``-attime`` pins OpenSSL's
validity check to the same instant as the certificates.
"""

from __future__ import annotations

import base64
import email
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from conftest import AT, FIXTURES, fixture_bytes
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from hisp.core import smime
from hisp.core.certs import Certificate, Credential, load_pkcs12, load_private_key
from hisp.core.devca import Issued, create_ca, issue_certificate
from hisp.core.policy import ContentCipher, DigestAlgorithm, KeyTransport, policy_from_name
from hisp.errors import PolicyViolation, SignatureError

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]

ATTIME = str(int(AT.timestamp()))
CONTENT = (
    b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    b"Referral for patient 1234.\r\nTrailing spaces stay:   \r\n\r\n"
)
DIRECT_13 = policy_from_name("direct-1.3")
DIRECT_12 = policy_from_name("direct-1.2")


def openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["openssl", *map(str, args)], input=stdin, capture_output=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"openssl {' '.join(map(str, args))} failed: {result.stderr.decode(errors='replace')}"
        )
    return result.stdout


class Peer:
    """A development PKI written to files for openssl."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = create_ca("hisp interop CA", at=AT)
        self.rsa = issue_certificate(self.ca, at=AT, address="alice@direct.a.example")
        self.ec256 = issue_certificate(self.ca, at=AT, address="ec256@direct.a.example", key_type="ec-p256")
        self.ec384 = issue_certificate(self.ca, at=AT, address="ec384@direct.a.example", key_type="ec-p384")
        (directory / "ca.pem").write_bytes(self.ca.certificate.to_pem())
        for name in ("rsa", "ec256", "ec384"):
            issued: Issued = getattr(self, name)
            (directory / f"{name}.pem").write_bytes(issued.certificate.to_pem())
            (directory / f"{name}.key").write_bytes(
                issued.private_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        (directory / "content.bin").write_bytes(CONTENT)

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def content(self) -> Path:
        return self.dir / "content.bin"


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Peer:
    return Peer(tmp_path_factory.mktemp("cms-peer"))


# --- we sign, openssl verifies ------------------------------------------------------------------------------


@pytest.mark.parametrize("signer", ["rsa", "ec256", "ec384"])
def test_openssl_verifies_our_detached_signature(peer: Peer, tmp_path: Path, signer: str) -> None:
    issued: Issued = getattr(peer, signer)
    der = smime.sign(CONTENT, issued.credential, digest=DigestAlgorithm.SHA256, at=AT)
    (tmp_path / "sig.der").write_bytes(der)
    out = openssl(
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        tmp_path / "sig.der",
        "-content",
        peer.content,
        "-CAfile",
        peer.cert("ca"),
        "-attime",
        ATTIME,
    )
    assert out == CONTENT


@pytest.mark.parametrize("digest", [DigestAlgorithm.SHA384, DigestAlgorithm.SHA512], ids=["sha384", "sha512"])
def test_openssl_verifies_our_opaque_signature(peer: Peer, tmp_path: Path, digest: DigestAlgorithm) -> None:
    der = smime.sign(CONTENT, peer.rsa.credential, digest=digest, at=AT, detached=False)
    (tmp_path / "sig.der").write_bytes(der)
    out = openssl(
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        tmp_path / "sig.der",
        "-CAfile",
        peer.cert("ca"),
        "-attime",
        ATTIME,
    )
    assert out == CONTENT


def test_openssl_rejects_our_signature_over_other_content(peer: Peer, tmp_path: Path) -> None:
    der = smime.sign(CONTENT, peer.rsa.credential, digest=DigestAlgorithm.SHA256, at=AT)
    (tmp_path / "sig.der").write_bytes(der)
    (tmp_path / "other.bin").write_bytes(CONTENT + b"x")
    with pytest.raises(AssertionError, match=r"digest failure|Verification failure"):
        openssl(
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            tmp_path / "sig.der",
            "-content",
            tmp_path / "other.bin",
            "-CAfile",
            peer.cert("ca"),
            "-attime",
            ATTIME,
        )


# --- we encrypt, openssl decrypts ---------------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["issuer_serial", "ski"])
@pytest.mark.parametrize("transport", list(KeyTransport), ids=[t.value for t in KeyTransport])
@pytest.mark.parametrize("cipher", list(ContentCipher), ids=[c.value for c in ContentCipher])
def test_openssl_decrypts_our_envelope(
    peer: Peer, tmp_path: Path, cipher: ContentCipher, transport: KeyTransport, rid: str
) -> None:
    # OpenSSL 3.0 decrypts AuthEnvelopedData (AES-GCM) as well: checked with 3.0.19.
    der = smime.encrypt(
        CONTENT,
        [peer.rsa.certificate],
        cipher=cipher,
        key_transport=transport,
        recipient_identifier=rid,  # type: ignore[arg-type]
    )
    (tmp_path / "env.der").write_bytes(der)
    out = openssl(
        "cms",
        "-decrypt",
        "-binary",
        "-inform",
        "DER",
        "-in",
        tmp_path / "env.der",
        "-recip",
        peer.cert("rsa"),
        "-inkey",
        peer.key("rsa"),
    )
    assert out == CONTENT


# --- openssl signs, we verify -------------------------------------------------------------------------------


def _openssl_sign(peer: Peer, tmp_path: Path, signer: str, *options: str) -> bytes:
    return openssl(
        "cms",
        "-sign",
        "-binary",
        "-in",
        peer.content,
        "-signer",
        peer.cert(signer),
        "-inkey",
        peer.key(signer),
        "-outform",
        "DER",
        *options,
    )


@pytest.mark.parametrize("signer", ["rsa", "ec256", "ec384"])
def test_we_verify_openssl_detached_signature(peer: Peer, tmp_path: Path, signer: str) -> None:
    der = _openssl_sign(peer, tmp_path, signer, "-md", "sha256")
    verdict = smime.verify(der, content=CONTENT, policy=DIRECT_13)
    (result,) = verdict.valid_signers
    assert result.certificate == getattr(peer, signer).certificate
    assert result.digest is DigestAlgorithm.SHA256
    assert result.signing_time is not None


def test_we_verify_openssl_opaque_signature(peer: Peer, tmp_path: Path) -> None:
    der = _openssl_sign(peer, tmp_path, "rsa", "-md", "sha512", "-nodetach")
    verdict = smime.verify(der, policy=DIRECT_13)
    assert verdict.content == CONTENT
    assert verdict.valid_signers[0].digest is DigestAlgorithm.SHA512


def test_we_verify_openssl_streamed_ber_signature(peer: Peer, tmp_path: Path) -> None:
    der = _openssl_sign(peer, tmp_path, "rsa", "-md", "sha256", "-nodetach", "-stream")
    assert der[1] == 0x80  # indefinite length: BER
    assert smime.verify(der, policy=DIRECT_13).content == CONTENT


def test_we_verify_openssl_signer_by_subject_key_identifier(peer: Peer, tmp_path: Path) -> None:
    der = _openssl_sign(peer, tmp_path, "rsa", "-md", "sha256", "-keyid")
    assert (
        asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]["sid"].name == "subject_key_identifier"
    )
    assert (
        smime.verify(der, content=CONTENT, policy=DIRECT_13).valid_signers[0].certificate
        == peer.rsa.certificate
    )


def test_we_verify_openssl_rsassa_pss_signature(peer: Peer, tmp_path: Path) -> None:
    der = _openssl_sign(peer, tmp_path, "rsa", "-md", "sha256", "-keyopt", "rsa_padding_mode:pss")
    verdict = smime.verify(der, content=CONTENT, policy=DIRECT_13)
    assert verdict.valid_signers[0].signature_algorithm == "rsassa-pss"


def test_we_refuse_openssl_signature_over_other_content(peer: Peer, tmp_path: Path) -> None:
    der = _openssl_sign(peer, tmp_path, "rsa", "-md", "sha256")
    with pytest.raises(SignatureError, match="message digest mismatch"):
        smime.verify(der, content=CONTENT.replace(b"1234", b"4321"), policy=DIRECT_13)


def test_openssl_sha1_signature_refused_by_13_accepted_by_12(peer: Peer, tmp_path: Path) -> None:
    der = _openssl_sign(peer, tmp_path, "rsa", "-md", "sha1")
    with pytest.raises(PolicyViolation, match=r"SHA-1 refused by policy direct-1\.3"):
        smime.verify(der, content=CONTENT, policy=DIRECT_13)
    assert (
        smime.verify(der, content=CONTENT, policy=DIRECT_12).valid_signers[0].digest is DigestAlgorithm.SHA1
    )


# --- openssl encrypts, we decrypt ---------------------------------------------------------------------------

OPENSSL_ENVELOPES = {
    # id: (openssl options, expected cipher, expected key transport)
    "aes128-pkcs1": (["-aes128"], ContentCipher.AES128_CBC, "rsa-pkcs1"),
    "aes256-pkcs1": (["-aes256"], ContentCipher.AES256_CBC, "rsa-pkcs1"),
    "aes128-oaep-sha1": (
        ["-aes128", "-keyopt", "rsa_padding_mode:oaep"],
        ContentCipher.AES128_CBC,
        "rsa-oaep-sha1",
    ),
    "aes256-oaep-sha256": (
        ["-aes256", "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"],
        ContentCipher.AES256_CBC,
        "rsa-oaep-sha256",
    ),
    "aes256-oaep-sha256-mgf1-sha1": (
        [
            "-aes256",
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-keyopt",
            "rsa_oaep_md:sha256",
            "-keyopt",
            "rsa_mgf1_md:sha1",
        ],
        ContentCipher.AES256_CBC,
        "rsa-oaep-sha256-mgf1-sha1",
    ),
    "aes128-gcm": (["-aes-128-gcm"], ContentCipher.AES128_GCM, "rsa-pkcs1"),
    "aes256-gcm-oaep": (
        ["-aes-256-gcm", "-keyopt", "rsa_padding_mode:oaep"],
        ContentCipher.AES256_GCM,
        "rsa-oaep-sha1",
    ),
    "aes128-keyid": (["-aes128", "-keyid"], ContentCipher.AES128_CBC, "rsa-pkcs1"),
    "aes128-stream-ber": (["-aes128", "-stream"], ContentCipher.AES128_CBC, "rsa-pkcs1"),
}


@pytest.mark.parametrize("case", list(OPENSSL_ENVELOPES.values()), ids=list(OPENSSL_ENVELOPES))
def test_we_decrypt_openssl_envelope(
    peer: Peer, tmp_path: Path, case: tuple[list[str], ContentCipher, str]
) -> None:
    options, cipher, transport = case
    cipher_options = [o for o in options if o.startswith("-aes")]
    recipient_options = [o for o in options if not o.startswith("-aes")]
    if "-stream" in recipient_options:
        recipient_options.remove("-stream")
        cipher_options.append("-stream")
    der = openssl(
        "cms",
        "-encrypt",
        "-binary",
        "-in",
        peer.content,
        "-outform",
        "DER",
        *cipher_options,
        "-recip",
        peer.cert("rsa"),
        *recipient_options,
    )
    result = smime.decrypt(der, [peer.ec256.credential, peer.rsa.credential], policy=DIRECT_13)
    assert result.content == CONTENT
    assert result.cipher is cipher
    assert result.key_transport == transport
    assert result.recipient == peer.rsa.certificate


def test_we_decrypt_openssl_envelope_for_two_recipients(peer: Peer, tmp_path: Path) -> None:
    other = issue_certificate(peer.ca, at=AT, address="bob@direct.b.example")
    (tmp_path / "bob.pem").write_bytes(other.certificate.to_pem())
    der = openssl(
        "cms",
        "-encrypt",
        "-binary",
        "-in",
        peer.content,
        "-outform",
        "DER",
        "-aes256",
        peer.cert("rsa"),
        tmp_path / "bob.pem",
    )
    for issued in (peer.rsa, other):
        result = smime.decrypt(der, [issued.credential], policy=DIRECT_13)
        assert result.content == CONTENT
        assert result.recipient_count == 2


# --- cryptography's PKCS#7 as a peer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cipher", [ContentCipher.AES128_CBC, ContentCipher.AES256_CBC], ids=["aes128", "aes256"]
)
def test_cryptography_decrypts_our_envelope(peer: Peer, cipher: ContentCipher) -> None:
    der = smime.encrypt(CONTENT, [peer.rsa.certificate], cipher=cipher, key_transport=KeyTransport.RSA_PKCS1)
    private_key = peer.rsa.private_key
    assert isinstance(private_key, rsa.RSAPrivateKey)
    out = pkcs7.pkcs7_decrypt_der(der, peer.rsa.certificate.x509, private_key, [])
    assert out == CONTENT


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_we_verify_cryptography_signature(peer: Peer, detached: bool) -> None:
    options = [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCapabilities]
    if detached:
        options.append(pkcs7.PKCS7Options.DetachedSignature)
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(CONTENT)
        .add_signer(peer.rsa.certificate.x509, peer.rsa.private_key, hashes.SHA256())
        .sign(serialization.Encoding.DER, options)
    )
    verdict = smime.verify(der, content=CONTENT if detached else None, policy=DIRECT_13)
    assert verdict.content == CONTENT
    assert verdict.valid_signers[0].certificate == peer.rsa.certificate


def test_we_decrypt_cryptography_envelope(peer: Peer) -> None:
    der = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(CONTENT)
        .add_recipient(peer.rsa.certificate.x509)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    result = smime.decrypt(der, [peer.rsa.credential], policy=DIRECT_13)
    assert result.content == CONTENT
    assert result.key_transport == "rsa-pkcs1"


# --- real messages from other Direct implementations ------------------------------------------------------


def _enveloped_body(path: Path) -> bytes:
    message = email.message_from_bytes(path.read_bytes())
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def _split_multipart_signed(entity: bytes) -> tuple[bytes, bytes]:
    """The raw first part and the decoded signature of a multipart/signed entity (RFC 1847), as received."""
    head, _, body = entity.partition(b"\r\n\r\n")
    found = re.search(rb'boundary="?([^";\r\n]+)"?', head)
    assert found is not None
    delimiter = b"\r\n--" + found.group(1)
    parts = (b"\r\n" + body).split(delimiter)
    signed = parts[1].split(b"\r\n", 1)[1]
    signature_part = parts[2].split(b"\r\n", 1)[1]
    _, _, signature_b64 = signature_part.partition(b"\r\n\r\n")
    return signed, base64.b64decode(b"".join(signature_b64.split()))


def test_dotnet_rsa_oaep_sha1_envelope() -> None:
    """Direct RI (.NET) message: AES-128-CBC, RSAES-OAEP with default (SHA-1) parameters; SHA-1 signature."""
    directory = FIXTURES / "interop" / "dotnet"
    credential = load_pkcs12(fixture_bytes("interop/dotnet/nhind_umamalga1_vm1.pfx"), b"passw0rd!")
    result = smime.decrypt(
        _enveloped_body(directory / "envelopeSignature.eml"), [credential], policy=DIRECT_13
    )
    assert result.cipher is ContentCipher.AES128_CBC
    assert result.key_transport == "rsa-oaep-sha1"
    assert result.recipient == credential.certificate
    assert result.content.startswith(b"Content-Type:multipart/signed;")
    signed, signature = _split_multipart_signed(result.content)
    assert signed.startswith(b"Content-Type:message/rfc822")
    with pytest.raises(PolicyViolation, match=r"SHA-1 refused by policy direct-1\.3"):
        smime.verify(signature, content=signed, policy=DIRECT_13)
    verdict = smime.verify(signature, content=signed, policy=DIRECT_12)
    assert verdict.valid_signers[0].digest is DigestAlgorithm.SHA1
    assert "redmond.hsgincubator.com" in verdict.valid_signers[0].certificate.subject


def test_dcdt_hisp_message() -> None:
    """A 2013 HISP message (DCDT): AES-128-CBC, PKCS#1 v1.5, RSA-1024 recipient, SHA-1 signature."""
    directory = FIXTURES / "interop" / "dcdt"
    credential = Credential(
        Certificate.from_der((directory / "testDecryptMail_cert.der").read_bytes()),
        load_private_key((directory / "testDecryptMail_key.der").read_bytes()),
    )
    result = smime.decrypt(_enveloped_body(directory / "testDecryptMail.eml"), [credential], policy=DIRECT_13)
    assert result.cipher is ContentCipher.AES128_CBC
    assert result.key_transport == "rsa-pkcs1"
    signed, signature = _split_multipart_signed(result.content)
    legacy = DIRECT_12.with_options(min_rsa_bits=1024)
    verdict = smime.verify(signature, content=signed, policy=legacy)
    assert verdict.valid_signers[0].signing_time == datetime(2013, 1, 16, 10, 8, 3, tzinfo=UTC)
    with pytest.raises(PolicyViolation, match=r"RSA-1024 signer key refused by policy direct-1\.2"):
        smime.verify(signature, content=signed, policy=DIRECT_12)  # AS-5
