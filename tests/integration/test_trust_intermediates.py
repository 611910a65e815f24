"""``[trust] intermediates``: issuers from the local store for path building, never anchors (AS-20, AS-21)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import AT

from hisp.adapters.truststores import TrustStores
from hisp.addresses import DirectAddress, HealthDomain
from hisp.commands.config import check_config
from hisp.config import parse_config
from hisp.core.devca import Issued, create_ca, issue_certificate
from hisp.core.policy import Direction
from hisp.core.trust import validate
from hisp.errors import ConfigError, TrustError

DOMAIN = "direct.local.example"
PARTNER = "dr.p@direct.partner.example"


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Issued, Issued, Issued]:
    root = create_ca("Partner Root", at=AT)
    inter = create_ca("Partner Issuing CA", at=AT, issuer=root)
    leaf = issue_certificate(inter, at=AT, address=PARTNER)
    (tmp_path / "root.pem").write_bytes(root.certificate.to_pem())
    (tmp_path / "issuers.pem").write_bytes(inter.certificate.to_pem())
    (tmp_path / "leaf.pem").write_bytes(leaf.certificate.to_pem())
    return root, inter, leaf


def _config(tmp_path: Path, extra: str = "") -> str:
    return f"""
[trust]
revocation = "off"
cache_dir = "cache"
{extra}
[[trust.anchor]]
file = "root.pem"
domains = ["{DOMAIN}"]
"""


def test_configured_intermediate_completes_a_path_the_message_does_not_carry(tmp_path: Path, pki) -> None:
    """AS-20: intermediates from the local store. A partner's leaf arrives without its issuing CA (no
    SignedData chain, no AIA): with the issuer in ``[trust] intermediates`` the path reaches the root anchor;
    without it the same leaf is untrusted."""
    root, inter, leaf = pki
    config = parse_config(_config(tmp_path, 'intermediates = ["issuers.pem"]'), base=tmp_path).trust
    assert config.intermediates == (tmp_path / "issuers.pem",)
    stores = TrustStores(config, now=AT)
    store = stores.store_for(DirectAddress.parse(f"someone@{DOMAIN}"))
    assert store.intermediates == (inter.certificate,)
    verdict = validate(leaf.certificate, store=store, direction=Direction.INCOMING, at=AT)
    assert verdict.trusted
    assert verdict.chain == (leaf.certificate, inter.certificate, root.certificate)
    assert verdict.anchor is not None and verdict.anchor.certificate == root.certificate

    bare = TrustStores(parse_config(_config(tmp_path), base=tmp_path).trust, now=AT)
    bare_store = bare.store_for(HealthDomain.parse(DOMAIN))
    with pytest.raises(TrustError):
        validate(leaf.certificate, store=bare_store, direction=Direction.INCOMING, at=AT)


def test_an_intermediate_is_never_an_anchor(tmp_path: Path, pki) -> None:
    """AS-21: a certificate listed as an intermediate confers no trust: with no anchor above it, its leaves
    are untrusted, and it is not in any store's anchors."""
    _, inter, leaf = pki
    text = f"""
[trust]
revocation = "off"
cache_dir = "cache"
intermediates = ["issuers.pem"]
[[trust.domain]]
name = "{DOMAIN}"
"""
    stores = TrustStores(parse_config(text, base=tmp_path).trust, now=AT)
    store = stores.store_for(HealthDomain.parse(DOMAIN))
    assert inter.certificate not in store.certificates_for(Direction.INCOMING)
    assert inter.certificate not in store.certificates_for(Direction.OUTGOING)
    with pytest.raises(TrustError):
        validate(leaf.certificate, store=store, direction=Direction.INCOMING, at=AT)


def test_missing_intermediates_file_is_refused_at_load_naming_the_key(tmp_path: Path, pki) -> None:
    """A missing file is a ConfigError naming ``trust.intermediates``, not a silently shorter store."""
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(tmp_path, 'intermediates = ["nowhere.pem"]'), base=tmp_path)
    assert "trust.intermediates" in caught.value.message and "nowhere.pem" in caught.value.message


def test_a_leaf_in_the_intermediates_file_is_refused(tmp_path: Path, pki) -> None:
    """Only CA certificates may be intermediates: a leaf there is a configuration mistake, named at start
    (by the gateway and by ``hisp config check``)."""
    text = _config(tmp_path, 'intermediates = ["leaf.pem"]')
    config = parse_config(text, base=tmp_path)
    with pytest.raises(ConfigError) as caught:
        TrustStores(config.trust, now=AT)
    assert "leaf.pem" in caught.value.message and "not a CA certificate" in caught.value.message
    with pytest.raises(ConfigError):
        check_config(config, {})
