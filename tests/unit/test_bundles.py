"""Trust bundles (TB-1, TB-2, TB-5): fixtures from the Java and .NET RIs and bundles generated here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import cms as asn1_cms
from conftest import AT, fixture_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisp.core import devca
from hisp.core.bundles import TrustBundle, describe_anchor, parse_bundle
from hisp.core.certs import Certificate, load_certificates
from hisp.core.policy import policy_from_name
from hisp.errors import ConfigError, HispError, MessageFormatError, TrustError
from hisp.testing.bundles import make_p7b, pem_armor, sign_bundle

P13 = policy_from_name("direct-1.3")
# The Java RI's bundle signer is RSA-1024 and signs with SHA-1: only a relaxed legacy policy accepts it.
P12_LEGACY = policy_from_name("direct-1.2").with_options(min_rsa_bits=1024)
# bundleSigner.der is valid 2012-12-05 .. 2022-12-03: pin a time inside.
AT_2020 = datetime(2020, 6, 1, tzinfo=UTC)

TEST_BUNDLE = "direct-ri-java/bundles/testBundle.p7b"
SIGNED_BUNDLE = "direct-ri-java/bundles/signedbundle.p7m"
BUNDLE_SIGNER = "direct-ri-java/bundles/bundleSigner.der"
PROVIDER_BUNDLE = "interop/java-ri/providerTestBundle.p7b"
DOTNET_BUNDLE = "interop/dotnet/bundleWithMetadata.p7b"


def parse(data: bytes, **options: object) -> TrustBundle:
    options.setdefault("at", AT)
    options.setdefault("policy", P13)
    return parse_bundle(data, source="test", **options)  # type: ignore[arg-type]


def same(found: object, expected: list[Certificate]) -> bool:
    """Same certificates, each once; order aside (a DER SET OF is sorted by encoding)."""
    assert isinstance(found, tuple)
    return len(found) == len(expected) == len(set(found)) and set(found) == set(expected)


@pytest.fixture(scope="module")
def world() -> dict[str, object]:
    """Three anchors, a bundle signing credential, and a second (wrong) signer, all valid around AT."""
    anchors = [devca.create_ca(f"Bundle Anchor {n}", at=AT - timedelta(days=1)).certificate for n in "ABC"]
    publisher = devca.create_ca("Bundle Publisher CA", at=AT - timedelta(days=1))
    signer = devca.issue_certificate(
        publisher, at=AT, domain="bundles.example", usage=devca.KeyUsagePreset.SIGNING
    ).credential
    rogue = devca.issue_certificate(
        publisher, at=AT, domain="rogue.example", usage=devca.KeyUsagePreset.SIGNING
    ).credential
    return {"anchors": anchors, "signer": signer, "rogue": rogue}


# -- fixtures from other implementations ---------------------------------------------------------


def test_java_pem_bundle_has_one_anchor() -> None:
    bundle = parse(fixture_bytes(TEST_BUNDLE))
    assert [a.subject for a in bundle.anchors] == ["ST=MO,C=US,CN=sm1.direct.com Root CA"]
    assert not bundle.signed and bundle.signer is None
    assert bundle.defects == ()


def test_provider_bundle_der_lists_real_anchors() -> None:
    bundle = parse(fixture_bytes(PROVIDER_BUNDLE))
    names = " | ".join(a.subject for a in bundle.anchors)
    assert len(bundle.anchors) == 6
    for expected in ("BIDMC Direct Test CA", "Browsersoft Direct2 CA", "Infomedtrix Net Root CA"):
        assert expected in names
    # two anchors lack basicConstraints cA: kept (trust is by configuration) but reported
    assert sum("is not a CA certificate" in d for d in bundle.defects) == 2


def test_digest_is_sha256_of_bytes_as_received() -> None:
    import hashlib

    data = fixture_bytes(PROVIDER_BUNDLE)
    assert parse(data).digest == hashlib.sha256(data).hexdigest()


def test_dotnet_bundle_with_metadata_is_unsigned_with_anchors_in_certificates_field() -> None:
    """The .NET RI's AnchorBundle: certs-only SignedData (no SignerInfo) whose id-data content is metadata."""
    data = fixture_bytes(DOTNET_BUNDLE)
    info = asn1_cms.ContentInfo.load(data)
    assert len(info["content"]["signer_infos"]) == 0  # unsigned: the content is not a p7b but metadata
    bundle = parse(data)
    assert not bundle.signed
    assert [a.subject.split(",")[-1] for a in bundle.anchors] == ["emailAddress=secureexsolutions.com", "CN=TNHISPCA"]
    assert bundle.metadata is not None and bundle.metadata.startswith("<xml>")
    assert "<testStructure>test</testStructure>" in bundle.metadata
    assert any("metadata" in d for d in bundle.defects)
    assert list(bundle.anchors) == load_certificates(data)  # the certs module reads the same anchors


def test_java_signed_bundle_verifies_against_configured_signer() -> None:
    signer = Certificate.from_der(fixture_bytes(BUNDLE_SIGNER))
    bundle = parse(fixture_bytes(SIGNED_BUNDLE), signing_certificates=[signer], at=AT_2020, policy=P12_LEGACY)
    assert bundle.signed and bundle.signer == signer
    # the anchors are those inside the signed content (the same as testBundle.p7b), never the signer
    assert bundle.anchors == parse(fixture_bytes(TEST_BUNDLE)).anchors
    assert signer not in bundle.anchors


def test_java_signed_bundle_without_configured_signer_is_unverified() -> None:
    bundle = parse(fixture_bytes(SIGNED_BUNDLE))
    assert bundle.signed and bundle.signer is None
    assert any("not verified" in d for d in bundle.defects)
    assert Certificate.from_der(fixture_bytes(BUNDLE_SIGNER)) not in bundle.anchors


def test_java_signed_bundle_with_expired_signer_is_refused() -> None:
    signer = Certificate.from_der(fixture_bytes(BUNDLE_SIGNER))
    with pytest.raises(TrustError) as caught:
        parse(fixture_bytes(SIGNED_BUNDLE), signing_certificates=[signer], at=AT, policy=P12_LEGACY)
    assert caught.value.reason == "bundle signer expired"


def test_java_signed_bundle_sha1_refused_by_direct_13() -> None:
    signer = Certificate.from_der(fixture_bytes(BUNDLE_SIGNER))
    with pytest.raises(TrustError, match="SHA-1") as caught:
        parse(fixture_bytes(SIGNED_BUNDLE), signing_certificates=[signer], at=AT_2020, policy=P13)
    assert caught.value.reason == "bundle signature"


# -- generated bundles ---------------------------------------------------------------------------


@pytest.mark.parametrize("pem", [False, True], ids=["der", "pem"])
def test_unsigned_generated_bundle(world: dict, pem: bool) -> None:
    data = make_p7b(world["anchors"], pem=pem)
    assert data.startswith(b"-----BEGIN PKCS7-----") == pem
    bundle = parse(data)
    assert same(bundle.anchors, world["anchors"])
    assert not bundle.signed and bundle.defects == ()


@pytest.mark.parametrize(
    ("inner_pem", "outer_pem"), [(False, False), (True, False), (False, True)], ids=["der", "pem-inner", "pem-outer"]
)
def test_signed_generated_bundle_good_signature(world: dict, inner_pem: bool, outer_pem: bool) -> None:
    signer = world["signer"]
    data = sign_bundle(make_p7b(world["anchors"], pem=inner_pem), signer, at=AT, pem=outer_pem)
    bundle = parse(data, signing_certificates=[signer.certificate])
    assert bundle.signed and bundle.signer == signer.certificate
    assert same(bundle.anchors, world["anchors"])
    assert signer.certificate not in bundle.anchors  # TB-5: the signer is not an anchor


def test_tampered_signed_bundle_is_refused(world: dict) -> None:
    signer = world["signer"]
    data = sign_bundle(make_p7b(world["anchors"]), signer, at=AT)
    assert data.count(b"Bundle Anchor A") == 2  # subject and issuer of the self-signed anchor
    tampered = data.replace(b"Bundle Anchor A", b"Bundle Anchor X")
    with pytest.raises(TrustError, match="digest mismatch") as caught:
        parse(tampered, signing_certificates=[signer.certificate])
    assert caught.value.reason == "bundle signature"


def test_bundle_signed_by_wrong_signer_is_refused(world: dict) -> None:
    data = sign_bundle(make_p7b(world["anchors"]), world["rogue"], at=AT)
    with pytest.raises(TrustError, match="not signed by a configured") as caught:
        parse(data, signing_certificates=[world["signer"].certificate])
    assert caught.value.reason == "bundle signature"


def test_carried_signer_certificate_is_not_trusted_by_itself(world: dict) -> None:
    """A valid signature by the certificate the bundle carries proves nothing unless that one is configured."""
    data = sign_bundle(make_p7b(world["anchors"]), world["rogue"], at=AT)
    with pytest.raises(TrustError):
        parse(data, signing_certificates=[world["anchors"][0]])


@pytest.mark.parametrize("how", ["require_signature", "signer configured"])
def test_unsigned_bundle_refused_when_signature_required(world: dict, how: str) -> None:
    data = make_p7b(world["anchors"])
    options: dict[str, object] = (
        {"require_signature": True}
        if how == "require_signature"
        else {"signing_certificates": [world["signer"].certificate]}
    )
    with pytest.raises(TrustError) as caught:
        parse(data, **options)
    assert caught.value.reason == "bundle unsigned"


def test_signer_not_yet_valid_is_refused(world: dict) -> None:
    signer = world["signer"]
    data = sign_bundle(make_p7b(world["anchors"]), signer, at=AT)
    with pytest.raises(TrustError) as caught:
        parse(data, signing_certificates=[signer.certificate], at=AT - timedelta(days=30))
    assert caught.value.reason == "bundle signer expired"


def test_nested_signed_bundle_is_refused(world: dict) -> None:
    signer = world["signer"]
    inner = sign_bundle(make_p7b(world["anchors"]), signer, at=AT)
    data = sign_bundle(inner, signer, at=AT)
    with pytest.raises(MessageFormatError, match="itself a signed bundle"):
        parse(data, signing_certificates=[signer.certificate])


def test_duplicate_anchors_are_dropped(world: dict) -> None:
    a = world["anchors"][0]
    bundle = parse(make_p7b([a, a, world["anchors"][1]]))
    assert same(bundle.anchors, [a, world["anchors"][1]])
    assert any("duplicate" in d for d in bundle.defects)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a bundle",
        b"\x30\x03\x02\x01\x01",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PKCS7-----\n!!!!\n-----END PKCS7-----\n",
        pem_armor(b"\x30\x00"),
    ],
    ids=["empty", "text", "short-der", "pem-certificate", "pem-bad-base64", "pem-empty-sequence"],
)
def test_malformed_bundles_raise_message_format_error(data: bytes) -> None:
    with pytest.raises(MessageFormatError):
        parse(data)


def test_certificate_alone_is_not_a_bundle(world: dict) -> None:
    with pytest.raises(MessageFormatError):
        parse(world["anchors"][0].der)


def test_size_cap_is_checked_first() -> None:
    data = fixture_bytes(PROVIDER_BUNDLE)
    with pytest.raises(MessageFormatError, match="exceeds the limit"):
        parse(data, max_bytes=len(data) - 1)
    with pytest.raises(MessageFormatError, match="exceeds the limit"):
        parse(b"\x00" * 101, max_bytes=100)  # garbage: refused for its size, not its content
    assert parse(data, max_bytes=len(data)).anchors


def test_empty_certs_only_bundle_is_refused() -> None:
    empty = asn1_cms.ContentInfo(
        {
            "content_type": "signed_data",
            "content": {
                "version": "v1",
                "digest_algorithms": [],
                "encap_content_info": {"content_type": "data"},
                "signer_infos": [],
            },
        }
    ).dump()
    with pytest.raises(MessageFormatError, match="no usable certificate"):
        parse(empty)


def test_naive_time_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse(fixture_bytes(TEST_BUNDLE), at=datetime(2020, 1, 1))  # naive: the point of the test


def test_describe_anchor() -> None:
    (anchor,) = parse(fixture_bytes(TEST_BUNDLE)).anchors  # valid 2012-12-05 .. 2022-12-03
    before = describe_anchor(anchor, AT_2020)
    assert before["expired"] is False and before["not_yet_valid"] is False
    assert before["subject"] == "ST=MO,C=US,CN=sm1.direct.com Root CA"
    assert before["fingerprint_sha256"] == anchor.fingerprint_sha256 and len(before["fingerprint_sha256"]) == 64
    assert before["not_after"].startswith("2022-12-03")
    assert describe_anchor(anchor, AT)["expired"] is True


# -- hostile input -------------------------------------------------------------------------------

_SEEDS = [fixture_bytes(p) for p in (TEST_BUNDLE, SIGNED_BUNDLE, PROVIDER_BUNDLE, DOTNET_BUNDLE)]
_SIGNER = Certificate.from_der(fixture_bytes(BUNDLE_SIGNER))


def _parse_hostile(data: bytes, signed: bool) -> None:
    try:
        result = parse_bundle(
            data,
            source="fuzz",
            signing_certificates=[_SIGNER] if signed else (),
            at=AT_2020,
            policy=P12_LEGACY,
            max_bytes=64 * 1024,
        )
    except HispError:
        return
    assert result.anchors  # a bundle returned always holds at least one anchor


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.booleans())
def test_random_bytes_raise_only_hisp_errors(data: bytes, signed: bool) -> None:
    _parse_hostile(data, signed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(_SEEDS))),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255), st.sampled_from("rdi")), min_size=1, max_size=6),
    st.booleans(),
)
def test_mutated_bundles_raise_only_hisp_errors(seed: int, edits: list[tuple[int, int, str]], signed: bool) -> None:
    data = bytearray(_SEEDS[seed])
    for position, value, kind in edits:
        at = position % (len(data) + 1)
        if kind == "r" and at < len(data):
            data[at] = value
        elif kind == "d":
            del data[at : at + 1 + value % 8]
        else:
            data[at:at] = bytes([value])
    _parse_hostile(bytes(data), signed)
