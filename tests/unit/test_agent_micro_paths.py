"""Values the agent's hot path remembers or computes once are what computing them again gives.

* ``smime._HASH_NEW``: hashlib's named constructors, for ``hashlib.new`` by name.
* ``smime._default_capabilities_der``: the default smimeCapabilities' DER, remembered by identity.
* ``smime._encrypt`` with enum members or their string values (members are not converted again).
* ``mime._Parsed.transfer_encoding``: found once per entity; ``mime._transfer_encoding_of`` remembered by value.
"""

from __future__ import annotations

import hashlib

import pytest
from conftest import AT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisp.core import mime, smime
from hisp.core.devca import create_ca, issue_certificate
from hisp.core.policy import DEFAULT_POLICY, ContentCipher, KeyTransport

SETTINGS = settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("name", sorted(smime._HASH_NEW))
def test_named_hash_constructors_are_hashlib_new(name: str) -> None:
    for data in (b"", b"abc", bytes(range(256)) * 70):
        assert smime._HASH_NEW[name](data).digest() == hashlib.new(name, data).digest()
    # every digest the CMS code can name has a constructor
    assert {hash_name for _, hash_name in smime._DIGESTS.values()} <= set(smime._HASH_NEW)


def test_default_capabilities_der_is_the_encoding() -> None:
    assert smime._default_capabilities_der() == bytes(smime.DEFAULT_CAPABILITIES.to_asn1().dump())


@pytest.mark.parametrize("as_value", [False, True], ids=["members", "values"])
@pytest.mark.parametrize("cipher", list(ContentCipher), ids=[c.value for c in ContentCipher])
def test_encrypt_takes_members_and_values(cipher: ContentCipher, as_value: bool) -> None:
    ca = create_ca("micro CA", at=AT)
    alice = issue_certificate(ca, at=AT, address="alice@direct.a.example")
    content = b"Content-Type: text/plain\r\n\r\nhello\r\n"
    der = smime.encrypt(
        content,
        [alice.certificate],
        cipher=cipher.value if as_value else cipher,  # type: ignore[arg-type]
        key_transport=KeyTransport.RSA_OAEP.value if as_value else KeyTransport.RSA_OAEP,  # type: ignore[arg-type]
    )
    result = smime.decrypt(der, [alice.credential], policy=DEFAULT_POLICY)
    assert result.content == content
    assert result.cipher is cipher


_CTE_VALUES = st.one_of(
    st.sampled_from(["base64", "BASE64", " 7bit ", '"quoted-printable"', "8bit (comment)", "binary; x=y", "", "x-uue"]),
    st.text(alphabet=" \t\"();=abcdeBASE64-78xq", max_size=30),
)


@SETTINGS
@given(st.lists(_CTE_VALUES, max_size=3), st.sampled_from(["Content-Transfer-Encoding", "content-transfer-encoding"]))
def test_transfer_encoding_found_once_is_the_entitys(values: list[str], name: str) -> None:
    header = "".join(f"{name}: {value}\r\n" for value in values)
    raw = ("Content-Type: text/plain\r\n" + header + "\r\nbody\r\n").encode("ascii")
    entity = mime.parse_entity(raw)
    parsed = mime._parse_range(raw, 0, len(raw), mime.MimeLimits())
    expected = entity.transfer_encoding
    assert parsed.transfer_encoding == expected
    assert parsed.transfer_encoding == expected  # asked again: the remembered answer
    for value in values:
        assert mime._transfer_encoding(value) == mime._transfer_encoding_of.__wrapped__(value)


@SETTINGS
@given(
    st.sampled_from(["content_type", "signing_time", "message_digest", "smime_capabilities"]),
    st.one_of(st.integers(0, 300), st.integers(0, 70_000)),
)
def test_attribute_head_is_the_general_encoding(name: str, length: int) -> None:
    value = bytes([0x04]) + bytes(length)
    general = smime._tlv(0x30, smime._ATTRIBUTE_OID_DER[name], smime._tlv(0x31, value))
    assert smime._attribute_der(name, value) == general
