"""MD5 inside RSAES-OAEP parameters is refused by name (issue 2: "MD5 ... recognised and refused with a clear
PolicyViolation naming the algorithm"), not reported as a generic decryption failure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from asn1crypto import algos, cms

from hisp.core import smime
from hisp.core.devca import create_ca, issue_certificate
from hisp.core.policy import KeyTransport, policy_from_name
from hisp.errors import PolicyViolation

AT = datetime(2026, 11, 30, 12, tzinfo=UTC)


def _with_oaep_hash(der: bytes, index: int, digest: str) -> bytes:
    info = cms.ContentInfo.load(der)
    ktri = info["content"]["recipient_infos"][index].chosen
    ktri["key_encryption_algorithm"] = cms.KeyEncryptionAlgorithm({
        "algorithm": "rsaes_oaep",
        "parameters": algos.RSAESOAEPParams({
            "hash_algorithm": {"algorithm": digest},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": digest}},
        }),
    })
    return bytes(info.dump(force=True))


@pytest.mark.parametrize("policy", ["direct-1.3", "direct-1.2"])
def test_md5_oaep_parameters_are_refused_naming_md5(policy: str) -> None:
    ca = create_ca("OAEP CA", at=AT)
    user = issue_certificate(ca, at=AT, address="a@direct.example.org")
    der = smime.encrypt(b"hello", [user.certificate], key_transport=KeyTransport.RSA_OAEP)
    with pytest.raises(PolicyViolation, match="MD5"):
        smime.decrypt(_with_oaep_hash(der, 0, "md5"), [user.credential], policy=policy_from_name(policy))


def test_another_recipient_info_for_our_key_still_opens_the_envelope() -> None:
    """AS-4: every RecipientInfo for our keys is tried; an MD5 one does not stop a good one after it."""
    ca = create_ca("OAEP CA", at=AT)
    user = issue_certificate(ca, at=AT, address="a@direct.example.org")
    der = smime.encrypt(b"hello", [user.certificate, user.certificate], key_transport=KeyTransport.RSA_OAEP)
    opened = smime.decrypt(_with_oaep_hash(der, 0, "md5"), [user.credential], policy=policy_from_name("direct-1.3"))
    assert opened.content == b"hello"
