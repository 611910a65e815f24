"""TrustVerdict.explain says why the nearest anchor was not reached (issue 3: "the anchor reached (or the nearest
one and why it failed)")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import AT

from hisp.addresses import HealthDomain
from hisp.core.devca import create_ca, issue_certificate
from hisp.core.policy import Direction, RevocationMode
from hisp.core.trust import TrustAnchor, TrustStore, TrustVerdict, validate
from hisp.errors import TrustError


def _store(anchor) -> TrustStore:
    entry = (TrustAnchor(anchor.certificate, "anchors/ca.pem"),)
    return TrustStore(domain=HealthDomain.parse("direct.local.example"), incoming=entry,
                      revocation=RevocationMode.OFF)


def _failed(exc: TrustError) -> TrustVerdict:
    verdict = exc.context["verdict"]
    assert isinstance(verdict, TrustVerdict)
    return verdict


def test_an_anchor_with_the_issuers_name_but_another_key_is_called_out() -> None:
    ours, impostor = create_ca("Same Name CA", at=AT), create_ca("Same Name CA", at=AT)
    leaf = issue_certificate(ours, at=AT, address="a@direct.partner.example").certificate
    with pytest.raises(TrustError) as caught:
        validate(leaf, store=_store(impostor), direction=Direction.INCOMING, at=AT)
    text = _failed(caught.value).explain()
    assert "nearest anchor: CN=Same Name CA (from anchors/ca.pem): it has the name of" in text
    assert "but its key did not sign it (another CA with the same name" in text
    assert impostor.certificate.fingerprint_sha256[:16] in text


def test_an_anchor_that_signed_points_at_the_failure_instead() -> None:
    ca = create_ca("Signing CA", at=AT)
    old = issue_certificate(ca, at=AT, address="old@direct.partner.example",
                            not_before=AT - timedelta(days=400), not_after=AT - timedelta(days=1)).certificate
    with pytest.raises(TrustError) as caught:
        validate(old, store=_store(ca), direction=Direction.INCOMING, at=AT)
    verdict = _failed(caught.value)
    assert verdict.reason == "expired" and verdict.nearest_anchor is not None
    assert "nearest anchor: CN=Signing CA (from anchors/ca.pem): it signed the path; the path failed on what is " \
        "said above" in verdict.explain()
    assert "did not sign" not in verdict.explain()
