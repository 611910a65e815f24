"""Trust gaps closed without a network: intermediates carried only in the message's SignedData (AS-20,
AS-21) and the ETT certificates against their public root and ETT's "Invalid Trust Anchor" (issue 3,
ETT case).

Fixtures are read in place from ../shared/fixtures (see its MANIFEST.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from asn1crypto import cms
from conftest import AT, fixture_bytes

from hisp.addresses import DirectAddress
from hisp.core import mime, smime
from hisp.core.agent import SecurityAgent
from hisp.core.certs import Certificate, Credential, load_certificate
from hisp.core.devca import Issued, create_ca, issue_certificate
from hisp.core.policy import DigestAlgorithm, Direction, RevocationMode
from hisp.core.trust import StoreTrust, TrustAnchor, TrustStore, TrustVerdict, validate
from hisp.errors import TrustError
from hisp.testing.pki import TestPKI, plain_message, seal

SENDER = "dr.sd@direct.sender.example"
RECIPIENT = "intake@direct.recipient.example"

# -- intermediates from the message's SignedData ------------------------------------------------------


@dataclass(frozen=True)
class SignedDataWorld:
    root: Issued
    inter: Issued
    sender: Issued  # issued by inter; its credential's chain is (inter, root)
    recipients: TestPKI  # the recipient's own CA, unrelated to the sender's

    def store(self) -> TrustStore:
        """The sender's root as the only incoming anchor; no intermediate anywhere in the store."""
        return TrustStore(incoming=(TrustAnchor(self.root.certificate, "in.pem"),), revocation=RevocationMode.OFF)

    def recipient(self) -> Issued:
        return self.recipients.user(RECIPIENT)


@pytest.fixture(scope="module")
def sd() -> SignedDataWorld:
    root = create_ca("SignedData Root", at=AT)
    inter = create_ca("SignedData Intermediate", at=AT, issuer=root)
    sender = issue_certificate(inter, at=AT, address=SENDER)
    return SignedDataWorld(root, inter, sender, TestPKI(at=AT, name="SignedData Recipient CA"))


def _carried(signed_data: bytes) -> list[bytes]:
    return [c.chosen.dump() for c in cms.ContentInfo.load(signed_data)["content"]["certificates"]]


def _without(signed_data: bytes, dropped: Certificate) -> bytes:
    """The same SignedData with ``dropped`` taken out of its certificates (the signature is untouched:
    the certificates field is not signed, RFC 5652 section 5.1)."""
    info = cms.ContentInfo.load(signed_data)
    content = info["content"]
    kept = [c for c in content["certificates"] if c.chosen.dump() != dropped.der]
    content["certificates"] = kept
    return bytes(info.dump(force=True))


def _sealed(sd: SignedDataWorld, signer: Credential, drop: Certificate | None = None) -> bytes:
    """A wrapped, signed and encrypted Direct message from SENDER (as :func:`hisp.testing.pki.seal`),
    with ``drop`` removed from the SignedData's certificates after signing."""
    outer_headers, entity = mime.wrap(plain_message(SENDER, RECIPIENT))
    signature = smime._sign(entity, signer, digest=DigestAlgorithm.SHA256, at=AT)
    if drop is not None:
        assert drop.der in _carried(signature)
        signature = _without(signature, drop)
        assert drop.der not in _carried(signature)
    layer = mime.build_multipart_signed(entity, signature, DigestAlgorithm.SHA256)
    envelope = smime.encrypt(layer, [sd.recipient().certificate])
    return mime.build_enveloped_message(outer_headers, envelope, authenticated=False)


def test_intermediate_only_in_the_signed_data_completes_the_signers_path(sd: SignedDataWorld) -> None:
    """AS-20 (intermediates from the message's SignedData), AS-21 (incoming anchors): the sender's
    intermediate is in no store, only in the signed message's SignedData certificates; the anchor is the
    root. The message is accepted, the path running through the carried intermediate to the root."""
    store = sd.store()
    assert store.intermediates == () and store.certificates_for(Direction.INCOMING) == (sd.root.certificate,)
    message = _sealed(sd, sd.sender.credential)
    opened = SecurityAgent().process_incoming(
        message, credentials=[sd.recipient().credential], trust=StoreTrust(store), at=AT
    )
    assert opened.sender == DirectAddress.parse(SENDER) and opened.signer == sd.sender.certificate
    assert sd.inter.certificate in opened.signature.certificates  # it came with the message
    verdict = opened.path.verdict
    assert isinstance(verdict, TrustVerdict) and verdict.trusted
    assert verdict.chain == (sd.sender.certificate, sd.inter.certificate, sd.root.certificate)
    assert verdict.anchor == TrustAnchor(sd.root.certificate, "in.pem")
    assert "1 issuer: subject=CN=SignedData Intermediate" in opened.explain()


@pytest.mark.parametrize("variant", ["stripped", "leaf-only-signer"])
def test_without_the_intermediate_in_the_signed_data_the_signer_is_untrusted(sd: SignedDataWorld, variant: str) -> None:
    """AS-20, AS-21: the same message with the intermediate taken out of its SignedData ("stripped": same
    signature, one certificate fewer), or signed by a credential that carries no chain at all
    ("leaf-only-signer"), is refused as untrusted: the store alone (root anchor, no intermediates) cannot
    complete the path, and nothing is fetched."""
    if variant == "stripped":
        message = _sealed(sd, sd.sender.credential, drop=sd.inter.certificate)
    else:
        bare = Credential(sd.sender.certificate, sd.sender.private_key, ())
        message = seal(plain_message(SENDER, RECIPIENT), [bare], [sd.recipient().certificate], at=AT)
    with pytest.raises(TrustError) as caught:
        SecurityAgent().process_incoming(
            message, credentials=[sd.recipient().credential], trust=StoreTrust(sd.store()), at=AT
        )
    assert caught.value.reason == "untrusted"
    assert caught.value.message.startswith("untrusted signer:")
    verdict = caught.value.context["verdict"]
    assert isinstance(verdict, TrustVerdict) and not verdict.trusted
    assert verdict.certificate == sd.sender.certificate and verdict.anchor is None
    assert "reachable from its issuer CN=SignedData Intermediate" in verdict.explain()


# -- ETT: the public root over intermediate.sitenv.org, and the "Invalid Trust Anchor" ------------------

ETT = "ett/certificates"
#: ttpedge (2017-09-16 .. 2027-09-14) under intermediate.sitenv.org and sitenv.org (both to 2026-07-24).
ETT_VALID = datetime(2025, 6, 1, tzinfo=UTC)
#: a time at which ETT's invalid trust anchor was itself still valid (it expired 2021-11-25).
ETT_EARLY = datetime(2020, 6, 1, tzinfo=UTC)


def _ett(name: str) -> Certificate:
    return load_certificate(fixture_bytes(f"{ETT}/{name}"))


def _ett_store(anchor: str) -> TrustStore:
    return TrustStore(incoming=(TrustAnchor(_ett(anchor), anchor),), revocation=RevocationMode.OFF)


def test_ett_leaf_through_intermediate_to_the_sitenv_root_anchor_pinned_in_time() -> None:
    """ETT case (issue 3: ETT certificates with --at pinned), AS-21 (a non-self-signed anchor): the ETT
    Public Cert ttpedge.sitenv.org, with intermediate.sitenv.org as intermediate and sitenv.org (ETT Public
    Root, itself issued by the absent ca.directca.org) as anchor, is trusted at 2025-06-01; at AT
    (2026-11-30) the root and intermediate have expired and it is refused."""
    leaf, inter, root = _ett("ttpedge.sitenv.org.der"), _ett("intermediate.sitenv.org.der"), _ett("sitenv.org.der")
    assert root.subject != root.issuer  # the anchor is not self-signed
    verdict = validate(
        leaf, store=_ett_store("sitenv.org.der"), direction=Direction.INCOMING, intermediates=[inter], at=ETT_VALID
    )
    assert verdict.trusted and verdict.chain == (leaf, inter, root)
    assert verdict.anchor == TrustAnchor(root, "sitenv.org.der")
    assert verdict.to_json()["certificate"]["san"]["dns"] == ["ttpedge.sitenv.org"]
    with pytest.raises(TrustError) as caught:
        validate(leaf, store=_ett_store("sitenv.org.der"), direction=Direction.INCOMING, intermediates=[inter], at=AT)
    assert caught.value.reason == "expired"


@pytest.mark.parametrize("at", [ETT_EARLY, ETT_VALID], ids=["2020-invalid-anchor-still-valid", "2025"])
def test_ett_invalid_trust_anchor_trusts_no_ett_certificate(at: datetime) -> None:
    """ETT case (negative trust: ETT's "Invalid Trust Anchor" invalid_trust_rel.direct.sitenv.org_ca), AS-21:
    with that anchor alone, the ETT Public Cert and its intermediate are untrusted, also at a time when the
    invalid anchor itself was valid (so the refusal is about the missing trust relationship, not expiry),
    and the verdict names no nearest anchor."""
    leaf, inter = _ett("ttpedge.sitenv.org.der"), _ett("intermediate.sitenv.org.der")
    invalid = "invalid_trust_rel.direct.sitenv.org_ca.der"
    if at == ETT_EARLY:
        assert _ett(invalid).not_before <= at <= _ett(invalid).not_after
    with pytest.raises(TrustError) as caught:
        validate(leaf, store=_ett_store(invalid), direction=Direction.INCOMING, intermediates=[inter], at=at)
    assert caught.value.reason == "untrusted"
    verdict = caught.value.context["verdict"]
    assert verdict.nearest_anchor is None and verdict.chain == ()
    # the control at the same time: the real ETT root does trust it
    if at == ETT_VALID:
        assert validate(
            leaf, store=_ett_store("sitenv.org.der"), direction=Direction.INCOMING, intermediates=[inter], at=at
        ).trusted
